using System.Globalization;
using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>A segmentation of one image: class per pixel, Jensen–Shannon uncertainty per pixel, and the image's score.</summary>
public sealed record Segmentation(int[] Labels, float[] Js, double Uncertainty);

/// <summary>
/// A trained experiment ready to label images: the UNet, the feature recipe, the ensemble and the noise.
/// Prediction follows the original's predict_labels (docs/method.md, Prediction: vote and uncertainty).
/// </summary>
public sealed class Segmenter : IDisposable
{
    readonly ExperimentConfig cfg;
    readonly ExecutionPlan plan;
    readonly ComputeDevice dev;
    readonly UNetModel model;
    readonly FeatureExtractor extractor;
    readonly PixelEnsemble ensemble;
    readonly NoiseSource noise;

    Segmenter(ExperimentConfig cfg, ExecutionPlan plan, UNetModel model, FeatureExtractor extractor, PixelEnsemble ensemble, NoiseSource noise)
    {
        this.cfg = cfg;
        this.plan = plan;
        dev = plan.Device;
        this.model = model;
        this.extractor = extractor;
        this.ensemble = ensemble;
        this.noise = noise;
    }

    public PixelEnsemble Ensemble => ensemble;

    /// <summary>The experiment's UNet (DatasetDDPM samples with it too).</summary>
    public UNetModel Model => model;

