using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// v3 (TiledGemm) of Gemm and Conv2d against the references. It needs 256-thread groups, so on the CPU it runs on the
/// warp-32 simulator. Shapes cross tile edges (128) and K slices (8) in every direction.
/// Tolerance: NMSE ≤ 1e-10, as for v1/v2.
/// </summary>
public abstract class TiledGemmTests(ComputeDevice? device)
{
    const double NmseBound = 1e-10;

    [Theory]
    [InlineData(130, 70, 19, false, false)]
    [InlineData(5, 131, 9, true, false)]
    [InlineData(67, 5, 33, false, true)]
    [InlineData(9, 11, 1, true, true)]
    public void GemmMatchesReference(int m, int n, int k, bool transA, bool transB)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var s = GemmShape.RowMajor(m, n, k, transA, transB);
        s.BiasRow = 1;
        s.Act = (int)Activation.Relu;
        s.Alpha = 0.5f;
        var a = TestData.Uniform(m * k, 1);
        var b = TestData.Uniform(k * n, 2);
        var bias = TestData.Uniform(m, 3);
        var r = TestData.Uniform(m * n, 4);
        using var da = device!.Upload(a, m * k);
        using var db = device.Upload(b, k * n);
        using var dbias = device.Upload(bias, m);
        using var dc = device.Upload(r, m * n);
        Gemm.Run(device, s, da.View, db.View, dc.View, dbias.View, dc.View, version: 3);
        s.HasBias = s.HasResidual = 1;
        TensorAssert.NmseBelow(Gemm.Reference(a, b, bias, r, s, m * n), dc.ToArray(), NmseBound, "gemm v3");
    }

    [Fact]
    public void BatchedGemmMatchesReference()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var s = new GemmShape
        {
            M = 3, N = 5, K = 4, Batch0 = 2, Batch1 = 3, Alpha = 1f,
            AOffset = 2, ABatch0 = 40, ABatch1 = 12, ARow = 1, ACol = 3,
            BOffset = 1, BBatch0 = 20, BBatch1 = 0, BRow = 5, BCol = 1,
            COffset = 0, CBatch0 = 45, CBatch1 = 15, CRow = 5, CCol = 1,
            BiasBatch0 = 5, BiasBatch1 = 1, BiasCol = 1,
        };
        var a = TestData.Uniform(90, 5);
        var b = TestData.Uniform(41, 6);
        var bias = TestData.Uniform(12, 7);
        using var da = device!.Upload(a, a.Length);
        using var db = device.Upload(b, b.Length);
        using var dbias = device.Upload(bias, 12);
        using var dc = device.Zeros(90);
        Gemm.Run(device, s, da.View, db.View, dc.View, dbias.View, version: 3);
        s.HasBias = 1;
        TensorAssert.NmseBelow(Gemm.Reference(a, b, bias, null, s, 90), dc.ToArray(), NmseBound, "batched gemm v3");
    }

    [Theory]
    [InlineData(2, 5, 9, 7, 6, 3, 1)]
    [InlineData(1, 3, 12, 12, 9, 3, 2)]
    [InlineData(2, 6, 5, 11, 7, 1, 1)]
    public void ConvMatchesReference(int n, int cin, int h, int w, int cout, int k, int stride)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var s = ConvShape.Create(n, cin, h, w, cout, k, stride, k / 2);
        var x = TestData.Uniform(n * cin * h * w, 1);
        var wt = TestData.Uniform(cout * cin * k * k, 2);
        var b = TestData.Uniform(cout, 3);
        var r = TestData.Uniform(n * cout * s.Ho * s.Wo, 4);
        using var dx = device!.Upload(x, n, cin, h, w);
        using var dw = device.Upload(wt, cout, cin, k, k);
        using var db = device.Upload(b, cout);
        using var dr = device.Upload(r, n, cout, s.Ho, s.Wo);
        using var dy = device.Allocate(n, cout, s.Ho, s.Wo);
        Conv2d.Forward(dx, dw, db, dy, stride, dr, version: 3);
        TensorAssert.NmseBelow(Conv2d.Reference(x, wt, b, s, r), dy.ToArray(), NmseBound, "conv2d v3");
    }
}

[Collection("cpu")]
public sealed class TiledGemmTestsCpuWarp32(CpuWarp32DeviceFixture f) : TiledGemmTests(f.Device);

[Collection("cuda")]
public sealed class TiledGemmTestsCuda(CudaDeviceFixture f) : TiledGemmTests(f.Device);
