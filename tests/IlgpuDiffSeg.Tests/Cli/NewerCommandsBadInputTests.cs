using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Training;

namespace IlgpuDiffSeg.Tests.Cli;

/// <summary>
/// Issue #13's second campaign (tests/hostile/hostile_commands.py) over train-ddpm, loss, sample and export: one test per
/// failure class it found. A run directory or output that a refused command would have made is not left behind, but a
/// checkpoint saved before a later failure (or a stop) stays; absurd batch sizes and sample counts are refused, naming the
/// option, before anything is allocated; values are checked where they enter and refusals name the file they come from.
/// All on the official tiny UNet (32×32) and the 16×16 class-conditional guidance model, one or two steps each.
/// </summary>
[Collection("console")]
public sealed class NewerCommandsBadInputTests : IDisposable
{
    readonly TempDir tmp = new();
    readonly string model, flags = Fixtures.AdmTiny("flags.json");

    public NewerCommandsBadInputTests()
    {
        model = tmp.File("tiny.safetensors");
        ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), flags, model);
    }

    public void Dispose() => tmp.Dispose();

    string Data(int good, params (string Name, byte[] Bytes)[] extra)
    {
        string dir = tmp.File("data");
        Directory.CreateDirectory(dir);
        // Images of mixed sizes and kinds, cropped to 32² as image_datasets.py crops them.
        string[] inputs = ["rgb_37x23.png", "photo_64x48.jpg", "gray_50x33.png", "rgba_40x30.png"];
        for (int i = 0; i < good; i++)
        {
            string source = inputs[i % inputs.Length];
            File.Copy(Path.Combine(Fixtures.Root, "images", "inputs", source), Path.Combine(dir, $"img_{i}{Path.GetExtension(source)}"),
                overwrite: true);
        }
        foreach (var (name, bytes) in extra)
        {
            File.WriteAllBytes(Path.Combine(dir, name), bytes);
        }
        return dir;
    }

    /// <summary>train-ddpm on the tiny flags for one step; <paramref name="more"/> may replace --flags and --max-steps.</summary>
    CliRunner.Result TrainDdpm(string data, string runDir, params string[] more) => CliRunner.Run(
        ["train-ddpm", "--data-dir", data, "-o", runDir, "--device", "cpu", .. more,
         .. more.Contains("--flags") ? Array.Empty<string>() : ["--flags", flags],
         .. more.Contains("--max-steps") ? Array.Empty<string>() : ["--max-steps", "1"]]);

    [Fact]
    public void TrainDdpmRefusedBeforeItsFirstCheckpointLeavesNoRunDirectory()
    {
        string run = tmp.File("run");
        CliRunner.AssertOneLineError(TrainDdpm(Data(0, ("notes.txt", "hi"u8.ToArray())), run), "data", "no images");
        Assert.False(Directory.Exists(run));
        CliRunner.AssertOneLineError(TrainDdpm(Data(2), run, "--batch-size", "5"), "data", "fewer than one batch");
        Assert.False(Directory.Exists(run));
        // A file that is no image at all is refused before the first step, wherever the stream would meet it.
        CliRunner.AssertOneLineError(TrainDdpm(Data(2, ("z.png", "not an image"u8.ToArray())), run), "z.png", "not a PNG, JPEG or GIF");
        Assert.False(Directory.Exists(run));
        File.Delete(Path.Combine(tmp.File("data"), "z.png"));
        File.WriteAllBytes(tmp.File("init.safetensors"), File.ReadAllBytes(model)[..1000]);
        CliRunner.AssertOneLineError(TrainDdpm(Data(2), run, "--init", tmp.File("init.safetensors")), "init.safetensors");
        Assert.False(Directory.Exists(run));
        File.WriteAllText(tmp.File("file"), "x");
        CliRunner.AssertOneLineError(TrainDdpm(Data(2), tmp.File("file")), "file", "is a file");
    }

    [Fact]
    public void TrainDdpmKeepsTheCheckpointsSavedBeforeALaterFailureOrAStop()
    {
        // Two images and a PNG cut short (whole signature, damaged data): with batch 1 and seed 1 the stream meets it at
        // step 2, after step 1 was saved.
        var png = File.ReadAllBytes(Path.Combine(Fixtures.Root, "images", "inputs", "rgb_67x35.png"));
        string data = Data(2, ("bad.png", png[..(png.Length * 9 / 10)])), run = tmp.File("run");
        var r = TrainDdpm(data, run, "--max-steps", "6", "--save-interval", "1", "--seed", "1");
        CliRunner.AssertErrorLast(r, "bad.png", "corrupt image");
        Assert.True(File.Exists(TrainingCheckpoint.ModelFile(run, 1)), string.Join(", ", Directory.GetFiles(run)));
        Assert.True(File.Exists(TrainingCheckpoint.OptimizerFile(run, 1)) && File.Exists(Path.Combine(run, "progress.csv")));

        // A stop request (Ctrl+C) saves the step and keeps it: the run resumes from it.
        string stopped = tmp.File("stopped");
        var options = new TrainingOptions
        {
            Flags = AdmFlags.Load(flags), Data = Data(2), MaxSteps = 4, SaveInterval = 100, LogInterval = 100,
        };
        using var dev = ComputeDevice.Create(DeviceChoice.Cpu, hostKernels: true);
        int calls = 0;
        int code = IlgpuDiffSeg.Cli.Program.Run(() =>
            DiffusionTrainingRun.Run(options, ExecutionPlan.For(dev), stopped, _ => { }, () => ++calls == 2));
        Assert.Equal(130, code);
        Assert.True(File.Exists(TrainingCheckpoint.ModelFile(stopped, 2)));
    }

    [Fact]
    public void TrainDdpmRefusesAbsurdSizesAndRatesBeforeAllocating()
    {
        string run = tmp.File("run");
        foreach (var (args, phrase) in new (string[], string)[]
                 {
                     (["--batch-size", "100000"], "--batch-size 100000"),
                     (["--batch-size", "2147483647", "--microbatch", "1"], "--batch-size 2147483647"),
                     (["--ema-rate", "0.9,0.9"], "--ema-rate lists a rate twice"),
                     (["--ema-rate", string.Join(",", Enumerable.Range(1, 17).Select(i => $"0.{i:D2}"))], "more than 16"),
                 })
        {
            var r = CliRunner.Run(["train-ddpm", "--flags", flags, "--synthetic-scenes", "-o", run, "--max-steps", "1", "--device", "cpu",
                .. args]);
            CliRunner.AssertOneLineError(r, phrase);
            Assert.False(Directory.Exists(run));
        }
    }

    [Fact]
    public void TrainDdpmNamesTheFlagsFileAndTheCheckpointItCannotUse()
    {
        string json = File.ReadAllText(flags);
        File.WriteAllText(tmp.File("ddim.json"), json.Replace("\"timestep_respacing\": \"\"", "\"timestep_respacing\": \"ddim49\""));
        CliRunner.AssertOneLineError(TrainDdpm(Data(2), tmp.File("run"), "--flags", tmp.File("ddim.json")), "ddim.json", "ddim49");
        File.WriteAllText(tmp.File("narrow.json"), json.Replace("\"num_channels\": 32", "\"num_channels\": 16"));
        CliRunner.AssertOneLineError(TrainDdpm(Data(2), tmp.File("run"), "--flags", tmp.File("narrow.json")), "narrow.json", "GroupNorm32");
        Assert.False(Directory.Exists(tmp.File("run")));

        string run = tmp.File("resumed");
        Assert.Equal(0, TrainDdpm(Data(2), run, "--save-interval", "1").ExitCode);
        string junk = Path.Combine(run, "model" + new string('9', 25) + ".safetensors");
        File.Copy(TrainingCheckpoint.ModelFile(run, 1), junk);
        CliRunner.AssertOneLineError(TrainDdpm(Data(2), run, "--max-steps", "2"), junk, "past 2^63");
    }

    [Fact]
    public void TrainDdpmRefusesAStateItCannotResumeFromAndSkipsBadLogRows()
    {
        string run = tmp.File("run");
        string[] args = ["train-ddpm", "--flags", flags, "--synthetic-scenes", "-o", run, "--device", "cpu", "--max-steps"];
        Assert.Equal(0, CliRunner.Run([.. args, "1"]).ExitCode);
        string opt = TrainingCheckpoint.OptimizerFile(run, 1);
        var original = File.ReadAllBytes(opt);
        foreach (var (key, value, phrase) in new[]
                 {
                     ("lg_loss_scale", "abc", "no finite lg_loss_scale"), ("adam_steps", "-5", "adam_steps -5"),
                     ("sampler", "{nope", "schedule sampler state"),
                 })
        {
            File.WriteAllBytes(opt, WithMetadata(original, key, value));
            CliRunner.AssertOneLineError(CliRunner.Run([.. args, "2"]), "opt000001.safetensors", phrase);
            Assert.False(File.Exists(TrainingCheckpoint.ModelFile(run, 2)));
        }
        File.WriteAllBytes(opt, original);

        // A NaN in a saved EMA would be trained on and saved again.
        string ema = TrainingCheckpoint.EmaFile(run, 0.9999, 1);
        var emaBytes = File.ReadAllBytes(ema);
        BitConverter.GetBytes(float.NaN).CopyTo(emaBytes, 8 + BitConverter.ToInt64(emaBytes, 0) + 4 * 7);
        File.WriteAllBytes(ema, emaBytes);
        CliRunner.AssertOneLineError(CliRunner.Run([.. args, "2"]), "ema_0.9999_000001.safetensors", "NaN at flat index 7");
        File.Delete(ema);
        File.Copy(TrainingCheckpoint.ModelFile(run, 1), ema);

        // progress.csv is a log: a row it cannot parse (a count past 2^63) is dropped, not an internal error.
        string row = "1," + new string('9', 30) + string.Concat(Enumerable.Repeat(",1", 21));
        File.AppendAllText(Path.Combine(run, "progress.csv"), row + "\n");
        var r = CliRunner.Run([.. args, "2"]);
        Assert.True(r.ExitCode == 0, r.Error);
    }

    /// <summary>A safetensors file with one metadata entry replaced (the header re-padded to 8 bytes).</summary>
    static byte[] WithMetadata(byte[] file, string key, string value)
    {
        int length = (int)BitConverter.ToInt64(file, 0);
        var header = System.Text.Json.Nodes.JsonNode.Parse(file.AsSpan(8, length))!.AsObject();
        header["__metadata__"]![key] = value;
        string json = header.ToJsonString();
        json += new string(' ', (8 - System.Text.Encoding.UTF8.GetByteCount(json) % 8) % 8);
        var bytes = System.Text.Encoding.UTF8.GetBytes(json);
        return [.. BitConverter.GetBytes((long)bytes.Length), .. bytes, .. file.AsSpan(8 + length)];
    }

    [Fact]
    public void OptionValuesTheParserRefusesNameTheOption()
    {
        CliRunner.AssertOneLineError(TrainDdpm(Data(2), tmp.File("run"), "--precision", "fp8"), "--precision 'fp8'", "fp32 or fp16");
        var r = CliRunner.Run("sample", "--model", model, "-o", tmp.File("s.npz"), "--clip-denoised", "maybe", "--device", "cpu");
        CliRunner.AssertOneLineError(r, "--clip-denoised 'maybe'");
        r = CliRunner.Run("sample", "--model", model, "-o", tmp.File("s.npz"), "--timestep-respacing", "99999999999999999999");
        CliRunner.AssertOneLineError(r, "--timestep-respacing", "past 2^31");
    }

    CliRunner.Result Loss(string x, string t, string noise, string? y = null, string? m = null, string output = "g.safetensors") =>
        CliRunner.Run(["loss", "--model", m ?? model, "--x", x, "--t", t, "--noise", noise, "-o", tmp.File(output), "--device", "cpu",
            .. y is null ? Array.Empty<string>() : ["--y", y]]);

    [Fact]
    public void LossNamesTheFileOfEveryBadValue()
    {
        var x = Npy.Read(Fixtures.AdmTiny("x0.npy")).ToFloat32("x").ToArray();
        Npy.Write(tmp.File("x.npy"), x, [2, 3, 32, 32]);
        Npy.Write(tmp.File("t.npy"), new long[] { 3, 999 }, [2]);
        Npy.Write(tmp.File("x0.npy"), Array.Empty<float>(), [0, 3, 32, 32]);
        Npy.Write(tmp.File("t0.npy"), Array.Empty<long>(), [0]);
        CliRunner.AssertOneLineError(Loss(tmp.File("x0.npy"), tmp.File("t0.npy"), tmp.File("x0.npy")), "x0.npy", "holds no images");
        Npy.Write(tmp.File("late.npy"), new long[] { 3, 1000 }, [2]);
        CliRunner.AssertOneLineError(Loss(tmp.File("x.npy"), tmp.File("late.npy"), tmp.File("x.npy")), "late.npy", "timestep 1000");
        var small = new float[2 * 3 * 30 * 30];
        Npy.Write(tmp.File("x30.npy"), small, [2, 3, 30, 30]);
        CliRunner.AssertOneLineError(Loss(tmp.File("x30.npy"), tmp.File("t.npy"), tmp.File("x30.npy")), "x30.npy", "divisible by 4");
        // The gradients must not overwrite an input.
        var r = Loss(tmp.File("x.npy"), tmp.File("t.npy"), tmp.File("x.npy"), output: "x.npy");
        CliRunner.AssertOneLineError(r, "x.npy", "also one of the inputs");
        Assert.Equal(x, Npy.Read(tmp.File("x.npy")).ToFloat32("x").ToArray());

        // Class labels of a class-conditional model lie in [0, 1000); its flags respace 200 steps to 6.
        string guide = Path.Combine(Fixtures.Root, "guidance", "adaptive-pool-classcond"), g = tmp.File("g16.safetensors");
        ModelWeights.Convert(Path.Combine(guide, "model.pt"), Path.Combine(guide, "flags.json"), g);
        Npy.Write(tmp.File("x16.npy"), new float[2 * 3 * 16 * 16], [2, 3, 16, 16]);
        Npy.Write(tmp.File("t16.npy"), new long[] { 1, 5 }, [2]);
        Npy.Write(tmp.File("y.npy"), new long[] { 3, 1000 }, [2]);
        r = Loss(tmp.File("x16.npy"), tmp.File("t16.npy"), tmp.File("x16.npy"), tmp.File("y.npy"), g);
        CliRunner.AssertOneLineError(r, "y.npy", "class label 1000", "[0, 1000)");
        Assert.False(File.Exists(tmp.File("g.safetensors")));
    }

    CliRunner.Result Sample(params string[] more) => CliRunner.Run(
        ["sample", "--model", model, "-o", tmp.File("s.npz"), "--timestep-respacing", "2", "--device", "cpu",
         .. more.Contains("--num-samples") ? more : [.. more, "--num-samples", "1"]]);

    [Fact]
    public void SampleRefusesNonFiniteSettingsCollidingOutputsAndCountsThatCannotFit()
    {
        CliRunner.AssertOneLineError(Sample("--use-ddim", "--eta", "NaN"), "--eta NaN");
        CliRunner.AssertOneLineError(Sample("--classifier-scale", "Infinity"), "--classifier-scale", "not finite");
        CliRunner.AssertOneLineError(Sample("--raw", tmp.File("s.npz")), "s.npz", "--raw names a file this command also writes");
        CliRunner.AssertOneLineError(Sample("--raw", tmp.File("s.png")), "s.png", "--raw");
        CliRunner.AssertOneLineError(Sample("--num-samples", "2147483647"), "--num-samples 2147483647");
        CliRunner.AssertOneLineError(Sample("--num-samples", "100000", "--batch-size", "100000"), "--batch-size 100000", "lower it");
        var noise = new float[3 * 3 * 32 * 32];
        noise[0] = float.NaN;
        Npy.Write(tmp.File("noise.npy"), noise, [3, 1, 3, 32, 32]);
        CliRunner.AssertOneLineError(Sample("--noise", tmp.File("noise.npy")), "noise.npy", "non-finite value (NaN)");
        Assert.Empty(Directory.GetFiles(tmp.Path, "s.*"));
    }

    [Fact]
    public void ExportNeverOverwritesItsInputOrADeviceAndNamesTheInputForHalf()
    {
        var bytes = File.ReadAllBytes(model);
        var r = CliRunner.Run("export", model, "-o", tmp.File("m.pt"), "--flags-out", model);
        CliRunner.AssertOneLineError(r, "tiny.safetensors", "is the input model");
        Assert.Equal(bytes, File.ReadAllBytes(model));
        Assert.False(File.Exists(tmp.File("m.pt")));
        CliRunner.AssertOneLineError(CliRunner.Run("export", model, "-o", "/proc/self/m.pt"), "/proc/self/m.pt", "device or kernel");

        // A weight past fp16's range: the input holds it.
        long header = BitConverter.ToInt64(bytes, 0);
        BitConverter.GetBytes(1e30f).CopyTo(bytes, 8 + header);
        File.WriteAllBytes(tmp.File("big.safetensors"), bytes);
        r = CliRunner.Run("export", tmp.File("big.safetensors"), "-o", tmp.File("h.safetensors"), "--half");
        CliRunner.AssertOneLineError(r, "big.safetensors: --half", "past fp16's range");
        Assert.False(File.Exists(tmp.File("h.safetensors")));
    }
}
