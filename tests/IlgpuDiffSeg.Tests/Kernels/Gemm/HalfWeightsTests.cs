using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// HalfWeights (convolution weights held as fp16 rows) against its System.Half reference, bit for bit, in both column
/// orders; and the tensor-core kernel (v4) reading them. Channel-major rows against fp32 weights: both round the same
/// weights to nearest-even and sum in the same order, so the outputs are equal to the bit. Tap-major rows (with the
/// tap-major im2col operands) sum the same products in another order: NMSE ≤ 1e-10 against channel-major, the bound of
/// TensorCoreGemmTests for a change of fp32 summation order.
/// </summary>
public abstract class HalfWeightsTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    const double SummationOrderBound = 1e-10;

    [Theory]
    [InlineData(6, 3, 3, null)] // 27 columns: every row ends in a zero half; Cin = 3 packs channel-major
    [InlineData(5, 64, 1, null)] // tap-major, which for 1×1 is the same order
    [InlineData(4, 32, 3, null)] // tap-major: columns permuted
    [InlineData(4, 32, 3, false)]
    [InlineData(3, 7, 3, null)]
    public void PackingMatchesSystemHalf(int cout, int cin, int k, bool? tapMajor)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var random = new Random(11);
        // Every exponent from fp16-subnormal to overflow, and exact ties between two fp16 values.
        var w = new float[cout * cin * k * k];
        for (int i = 0; i < w.Length; i++)
        {
            w[i] = i % 7 == 0
                ? (float)(1 + (2 * random.Next(512) + 1) / 2048.0)
                : (float)((random.NextDouble() * 2 - 1) * Math.Pow(2, random.Next(-27, 18)));
        }
        using var dw = device!.Upload(w, cout, cin, k, k);
        using var half = HalfWeights.From(dw, tapMajor);
        Assert.Equal(tapMajor ?? cin % TensorCoreGemm.Slice == 0, half.TapMajor);
        Assert.Equal((cin * k * k + 1) / 2, half.RowWords);
        device.Synchronize();
        var got = new uint[half.View.Length];
        half.View.CopyToHost(got);
        Assert.Equal(HalfWeights.Reference(w, cout, cin * k * k, half.TapMajor ? cin : 0), got);
        if (cin % TensorCoreGemm.Slice != 0)
        {
            Assert.Throws<ArgumentException>(() => HalfWeights.From(dw, tapMajor: true));
        }
    }

    [Theory]
    [InlineData(2, 3, 9, 7, 6, 3, 1)] // the input convolution's K = 27: odd, edge tiles, channel-major only
    [InlineData(1, 11, 12, 12, 9, 3, 2)]
    [InlineData(2, 32, 9, 7, 6, 3, 1)] // tap-major: 9 slices, one per tap
    [InlineData(1, 64, 12, 12, 9, 3, 2)] // tap-major, stride 2: two slices per tap
    [InlineData(2, 64, 5, 11, 7, 1, 1)] // tap-major 1×1
    [InlineData(2, 32, 8, 8, 128, 3, 1)] // exact tiles: M = N = 128, K = 288
    public void ConvolutionOverHalfWeightsMatchesFp32Weights(int n, int cin, int h, int w, int cout, int k, int stride)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var s = ConvShape.Create(n, cin, h, w, cout, k, stride, k / 2);
        using var dx = device!.Upload(TestData.Uniform(n * cin * h * w, 1), n, cin, h, w);
        using var dw = device.Upload(TestData.Uniform(cout * cin * k * k, 2), cout, cin, k, k);
        using var db = device.Upload(TestData.Uniform(cout, 3), cout);
        using var dr = device.Upload(TestData.Uniform(n * cout * s.Ho * s.Wo, 4), n, cout, s.Ho, s.Wo);
        using var channelMajor = HalfWeights.From(dw, tapMajor: false);
        using var held = HalfWeights.From(dw);
        using var y = device.Allocate(n, cout, s.Ho, s.Wo);

        float[] Run(ConvWeights weights, bool normalized)
        {
            if (!normalized)
            {
                Conv2d.Forward(dx, weights, db, y, stride, dr, MatmulKernel.TensorCoreFp16);
                return y.ToArray();
            }
            using var dg = device.Upload(TestData.Uniform(cin, 5).Select(v => 1f + 0.5f * v).ToArray(), cin);
            using var dbeta = device.Upload(TestData.Uniform(cin, 6), cin);
            using var coefficients = GroupNorm.Coefficients(dx, dg, dbeta, null);
            Conv2d.ForwardNormalized(dx, coefficients, silu: true, weights, db, y, stride, dr, MatmulKernel.TensorCoreFp16);
            return y.ToArray();
        }

        foreach (bool normalized in cin % GroupNorm.DefaultGroups == 0 ? new[] { false, true } : [false])
        {
            var fromFp32 = Run(dw, normalized);
            Assert.Equal(fromFp32, Run(new ConvWeights(null, channelMajor, dw.Shape), normalized));
            TensorAssert.NmseBelow(fromFp32, Run(new ConvWeights(null, held, dw.Shape), normalized), SummationOrderBound,
                $"{(held.TapMajor ? "tap-major" : "channel-major")} fp16 weights{(normalized ? ", norm fused" : "")}");
        }
        TensorAssert.NmseBelow(Conv2d.Reference(TensorCoreGemm.RoundToHalf(TestData.Uniform(n * cin * h * w, 1)),
            TensorCoreGemm.RoundToHalf(TestData.Uniform(cout * cin * k * k, 2)), TestData.Uniform(cout, 3), s,
            TestData.Uniform(n * cout * s.Ho * s.Wo, 4)), Run(new ConvWeights(null, held, dw.Shape), false), SummationOrderBound,
            "fp16 weights against the reference over fp16 operands");
        var error = Assert.Throws<NotSupportedException>(() => Conv2d.Forward(dx, new ConvWeights(null, held, dw.Shape), db, y, stride, dr,
            MatmulKernel.Tiled));
        Assert.Contains("fp16 only", error.Message);
    }

    /// <summary>
    /// A ResBlock and an AttentionBlock loaded while the device holds convolutions in fp16: they keep no fp32 copy of any
    /// convolution weight, use half the bytes for them, and compute what fp32-held weights give v4 (in another order).
    /// </summary>
    [Fact]
    public void BlocksHeldInHalfComputeWhatFp32WeightsGive()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        using var x = device!.Upload(TestData.Uniform(2 * 32 * 6 * 6, 8), 2, 32, 6, 6);
        using var emb = device.Upload(TestData.Uniform(2 * 16, 9), 2, 16);
        float[] Run(bool half, out long convBytes)
        {
            var resBlock = new ResBlock("res.", 32, 16, 64, useScaleShiftNorm: true);
            var attention = new AttentionBlock("attn.", 64, numHeads: 2, numHeadChannels: -1, useNewAttentionOrder: false);
            var parameters = resBlock.Parameters().Concat(attention.Parameters()).ToList();
            // Weights are held in fp16 when they are placed under a plan that multiplies on tensor cores.
            var placing = plan!.With(half ? MatmulKernel.TensorCoreFp16 : MatmulKernel.Registers);
            ModelWeights.InitializeRandom(resBlock, placing, 3);
            ModelWeights.InitializeRandom(attention, placing, 4);
            var convs = parameters.Where(p => p.IsConvolutionWeight).ToList();
            Assert.All(convs, p => Assert.Equal(half, p.Half is not null && p.Value is null));
            convBytes = convs.Sum(p => p.Half?.Bytes ?? 4L * p.Count);
            try
            {
                using var pass = new Pass(plan!.With(MatmulKernel.TensorCoreFp16));
                using var h = resBlock.Forward(pass, x, emb);
                using var y = attention.Forward(pass, h, emb);
                return y.ToArray();
            }
            finally
            {
                parameters.ForEach(p => p.Release());
            }
        }
        var fromFp32 = Run(half: false, out long fp32Bytes);
        var fromHalf = Run(half: true, out long halfBytes);
        // Across layers a change of summation order can flip the fp16 rounding of the next layer's input (one fp16 ulp,
        // 2⁻¹¹ relative): measured NMSE 1.4e-8, bounded like fp16 against fp32 (TensorCoreGemmTests).
        TensorAssert.NmseBelow(fromFp32, fromHalf, 1e-6, "blocks with fp16-held weights");
        Assert.Equal(fp32Bytes, 2 * halfBytes);
    }

    /// <summary>A model held in fp16 cannot be saved as the fp32 checkpoint it came from: one clear error, no file.</summary>
    [Fact]
    public void SavingWeightsHeldInHalfFailsClearly()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var fp16 = plan!.With(MatmulKernel.TensorCoreFp16);
        using var tmp = new TempDir();
        using var model = new UNetModel(AdmFlags.Load(Fixtures.AdmTiny("flags.json")));
        ModelWeights.InitializeRandom(model, fp16, 1);
        string path = tmp.File("m.safetensors");
        var error = Assert.Throws<DiffSegException>(() => ModelWeights.Save(model, path));
        Assert.Contains("held in fp16 only", error.Message);
        Assert.StartsWith(path, error.Message);
        Assert.False(File.Exists(path));
        ModelWeights.InitializeRandom(model, fp16, 1, keepFp32: true);
        ModelWeights.Save(model, path);
        Assert.True(File.Exists(path));
    }
}

[Collection("cpu")]
public sealed class HalfWeightsTestsCpuWarp32(CpuWarp32DeviceFixture f) : HalfWeightsTests(f.Plan);

[Collection("cuda")]
public sealed class HalfWeightsTestsCuda(CudaDeviceFixture f) : HalfWeightsTests(f.Plan);
