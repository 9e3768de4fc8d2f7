using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>The pixel-classifier kernels (BatchNorm1d, cross-entropy, Adam, stopping rule, gather, vote) against their references.</summary>
public abstract class ClassifierKernelTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    static BatchNormShape Shape(int members, int rows, int features, int stride) => new()
    {
        Members = members, Rows = rows, Features = features, MemberStride = stride, GammaOffset = 0, BetaOffset = features,
        LinearBiasOffset = 2 * features, Eps = 1e-5f, Momentum = 0.1f,
    };

    [Fact]
    public void BatchNormTrainEvalAndBackward()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: atol 1e-5 + rtol 1e-4 (fp32 batch statistics over 16 rows vs double).
        const int members = 2, rows = 16, features = 5, stride = 3 * features;
        var dev = device!;
        var x = TestData.Uniform(members * rows * features, 1, 2f).Select(v => MathF.Max(v, 0) + 0.1f * v).ToArray();
        var parameters = TestData.Uniform(members * stride, 2);
        var rm = TestData.Uniform(members * features, 3, 0.1f);
        var rv = TestData.Uniform(members * features, 4, 0.1f).Select(v => 1 + v).ToArray();
        var dy = TestData.Uniform(x.Length, 5);
        using var dx = dev.Upload(x, x.Length);
        using var dp = dev.Upload(parameters, parameters.Length);
        using var drm = dev.Upload(rm, rm.Length);
        using var drv = dev.Upload(rv, rv.Length);
        using var dact = dev.Upload([1f, 0f], 2);
        using var xhat = dev.Allocate(x.Length);
        using var rstd = dev.Allocate(members * features);
        using var y = dev.Allocate(x.Length);
        var s = Shape(members, rows, features, stride);
        BatchNorm1d.TrainForward(plan!, s, dx.View, dp.View, drm.View, drv.View, dact.View, xhat.View, rstd.View, y.View);
        var yGot = y.ToArray();
        var rmGot = drm.ToArray();
        var rvGot = drv.ToArray();
        using var ddy = dev.Upload(dy, dy.Length);
        using var grads = dev.Zeros(members * stride);
        using var dz = dev.Allocate(x.Length);
        BatchNorm1d.Backward(plan!, s, dx.View, xhat.View, rstd.View, ddy.View, dp.View, grads.View, dz.View);
        var dzGot = dz.ToArray();
        var gradsGot = grads.ToArray();
        for (int m = 0; m < members; m++)
        {
            var xm = x.AsSpan(m * rows * features, rows * features).ToArray();
            var gamma = parameters.AsSpan(m * stride, features).ToArray();
            var beta = parameters.AsSpan(m * stride + features, features).ToArray();
            var rmRef = rm.AsSpan(m * features, features).ToArray();
            var rvRef = rv.AsSpan(m * features, features).ToArray();
            var yRef = BatchNorm1d.TrainReference(xm, rows, features, gamma, beta, rmRef, rvRef);
            TensorAssert.Close(yRef, yGot.AsSpan(m * rows * features, rows * features), 1e-5, 1e-4, $"bn train y[{m}]");
            // Member 1 is inactive: its running statistics must not move.
            TensorAssert.Close(m == 0 ? rmRef : rm.AsSpan(m * features, features).ToArray(), rmGot.AsSpan(m * features, features),
                1e-6, 1e-5, $"running mean[{m}]");
            TensorAssert.Close(m == 0 ? rvRef : rv.AsSpan(m * features, features).ToArray(), rvGot.AsSpan(m * features, features),
                1e-6, 1e-5, $"running var[{m}]");
            var (dzRef, dg, db, dbias) = BatchNorm1d.BackwardReference(xm, dy.AsSpan(m * rows * features, rows * features).ToArray(),
                rows, features, gamma);
            TensorAssert.Close(dzRef, dzGot.AsSpan(m * rows * features, rows * features), 1e-5, 1e-4, $"bn dz[{m}]");
            TensorAssert.Close(dg, gradsGot.AsSpan(m * stride, features), 1e-5, 1e-4, $"dγ[{m}]");
            TensorAssert.Close(db, gradsGot.AsSpan(m * stride + features, features), 1e-5, 1e-4, $"dβ[{m}]");
            TensorAssert.Close(dbias, gradsGot.AsSpan(m * stride + 2 * features, features), 1e-5, 1e-4, $"dbias[{m}]");
        }
        // Eval mode uses the running statistics.
        BatchNorm1d.EvalForward(plan!, s, dx.View, dp.View, drm.View, drv.View, y.View);
        var eval = y.ToArray();
        int i = 7 + rows * features, j = i % features;
        float expected = (x[i] - rmGot[features + j]) / MathF.Sqrt(rvGot[features + j] + 1e-5f) * parameters[stride + j] +
                         parameters[stride + features + j];
        Assert.Equal(expected, eval[i], 5);
    }

    [Fact]
    public void CrossEntropyLossGradientAndBias()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: loss rtol 1e-5, gradients atol 1e-6 + rtol 1e-4.
        const int members = 2, rows = 8, classes = 5, stride = 9, biasOffset = 3;
        var dev = device!;
        var logits = TestData.Uniform(members * rows * classes, 6, 4f);
        int[] labels = [0, 4, 2, 2, 1, 3, 0, 4];
        using var dl = dev.Upload(logits, logits.Length);
        using var dlabels = dev.Accelerator.Allocate1D(labels);
        using var dd = dev.Allocate(logits.Length);
        using var grads = dev.Zeros(members * stride);
        using var loss = dev.Allocate(members);
        using var correct = dev.Allocate(members);
        CrossEntropy.ForwardBackward(plan!, members, rows, classes, stride, biasOffset, dl.View, dlabels.View, dd.View, grads.View, loss.View,
            correct.View);
        var lossGot = loss.ToArray();
        var dGot = dd.ToArray();
        var gGot = grads.ToArray();
        for (int m = 0; m < members; m++)
        {
            var (l, d) = CrossEntropy.Reference(logits.AsSpan(m * rows * classes, rows * classes).ToArray(), labels, classes);
            Assert.Equal(l, lossGot[m], 1e-5 * l);
            TensorAssert.Close(d, dGot.AsSpan(m * rows * classes, rows * classes), 1e-6, 1e-4, $"dlogits[{m}]");
            var bias = Enumerable.Range(0, classes).Select(c => Enumerable.Range(0, rows).Sum(b => d[b * classes + c])).ToArray();
            TensorAssert.Close(bias, gGot.AsSpan(m * stride + biasOffset, classes), 1e-6, 1e-4, $"dbias[{m}]");
        }
    }

    [Fact]
    public void AdamSkipsStoppedMembers()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: atol 1e-7 + rtol 1e-6 (same fp32 expression).
        var dev = device!;
        var p = TestData.Uniform(12, 7);
        var g = TestData.Uniform(12, 8);
        var m = TestData.Uniform(12, 9, 0.01f);
        var v = TestData.Uniform(12, 10, 0.01f).Select(MathF.Abs).ToArray();
        using var dp = dev.Upload(p, 12);
        using var dg = dev.Upload(g, 12);
        using var dm = dev.Upload(m, 12);
        using var dv = dev.Upload(v, 12);
        using var active = dev.Upload([1f, 0f], 2);
        var step = AdamStep.At(3);
        Adam.Step(plan!, step, 2, 6, active.View, dp.View, dg.View, dm.View, dv.View);
        var (pr, mr, vr) = (p[..6], m[..6], v[..6]);
        Adam.Reference(pr, g[..6], mr, vr, step);
        TensorAssert.Close([.. pr, .. p[6..]], dp.ToArray(), 1e-7, 1e-6, "adam params");
        TensorAssert.Close([.. mr, .. m[6..]], dm.ToArray(), 1e-7, 1e-6, "adam m");
        TensorAssert.Close([.. vr, .. v[6..]], dv.ToArray(), 1e-7, 1e-6, "adam v");
    }

    [Fact]
    public void EarlyStoppingFollowsTheOriginalRule()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var dev = device!;
        var state = new float[] { EarlyStopping.InitialBest, 0, 1, 0.5f, 50, 1, 0.5f, 3, 0 };
        using var ds = dev.Upload(state, 9);
        using var active = dev.Upload([1f, 1f, 0f], 3);
        using var loss = dev.Upload([0.9f, 0.6f, 0.1f], 3);
        EarlyStopping.Update(plan!, 3, 3, ds.View, loss.View, active.View);   // epoch 3: nothing happens
        Assert.Equal(state, ds.ToArray());
        EarlyStopping.Update(plan!, 3, 4, ds.View, loss.View, active.View);
        var expected = (float[])state.Clone();
        EarlyStopping.Reference(expected, [0.9f, 0.6f, 0.1f], 4);
        Assert.Equal(expected, ds.ToArray());
        Assert.Equal([0.9f, 0, 1, 0.5f, 51, 0, 0.5f, 3, 0], ds.ToArray());
        Assert.Equal([1f, 0f, 0f], active.ToArray());
    }

    [Fact]
    public void GatherPixelsAcrossImages()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var dev = device!;
        const int images = 3, channels = 4, pixels = 6;
        var f = TestData.Uniform(images * channels * pixels, 11);
        var labels = Enumerable.Range(0, images * pixels).Select(i => (byte)(i % 7)).ToArray();
        int[] ids = [0, 17, 6, 11, 5];
        using var df = dev.Upload(f, f.Length);
        using var dl = dev.Accelerator.Allocate1D(labels);
        using var dids = dev.Accelerator.Allocate1D(ids);
        using var x = dev.Allocate(ids.Length * channels);
        using var y = dev.Accelerator.Allocate1D<int>(ids.Length);
        GatherPixels.Forward(dev, ids.Length, channels, pixels, dids.View, df.View, dl.View, x.View, y.View);
        TensorAssert.Close(GatherPixels.Reference(f, channels, pixels, ids), x.ToArray(), 0, 0, "gather");
        Assert.Equal(ids.Select(i => (int)labels[i]), y.GetAsArray1D());
    }

    [Fact]
    public void VoteBreaksTiesTowardsTheSmallestClass()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: labels exact; js atol 1e-5.
        var dev = device!;
        const int members = 4, pixels = 9, classes = 3;
        var logits = TestData.Uniform(members * pixels * classes, 12, 3f);
        // Pixel 0: members vote 2, 1, 2, 1 — a tie that must go to class 1.
        int[] votes = [2, 1, 2, 1];
        for (int m = 0; m < members; m++)
        {
            for (int c = 0; c < classes; c++)
            {
                logits[(m * pixels) * classes + c] = c == votes[m] ? 5f : 0f;
            }
        }
        using var dl = dev.Upload(logits, logits.Length);
        using var labels = dev.Accelerator.Allocate1D<int>(pixels);
        using var js = dev.Allocate(pixels);
        EnsembleVote.Forward(dev, members, pixels, classes, dl.View, labels.View, js.View);
        var (refLabels, refJs) = EnsembleVote.Reference(logits, members, pixels, classes);
        Assert.Equal(1, refLabels[0]);
        Assert.Equal(refLabels, labels.GetAsArray1D());
        TensorAssert.Close(refJs, js.ToArray(), 1e-5, 0, "js");
    }
}

