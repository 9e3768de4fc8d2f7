using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>GroupNorm.BackwardReference against central finite differences of the double forward reference.</summary>
public sealed class GroupNormBackwardReferenceTests
{
    // Tolerance: atol 1e-8 + rtol 1e-6. With h = 1e-5 the central difference errs by ~h²·|f'''| ≈ 1e-10 plus rounding
    // ~1e-16/h ≈ 1e-11 on gradients of order 1; a wrong term (a missing mean_group, a wrong (1 + s)) is O(0.1).
    const double H = 1e-5, Atol = 1e-8, Rtol = 1e-6;

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void MatchesFiniteDifferences(bool silu, bool scaleShift)
    {
        const int n = 2, c = 8, spatial = 5, groups = 4;
        const double eps = 1e-5;
        var x = Gradcheck.ToDouble(TestData.Uniform(n * c * spatial, 11, 2f)).Select(v => v + 1).ToArray();
        var gamma = Gradcheck.ToDouble(TestData.Uniform(c, 12)).Select(v => 1 + 0.5 * v).ToArray();
        var beta = Gradcheck.ToDouble(TestData.Uniform(c, 13, 0.5f));
        var emb = scaleShift ? Gradcheck.ToDouble(TestData.Uniform(n * 2 * c, 14, 0.5f)) : null;
        var dy = Gradcheck.ToDouble(TestData.Uniform(x.Length, 15));
        var (dx, dgamma, dbeta, demb) = GroupNorm.BackwardReference(x, gamma, beta, emb, silu, dy, n, c, spatial, groups, eps);
        double Loss(double[] xs, double[] g, double[] b, double[]? e) =>
            Gradcheck.Dot(dy, GroupNorm.Reference(xs, g, b, n, c, spatial, groups, eps, silu, e));
        Gradcheck.Matches(Gradcheck.Numeric(x, v => Loss(v, gamma, beta, emb), H), dx, Atol, Rtol, "dx");
        Gradcheck.Matches(Gradcheck.Numeric(gamma, v => Loss(x, v, beta, emb), H), dgamma, Atol, Rtol, "dγ");
        Gradcheck.Matches(Gradcheck.Numeric(beta, v => Loss(x, gamma, v, emb), H), dbeta, Atol, Rtol, "dβ");
        if (emb is not null)
        {
            Gradcheck.Matches(Gradcheck.Numeric(emb, v => Loss(x, gamma, beta, v), H), demb!, Atol, Rtol, "d(scale, shift)");
        }
    }
}

