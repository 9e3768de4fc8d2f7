using IlgpuDiffSeg.Kernels;
using K = IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// The backward references of SiLU, dropout, Linear, nearest ×2 upsampling, 2×2 average pooling, channel concatenation,
/// the channel bias and the embedding against central finite differences of their forward references.
/// </summary>
public sealed class ElementwiseBackwardReferenceTests
{
    // The linear ops' forward references are fp32: their loss is linear in every input, so a large step (h = 1) has no
    // truncation error and the fp32 rounding of the outputs (~6e-8 relative) stays below atol 1e-5 + rtol 1e-5.
    const double LinearH = 1, LinearTol = 1e-5;

    [Fact]
    public void SiluDerivative()
    {
        // Tolerance: atol 1e-9 + rtol 1e-7; h = 1e-5 in double (truncation ~h², rounding ~1e-11).
        var x = Gradcheck.ToDouble(TestData.Uniform(200, 31, 12f));
        var dy = Gradcheck.ToDouble(TestData.Uniform(200, 32));
        var numeric = Gradcheck.Numeric(x, v => Gradcheck.Dot(dy, v.Select(K.Silu.Reference).ToArray()), 1e-5);
        Gradcheck.Matches(numeric, x.Select((v, i) => dy[i] * K.Silu.DerivativeReference(v)).ToArray(), 1e-9, 1e-7, "silu'");
    }

    [Fact]
    public void Dropout()
    {
        var x = TestData.Uniform(300, 33);
        var dy = TestData.Uniform(300, 34);
        // The backward is the forward applied to dy (the same mask and scale).
        CheckLinear(x, dy, v => K.Dropout.Reference(v, 0.3f, 99), K.Dropout.Reference(dy, 0.3f, 99), "dropout");
    }

    [Fact]
    public void Linear()
    {
        const int rows = 3, inF = 5, outF = 4;
        var x = TestData.Uniform(rows * inF, 35);
        var w = TestData.Uniform(outF * inF, 36);
        var b = TestData.Uniform(outF, 37);
        var dy = TestData.Uniform(rows * outF, 38);
        var (dx, dw, db) = K.Linear.BackwardReference(x, w, dy, rows, inF, outF);
        CheckLinear(x, dy, v => K.Linear.Reference(v, w, b, rows, inF, outF), Gradcheck.ToFloat(dx), "linear dx");
        CheckLinear(w, dy, v => K.Linear.Reference(x, v, b, rows, inF, outF), Gradcheck.ToFloat(dw), "linear dW");
        CheckLinear(b, dy, v => K.Linear.Reference(x, w, v, rows, inF, outF), Gradcheck.ToFloat(db), "linear db");
    }

    [Fact]
    public void UpsampleNearest2x()
    {
        var x = TestData.Uniform(2 * 3 * 4, 39);
        var dy = TestData.Uniform(2 * 6 * 8, 40);
        CheckLinear(x, dy, v => K.UpsampleNearest2x.Reference(v, 2, 3, 4), K.UpsampleNearest2x.BackwardReference(dy, 2, 3, 4), "upsample");
    }

    [Fact]
    public void AvgPool2x2()
    {
        var x = TestData.Uniform(2 * 5 * 7, 41); // odd sides: the last row and column are dropped
        var dy = TestData.Uniform(2 * 2 * 3, 42);
        CheckLinear(x, dy, v => K.AvgPool2x2.Reference(v, 2, 5, 7), K.AvgPool2x2.BackwardReference(dy, 2, 5, 7), "avg pool");
    }

    [Fact]
    public void ConcatChannels()
    {
        var a = TestData.Uniform(2 * 3 * 4, 43);
        var b = TestData.Uniform(2 * 2 * 4, 44);
        var dy = TestData.Uniform(2 * 5 * 4, 45);
        var (da, db) = K.ConcatChannels.BackwardReference(dy, 3, 2, 2, 4);
        CheckLinear(a, dy, v => K.ConcatChannels.Reference(v, 3, b, 2, 2, 4), da, "concat a");
        CheckLinear(b, dy, v => K.ConcatChannels.Reference(a, 3, v, 2, 2, 4), db, "concat b");
    }

