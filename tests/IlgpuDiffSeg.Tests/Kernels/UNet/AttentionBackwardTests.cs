using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// Attention.BackwardReference (double) against central finite differences of the double forward Attention.Reference:
/// dL/dqkv[e] ≈ (L(qkv + h·e) − L(qkv − h·e)) / 2h with L = Σ dy ⊙ y, for every element e of qkv; both orders, 2–4
/// heads, ch 4–16, odd T up to 20.
/// Tolerance: NMSE ≤ 1e-12. With h = 1e-4 the truncation error is h²/6·|L'''| ≈ 1e-9 relative and the rounding error
/// ε/h ≈ 1e-12 (~1e-17 measured), so a wrong index or a missing term (≥ 1e-4) cannot pass.
/// </summary>
public sealed class AttentionBackwardReferenceTests
{
    [Theory]
    [InlineData(2, 8, 5, 2, true)] // ch 4
    [InlineData(2, 8, 5, 2, false)]
    [InlineData(2, 16, 7, 4, true)] // four heads of 4
    [InlineData(2, 16, 7, 4, false)]
    [InlineData(2, 32, 20, 2, true)] // ch 16
    [InlineData(2, 48, 13, 3, false)] // three heads of 16
    public void MatchesFiniteDifferences(int n, int channels, int t, int heads, bool legacy)
    {
        var qkv = Array.ConvertAll(TestData.Uniform(n * 3 * channels * t, 21, 2f), v => (double)v);
        var dy = Array.ConvertAll(TestData.Uniform(n * channels * t, 22), v => (double)v);
        var analytic = Attention.BackwardReference(qkv, dy, n, channels, t, heads, legacy);
        var numeric = new double[qkv.Length];
        const double h = 1e-4;
        for (int e = 0; e < qkv.Length; e++)
        {
            double x = qkv[e];
            qkv[e] = x + h;
            double plus = Loss(Attention.Reference(qkv, n, channels, t, heads, legacy), dy);
            qkv[e] = x - h;
            double minus = Loss(Attention.Reference(qkv, n, channels, t, heads, legacy), dy);
            qkv[e] = x;
            numeric[e] = (plus - minus) / (2 * h);
        }
        double nmse = Nmse(numeric, analytic);
        TestContext.Current.TestOutputHelper?.WriteLine($"NMSE against finite differences {nmse:E2}");
        Assert.True(nmse <= 1e-12, $"NMSE {nmse:E3} against finite differences");
    }

    [Fact]
    public void HalfOperandsChangeTheGradientBySmallAmounts()
    {
        // The fp16 reference rounds each product's operands (11-bit significands): it must differ from the exact gradient,
        // by about the operands' relative rounding error squared (2⁻²⁴ ≈ 6e-8 → NMSE ~1e-7), no more.
        var qkv = TestData.Uniform(2 * 3 * 32 * 13, 23, 2f);
        var dy = TestData.Uniform(2 * 32 * 13, 24);
        var exact = Attention.BackwardReference(qkv, dy, 2, 32, 13, 2, true);
        var rounded = Attention.BackwardReference(qkv, dy, 2, 32, 13, 2, true, roundOperandsToHalf: true);
        double nmse = TensorAssert.Nmse(exact, rounded);
        TestContext.Current.TestOutputHelper?.WriteLine($"NMSE of the fp16-operand gradient against the exact one {nmse:E2}");
        Assert.InRange(nmse, 1e-9, 1e-5);
    }

    [Fact]
    public void OrdersDifferOnTheSameInput()
    {
        // Guards the layouts against collapsing into one: with several heads the two orders' gradients must disagree.
        var qkv = TestData.Uniform(3 * 8 * 5, 25);
        var dy = TestData.Uniform(8 * 5, 26);
        var a = Attention.BackwardReference(qkv, dy, 1, 8, 5, 2, true);
        var b = Attention.BackwardReference(qkv, dy, 1, 8, 5, 2, false);
        Assert.True(TensorAssert.Nmse(a, b) > 1e-3);
    }

