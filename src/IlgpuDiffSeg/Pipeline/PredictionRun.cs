using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>
/// `diffseg predict`: labels an image or every image of a folder, writing per image &lt;stem&gt;.npy (int64 class ids),
/// &lt;stem&gt;.png (class colours), &lt;stem&gt;_overlay.png (over the image), and uncertainty.tsv with each image's score.
/// </summary>
public static class PredictionRun
{
    public static int Run(ExperimentConfig cfg, ExecutionPlan plan, string input, string outputDir, Action<string> log)
    {
        if (File.Exists(outputDir))
        {
            throw DiffSegException.For(outputDir, "exists and is a file, expected a folder for the predictions");
        }
        var inputs = File.Exists(input) ? [input] : Directory.Exists(input) ? ImageData.ListImages(input)
            : throw DiffSegException.For(input, "no such file or folder");
        if (inputs.Count == 0)
        {
            throw DiffSegException.For(input, "contains no images (jpg, jpeg, png, gif)");
        }
        // Every input is checked before anything is written, so a bad file leaves no partial output.
        foreach (var p in inputs)
        {
            var size = ImageData.ImageSize(p);
            if (size[0] != size[1])
            {
                throw DiffSegException.For(p, $"is {size[1]}×{size[0]}; only square images are supported");
            }
        }
        using var segmenter = Segmenter.Open(cfg, plan);
        OutputScope.CreateDirectory(outputDir);
        log($"labelling {inputs.Count} image(s): {segmenter.Describe()}");
        var progress = new Progress(log, "images", inputs.Count);
        var scores = new List<string> { "image\tuncertainty" };
        int i = 0;
        foreach (var (path, x0) in Prefetch.Stream(inputs.Count, k => (inputs[k], ImageData.LoadImage(inputs[k], cfg.ImageSize, out _))))
        {
            var seg = segmenter.Predict(x0, i);
            string stem = Path.Combine(outputDir, Path.GetFileNameWithoutExtension(path));
            Npy.Write(stem + ".npy", seg.Labels.Select(v => (long)v).ToArray(), [cfg.ImageSize, cfg.ImageSize]);
            Visualization.SaveLabels(stem + ".png", seg.Labels, cfg.ImageSize);
            Visualization.SaveOverlay(stem + "_overlay.png", x0, seg.Labels, cfg.ImageSize);
            scores.Add($"{Path.GetFileName(path)}\t{seg.Uncertainty:F6}");
            progress.Report(++i, $"{Path.GetFileName(path)} uncertainty {seg.Uncertainty:F4}");
        }
        AtomicFile.Write(Path.Combine(outputDir, "uncertainty.tsv"), s =>
        {
            using var w = new StreamWriter(s);
            w.Write(string.Join("\n", scores) + "\n");
        });
        return inputs.Count;
    }
}
