// EarlyStopping — ddpm-segmentation's stopping rule, per ensemble member, evaluated on the device so the training
// loop never waits for a loss to come back to the host: from epoch 4 on (epoch > 3), a minibatch loss below the
// member's best resets its counter, any other increments it, and a counter above 50 stops the member.
// state: (M, 3) = (best loss, counter, active ∈ {0, 1}); best starts at 1e7, as in the original.
//   v1  one thread per member.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class EarlyStopping
{
    public const float InitialBest = 1e7f;
    public const int FirstEpoch = 4;
    public const int Patience = 50;

    // ---- CPU reference

    public static void Reference(float[] state, float[] loss, int epoch)
    {
        for (int m = 0; m < loss.Length; m++)
        {
            if (state[3 * m + 2] == 0 || epoch < FirstEpoch)
            {
                continue;
            }
            if (loss[m] < state[3 * m])
            {
                state[3 * m] = loss[m];
                state[3 * m + 1] = 0;
            }
            else
            {
                state[3 * m + 1] += 1;
            }
            if (state[3 * m + 1] > Patience)
            {
                state[3 * m + 2] = 0;
            }
        }
    }

    // ---- GPU kernels

    static void Kernel(Index1D m, int epoch, ArrayView<float> state, ArrayView<float> loss, ArrayView<float> active)
    {
        if (state[3 * m + 2] == 0f || epoch < FirstEpoch)
        {
            return;
        }
        if (loss[m] < state[3 * m])
        {
            state[3 * m] = loss[m];
            state[3 * m + 1] = 0f;
        }
        else
        {
            state[3 * m + 1] += 1f;
        }
        if (state[3 * m + 1] > Patience)
        {
            state[3 * m + 2] = 0f;
            active[m] = 0f;
        }
    }

    // ---- launcher

    /// <summary>Updates the rule after one iteration of <paramref name="epoch"/>; clears <paramref name="active"/>[m] on stop.</summary>
    public static void Update(ExecutionPlan plan, int members, int epoch, ArrayView<float> state, ArrayView<float> loss, ArrayView<float> active)
    {
        var dev = plan.Device;
        if (plan.OnHost)
        {
            HostBackend.ForEach(dev, members, m => Kernel(m, epoch, state, loss, active));
            return;
        }
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, ArrayView<float>, ArrayView<float>,
            ArrayView<float>>(Kernel));
        k(members, epoch, state, loss, active);
    }
}