    static double Loss(double[] y, double[] dy)
    {
        double sum = 0;
        for (int i = 0; i < y.Length; i++)
        {
            sum += y[i] * dy[i];
        }
        return sum;
    }

    static double Nmse(double[] expected, double[] actual)
    {
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            num += (actual[i] - expected[i]) * (actual[i] - expected[i]);
            den += expected[i] * expected[i];
        }
        return num / den;
    }
}

/// <summary>Shapes shared by the device tests: odd T throughout, both orders, 1–3 heads, ch 4–16.</summary>
public static class AttentionBackwardCases
{
    public static TheoryData<int, int, int, int, bool> Shapes() => new()
    {
        { 2, 8, 9, 2, true }, // ch 4
        { 2, 8, 9, 2, false },
        { 2, 48, 13, 3, true }, // three heads of 16
        { 2, 48, 13, 3, false },
        { 1, 12, 37, 1, true }, // one head of 12, T past a 32 tile
    };

    /// <summary>
    /// Fewer (image, head) pairs, for v4, whose tensor-core emulation costs the warp-32 simulator ~2 s per pair: both orders
    /// with two heads, one with two images.
    /// </summary>
    public static TheoryData<int, int, int, int, bool> HalfShapes() => new()
    {
        { 2, 8, 9, 2, true },
        { 1, 16, 9, 2, false },
        { 1, 12, 37, 1, true },
    };

    /// <summary>NmseBelow, with the measured NMSE written to the test's output.</summary>
    public static void NmseBelow(float[] expected, float[] actual, double bound, string what)
    {
        TestContext.Current.TestOutputHelper?.WriteLine($"{what}: NMSE {TensorAssert.Nmse(expected, actual):E2} (bound {bound:E0})");
        TensorAssert.NmseBelow(expected, actual, bound, what);
    }

    /// <summary>Backward on <paramref name="kernel"/> of uniform(−2, 2) qkv and uniform(−1, 1) dy: the inputs and dqkv.</summary>
    public static (float[] Qkv, float[] Dy, float[] Dqkv) Run(ComputeDevice device, MatmulKernel kernel, int n, int channels, int t,
        int heads, bool legacy)
    {
        var qkv = TestData.Uniform(n * 3 * channels * t, 31, 2f);
        var dy = TestData.Uniform(n * channels * t, 32);
        using var dq = device.Upload(qkv, n, 3 * channels, t);
        using var ddy = device.Upload(dy, n, channels, t);
        // Poisoned: every element of dqkv must be written.
        using var dg = device.Upload(Enumerable.Repeat(float.NaN, qkv.Length).ToArray(), n, 3 * channels, t);
        Attention.Backward(dq, ddy, dg, heads, legacy, kernel);
        return (qkv, dy, dg.ToArray());
    }
}

/// <summary>
/// Backward v1 with the fp32 kernels (v1, v2; host SIMD on the CPU backend) against the double reference.
/// Tolerance: NMSE ≤ 1e-10 — fp32 products of ≤ 37 terms, an fp32 softmax and its backward against double.
/// </summary>
public abstract class AttentionBackwardTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Theory]
    [MemberData(nameof(AttentionBackwardCases.Shapes), MemberType = typeof(AttentionBackwardCases))]
    public void V1MatchesReference(int n, int channels, int t, int heads, bool legacy) => Check(1, n, channels, t, heads, legacy);

    [Theory]
    [MemberData(nameof(AttentionBackwardCases.Shapes), MemberType = typeof(AttentionBackwardCases))]
    public void V2MatchesReference(int n, int channels, int t, int heads, bool legacy) => Check(2, n, channels, t, heads, legacy);

    void Check(int version, int n, int channels, int t, int heads, bool legacy)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var kernel = plan!.Kernel(version);
        var (qkv, dy, dqkv) = AttentionBackwardCases.Run(device!, kernel, n, channels, t, heads, legacy);
        AttentionBackwardCases.NmseBelow(Attention.BackwardReference(qkv, dy, n, channels, t, heads, legacy), dqkv, 1e-10,
            $"attention backward {kernel.Label()}");
    }
}

