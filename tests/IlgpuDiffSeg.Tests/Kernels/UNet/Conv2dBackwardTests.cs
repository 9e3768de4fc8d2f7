using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// Conv2d's backward references against central finite differences of the forward's reference (Conv2d.Reference): the
/// loss L = Σ g·y in double, perturbing one input, weight or bias at a time.
/// Tolerance: |fd − gradient| ≤ 2e-4. The forward is linear in each argument, so the difference quotient is exact up to
/// the fp32 rounding of the ≤ Cout·k² outputs a perturbation moves (each ≤ 27 in magnitude, rounded to 2⁻²⁴ relative):
/// ≤ 4e-5 over a step of 2 (h = 1). A tap of the wrong parity or a flipped kernel misses by 0.1 or more.
/// </summary>
public sealed class Conv2dBackwardReferenceTests
{
    [Theory]
    [InlineData(2, 3, 5, 7, 4, 3, 1)]
    [InlineData(2, 3, 7, 5, 4, 3, 2)] // stride 2, odd H and W
    [InlineData(1, 2, 6, 5, 3, 3, 2)] // stride 2, even H: the last input row reaches no output through ky = 2
    [InlineData(2, 3, 5, 7, 4, 1, 2)]
    [InlineData(1, 3, 4, 5, 2, 1, 1)]
    public void ReferencesMatchFiniteDifferences(int n, int cin, int h, int w, int cout, int k, int stride)
    {
        var s = ConvShape.Create(n, cin, h, w, cout, k, stride, k / 2);
        var x = TestData.Uniform(n * cin * h * w, 1);
        var wt = TestData.Uniform(cout * cin * k * k, 2);
        var b = TestData.Uniform(cout, 3);
        var g = TestData.Uniform(n * cout * s.Ho * s.Wo, 4);
        double Loss(float[] xs, float[] ws, float[] bs)
        {
            var y = Conv2d.Reference(xs, ws, bs, s);
            double loss = 0;
            for (int o = 0; o < y.Length; o++)
            {
                loss += (double)g[o] * y[o];
            }
            return loss;
        }
        var dx = Conv2d.BackwardInputReference(g, wt, s);
        var (dw, db) = Conv2d.BackwardWeightsReference(x, g, s);
        CheckFiniteDifferences("dx", x, dx, v => Loss(v, wt, b));
        CheckFiniteDifferences("dw", wt, dw, v => Loss(x, v, b));
        CheckFiniteDifferences("db", b, db, v => Loss(x, wt, v));
    }

    static void CheckFiniteDifferences(string what, float[] values, float[] gradient, Func<float[], double> loss)
    {
        var probe = (float[])values.Clone();
        for (int i = 0; i < values.Length; i++)
        {
            float plus = values[i] + 1f, minus = values[i] - 1f;
            probe[i] = plus;
            double up = loss(probe);
            probe[i] = minus;
            double down = loss(probe);
            probe[i] = values[i];
            double fd = (up - down) / ((double)plus - minus);
            Assert.True(Math.Abs(fd - gradient[i]) <= 2e-4, $"{what}[{i}]: finite difference {fd:R}, reference {gradient[i]:R}");
        }
    }
}

