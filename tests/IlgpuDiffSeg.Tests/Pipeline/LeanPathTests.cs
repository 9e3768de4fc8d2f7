using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Tests.Pipeline;

/// <summary>
/// The lean feature path (native-resolution blocks) against the materialised one (the original's D × H × W features),
/// on the official tiny UNet: same gathered rows, same trained weights, same logits up to rounding.
/// </summary>
public abstract class LeanPathTests(ExecutionPlan? plan, ITestOutputHelper log)
{
    readonly ComputeDevice? device = plan?.Device;

    static readonly int[] Steps = [50, 150];
    static readonly int[] Blocks = [2, 5, 7];

    [Fact]
    public void GatheredRowsEqualMaterialisedFeatures()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact — the gather evaluates UpsampleBilinear's expression on the same values.
        using var tmp = new TempDir();
        using var model = TinyModel(tmp);
        var extractor = new FeatureExtractor(model, Steps, Blocks);
        var images = Enumerable.Range(0, 2).Select(i => TestData.Uniform(3 * 32 * 32, 40 + i)).ToArray();
        using var noise = device!.Upload(TestData.Uniform(3 * 32 * 32, 50), 3, 32, 32);
        using var lean = new LeanTrainingFeatures(plan!, extractor, 2, 32, half: false);
        using var full = new MaterializedTrainingFeatures(device, extractor, 2, 32);
        for (int i = 0; i < 2; i++)
        {
            using var img = device.Upload(images[i], 3, 32, 32);
            lean.Add(i, img, noise);
            full.Add(i, img, noise);
        }
        int[] ids = [0, 31, 32, 1023, 1024, 1500, 2047, 700];
        var labels = Enumerable.Range(0, 2048).Select(i => (byte)(i % 5)).ToArray();
        using var dids = device.Buffer<int>(ids);
        using var dlabels = device.Buffer<byte>(labels);
        using var x1 = device.Buffer<float>(ids.Length * extractor.Channels);
        using var x2 = device.Buffer<float>(ids.Length * extractor.Channels);
        using var y1 = device.Buffer<int>(ids.Length);
        using var y2 = device.Buffer<int>(ids.Length);
        lean.Gather(dids.View, ids.Length, dlabels.View, x1.View, y1.View);
        full.Gather(dids.View, ids.Length, dlabels.View, x2.View, y2.View);
        TensorAssert.Close(x2.ToArray(), x1.ToArray(), 0, 0, "lean gather vs materialised");
        Assert.Equal(y2.ToArray(), y1.ToArray());
        Assert.Equal(ids.Select(i => (int)labels[i]), y1.ToArray());
        // fp16 storage rounds the native maps to half precision: |diff| ≤ 2^-11 relative of the value range.
        using var half = new LeanTrainingFeatures(plan!, extractor, 2, 32, half: true);
        for (int i = 0; i < 2; i++)
        {
            using var img = device.Upload(images[i], 3, 32, 32);
            half.Add(i, img, noise);
        }
        half.Gather(dids.View, ids.Length, dlabels.View, x1.View, y1.View);
        double rel = TensorAssert.RelativeMaxError(x2.ToArray(), x1.ToArray());
        log.WriteLine($"fp16 store: max|diff|/max|ref| = {rel:E2}");
        Assert.InRange(rel, 0, 1e-3);
        Assert.True(half.DeviceBytes * 2 == lean.DeviceBytes);
    }

    [Fact]
    public void TrainingGivesTheSameWeightsAndPredictionTheSameLogits()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Weights: exact (identical batches, identical arithmetic). Logits: W·Up(a) vs Up(W·a) differ only by rounding,
        // NMSE ≤ 1e-10; the voted labels agree on ≥ 99.9% of pixels.
        using var tmp = new TempDir();
        string modelPath = tmp.File("tiny.safetensors");
        ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), modelPath);
        SyntheticScenes.Write(tmp.File("train"), 3, 32, seed: 5);
        var ensembles = new Dictionary<string, float[]>();
        var labelMaps = new Dictionary<string, int[]>();
        var logitMaps = new Dictionary<string, float[]>();
        foreach (var path in new[] { "materialized", "lean" })
        {
            string cfgPath = tmp.File($"{path}.json");
            File.WriteAllText(cfgPath, $$"""
                {"exp_dir": "{{tmp.File(path)}}", "number_class": 5, "ignore_label": 255, "training_path": "{{tmp.File("train")}}",
                 "testing_path": "{{tmp.File("train")}}", "model_path": "{{modelPath}}", "dim": [32, 32, 320], "steps": [50, 150],
                 "blocks": [2, 5, 7], "model_num": 2, "batch_size": 64, "share_noise": true, "seed": 3, "max_epochs": 2,
                 "feature_path": "{{path}}"}
                """);
            var cfg = ExperimentConfig.Load(cfgPath);
            TrainingRun.Run(cfg, plan!, _ => { });
            using var segmenter = Segmenter.Open(cfg, plan!);
            ensembles[path] = segmenter.Ensemble.Parameters.ToArray();
            var image = ImageData.LoadImage(tmp.File("train/scene_001.png"), 32, out _);
            labelMaps[path] = segmenter.Predict(image, 0).Labels;
            logitMaps[path] = segmenter.Logits(image, 0);
        }
        TensorAssert.Close(ensembles["materialized"], ensembles["lean"], 0, 0, "trained parameters, lean vs materialised");
        TensorAssert.NmseBelow(logitMaps["materialized"], logitMaps["lean"], 1e-10, "logits, lean vs materialised");
        int agree = labelMaps["lean"].Zip(labelMaps["materialized"]).Count(p => p.First == p.Second);
        Assert.True(agree >= 0.999 * 1024, $"labels agree on {agree} of 1024 pixels");
    }

    UNetModel TinyModel(TempDir tmp)
    {
        ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), tmp.File("m.safetensors"));
        return ModelWeights.Load(tmp.File("m.safetensors"), plan!);
    }
}