    [Fact]
    public void ChannelBias()
    {
        var x = TestData.Uniform(6 * 7, 46);
        var bias = TestData.Uniform(6, 47);
        var dy = TestData.Uniform(6 * 7, 48);
        CheckLinear(bias, dy, v => K.Add.ChannelBiasReference(x, v, 7), K.Add.ChannelBiasBackwardReference(dy, 6, 7), "channel bias");
    }

    [Fact]
    public void Embedding()
    {
        long[] labels = [2, 0, 2, 3, 2];
        var weight = TestData.Uniform(5 * 3, 49);
        var dy = TestData.Uniform(5 * 3, 50);
        CheckLinear(weight, dy, v => K.Embedding.Reference(labels, v, 3),
            Gradcheck.ToFloat(K.Embedding.BackwardReference(labels, dy, 5, 3)), "embedding");
    }

    static void CheckLinear(float[] at, float[] dy, Func<float[], float[]> forward, float[] analytic, string what)
    {
        var numeric = Gradcheck.Numeric(Gradcheck.ToDouble(at), v => Gradcheck.Dot(dy, forward(Gradcheck.ToFloat(v))), LinearH);
        Gradcheck.Matches(numeric, Gradcheck.ToDouble(analytic), LinearTol, LinearTol, what);
    }
}