/// <summary>GroupNorm.Backward's kernels against the double reference.</summary>
public abstract class GroupNormBackwardTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    /// <summary>The plane sums' kernel: Auto (v1 on the CPU, v2 on CUDA) unless a subclass forces one.</summary>
    protected virtual Reduction PlaneSums => Reduction.Auto;

    /// <summary>The most (n, c) planes a case may have here: the warp-32 simulator runs a 256-thread block per plane.</summary>
    protected virtual int MaxPlanes => int.MaxValue;

    // Tolerance: atol 1e-5 + rtol 1e-5 on dx, whose terms g − mean(g) − u·mean(g·u) partly cancel; 1e-5 of each gradient's
    // largest value on dγ, dβ, d(scale, shift). Measured on the CPU accelerator (v1) and the warp-32 simulator (v2): dx
    // within 3.6e-7 (2.3e-6 for the 2,053-long planes, from the forward's fp32 statistics), parameter gradients within
    // 1.2e-6 of their largest value. A wrong group, channel or term is O(1).
    const double DxTol = 1e-5, ParamTol = 1e-5;

    [Theory]
    [InlineData(2, 64, 5, 32, false, false)]
    [InlineData(1, 32, 40, 32, true, false)]
    [InlineData(2, 64, 9, 32, true, true)]
    [InlineData(3, 12, 7, 4, true, true)]
    [InlineData(1, 8, 2053, 4, true, true)] // v2 splits each plane into two chunks, the last one short
    public void MatchesReference(int n, int c, int spatial, int groups, bool silu, bool scaleShift)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        Assert.SkipWhen(n * c > MaxPlanes, $"{n * c} planes: too many blocks for the simulator (CUDA runs this case)");
        var x = TestData.Uniform(n * c * spatial, 1, 2f).Select(v => v + 3f).ToArray();
        var gamma = TestData.Uniform(c, 2).Select(v => 1 + 0.1f * v).ToArray();
        var beta = TestData.Uniform(c, 3, 0.1f);
        var emb = scaleShift ? TestData.Uniform(n * 2 * c, 4, 0.5f) : null;
        var dy = TestData.Uniform(x.Length, 5);
        // Gradients already there: dγ and dβ must be added to, dx and d(scale, shift) overwritten.
        var dgamma0 = TestData.Uniform(c, 6);
        var dbeta0 = TestData.Uniform(c, 7);
        var dev = device!;
        using var tx = dev.Upload(x, n, c, spatial);
        using var tg = dev.Upload(gamma, c);
        using var tb = dev.Upload(beta, c);
        using var te = emb is null ? null : dev.Upload(emb, n, 2 * c);
        using var tdy = dev.Upload(dy, n, c, spatial);
        using var tdx = dev.Upload(TestData.Uniform(x.Length, 8), n, c, spatial);
        using var tdg = dev.Upload(dgamma0, c);
        using var tdb = dev.Upload(dbeta0, c);
        using var tde = emb is null ? null : dev.Upload(TestData.Uniform(n * 2 * c, 9), n, 2 * c);
        using var stats = GroupNorm.Statistics(tx, groups, GroupNorm.DefaultEps, PlaneSums);
        GroupNorm.Backward(tx, stats, tg, tb, te, silu, tdy, tdx, tdg, tdb, tde, accumulateInput: false, PlaneSums);
        var r = GroupNorm.BackwardReference(Gradcheck.ToDouble(x), Gradcheck.ToDouble(gamma), Gradcheck.ToDouble(beta),
            emb is null ? null : Gradcheck.ToDouble(emb), silu, Gradcheck.ToDouble(dy), n, c, spatial, groups, GroupNorm.DefaultEps);
        TensorAssert.Close(Gradcheck.ToFloat(r.Dx), tdx.ToArray(), DxTol, DxTol, "dx");
        CloseRelativeToMax(dgamma0.Select((v, i) => (float)(v + r.Dgamma[i])).ToArray(), tdg.ToArray(), "dγ (accumulated)");
        CloseRelativeToMax(dbeta0.Select((v, i) => (float)(v + r.Dbeta[i])).ToArray(), tdb.ToArray(), "dβ (accumulated)");
        if (te is not null)
        {
            CloseRelativeToMax(Gradcheck.ToFloat(r.DscaleShift!), tde!.ToArray(), "d(scale, shift)");
        }
    }

    /// <summary>accumulateInput adds to dx; the same call twice adds dγ and dβ twice, bit for bit (no atomics).</summary>
    [Fact]
    public void AccumulatesAndRepeatsExactly()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        const int n = 2, c = 8, spatial = 9, groups = 4;
        var x = TestData.Uniform(n * c * spatial, 21, 2f);
        var gamma = TestData.Uniform(c, 22).Select(v => 1 + 0.1f * v).ToArray();
        var beta = TestData.Uniform(c, 23, 0.1f);
        var emb = TestData.Uniform(n * 2 * c, 24, 0.5f);
        var dy = TestData.Uniform(x.Length, 25);
        var dx0 = TestData.Uniform(x.Length, 26);
        var dev = device!;
        using var tx = dev.Upload(x, n, c, spatial);
        using var tg = dev.Upload(gamma, c);
        using var tb = dev.Upload(beta, c);
        using var te = dev.Upload(emb, n, 2 * c);
        using var tdy = dev.Upload(dy, n, c, spatial);
        using var stats = GroupNorm.Statistics(tx, groups, GroupNorm.DefaultEps, PlaneSums);
        using var fresh = dev.Allocate(n, c, spatial);
        using var summed = dev.Upload(dx0, n, c, spatial);
        using var dg = dev.Zeros(c);
        using var db = dev.Zeros(c);
        using var de = dev.Allocate(n, 2 * c);
        GroupNorm.Backward(tx, stats, tg, tb, te, true, tdy, fresh, dg, db, de, accumulateInput: false, PlaneSums);
        var once = (dg.ToArray(), db.ToArray(), de.ToArray());
        GroupNorm.Backward(tx, stats, tg, tb, te, true, tdy, summed, dg, db, de, accumulateInput: true, PlaneSums);
        var dxFresh = fresh.ToArray();
        Assert.Equal(dx0.Select((v, i) => v + dxFresh[i]).ToArray(), summed.ToArray());
        Assert.Equal(once.Item1.Select(v => v + v).ToArray(), dg.ToArray());
        Assert.Equal(once.Item2.Select(v => v + v).ToArray(), db.ToArray());
        Assert.Equal(once.Item3, de.ToArray());
    }

    static void CloseRelativeToMax(float[] expected, float[] actual, string what)
    {
        double scale = Math.Max(1e-30, expected.Max(v => Math.Abs((double)v)));
        TensorAssert.Close(expected, actual, ParamTol * scale, ParamTol, what);
    }
}

[Collection("cpu")]
public sealed class GroupNormBackwardTestsCpu(CpuDeviceFixture f) : GroupNormBackwardTests(f.Plan);

/// <summary>The CPU backend's host backward (HostBackend.GroupNorm.cs).</summary>
[Collection("cpu")]
public sealed class GroupNormBackwardTestsCpuSimd(CpuSimdDeviceFixture f) : GroupNormBackwardTests(f.Plan);

/// <summary>The GPU plane sums (v2: 256-thread blocks per chunk) on the warp-32 simulator.</summary>
[Collection("cpu")]
public sealed class GroupNormBackwardTestsCpuWarp32(CpuWarp32DeviceFixture f) : GroupNormBackwardTests(f.Plan)
{
    protected override Reduction PlaneSums => Reduction.Parallel;

    protected override int MaxPlanes => 40;
}

[Collection("cuda")]
public sealed class GroupNormBackwardTestsCuda(CudaDeviceFixture f) : GroupNormBackwardTests(f.Plan);
