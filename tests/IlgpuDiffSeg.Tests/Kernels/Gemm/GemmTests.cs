using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

public abstract class GemmTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    // Tolerance: NMSE ≤ 1e-10 (fp32 sums of ≤ 70 products vs a double reference give ~1e-14).
    const double NmseBound = 1e-10;

    [Theory]
    [InlineData(5, 7, 9, false, false, 1)]
    [InlineData(5, 7, 9, false, false, 2)]
    [InlineData(6, 3, 70, true, false, 2)]
    [InlineData(9, 10, 4, false, true, 2)]
    [InlineData(4, 4, 1, true, true, 2)]
    public void RowMajorWithBiasAndResidualAndRelu(int m, int n, int k, bool transA, bool transB, int version)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        CheckRowMajor(plan!, m, n, k, transA, transB, version);
    }

    /// <summary>α·A·B + bias + residual, ReLU, against the reference; shared by every kernel version's tests.</summary>
    public static void CheckRowMajor(ExecutionPlan plan, int m, int n, int k, bool transA, bool transB, int version)
    {
        var run = RunRowMajor(plan, m, n, k, transA, transB, version);
        TensorAssert.NmseBelow(Gemm.Reference(run.A, run.B, run.Bias, run.Residual, run.Shape, m * n), run.C, NmseBound, $"gemm v{version}");
    }

    public sealed record RowMajorRun(GemmShape Shape, float[] A, float[] B, float[] Bias, float[] Residual, float[] C);

    /// <summary>C = ReLU(0.5·A·B + bias + residual) with the given kernel; the inputs and the result, for any reference.</summary>
    public static RowMajorRun RunRowMajor(ExecutionPlan plan, int m, int n, int k, bool transA, bool transB, int version)
    {
        var device = plan.Device;
        var s = GemmShape.RowMajor(m, n, k, transA, transB);
        s.BiasRow = 1;
        s.Act = (int)Activation.Relu;
        s.Alpha = 0.5f;
        var a = TestData.Uniform(m * k, 1);
        var b = TestData.Uniform(k * n, 2);
        var bias = TestData.Uniform(m, 3);
        var r = TestData.Uniform(m * n, 4);
        using var da = device.Upload(a, m * k);
        using var db = device.Upload(b, k * n);
        using var dbias = device.Upload(bias, m);
        using var dc = device.Upload(r, m * n);
        Gemm.Run(device, s, da.View, db.View, dc.View, dbias.View, dc.View, plan.Kernel(version));
        s.HasBias = s.HasResidual = 1;
        return new RowMajorRun(s, a, b, bias, r, dc.ToArray());
    }

    [Theory]
    [InlineData(150, 300, 700, false, false)]
    [InlineData(73, 259, 257, true, false)]
    [InlineData(7, 515, 64, false, true)]
    public void LargeShapesCrossEveryBlockBoundary(int m, int n, int k, bool transA, bool transB)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Sizes straddle the host backend's 6×16 micro-tiles, 72×256 tiles and 256-deep K blocks.
        var s = GemmShape.RowMajor(m, n, k, transA, transB);
        s.BiasCol = 1;
        var a = TestData.Uniform(m * k, 31);
        var b = TestData.Uniform(k * n, 32);
        var bias = TestData.Uniform(n, 33);
        using var da = device!.Upload(a, m * k);
        using var db = device.Upload(b, k * n);
        using var dbias = device.Upload(bias, n);
        using var dc = device.Allocate(m * n);
        Gemm.Run(device, s, da.View, db.View, dc.View, dbias.View);
        s.HasBias = 1;
        TensorAssert.NmseBelow(Gemm.Reference(a, b, bias, null, s, m * n), dc.ToArray(), NmseBound, "large gemm");
    }

    [Fact]
    public void TwoBatchDimensionsWithOffsets()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        CheckBatched(plan!, 2);
    }

    /// <summary>Two batch dimensions, offsets, a shared operand and a batched bias; shared by every kernel version's tests.</summary>
    public static void CheckBatched(ExecutionPlan plan, int version, double nmseBound = NmseBound)
    {
        var device = plan.Device;
        // C[b0,b1] = A[b0,b1]·B[b0] + bias[b0,b1] where B is shared across b1 (batch stride 0) and A is read transposed.
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
        using var da = device.Upload(a, a.Length);
        using var db = device.Upload(b, b.Length);
        var bias = TestData.Uniform(12, 7);
        using var dbias = device.Upload(bias, 12);
        using var dc = device.Zeros(90);
        Gemm.Run(device, s, da.View, db.View, dc.View, dbias.View, kernel: plan.Kernel(version));
        TensorAssert.NmseBelow(Gemm.Reference(a, b, bias, null, s, 90), dc.ToArray(), nmseBound, "batched gemm with batched bias");
    }

    /// <summary>
    /// Split K (forced here; on CUDA AutoSplitK picks it for the classifier's first layer) in that layer's layout: one x
    /// shared by the members, each member's weights in torch (out, in) layout, a bias per member, α, ReLU and C += A·B.
    /// Tolerance: the NMSE bound of the other checks — only the order of the fp32 sums changes.
    /// </summary>
    [Theory]
    [InlineData(4)]
    [InlineData(8)]
    public void SplitKMatchesReference(int splits)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        const int members = 3, rows = 5, outs = 7, k = 96;
        var s = new GemmShape
        {
            M = rows, N = outs, K = k, Batch0 = members, Batch1 = 1, Alpha = 0.5f, Act = (int)Activation.Relu,
            ARow = k, ACol = 1, BBatch0 = outs * k, BRow = 1, BCol = k,
            CBatch0 = rows * outs, CRow = outs, CCol = 1, BiasBatch0 = outs, BiasCol = 1,
        };
        var a = TestData.Uniform(rows * k, 41);
        var b = TestData.Uniform(members * outs * k, 42);
        var bias = TestData.Uniform(members * outs, 43);
        var r = TestData.Uniform(members * rows * outs, 44);
        using var da = device!.Upload(a, a.Length);
        using var db = device.Upload(b, b.Length);
        using var dbias = device.Upload(bias, bias.Length);
        using var dc = device.Upload(r, r.Length);
        Gemm.Run(device, s, da.View, db.View, dc.View, dbias.View, dc.View, splitK: splits);
        s.HasBias = s.HasResidual = 1;
        TensorAssert.NmseBelow(Gemm.Reference(a, b, bias, r, s, r.Length), dc.ToArray(), NmseBound, $"gemm, {splits} K splits");
    }

    [Fact]
    public void LinearMatchesTorchLayout()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var x = TestData.Uniform(6 * 10, 7);
        var w = TestData.Uniform(7 * 10, 8);
        var b = TestData.Uniform(7, 9);
        using var dx = device!.Upload(x, 6, 10);
        using var dw = device.Upload(w, 7, 10);
        using var db = device.Upload(b, 7);
        using var dy = device.Allocate(6, 7);
        Linear.Forward(dx, dw, db, dy, Activation.Relu);
        TensorAssert.NmseBelow(Linear.Reference(x, w, b, 6, 10, 7, relu: true), dy.ToArray(), NmseBound, "linear");
    }
}

[Collection("cpu")]
public sealed class GemmTestsCpu(CpuDeviceFixture f) : GemmTests(f.Plan);

[Collection("cpu")]
public sealed class GemmTestsCpuSimd(CpuSimdDeviceFixture f) : GemmTests(f.Plan);

[Collection("cuda")]
public sealed class GemmTestsCuda(CudaDeviceFixture f) : GemmTests(f.Plan);
