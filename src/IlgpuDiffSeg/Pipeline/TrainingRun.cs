using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>What a training run produced, for the caller's summary.</summary>
public sealed record TrainingSummary(string EnsemblePath, int Images, long LabelledPixels, long Iterations, int Epochs, double Seconds,
    float[] FinalLoss, long PeakDeviceBytes);

/// <summary>
/// `diffseg train`: ddpm-segmentation's prepare_data + train (docs/method.md, Training rule) on the device. Features of every training
/// image are extracted once; each epoch, each ensemble member gets its own shuffle of the labelled pixels of all images,
/// cut into batches (drop_last) — as each member of the original has its own DataLoader — and all members step together,
/// their batches gathered in one launch. The state is saved at each epoch's end and every few minutes, so an interrupted
/// run picks up where it stopped.
/// </summary>
public static class TrainingRun
{
    public const string EnsembleFile = "ensemble.safetensors";
    public const string StateFile = "training_state.safetensors";
    static readonly TimeSpan CheckpointEvery = TimeSpan.FromMinutes(3);
    const int PollEvery = 25;

    /// <summary>
    /// Trains. <paramref name="interrupt"/>, asked after every optimizer step with the number of steps done, may stop the
    /// run: the state is then saved at that exact step and <see cref="TrainingInterruptedException"/> is thrown; the same
    /// call later resumes from there and ends with the same weights as an uninterrupted run.
    /// </summary>
    public static TrainingSummary Run(ExperimentConfig cfg, ExecutionPlan plan, Action<string> log, Func<long, bool>? interrupt = null)
    {
        var dev = plan.Device;
        var started = DateTime.UtcNow;
        using var model = ModelWeights.Load(cfg.ModelPath, plan);
        var extractor = Segmenter.CreateExtractor(model, cfg);
        var images = SelectImages(cfg.TrainingPath, cfg.TrainingNumber, requireMasks: true);
        foreach (var (image, mask) in images)
        {
            ImageData.Validate(image, mask!, cfg.NumberClass, cfg.IgnoreLabel);
        }
        var noise = NoiseSource.Create(cfg);
        AtomicFile.CheckWritable(Path.Combine(OutputScope.CreateDirectory(cfg.ExpDir), EnsembleFile));
        log($"training on {images.Count} images from {cfg.TrainingPath}; {cfg}; features {extractor.Channels}-dim " +
            $"({cfg.FeaturePath} path); noise {noise.Description}");

        int size = cfg.ImageSize, pixels = size * size;
        var labels = new byte[(long)images.Count * pixels];
        using var features = Segmenter.CreateTrainingStore(cfg, plan, extractor, images.Count);
        var extraction = new Progress(log, "features", images.Count);
        var loaded = Prefetch.Stream(images.Count, i =>
        {
            var (imagePath, maskPath) = images[i];
            var x0 = ImageData.LoadImage(imagePath, size, out var originalSize);
            var mask = ImageData.LoadMask(maskPath!, originalSize, size, cfg.NumberClass, cfg.IgnoreLabel);
            return (Path: imagePath, Image: x0, Mask: mask, Removed: ImageData.RemoveSmallAnnotations(mask, cfg.NumberClass, cfg.IgnoreLabel));
        });
        int index = 0;
        foreach (var item in loaded)
        {
            if (item.Removed > 0)
            {
                log($"  {Path.GetFileName(item.Path)}: {item.Removed} class(es) under 20 pixels relabelled as ignored");
            }
            item.Mask.CopyTo(labels, (long)index * pixels);
            using var image = dev.Upload(item.Image, 3, size, size);
            using var eps = noise.For(dev, index);
            features.Add(index, image, eps);
            extraction.Report(++index, Path.GetFileName(item.Path));
        }
        // The UNet's activation buffers are not needed while training; give them back before allocating the optimizer.
        dev.TrimPool();
        var ids = Enumerable.Range(0, labels.Length).Where(g => labels[g] != cfg.IgnoreLabel).ToArray();
        int perEpoch = ids.Length / cfg.BatchSize;
        if (perEpoch == 0)
        {
            throw new DiffSegException($"{cfg.TrainingPath}: only {ids.Length} labelled pixels, fewer than batch_size {cfg.BatchSize}");
        }
        log($"{ids.Length:N0} labelled pixels → {perEpoch:N0} iterations per epoch; feature store {features.DeviceBytes / 1e6:F0} MB on the device");

        var layout = MlpLayout.ForClasses(cfg.ModelNum, features.Channels, cfg.NumberClass);
        using var ensemble = PixelEnsemble.CreateRandom(plan, layout, cfg.Seed);
        using var trainer = new EnsembleTrainer(ensemble, cfg.BatchSize);
        string fingerprint = Fingerprint(cfg, images, features.Channels, noise);
        string statePath = Path.Combine(cfg.ExpDir, StateFile);
        var (startEpoch, startIteration) = TryResume(statePath, fingerprint, ensemble, trainer, log);

        int members = cfg.ModelNum, batch = cfg.BatchSize;
        using var deviceLabels = dev.Buffer<byte>(labels);
        using var order = dev.Buffer<int>((long)perEpoch * members * batch);
        using var x = dev.Buffer<float>((long)members * batch * features.Channels);
        using var y = dev.Buffer<int>(members * batch);
        var lastCheckpoint = DateTime.UtcNow;
        int epoch = startEpoch;
        bool anyActive = trainer.Active().Any(a => a);
        float[] loss = new float[cfg.ModelNum];
        for (; epoch < cfg.MaxEpochs && anyActive; epoch++)
        {
            order.CopyFrom(EpochOrder(ids, cfg.Seed, epoch, members, perEpoch, batch));
            var progress = new Progress(log, $"epoch {epoch} iteration", perEpoch);
            int first = epoch == startEpoch ? startIteration : 0;
            for (int it = first; it < perEpoch; it++)
            {
                features.Gather(order.From((long)it * members * batch), members * batch, deviceLabels.View, x.View, y.View);
                trainer.Step(x.View, y.View, epoch, perMember: true);
                if (interrupt?.Invoke(trainer.Steps) == true)
                {
                    SaveState(statePath, fingerprint, ensemble, trainer, epoch, it + 1);
                    throw new TrainingInterruptedException(statePath);
                }
                if ((it + 1) % PollEvery == 0 || it == perEpoch - 1)
                {
                    var active = trainer.Active();
                    anyActive = active.Any(a => a);
                    loss = trainer.LastLoss();
                    var correct = trainer.LastCorrect();
                    var live = Enumerable.Range(0, active.Length).Where(m => active[m]).ToArray();
                    string stats = live.Length == 0 ? "all members stopped"
                        : string.Create(CultureInfo.InvariantCulture, $"loss {live.Average(m => loss[m]):F4} · acc " +
                            $"{live.Average(m => correct[m]) * 100.0 / cfg.BatchSize:F1}% · {live.Length}/{active.Length} members training");
                    progress.Report(it + 1, stats);
                    if (!anyActive)
                    {
                        break;
                    }
                    if (DateTime.UtcNow - lastCheckpoint > CheckpointEvery)
                    {
                        SaveState(statePath, fingerprint, ensemble, trainer, epoch, it + 1);
                        lastCheckpoint = DateTime.UtcNow;
                    }
                }
            }
            if (anyActive)
            {
                SaveState(statePath, fingerprint, ensemble, trainer, epoch + 1, 0);
                lastCheckpoint = DateTime.UtcNow;
            }
        }
        ensemble.BatchesTracked = trainer.Steps;
        ensemble.Metadata["steps"] = string.Join(",", cfg.Steps);
        ensemble.Metadata["blocks"] = string.Join(",", cfg.Blocks);
        ensemble.Metadata["number_class"] = cfg.NumberClass.ToString(CultureInfo.InvariantCulture);
        ensemble.Metadata["ignore_label"] = cfg.IgnoreLabel.ToString(CultureInfo.InvariantCulture);
        ensemble.Metadata["image_size"] = cfg.ImageSize.ToString(CultureInfo.InvariantCulture);
        ensemble.Metadata["training_images"] = images.Count.ToString(CultureInfo.InvariantCulture);
        ensemble.Metadata["noise"] = noise.Description;
        string ensemblePath = Path.Combine(cfg.ExpDir, EnsembleFile);
        ensemble.Save(ensemblePath);
        File.Delete(statePath);
        return new TrainingSummary(ensemblePath, images.Count, ids.Length, trainer.Steps, epoch, (DateTime.UtcNow - started).TotalSeconds,
            trainer.LastLoss(), dev.PeakDeviceBytes);
    }

