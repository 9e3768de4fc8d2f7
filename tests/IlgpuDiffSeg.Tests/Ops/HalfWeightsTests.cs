using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// HalfWeights (convolution weights held as fp16 rows) against its System.Half reference, bit for bit; and the tensor-core
/// kernel (v4) reading them against v4 reading the fp32 weights: both round the same weights to nearest-even and sum in the
/// same order, so the outputs are equal to the bit — no tolerance.
/// </summary>
public abstract class HalfWeightsTests(ComputeDevice? device)
{
    [Theory]
    [InlineData(6, 3, 3)] // 27 columns: every row ends in a zero half
    [InlineData(5, 64, 1)]
    [InlineData(3, 7, 3)]
    public void PackingMatchesSystemHalf(int cout, int cin, int k)
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
        using var half = HalfWeights.From(dw);
        Assert.Equal((cin * k * k + 1) / 2, half.RowWords);
        device.Synchronize();
        var got = new uint[half.View.Length];
        half.View.CopyToHost(got);
        Assert.Equal(HalfWeights.Reference(w, cout, cin * k * k), got);
    }

    [Theory]
    [InlineData(2, 3, 9, 7, 6, 3, 1)] // the input convolution's K = 27: odd, edge tiles
    [InlineData(1, 11, 12, 12, 9, 3, 2)]
    [InlineData(2, 6, 5, 11, 7, 1, 1)]
    [InlineData(2, 32, 8, 8, 128, 3, 1)] // exact tiles: M = N = 128, K = 288
    public void ConvolutionOverHalfWeightsEqualsFp32Weights(int n, int cin, int h, int w, int cout, int k, int stride)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var s = ConvShape.Create(n, cin, h, w, cout, k, stride, k / 2);
        using var dx = device!.Upload(TestData.Uniform(n * cin * h * w, 1), n, cin, h, w);
        using var dw = device.Upload(TestData.Uniform(cout * cin * k * k, 2), cout, cin, k, k);
        using var db = device.Upload(TestData.Uniform(cout, 3), cout);
        using var dr = device.Upload(TestData.Uniform(n * cout * s.Ho * s.Wo, 4), n, cout, s.Ho, s.Wo);
        using var half = HalfWeights.From(dw);
        var halfOnly = new ConvWeights(null, half, dw.Shape);
        using var fromFp32 = device.Allocate(n, cout, s.Ho, s.Wo);
        using var fromHalf = device.Allocate(n, cout, s.Ho, s.Wo);
        Conv2d.Forward(dx, dw, db, fromFp32, stride, dr, version: 4);
        Conv2d.Forward(dx, halfOnly, db, fromHalf, stride, dr, version: 4);
        Assert.Equal(fromFp32.ToArray(), fromHalf.ToArray());

        var gamma = TestData.Uniform(cin, 5).Select(v => 1f + 0.5f * v).ToArray();
        using var dg = device.Upload(gamma, cin);
        using var dbeta = device.Upload(TestData.Uniform(cin, 6), cin);
        if (cin % GroupNorm.DefaultGroups == 0)
        {
            using var coefficients = GroupNorm.Coefficients(dx, dg, dbeta, null);
            Conv2d.ForwardNormalized(dx, coefficients, silu: true, dw, db, fromFp32, stride, dr, version: 4);
            Conv2d.ForwardNormalized(dx, coefficients, silu: true, halfOnly, db, fromHalf, stride, dr, version: 4);
            Assert.Equal(fromFp32.ToArray(), fromHalf.ToArray());
        }
        var error = Assert.Throws<NotSupportedException>(() => Conv2d.Forward(dx, halfOnly, db, fromHalf, stride, dr, version: 3));
        Assert.Contains("fp16 only", error.Message);
    }

    /// <summary>
    /// A ResBlock and an AttentionBlock loaded while the device holds convolutions in fp16: they keep no fp32 copy of any
    /// convolution weight, use half the bytes for them, and compute what fp32-held weights give v4.
    /// </summary>
    [Fact]
    public void BlocksHeldInHalfComputeWhatFp32WeightsGive()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var before = device!.UNetMatmul;
        device.UNetMatmul = MatmulKernel.TensorCoreFp16;
        try
        {
            using var x = device.Upload(TestData.Uniform(2 * 32 * 6 * 6, 8), 2, 32, 6, 6);
            using var emb = device.Upload(TestData.Uniform(2 * 16, 9), 2, 16);
            float[] Run(bool half, out long convBytes)
            {
                var resBlock = new ResBlock("res.", 32, 16, 64, useScaleShiftNorm: true);
                var attention = new AttentionBlock("attn.", 64, numHeads: 2, numHeadChannels: -1, useNewAttentionOrder: false);
                // Weights are held in fp16 when they are placed while the device multiplies on tensor cores.
                device.UNetMatmul = half ? MatmulKernel.TensorCoreFp16 : MatmulKernel.Registers;
                ModelWeights.InitializeRandom(resBlock, device, 3);
                ModelWeights.InitializeRandom(attention, device, 4);
                device.UNetMatmul = MatmulKernel.TensorCoreFp16;
                var convs = resBlock.Parameters().Concat(attention.Parameters()).Where(p => p.IsConvolutionWeight).ToList();
                Assert.All(convs, p => Assert.Equal(half, p.Half is not null && p.Value is null));
                convBytes = convs.Sum(p => p.Half?.Bytes ?? 4L * p.Count);
                try
                {
                    using var h = resBlock.Forward(x, emb);
                    using var y = attention.Forward(h);
                    return y.ToArray();
                }
                finally
                {
                    foreach (var p in resBlock.Parameters().Concat(attention.Parameters()))
                    {
                        p.Release();
                    }
                }
            }
            var fromFp32 = Run(half: false, out long fp32Bytes);
            var fromHalf = Run(half: true, out long halfBytes);
            Assert.Equal(fromFp32, fromHalf);
            Assert.Equal(fp32Bytes, 2 * halfBytes);
        }
        finally
        {
            device.UNetMatmul = before;
        }
    }

    /// <summary>A model held in fp16 cannot be saved as the fp32 checkpoint it came from: one clear error, no file.</summary>
    [Fact]
    public void SavingWeightsHeldInHalfFailsClearly()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var before = device!.UNetMatmul;
        device.UNetMatmul = MatmulKernel.TensorCoreFp16;
        try
        {
            using var tmp = new TempDir();
            using var model = new UNetModel(AdmFlags.Load(Fixtures.AdmTiny("flags.json")));
            ModelWeights.InitializeRandom(model, device, 1);
            string path = tmp.File("m.safetensors");
            var error = Assert.Throws<DiffSegException>(() => ModelWeights.Save(model, path));
            Assert.Contains("held in fp16 only", error.Message);
            Assert.StartsWith(path, error.Message);
            Assert.False(File.Exists(path));
            ModelWeights.InitializeRandom(model, device, 1, keepFp32: true);
            ModelWeights.Save(model, path);
            Assert.True(File.Exists(path));
        }
        finally
        {
            device.UNetMatmul = before;
        }
    }
}

[Collection("cpu")]
public sealed class HalfWeightsTestsCpuWarp32(CpuWarp32DeviceFixture f) : HalfWeightsTests(f.Device);

[Collection("cuda")]
public sealed class HalfWeightsTestsCuda(CudaDeviceFixture f) : HalfWeightsTests(f.Device);
