using System.Text.Json.Nodes;
using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>
/// `diffseg demo`: the whole method on a data set it builds itself (procedural scenes, classes told by shape alone), with the small
/// ADM shipped in weights/ (a DDPM trained here with train-ddpm on unlabelled scenes of the same kind, weights/README.md),
/// through the same code as train and evaluate. --write-model gives the random-weight baseline — see
/// <see cref="WeightsStatement"/>.
/// </summary>
public static class Demo
{
    public const string ModelFile = "demo-adm.safetensors";
    public const int ModelSeed = 1234;

    /// <summary>A small ADM of the LSUN model's kind: scale-shift norm, resblock up/down, legacy attention, learn_sigma.</summary>
    public const string ModelFlags = """
        {"image_size": 64, "num_channels": 32, "channel_mult": "1,2,2,2", "num_res_blocks": 1, "attention_resolutions": "8",
         "num_head_channels": 32, "resblock_updown": true, "use_scale_shift_norm": true, "learn_sigma": true,
         "dropout": 0.0, "noise_schedule": "linear", "diffusion_steps": 1000}
        """;

    /// <summary>What the demo says of its UNet: how the weights came to be (the file's "source" metadata).</summary>
    public static string WeightsStatement(string modelPath)
    {
        using var file = SafetensorsFile.Open(modelPath);
        string source = file.Metadata.GetValueOrDefault("source", "");
        return source.StartsWith("random", StringComparison.Ordinal)
            ? $"the UNet ({modelPath}) has RANDOM weights ({source}): its features are multi-scale random convolutions of the " +
              "noised image, so the mIoU below shows the pipeline working, not what a trained DDPM's features give"
            : $"the UNet ({modelPath}) is a DDPM trained on unlabelled scenes of this kind ({source})";
    }

    /// <summary>Demo decoder blocks: the two 16×16, the two 32×32 and the last 64×64 output blocks (like 5,6,7,8,12 of LSUN).</summary>
    public static readonly int[] Blocks = [2, 3, 4, 5, 7];
    public static readonly int[] Steps = [50, 150, 250];

    public sealed record Options(string OutputDir, int TrainImages = 16, int TestImages = 8, int Size = 64, int Members = 10,
        string? ModelPath = null);

    /// <summary>weights/demo-adm.safetensors, looked for beside the working directory and above the program.</summary>
    public static string FindModel()
    {
        var env = Environment.GetEnvironmentVariable("DIFFSEG_WEIGHTS");
        var starts = new[] { env, Directory.GetCurrentDirectory(), AppContext.BaseDirectory }.Where(s => !string.IsNullOrEmpty(s));
        foreach (var start in starts)
        {
            for (var dir = new DirectoryInfo(start!); dir is not null; dir = dir.Parent)
            {
                foreach (var candidate in new[] { Path.Combine(dir.FullName, ModelFile), Path.Combine(dir.FullName, "weights", ModelFile) })
                {
                    if (File.Exists(candidate))
                    {
                        return candidate;
                    }
                }
            }
        }
        throw new DiffSegException($"weights/{ModelFile} not found (run from the repository, or set DIFFSEG_WEIGHTS to its folder)");
    }

    /// <summary>Writes the demo model: <see cref="ModelFlags"/> with random weights from <see cref="ModelSeed"/>.</summary>
    public static void WriteModel(string path, ExecutionPlan plan)
    {
        var flags = AdmFlags.Parse(ModelFlags, "demo flags");
        using var model = new UNetModel(flags);
        ModelWeights.InitializeRandom(model, plan, ModelSeed, keepFp32: true);
        ModelWeights.Save(model, path, new Dictionary<string, string> { ["source"] = $"random init, seed {ModelSeed} (not trained)" });
    }

