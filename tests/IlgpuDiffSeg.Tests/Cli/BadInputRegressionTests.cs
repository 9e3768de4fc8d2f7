using System.Text.Json.Nodes;
using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Cli;

/// <summary>
/// Issue #13 through the command line, one test per failure class that needs a command to show: values checked where they
/// enter (timesteps, non-finite inputs and weights, sizes the UNet cannot take, steps and blocks), metadata that disagrees
/// with the config, and no output left behind by a command that fails after it began writing (predict and evaluate, which
/// write several files). The experiment is the official tiny UNet with a random 2-member ensemble: no training needed.
/// </summary>
[Collection("console")]
public sealed class BadInputRegressionTests : IDisposable
{
    readonly TempDir tmp = new();
    readonly string model;
    readonly string x0 = Fixtures.AdmTiny("x0.npy");
    readonly string t = Fixtures.AdmTiny("t.npy");
    string ExpDir => Path.Combine(tmp.File("exp"), "50_150_2_5_7");

    public BadInputRegressionTests()
    {
        model = tmp.File("tiny.safetensors");
        IlgpuDiffSeg.Model.ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), model);
    }

    public void Dispose() => tmp.Dispose();

    CliRunner.Result UNet(string x, string tPath, string output = "eps.npy") =>
        CliRunner.Run("unet", "--model", model, "--x", x, "--t", tPath, "-o", tmp.File(output), "--device", "cpu");

    [Fact]
    public void TimestepsOutsideTheScheduleAreRefused()
    {
        foreach (var (name, values) in new[] { ("neg.npy", new long[] { -1, 5 }), ("big.npy", [1000, 5]), ("huge.npy", [1L << 62, 3]) })
        {
            Npy.Write(tmp.File(name), values, [2]);
            CliRunner.AssertOneLineError(UNet(x0, tmp.File(name)), name, $"timestep {values[0]} at index 0", "[0, 1000)");
        }
        Npy.Write(tmp.File("half.npy"), new[] { 1.5, 2.0 }, [2]);
        CliRunner.AssertOneLineError(UNet(x0, tmp.File("half.npy")), "half.npy", "non-integer value 1.5");
        Assert.False(File.Exists(tmp.File("eps.npy")));
    }

    [Fact]
    public void NonFiniteInputsAreRefusedNamingTheFirstIndex()
    {
        var x = Npy.Read(x0).ToFloat32("x").ToArray();
        x[2 * 32 + 13] = float.NaN;
        x[500] = float.PositiveInfinity;
        Npy.Write(tmp.File("nan.npy"), x, [2, 3, 32, 32]);
        CliRunner.AssertOneLineError(UNet(tmp.File("nan.npy"), t), "nan.npy", "NaN at index (0, 0, 2, 13)");
        Npy.Write(tmp.File("img.npy"), Enumerable.Repeat(float.NegativeInfinity, 3 * 32 * 32).ToArray(), [3, 32, 32]);
        var r = CliRunner.Run("features", "--model", model, "--image", tmp.File("img.npy"), "--steps", "50", "--blocks", "2", "-o",
            tmp.File("f.npy"), "--device", "cpu");
        CliRunner.AssertOneLineError(r, "img.npy", "-Inf at index (0, 0, 0)");
        Npy.Write(tmp.File("noise.npy"), Enumerable.Repeat(float.NaN, 3 * 32 * 32).ToArray(), [1, 3, 32, 32]);
        r = CliRunner.Run("features", "--model", model, "--image", x0.Replace("x0.npy", "x0.npy"), "--noise", tmp.File("noise.npy"), "-o",
            tmp.File("f.npy"), "--device", "cpu");
        Assert.NotEqual(0, r.ExitCode);
        Assert.False(File.Exists(tmp.File("f.npy")));
    }

    [Fact]
    public void WeightsMustBeFinite()
    {
        string bad = tmp.File("nan.safetensors");
        var bytes = File.ReadAllBytes(model);
        long headerLength = BitConverter.ToInt64(bytes, 0);
        BitConverter.GetBytes(float.NaN).CopyTo(bytes, 8 + headerLength + 4 * 5);
        File.WriteAllBytes(bad, bytes);
        var r = CliRunner.Run("unet", "--model", bad, "--x", x0, "--t", t, "-o", tmp.File("eps.npy"), "--device", "cpu");
        CliRunner.AssertOneLineError(r, "nan.safetensors", "holds NaN at index");
    }

    [Fact]
    public void SizesTheUNetCannotTakeNameTheFile()
    {
        Npy.Write(tmp.File("x31.npy"), new float[2 * 3 * 31 * 31], [2, 3, 31, 31]);
        CliRunner.AssertOneLineError(UNet(tmp.File("x31.npy"), t), "x31.npy", "multiples of 4");
        Npy.Write(tmp.File("x0b.npy"), new float[0], [0, 3, 32, 32]);
        CliRunner.AssertOneLineError(UNet(tmp.File("x0b.npy"), t), "x0b.npy", "must not be empty");
        Npy.Write(tmp.File("empty.npy"), new float[0], [3, 0, 0]);
        var r = CliRunner.Run("features", "--model", model, "--image", tmp.File("empty.npy"), "-o", tmp.File("f.npy"), "--device", "cpu");
        CliRunner.AssertOneLineError(r, "empty.npy", "at least one pixel");
        Npy.Write(tmp.File("big.npy"), new float[3 * 128 * 128], [3, 128, 128]);
        r = CliRunner.Run("features", "--model", model, "--image", tmp.File("big.npy"), "--steps", "50", "--blocks", "2",
            "-o", tmp.File("f.npy"), "--device", "cpu");
        CliRunner.AssertOneLineError(r, "big.npy", "takes images up to 64×64");
        Npy.Write(tmp.File("odd.npy"), new float[3 * 30 * 30], [3, 30, 30]);
        r = CliRunner.Run("features", "--model", model, "--image", tmp.File("odd.npy"), "--steps", "50", "--blocks", "2",
            "-o", tmp.File("f.npy"), "--device", "cpu");
        CliRunner.AssertOneLineError(r, "odd.npy", "multiples of 4");
    }

    [Fact]
    public void StepsAndBlocksOutOfRangeAreRefused()
    {
        string image = tmp.File("img.npy");
        Npy.Write(image, new float[3 * 32 * 32], [3, 32, 32]);
        CliRunner.Result Features(string steps, string blocks) => CliRunner.Run("features", "--model", model, "--image", image,
            "--steps", steps, "--blocks", blocks, "-o", tmp.File("f.npy"), "--device", "cpu");
        CliRunner.AssertOneLineError(Features("99999999999", "2"), "--steps", "not a comma-separated list");
        CliRunner.AssertOneLineError(Features("1000", "2"), "--steps", "step 1000", "[0, 1000)");
        CliRunner.AssertOneLineError(Features("-1", "2"), "--steps", "step -1");
        CliRunner.AssertOneLineError(Features("50", "99"), "--blocks", "block 99");
        CliRunner.AssertOneLineError(Features("50", "-1"), "--blocks", "block -1");
        Assert.False(File.Exists(tmp.File("f.npy")));
    }

    [Fact]
    public void FlagsGuidedDiffusionCouldNotHaveUsedAreRefused()
    {
        var flags = JsonNode.Parse(File.ReadAllText(Fixtures.AdmTiny("flags.json")))!.AsObject();
        foreach (var (key, value, phrase) in new[]
                 {
                     ("diffusion_steps", (JsonNode)0, "'diffusion_steps' is 0"), ("noise_schedule", "cubic", "noise_schedule"),
                     ("num_res_blocks", 100000, "'num_res_blocks' is 100000"),
                     ("attention_resolutions", "99999999999", "attention_resolutions"),
                 })
        {
            var edited = flags.DeepClone().AsObject();
            edited[key] = value;
            string path = tmp.File($"flags-{key}.json");
            File.WriteAllText(path, edited.ToJsonString());
            var r = CliRunner.Run("convert", Fixtures.AdmTiny("model.pt"), "--flags", path, "-o", tmp.File("out.safetensors"));
            CliRunner.AssertOneLineError(r, $"flags-{key}.json", phrase);
        }
        Assert.False(File.Exists(tmp.File("out.safetensors")));
    }

    // ---- an experiment with a random ensemble

    string Experiment(string name = "exp.json", string overrides = "{}", int members = 2, Action<PixelEnsemble>? edit = null)
    {
        if (!Directory.Exists(tmp.File("test")))
        {
            SyntheticScenes.Write(tmp.File("test"), 2, 32, seed: 2);
        }
        Directory.CreateDirectory(ExpDir);
        using (var dev = ComputeDevice.Create(DeviceChoice.Cpu))
        using (var e = PixelEnsemble.CreateRandom(ExecutionPlan.For(dev), MlpLayout.ForClasses(members, 320, 5), 0))
        {
            e.Metadata["steps"] = "50,150";
            e.Metadata["blocks"] = "2,5,7";
            e.Metadata["number_class"] = "5";
            e.Metadata["ignore_label"] = "255";
            e.Metadata["image_size"] = "32";
            edit?.Invoke(e);
            e.Save(Path.Combine(ExpDir, "ensemble.safetensors"));
        }
        var o = JsonNode.Parse($$"""
            {"exp_dir": "{{tmp.File("exp")}}", "number_class": 5, "ignore_label": 255, "training_path": "{{tmp.File("test")}}",
             "testing_path": "{{tmp.File("test")}}", "model_path": "{{model}}", "dim": [32, 32, 320], "steps": [50, 150],
             "blocks": [2, 5, 7], "model_num": 2, "share_noise": true, "seed": 0}
            """)!.AsObject();
        foreach (var (k, v) in JsonNode.Parse(overrides)!.AsObject())
        {
            o[k] = v?.DeepClone();
        }
        string path = tmp.File(name);
        File.WriteAllText(path, o.ToJsonString());
        return path;
    }

    /// <summary>
    /// Exit code 1 and, after the progress lines, exactly one last line "error: …" mentioning <paramref name="mentions"/>.
    /// </summary>
    static void AssertFailsWith(CliRunner.Result r, params string[] mentions)
    {
        Assert.Equal(1, r.ExitCode);
        var errors = r.ErrorLines.Where(l => l.StartsWith("error: ", StringComparison.Ordinal) || l.Contains("internal error")).ToArray();
        Assert.True(errors.Length == 1 && r.ErrorLines[^1] == errors[0], $"expected one last error line, got:\n{r.Error}");
        foreach (var m in mentions)
        {
            Assert.Contains(m, errors[0]);
        }
    }

    /// <summary>The second of two images fails (a folder has the name of its picture) after the first one's outputs were written.</summary>
    [Fact]
    public void PredictThatFailsOnALaterImageLeavesNothingBehind()
    {
        string cfg = Experiment();
        string pred = tmp.File("pred");
        Directory.CreateDirectory(pred);
        File.WriteAllText(Path.Combine(pred, "scene_000.npy"), "from an earlier run");
        Directory.CreateDirectory(Path.Combine(pred, "scene_001.png"));
        var r = CliRunner.Run("predict", "--config", cfg, "--input", tmp.File("test"), "-o", pred, "--device", "cpu");
        AssertFailsWith(r, "scene_001.png", "is a folder");
        Assert.Contains("images 1/2", r.Error);
        // What it wrote is gone, what it replaced is back, what was there stays.
        Assert.Equal(["scene_000.npy", "scene_001.png"],
            Directory.GetFileSystemEntries(pred).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal("from an earlier run", File.ReadAllText(Path.Combine(pred, "scene_000.npy")));
        Assert.Empty(Directory.GetFiles(pred, "*.tmp", SearchOption.AllDirectories));

        File.WriteAllText(tmp.File("afile"), "x");
        r = CliRunner.Run("predict", "--config", cfg, "--input", tmp.File("test"), "-o", tmp.File("afile"), "--device", "cpu");
        CliRunner.AssertOneLineError(r, "afile", "is a file");
    }

    [Fact]
    public void EvaluateThatFailsOnALaterImageLeavesNothingBehind()
    {
        string cfg = Experiment();
        Directory.CreateDirectory(Path.Combine(ExpDir, "visualizations", "scene_001.png"));
        var r = CliRunner.Run("evaluate", "--config", cfg, "--device", "cpu");
        AssertFailsWith(r, "scene_001.png", "is a folder");
        Assert.Contains("test images 1/2", r.Error);
        Assert.False(Directory.Exists(Path.Combine(ExpDir, "predictions")), "evaluate left its predictions folder");
        Assert.Equal(["scene_001.png"], Directory.GetFileSystemEntries(Path.Combine(ExpDir, "visualizations")).Select(Path.GetFileName));
    }

    [Fact]
    public void EnsembleMustMatchTheConfig()
    {
        CliRunner.AssertOneLineError(
            CliRunner.Run("evaluate", "--config", Experiment(overrides: """{"model_num": 5}"""), "--device", "cpu"),
            "ensemble.safetensors", "holds 2 trained members", "model_num", "is 5");
        CliRunner.AssertOneLineError(
            CliRunner.Run("evaluate", "--config", Experiment(edit: e => e.Metadata["steps"] = "50,250"), "--device", "cpu"),
            "ensemble.safetensors", "trained with steps 50,250", "50,150");
        CliRunner.AssertOneLineError(
            CliRunner.Run("evaluate", "--config", Experiment(edit: e => e.Metadata["blocks"] = "2,5,8"), "--device", "cpu"),
            "ensemble.safetensors", "blocks 2,5,8");
        CliRunner.AssertOneLineError(CliRunner.Run("evaluate", "--config", Experiment(edit: e => e.Parameters.CopyFrom(
                Enumerable.Repeat(float.NaN, (int)e.Parameters.Length).ToArray())), "--device", "cpu"),
            "ensemble.safetensors", "holds NaN");
        Assert.False(Directory.Exists(Path.Combine(ExpDir, "predictions")));
    }

    [Fact]
    public void EnsembleMetadataIsCheckedBeforeAllocating()
    {
        string cfg = Experiment();
        string path = Path.Combine(ExpDir, "ensemble.safetensors");
        var (header, data) = ReadSafetensors(path);
        foreach (var (key, value, phrase) in new[]
                 {
                     ("members", "-1", "'members'"), ("members", "100000000000", "'members'"), ("hidden", "100000000000,1", "'hidden'"),
                     ("in_features", "-1", "'in_features'"), ("classes", "100000000000", "'classes'"), ("members", "3", "implies 42"),
                 })
        {
            var h = header.DeepClone().AsObject();
            h["__metadata__"]![key] = value;
            WriteSafetensors(path, h, data);
            CliRunner.AssertOneLineError(CliRunner.Run("evaluate", "--config", cfg, "--device", "cpu"), "ensemble.safetensors", phrase);
        }
    }

    static (JsonObject Header, byte[] Data) ReadSafetensors(string path)
    {
        var bytes = File.ReadAllBytes(path);
        int n = (int)BitConverter.ToInt64(bytes, 0);
        return (JsonNode.Parse(bytes.AsSpan(8, n))!.AsObject(), bytes[(8 + n)..]);
    }

    static void WriteSafetensors(string path, JsonObject header, byte[] data)
    {
        var json = System.Text.Encoding.UTF8.GetBytes(header.ToJsonString());
        var padded = json.Concat(Enumerable.Repeat((byte)' ', (8 - json.Length % 8) % 8)).ToArray();
        File.WriteAllBytes(path, [.. BitConverter.GetBytes((long)padded.Length), .. padded, .. data]);
    }

    [Fact]
    public void ConfigValuesAreBoundedBeforeAnyWork()
    {
        foreach (var (overrides, phrase) in new[]
                 {
                     ("""{"model_num": 100000}""", "'model_num' is 100000"), ("""{"dim": [100000, 100000, 320]}""", "'dim'"),
                     ("""{"steps": [-1]}""", "'steps'"), ("""{"dim": [64, 64, 320]}""", "trained at image_size 32"),
                     ("""{"steps": [1000]}""", "step 1000"), ("""{"batch_size": 1}""", "'batch_size'"),
                 })
        {
            string cfg = Experiment("bounded.json", overrides);
            CliRunner.AssertOneLineError(CliRunner.Run("train", "--config", cfg, "--device", "cpu"), "bounded.json", phrase);
        }
        Assert.False(File.Exists(Path.Combine(ExpDir, "training_state.safetensors")));
    }
}
