using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

public abstract class GroupNormTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    /// <summary>Which statistics kernel to run: 0, the device's choice (v1 on the CPU, v2 on CUDA).</summary>
    protected virtual int StatisticsVersion => 0;

    // Tolerance: atol 2e-5 + rtol 2e-5 per element. fp32 statistics (two-pass in v1, shifted one-pass chunks merged in
    // double in v2) differ from the double reference by a few ulp of the normalised value (|y| ≲ 5); a wrong group or
    // channel is O(1).
    const double Atol = 2e-5, Rtol = 2e-5;

    [Theory]
    [InlineData(2, 64, 5, 32, false, false)]
    [InlineData(1, 32, 40, 32, true, false)]
    [InlineData(2, 64, 9, 32, true, true)]
    [InlineData(3, 12, 7, 4, true, true)]
    [InlineData(1, 32, 4099, 4, true, true)] // groups of 32,792: v2 splits each into several chunks, the last one short
    public void MatchesReference(int n, int c, int spatial, int groups, bool silu, bool scaleShift)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // An offset mean (3.0) checks the two-pass variance.
        var x = TestData.Uniform(n * c * spatial, 1, 2f).Select(v => v + 3f).ToArray();
        var gamma = TestData.Uniform(c, 2).Select(v => 1 + 0.1f * v).ToArray();
        var beta = TestData.Uniform(c, 3, 0.1f);
        var emb = scaleShift ? TestData.Uniform(n * 2 * c, 4, 0.5f) : null;
        using var dx = device!.Upload(x, n, c, spatial);
        using var dg = device.Upload(gamma, c);
        using var db = device.Upload(beta, c);
        using var de = emb is null ? null : device.Upload(emb, n, 2 * c);
        using var dy = device.Allocate(n, c, spatial);
        var expected = GroupNorm.Reference(x, gamma, beta, n, c, spatial, groups, GroupNorm.DefaultEps, silu, emb);
        GroupNorm.Forward(dx, dg, db, dy, silu, de, groups, statistics: StatisticsVersion == 2 ? Reduction.Parallel : Reduction.Auto);
        TensorAssert.Close(expected, dy.ToArray(), Atol, Rtol, $"group_norm, statistics v{StatisticsVersion}");
    }

    [Fact]
    public void InPlace()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var x = TestData.Uniform(2 * 32 * 6, 5);
        var gamma = Enumerable.Repeat(1f, 32).ToArray();
        var beta = new float[32];
        using var dx = device!.Upload(x, 2, 32, 6);
        using var dg = device.Upload(gamma, 32);
        using var db = device.Upload(beta, 32);
        GroupNorm.Forward(dx, dg, db, dx, silu: true);
        TensorAssert.Close(GroupNorm.Reference(x, gamma, beta, 2, 32, 6, 32, 1e-5f, true), dx.ToArray(), Atol, Rtol, "in place");
    }
}

[Collection("cpu")]
public sealed class GroupNormTestsCpu(CpuDeviceFixture f) : GroupNormTests(f.Plan);

/// <summary>The CPU backend's host statistics and apply (HostBackend.GroupNorm.cs).</summary>
[Collection("cpu")]
public sealed class GroupNormTestsCpuSimd(CpuSimdDeviceFixture f) : GroupNormTests(f.Plan);

/// <summary>The GPU statistics (v2: 256-thread blocks) on the warp-32 simulator.</summary>
[Collection("cpu")]
public sealed class GroupNormTestsCpuWarp32(CpuWarp32DeviceFixture f) : GroupNormTests(f.Plan)
{
    protected override int StatisticsVersion => 2;
}

[Collection("cuda")]
public sealed class GroupNormTestsCuda(CudaDeviceFixture f) : GroupNormTests(f.Plan);