[Collection("cpu")]
public sealed class LeanPathTestsCpu(CpuDeviceFixture f, ITestOutputHelper log) : LeanPathTests(f.Plan, log);

[Collection("cpu")]
public sealed class LeanPathTestsCpuSimd(CpuSimdDeviceFixture f, ITestOutputHelper log) : LeanPathTests(f.Plan, log);

[Collection("cuda")]
public sealed class LeanPathTestsCuda(CudaDeviceFixture f, ITestOutputHelper log) : LeanPathTests(f.Plan, log);

public abstract class ResumeTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    /// <summary>
    /// A run interrupted mid-epoch and resumed ends with the same ensemble as an uninterrupted run.
    /// Tolerance: exact — the state saved holds everything the next step reads, and the data order is a function of the seed.
    /// </summary>
    [Fact]
    public void InterruptedRunResumesToTheSameWeights()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        using var tmp = new TempDir();
        string modelPath = tmp.File("tiny.safetensors");
        ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), modelPath);
        SyntheticScenes.Write(tmp.File("train"), 2, 32, seed: 9);
        ExperimentConfig Config(string name)
        {
            File.WriteAllText(tmp.File(name + ".json"), $$"""
                {"exp_dir": "{{tmp.File(name)}}", "number_class": 5, "ignore_label": 255, "training_path": "{{tmp.File("train")}}",
                 "testing_path": "{{tmp.File("train")}}", "model_path": "{{modelPath}}", "dim": [32, 32, 320], "steps": [50, 150],
                 "blocks": [2, 5, 7], "model_num": 2, "batch_size": 64, "seed": 4, "max_epochs": 6}
                """);
            return ExperimentConfig.Load(tmp.File(name + ".json"));
        }
        var straight = Config("straight");
        var resumed = Config("resumed");
        TrainingRun.Run(straight, plan!, _ => { });
        // 32 iterations an epoch: stop in the middle of epoch 1.
        var e = Assert.Throws<TrainingInterruptedException>(() => TrainingRun.Run(resumed, plan!, _ => { }, steps => steps == 45));
        Assert.True(File.Exists(e.StatePath));
        var lines = new List<string>();
        TrainingRun.Run(resumed, plan!, lines.Add);
        Assert.Contains(lines, l => l.Contains("resuming from") && l.Contains("epoch 1, iteration 13"));
        using var a = PixelEnsemble.Load(Path.Combine(straight.ExpDir, TrainingRun.EnsembleFile), plan!);
        using var b = PixelEnsemble.Load(Path.Combine(resumed.ExpDir, TrainingRun.EnsembleFile), plan!);
        TensorAssert.Close(a.Parameters.ToArray(), b.Parameters.ToArray(), 0, 0, "resumed vs uninterrupted parameters");
        TensorAssert.Close(a.RunningVar2.ToArray(), b.RunningVar2.ToArray(), 0, 0, "resumed vs uninterrupted running variance");
    }
}

[Collection("cpu")]
public sealed class ResumeTestsCpu(CpuSimdDeviceFixture f) : ResumeTests(f.Plan);

[Collection("cuda")]
public sealed class ResumeTestsCuda(CudaDeviceFixture f) : ResumeTests(f.Plan);
