using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.Pipeline;

public abstract class FeatureParityTests(ExecutionPlan? plan, ITestOutputHelper log)
{
    readonly ComputeDevice? device = plan?.Device;

    /// <summary>
    /// tests/fixtures/adm-tiny/features.npy: ddpm-segmentation's pixel features of x0[0] with the shared noise at
    /// steps 50,150,250, blocks 2,3,4,5,7. Tolerance: max |diff| ≤ 1e-4 · max |official| (the bound).
    /// </summary>
    [Fact]
    public void ReproducesOfficialFeatures()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        using var tmp = new TempDir();
        ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), tmp.File("m.safetensors"));
        using var model = ModelWeights.Load(tmp.File("m.safetensors"), plan!);
        var x0 = Npy.ReadFloat32(Fixtures.AdmTiny("x0.npy"), out _);
        var noise = Npy.ReadFloat32(Fixtures.AdmTiny("noise.npy"), out _);
        using var image = device!.Upload(x0.AsSpan(0, 3 * 32 * 32), 3, 32, 32);
        using var eps = device.Upload(noise, 3, 32, 32);
        var extractor = new FeatureExtractor(model, [50, 150, 250], [7, 2, 3, 4, 5]);
        Assert.Equal(864, extractor.Channels);
        using var features = extractor.Extract(image, eps);
        var expected = Npy.ReadFloat32(Fixtures.AdmTiny("features.npy"), out var shape);
        Assert.Equal(shape, features.Shape);
        var actual = features.ToArray();
        log.WriteLine($"features: max|diff|/max|ref| = {TensorAssert.RelativeMaxError(expected, actual):E2}");
        TensorAssert.RelativeMaxBelow(expected, actual, 1e-4, "features");
    }

    [Fact]
    public void BilinearMatchesReference()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact — the kernel evaluates the reference's expression in the same fp32 order.
        var x = TestData.Uniform(2 * 4 * 5, 3);
        using var dx = device!.Upload(x, 2, 4, 5);
        using var dy = device.Zeros(3, 9, 11);
        UpsampleBilinear.Forward(dx, dy, channelOffset: 1);
        var expected = new float[3 * 9 * 11];
        UpsampleBilinear.Reference(x, 2, 4, 5, 9, 11).CopyTo(expected, 9 * 11);
        TensorAssert.Close(expected, dy.ToArray(), 0, 0, "bilinear into channel offset 1");
    }

    [Fact]
    public void QSampleMatchesReference()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (same two rounded products and rounded sum).
        var x0 = TestData.Uniform(30, 1);
        var noise = TestData.Uniform(30, 2);
        var coef = new[] { 0.9f, 0.1f, 0.5f, 0.8f };
        using var a = device!.Upload(x0, 3, 2, 5);
        using var b = device.Upload(noise, 3, 2, 5);
        using var c = device.Upload(coef, 2, 2);
        using var y = device.Allocate(2, 3, 2, 5);
        QSample.Forward(a, b, c, y);
        TensorAssert.Close(QSample.Reference(x0, noise, coef), y.ToArray(), 0, 0, "q_sample, shared noise");
        var perStep = TestData.Uniform(60, 3);
        using var ps = device.Upload(perStep, 2, 3, 2, 5);
        QSample.Forward(a, ps, c, y);
        TensorAssert.Close(QSample.Reference(x0, perStep, coef), y.ToArray(), 0, 0, "q_sample, noise per step");
    }
}

[Collection("cpu")]
public sealed class FeatureParityTestsCpu(CpuDeviceFixture f, ITestOutputHelper log) : FeatureParityTests(f.Plan, log);

[Collection("cuda")]
public sealed class FeatureParityTestsCuda(CudaDeviceFixture f, ITestOutputHelper log) : FeatureParityTests(f.Plan, log);

public sealed class NoiseScheduleTests
{
    [Fact]
    public void LinearScheduleMatchesGuidedDiffusion()
    {
        // Float64 values from guided-diffusion (docs/method.md, Noise schedules and q_sample).
        var s = NoiseSchedule.Linear(1000);
        Assert.Equal(0.0001, s.Betas[0], 15);
        Assert.Equal(0.02, s.Betas[999], 15);
        Assert.Equal(0.001096, s.Betas[50], 6);
        Assert.Equal(0.96995149, s.AlphasCumprod[50], 8);
        Assert.Equal(0.78588702, s.AlphasCumprod[150], 8);
        Assert.Equal(0.52142303, s.AlphasCumprod[250], 8);
        var (a, b) = s.QSampleCoefficients(250);
        Assert.Equal(0.722096, a, 6);
        Assert.Equal(0.691793, b, 6);
    }

    [Fact]
    public void CosineScheduleIsCapped()
    {
        var s = NoiseSchedule.Cosine(1000);
        Assert.True(s.Betas.All(b => b > 0 && b <= 0.999));
        Assert.Equal(0.999, s.Betas[^1], 12);
    }
}

public abstract class StepChunkingTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    /// <summary>
    /// Running the steps one UNet call at a time (what large images do) gives the same features as one batched call.
    /// Tolerance: exact — batch items never interact in any kernel.
    /// </summary>
    [Fact]
    public void OneStepAtATimeEqualsBatched()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        using var tmp = new TempDir();
        ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), tmp.File("m.safetensors"));
        using var model = ModelWeights.Load(tmp.File("m.safetensors"), plan!);
        using var image = device!.Upload(TestData.Uniform(3 * 32 * 32, 60), 3, 32, 32);
        using var noise = device.Upload(TestData.Uniform(3 * 3 * 32 * 32, 61), 3, 3, 32, 32);
        var batched = new FeatureExtractor(model, [50, 150, 250], [2, 5, 7]);
        var chunked = new FeatureExtractor(model, [50, 150, 250], [2, 5, 7]) { MaxBatchPixels = 32 * 32 };
        using var a = batched.Extract(image, noise);
        using var b = chunked.Extract(image, noise);
        TensorAssert.Close(a.ToArray(), b.ToArray(), 0, 0, "step-by-step vs batched features, per-step noise");
    }
}

[Collection("cpu")]
public sealed class StepChunkingTestsCpu(CpuSimdDeviceFixture f) : StepChunkingTests(f.Plan);

[Collection("cuda")]
public sealed class StepChunkingTestsCuda(CudaDeviceFixture f) : StepChunkingTests(f.Plan);
