using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// GroupNorm (+scale-shift, +SiLU) fused into the tiled convolutions (Conv2d.ForwardNormalized, v3 and v4) against
/// GroupNorm.Reference followed by Conv2d.Reference; and the UNet blocks that use it, fused against unfused.
/// The input has a mean of 3 so that the folded coefficients are checked where cancellation would show.
/// Tolerances: v3 NMSE ≤ 1e-10 (fp32 throughout); v4 NMSE ≤ 1e-6 (fp16 operands, as TensorCoreGemmTests).
/// </summary>
public abstract class NormalizedConvTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Theory]
    [InlineData(3, true, true, 1)]
    [InlineData(3, true, false, 2)]
    [InlineData(1, false, false, 1)]
    [InlineData(3, true, true, 1, 4)]
    [InlineData(1, false, true, 1, 4)]
    [InlineData(3, true, true, 1, 3, 8, 8, 128)] // exact tiles: M = N = 128, K = 576
    [InlineData(3, true, true, 1, 4, 8, 8, 128)]
    public void MatchesNormThenConvolution(int k, bool silu, bool scaleShift, int stride, int version = 3, int h = 7, int w = 9, int cout = 10)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        const int n = 2, cin = 64;
        var s = ConvShape.Create(n, cin, h, w, cout, k, stride, k / 2);
        var x = TestData.Uniform(n * cin * h * w, 1).Select(v => v + 3f).ToArray();
        var gamma = TestData.Uniform(cin, 2).Select(v => 1f + 0.5f * v).ToArray();
        var beta = TestData.Uniform(cin, 3);
        var emb = scaleShift ? TestData.Uniform(n * 2 * cin, 4) : null;
        var wt = TestData.Uniform(cout * cin * k * k, 5, 0.2f);
        var b = TestData.Uniform(cout, 6);
        var r = TestData.Uniform(n * cout * s.Ho * s.Wo, 7);
        using var dx = device!.Upload(x, n, cin, h, w);
        using var dg = device.Upload(gamma, cin);
        using var dbeta = device.Upload(beta, cin);
        using var demb = emb is null ? null : device.Upload(emb, n, 2 * cin);
        using var dw = device.Upload(wt, cout, cin, k, k);
        using var db = device.Upload(b, cout);
        using var dr = device.Upload(r, n, cout, s.Ho, s.Wo);
        using var dy = device.Allocate(n, cout, s.Ho, s.Wo);
        using (var coefficients = GroupNorm.Coefficients(dx, dg, dbeta, demb))
        {
            Conv2d.ForwardNormalized(dx, coefficients, silu, dw, db, dy, stride, dr, plan!.Kernel(version));
        }
        var normed = GroupNorm.Reference(x, gamma, beta, n, cin, h * w, GroupNorm.DefaultGroups, GroupNorm.DefaultEps, silu, emb);
        TensorAssert.NmseBelow(Conv2d.Reference(normed, wt, b, s, r), dy.ToArray(), version == 4 ? 1e-6 : 1e-10, $"fused norm + conv v{version}");
    }

    /// <summary>The plans of <see cref="UNetBlocksFusedMatchUnfused"/>: unfused v2 and fused v3 unless a device says otherwise.</summary>
    protected virtual (ExecutionPlan Unfused, ExecutionPlan Fused) BlockPlans =>
        (plan!.With(MatmulKernel.Registers), plan!.With(MatmulKernel.Tiled));

    /// <summary>A ResBlock (scale-shift, channel change) and an AttentionBlock, fused (v3) against the unfused v2 path.</summary>
    [Fact]
    public void UNetBlocksFusedMatchUnfused()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var resBlock = new ResBlock("res.", 32, 16, 64, useScaleShiftNorm: true);
        var attention = new AttentionBlock("attn.", 64, numHeads: 2, numHeadChannels: -1, useNewAttentionOrder: false);
        ModelWeights.InitializeRandom(resBlock, plan!, 3);
        ModelWeights.InitializeRandom(attention, plan!, 4);
        using var x = device!.Upload(TestData.Uniform(2 * 32 * 6 * 6, 8), 2, 32, 6, 6);
        using var emb = device.Upload(TestData.Uniform(2 * 16, 9), 2, 16);

        float[] Run(ExecutionPlan blockPlan)
        {
            using var pass = new Pass(blockPlan);
            using var h = resBlock.Forward(pass, x, emb);
            using var y = attention.Forward(pass, h, emb);
            return y.ToArray();
        }

        var (unfused, fused) = BlockPlans;
        Assert.True(fused.FusesNorms);
        Assert.False(unfused.FusesNorms);
        TensorAssert.NmseBelow(Run(unfused), Run(fused), 1e-10, "ResBlock + AttentionBlock fused vs unfused");
    }
}

/// <summary>The CPU backend's fused norm (HostConv reading the normalized input), v3 = HostSimd, v4 = HostSimdFp16.</summary>
[Collection("cpu")]
public sealed class NormalizedConvTestsCpuSimd(CpuSimdDeviceFixture f) : NormalizedConvTests(f.Plan)
{
    protected override (ExecutionPlan Unfused, ExecutionPlan Fused) BlockPlans =>
        (f.Plan.With(MatmulKernel.HostSimd, fuseNorms: false), f.Plan.With(MatmulKernel.HostSimd));
}

[Collection("cpu")]
public sealed class NormalizedConvTestsCpuWarp32(CpuWarp32DeviceFixture f) : NormalizedConvTests(f.Plan);

[Collection("cuda")]
public sealed class NormalizedConvTestsCuda(CudaDeviceFixture f) : NormalizedConvTests(f.Plan);
