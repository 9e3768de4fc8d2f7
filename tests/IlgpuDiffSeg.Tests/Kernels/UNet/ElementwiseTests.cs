using IlgpuDiffSeg.Kernels;
using K = IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>SiLU, Add, nearest ×2 upsampling, 2×2 average pooling, channel concatenation, softmax, timestep embedding.</summary>
public abstract class ElementwiseTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Fact]
    public void Silu()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: atol 1e-6 + rtol 1e-6 (exp is ex2.approx on the GPU: ~2 ulp).
        var x = TestData.Uniform(1000, 1, 12f);
        using var dx = device!.Upload(x, x.Length);
        using var dy = device.Allocate(x.Length);
        K.Silu.Forward(dx, dy);
        TensorAssert.Close(K.Silu.Reference(x), dy.ToArray(), 1e-6, 1e-6, "silu");
    }

    [Fact]
    public void Add()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (one fp32 rounding in both).
        var a = TestData.Uniform(77, 1);
        var b = TestData.Uniform(77, 2);
        using var da = device!.Upload(a, 77);
        using var db = device.Upload(b, 77);
        using var dy = device.Allocate(77);
        K.Add.Forward(da, db, dy);
        TensorAssert.Close(K.Add.Reference(a, b), dy.ToArray(), 0, 0, "add");
    }

    [Fact]
    public void UpsampleNearest2x()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (a copy).
        var x = TestData.Uniform(2 * 3 * 4 * 5, 3);
        using var dx = device!.Upload(x, 2, 3, 4, 5);
        using var dy = device.Allocate(2, 3, 8, 10);
        K.UpsampleNearest2x.Forward(dx, dy);
        TensorAssert.Close(K.UpsampleNearest2x.Reference(x, 6, 4, 5), dy.ToArray(), 0, 0, "upsample nearest");
    }

    [Fact]
    public void AvgPool2x2()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (same summation order, division by 4 is exact).
        var x = TestData.Uniform(2 * 3 * 6 * 8, 4);
        using var dx = device!.Upload(x, 2, 3, 6, 8);
        using var dy = device.Allocate(2, 3, 3, 4);
        K.AvgPool2x2.Forward(dx, dy);
        TensorAssert.Close(K.AvgPool2x2.Reference(x, 6, 6, 8), dy.ToArray(), 0, 0, "avg pool");
    }

    [Fact]
    public void ConcatChannels()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (a copy).
        var a = TestData.Uniform(2 * 3 * 10, 5);
        var b = TestData.Uniform(2 * 5 * 10, 6);
        using var da = device!.Upload(a, 2, 3, 2, 5);
        using var db = device.Upload(b, 2, 5, 2, 5);
        using var dy = device.Allocate(2, 8, 2, 5);
        K.ConcatChannels.Forward(da, db, dy);
        TensorAssert.Close(K.ConcatChannels.Reference(a, 3, b, 5, 2, 10), dy.ToArray(), 0, 0, "concat");
    }

    [Fact]
    public void Softmax()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: atol 1e-7 + rtol 1e-5 (exp approximations; probabilities ≤ 1).
        var x = TestData.Uniform(7 * 33, 7, 20f);
        using var dx = device!.Upload(x, 7, 33);
        using var dy = device.Allocate(7, 33);
        K.Softmax.Forward(device, dx.View, dy.View, 7, 33);
        TensorAssert.Close(K.Softmax.Reference(x, 7, 33), dy.ToArray(), 1e-7, 1e-5, "softmax");
    }

    [Fact]
    public void SoftmaxBackward()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: atol 1e-6 + rtol 1e-5 — dy − Σ y·dy cancels: an fp32 row sum of 33 terms (~1e-7 absolute) against double.
        var (y, dy) = SoftmaxBackwardInputs(7, 33);
        using var dyy = device!.Upload(y, 7, 33);
        using var ddy = device.Upload(dy, 7, 33);
        using var ddx = device.Allocate(7, 33);
        K.Softmax.Backward(device, dyy.View, ddy.View, ddx.View, 7, 33);
        TensorAssert.Close(K.Softmax.BackwardReference(y, dy, 7, 33), ddx.ToArray(), 1e-6, 1e-5, "softmax backward");
    }

    /// <summary>Softmax probabilities of uniform(−20, 20) rows (so some are near 0 and near 1) and uniform(−1, 1) gradients.</summary>
    public static (float[] Y, float[] Dy) SoftmaxBackwardInputs(int rows, int cols) =>
        (K.Softmax.Reference(TestData.Uniform(rows * cols, 9, 20f), rows, cols), TestData.Uniform(rows * cols, 10));

    [Theory]
    [InlineData(32)]
    [InlineData(33)]
    public void TimestepEmbedding(int dim)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: atol 1e-6. Both sides round the same fp32 argument once from double cos/sin;
        // PyTorch's fp32 cos/sin agree to ≤ 1 ulp.
        var t = new float[] { 0, 1, 37, 74, 250, 999 };
        using var dt = device!.Upload(t, t.Length);
        using var dy = device.Allocate(t.Length, dim);
        K.TimestepEmbedding.Forward(dt, dy);
        var expected = new float[t.Length * dim];
        var even = K.TimestepEmbedding.Reference(t, dim / 2 * 2);
        for (int n = 0; n < t.Length; n++)
        {
            Array.Copy(even, n * (dim / 2 * 2), expected, n * dim, dim / 2 * 2);
        }
        TensorAssert.Close(expected, dy.ToArray(), 1e-6, 0, "timestep embedding");
    }
}

