using System.Text.Json.Nodes;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.Sampling;

/// <summary>
/// Classifier guidance against guided-diffusion's classifier_sample.py on small random models (tests/fixtures/guidance,
/// made by make_sampling_fixtures.py and checked bit for bit against guided-diffusion's own classes): the classifier's
/// logits and cond_fn gradient, then every guided run with recorded noise (condition_mean for the ancestral sampler,
/// condition_score for DDIM). In every run the guidance moves the output by ≥ 2.4e-3 of max|x|, so the bound tells a
/// guided sampler from an unguided one.
/// Tolerances: logits and gradient 1e-4 of max|ref| (fp32 forward and backward); samples 1e-4 of max|ref| as SampleParityTests.
/// </summary>
public abstract class GuidanceParityTests(ExecutionPlan? plan, ITestOutputHelper log)
{
    readonly ComputeDevice? device = plan?.Device;

    public static TheoryData<string> Folders => ["attention-pool", "adaptive-pool-classcond"];

    public static TheoryData<string, string> Runs
    {
        get
        {
            var data = new TheoryData<string, string>();
            foreach (var folder in Directory.GetDirectories(Path.Combine(Fixtures.Root, "guidance")).Order(StringComparer.Ordinal))
            {
                foreach (var (name, run) in JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "sample.json")))!.AsObject())
                {
                    if (run is JsonObject)
                    {
                        data.Add(Path.GetFileName(folder), name);
                    }
                }
            }
            return data;
        }
    }

    static string Dir(string folder) => Path.Combine(Fixtures.Root, "guidance", folder);

    static EncoderUNetModel LoadClassifier(string dir, ExecutionPlan plan, TempDir tmp)
    {
        string path = tmp.File("classifier.safetensors");
        ClassifierWeights.Convert(Path.Combine(dir, "classifier.pt"), Path.Combine(dir, "classifier_flags.json"), path);
        return ClassifierWeights.Load(path, plan);
    }

    [Theory]
    [MemberData(nameof(Folders))]
    public void ClassifierLogitsAndGradientMatch(string folder)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        string dir = Dir(folder);
        using var tmp = new TempDir();
        using var classifier = LoadClassifier(dir, plan!, tmp);
        var x = Npy.ReadFloat32(Path.Combine(dir, "classifier_x.npy"), out var shape);
        var t = Npy.ReadFloat32(Path.Combine(dir, "classifier_t.npy"), out _);
        var y = Npy.Read(Path.Combine(dir, "y.npy")).ToInt64("y");
        using var dx = device!.Upload(x, shape);
        using var dt = device.Upload(t, t.Length);
        using (var pass = new Pass(plan!))
        using (var logits = classifier.Forward(pass, dx, dt))
        {
            var want = Npy.ReadFloat32(Path.Combine(dir, "classifier_logits.npy"), out _);
            double err = TensorAssert.RelativeMaxError(want, logits.ToArray());
            log.WriteLine($"{folder} logits: {err:E2}");
            Assert.True(err <= 1e-4, $"logits {err:E2}");
        }
        using var gradient = device.Allocate(shape);
        new ClassifierGuidance(classifier, 1f).Gradient(dx, dt, y, gradient);
        var wantGrad = Npy.ReadFloat32(Path.Combine(dir, "classifier_grad.npy"), out _);
        double gErr = TensorAssert.RelativeMaxError(wantGrad, gradient.ToArray());
        log.WriteLine($"{folder} gradient: {gErr:E2}");
        Assert.True(gErr <= 1e-4, $"gradient {gErr:E2}");
    }

    [Theory]
    [MemberData(nameof(Runs))]
    public void GuidedRunMatchesTheOfficialSampler(string folder, string run)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        string dir = Dir(folder);
        var spec = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "sample.json")))!.AsObject();
        var r = spec[run]!.AsObject();
        using var tmp = new TempDir();
        string model = tmp.File("m.safetensors");
        ModelWeights.Convert(Path.Combine(dir, "model.pt"), Path.Combine(dir, "flags.json"), model);
        using var unet = ModelWeights.Load(model, plan!);
        using var classifier = LoadClassifier(dir, plan!, tmp);
        var diffusion = GaussianDiffusion.FromFlags(unet.Flags, (string)r["timestep_respacing"]!);
        var options = new SamplerOptions((bool)r["use_ddim"]!, (double?)r["eta"] ?? 0, (bool)r["clip_denoised"]!);
        var sampler = new Sampler(unet, diffusion, options);
        var stack = Npy.ReadFloat32(Path.Combine(dir, "noise.npy"), out var stackShape);
        var y = Npy.Read(Path.Combine(dir, "y.npy")).ToInt64("y");
        var guidance = new ClassifierGuidance(classifier, (float)(double)r["classifier_scale"]!);
        using var x = sampler.Sample(0, stackShape[1], stackShape[3], new RecordedNoise(stack, stackShape), y, guidance);
        var want = Npy.ReadFloat32(Path.Combine(dir, $"{run}_out.npy"), out _);
        double err = TensorAssert.RelativeMaxError(want, x.ToArray());
        log.WriteLine($"{folder}/{run}: {err:E2}");
        Assert.True(err <= 1e-4, $"{folder}/{run}: {err:E2} of max|ref|");
    }
}

[Collection("cpu")]
public sealed class GuidanceParityTestsCpuSimd(CpuSimdDeviceFixture f, ITestOutputHelper log) : GuidanceParityTests(f.Plan, log);

[Collection("cpu")]
public sealed class GuidanceParityTestsCpu(CpuDeviceFixture f, ITestOutputHelper log) : GuidanceParityTests(f.Plan, log);

[Collection("cuda")]
public sealed class GuidanceParityTestsCuda(CudaDeviceFixture f, ITestOutputHelper log) : GuidanceParityTests(f.Plan, log);
