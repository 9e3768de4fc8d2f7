using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Kernels.UNet;

/// <summary>The classifier head's token plumbing (AttentionPool) and the guidance gradient (ClassifierGradient) against
/// their plain references.</summary>
public abstract class AttentionPoolTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Fact]
    public void TokensAndTheirBackward()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        int n = 2, c = 3, hw = 5 * 5;
        var x = TestData.Uniform(n * c * hw, 1, 2f);
        var pos = TestData.Uniform(c * (hw + 1), 2);
        using var dx = device!.Upload(x, n, c, 5, 5);
        using var dPos = device.Upload(pos, c, hw + 1);
        using var t = device.Allocate(n, c, 1, hw + 1);
        AttentionPool.Tokens(dx, dPos, t);
        // Tolerance: atol 1e-6 + rtol 1e-6 — the same fp32 sum in the same order; division by HW.
        TensorAssert.Close(AttentionPool.TokensReference(x, pos, n, c, hw), t.ToArray(), 1e-6, 1e-6, "tokens");
        var dt = TestData.Uniform(t.Length, 3);
        using var dtT = device.Upload(dt, t.Shape);
        using var back = device.Allocate(n, c, 5, 5);
        AttentionPool.TokensBackward(dtT, back);
        TensorAssert.Close(AttentionPool.TokensBackwardReference(dt, n, c, hw), back.ToArray(), 1e-6, 1e-6, "tokens backward");
    }

    [Fact]
    public void FirstTokenAndMean()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var y = TestData.Uniform(2 * 3 * 7, 4);
        using var dy = device!.Upload(y, 2, 3, 1, 7);
        using var first = device.Allocate(2, 3, 1, 1);
        AttentionPool.First(dy, first);
        // Tolerance: exact (copies) and 1e-6 (the same fp32 sums).
        TensorAssert.Close(Enumerable.Range(0, 6).Select(i => y[i * 7]).ToArray(), first.ToArray(), 0, 0, "first");
        using var scattered = device.Allocate(2, 3, 1, 7);
        AttentionPool.FirstBackward(first, scattered);
        TensorAssert.Close(y.Select((v, i) => i % 7 == 0 ? v : 0f).ToArray(), scattered.ToArray(), 0, 0, "first backward");
        using var mean = device.Allocate(2, 3, 1, 1);
        AttentionPool.Mean(dy, mean);
        TensorAssert.Close(AttentionPool.MeanReference(y, 6, 7), mean.ToArray(), 1e-6, 1e-6, "mean");
        using var dMean = device.Allocate(2, 3, 1, 7);
        AttentionPool.MeanBackward(mean, dMean);
        TensorAssert.Close(y.Select((_, i) => AttentionPool.MeanReference(y, 6, 7)[i / 7] / 7).ToArray(), dMean.ToArray(), 1e-7, 1e-6,
            "mean backward");
    }

    [Fact]
    public void GuidanceGradientIsOneHotMinusSoftmax()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        int n = 3, classes = 1000;
        var logits = TestData.Uniform(n * classes, 5, 8f);
        int[] labels = [0, 999, 417];
        using var dl = device!.Upload(logits, n, classes);
        using var y = device.Buffer<int>(labels);
        using var d = device.Allocate(n, classes);
        ClassifierGradient.Forward(dl, y, d);
        // Tolerance: atol 1e-6 + rtol 1e-5 against double (exp is ex2.approx on the GPU; probabilities ≤ 1).
        TensorAssert.Close(ClassifierGradient.Reference(logits, labels, classes), d.ToArray(), 1e-6, 1e-5, "d log p(y)/d logits");
    }
}

[Collection("cpu")]
public sealed class AttentionPoolTestsCpu(CpuDeviceFixture f) : AttentionPoolTests(f.Plan);

[Collection("cpu")]
public sealed class AttentionPoolTestsCpuSimd(CpuSimdDeviceFixture f) : AttentionPoolTests(f.Plan);

[Collection("cuda")]
public sealed class AttentionPoolTestsCuda(CudaDeviceFixture f) : AttentionPoolTests(f.Plan);
