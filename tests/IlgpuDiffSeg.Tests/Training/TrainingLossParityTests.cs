using System.Text.Json.Nodes;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Training;

namespace IlgpuDiffSeg.Tests.Training;

/// <summary>
/// guided-diffusion's training_losses and its gradients (the official tests/fixtures/adm-tiny/train, and the flag
/// combinations of tests/fixtures/train-configs): .pt → convert → one loss step with dropout off → every loss term and the
/// gradient of every parameter under its state_dict name.
/// Tolerances (tests/fixtures/train-configs/README.md: a correct fp32 port measured ≤ 8.4e-7 and ≤ 1.8e-5 of them): loss terms within
/// 1e-5 relative; each gradient tensor within 1e-4·max(max|ref|, 1e-2·G), G the largest |ref| of the folder — the floor
/// for tensors whose true gradient is 0 and whose file holds only PyTorch's rounding (biases before a GroupNorm of one
/// channel per group).
/// </summary>
public abstract class TrainingLossParityTests(ExecutionPlan? plan, ITestOutputHelper log)
{
    readonly ComputeDevice? device = plan?.Device;

    public static TheoryData<string> Folders => ["adm-tiny/train", "train-configs/cosine-classcond-rescaled-mse",
        "train-configs/kl-learnsigma", "train-configs/mse-xstart-plain", "train-configs/kl-500steps"];