/// <summary>The backward kernels of the small ops against their references.</summary>
public abstract class ElementwiseBackwardTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Fact]
    public void SiluInPlace()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: atol 1e-6 + rtol 1e-5 (exp is ex2.approx on the GPU: ~2 ulp, through σ and 1 − σ).
        var x = TestData.Uniform(1000, 1, 12f);
        var dy = TestData.Uniform(1000, 2);
        using var tx = device!.Upload(x, x.Length);
        using var tdy = device.Upload(dy, dy.Length);
        K.Silu.Backward(tx, tdy, tdy);
        TensorAssert.Close(K.Silu.BackwardReference(x, dy), tdy.ToArray(), 1e-6, 1e-5, "silu backward");
    }

    [Theory]
    [InlineData(0.1f)]
    [InlineData(0.5f)]
    public void DropoutMasksMatchAndBackwardRegeneratesThem(float p)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact — the same hash and one fp32 product on every device.
        const int n = 100_003;
        const ulong seed = 0x5EED;
        var x = TestData.Uniform(n, 3);
        var dy = TestData.Uniform(n, 4);
        using var tx = device!.Upload(x, n);
        using var tdy = device.Upload(dy, n);
        K.Dropout.Forward(tx, tx, p, seed);
        K.Dropout.Backward(tdy, tdy, p, seed);
        var y = tx.ToArray();
        var dx = tdy.ToArray();
        TensorAssert.Close(K.Dropout.Reference(x, p, seed), y, 0, 0, "dropout forward, in place");
        TensorAssert.Close(K.Dropout.Reference(dy, p, seed), dx, 0, 0, "dropout backward, in place");
        int kept = 0;
        for (int i = 0; i < n; i++)
        {
            Assert.Equal(y[i] != 0, dx[i] != 0);
            kept += y[i] != 0 ? 1 : 0;
        }
        // Binomial(n, 1 − p): within 5 standard deviations.
        double sigma = Math.Sqrt(n * p * (1 - p));
        Assert.InRange(kept, n * (1 - p) - 5 * sigma, n * (1 - p) + 5 * sigma);
        // Another seed gives another mask.
        using var other = device.Upload(x, n);
        K.Dropout.Forward(other, other, p, seed + 1);
        Assert.NotEqual(y, other.ToArray());
    }

    [Fact]
    public void DropoutEdgeProbabilities()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var x = TestData.Uniform(77, 5);
        using var tx = device!.Upload(x, 77);
        using var ty = device.Allocate(77);
        K.Dropout.Forward(tx, ty, 0f, 1);
        Assert.Equal(x, ty.ToArray());
        K.Dropout.Forward(tx, ty, 1f, 1);
        Assert.All(ty.ToArray(), v => Assert.Equal(0f, Math.Abs(v)));
        Assert.Throws<ArgumentException>(() => K.Dropout.Forward(tx, ty, 1.5f, 1));
    }

    [Theory]
    [InlineData(1, true)]
    [InlineData(2, true)]
    [InlineData(2, false)]
    public void Linear(int version, bool withDx)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: atol 1e-5 + rtol 1e-5 (fp32 sums of ≤ 13 products of values in [−1, 1] against double).
        const int rows = 13, inF = 6, outF = 9;
        var x = TestData.Uniform(rows * inF, 6);
        var w = TestData.Uniform(outF * inF, 7);
        var dy = TestData.Uniform(rows * outF, 8);
        var dw0 = TestData.Uniform(outF * inF, 9);
        var db0 = TestData.Uniform(outF, 10);
        using var tx = device!.Upload(x, rows, inF);
        using var tw = device.Upload(w, outF, inF);
        using var tdy = device.Upload(dy, rows, outF);
        using var tdx = withDx ? device.Allocate(rows, inF) : null;
        using var tdw = device.Upload(dw0, outF, inF);
        using var tdb = device.Upload(db0, outF);
        K.Linear.Backward(tx, tw, tdy, tdx, tdw, tdb, plan!.Kernel(version));
        var (dx, dw, db) = K.Linear.BackwardReference(x, w, dy, rows, inF, outF);
        if (tdx is not null)
        {
            TensorAssert.Close(Gradcheck.ToFloat(dx), tdx.ToArray(), 1e-5, 1e-5, "linear dx");
        }
        TensorAssert.Close(dw0.Select((v, i) => (float)(v + dw[i])).ToArray(), tdw.ToArray(), 1e-5, 1e-5, "linear dW (accumulated)");
        TensorAssert.Close(db0.Select((v, i) => (float)(v + db[i])).ToArray(), tdb.ToArray(), 1e-5, 1e-5, "linear db (accumulated)");
    }

    [Fact]
    public void UpsampleNearest2x()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (the same four additions in the same order).
        var dy = TestData.Uniform(2 * 3 * 8 * 10, 11);
        using var tdy = device!.Upload(dy, 2, 3, 8, 10);
        using var tdx = device.Allocate(2, 3, 4, 5);
        K.UpsampleNearest2x.Backward(tdy, tdx);
        TensorAssert.Close(K.UpsampleNearest2x.BackwardReference(dy, 6, 4, 5), tdx.ToArray(), 0, 0, "upsample backward");
    }

    [Fact]
    public void AvgPool2x2()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (a division by 4). Odd sides: the dropped row and column get zero.
        var dy = TestData.Uniform(2 * 3 * 3 * 4, 12);
        using var tdy = device!.Upload(dy, 2, 3, 3, 4);
        using var tdx = device.Upload(TestData.Uniform(2 * 3 * 7 * 9, 13), 2, 3, 7, 9);
        K.AvgPool2x2.Backward(tdy, tdx);
        TensorAssert.Close(K.AvgPool2x2.BackwardReference(dy, 6, 7, 9), tdx.ToArray(), 0, 0, "avg pool backward");
    }

    [Fact]
    public void ConcatChannels()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (a copy).
        var dy = TestData.Uniform(2 * 8 * 10, 14);
        using var tdy = device!.Upload(dy, 2, 8, 2, 5);
        using var tda = device.Allocate(2, 3, 2, 5);
        using var tdb = device.Allocate(2, 5, 2, 5);
        K.ConcatChannels.Backward(tdy, tda, tdb);
        var (da, db) = K.ConcatChannels.BackwardReference(dy, 3, 5, 2, 10);
        TensorAssert.Close(da, tda.ToArray(), 0, 0, "concat backward a");
        TensorAssert.Close(db, tdb.ToArray(), 0, 0, "concat backward b");
    }

    [Fact]
    public void Accumulate()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (one fp32 addition).
        var a = TestData.Uniform(77, 15);
        var b = TestData.Uniform(77, 16);
        using var ta = device!.Upload(a, 7, 11);
        using var tb = device.Upload(b, 77);
        K.Add.Accumulate(ta, tb);
        TensorAssert.Close(K.Add.Reference(a, b), ta.ToArray(), 0, 0, "accumulate");
    }

    [Fact]
    public void EmbeddingWithRepeatedLabels()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact against the same fp32 order (a label's rows in batch order, then added to dW); atol 1e-6 against double.
        long[] labels = [3, 0, 3, 3, 7, 0];
        const int classes = 9, dim = 33;
        var dy = TestData.Uniform(labels.Length * dim, 17);
        var dw0 = TestData.Uniform(classes * dim, 18);
        using var tdy = device!.Upload(dy, labels.Length, dim);
        using var tdw = device.Upload(dw0, classes, dim);
        K.Embedding.Backward(labels, tdy, tdw);
        var expected = (float[])dw0.Clone();
        foreach (long label in labels.Distinct())
        {
            for (int d = 0; d < dim; d++)
            {
                float acc = 0f;
                for (int i = 0; i < labels.Length; i++)
                {
                    acc += labels[i] == label ? dy[i * dim + d] : 0f;
                }
                expected[label * dim + d] += acc;
            }
        }
        var actual = tdw.ToArray();
        TensorAssert.Close(expected, actual, 0, 0, "embedding backward, fp32 order");
        var exact = K.Embedding.BackwardReference(labels, dy, classes, dim).Select((v, i) => (float)(dw0[i] + v)).ToArray();
        TensorAssert.Close(exact, actual, 1e-6, 0, "embedding backward vs double");
        Assert.Throws<ArgumentException>(() => K.Embedding.Backward([9], tdy.Slice0Range(0, 1), tdw));
    }

    [Fact]
    public void ChannelBias()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        RunChannelBias(device!, Reduction.Auto);
    }

    internal static void RunChannelBias(ComputeDevice dev, Reduction reduction)
    {
        // Tolerance: atol 1e-6 + rtol 1e-5 (fp32 sums of 300 values in [−1, 1] against double).
        const int planes = 6, spatial = 300;
        var dy = TestData.Uniform(planes * spatial, 19);
        using var tdy = dev.Upload(dy, 2, 3, 15, 20);
        using var tdb = dev.Upload(TestData.Uniform(planes, 20), 2, 3);
        K.Add.ChannelBiasBackward(tdy, tdb, reduction);
        TensorAssert.Close(K.Add.ChannelBiasBackwardReference(dy, planes, spatial), tdb.ToArray(), 1e-6, 1e-5,
            $"channel bias backward, {reduction}");
    }
}

