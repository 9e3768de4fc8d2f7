using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// v4 (TensorCoreGemm) of Gemm and Conv2d. On the CPU its mma.sync is emulated from the fragment layout, lanes exchanging
/// fragments through shared memory (warp-32 simulator), so these tests check every index of the kernel; on CUDA they
/// check the instruction too.
/// Against the reference over fp16-rounded operands the only difference is the order of fp32 sums: NMSE ≤ 1e-10.
/// Against plain fp32 the rounding of operands shows: with K ≤ 99 uniform(−1, 1) terms, NMSE ≤ 1e-6 (~1e-7 measured).
/// </summary>
public abstract class TensorCoreGemmTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    const double SameOperandsBound = 1e-10, Fp32Bound = 1e-6;

    [Theory]
    [InlineData(130, 70, 19, false, false)]
    [InlineData(5, 131, 40, true, false)]
    [InlineData(67, 9, 33, false, true)]
    [InlineData(9, 11, 1, true, true)]
    [InlineData(33, 20, 99, false, false)] // four slices: both shared stages written twice
    [InlineData(128, 128, 96, false, false)] // exact tiles: no edge tests compiled in
    [InlineData(128, 256, 64, true, true)]
    public void GemmMatchesHalfOperandReference(int m, int n, int k, bool transA, bool transB)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var run = GemmTests.RunRowMajor(plan!, m, n, k, transA, transB, version: 4);
        TensorAssert.NmseBelow(TensorCoreGemm.Reference(run.A, run.B, run.Bias, run.Residual, run.Shape, m * n), run.C, SameOperandsBound,
            "gemm v4 vs fp16 operands");
        TensorAssert.NmseBelow(Gemm.Reference(run.A, run.B, run.Bias, run.Residual, run.Shape, m * n), run.C, Fp32Bound, "gemm v4 vs fp32");
    }

    [Fact]
    public void BatchedGemmMatchesReference()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        GemmTests.CheckBatched(plan!, version: 4, nmseBound: Fp32Bound);
    }

    [Theory]
    [InlineData(2, 5, 9, 7, 6, 3, 1)]
    [InlineData(1, 11, 12, 12, 9, 3, 2)]
    [InlineData(2, 6, 5, 11, 7, 1, 1)]
    [InlineData(2, 32, 8, 8, 128, 3, 1)] // exact tiles: M = N = 128, K = 288
    public void ConvMatchesReference(int n, int cin, int h, int w, int cout, int k, int stride)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        Conv2dTests.Check(plan!, n, cin, h, w, cout, k, stride, version: 4, nmseBound: Fp32Bound);
    }
}

[Collection("cpu")]
public sealed class TensorCoreGemmTestsCpuWarp32(CpuWarp32DeviceFixture f) : TensorCoreGemmTests(f.Plan);

[Collection("cuda")]
public sealed class TensorCoreGemmTestsCuda(CudaDeviceFixture f) : TensorCoreGemmTests(f.Plan);

/// <summary>The kernel's own fp16 rounding (HalfBits) is System.Half's: round to nearest-even, subnormals, overflow.</summary>
public sealed class HalfRoundingTests
{
    [Fact]
    public void MatchesSystemHalfBitForBit()
    {
        var random = new Random(7);
        var values = new List<float> { 0f, -0f, 65504f, 65519.99f, 65520f, 1e6f, float.PositiveInfinity, float.NegativeInfinity, 6.1e-5f, 5.96e-8f, 2.98e-8f, 1e-9f };
        for (int i = 0; i < 200_000; i++)
        {
            // Every exponent from fp16-subnormal to overflow, random mantissas and signs.
            values.Add((float)((random.NextDouble() * 2 - 1) * Math.Pow(2, random.Next(-27, 18))));
        }
        foreach (float v in values)
        {
            ushort expected = BitConverter.HalfToUInt16Bits((System.Half)v);
            Assert.True(expected == TensorCoreGemm.HalfBits(v), $"{v:R}: System.Half {expected:X4}, HalfBits {TensorCoreGemm.HalfBits(v):X4}");
        }
        Assert.True(float.IsNaN((float)BitConverter.UInt16BitsToHalf((ushort)TensorCoreGemm.HalfBits(float.NaN))));
    }
}