    /// <summary>Images of a folder, sorted, the first <paramref name="count"/> (all when 0), each with its mask.</summary>
    public static List<(string Image, string? Mask)> SelectImages(string folder, int count, bool requireMasks)
    {
        var paths = ImageData.ListImages(folder);
        if (count > 0)
        {
            paths = paths.Take(count).ToList();
        }
        if (paths.Count == 0)
        {
            throw DiffSegException.For(folder, "contains no images (jpg, jpeg, png, gif)");
        }
        var result = paths.Select(p => (p, ImageData.MaskPathFor(p))).ToList();
        var missing = result.FirstOrDefault(r => r.Item2 is null);
        if (requireMasks && missing.p is not null)
        {
            throw DiffSegException.For(missing.p, "has no mask beside it (expected the same name with .npy, or _mask.png)");
        }
        return result;
    }

    /// <summary>
    /// This epoch's batches: member m's pixels are a seeded Fisher–Yates shuffle of the labelled ids (the same on every
    /// resume), laid out (iteration, member, row) so one gather fills every member's batch of an iteration.
    /// </summary>
    static int[] EpochOrder(int[] ids, int seed, int epoch, int members, int perEpoch, int batch)
    {
        var order = new int[(long)perEpoch * members * batch];
        var a = new int[ids.Length];
        for (int m = 0; m < members; m++)
        {
            ids.CopyTo(a, 0);
            var rng = new Random(unchecked(seed * 100_003 + epoch * 1_009 + m * 7_919));
            for (int i = a.Length - 1; i > 0; i--)
            {
                int j = rng.Next(i + 1);
                (a[i], a[j]) = (a[j], a[i]);
            }
            for (int it = 0; it < perEpoch; it++)
            {
                Array.Copy(a, it * batch, order, ((long)it * members + m) * batch, batch);
            }
        }
        return order;
    }

