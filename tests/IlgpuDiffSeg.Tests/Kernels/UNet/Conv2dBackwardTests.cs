using IlgpuDiffSeg.IO;
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

    /// <summary>
    /// Against PyTorch's autograd: tests/fixtures/conv-backward, made by tests/generators/make_conv_backward_fixtures.py —
    /// per case, float32 uniform(−1, 1) x, w, b and g, then in float64
    ///     y = F.conv2d(x, w, b, stride=stride, padding=k // 2); y.backward(g)
    /// and x.grad, w.grad, b.grad saved as float32. Both sides sum in double and round once, so they agree to a float's
    /// rounding: max |diff| / max |expected| ≤ 1e-6 (measured: 0, bit for bit).
    /// </summary>
    [Theory]
    [InlineData("stride2-k3", 2, 3, 7, 9, 5, 3, 2)]
    [InlineData("stride1-k3", 2, 4, 8, 6, 3, 3, 1)]
    [InlineData("stride2-k1", 1, 3, 9, 7, 4, 1, 2)]
    public void ReferencesMatchPyTorchAutograd(string name, int n, int cin, int h, int w, int cout, int k, int stride)
    {
        float[] Load(string key) => Npy.ReadFloat32(Path.Combine(Fixtures.Root, "conv-backward", name, key + ".npy"), out _);
        var s = ConvShape.Create(n, cin, h, w, cout, k, stride, k / 2);
        var (dw, db) = Conv2d.BackwardWeightsReference(Load("x"), Load("g"), s);
        TensorAssert.RelativeMaxBelow(Load("dx"), Conv2d.BackwardInputReference(Load("g"), Load("w"), s), 1e-6, name + " dx");
        TensorAssert.RelativeMaxBelow(Load("dw"), dw, 1e-6, name + " dw");
        TensorAssert.RelativeMaxBelow(Load("db"), db, 1e-6, name + " db");
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
/// (no edge tests compiled in), tiles crossing edges, and K splits. The input gradient overwrites a dx full of other
/// values or accumulates into it; the weight and bias gradients accumulate onto other values (or db is left alone).
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
    [InlineData(2, 3, 7, 9, 5, 3, 2, false)] // stride 2, odd H and W
    [InlineData(2, 3, 7, 9, 5, 3, 2, true)]
    [InlineData(2, 4, 8, 8, 6, 3, 1, true)]
    [InlineData(1, 5, 9, 7, 4, 1, 2, false)]
    [InlineData(2, 6, 5, 11, 7, 1, 1, true)]
    [InlineData(2, 5, 10, 6, 3, 3, 2, true)] // stride 2, even H: its last row reaches dy through ky = 0 only
    [InlineData(1, 9, 13, 11, 10, 3, 1, false)] // v3/v4: two column tiles, K = 90 over 12 (v3) or 3 (v4) slices
    [InlineData(2, 128, 8, 8, 128, 1, 1, true)] // v3/v4: exact tiles, 128 × 128 × 128
    [InlineData(2, 128, 8, 8, 32, 3, 1, false)] // exact tiles, K = 288; v4 reads dy tap-major (Cout = 32)
    [InlineData(2, 128, 16, 16, 128, 1, 2, true)] // stride 2 exact: 128 × 512 × 128
    public void InputGradientMatchesReference(int n, int cin, int h, int w, int cout, int k, int stride, bool accumulate)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        foreach (int version in Versions)
        {
            CheckInput(plan!, n, cin, h, w, cout, k, stride, version, accumulate);
        }
    }

    [Theory]
    [InlineData(2, 3, 7, 9, 5, 3, 2, true)]
    [InlineData(2, 3, 7, 9, 5, 3, 2, false)]
    [InlineData(2, 4, 8, 8, 6, 3, 1, true)]
    [InlineData(1, 5, 9, 7, 4, 1, 2, false)]
    [InlineData(2, 6, 5, 11, 7, 1, 1, true)]
    [InlineData(2, 5, 10, 6, 3, 3, 2, true)]
    [InlineData(1, 9, 13, 11, 10, 3, 1, true)] // one split (one image): v3/v4 add into dw through the residual
    [InlineData(1, 16, 8, 8, 8, 3, 1, false)] // v3/v4: N = 144, two column tiles
    [InlineData(2, 128, 8, 8, 128, 1, 1, true)] // v3/v4: exact tiles, 128 × 128, two splits of K = 64
    [InlineData(2, 128, 16, 16, 128, 1, 2, false)] // stride 2 exact: 128 × 128, two splits of K = 64
    public void WeightGradientMatchesReference(int n, int cin, int h, int w, int cout, int k, int stride, bool bias)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        foreach (int version in Versions)
        {
            CheckWeights(plan!, n, cin, h, w, cout, k, stride, version, bias, splitRows: 0);
        }
    }

    /// <summary>
    /// The K splits CUDA chooses for itself, forced on every device: v2 splits the N·Ho output rows, v3/v4 each image's
    /// rows into blocks of a divisor of Ho (rows padded to 2^⌈log₂ Wo⌉ columns); the partials are summed in order.
    /// </summary>
    [Theory]
    [InlineData(2, 4, 9, 7, 6, 3, 1, 3)] // v3/v4: 3 rows of 8 padded columns per split, 6 splits
    [InlineData(2, 3, 7, 9, 5, 3, 2, 2)] // stride 2: Ho = 4, 2 rows per split
    [InlineData(1, 5, 9, 7, 4, 1, 2, 4)] // Ho = 5: v2 two splits (4 rows + 1); v3/v4 one row per split (the divisor ≤ 4)
    [InlineData(2, 6, 5, 11, 7, 1, 1, 1)] // one row per split: 10 splits
    public void WeightGradientSplitsMatchReference(int n, int cin, int h, int w, int cout, int k, int stride, int splitRows)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        foreach (int version in Versions)
        {
            CheckWeights(plan!, n, cin, h, w, cout, k, stride, version, bias: true, splitRows);
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

    /// <summary>
    /// dx overwritten (it holds other values before) or accumulated into, against BackwardInputReference — over
    /// fp16-rounded operands for the fp16 kernels, which are also held to the fp32 reference.
    /// </summary>
    public static void CheckInput(ExecutionPlan plan, int n, int cin, int h, int w, int cout, int k, int stride, int version,
        bool accumulate)
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
        string what = $"{kernel.Label()} dx {n}×{cin}×{h}×{w}, k {k}, stride {stride}" + (accumulate ? ", accumulated" : "");
        Conv2d.BackwardInput(dy, wt, dx, stride, kernel, accumulate);
        var got = dx.ToArray();
        var init = accumulate ? before : null;
        TensorAssert.NmseBelow(Conv2d.BackwardInputReference(dyUsed, wUsed, s, init), got, NmseBound, what);
        if (half)
        {
            TensorAssert.NmseBelow(Conv2d.BackwardInputReference(dyValues, wValues, s, init), got, Fp16VsFp32Bound, what + " vs fp32");
        }
    }

    /// <summary>
    /// dw (and db when <paramref name="bias"/>) accumulated onto other values, against BackwardWeightsReference; K splits
    /// of <paramref name="splitRows"/> output rows (BackwardWeights' internal overload; 0: the device's choice).
    /// </summary>
    public static void CheckWeights(ExecutionPlan plan, int n, int cin, int h, int w, int cout, int k, int stride, int version,
        bool bias, int splitRows)
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
        string what = $"{kernel.Label()} {n}×{cin}×{h}×{w}, k {k}, stride {stride}, split rows {splitRows}";
        Conv2d.BackwardWeights(x, dy, dw, bias ? db : null, stride, kernel, splitRows);
        var got = dw.ToArray();
        TensorAssert.NmseBelow(Conv2d.BackwardWeightsReference(xUsed, dyUsed, s, dwBefore).Dw, got, NmseBound, what + " dw");
        if (half)
        {
            TensorAssert.NmseBelow(Conv2d.BackwardWeightsReference(xValues, dyValues, s, dwBefore).Dw, got, Fp16VsFp32Bound,
                what + " dw vs fp32");
        }
        var dbExpected = bias ? Conv2d.BackwardWeightsReference(xValues, dyValues, s, null, dbBefore).Db : dbBefore;
        TensorAssert.NmseBelow(dbExpected, db.ToArray(), NmseBound, what + (bias ? " db" : " db untouched"));
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
