using System.Globalization;
using System.Text.RegularExpressions;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Training;

/// <summary>
/// A training run's files in RUN_DIR, named as guided-diffusion names them: model{step:06d}, ema_{rate}_{step:06d} and
/// opt{step:06d}, as .safetensors (the model and EMA files are ordinary converted checkpoints: flags in the metadata, so
/// every command reads them). Step S is the state after S optimiser steps. Each file is written under a temporary name and
/// renamed; the model file is written last, so a step whose model file exists is complete.
/// </summary>
public static partial class TrainingCheckpoint
{
    public const string OptimizerFormat = "ilgpudiffseg-adamw-v1";

    public static string ModelFile(string runDir, long step) => Path.Combine(runDir, $"model{step:D6}.safetensors");

    public static string EmaFile(string runDir, double rate, long step) =>
        Path.Combine(runDir, $"ema_{TrainingOptions.RateName(rate)}_{step:D6}.safetensors");

    public static string OptimizerFile(string runDir, long step) => Path.Combine(runDir, $"opt{step:D6}.safetensors");

    [GeneratedRegex(@"^model(\d{6,})\.safetensors$")]
    private static partial Regex ModelName();

    /// <summary>
    /// The last step saved in <paramref name="runDir"/>, or null when it holds none. Refuses a directory whose checkpoints
    /// come from other options (fingerprint), and a last step whose optimiser or EMA files are missing.
    /// </summary>
    public static long? Latest(string runDir, IReadOnlyList<double> emaRates, string fingerprint)
    {
        if (!Directory.Exists(runDir))
        {
            return null;
        }
        var steps = Directory.EnumerateFiles(runDir)
            .Select(f => ModelName().Match(Path.GetFileName(f)))
            .Where(m => m.Success)
            .Select(m => long.TryParse(m.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out long s)
                ? s
                : throw DiffSegException.For(Path.Combine(runDir, m.Value), "names a step past 2^63; not a checkpoint of this run"))
            .ToList();
        if (steps.Count == 0)
        {
            return null;
        }
        long step = steps.Max();
        string model = ModelFile(runDir, step);
        using (var file = SafetensorsFile.Open(model))
        {
            string saved = file.Metadata.GetValueOrDefault("training") ?? "";
            if (saved != fingerprint)
            {
                throw DiffSegException.For(runDir, "holds a run made with other flags or training options; use another -o, or the " +
                                                   $"same options (saved: {(saved == "" ? "none" : saved)})");
            }
        }
        var missing = emaRates.Select(r => EmaFile(runDir, r, step)).Append(OptimizerFile(runDir, step))
            .FirstOrDefault(f => !File.Exists(f));
        if (missing is not null)
        {
            throw DiffSegException.For(missing, $"is missing: step {step} cannot be resumed (restore it, or remove {model})");
        }
        return step;
    }

    /// <summary>What the optimiser file holds beside Adam's moments.</summary>
    public sealed record OptimizerState(long Step, long AdamSteps, double LgLossScale, string SamplerState, string Fingerprint);

    /// <summary>Writes step <paramref name="state"/>.Step: EMA files, the optimiser file, then the model file.</summary>
    public static void Save(string runDir, UNetModel model, IReadOnlyList<(double Rate, IReadOnlyList<Tensor> Values)> emas,
        IReadOnlyList<(Tensor M, Tensor V)> moments, OptimizerState state)
    {
        var parameters = model.Parameters().ToList();
        var extra = new Dictionary<string, string>
        {
            ["step"] = state.Step.ToString(CultureInfo.InvariantCulture),
            ["training"] = state.Fingerprint,
        };
        foreach (var (rate, values) in emas)
        {
            var emaMeta = new Dictionary<string, string>(extra) { ["ema_rate"] = TrainingOptions.RateName(rate) };
            ModelWeights.Save(model, EmaFile(runDir, rate, state.Step), emaMeta, values);
        }
        var sources = new List<SafetensorSource>();
        for (int i = 0; i < parameters.Count; i++)
        {
            var (m, v) = moments[i];
            sources.Add(new SafetensorSource(parameters[i].Name + ".exp_avg", parameters[i].Shape, span => m.CopyTo(span)));
            sources.Add(new SafetensorSource(parameters[i].Name + ".exp_avg_sq", parameters[i].Shape, span => v.CopyTo(span)));
        }
        SafetensorsFile.Write(OptimizerFile(runDir, state.Step), sources, new Dictionary<string, string>(extra)
        {
            ["format"] = OptimizerFormat,
            ["adam_steps"] = state.AdamSteps.ToString(CultureInfo.InvariantCulture),
            ["lg_loss_scale"] = state.LgLossScale.ToString("R", CultureInfo.InvariantCulture),
            ["sampler"] = state.SamplerState,
        });
        ModelWeights.Save(model, ModelFile(runDir, state.Step), extra);
    }