[Collection("cpu")]
public sealed class AttentionBackwardTestsCpu(CpuDeviceFixture f) : AttentionBackwardTests(f.Plan);

[Collection("cpu")]
public sealed class AttentionBackwardTestsCpuSimd(CpuSimdDeviceFixture f) : AttentionBackwardTests(f.Plan);

[Collection("cuda")]
public sealed class AttentionBackwardTestsCuda(CudaDeviceFixture f) : AttentionBackwardTests(f.Plan);

/// <summary>
/// Backward v1 with fp16 operands (v4 on tensor cores — emulated on the warp-32 simulator — and the host's fp16-rounding
/// Gemm) against the reference that rounds the same operands. Tolerance: NMSE ≤ 1e-8. The kernels' P and dS are fp32,
/// the reference's double, so a value within ~1e-7 of an fp16 rounding boundary can round the other way (one fp16 ulp,
/// 2⁻¹¹); against the unrounded reference the rounding itself shows: NMSE ≤ 1e-5.
/// </summary>
public abstract class AttentionBackwardFp16Tests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Theory]
    [MemberData(nameof(AttentionBackwardCases.HalfShapes), MemberType = typeof(AttentionBackwardCases))]
    public void MatchesHalfOperandReference(int n, int channels, int t, int heads, bool legacy)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var kernel = plan!.Kernel(4);
        var (qkv, dy, dqkv) = AttentionBackwardCases.Run(device!, kernel, n, channels, t, heads, legacy);
        var rounded = Attention.BackwardReference(qkv, dy, n, channels, t, heads, legacy, roundOperandsToHalf: true);
        AttentionBackwardCases.NmseBelow(rounded, dqkv, 1e-8, $"attention backward {kernel.Label()} vs fp16 operands");
        var exact = Attention.BackwardReference(qkv, dy, n, channels, t, heads, legacy);
        AttentionBackwardCases.NmseBelow(exact, dqkv, 1e-5, $"attention backward {kernel.Label()} vs fp32");
    }
}

[Collection("cpu")]
public sealed class AttentionBackwardFp16TestsCpuSimd(CpuSimdDeviceFixture f) : AttentionBackwardFp16Tests(f.Plan);

[Collection("cpu")]
public sealed class AttentionBackwardFp16TestsCpuWarp32(CpuWarp32DeviceFixture f) : AttentionBackwardFp16Tests(f.Plan);

[Collection("cuda")]
public sealed class AttentionBackwardFp16TestsCuda(CudaDeviceFixture f) : AttentionBackwardFp16Tests(f.Plan);

