using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// Writes the pixel features (C, H, W) and label masks of an experiment's training and test images, as the original
/// would build them, so that original_mlp.py can train ddpm-segmentation's classifier on exactly the same inputs.
/// </summary>
public static class ExportFeatures
{
    public static int Run(string configPath, string outputDir)
    {
        var cfg = ExperimentConfig.Load(configPath, Console.Error.WriteLine);
        using var dev = ComputeDevice.Create(hostKernels: true);
        var plan = ExecutionPlan.For(dev);
        using var model = ModelWeights.Load(cfg.ModelPath, plan);
        var extractor = Segmenter.CreateExtractor(model, cfg);
        var noise = NoiseSource.Create(cfg);
        foreach (var (split, folder, count, offset) in new[] { ("train", cfg.TrainingPath, cfg.TrainingNumber, 0),
                     ("test", cfg.TestingPath, cfg.TestingNumber, 1_000_000) })
        {
            string dir = Directory.CreateDirectory(Path.Combine(outputDir, split)).FullName;
            var images = TrainingRun.SelectImages(folder, count, requireMasks: true);
            for (int i = 0; i < images.Count; i++)
            {
                var x0 = ImageData.LoadImage(images[i].Image, cfg.ImageSize, out var original);
                var mask = ImageData.LoadMask(images[i].Mask!, original, cfg.ImageSize, cfg.NumberClass, cfg.IgnoreLabel);
                using var image = dev.Upload(x0, 3, cfg.ImageSize, cfg.ImageSize);
                using var eps = noise.For(dev, offset + i);
                using var features = extractor.Extract(image, eps);
                Npy.Write(Path.Combine(dir, $"{i:D4}_features.npy"), features.ToArray(), features.Shape);
                Npy.Write(Path.Combine(dir, $"{i:D4}_mask.npy"), mask, [cfg.ImageSize, cfg.ImageSize]);
            }
            Console.Error.WriteLine($"{split}: {images.Count} images → {dir}");
        }
        return 0;
    }
}