    public static IoUAccumulator Run(Options o, ExecutionPlan plan, Action<string> log)
    {
        string modelPath = o.ModelPath ?? FindModel();
        if (!File.Exists(modelPath))
        {
            throw DiffSegException.For(modelPath, "file not found");
        }
        log("note: " + WeightsStatement(modelPath));
        string root = Directory.CreateDirectory(o.OutputDir).FullName;
        string train = Path.Combine(root, "data", "train"), test = Path.Combine(root, "data", "test");
        SyntheticScenes.Write(train, o.TrainImages, o.Size, seed: 11, log);
        SyntheticScenes.Write(test, o.TestImages, o.Size, seed: 23, log);
        using (var probe = new UNetModel(AdmFlags.Parse(ModelFlags, "demo flags")))
        {
            int dim = Steps.Length * Blocks.Sum(b => probe.OutputBlocks[b].Channels);
            var experiment = new JsonObject
            {
                ["exp_dir"] = Path.Combine(root, "experiment"),
                ["model_type"] = "ddpm",
                ["category"] = "synthetic_shapes",
                ["number_class"] = SyntheticScenes.Classes,
                ["ignore_label"] = 255,
                ["training_path"] = train,
                ["testing_path"] = test,
                ["model_path"] = modelPath,
                ["dim"] = new JsonArray(o.Size, o.Size, dim),
                ["steps"] = new JsonArray(Steps.Select(s => (JsonNode)s).ToArray()),
                ["blocks"] = new JsonArray(Blocks.Select(b => (JsonNode)b).ToArray()),
                ["model_num"] = o.Members,
                ["batch_size"] = 64,
                ["training_number"] = o.TrainImages,
                ["testing_number"] = o.TestImages,
                ["upsample_mode"] = "bilinear",
                ["share_noise"] = true,
                ["seed"] = 0,
            };
            AtomicFile.Write(Path.Combine(root, "experiment.json"), s =>
            {
                using var w = new StreamWriter(s);
                w.Write(experiment.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            });
        }
        var cfg = ExperimentConfig.Load(Path.Combine(root, "experiment.json"), log);
        var summary = TrainingRun.Run(cfg, plan, log);
        log($"trained {cfg.ModelNum} members: {summary.Iterations:N0} iterations over {summary.Epochs} epochs in {Progress.Format(summary.Seconds)}");
        var iou = EvaluationRun.Run(cfg, plan, log);
        string sheet = Path.Combine(root, "summary.png");
        WriteContactSheet(sheet, cfg, Math.Min(4, o.TestImages));
        log($"pictures: {sheet} (image | ground truth | prediction per row), {Path.Combine(cfg.ExpDir, "visualizations")}");
        return iou;
    }

    /// <summary>Rows of image | ground truth | prediction for the first test images, scaled ×3 so they can be seen.</summary>
    static void WriteContactSheet(string path, ExperimentConfig cfg, int rows)
    {
        int s = cfg.ImageSize, scale = 3, cell = s * scale;
        var images = ImageData.ListImages(cfg.TestingPath).Take(rows).ToList();
        using var sheet = new Image<Rgb24>(3 * cell, rows * cell);
        for (int r = 0; r < images.Count; r++)
        {
            string stem = Path.GetFileNameWithoutExtension(images[r]);
            var truth = Npy.Read(Path.ChangeExtension(images[r], ".npy")).ToInt64("mask").Select(v => (int)v).ToArray();
            var predicted = Npy.Read(Path.Combine(cfg.ExpDir, "predictions", stem + ".npy")).ToInt64("prediction").Select(v => (int)v).ToArray();
            using var photo = Image.Load<Rgb24>(images[r]);
            using var truthImage = LabelImage(truth, s);
            using var predictedImage = LabelImage(predicted, s);
            int x = 0;
            foreach (var img in new[] { photo, truthImage, predictedImage })
            {
                img.Mutate(c => c.Resize(cell, cell, KnownResamplers.NearestNeighbor));
                var at = new Point(x, r * cell);
                sheet.Mutate(c => c.DrawImage(img, at, 1f));
                x += cell;
            }
        }
        AtomicFile.Write(path, st => sheet.SaveAsPng(st));
    }

    static Image<Rgb24> LabelImage(int[] labels, int size)
    {
        var img = new Image<Rgb24>(size, size);
        for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++)
        {
            img[x, y] = Visualization.Colour(labels[y * size + x]);
        }
        return img;
    }
}