[Collection("cpu")]
public sealed class ClassifierKernelTestsCpu(CpuDeviceFixture f) : ClassifierKernelTests(f.Plan);

[Collection("cpu")]
public sealed class ClassifierKernelTestsCpuSimd(CpuSimdDeviceFixture f) : ClassifierKernelTests(f.Plan);

[Collection("cuda")]
public sealed class ClassifierKernelTestsCuda(CudaDeviceFixture f) : ClassifierKernelTests(f.Plan);

/// <summary>The CPU backend's Adam (host SIMD lanes) gives the kernel's bits: same expression, IEEE per lane. No tolerance.</summary>
[Collection("cpu")]
public sealed class AdamHostTests(CpuDeviceFixture kernels, CpuSimdDeviceFixture host)
{
    [Fact]
    public void HostLanesGiveTheKernelsBits()
    {
        const int members = 3, stride = 1037; // not a multiple of the vector width: lanes and the scalar tail
        float[] Run(ExecutionPlan plan, out float[] m, out float[] v)
        {
            var dev = plan.Device;
            using var dp = dev.Upload(TestData.Uniform(members * stride, 1), members * stride);
            using var dg = dev.Upload(TestData.Uniform(members * stride, 2), members * stride);
            using var dm = dev.Upload(TestData.Uniform(members * stride, 3, 0.01f), members * stride);
            using var dv = dev.Upload(TestData.Uniform(members * stride, 4, 0.01f).Select(MathF.Abs).ToArray(), members * stride);
            using var active = dev.Upload([1f, 0f, 1f], members);
            for (int t = 1; t <= 3; t++)
            {
                Adam.Step(plan, AdamStep.At(t), members, stride, active.View, dp.View, dg.View, dm.View, dv.View);
            }
            m = dm.ToArray();
            v = dv.ToArray();
            return dp.ToArray();
        }
        var p1 = Run(kernels.Plan, out var m1, out var v1);
        var p2 = Run(host.Plan, out var m2, out var v2);
        Assert.Equal(p1, p2);
        Assert.Equal(m1, m2);
        Assert.Equal(v1, v2);
        Assert.Equal(TestData.Uniform(members * stride, 1)[stride..(2 * stride)], p2[stride..(2 * stride)]);
    }
}