/// <summary>
/// Conv2d.BackwardInput and BackwardWeights, every kernel against the references (each subclass runs the versions its
/// device has). Shapes: stride 2 with odd and even sizes, k = 1 and 3, batch 2, and for the tiled kernels exact 128 tiles
/// (no edge tests compiled in), tiles crossing edges, and K splits. The input gradient is checked overwriting a dx full of
/// other values and accumulating into one; the weight gradient accumulating twice (a second microbatch, no bias).
/// Tolerances: fp32 kernels NMSE ≤ 1e-10, as the forward's tests — fp32 sums of ≤ 360 products against a double reference
/// land near 1e-14, a wrong tap or index at 1e-3 or more. fp16 kernels (v4, host fp16) against the reference over the same
/// fp16-rounded operands, where only the order of fp32 sums differs: 1e-10; against plain fp32: 1e-6 (~1e-7 measured
/// with uniform(−1, 1) data, TensorCoreGemmTests). db sums fp32 dy in every kernel: 1e-10.
/// </summary>
public abstract class Conv2dBackwardTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    const double NmseBound = 1e-10, Fp16VsFp32Bound = 1e-6;

    /// <summary>The kernel versions (TestPlans.Kernel) this device runs.</summary>
    protected abstract int[] Versions { get; }

    [Theory]
    [InlineData(2, 3, 7, 9, 5, 3, 2)]
    [InlineData(2, 4, 8, 8, 6, 3, 1)]
    [InlineData(1, 5, 9, 7, 4, 1, 2)]
    [InlineData(2, 6, 5, 11, 7, 1, 1)]
    [InlineData(2, 5, 10, 6, 3, 3, 2)]
    [InlineData(1, 9, 13, 11, 10, 3, 1)] // v3/v4 dx: two column tiles, K = 90 over 12 (v3) or 3 (v4) slices
    [InlineData(2, 128, 8, 8, 128, 1, 1)] // v3/v4: exact tiles in dx (128 × 128 × 128) and dw (128 × 128, 2 splits of 64)
    [InlineData(2, 128, 8, 8, 32, 3, 1)] // dx exact (K = 288), v4 reading dy tap-major (Cout = 32)
    [InlineData(2, 128, 16, 16, 128, 1, 2)] // stride 2 exact: dx 128 × 512 × 128, dw 128 × 128, K = 64 per split
    public void InputGradientMatchesReference(int n, int cin, int h, int w, int cout, int k, int stride)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        foreach (int version in Versions)
        {
            CheckInput(plan!, n, cin, h, w, cout, k, stride, version);
        }
    }

    [Theory]
    [InlineData(2, 3, 7, 9, 5, 3, 2)]
    [InlineData(2, 4, 8, 8, 6, 3, 1)]
    [InlineData(1, 5, 9, 7, 4, 1, 2)]
    [InlineData(2, 6, 5, 11, 7, 1, 1)]
    [InlineData(2, 5, 10, 6, 3, 3, 2)]
    [InlineData(1, 9, 13, 11, 10, 3, 1)] // one split (one image): v3/v4 add into dw through the residual
    [InlineData(2, 128, 8, 8, 128, 1, 1)]
    [InlineData(2, 128, 8, 8, 32, 3, 1)] // dw: N = 1152, nine column tiles
    [InlineData(2, 128, 16, 16, 128, 1, 2)]
    public void WeightGradientMatchesReference(int n, int cin, int h, int w, int cout, int k, int stride)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        foreach (int version in Versions)
        {
            CheckWeights(plan!, n, cin, h, w, cout, k, stride, version, splitRows: 0, biasChunks: 0);
        }
    }

    /// <summary>
    /// The splits CUDA chooses for itself, forced on every device: K splits of the weight gradient (v2: rows of N·Ho;
    /// v3/v4: a divisor of Ho, padded rows 2^⌈log₂ Wo⌉ wide) and chunks of the bias gradient, summed in order.
    /// </summary>
    [Theory]
    [InlineData(2, 4, 9, 7, 6, 3, 1, 3, 3)] // v3/v4: 3 rows of 8 padded columns per split, 6 splits
    [InlineData(2, 3, 7, 9, 5, 3, 2, 2, 5)] // stride 2: Ho = 4, 2 rows per split; 5 bias chunks of 8 values (last short)
    [InlineData(1, 5, 9, 7, 4, 1, 2, 5, 2)] // Ho = 5: v2 one split of 5 rows; v3/v4 5 rows (the divisor ≤ 5)
    [InlineData(2, 6, 5, 11, 7, 1, 1, 1, 7)] // one row per split: 10 splits
    public void WeightGradientSplitsMatchReference(int n, int cin, int h, int w, int cout, int k, int stride, int splitRows, int biasChunks)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        foreach (int version in Versions)
        {
            CheckWeights(plan!, n, cin, h, w, cout, k, stride, version, splitRows, biasChunks);
        }
    }

    /// <summary>
    /// fp16 loss scaling finds overflow by the infinities it leaves: a dy past fp16's 65504 must make the fp16 kernels'
    /// gradients non-finite, and leave the fp32 kernels' finite.
    /// </summary>
    [Fact]
    public void Fp16OperandsOverflowToInfinity()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var dev = device!;
        const int n = 1, cin = 3, h = 6, w = 6, cout = 4, k = 3;
        var dyValues = TestData.Uniform(n * cout * h * w, 5);
        dyValues[7] = 1e5f;
        using var x = dev.Upload(TestData.Uniform(n * cin * h * w, 6), n, cin, h, w);
        using var wt = dev.Upload(TestData.Uniform(cout * cin * k * k, 7), cout, cin, k, k);
        using var dy = dev.Upload(dyValues, n, cout, h, w);
        using var dx = dev.Allocate(n, cin, h, w);
        using var dw = dev.Zeros(cout, cin, k, k);
        foreach (int version in Versions)
        {
            var kernel = plan!.Kernel(version);
            dw.CopyFrom(new float[dw.Length]);
            Conv2d.BackwardInput(dy, wt, dx, 1, kernel);
            Conv2d.BackwardWeights(x, dy, dw, null, 1, kernel);
            bool half = kernel.RoundsOperandsToHalf();
            Assert.True(half == dx.ToArray().Any(v => !float.IsFinite(v)), $"{kernel.Label()} dx: non-finite values expected {half}");
            Assert.True(half == dw.ToArray().Any(v => !float.IsFinite(v)), $"{kernel.Label()} dw: non-finite values expected {half}");
        }
    }

    /// <summary>dx overwritten, then accumulated, against BackwardInputReference (over fp16-rounded operands for fp16 kernels).</summary>
    public static void CheckInput(ExecutionPlan plan, int n, int cin, int h, int w, int cout, int k, int stride, int version)
    {
        var dev = plan.Device;
        var kernel = plan.Kernel(version);
        var s = ConvShape.Create(n, cin, h, w, cout, k, stride, k / 2);
        var dyValues = TestData.Uniform(n * cout * s.Ho * s.Wo, 11);
        var wValues = TestData.Uniform(cout * cin * k * k, 12);
        var before = TestData.Uniform(n * cin * h * w, 13);
        bool half = kernel.RoundsOperandsToHalf();
        var (dyUsed, wUsed) = half ? (TensorCoreGemm.RoundToHalf(dyValues), TensorCoreGemm.RoundToHalf(wValues)) : (dyValues, wValues);
        using var dy = dev.Upload(dyValues, n, cout, s.Ho, s.Wo);
        using var wt = dev.Upload(wValues, cout, cin, k, k);
        using var dx = dev.Upload(before, n, cin, h, w);
        string what = $"{kernel.Label()} dx {n}×{cin}×{h}×{w}, k {k}, stride {stride}";
        Conv2d.BackwardInput(dy, wt, dx, stride, kernel);
        var got = dx.ToArray();
        TensorAssert.NmseBelow(Conv2d.BackwardInputReference(dyUsed, wUsed, s), got, NmseBound, what);
        if (half)
        {
            TensorAssert.NmseBelow(Conv2d.BackwardInputReference(dyValues, wValues, s), got, Fp16VsFp32Bound, what + " vs fp32");
        }
        dx.CopyFrom(before);
        Conv2d.BackwardInput(dy, wt, dx, stride, kernel, accumulate: true);
        TensorAssert.NmseBelow(Conv2d.BackwardInputReference(dyUsed, wUsed, s, before), dx.ToArray(), NmseBound, what + ", accumulated");
    }

    /// <summary>
    /// dw and db accumulated onto other values, then dw once more without a bias (a second microbatch), against
    /// BackwardWeightsReference; the splits as BackwardWeights' internal overload takes them (0: the device's choice).
    /// </summary>
    public static void CheckWeights(ExecutionPlan plan, int n, int cin, int h, int w, int cout, int k, int stride, int version,
        int splitRows, int biasChunks)
    {
        var dev = plan.Device;
        var kernel = plan.Kernel(version);
        var s = ConvShape.Create(n, cin, h, w, cout, k, stride, k / 2);
        var xValues = TestData.Uniform(n * cin * h * w, 21);
        var dyValues = TestData.Uniform(n * cout * s.Ho * s.Wo, 22);
        var dwBefore = TestData.Uniform(cout * cin * k * k, 23);
        var dbBefore = TestData.Uniform(cout, 24);
        bool half = kernel.RoundsOperandsToHalf();
        var (xUsed, dyUsed) = half ? (TensorCoreGemm.RoundToHalf(xValues), TensorCoreGemm.RoundToHalf(dyValues)) : (xValues, dyValues);
        using var x = dev.Upload(xValues, n, cin, h, w);
        using var dy = dev.Upload(dyValues, n, cout, s.Ho, s.Wo);
        using var dw = dev.Upload(dwBefore, cout, cin, k, k);
        using var db = dev.Upload(dbBefore, cout);
        string what = $"{kernel.Label()} {n}×{cin}×{h}×{w}, k {k}, stride {stride}, splits ({splitRows}, {biasChunks})";
        Conv2d.BackwardWeights(x, dy, dw, db, stride, kernel, splitRows, biasChunks);
        var once = dw.ToArray();
        TensorAssert.NmseBelow(Conv2d.BackwardWeightsReference(xUsed, dyUsed, s, dwBefore).Dw, once, NmseBound, what + " dw");
        TensorAssert.NmseBelow(Conv2d.BackwardWeightsReference(xValues, dyValues, s, null, dbBefore).Db, db.ToArray(), NmseBound,
            what + " db");
        if (half)
        {
            TensorAssert.NmseBelow(Conv2d.BackwardWeightsReference(xValues, dyValues, s, dwBefore).Dw, once, Fp16VsFp32Bound,
                what + " dw vs fp32");
        }
        Conv2d.BackwardWeights(x, dy, dw, null, stride, kernel, splitRows, biasChunks);
        TensorAssert.NmseBelow(Conv2d.BackwardWeightsReference(xUsed, dyUsed, s, once).Dw, dw.ToArray(), NmseBound, what + " dw twice");
    }
}

/// <summary>v1 and v2 as ILGPU kernels on the CPU accelerator.</summary>
[Collection("cpu")]
public sealed class Conv2dBackwardTestsCpu(CpuDeviceFixture f) : Conv2dBackwardTests(f.Plan)
{
    protected override int[] Versions => [1, 2];
}

/// <summary>The host SIMD backend: fp32 (version 2) and fp16 operands (version 4).</summary>
[Collection("cpu")]
public sealed class Conv2dBackwardTestsCpuSimd(CpuSimdDeviceFixture f) : Conv2dBackwardTests(f.Plan)
{
    protected override int[] Versions => [2, 4];
}

/// <summary>v3 and v4 (tensor-core fragments emulated) on the warp-32 simulator.</summary>
[Collection("cpu")]
public sealed class Conv2dBackwardTestsCpuWarp32(CpuWarp32DeviceFixture f) : Conv2dBackwardTests(f.Plan)
{
    protected override int[] Versions => [3, 4];
}

[Collection("cuda")]
public sealed class Conv2dBackwardTestsCuda(CudaDeviceFixture f) : Conv2dBackwardTests(f.Plan)
{
    protected override int[] Versions => [1, 2, 3, 4];
}
