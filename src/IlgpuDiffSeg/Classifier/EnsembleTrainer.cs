using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Classifier;

/// <summary>
/// Trains every member of a <see cref="PixelEnsemble"/> together, as ddpm-segmentation's train loop trains each one:
/// cross-entropy, Adam (lr 1e-3, β 0.9/0.999, eps 1e-8), BatchNorm in training mode, and the original's stopping rule
/// per member. Every member steps in the same iteration, on a batch shared by all or on its own batch (as the original's
/// separate DataLoaders give each member its own order); a stopped member is frozen (no updates, no running-stat
/// changes) while the others go on. An iteration is a fixed sequence of kernel launches with no host synchronisation.
/// </summary>
public sealed class EnsembleTrainer : IDisposable
{
    readonly PixelEnsemble e;
    readonly ExecutionPlan plan;
    readonly ComputeDevice dev;
    readonly MlpLayout L;
    readonly int rows;
    readonly List<DeviceBuffer<float>> owned = new();
    readonly DeviceBuffer<float> grads, adamM, adamV;
    readonly DeviceBuffer<float> a1, xhat1, n1, rstd1, a2, xhat2, n2, rstd2;
    readonly DeviceBuffer<float> logits, dlogits, dn2, dz2, dn1, dz1;
    readonly DeviceBuffer<float> stopState, active, loss, correct;

    /// <summary>Optimizer steps taken so far (Adam's t for every member still training).</summary>
    public long Steps { get; set; }

    public int BatchSize => rows;

    public EnsembleTrainer(PixelEnsemble ensemble, int batchSize)
    {
        e = ensemble;
        plan = ensemble.Plan;
        dev = ensemble.Device;
        L = ensemble.Layout;
        rows = batchSize;
        int m = L.Members;
        grads = Alloc((long)m * L.Size);
        adamM = Alloc((long)m * L.Size);
        adamV = Alloc((long)m * L.Size);
        a1 = Alloc(m * rows * L.Hidden1);
        xhat1 = Alloc(m * rows * L.Hidden1);
        n1 = Alloc(m * rows * L.Hidden1);
        dn1 = Alloc(m * rows * L.Hidden1);
        dz1 = Alloc(m * rows * L.Hidden1);
        rstd1 = Alloc(m * L.Hidden1);
        a2 = Alloc(m * rows * L.Hidden2);
        xhat2 = Alloc(m * rows * L.Hidden2);
        n2 = Alloc(m * rows * L.Hidden2);
        dn2 = Alloc(m * rows * L.Hidden2);
        dz2 = Alloc(m * rows * L.Hidden2);
        rstd2 = Alloc(m * L.Hidden2);
        logits = Alloc(m * rows * L.Classes);
        dlogits = Alloc(m * rows * L.Classes);
        stopState = Alloc(3 * m);
        active = Alloc(m);
        loss = Alloc(m);
        correct = Alloc(m);
        adamM.Clear();
        adamV.Clear();
        var state = new float[3 * m];
        for (int i = 0; i < m; i++)
        {
            state[3 * i] = EarlyStopping.InitialBest;
            state[3 * i + 2] = 1f;
        }
        stopState.CopyFrom(state);
        active.CopyFrom(Enumerable.Repeat(1f, m).ToArray());
    }

    DeviceBuffer<float> Alloc(long n)
    {
        var b = dev.Buffer<float>(n);
        owned.Add(b);
        return b;
    }

