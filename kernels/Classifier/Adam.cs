// Adam — torch.optim.Adam (no weight decay, no amsgrad) over every member's packed parameters, skipping members
// whose training has stopped. With the bias corrections computed on the host in double, as PyTorch does:
//   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − (lr/(1−β1^t)) · m / (√v/√(1−β2^t) + eps)
//   v1  grid-stride over M·P parameters. 4 reads + 3 writes per parameter → bandwidth-bound, ~1 MB per member.
//   CPU backend (--cpu-backend simd): the same expression in host SIMD lanes, a member per task — the same bits as v1
//   (IEEE sqrt and division per lane, no contraction), at ~18 ms → ~2 ms a step for the demo's 1.15M parameters.
using System.Numerics;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public struct AdamStep
{
    public float Beta1, Beta2, Eps, StepSize, BiasCorrection2Sqrt;

    /// <summary>The scalars of step <paramref name="t"/> (1-based).</summary>
    public static AdamStep At(long t, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8) => new()
    {
        Beta1 = (float)beta1,
        Beta2 = (float)beta2,
        Eps = (float)eps,
        StepSize = (float)(lr / (1 - Math.Pow(beta1, t))),
        BiasCorrection2Sqrt = (float)Math.Sqrt(1 - Math.Pow(beta2, t)),
    };
}

public static class Adam
{
    // ---- CPU reference

    public static void Reference(float[] p, float[] g, float[] m, float[] v, AdamStep s)
    {
        for (int i = 0; i < p.Length; i++)
        {
            m[i] = m[i] * s.Beta1 + (1 - s.Beta1) * g[i];
            v[i] = v[i] * s.Beta2 + (1 - s.Beta2) * g[i] * g[i];
            float denom = MathF.Sqrt(v[i]) / s.BiasCorrection2Sqrt + s.Eps;
            p[i] -= s.StepSize * (m[i] / denom);
        }
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int total, int memberStride, AdamStep s, ArrayView<float> active,
        ArrayView<float> p, ArrayView<float> g, ArrayView<float> m, ArrayView<float> v)
    {
        for (int i = index; i < total; i += stride)
        {
            if (active[i / memberStride] == 0f)
            {
                continue;
            }
            float gi = g[i];
            float mi = m[i] * s.Beta1 + (1f - s.Beta1) * gi;
            float vi = v[i] * s.Beta2 + (1f - s.Beta2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            float denom = XMath.Sqrt(vi) / s.BiasCorrection2Sqrt + s.Eps;
            p[i] -= s.StepSize * (mi / denom);
        }
    }

    // ---- CPU backend

    /// <summary>The CPU backend's step, a member per task (HostBackend.ForEach).</summary>
    static unsafe void StepOnHost(ComputeDevice dev, AdamStep s, int members, int memberStride, ArrayView<float> active, ArrayView<float> p,
        ArrayView<float> g, ArrayView<float> m, ArrayView<float> v)
    {
        nint pa = (nint)active.LoadEffectiveAddressAsPtr(), pp = (nint)p.LoadEffectiveAddressAsPtr(), pg = (nint)g.LoadEffectiveAddressAsPtr(),
            pm = (nint)m.LoadEffectiveAddressAsPtr(), pv = (nint)v.LoadEffectiveAddressAsPtr();
        HostBackend.ForEach(dev, members, member =>
        {
            if (((float*)pa)[member] == 0f)
            {
                return;
            }
            long start = (long)member * memberStride;
            UpdateHost(s, memberStride, (float*)pp + start, (float*)pg + start, (float*)pm + start, (float*)pv + start);
        });
    }

    /// <summary>v1's expression over n parameters, Vector&lt;float&gt; lanes first, in the same order of operations.</summary>
    static unsafe void UpdateHost(AdamStep s, int n, float* p, float* g, float* m, float* v)
    {
        float keep1 = 1f - s.Beta1, keep2 = 1f - s.Beta2;
        var beta1 = new Vector<float>(s.Beta1);
        var beta2 = new Vector<float>(s.Beta2);
        var mix1 = new Vector<float>(keep1);
        var mix2 = new Vector<float>(keep2);
        var correction = new Vector<float>(s.BiasCorrection2Sqrt);
        var eps = new Vector<float>(s.Eps);
        var stepSize = new Vector<float>(s.StepSize);
        int i = 0;
        for (; i <= n - Vector<float>.Count; i += Vector<float>.Count)
        {
            var gi = Vector.Load(g + i);
            var mi = Vector.Load(m + i) * beta1 + mix1 * gi;
            var vi = Vector.Load(v + i) * beta2 + mix2 * gi * gi;
            Vector.Store(mi, m + i);
            Vector.Store(vi, v + i);
            var denom = Vector.SquareRoot(vi) / correction + eps;
            Vector.Store(Vector.Load(p + i) - stepSize * (mi / denom), p + i);
        }
        for (; i < n; i++)
        {
            float gi = g[i];
            float mi = m[i] * s.Beta1 + keep1 * gi;
            float vi = v[i] * s.Beta2 + keep2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            float denom = MathF.Sqrt(vi) / s.BiasCorrection2Sqrt + s.Eps;
            p[i] -= s.StepSize * (mi / denom);
        }
    }

    // ---- launcher

    public static void Step(ExecutionPlan plan, AdamStep s, int members, int memberStride, ArrayView<float> active, ArrayView<float> p,
        ArrayView<float> g, ArrayView<float> m, ArrayView<float> v)
    {
        var dev = plan.Device;
        if (plan.OnHost)
        {
            StepOnHost(dev, s, members, memberStride, active, p, g, m, v);
            return;
        }
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, AdamStep, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(Kernel));
        int total = members * memberStride;
        int threads = dev.StrideThreads(total);
        k(threads, threads, total, memberStride, s, active, p, g, m, v);
    }
}