    static string Fingerprint(ExperimentConfig cfg, List<(string Image, string? Mask)> images, int channels, NoiseSource noise)
    {
        var model = new FileInfo(cfg.ModelPath);
        var text = string.Join("|", model.FullName, model.Length, model.LastWriteTimeUtc.Ticks, string.Join(",", cfg.Steps),
            string.Join(",", cfg.Blocks), cfg.NumberClass, cfg.IgnoreLabel, cfg.ModelNum, cfg.BatchSize, cfg.Seed, channels,
            noise.Description, string.Join(",", images.Select(i => i.Image)));
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text)));
    }

    static IEnumerable<(string Name, DeviceBuffer<float> Buffer)> StateBuffers(PixelEnsemble e, EnsembleTrainer t) =>
        new[]
        {
            ("ensemble.parameters", e.Parameters), ("ensemble.running_mean1", e.RunningMean1), ("ensemble.running_var1", e.RunningVar1),
            ("ensemble.running_mean2", e.RunningMean2), ("ensemble.running_var2", e.RunningVar2),
        }.Concat(t.State());

    static void SaveState(string path, string fingerprint, PixelEnsemble e, EnsembleTrainer t, int epoch, int iteration)
    {
        var sources = StateBuffers(e, t).Select(b =>
        {
            var host = b.Buffer.ToArray();
            return new SafetensorSource(b.Name, [host.Length], span => host.CopyTo(span));
        }).ToList();
        // The state stays when the command fails later: it is complete, and the same command resumes from it.
        OutputScope.Keep(path);
        SafetensorsFile.Write(path, sources, new Dictionary<string, string>
        {
            ["fingerprint"] = fingerprint,
            ["epoch"] = epoch.ToString(CultureInfo.InvariantCulture),
            ["iteration"] = iteration.ToString(CultureInfo.InvariantCulture),
            ["steps"] = t.Steps.ToString(CultureInfo.InvariantCulture),
        });
    }

    static (int Epoch, int Iteration) TryResume(string path, string fingerprint, PixelEnsemble e, EnsembleTrainer t, Action<string> log)
    {
        if (!File.Exists(path))
        {
            return (0, 0);
        }
        using var file = SafetensorsFile.Open(path);
        if (file.Metadata.GetValueOrDefault("fingerprint") != fingerprint)
        {
            log($"{path}: saved state is from a different configuration; starting afresh");
            return (0, 0);
        }
        foreach (var (name, buffer) in StateBuffers(e, t))
        {
            if (!file.TryGet(name, out var entry) || entry.Count != buffer.Length)
            {
                log($"{path}: saved state lacks '{name}'; starting afresh");
                return (0, 0);
            }
            using var mapped = file.Map(entry);
            if (Finite.IndexOfNonFinite(mapped.Span) is var bad && bad >= 0)
            {
                throw DiffSegException.For(path, $"saved state '{name}' holds {Finite.Name(mapped.Span[bad])} at index {bad}; delete it to start afresh");
            }
            buffer.CopyFrom(mapped.Span);
        }
        if (!long.TryParse(file.Metadata.GetValueOrDefault("steps"), NumberStyles.None, CultureInfo.InvariantCulture, out long steps) ||
            !int.TryParse(file.Metadata.GetValueOrDefault("epoch"), NumberStyles.None, CultureInfo.InvariantCulture, out int epoch) ||
            !int.TryParse(file.Metadata.GetValueOrDefault("iteration"), NumberStyles.None, CultureInfo.InvariantCulture, out int iteration))
        {
            throw DiffSegException.For(path, "saved state has no valid epoch, iteration and steps; delete it to start afresh");
        }
        t.Steps = steps;
        log($"resuming from {path}: epoch {epoch}, iteration {iteration} ({t.Steps} steps done)");
        return (epoch, iteration);
    }
}

/// <summary>Training was stopped on request; its state is saved and the same command resumes it.</summary>
public sealed class TrainingInterruptedException(string statePath)
    : Exception($"training interrupted; state saved in {statePath} — run the same command to resume")
{
    public string StatePath { get; } = statePath;
}
