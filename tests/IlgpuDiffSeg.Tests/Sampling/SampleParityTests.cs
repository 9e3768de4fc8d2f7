using System.Text.Json.Nodes;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.Sampling;

/// <summary>
/// guided-diffusion's p_sample_loop and ddim_sample_loop with recorded noise: every run of tests/fixtures/adm-tiny/sample
/// (the official code) and of every folder of tests/fixtures/sample-configs (the PyTorch reference proven against it) —
/// a folder added there is checked the same way. .pt → convert → Sampler, each run's noise stack replacing every draw,
/// split into batches of 2 so that a batch starts in the middle of the stack.
/// Tolerance: max |diff| ≤ 1e-4 · max |ref| (the fixtures' README: a correct fp32 port; their fp64 drift is ≤ 1.2e-5).
/// </summary>
public abstract class SampleParityTests(ExecutionPlan? plan, ITestOutputHelper log)
{
    readonly ComputeDevice? device = plan?.Device;

    /// <summary>Every folder holding a sample.json, relative to tests/fixtures, and each run in it.</summary>
    public static TheoryData<string, string> Runs
    {
        get
        {
            var data = new TheoryData<string, string>();
            var folders = new[] { Path.Combine(Fixtures.Root, "adm-tiny", "sample") }
                .Concat(Directory.GetDirectories(Path.Combine(Fixtures.Root, "sample-configs")).Order(StringComparer.Ordinal));
            foreach (var dir in folders)
            {
                var runs = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "sample.json")))!.AsObject();
                foreach (var (name, run) in runs)
                {
                    if (run is JsonObject)
                    {
                        data.Add(Path.GetRelativePath(Fixtures.Root, dir).Replace('\\', '/'), name);
                    }
                }
            }
            return data;
        }
    }

    [Theory]
    [MemberData(nameof(Runs))]
    public void RunMatchesTheOfficialSampler(string folder, string run)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        double err = Check(plan!, Path.Combine(Fixtures.Root, folder), run);
        log.WriteLine($"{folder}/{run}: max|diff|/max|ref| = {err:E2}");
        Assert.True(err <= 1e-4, $"{folder}/{run}: {err:E2} of max|ref|");
    }

    /// <summary>Samples a fixture run under <paramref name="plan"/>; returns max|diff| / max|ref|.</summary>
    public static double Check(ExecutionPlan plan, string dir, string runName, int batch = 2)
    {
        // adm-tiny keeps its model and flags one level up from sample/.
        string modelDir = File.Exists(Path.Combine(dir, "model.pt")) ? dir : Path.GetDirectoryName(dir)!;
        var spec = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "sample.json")))!.AsObject();
        var run = spec[runName]!.AsObject();
        using var tmp = new TempDir();
        string converted = tmp.File("m.safetensors");
        ModelWeights.Convert(Path.Combine(modelDir, "model.pt"), Path.Combine(modelDir, "flags.json"), converted);
        using var model = ModelWeights.Load(converted, plan);
        var diffusion = GaussianDiffusion.FromFlags(model.Flags, (string)run["timestep_respacing"]!);
        var options = new SamplerOptions((bool)run["use_ddim"]!, (double?)run["eta"] ?? 0, (bool)run["clip_denoised"]!);
        var sampler = new Sampler(model, diffusion, options);
        var stack = Npy.ReadFloat32(Path.Combine(dir, (string)run["noise"]!), out var stackShape);
        Assert.Equal(diffusion.Steps + 1, stackShape[0]);
        long[]? y = spec["y"] is { } yName ? Npy.Read(Path.Combine(dir, (string)yName!)).ToInt64("y") : null;
        int n = stackShape[1], size = stackShape[3], perSample = 3 * size * size;
        var got = new float[n * perSample];
        var noise = new RecordedNoise(stack, stackShape);
        for (int first = 0; first < n; first += batch)
        {
            int count = Math.Min(batch, n - first);
            using var x = sampler.Sample(first, count, size, noise, y?.Skip(first).Take(count).ToArray());
            x.CopyTo(got.AsSpan(first * perSample, count * perSample));
        }
        var want = Npy.ReadFloat32(Path.Combine(dir, $"{runName}_out.npy"), out _);
        return TensorAssert.RelativeMaxError(want, got);
    }
}

/// <summary>
/// Every op an ILGPU kernel on the CPU accelerator: its UNet takes ~20 s a run here, so two runs stand for the rest (the
/// UNet's plans are compared elsewhere, the step kernel on every plan by SamplerKernelTests).
/// </summary>
[Collection("cpu")]
public sealed class SampleParityTestsCpu(CpuDeviceFixture f, ITestOutputHelper log)
{
    [Theory]
    [InlineData("sample-configs/fixedsmall-ddim-eta", "ddim_eta")]
    [InlineData("sample-configs/xstart-rescaled-ddim", "ancestral_noclip")]
    public void RunMatchesTheOfficialSampler(string folder, string run)
    {
        double err = SampleParityTests.Check(f.Plan, Path.Combine(Fixtures.Root, folder), run);
        log.WriteLine($"{folder}/{run}: max|diff|/max|ref| = {err:E2}");
        Assert.True(err <= 1e-4, $"{folder}/{run}: {err:E2} of max|ref|");
    }
}

[Collection("cpu")]
public sealed class SampleParityTestsCpuSimd(CpuSimdDeviceFixture f, ITestOutputHelper log) : SampleParityTests(f.Plan, log);

[Collection("cuda")]
public sealed class SampleParityTestsCuda(CudaDeviceFixture f, ITestOutputHelper log) : SampleParityTests(f.Plan, log);
