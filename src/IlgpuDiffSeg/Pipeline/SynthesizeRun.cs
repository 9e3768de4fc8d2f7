using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Training;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>What 'diffseg synthesize' was asked for: generate_dataset.py's arguments, the shard, train_deeplab.py's filter.</summary>
public sealed class SynthesizeOptions
{
    public required string ConfigPath { get; init; }
    public required string OutputDir { get; init; }
    public required int NumSamples { get; init; }
    public int BatchSize { get; init; } = 8;
    public int Shard { get; init; }
    public int Shards { get; init; } = 1;

    /// <summary>space_timesteps' spec; null takes the model's timestep_respacing flag (the original samples every step).</summary>
    public string? TimestepRespacing { get; init; }

    public bool UseDdim { get; init; }
    public double Eta { get; init; }
    public bool ClipDenoised { get; init; } = true;
    public int Seed { get; init; }

    /// <summary>train_deeplab.py's uncertainty_portion: the fraction of samples the dataset folder drops.</summary>
    public double UncertaintyPortion { get; init; } = 0.1;

    /// <summary>"i/n" → (i, n), refusing anything but 0 ≤ i &lt; n.</summary>
    public static (int Index, int Count) ParseShard(string text)
    {
        var parts = text.Split('/');
        if (parts.Length == 2 && int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int i) &&
            int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0 && i < n)
        {
            return (i, n);
        }
        throw new DiffSegException($"--shard {text}: expected i/n with 0 ≤ i < n (shard 0/2 and 1/2 split a run in two)");
    }
}

/// <summary>
/// 'diffseg synthesize': ddpm-segmentation's DatasetDDPM (generate_dataset.py). Batches of samples from the experiment's
/// DDPM, clamped to [−1, 1], labelled by the trained ensemble's vote with the Jensen–Shannon score, each batch written to
/// OUT_DIR/batches as soon as it is done — a stopped run resumes at the first missing batch. Shard i of n takes batches
/// i, i + n, …; a sample depends only on the seed and its index, so shards merge into the result of one run. When every
/// batch is present the run assembles generate_dataset.py's samples_HxWx3.npz (arr_0 images, arr_1 masks, arr_2
/// uncertainty) and a dataset folder in ddpm-segmentation's layout without the least certain samples (SyntheticDataset).
/// </summary>
public static class SynthesizeRun
{
    public const string ManifestFile = "synthesize.json";
    public const string BatchFolder = "batches";

    public sealed record Summary(int BatchesDone, int BatchesSkipped, int BatchesTotal, int BatchesPresent, string? NpzPath,
        string? DatasetPath, int DatasetImages, double Seconds);

    /// <summary>Checks the options and the experiment before any device work; returns the config.</summary>
    public static ExperimentConfig Prepare(SynthesizeOptions o, Action<string>? log = null)
    {
        if (o.NumSamples <= 0 || o.BatchSize <= 0)
        {
            throw new DiffSegException($"--num-samples {o.NumSamples} and --batch-size {o.BatchSize} must be positive");
        }
        if (!(o.UncertaintyPortion is >= 0 and < 1))
        {
            throw new DiffSegException($"--uncertainty-portion {Text(o.UncertaintyPortion)} is not in [0, 1)");
        }
        SamplerOptions.CheckEta(o.Eta, o.UseDdim);
        var cfg = ExperimentConfig.Load(o.ConfigPath, log);
        string ensemble = Path.Combine(cfg.ExpDir, TrainingRun.EnsembleFile);
        if (!File.Exists(ensemble))
        {
            throw DiffSegException.For(ensemble, $"not found: train first with 'diffseg train --config {cfg.SourcePath}'");
        }
        var flags = SampleRun.ReadFlags(cfg.ModelPath);
        if (flags.ClassCond)
        {
            throw DiffSegException.For(cfg.ModelPath, "is class-conditional; DatasetDDPM samples unconditional models");
        }
        try
        {
            GaussianDiffusion.FromFlags(flags, o.TimestepRespacing);
        }
        catch (DiffSegException e)
        {
            throw new DiffSegException($"--timestep-respacing: {e.Message}");
        }
        if (flags.ImageSize != cfg.ImageSize)
        {
            throw DiffSegException.For(cfg.SourcePath,
                $"dim[0] is {cfg.ImageSize}, the model samples {flags.ImageSize}×{flags.ImageSize}");
        }
        // The assembled outputs hold every sample (image, mask, the float batch being labelled): refuse what could never fit.
        int pixels = cfg.ImageSize * cfg.ImageSize;
        MemoryEstimate.CheckArray($"--num-samples {o.NumSamples}", o.NumSamples, 3 * pixels);
        MemoryEstimate.Check($"--num-samples {o.NumSamples}", o.NumSamples, 4.0 * pixels + 4, 0, null);
        MemoryEstimate.Check($"--batch-size {o.BatchSize}", Math.Min(o.BatchSize, o.NumSamples), 16.0 * pixels, 0, null);
        CheckManifest(o, cfg);
        return cfg;
    }