[Collection("cpu")]
public sealed class ElementwiseTestsCpu(CpuDeviceFixture f) : ElementwiseTests(f.Plan);

/// <summary>The CPU backend's host implementations (HostBackend.Elementwise.cs) against the same references.</summary>
[Collection("cpu")]
public sealed class ElementwiseTestsCpuSimd(CpuSimdDeviceFixture f) : ElementwiseTests(f.Plan);

[Collection("cuda")]
public sealed class ElementwiseTestsCuda(CudaDeviceFixture f) : ElementwiseTests(f.Plan);

/// <summary>
/// Softmax v2 (a warp per row, shuffle reductions, 256-thread groups) against the reference, on the warp-32 simulator
/// and CUDA. Tolerance: atol 1e-7 + rtol 1e-5, as v1 (exp approximations; probabilities ≤ 1).
/// </summary>
public abstract class SoftmaxWarpTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Theory]
    [InlineData(7, 33)] // a partial last column step; fewer rows than warps
    [InlineData(300, 1024)] // several rows per warp, as attention's T = 1,024
    public void MatchesReference(int rows, int cols)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var x = TestData.Uniform(rows * cols, 8, 20f);
        using var dx = device!.Upload(x, rows, cols);
        K.Softmax.Forward(device, dx.View, dx.View, rows, cols, Reduction.Parallel);
        TensorAssert.Close(K.Softmax.Reference(x, rows, cols), dx.ToArray(), 1e-7, 1e-5, "softmax v2, in place");
    }

    [Theory]
    [InlineData(7, 33)]
    [InlineData(300, 1024)]
    public void BackwardMatchesReference(int rows, int cols)
    {
        // Tolerance: atol 1e-6 + rtol 1e-5, as v1 (the row sum in another order).
        Assert.SkipWhen(device is null, "no CUDA device");
        var (y, dy) = ElementwiseTests.SoftmaxBackwardInputs(rows, cols);
        using var dyy = device!.Upload(y, rows, cols);
        using var ddy = device.Upload(dy, rows, cols);
        K.Softmax.Backward(device, dyy.View, ddy.View, ddy.View, rows, cols, Reduction.Parallel);
        TensorAssert.Close(K.Softmax.BackwardReference(y, dy, rows, cols), ddy.ToArray(), 1e-6, 1e-5, "softmax backward v2, in place");
    }
}

[Collection("cpu")]
public sealed class SoftmaxWarpTestsCpuWarp32(CpuWarp32DeviceFixture f) : SoftmaxWarpTests(f.Plan);

[Collection("cuda")]
public sealed class SoftmaxWarpTestsCuda(CudaDeviceFixture f) : SoftmaxWarpTests(f.Plan);

/// <summary>
/// Softmax.BackwardReference against central finite differences (h = 1e-4) of a double softmax, L = Σ dy ⊙ softmax(x).
/// Tolerance: NMSE ≤ 1e-10 — the reference takes fp32 y and returns fp32 (~1e-14), truncation h²·|L'''| ≈ 1e-8 relative.
/// </summary>
public sealed class SoftmaxBackwardReferenceTests
{
    [Fact]
    public void MatchesFiniteDifferences()
    {
        const int rows = 5, cols = 9;
        var x = Array.ConvertAll(TestData.Uniform(rows * cols, 11, 4f), v => (double)v);
        var dy = TestData.Uniform(rows * cols, 12);
        var y = Array.ConvertAll(SoftmaxDouble(x, rows, cols), v => (float)v);
        var numeric = new float[x.Length];
        const double h = 1e-4;
        for (int e = 0; e < x.Length; e++)
        {
            double keep = x[e];
            x[e] = keep + h;
            double plus = Dot(SoftmaxDouble(x, rows, cols), dy);
            x[e] = keep - h;
            double minus = Dot(SoftmaxDouble(x, rows, cols), dy);
            x[e] = keep;
            numeric[e] = (float)((plus - minus) / (2 * h));
        }
        TensorAssert.NmseBelow(numeric, K.Softmax.BackwardReference(y, dy, rows, cols), 1e-10, "softmax backward reference");
    }

    static double[] SoftmaxDouble(double[] x, int rows, int cols)
    {
        var y = new double[x.Length];
        for (int r = 0; r < rows; r++)
        {
            double max = x.Skip(r * cols).Take(cols).Max(), sum = 0;
            for (int c = 0; c < cols; c++)
            {
                sum += y[r * cols + c] = Math.Exp(x[r * cols + c] - max);
            }
            for (int c = 0; c < cols; c++)
            {
                y[r * cols + c] /= sum;
            }
        }
        return y;
    }

    static double Dot(double[] a, float[] b) => a.Select((v, i) => v * b[i]).Sum();
}
