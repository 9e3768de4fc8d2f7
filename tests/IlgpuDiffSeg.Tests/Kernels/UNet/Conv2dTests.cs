using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

public abstract class Conv2dTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    // Tolerance: NMSE ≤ 1e-10. fp32 sums of ≤ 300 products against a double-accumulated reference land
    // around 1e-14; a wrong tap or index is ≥ 1e-3.
    const double NmseBound = 1e-10;

    [Theory]
    [InlineData(1, 3, 7, 9, 5, 3, 1, 2)]
    [InlineData(2, 4, 8, 8, 8, 3, 2, 2)]
    [InlineData(2, 5, 9, 7, 6, 3, 2, 1)]
    [InlineData(2, 6, 5, 11, 7, 1, 1, 2)]
    [InlineData(1, 6, 5, 11, 7, 1, 1, 1)]
    [InlineData(1, 16, 70, 66, 9, 3, 1, 2)]
    [InlineData(1, 8, 66, 70, 20, 3, 2, 2)]
    public void MatchesReference(int n, int cin, int h, int w, int cout, int k, int stride, int version)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        Check(plan!, n, cin, h, w, cout, k, stride, version);
    }

    /// <summary>With bias and residual, then without bias, against the reference; shared by every kernel version's tests.</summary>
    public static void Check(ExecutionPlan plan, int n, int cin, int h, int w, int cout, int k, int stride, int version,
        double nmseBound = NmseBound)
    {
        var device = plan.Device;
        var kernel = plan.Kernel(version);
        var s = ConvShape.Create(n, cin, h, w, cout, k, stride, k / 2);
        var x = TestData.Uniform(n * cin * h * w, 1);
        var wt = TestData.Uniform(cout * cin * k * k, 2);
        var b = TestData.Uniform(cout, 3);
        var r = TestData.Uniform(n * cout * s.Ho * s.Wo, 4);
        using var dx = device.Upload(x, n, cin, h, w);
        using var dw = device.Upload(wt, cout, cin, k, k);
        using var db = device.Upload(b, cout);
        using var dr = device.Upload(r, n, cout, s.Ho, s.Wo);
        using var dy = device.Allocate(n, cout, s.Ho, s.Wo);
        Conv2d.Forward(dx, dw, db, dy, stride, dr, kernel);
        TensorAssert.NmseBelow(Conv2d.Reference(x, wt, b, s, r), dy.ToArray(), nmseBound, "conv2d with residual");
        Conv2d.Forward(dx, dw, null, dy, stride, null, kernel);
        TensorAssert.NmseBelow(Conv2d.Reference(x, wt, null, s), dy.ToArray(), nmseBound, "conv2d without bias");
    }
}

[Collection("cpu")]
public sealed class Conv2dTestsCpu(CpuDeviceFixture f) : Conv2dTests(f.Plan);

[Collection("cpu")]
public sealed class Conv2dTestsCpuSimd(CpuSimdDeviceFixture f) : Conv2dTests(f.Plan);

[Collection("cuda")]
public sealed class Conv2dTestsCuda(CudaDeviceFixture f) : Conv2dTests(f.Plan);

/// <summary>The tiled kernels' im2col tap decomposition divides by k² and k with ConvShape's reciprocals: exact, no tolerance.</summary>
public sealed class ConvShapeTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(5)]
    [InlineData(7)]
    [InlineData(9)]
    [InlineData(25)]
    [InlineData(49)]
    public void DivideByReciprocalIsExact(int d)
    {
        uint m = ConvShape.Reciprocal(d);
        // Every row of an im2col matrix with up to 4096 input channels, then samples up to the proven range 2³¹/d.
        for (int n = 0; n < 4096 * 49; n++)
        {
            Assert.Equal(n / d, ConvShape.Divide(n, m));
        }
        for (long n = 4096 * 49; n < (1L << 31) / d; n += 9973)
        {
            Assert.Equal((int)n / d, ConvShape.Divide((int)n, m));
        }
    }
}
