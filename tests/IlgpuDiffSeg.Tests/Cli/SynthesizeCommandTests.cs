using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Tests.Cli;

/// <summary>
/// 'diffseg synthesize' (DatasetDDPM) on the official tiny UNet (32×32) with a random 2-member ensemble saved where
/// 'diffseg train' would put it, 3 sampling steps: the npz and the dataset folder, shards that merge into one run's result,
/// a resumed run, and bad input.
/// </summary>
[Collection("console")]
public sealed class SynthesizeCommandTests : IDisposable
{
    readonly TempDir tmp = new();
    readonly string config;

    public SynthesizeCommandTests()
    {
        string model = tmp.File("tiny.safetensors");
        ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), model);
        int channels = new UNetModel(AdmFlags.Load(Fixtures.AdmTiny("flags.json"))).OutputBlocks[2].Channels;
        Directory.CreateDirectory(tmp.File("train"));
        config = tmp.File("exp.json");
        File.WriteAllText(config, $$"""
            {"exp_dir": "{{tmp.File("exp")}}", "model_type": "ddpm", "category": "synthetic", "number_class": 5,
             "ignore_label": 255, "training_path": "{{tmp.File("train")}}", "testing_path": "{{tmp.File("train")}}",
             "model_path": "{{model}}", "dim": [32, 32, {{channels}}], "steps": [50], "blocks": [2], "model_num": 2,
             "share_noise": true, "seed": 0}
            """);
        var cfg = ExperimentConfig.Load(config);
        using var dev = ComputeDevice.Create(DeviceChoice.Cpu);
        using var ensemble = PixelEnsemble.CreateRandom(ExecutionPlan.For(dev), MlpLayout.ForClasses(2, channels, 5), seed: 3);
        Directory.CreateDirectory(cfg.ExpDir);
        ensemble.Save(Path.Combine(cfg.ExpDir, TrainingRun.EnsembleFile));
    }

    public void Dispose() => tmp.Dispose();

    CliRunner.Result Synthesize(string dir, params string[] more) => CliRunner.Run(
        ["synthesize", "--config", config, "--num-samples", "5", "--batch-size", "2", "-o", dir, "--uncertainty-portion", "0.4",
         "--device", "cpu", .. more.Contains("--timestep-respacing") ? more : [.. more, "--timestep-respacing", "3"]]);

    static Dictionary<string, NpyArray> Samples(string dir) => Npz.Read(Path.Combine(dir, "samples_32x32x3.npz"));

    static void AssertSameArrays(Dictionary<string, NpyArray> a, Dictionary<string, NpyArray> b)
    {
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        foreach (var key in a.Keys)
        {
            Assert.Equal(a[key].Shape, b[key].Shape);
            Assert.True(a[key].Data.AsSpan().SequenceEqual(b[key].Data), a[key].Type == NpyType.Float32
                ? $"{key} differs: [{string.Join(", ", a[key].ToFloat32(key))}] vs [{string.Join(", ", b[key].ToFloat32(key))}]"
                : $"{key} differs");
        }
    }

    [Fact]
    public void OneRunWritesTheNpzAndTheFilteredDatasetFolder()
    {
        string dir = tmp.File("one");
        var r = Synthesize(dir);
        Assert.True(r.ExitCode == 0, r.Error);
        var a = Samples(dir);
        Assert.Equal([5, 32, 32, 3], a["arr_0"].Shape);
        Assert.Equal(NpyType.UInt8, a["arr_1"].Type);
        Assert.Equal([5, 32, 32], a["arr_1"].Shape);
        Assert.True(a["arr_1"].Data.All(v => v < 5));
        var unc = a["arr_2"].ToFloat32("arr_2");
        Assert.Equal(5, unc.Length);
        // int(5 · 0.4) = 2 dropped: the two least certain.
        var kept = SyntheticDataset.KeptIndices(unc, 0.4);
        Assert.Equal(3, kept.Length);
        var files = Directory.GetFiles(Path.Combine(dir, "dataset")).Select(Path.GetFileName).Order().ToArray();
        Assert.Equal(kept.Order().SelectMany(i => new[] { $"{i:D6}.npy", $"{i:D6}.png" }).Order(), files);
        var mask = Npy.Read(Path.Combine(dir, "dataset", $"{kept[0]:D6}.npy"));
        Assert.Equal(a["arr_1"].Data.AsSpan(kept[0] * 1024, 1024).ToArray(), mask.Data);
    }

    [Fact]
    public void ShardsMergeIntoTheResultOfOneRunAndAStoppedRunResumes()
    {
        string one = tmp.File("one"), shards = tmp.File("shards");
        Assert.Equal(0, Synthesize(one).ExitCode);
        var first = Synthesize(shards, "--shard", "1/2");
        Assert.True(first.ExitCode == 0, first.Error);
        Assert.Contains("1 batches done, 0 already there; 1 of 3 present", first.Out);
        Assert.False(File.Exists(Path.Combine(shards, "samples_32x32x3.npz")));
        var second = Synthesize(shards, "--shard", "0/2");
        Assert.True(second.ExitCode == 0, second.Error);
        AssertSameArrays(Samples(one), Samples(shards));

        // A run stopped after its first batch, then resumed, ends where an uninterrupted run does.
        string stopped = tmp.File("stopped");
        var o = new SynthesizeOptions
        {
            ConfigPath = config, OutputDir = stopped, NumSamples = 5, BatchSize = 2, TimestepRespacing = "3", UncertaintyPortion = 0.4,
        };
        var cfg = SynthesizeRun.Prepare(o);
        using (var dev = ComputeDevice.Create(DeviceChoice.Cpu, hostKernels: true))
        {
            Assert.Throws<IlgpuDiffSeg.Training.TrainingStoppedException>(() => SynthesizeRun.Run(o, cfg, ExecutionPlan.For(dev),
                stopRequested: () => File.Exists(SynthesizeRun.BatchPath(stopped, 0))));
        }
        Assert.Single(Directory.GetFiles(Path.Combine(stopped, "batches")));
        var resumed = Synthesize(stopped);
        Assert.True(resumed.ExitCode == 0, resumed.Error);
        Assert.Contains("(2 batches now", resumed.Out);
        AssertSameArrays(Samples(one), Samples(stopped));
    }

    /// <summary>
    /// --devices spreads the batches over one worker per device: two CPU accelerators stand in for two GPUs here (one
    /// machine has one CPU accelerator for the command line). The samples are the same whichever device draws them.
    /// </summary>
    [Fact]
    public void TwoDevicesGiveTheResultOfOne()
    {
        string one = tmp.File("one"), two = tmp.File("two");
        Assert.Equal(0, Synthesize(one).ExitCode);
        var o = new SynthesizeOptions
        {
            ConfigPath = config, OutputDir = two, NumSamples = 5, BatchSize = 2, TimestepRespacing = "3", UncertaintyPortion = 0.4,
        };
        var cfg = SynthesizeRun.Prepare(o);
        // The command line's CPU device runs its kernels as host code (--cpu-backend simd); these do too.
        using var a = ComputeDevice.Create(DeviceChoice.Cpu, hostKernels: true);
        using var b = ComputeDevice.Create(DeviceChoice.Cpu, hostKernels: true);
        var sum = SynthesizeRun.Run(o, cfg, [ExecutionPlan.For(a), ExecutionPlan.For(b)]);
        Assert.Equal(3, sum.BatchesDone);
        AssertSameArrays(Samples(one), Samples(two));
        CliRunner.AssertOneLineError(Synthesize(tmp.File("c"), "--devices", "2"), "--devices 2");
    }

    [Fact]
    public void BadInputIsOneLineAndLeavesNothing()
    {
        CliRunner.AssertOneLineError(Synthesize(tmp.File("a"), "--shard", "3/2"), "--shard 3/2");
        Assert.False(Directory.Exists(tmp.File("a")));
        CliRunner.AssertOneLineError(Synthesize(tmp.File("a"), "--timestep-respacing", "ddim49"), "ddim49");
        Assert.False(Directory.Exists(tmp.File("a")));
        // Resuming with other settings is refused: the batches would not belong together.
        string dir = tmp.File("b");
        Directory.CreateDirectory(Path.Combine(dir, "batches"));
        File.WriteAllText(Path.Combine(dir, SynthesizeRun.ManifestFile), """{"seed": 7}""");
        CliRunner.AssertOneLineError(Synthesize(dir), "synthesize.json", "was started with");
        CliRunner.AssertOneLineError(Synthesize(tmp.File("exp")), "not a synthesize output folder");
        // Values that pass a range check by being NaN, and a manifest that is not one.
        CliRunner.AssertOneLineError(Synthesize(tmp.File("a"), "--use-ddim", "--eta", "NaN"), "--eta NaN");
        CliRunner.AssertOneLineError(CliRunner.Run("synthesize", "--config", config, "--num-samples", "2", "-o", tmp.File("a"),
            "--uncertainty-portion", "NaN", "--device", "cpu"), "--uncertainty-portion NaN");
        CliRunner.AssertOneLineError(CliRunner.Run("synthesize", "--config", config, "--num-samples", "2147483647", "-o", tmp.File("a"),
            "--device", "cpu"), "--num-samples 2147483647");
        Assert.False(Directory.Exists(tmp.File("a")));
        foreach (var text in new[] { "", "{nope", "[1, 2]" })
        {
            File.WriteAllText(Path.Combine(dir, SynthesizeRun.ManifestFile), text);
            CliRunner.AssertOneLineError(Synthesize(dir), "synthesize.json", "not a manifest");
        }
        File.WriteAllText(tmp.File("file"), "x");
        CliRunner.AssertOneLineError(Synthesize(tmp.File("file")), "file", "is a file");
    }

    [Fact]
    public void AFailedRunLeavesNoFolderAndAStoppedRunKeepsItsBatches()
    {
        // A run whose ensemble cannot be read fails before its first batch: no output folder.
        string cfgCopy = tmp.File("broken.json"), expDir = tmp.File("broken");
        File.WriteAllText(cfgCopy, File.ReadAllText(config).Replace(tmp.File("exp"), expDir));
        Directory.CreateDirectory(Path.Combine(expDir, "50_2"));
        File.WriteAllBytes(Path.Combine(expDir, "50_2", TrainingRun.EnsembleFile), new byte[100]);
        var r = CliRunner.Run("synthesize", "--config", cfgCopy, "--num-samples", "2", "-o", tmp.File("out"), "--device", "cpu");
        CliRunner.AssertErrorLast(r, TrainingRun.EnsembleFile);
        Assert.False(Directory.Exists(tmp.File("out")));

        // Through the command's output scope, a stop (Ctrl+C) after the first batch keeps it and the manifest.
        string stopped = tmp.File("stopped");
        var o = new SynthesizeOptions { ConfigPath = config, OutputDir = stopped, NumSamples = 5, BatchSize = 2, TimestepRespacing = "2" };
        using var dev = ComputeDevice.Create(DeviceChoice.Cpu, hostKernels: true);
        int code = IlgpuDiffSeg.Cli.Program.Run(() => SynthesizeRun.Run(o, SynthesizeRun.Prepare(o), ExecutionPlan.For(dev),
            stopRequested: () => File.Exists(SynthesizeRun.BatchPath(stopped, 0))));
        Assert.Equal(130, code);
        Assert.True(File.Exists(SynthesizeRun.BatchPath(stopped, 0)) && File.Exists(Path.Combine(stopped, SynthesizeRun.ManifestFile)));

        // A damaged batch is refused when the run resumes, before any new batch is sampled.
        string batch0 = SynthesizeRun.BatchPath(stopped, 0);
        File.WriteAllBytes(batch0, File.ReadAllBytes(batch0)[..^200]);
        CliRunner.AssertOneLineError(Synthesize(stopped, "--timestep-respacing", "2"), "batch_000000.npz");
        Assert.Single(Directory.GetFiles(Path.Combine(stopped, SynthesizeRun.BatchFolder)));
    }
}
