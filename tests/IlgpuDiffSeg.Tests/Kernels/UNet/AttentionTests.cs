using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

public abstract class AttentionTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    // Tolerance: NMSE ≤ 1e-10 — two fp32 GEMMs and an fp32 softmax against a double reference.
    const double NmseBound = 1e-10;

    /// <summary>The products' kernel: v2 unless the device runs them on the host.</summary>
    protected virtual MatmulKernel Products => MatmulKernel.Registers;

    [Theory]
    [InlineData(2, 8, 16, 2, true)]
    [InlineData(2, 8, 16, 2, false)]
    [InlineData(1, 12, 9, 3, true)]
    [InlineData(1, 12, 9, 3, false)]
    public void MatchesReference(int n, int channels, int t, int heads, bool legacy)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var qkv = TestData.Uniform(n * 3 * channels * t, 11, 2f);
        using var dq = device!.Upload(qkv, n, 3 * channels, t);
        using var dy = device.Allocate(n, channels, t);
        Attention.Forward(dq, dy, heads, legacy, Products);
        TensorAssert.NmseBelow(Attention.Reference(qkv, n, channels, t, heads, legacy), dy.ToArray(), NmseBound, "attention");
    }

    [Fact]
    public void OrdersDifferOnTheSameInput()
    {
        // Guards the layouts against collapsing into one: with several heads the two orders must disagree.
        var qkv = TestData.Uniform(3 * 8 * 4, 12);
        var a = Attention.Reference(qkv, 1, 8, 4, 2, true);
        var b = Attention.Reference(qkv, 1, 8, 4, 2, false);
        Assert.True(TensorAssert.Nmse(a, b) > 1e-3);
    }
}

[Collection("cpu")]
public sealed class AttentionTestsCpu(CpuDeviceFixture f) : AttentionTests(f.Plan);

/// <summary>The CPU backend: both products on HostGemm (the convolutions' micro-kernel), the softmax as host code.</summary>
[Collection("cpu")]
public sealed class AttentionTestsCpuSimd(CpuSimdDeviceFixture f) : AttentionTests(f.Plan)
{
    protected override MatmulKernel Products => MatmulKernel.HostSimd;
}

[Collection("cuda")]
public sealed class AttentionTestsCuda(CudaDeviceFixture f) : AttentionTests(f.Plan);

/// <summary>
/// The flash kernel (tile by tile, online softmax, no score buffer) against the reference: sequences that cross the
/// 64-query and 32-key tiles, head widths of 64 (the UNet's) and of 20 (channel masking), both orders, 1–3 images.
/// Tolerance as above: NMSE ≤ 1e-10 (fp32 against double).
/// </summary>
public abstract class FlashAttentionTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Theory]
    [InlineData(2, 128, 70, 2, true)]
    [InlineData(1, 128, 70, 2, false)]
    [InlineData(3, 60, 33, 3, true)]
    [InlineData(1, 64, 5, 1, false)]
    public void MatchesReference(int n, int channels, int t, int heads, bool legacy)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var qkv = TestData.Uniform(n * 3 * channels * t, 13, 2f);
        using var dq = device!.Upload(qkv, n, 3 * channels, t);
        using var dy = device.Allocate(n, channels, t);
        Assert.True(Attention.FlashSupported(device, channels / heads));
        Attention.ForwardFlash(dq, dy, heads, legacy);
        TensorAssert.NmseBelow(Attention.Reference(qkv, n, channels, t, heads, legacy), dy.ToArray(), 1e-10, "flash attention");
    }
}

[Collection("cpu")]
public sealed class FlashAttentionTestsCpuWarp32(CpuWarp32DeviceFixture f) : FlashAttentionTests(f.Plan);

[Collection("cuda")]
public sealed class FlashAttentionTestsCuda(CudaDeviceFixture f) : FlashAttentionTests(f.Plan);