    [Theory]
    [MemberData(nameof(Folders))]
    public void LossAndEveryGradientMatchTheOfficialCode(string folder)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var result = Check(plan!, Path.Combine(Fixtures.Root, folder), log);
        Assert.True(result.WorstLoss <= 1e-5, $"loss terms {result.WorstLoss:E2} relative");
        Assert.True(result.WorstGradient <= 1, $"gradient '{result.WorstTensor}' at {result.WorstGradient:E2} of its bound");
    }

    /// <summary>
    /// use_checkpoint reruns each block's forward inside its backward instead of keeping its activations: the same
    /// arithmetic, so the same gradients to the bit.
    /// </summary>
    [Fact]
    public void GradientCheckpointingGivesTheSameGradients()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        string dir = Path.Combine(Fixtures.Root, "adm-tiny", "train");
        var plain = Gradients(plan!, dir, useCheckpoint: false);
        var checkpointed = Gradients(plan!, dir, useCheckpoint: true);
        Assert.Equal(plain.Keys, checkpointed.Keys);
        foreach (var (name, g) in plain)
        {
            Assert.True(g.AsSpan().SequenceEqual(checkpointed[name]), $"'{name}' differs with use_checkpoint");
        }
    }

    static Dictionary<string, float[]> Gradients(ExecutionPlan plan, string dir, bool useCheckpoint)
    {
        string modelDir = Path.GetDirectoryName(dir)!;
        using var tmp = new TempDir();
        var flags = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(modelDir, "flags.json")))!.AsObject();
        flags["use_checkpoint"] = useCheckpoint;
        File.WriteAllText(tmp.File("flags.json"), flags.ToJsonString());
        ModelWeights.Convert(Path.Combine(modelDir, "model.pt"), tmp.File("flags.json"), tmp.File("m.safetensors"));
        using var model = ModelWeights.Load(tmp.File("m.safetensors"), plan);
        model.AllocateGradients(plan.Device);
        var x0 = Npy.ReadFloat32(Path.Combine(dir, "x_start.npy"), out var shape);
        var noise = Npy.ReadFloat32(Path.Combine(dir, "noise.npy"), out _);
        var t = Npy.Read(Path.Combine(dir, "t.npy")).ToInt64("t.npy").Select(v => (int)v).ToArray();
        using var dx0 = plan.Device.Upload(x0, shape);
        using var dNoise = plan.Device.Upload(noise, shape);
        using var pass = new Pass(plan, training: false, saves: true);
        DiffusionLossStep.Run(model, GaussianDiffusion.FromFlags(model.Flags), pass, dx0, dNoise, t, null,
            Enumerable.Repeat(1f / t.Length, t.Length).ToArray());
        return model.Parameters().ToDictionary(p => p.Name, p => p.G.ToArray());
    }

    public sealed record Outcome(double WorstLoss, double WorstGradient, string WorstTensor);

    /// <summary>Runs the folder's step under <paramref name="plan"/>; returns the worst errors (gradients as a fraction of their
    /// bound).</summary>
    public static Outcome Check(ExecutionPlan plan, string dir, ITestOutputHelper log)
    {
        // adm-tiny keeps its model and flags one level up from train/.
        string modelDir = File.Exists(Path.Combine(dir, "model.pt")) ? dir : Path.GetDirectoryName(dir)!;
        using var tmp = new TempDir();
        string converted = tmp.File("m.safetensors");
        ModelWeights.Convert(Path.Combine(modelDir, "model.pt"), Path.Combine(modelDir, "flags.json"), converted);
        using var model = ModelWeights.Load(converted, plan);
        model.AllocateGradients(plan.Device);
        var diffusion = GaussianDiffusion.FromFlags(model.Flags);
        var x0 = Npy.ReadFloat32(Path.Combine(dir, "x_start.npy"), out var shape);
        var noise = Npy.ReadFloat32(Path.Combine(dir, "noise.npy"), out _);
        var t = Npy.Read(Path.Combine(dir, "t.npy")).ToInt64("t.npy").Select(v => (int)v).ToArray();
        long[]? y = File.Exists(Path.Combine(dir, "y.npy")) ? Npy.Read(Path.Combine(dir, "y.npy")).ToInt64("y.npy") : null;
        using var dx0 = plan.Device.Upload(x0, shape);
        using var dNoise = plan.Device.Upload(noise, shape);
        using var pass = new Pass(plan, training: false, saves: true);
        var terms = DiffusionLossStep.Run(model, diffusion, pass, dx0, dNoise, t, y, Enumerable.Repeat(1f / t.Length, t.Length).ToArray());
        Assert.Equal(0, pass.SavedCount);

        var want = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "loss.json")))!.AsObject();
        double worstLoss = 0;
        foreach (var (name, got) in new[] { ("loss", terms.MeanLoss), ("mse", terms.MeanMse), ("vb", terms.MeanVb) })
        {
            if (want[name] is { } expected)
            {
                double rel = Math.Abs(got - (double)expected) / Math.Abs((double)expected);
                log.WriteLine($"{name}: {got:G9} (official {(double)expected:G9}, rel {rel:E2})");
                worstLoss = Math.Max(worstLoss, rel);
            }
        }
        var grads = Npz.Read(Path.Combine(dir, "grads.npz"));
        var parameters = model.Parameters().ToDictionary(p => p.Name);
        Assert.Equal(grads.Keys.Order(), parameters.Keys.Order());
        double g = grads.Values.Max(a => a.ToFloat32("grads").Max(MathF.Abs));
        double worst = 0;
        string worstName = "";
        foreach (var (name, array) in grads)
        {
            var expected = array.ToFloat32(name);
            Assert.Equal(array.Shape, parameters[name].Shape);
            var actual = parameters[name].G.ToArray();
            double scale = Math.Max(expected.Max(MathF.Abs), 1e-2 * g);
            double err = expected.Zip(actual, (a, b) => Math.Abs(a - b)).Max() / scale / 1e-4;
            if (err > worst)
            {
                (worst, worstName) = (err, name);
            }
        }
        log.WriteLine($"{grads.Count} gradient tensors; worst '{worstName}' at {worst:E2} of the bound (G = {g:E2})");
        return new Outcome(worstLoss, worst, worstName);
    }
}

[Collection("cpu")]
public sealed class TrainingLossParityTestsCpuSimd(CpuSimdDeviceFixture f, ITestOutputHelper log) : TrainingLossParityTests(f.Plan, log);

[Collection("cuda")]
public sealed class TrainingLossParityTestsCuda(CudaDeviceFixture f, ITestOutputHelper log) : TrainingLossParityTests(f.Plan, log);