    static string Text(double v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>The settings that decide every batch's content; a resumed run or another shard must agree on them.</summary>
    static JsonObject Manifest(SynthesizeOptions o, ExperimentConfig cfg) => new()
    {
        ["config"] = Path.GetFullPath(cfg.SourcePath),
        ["model"] = Path.GetFullPath(cfg.ModelPath),
        ["num_samples"] = o.NumSamples,
        ["batch_size"] = o.BatchSize,
        ["seed"] = o.Seed,
        ["timestep_respacing"] = o.TimestepRespacing ?? "",
        ["use_ddim"] = o.UseDdim,
        ["eta"] = o.Eta,
        ["clip_denoised"] = o.ClipDenoised,
    };

    static void CheckManifest(SynthesizeOptions o, ExperimentConfig cfg)
    {
        string path = Path.Combine(o.OutputDir, ManifestFile);
        if (File.Exists(o.OutputDir))
        {
            throw DiffSegException.For(o.OutputDir, "exists and is a file, expected a folder");
        }
        if (File.Exists(path) && Directory.Exists(Path.Combine(o.OutputDir, BatchFolder)))
        {
            JsonObject theirs;
            try
            {
                theirs = JsonNode.Parse(File.ReadAllText(path)) as JsonObject
                         ?? throw DiffSegException.For(path, "is not a JSON object; not a manifest 'diffseg synthesize' wrote");
            }
            catch (JsonException e)
            {
                throw DiffSegException.For(path, $"is not valid JSON ({e.Message.Split('\n')[0]}); not a manifest 'diffseg synthesize' " +
                                                 "wrote");
            }
            foreach (var (key, value) in Manifest(o, cfg))
            {
                string a = theirs[key]?.ToJsonString() ?? "(none)", b = value!.ToJsonString();
                if (a != b)
                {
                    throw DiffSegException.For(path, $"this output folder was started with {key} {a}, not {b}: use another folder, " +
                                                     "or the same settings to resume");
                }
            }
        }
        else if (Directory.Exists(o.OutputDir) && Directory.EnumerateFileSystemEntries(o.OutputDir).Any() && !File.Exists(path))
        {
            throw DiffSegException.For(o.OutputDir, "exists and is not a synthesize output folder; give an empty or new folder");
        }
    }

    public static string BatchPath(string outputDir, int batch) =>
        Path.Combine(outputDir, BatchFolder, $"batch_{batch.ToString("D6", CultureInfo.InvariantCulture)}.npz");

    /// <summary>Runs this shard's missing batches on <paramref name="plan"/>, then assembles the outputs when all are present.</summary>
    public static Summary Run(SynthesizeOptions o, ExperimentConfig cfg, ExecutionPlan plan, Action<string>? log = null,
        Func<bool>? stopRequested = null) => Run(o, cfg, [plan], log, stopRequested);

    /// <summary>
    /// Runs this shard's missing batches spread over <paramref name="plans"/> (one device each, one thread each, batches dealt
    /// in turn), then assembles the outputs when every batch is present.
    /// </summary>
    public static Summary Run(SynthesizeOptions o, ExperimentConfig cfg, IReadOnlyList<ExecutionPlan> plans, Action<string>? log = null,
        Func<bool>? stopRequested = null)
    {
        // Made through the output scope: a run that fails before its first batch leaves nothing behind; a finished batch stays
        // (with the manifest that says how it was made), so the same command resumes after a failure or a stop.
        OutputScope.CreateDirectory(Path.Combine(o.OutputDir, BatchFolder));
        string manifest = Path.Combine(o.OutputDir, ManifestFile);
        if (!File.Exists(manifest))
        {
            var text = Manifest(o, cfg).ToJsonString(new JsonSerializerOptions { WriteIndented = true });
            AtomicFile.Write(manifest, s => s.Write(System.Text.Encoding.UTF8.GetBytes(text + "\n")));
        }
        int batches = (o.NumSamples + o.BatchSize - 1) / o.BatchSize;
        var mine = Enumerable.Range(0, batches).Where(b => b % o.Shards == o.Shard).ToList();
        var todo = mine.Where(b => !File.Exists(BatchPath(o.OutputDir, b))).ToList();
        // Batches already there (this shard's or another's) are read before any new work: a damaged one is refused now,
        // not after hours of sampling, and nothing new is left beside it.
        foreach (int b in Enumerable.Range(0, batches).Where(b => File.Exists(BatchPath(o.OutputDir, b))))
        {
            SyntheticDataset.ReadBatch(o, cfg, b);
        }
        var clock = Stopwatch.StartNew();
        log?.Invoke($"shard {o.Shard}/{o.Shards}: {mine.Count} of {batches} batches of {o.BatchSize}, " +
                    $"{mine.Count - todo.Count} already done" + (plans.Count > 1 ? $"; {plans.Count} devices" : ""));
        if (plans.Count == 1)
        {
            Work(o, cfg, plans[0], todo, "", log, stopRequested);
        }
        else if (todo.Count > 0)
        {
            var workers = plans.Select((plan, w) => Task.Factory.StartNew(() =>
                    Work(o, cfg, plan, todo.Where((_, i) => i % plans.Count == w).ToList(), $"device {w}: ", log, stopRequested),
                TaskCreationOptions.LongRunning)).ToArray();
            try
            {
                Task.WaitAll(workers);
            }
            catch (AggregateException e) when (e.InnerExceptions.Count > 0)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
            }
        }
        int present = Enumerable.Range(0, batches).Count(b => File.Exists(BatchPath(o.OutputDir, b)));
        if (present < batches)
        {
            log?.Invoke($"{present} of {batches} batches present; the outputs are assembled by the shard that completes the set " +
                        "(or by running the command again once every shard is done)");
            return new Summary(todo.Count, mine.Count - todo.Count, batches, present, null, null, 0, clock.Elapsed.TotalSeconds);
        }
        var (npz, folder, kept) = SyntheticDataset.Assemble(o, cfg, batches, log);
        return new Summary(todo.Count, mine.Count - todo.Count, batches, present, npz, folder, kept, clock.Elapsed.TotalSeconds);
    }