    /// <summary>
    /// Loads step <paramref name="step"/>'s optimiser state into <paramref name="moments"/> and returns its scalars; refuses
    /// a run made with other options (its fingerprint differs).
    /// </summary>
    public static OptimizerState LoadOptimizer(string runDir, long step, UNetModel model, IReadOnlyList<(Tensor M, Tensor V)> moments,
        string fingerprint)
    {
        string path = OptimizerFile(runDir, step);
        using var file = SafetensorsFile.Open(path);
        if (file.Metadata.GetValueOrDefault("format") != OptimizerFormat)
        {
            throw DiffSegException.For(path, "is not an optimiser state written by 'diffseg train-ddpm'");
        }
        string saved = file.Metadata.GetValueOrDefault("training") ?? "";
        if (saved != fingerprint)
        {
            throw DiffSegException.For(runDir, "holds a run with other flags or training options; use another -o, or the same " +
                                               $"options (saved: {saved})");
        }
        var parameters = model.Parameters().ToList();
        for (int i = 0; i < parameters.Count; i++)
        {
            Read(file, parameters[i].Name + ".exp_avg", parameters[i].Shape, moments[i].M);
            Read(file, parameters[i].Name + ".exp_avg_sq", parameters[i].Shape, moments[i].V);
        }
        long adamSteps = Long(file, "adam_steps");
        if (adamSteps < 0 || adamSteps > step)
        {
            throw DiffSegException.For(path, $"has adam_steps {adamSteps}, not a count of the {step} steps taken");
        }
        if (!double.TryParse(file.Metadata.GetValueOrDefault("lg_loss_scale", "20"), NumberStyles.Float, CultureInfo.InvariantCulture,
                out double lg) || !double.IsFinite(lg))
        {
            throw DiffSegException.For(path, "has no finite lg_loss_scale in its metadata");
        }
        return new OptimizerState(step, adamSteps, lg, file.Metadata.GetValueOrDefault("sampler", ""), saved);
    }

    /// <summary>Reads a model-format file's tensors into <paramref name="into"/> (one per parameter, in order).</summary>
    public static void LoadWeights(string path, UNetModel model, IReadOnlyList<Tensor> into)
    {
        using var file = SafetensorsFile.Open(path);
        var parameters = model.Parameters().ToList();
        for (int i = 0; i < parameters.Count; i++)
        {
            Read(file, parameters[i].Name, parameters[i].Shape, into[i]);
        }
    }

    static void Read(SafetensorsFile file, string name, int[] shape, Tensor into)
    {
        if (!file.TryGet(name, out var entry) || !entry.Shape.SequenceEqual(shape))
        {
            throw DiffSegException.For(file.Path, $"has no tensor '{name}' of shape ({string.Join(", ", shape)})");
        }
        using var mapped = file.Map(entry);
        // A NaN weight, EMA value or moment would train on silently and be saved again: refuse it, naming the file.
        int bad = FirstNonFinite(mapped.Span);
        if (bad >= 0)
        {
            throw DiffSegException.For(file.Path, $"tensor '{name}' holds {mapped.Span[bad]} at flat index {bad}: not a state to resume");
        }
        into.CopyFrom(mapped.Span);
    }

    static int FirstNonFinite(ReadOnlySpan<float> values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                return i;
            }
        }
        return -1;
    }

    static long Long(SafetensorsFile file, string key) =>
        long.TryParse(file.Metadata.GetValueOrDefault(key), NumberStyles.Integer, CultureInfo.InvariantCulture, out long v)
            ? v
            : throw DiffSegException.For(file.Path, $"has no integer '{key}' in its metadata");
}
