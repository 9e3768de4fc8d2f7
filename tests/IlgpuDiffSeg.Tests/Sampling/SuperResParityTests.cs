using System.Text.Json.Nodes;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Tests.Training;

namespace IlgpuDiffSeg.Tests.Sampling;

/// <summary>
/// Super-resolution against guided-diffusion on a small random SuperResModel (tests/fixtures/superres, made by
/// make_sampling_fixtures.py and bit-identical to guided-diffusion's own SuperResModel, samplers and training_losses):
/// super_res_sample.py's runs from base samples (3 samples from 2 base images: they are taken in turn), and
/// super_res_train.py's loss and every gradient, its low_res made by area downsampling of the batch.
/// Tolerances: samples 1e-4 of max|ref| (SampleParityTests); the loss step as TrainingLossParityTests.
/// </summary>
public abstract class SuperResParityTests(ExecutionPlan? plan, ITestOutputHelper log)
{
    readonly ComputeDevice? device = plan?.Device;

    static string Dir => Path.Combine(Fixtures.Root, "superres", "sr8to16");

    public static TheoryData<string> Runs => ["ancestral", "ancestral_noclip", "ddim"];

    [Theory]
    [MemberData(nameof(Runs))]
    public void RunFromBaseSamplesMatchesSuperResSample(string run)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var r = JsonNode.Parse(File.ReadAllText(Path.Combine(Dir, "sample.json")))![run]!.AsObject();
        using var tmp = new TempDir();
        string converted = tmp.File("sr.safetensors");
        ModelWeights.Convert(Path.Combine(Dir, "model.pt"), Path.Combine(Dir, "flags.json"), converted);
        using var model = ModelWeights.Load(converted, plan!);
        Assert.True(model.Flags.IsSuperResolution);
        var diffusion = GaussianDiffusion.FromFlags(model.Flags, (string)r["timestep_respacing"]!);
        var options = new SamplerOptions((bool)r["use_ddim"]!, (double?)r["eta"] ?? 0, (bool)r["clip_denoised"]!);
        var sampler = new Sampler(model, diffusion, options);
        var stack = Npy.ReadFloat32(Path.Combine(Dir, "noise.npy"), out var stackShape);
        var base0 = Npz.Read(Path.Combine(Dir, "base.npz"))["arr_0"];
        int n = stackShape[1], small = base0.Shape[1], plane = small * small;
        var low = new float[n * 3 * plane];
        for (int i = 0; i < n; i++)
        for (int p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++)
        {
            low[(i * 3 + c) * plane + p] = base0.Data[((i % base0.Shape[0]) * plane + p) * 3 + c] / 127.5f - 1f;
        }
        using var lowRes = device!.Upload(low, n, 3, small, small);
        using var x = sampler.Sample(0, n, stackShape[3], new RecordedNoise(stack, stackShape), lowRes: lowRes);
        double err = TensorAssert.RelativeMaxError(Npy.ReadFloat32(Path.Combine(Dir, $"{run}_out.npy"), out _), x.ToArray());
        log.WriteLine($"superres/{run}: {err:E2}");
        Assert.True(err <= 1e-4, $"superres/{run}: {err:E2} of max|ref|");
    }

    [Fact]
    public void TrainingLossAndEveryGradientMatchSuperResTrain()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var result = TrainingLossParityTests.Check(plan!, Path.Combine(Dir, "train"), log);
        Assert.True(result.WorstLoss <= 1e-5, $"loss terms {result.WorstLoss:E2} relative");
        Assert.True(result.WorstGradient <= 1, $"gradient '{result.WorstTensor}' at {result.WorstGradient:E2} of its bound");
    }
}

[Collection("cpu")]
public sealed class SuperResParityTestsCpuSimd(CpuSimdDeviceFixture f, ITestOutputHelper log) : SuperResParityTests(f.Plan, log);

[Collection("cpu")]
public sealed class SuperResParityTestsCpu(CpuDeviceFixture f, ITestOutputHelper log) : SuperResParityTests(f.Plan, log);

[Collection("cuda")]
public sealed class SuperResParityTestsCuda(CudaDeviceFixture f, ITestOutputHelper log) : SuperResParityTests(f.Plan, log);
