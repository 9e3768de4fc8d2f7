using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Tests.Cli;
using IlgpuDiffSeg.Training;

namespace IlgpuDiffSeg.Tests.Training;

/// <summary>
/// The training loop on a tiny ADM (16², 32 channels, attention at 8², learned variance, dropout): resuming, fp16 loss
/// scaling, and the failures a user meets — each an exact check, no tolerance (the loop is deterministic).
/// </summary>
[Collection("cpu")]
public sealed class DiffusionTrainerTests(CpuSimdDeviceFixture f)
{
    const string TinyFlags = """
        {"image_size": 16, "num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1, "attention_resolutions": "8",
         "num_head_channels": 32, "resblock_updown": true, "use_scale_shift_norm": true, "learn_sigma": true, "dropout": 0.1,
         "diffusion_steps": 100, "noise_schedule": "linear"}
        """;

    static TrainingOptions Options(long steps, int saveInterval, Precision precision = Precision.Fp32) => new()
    {
        Flags = AdmFlags.Parse(TinyFlags, "tiny flags"),
        Data = SyntheticImages.Name,
        BatchSize = 3,
        Microbatch = 2,
        EmaRates = [0.9, 0.99],
        ScheduleSampler = "loss-second-moment",
        MaxSteps = steps,
        SaveInterval = saveInterval,
        LogInterval = 1,
        Seed = 5,
        Precision = precision,
    };

    ExecutionPlan Plan(Precision precision) => ExecutionPlan.For(f.Device, precision);

    [Fact]
    public void ResumedRunEndsWithTheWeightsOfAnUninterruptedOne()
    {
        using var tmp = new TempDir();
        string straight = tmp.File("straight"), resumed = tmp.File("resumed");
        DiffusionTrainingRun.Run(Options(4, 4), Plan(Precision.Fp32), straight, _ => { });
        // Stopped after step 2 (as Ctrl+C does: the step is saved), then the same command again.
        int calls = 0;
        var stop = Assert.Throws<TrainingStoppedException>(() =>
            DiffusionTrainingRun.Run(Options(4, 4), Plan(Precision.Fp32), resumed, _ => { }, () => ++calls == 2));
        Assert.Contains("stopped at step 2", stop.Message);
        var lines = new List<string>();
        DiffusionTrainingRun.Run(Options(4, 4), Plan(Precision.Fp32), resumed, lines.Add);
        Assert.Contains(lines, l => l.StartsWith("resuming from step 2", StringComparison.Ordinal));
        foreach (var name in new[] { "model000004", "ema_0.9_000004", "ema_0.99_000004", "opt000004" })
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(straight, name + ".safetensors")),
                File.ReadAllBytes(Path.Combine(resumed, name + ".safetensors")));
        }
        Assert.Equal(5, File.ReadAllLines(Path.Combine(resumed, DiffusionTrainingRun.CsvFile)).Length);
        Assert.True(File.Exists(Path.Combine(resumed, DiffusionTrainingRun.CurveFile)));
    }

    [Fact]
    public void Fp16OverflowSkipsTheStepAndLowersTheLossScale()
    {
        // A loss scale of 2^60 overflows fp16 in the first backward product: the step is skipped, nothing moves.
        var options = Options(1, 1, Precision.Fp16) with { InitialLgLossScale = 60 };
        using var trainer = new DiffusionTrainer(options, Plan(Precision.Fp16));
        var before = trainer.Model.Parameters().First(p => p.Name == "out.2.weight").T.ToArray();
        using var data = new SyntheticImages(16, 3, 5);
        var report = trainer.RunStep(data.Batch(0).Images, null);
        Assert.False(report.Taken);
        Assert.Equal(59, report.LgLossScale);
        Assert.Equal(0, trainer.AdamSteps);
        Assert.Equal(before, trainer.Model.Parameters().First(p => p.Name == "out.2.weight").T.ToArray());
    }

    [Fact]
    public void Fp16StepTakenAtAFittingScaleGrowsIt()
    {
        var options = Options(1, 1, Precision.Fp16) with { InitialLgLossScale = 10 };
        using var trainer = new DiffusionTrainer(options, Plan(Precision.Fp16));
        using var data = new SyntheticImages(16, 3, 5);
        var report = trainer.RunStep(data.Batch(0).Images, null);
        Assert.True(report.Taken);
        Assert.Equal(10.001, report.LgLossScale, 9);
        Assert.True(double.IsFinite(report.GradNorm) && report.GradNorm > 0);
    }
}