[Collection("cpu")]
public sealed class ElementwiseBackwardTestsCpu(CpuDeviceFixture f) : ElementwiseBackwardTests(f.Plan);

/// <summary>The host SIMD plan: Linear's products on the host.</summary>
[Collection("cpu")]
public sealed class ElementwiseBackwardTestsCpuSimd(CpuSimdDeviceFixture f) : ElementwiseBackwardTests(f.Plan);

[Collection("cuda")]
public sealed class ElementwiseBackwardTestsCuda(CudaDeviceFixture f) : ElementwiseBackwardTests(f.Plan);

/// <summary>The channel bias's v2 (a 256-thread block per plane) on the warp-32 simulator and CUDA.</summary>
public abstract class ChannelBiasBackwardBlockTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    [Fact]
    public void MatchesReference()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        ElementwiseBackwardTests.RunChannelBias(device!, Reduction.Parallel);
    }
}

[Collection("cpu")]
public sealed class ChannelBiasBackwardBlockTestsCpuWarp32(CpuWarp32DeviceFixture f) : ChannelBiasBackwardBlockTests(f.Plan);

[Collection("cuda")]
public sealed class ChannelBiasBackwardBlockTestsCuda(CudaDeviceFixture f) : ChannelBiasBackwardBlockTests(f.Plan);
