using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>
/// `diffseg evaluate`: labels every test image with the trained ensemble, accumulates IoU as the original does, and
/// writes predictions/&lt;stem&gt;.npy (int64) and visualizations/&lt;stem&gt;.png into exp_dir, as the original's evaluation does.
/// </summary>
public static class EvaluationRun
{
    public static IoUAccumulator Run(ExperimentConfig cfg, ExecutionPlan plan, Action<string> log)
    {
        var images = TrainingRun.SelectImages(cfg.TestingPath, cfg.TestingNumber, requireMasks: true);
        foreach (var (image, mask) in images)
        {
            ImageData.Validate(image, mask!, cfg.NumberClass, cfg.IgnoreLabel);
        }
        using var segmenter = Segmenter.Open(cfg, plan);
        log($"evaluating {images.Count} images from {cfg.TestingPath}: {segmenter.Describe()}");
        string predictions = OutputScope.CreateDirectory(Path.Combine(cfg.ExpDir, "predictions"));
        string pictures = OutputScope.CreateDirectory(Path.Combine(cfg.ExpDir, "visualizations"));
        var iou = new IoUAccumulator(cfg.NumberClass, cfg.IgnoreLabel);
        var progress = new Progress(log, "test images", images.Count);
        var uncertainties = new List<double>();
        var loaded = Prefetch.Stream(images.Count, i =>
        {
            var (imagePath, maskPath) = images[i];
            var x0 = ImageData.LoadImage(imagePath, cfg.ImageSize, out var originalSize);
            return (Path: imagePath, Image: x0, Truth: ImageData.LoadMask(maskPath!, originalSize, cfg.ImageSize, cfg.NumberClass, cfg.IgnoreLabel));
        });
        int index = 0;
        foreach (var (imagePath, x0, truth) in loaded)
        {
            var seg = segmenter.Predict(x0, index);
            iou.Add(seg.Labels, truth);
            uncertainties.Add(seg.Uncertainty);
            string stem = Path.GetFileNameWithoutExtension(imagePath);
            Npy.Write(Path.Combine(predictions, stem + ".npy"), seg.Labels.Select(v => (long)v).ToArray(), [cfg.ImageSize, cfg.ImageSize]);
            Visualization.SaveLabels(Path.Combine(pictures, stem + ".png"), seg.Labels, cfg.ImageSize);
            progress.Report(++index, $"{Path.GetFileName(imagePath)} uncertainty {seg.Uncertainty:F4}");
        }
        log($"mean uncertainty {uncertainties.Average():F4}; predictions in {predictions}");
        return iou;
    }
}