    /// <summary>
    /// One optimisation step of every active member on x: (B, D) row-major with labels y: (B) shared by all members, or,
    /// with <paramref name="perMember"/>, x: (M, B, D) and y: (M, B), one batch per member. The original's order: forward,
    /// loss, backward, Adam step, then the stopping rule on this step's loss.
    /// </summary>
    public void Step(ArrayView<float> x, ArrayView<int> y, int epoch, bool perMember = false)
    {
        int xStride = perMember ? rows * L.In : 0;
        int m = L.Members;
        var p = e.Parameters.View;
        var g = grads.View;
        // forward
        e.Linear(x, L.In, 1, xStride, rows, L.In, L.Hidden1, L.W1, L.B1, a1.View, Activation.Relu);
        BatchNorm1d.TrainForward(plan, e.Norm1(rows), a1.View, p, e.RunningMean1.View, e.RunningVar1.View, active.View, xhat1.View,
            rstd1.View, n1.View);
        e.Linear(n1.View, L.Hidden1, 1, rows * L.Hidden1, rows, L.Hidden1, L.Hidden2, L.W2, L.B2, a2.View, Activation.Relu);
        BatchNorm1d.TrainForward(plan, e.Norm2(rows), a2.View, p, e.RunningMean2.View, e.RunningVar2.View, active.View, xhat2.View,
            rstd2.View, n2.View);
        e.Linear(n2.View, L.Hidden2, 1, rows * L.Hidden2, rows, L.Hidden2, L.Classes, L.W3, L.B3, logits.View, Activation.None);
        CrossEntropy.ForwardBackward(plan, m, rows, L.Classes, L.Size, L.B3, logits.View, y, dlogits.View, g, loss.View, correct.View,
            perMember ? rows : 0);

        // backward: dW = dYᵀ·X (per member), dX = dY·W
        WeightGrad(dlogits.View, L.Classes, n2.View, L.Hidden2, rows * L.Hidden2, L.W3);
        InputGrad(dlogits.View, L.Classes, L.W3, L.Hidden2, dn2.View);
        BatchNorm1d.Backward(plan, e.Norm2(rows), a2.View, xhat2.View, rstd2.View, dn2.View, p, g, dz2.View);
        WeightGrad(dz2.View, L.Hidden2, n1.View, L.Hidden1, rows * L.Hidden1, L.W2);
        InputGrad(dz2.View, L.Hidden2, L.W2, L.Hidden1, dn1.View);
        BatchNorm1d.Backward(plan, e.Norm1(rows), a1.View, xhat1.View, rstd1.View, dn1.View, p, g, dz1.View);
        WeightGrad(dz1.View, L.Hidden1, x, L.In, xStride, L.W1);

        Steps++;
        Adam.Step(plan, AdamStep.At(Steps), m, L.Size, active.View, p, g, adamM.View, adamV.View);
        EarlyStopping.Update(plan, m, epoch, stopState.View, loss.View, active.View);
    }

    /// <summary>grad W (out, in) of every member = dyᵀ (out, B) · x (B, in); x shared by all members when xBatchStride is 0.</summary>
    void WeightGrad(ArrayView<float> dy, int outFeatures, ArrayView<float> x, int inFeatures, int xBatchStride, int weightOffset)
    {
        var s = new GemmShape
        {
            M = outFeatures, N = inFeatures, K = rows, Batch0 = L.Members, Batch1 = 1, Alpha = 1f,
            ARow = 1, ACol = outFeatures, ABatch0 = rows * outFeatures,
            BRow = inFeatures, BCol = 1, BBatch0 = xBatchStride,
            CRow = inFeatures, CCol = 1, CBatch0 = L.Size,
        };
        Gemm.Run(dev, s, dy, x, grads.From(weightOffset), kernel: plan.Fp32Matmul);
    }

    /// <summary>dx (B, in) of every member = dy (B, out) · W (out, in).</summary>
    void InputGrad(ArrayView<float> dy, int outFeatures, int weightOffset, int inFeatures, ArrayView<float> dx)
    {
        var s = new GemmShape
        {
            M = rows, N = inFeatures, K = outFeatures, Batch0 = L.Members, Batch1 = 1, Alpha = 1f,
            ARow = outFeatures, ACol = 1, ABatch0 = rows * outFeatures,
            BRow = inFeatures, BCol = 1, BBatch0 = L.Size,
            CRow = inFeatures, CCol = 1, CBatch0 = rows * inFeatures,
        };
        Gemm.Run(dev, s, dy, e.Parameters.From(weightOffset), dx, kernel: plan.Fp32Matmul);
    }

    public float[] LastLoss() => Read(loss);

    public float[] LastCorrect() => Read(correct);

    public bool[] Active() => Read(active).Select(a => a != 0f).ToArray();

    public float[] Gradients() => Read(grads);

    static float[] Read(DeviceBuffer<float> b) => b.ToArray();

    /// <summary>Optimizer and stopping-rule state, for resuming an interrupted run.</summary>
    public IEnumerable<(string Name, DeviceBuffer<float> Buffer)> State()
    {
        yield return ("adam.exp_avg", adamM);
        yield return ("adam.exp_avg_sq", adamV);
        yield return ("stopping.state", stopState);
        yield return ("stopping.active", active);
    }

    public void Dispose()
    {
        foreach (var b in owned)
        {
            b.Dispose();
        }
    }
}