/// <summary>
/// Backward v2 (flash: the D pre-pass, the keys kernel for dK and dV, the queries kernel for dQ, after forward v2 with
/// its row log-sum-exp) on the warp-32 simulator and CUDA: sequences that cross the 32-position tiles (33, 40, 70) or fill
/// them exactly (32), head widths of 64 (the UNet's), 20 and 16 (channel masking), both orders, 1–3 images.
/// Tolerance: NMSE ≤ 1e-10 (fp32 against double, as forward v2).
/// </summary>
public abstract class FlashAttentionBackwardTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Theory]
    [InlineData(2, 128, 40, 2, true)]
    [InlineData(1, 128, 70, 2, false)]
    [InlineData(3, 60, 33, 3, true)]
    [InlineData(2, 32, 32, 2, false)]
    [InlineData(1, 64, 5, 1, true)]
    public void MatchesReference(int n, int channels, int t, int heads, bool legacy)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        Assert.True(Attention.FlashSupported(device!, channels / heads));
        var (qkv, dy, dqkv) = AttentionBackwardCases.Run(device!, MatmulKernel.Tiled, n, channels, t, heads, legacy);
        AttentionBackwardCases.NmseBelow(Attention.BackwardReference(qkv, dy, n, channels, t, heads, legacy), dqkv, 1e-10,
            "flash attention backward");
    }

    [Fact]
    public void IsDeterministic()
    {
        // Each output has one writer that sums in a fixed order: two runs agree bit for bit.
        Assert.SkipWhen(device is null, "no CUDA device");
        var first = AttentionBackwardCases.Run(device!, MatmulKernel.Tiled, 1, 64, 70, 1, true).Dqkv;
        var second = AttentionBackwardCases.Run(device!, MatmulKernel.Tiled, 1, 64, 70, 1, true).Dqkv;
        Assert.Equal(first, second);
    }

    [Fact]
    public void WideHeadsRunV1OnTheTiledGemm()
    {
        // ch 72 > 64: Backward with the tiled kernel falls back to v1 on TiledGemm. Tolerance as v1: NMSE ≤ 1e-10.
        Assert.SkipWhen(device is null, "no CUDA device");
        Assert.False(Attention.FlashSupported(device!, 72));
        var (qkv, dy, dqkv) = AttentionBackwardCases.Run(device!, MatmulKernel.Tiled, 1, 72, 9, 1, false);
        AttentionBackwardCases.NmseBelow(Attention.BackwardReference(qkv, dy, 1, 72, 9, 1, false), dqkv, 1e-10, "attention backward v3");
    }

    [Theory]
    [InlineData(2, 128, 40, 2, true)]
    [InlineData(3, 60, 33, 3, false)]
    public void ForwardWritesRowLogSumExp(int n, int channels, int t, int heads, bool legacy)
    {
        // Tolerance: atol 1e-5 + rtol 1e-6 — max + log(sum) in fp32 (lg2.approx on the GPU) of values of a few units.
        Assert.SkipWhen(device is null, "no CUDA device");
        var qkv = TestData.Uniform(n * 3 * channels * t, 33, 2f);
        using var dq = device!.Upload(qkv, n, 3 * channels, t);
        using var dy = device.Allocate(n, channels, t);
        using var lse = device.Allocate(n * heads, t);
        Attention.ForwardFlash(dq, dy, heads, legacy, lse);
        TensorAssert.Close(LogSumExp(qkv, n, channels, t, heads, legacy), lse.ToArray(), 1e-5, 1e-6, "row log-sum-exp");
        TensorAssert.NmseBelow(Attention.Reference(qkv, n, channels, t, heads, legacy), dy.ToArray(), 1e-10, "flash attention with lse");
    }

    /// <summary>log Σ_j exp(σ²·q_i·k_j) per (image, head, query), in double.</summary>
    static float[] LogSumExp(float[] qkv, int n, int channels, int t, int heads, bool legacy)
    {
        int ch = channels / heads;
        var result = new float[n * heads * t];
        for (int b = 0; b < n; b++)
        for (int h = 0; h < heads; h++)
        {
            int q0 = b * 3 * channels * t + h * (legacy ? 3 * ch * t : ch * t);
            int k0 = q0 + (legacy ? ch * t : channels * t);
            for (int i = 0; i < t; i++)
            {
                var scores = new double[t];
                for (int j = 0; j < t; j++)
                {
                    for (int c = 0; c < ch; c++)
                    {
                        scores[j] += (double)qkv[q0 + c * t + i] * qkv[k0 + c * t + j] / Math.Sqrt(ch);
                    }
                }
                double max = scores.Max();
                result[(b * heads + h) * t + i] = (float)(max + Math.Log(scores.Sum(s => Math.Exp(s - max))));
            }
        }
        return result;
    }
}

[Collection("cpu")]
public sealed class FlashAttentionBackwardTestsCpuWarp32(CpuWarp32DeviceFixture f) : FlashAttentionBackwardTests(f.Plan);

[Collection("cuda")]
public sealed class FlashAttentionBackwardTestsCuda(CudaDeviceFixture f) : FlashAttentionBackwardTests(f.Plan);
