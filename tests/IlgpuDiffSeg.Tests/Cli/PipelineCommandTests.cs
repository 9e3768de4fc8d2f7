using System.Globalization;
using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Tests.Cli;

/// <summary>
/// train → evaluate → predict through the command line, on procedural scenes with the official tiny UNet (32×32):
/// 6 training and 3 test images, 3 members, each class tinted its own colour (<see cref="PaintByClass"/>). A quality
/// floor guards against a pipeline that runs but learns nothing: mIoU ≥ 0.35, where labelling everything background
/// scores ≈ 0.14 and this setup measures ≈ 0.47.
/// </summary>
[Collection("console")]
public sealed class PipelineCommandTests : IDisposable
{
    readonly TempDir tmp = new();
    readonly string model;

    public PipelineCommandTests()
    {
        model = tmp.File("tiny.safetensors");
        IlgpuDiffSeg.Model.ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), model);
        SyntheticScenes.Write(tmp.File("train"), 6, 32, seed: 1);
        SyntheticScenes.Write(tmp.File("test"), 3, 32, seed: 2);
        PaintByClass(tmp.File("train"));
        PaintByClass(tmp.File("test"));
    }

    /// <summary>
    /// Tints every pixel towards a colour of its class. The scenes tell the class by shape alone, which 6 images and
    /// random-weight features barely learn (mIoU ≈ 0.18, everything-background ≈ 0.14): too close to tell a working
    /// pipeline from a broken one. Class colours make the task easy, so a low score means the pipeline is broken.
    /// </summary>
    static void PaintByClass(string folder)
    {
        byte[][] colours = [[128, 128, 128], [220, 60, 40], [40, 90, 220], [60, 200, 60], [170, 70, 200]];
        foreach (var png in Directory.GetFiles(folder, "*.png"))
        {
            var mask = Npy.Read(Path.ChangeExtension(png, ".npy")).Data;
            using var img = SixLabors.ImageSharp.Image.Load<SixLabors.ImageSharp.PixelFormats.Rgb24>(png);
            for (int y = 0; y < img.Height; y++)
            for (int x = 0; x < img.Width; x++)
            {
                var c = colours[mask[y * img.Width + x]];
                var p = img[x, y];
                img[x, y] = new((byte)((p.R + 3 * c[0]) / 4), (byte)((p.G + 3 * c[1]) / 4), (byte)((p.B + 3 * c[2]) / 4));
            }
            SixLabors.ImageSharp.ImageExtensions.SaveAsPng(img, png);
        }
    }

    public void Dispose() => tmp.Dispose();

    /// <summary>Writes an experiment file; <paramref name="overrides"/> is a JSON object whose keys replace the defaults.</summary>
    string Config(string name, string overrides = "{}")
    {
        var o = System.Text.Json.Nodes.JsonNode.Parse($$"""
            {"exp_dir": "{{tmp.File("exp")}}", "model_type": "ddpm", "category": "synthetic", "number_class": 5,
             "ignore_label": 255, "training_path": "{{tmp.File("train")}}", "testing_path": "{{tmp.File("test")}}",
             "model_path": "{{model}}", "dim": [32, 32, 320], "steps": [50, 150], "blocks": [2, 5, 7], "model_num": 3,
             "batch_size": 64, "training_number": 6, "testing_number": 3, "share_noise": true,
             "feature_path": "materialized", "seed": 0, "max_epochs": 8}
            """)!.AsObject();
        foreach (var (k, v) in System.Text.Json.Nodes.JsonNode.Parse(overrides)!.AsObject())
        {
            o[k] = v?.DeepClone();
        }
        string path = tmp.File(name);
        File.WriteAllText(path, o.ToJsonString());
        return path;
    }

    [Fact]
    public void TrainEvaluatePredict()
    {
        string cfg = Config("exp.json");
        var train = CliRunner.Run("train", "--config", cfg, "--device", "cpu");
        Assert.True(train.ExitCode == 0, train.Error);
        Assert.Contains("epoch 0 iteration", train.Error);
        string expDir = Path.Combine(tmp.File("exp"), "50_150_2_5_7");
        Assert.True(File.Exists(Path.Combine(expDir, "ensemble.safetensors")));
        Assert.False(File.Exists(Path.Combine(expDir, "training_state.safetensors")));

        var eval = CliRunner.Run("evaluate", "--config", cfg, "--device", "cpu");
        Assert.True(eval.ExitCode == 0, eval.Error);
        var last = eval.Out.TrimEnd().Split('\n')[^1];
        Assert.StartsWith("mIoU: ", last);
        double miou = double.Parse(last["mIoU: ".Length..], CultureInfo.InvariantCulture);
        Assert.Equal(3, Directory.GetFiles(Path.Combine(expDir, "predictions"), "*.npy").Length);
        Assert.InRange(miou, 0.35, 1.0);

        var predict = CliRunner.Run("predict", "--config", cfg, "--input", tmp.File("test"), "-o", tmp.File("pred"), "--device", "cpu");
        Assert.True(predict.ExitCode == 0, predict.Error);
        var labels = Npy.Read(tmp.File("pred/scene_000.npy"));
        Assert.Equal([32, 32], labels.Shape);
        Assert.True(labels.ToInt64("labels").All(v => v is >= 0 and < 5));
        Assert.True(File.Exists(tmp.File("pred/scene_000_overlay.png")));
        Assert.Equal(4, File.ReadAllLines(tmp.File("pred/uncertainty.tsv")).Length);
    }

    [Fact]
    public void BadDataEndsWithOneLine()
    {
        string cfg = Config("exp.json");
        // A mask value that is neither a class nor the ignore label.
        var mask = Npy.Read(tmp.File("train/scene_002.npy")).ToInt64("m").Select(v => (byte)v).ToArray();
        mask[40] = 9;
        Npy.Write(tmp.File("train/scene_002.npy"), mask, [32, 32]);
        CliRunner.AssertOneLineError(CliRunner.Run("train", "--config", cfg, "--device", "cpu"), "scene_002.npy", "mask value 9");
        Npy.Write(tmp.File("train/scene_002.npy"), new byte[16 * 16], [16, 16]);
        CliRunner.AssertOneLineError(CliRunner.Run("train", "--config", cfg, "--device", "cpu"), "scene_002.npy", "mask is 16×16",
            "32×32");
        File.WriteAllText(tmp.File("train/scene_002.png"), "not a png");
        CliRunner.AssertOneLineError(CliRunner.Run("train", "--config", cfg, "--device", "cpu"), "scene_002.png", "unreadable image");
        Directory.CreateDirectory(tmp.File("empty"));
        CliRunner.AssertOneLineError(CliRunner.Run("train", "--config", Config("empty.json", $$"""{"training_path": "{{tmp.File("empty")}}"}"""),
            "--device", "cpu"), "empty", "contains no images");
        CliRunner.AssertOneLineError(CliRunner.Run("train", "--config", Config("type.json", """{"model_num": "ten"}"""), "--device", "cpu"),
            "type.json", "'model_num'", "an integer");
        CliRunner.AssertOneLineError(CliRunner.Run("train", "--config", Config("blocks.json", """{"blocks": [2, 5, 30]}"""), "--device", "cpu"),
            "blocks.json", "block 30 does not exist");
        CliRunner.AssertOneLineError(CliRunner.Run("train", "--config", Config("dim.json", """{"dim": [32, 32, 8448]}"""), "--device", "cpu"),
            "dim.json", "dim[2] is 8448", "320");
        string dup = tmp.File("dup.json");
        File.WriteAllText(dup, File.ReadAllText(cfg).TrimEnd('}') + ", \"seed\": 1}");
        CliRunner.AssertOneLineError(CliRunner.Run("train", "--config", dup, "--device", "cpu"), "dup.json", "not valid JSON");
        Assert.False(Directory.Exists(Path.Combine(tmp.File("exp"), "50_150_2_5_7", "predictions")));
    }
}
