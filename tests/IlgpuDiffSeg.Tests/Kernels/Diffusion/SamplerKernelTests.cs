using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.Kernels.Diffusion;

/// <summary>
/// SamplerStep (p_mean_variance and the step in one launch) and GaussianNoise against their plain references, on every
/// variant the samplers take: learned / fixed large / fixed small variance, ε or x₀ output, clipped or not, ancestral or
/// DDIM with η, guided or not, t = 0 (no noise) or t &gt; 0.
/// </summary>
public abstract class SamplerKernelTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    public static TheoryData<bool, bool, bool, bool, double, bool, int> Variants
    {
        get
        {
            var data = new TheoryData<bool, bool, bool, bool, double, bool, int>();
            // learned, sigmaSmall, xstart, ddim, eta, guided, t
            data.Add(true, false, false, false, 0, false, 7);
            data.Add(true, false, false, false, 0, true, 7);
            data.Add(true, false, false, false, 0, false, 0);
            data.Add(false, false, false, false, 0, false, 3);
            data.Add(false, true, false, false, 0, true, 3);
            data.Add(false, false, true, false, 0, false, 9);
            data.Add(true, false, false, true, 0, false, 7);
            data.Add(true, false, false, true, 0.5, false, 7);
            data.Add(false, false, true, true, 1.0, true, 5);
            data.Add(true, false, false, true, 0.5, true, 0);
            return data;
        }
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void StepMatchesTheReference(bool learned, bool sigmaSmall, bool xstart, bool ddim, double eta, bool guided, int t)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var flags = new AdmFlags { LearnSigma = learned, SigmaSmall = sigmaSmall, PredictXstart = xstart, DiffusionSteps = 100 };
        var diffusion = GaussianDiffusion.FromFlags(flags, "10");
        int n = 2, size = 5, m = 3 * size * size, outChannels = learned ? 6 : 3;
        foreach (bool clip in new[] { true, false })
        {
            var k = diffusion.StepCoefficientsAt(t, ddim, eta, clip, guided ? 2.5f : null);
            var x = TestData.Uniform(n * m, 1, 2f);
            var output = TestData.Uniform(n * outChannels * size * size, 2, 1.5f);
            var z = TestData.Uniform(n * m, 3, 2f);
            var g = TestData.Uniform(n * m, 4, 3f);
            using var dx = device!.Upload(x, n, 3, size, size);
            using var dOut = device.Upload(output, n, outChannels, size, size);
            using var dz = device.Upload(z, n, 3, size, size);
            using var dg = device.Upload(g, n, 3, size, size);
            // In place, as the sampler runs it.
            SamplerStep.Run(dx, dOut, dz, guided ? dg : null, k, dx);
            var want = SamplerStep.Reference(x, output, z, guided ? g : null, k, n);
            // Tolerance: atol 1e-5 + rtol 1e-5 — fp32 in the same order; exp and sqrt may differ by an ulp or two (ex2.approx,
            // FMA contraction on the GPU), amplified at most by √(1/ᾱ) ≈ 3 at these steps.
            TensorAssert.Close(want, dx.ToArray(), 1e-5, 1e-5, $"step t={t} clip={clip}");
        }
    }

    [Theory]
    [InlineData(16, 16, 8, 8)]
    [InlineData(12, 10, 5, 4)]
    public void AreaResizeMatchesTheReference(int h, int w, int ho, int wo)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var x = TestData.Uniform(2 * 3 * h * w, 6);
        using var dx = device!.Upload(x, 2, 3, h, w);
        using var dy = device.Allocate(2, 3, ho, wo);
        AreaResize.Forward(dx, dy);
        // Tolerance: exact — the same fp32 sums in the same order, the same two divisions.
        TensorAssert.Close(AreaResize.Reference(x, 6, h, w, ho, wo), dy.ToArray(), 0, 0, "area resize");
    }

    [Fact]
    public void NoiseMatchesTheReferenceAndDependsOnlyOnTheSampleIndex()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        int perSample = 3 * 7 * 7; // odd: the last pair has one value
        using var all = device!.Allocate(5, 3, 7, 7);
        GaussianNoise.Fill(all, seed: 42, stream: 3, first: 10);
        var want = GaussianNoise.Reference(42, 3, 10, 5, perSample);
        // Tolerance: atol 2e-6 + rtol 1e-5 — exact integer hashing; log, sqrt, sin and cos of a few ulp each.
        var got = all.ToArray();
        TensorAssert.Close(want, got, 2e-6, 1e-5, "noise");
        using var part = device.Allocate(2, 3, 7, 7);
        GaussianNoise.Fill(part, seed: 42, stream: 3, first: 12);
        TensorAssert.Close(got.AsSpan(2 * perSample, 2 * perSample), part.ToArray(), 0, 0, "the same samples drawn in another batch");
        // Another stream or seed draws other values; the draws are standard normal (4,096 values: mean ± 0.05, var ± 0.1).
        var other = GaussianNoise.Reference(42, 4, 10, 1, perSample);
        Assert.True(other.Zip(want).Count(p => p.First == p.Second) < 3);
        var big = GaussianNoise.Reference(7, 0, 0, 1, 4096);
        double mean = big.Average(v => (double)v), variance = big.Average(v => (v - mean) * (v - mean));
        Assert.InRange(mean, -0.05, 0.05);
        Assert.InRange(variance, 0.9, 1.1);
    }
}

[Collection("cpu")]
public sealed class SamplerKernelTestsCpu(CpuDeviceFixture f) : SamplerKernelTests(f.Plan);

[Collection("cpu")]
public sealed class SamplerKernelTestsCpuSimd(CpuSimdDeviceFixture f) : SamplerKernelTests(f.Plan);

[Collection("cuda")]
public sealed class SamplerKernelTestsCuda(CudaDeviceFixture f) : SamplerKernelTests(f.Plan);
