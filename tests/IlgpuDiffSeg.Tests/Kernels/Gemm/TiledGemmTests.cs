using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// v3 (TiledGemm) of Gemm and Conv2d against the references. It needs 256-thread groups, so on the CPU it runs on the
/// warp-32 simulator. Shapes cross tile edges (128) and K slices (8) in every direction, and
/// run enough slices to cycle the double-buffered stages.
/// Tolerance: NMSE ≤ 1e-10, the bound of the shared checks in GemmTests and Conv2dTests.
/// </summary>
public abstract class TiledGemmTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Theory]
    [InlineData(130, 70, 19, false, false)]
    [InlineData(5, 131, 9, true, false)]
    [InlineData(67, 5, 33, false, true)]
    [InlineData(9, 11, 1, true, true)]
    [InlineData(20, 140, 70, false, true)] // nine slices: both shared stages written four times or more
    [InlineData(128, 256, 24, false, false)] // exact tiles: no edge tests compiled in
    [InlineData(128, 128, 16, true, true)]
    public void GemmMatchesReference(int m, int n, int k, bool transA, bool transB)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        GemmTests.CheckRowMajor(plan!, m, n, k, transA, transB, version: 3);
    }

    [Fact]
    public void BatchedGemmMatchesReference()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        GemmTests.CheckBatched(plan!, version: 3);
    }

    [Theory]
    [InlineData(2, 5, 9, 7, 6, 3, 1)]
    [InlineData(1, 3, 12, 12, 9, 3, 2)]
    [InlineData(2, 6, 5, 11, 7, 1, 1)]
    [InlineData(2, 8, 8, 8, 128, 3, 1)] // exact tiles: M = N = 128, K = 72
    public void ConvMatchesReference(int n, int cin, int h, int w, int cout, int k, int stride)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        Conv2dTests.Check(plan!, n, cin, h, w, cout, k, stride, version: 3);
    }
}

[Collection("cpu")]
public sealed class TiledGemmTestsCpuWarp32(CpuWarp32DeviceFixture f) : TiledGemmTests(f.Plan);

[Collection("cuda")]
public sealed class TiledGemmTestsCuda(CudaDeviceFixture f) : TiledGemmTests(f.Plan);