    /// <summary>One device's share of the batches, in order.</summary>
    static void Work(SynthesizeOptions o, ExperimentConfig cfg, ExecutionPlan plan, List<int> todo, string tag, Action<string>? log,
        Func<bool>? stopRequested)
    {
        if (todo.Count == 0)
        {
            return;
        }
        var clock = Stopwatch.StartNew();
        using var segmenter = Segmenter.Open(cfg, plan);
        MemoryEstimate.Check($"--batch-size {o.BatchSize}", Math.Min(o.BatchSize, o.NumSamples),
            MemoryEstimate.ActivationBytesPerImage(segmenter.Model.Flags, training: false), 0, plan);
        var diffusion = GaussianDiffusion.FromFlags(segmenter.Model.Flags, o.TimestepRespacing);
        var sampler = new Sampler(segmenter.Model, diffusion, new SamplerOptions(o.UseDdim, o.Eta, o.ClipDenoised));
        log?.Invoke($"{tag}sampling {diffusion.Steps} {(o.UseDdim ? "DDIM" : "ancestral")} steps of {diffusion.OriginalSteps}; " +
                    $"labelling with {segmenter.Describe()}");
        for (int i = 0; i < todo.Count; i++)
        {
            if (stopRequested?.Invoke() == true)
            {
                throw new TrainingStoppedException($"stopped after {i} batches; run the same command to resume");
            }
            RunBatch(o, cfg, sampler, segmenter, todo[i], tag, log, stopRequested);
            double perBatch = clock.Elapsed.TotalSeconds / (i + 1);
            log?.Invoke($"{tag}batch {todo[i]} done ({i + 1}/{todo.Count}, {Progress.Format(perBatch)} a batch, " +
                        $"{Progress.Format(perBatch * (todo.Count - i - 1))} left)");
        }
    }

    /// <summary>Samples, labels and writes one batch: arr_0 images (n, H, W, 3) uint8, arr_1 masks (n, H, W) uint8, arr_2
    /// uncertainty (n,) float32.</summary>
    static void RunBatch(SynthesizeOptions o, ExperimentConfig cfg, Sampler sampler, Segmenter segmenter, int batch, string tag,
        Action<string>? log, Func<bool>? stopRequested)
    {
        int first = batch * o.BatchSize, n = Math.Min(o.BatchSize, o.NumSamples - first), size = cfg.ImageSize;
        int pixels = size * size;
        var progress = new Progress(log, $"{tag}batch {batch}: sampling step", sampler.Steps);
        using var x = sampler.Sample(first, n, size, new DrawnNoise(o.Seed), stepDone: k =>
        {
            if (stopRequested?.Invoke() == true)
            {
                throw new TrainingStoppedException($"stopped in batch {batch}; run the same command to resume");
            }
            progress.Report(k, $"{k / Math.Max(progress.Elapsed.TotalSeconds, 1e-9):F2} steps/s");
        });
        var raw = x.ToArray();
        var images = SampleImages.ToUint8Nhwc(raw, n, size, size);
        var masks = new byte[n * pixels];
        var uncertainty = new float[n];
        for (int s = 0; s < n; s++)
        {
            // generate_dataset.py labels output[i].clamp(-1, 1).
            var img = raw.AsSpan(s * 3 * pixels, 3 * pixels).ToArray();
            for (int i = 0; i < img.Length; i++)
            {
                img[i] = Math.Clamp(img[i], -1f, 1f);
            }
            var seg = segmenter.Predict(img, first + s);
            for (int p = 0; p < pixels; p++)
            {
                masks[s * pixels + p] = (byte)seg.Labels[p];
            }
            uncertainty[s] = (float)seg.Uncertainty;
        }
        string path = BatchPath(o.OutputDir, batch);
        Npz.Write(path,
        [
            NpzEntry.Of("arr_0", images, n, size, size, 3),
            NpzEntry.Of("arr_1", masks, n, size, size),
            NpzEntry.Of("arr_2", uncertainty, n),
        ]);
        OutputScope.Keep(path);
        OutputScope.Keep(Path.Combine(o.OutputDir, ManifestFile));
    }
}