/// <summary>train-ddpm's bad input: one line naming the file or option, exit 1, no checkpoint lost or half-written.</summary>
[Collection("console")]
public sealed class TrainDdpmCommandTests
{
    static string[] Args(TempDir tmp, string flags, params string[] more) =>
        ["train-ddpm", "--flags", flags, "-o", tmp.File("run"), "--batch-size", "2", .. more,
            .. more.Contains("--max-steps") ? Array.Empty<string>() : ["--max-steps", "1"]];

    static string WriteFlags(TempDir tmp, string json)
    {
        string path = tmp.File("flags.json");
        File.WriteAllText(path, json);
        return path;
    }

    const string Tiny = """
        {"image_size": 16, "num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1, "attention_resolutions": ""}
        """;

    [Fact]
    public void MissingOrEmptyDataFolderIsNamed()
    {
        using var tmp = new TempDir();
        string flags = WriteFlags(tmp, Tiny);
        CliRunner.AssertOneLineError(CliRunner.Run(Args(tmp, flags, "--data-dir", tmp.File("absent"))), "absent", "not found");
        Directory.CreateDirectory(tmp.File("empty"));
        CliRunner.AssertOneLineError(CliRunner.Run(Args(tmp, flags, "--data-dir", tmp.File("empty"))), "empty", "no images");
        Assert.False(Directory.Exists(tmp.File("run")) && Directory.EnumerateFiles(tmp.File("run"), "model*").Any());
    }

    [Fact]
    public void InitWithOtherFlagsIsRefused()
    {
        using var tmp = new TempDir();
        string flags = WriteFlags(tmp, Tiny);
        string init = tmp.File("init.safetensors");
        ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), init);
        CliRunner.AssertOneLineError(CliRunner.Run(Args(tmp, flags, "--synthetic-scenes", "--init", init)), "init.safetensors",
            "another network");
    }

    [Fact]
    public void RunDirectoryOfOtherOptionsIsRefusedAndKept()
    {
        using var tmp = new TempDir();
        string flags = WriteFlags(tmp, Tiny);
        Assert.Equal(0, CliRunner.Run(Args(tmp, flags, "--synthetic-scenes")).ExitCode);
        var kept = File.ReadAllBytes(Path.Combine(tmp.File("run"), "model000001.safetensors"));
        CliRunner.AssertOneLineError(CliRunner.Run(Args(tmp, flags, "--synthetic-scenes", "--lr", "0.001")), "run", "other flags");
        Assert.Equal(kept, File.ReadAllBytes(Path.Combine(tmp.File("run"), "model000001.safetensors")));
    }

    [Fact]
    public void NonFiniteLossInFp32StopsWithoutACheckpoint()
    {
        using var tmp = new TempDir();
        string flags = WriteFlags(tmp, Tiny);
        var r = CliRunner.Run(Args(tmp, flags, "--synthetic-scenes", "--lr", "1e30", "--max-steps", "3"));
        // The progress lines of the steps before come first; the failure is the last line, alone of its kind.
        Assert.Equal(1, r.ExitCode);
        Assert.Single(r.ErrorLines, l => l.StartsWith("error: ", StringComparison.Ordinal));
        Assert.StartsWith("error: the loss became non-finite at step 1", r.ErrorLines[^1]);
        // It failed before its first checkpoint: no run folder is left.
        Assert.False(Directory.Exists(tmp.File("run")));
    }
}