    public static Segmenter Open(ExperimentConfig cfg, ExecutionPlan plan)
    {
        string path = Path.Combine(cfg.ExpDir, TrainingRun.EnsembleFile);
        if (!File.Exists(path))
        {
            throw DiffSegException.For(path, $"not found: train first with 'diffseg train --config {cfg.SourcePath}'");
        }
        var model = ModelWeights.Load(cfg.ModelPath, plan);
        try
        {
            var extractor = CreateExtractor(model, cfg);
            var ensemble = PixelEnsemble.Load(path, plan);
            try
            {
                if (ensemble.Layout.In != extractor.Channels || ensemble.Layout.Classes != cfg.NumberClass)
                {
                    throw DiffSegException.For(path, $"was trained for {ensemble.Layout.In}-dim features and {ensemble.Layout.Classes} classes; " +
                                                     $"the config gives {extractor.Channels} and {cfg.NumberClass}");
                }
                cfg.CheckEnsemble(ensemble.Metadata, ensemble.Layout.Members, path);
            }
            catch
            {
                ensemble.Dispose();
                throw;
            }
            return new Segmenter(cfg, plan, model, extractor, ensemble, NoiseSource.Create(cfg));
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The feature recipe of an experiment, checked against its dim[2] and the model's decoder blocks.</summary>
    public static FeatureExtractor CreateExtractor(UNetModel model, ExperimentConfig cfg)
    {
        FeatureExtractor extractor;
        if (cfg.ImageSize != model.Flags.ImageSize)
        {
            throw DiffSegException.For(cfg.SourcePath, $"dim[0] is {cfg.ImageSize} but {cfg.ModelPath} was trained at image_size " +
                                                       $"{model.Flags.ImageSize}; ddpm-segmentation runs the UNet at its training size");
        }
        if (Array.FindIndex(cfg.Steps, t => t < 0 || t >= model.Flags.DiffusionSteps) is var i && i >= 0 && cfg.Steps[i] is var step)
        {
            throw DiffSegException.For(cfg.SourcePath, $"step {step} in 'steps' is outside [0, {model.Flags.DiffusionSteps}), the diffusion " +
                                                       $"steps of {cfg.ModelPath}");
        }
        try
        {
            extractor = new FeatureExtractor(model, cfg.Steps, cfg.Blocks);
        }
        catch (DiffSegException e)
        {
            throw DiffSegException.For(cfg.SourcePath, e.Message);
        }
        if (cfg.Dim[2] != extractor.Channels)
        {
            throw DiffSegException.For(cfg.SourcePath, $"dim[2] is {cfg.Dim[2]} but blocks [{string.Join(",", cfg.Blocks)}] at " +
                                                       $"{cfg.Steps.Length} steps give {extractor.Channels} feature channels");
        }
        if (cfg.ImageSize % model.SizeMultiple != 0)
        {
            throw DiffSegException.For(cfg.SourcePath, $"image size {cfg.ImageSize} (dim[0]) is not divisible by {model.SizeMultiple}, as the UNet needs");
        }
        return extractor;
    }

    /// <summary>The training-feature store the config asks for.</summary>
    public static ITrainingFeatures CreateTrainingStore(ExperimentConfig cfg, ExecutionPlan plan, FeatureExtractor extractor, int images) =>
        cfg.FeaturePath == "materialized"
            ? new MaterializedTrainingFeatures(plan.Device, extractor, images, cfg.ImageSize)
            : new LeanTrainingFeatures(plan, extractor, images, cfg.ImageSize, half: cfg.FeatureStorage == "fp16");

    /// <summary>Features of one image, in the form the config's feature path uses.</summary>
    IImageFeatures ImageFeatures(Tensor image, Tensor eps) => cfg.FeaturePath == "materialized"
        ? new MaterializedImageFeatures(extractor.Extract(image, eps))
        : new LeanImageFeatures(dev, extractor, extractor.Activations(image, eps), cfg.ImageSize);

    /// <summary>Labels one image, given as (3, S, S) floats in [-1, 1]; <paramref name="index"/> picks the noise when not shared.</summary>
    public Segmentation Predict(float[] x0, int index)
    {
        int size = cfg.ImageSize, pixels = size * size;
        var L = ensemble.Layout;
        int chunk = Math.Min(pixels, dev.IsCpu ? 4096 : 16384);
        var labels = new int[pixels];
        var js = new float[pixels];
        using var image = dev.Upload(x0, 3, size, size);
        using var eps = noise.For(dev, 1_000_000 + index);
        using var features = ImageFeatures(image, eps);
        using var logits = dev.Allocate(L.Members * chunk * L.Classes);
        using var chunkLabels = dev.Buffer<int>(chunk);
        using var chunkJs = dev.Allocate(chunk);
        for (int start = 0; start < pixels; start += chunk)
        {
            int count = Math.Min(chunk, pixels - start);
            features.Logits(ensemble, start, count, logits.View);
            EnsembleVote.Forward(dev, L.Members, count, L.Classes, logits.View, chunkLabels.View, chunkJs.View);
            chunkLabels.View.CopyToHost(labels.AsSpan(start, count));
            chunkJs.View.CopyToHost(js.AsSpan(start, count));
        }
        return new Segmentation(labels, js, UncertaintyScore(js));
    }

    /// <summary>Every member's logits for one image, (M, pixels, C) — for tests and inspection.</summary>
    public float[] Logits(float[] x0, int index)
    {
        int size = cfg.ImageSize, pixels = size * size;
        var L = ensemble.Layout;
        using var image = dev.Upload(x0, 3, size, size);
        using var eps = noise.For(dev, 1_000_000 + index);
        using var features = ImageFeatures(image, eps);
        using var logits = dev.Buffer<float>((long)L.Members * pixels * L.Classes);
        features.Logits(ensemble, 0, pixels, logits.View);
        return logits.ToArray();
    }

    /// <summary>The original's image score: the mean of the largest int(pixels / 10) Jensen–Shannon values.</summary>
    public static double UncertaintyScore(float[] js)
    {
        int top = js.Length / 10;
        if (top == 0)
        {
            return js.Length == 0 ? 0 : js.Average(v => (double)v);
        }
        return js.OrderByDescending(v => v).Take(top).Average(v => (double)v);
    }

    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"{ensemble.Layout.Members} members, {extractor.Channels}-dim features, {ensemble.Layout.Classes} classes; noise {noise.Description}");

    public void Dispose()
    {
        ensemble.Dispose();
        model.Dispose();
    }
}
