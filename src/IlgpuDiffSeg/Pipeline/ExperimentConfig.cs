using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>
/// An experiment file in ddpm-segmentation's format (experiments/&lt;dataset&gt;/ddpm.json), so a user's existing files
/// work once <c>model_path</c> points at a converted checkpoint. Extra keys of ours: <c>noise_path</c>, <c>seed</c>,
/// <c>feature_path</c> ("lean" | "materialized"), <c>feature_storage</c> ("fp32" | "fp16"), <c>max_epochs</c>.
/// Relative paths are taken from the working directory, as the original does, or else from the config's folder.
/// </summary>
public sealed class ExperimentConfig
{
    public required string SourcePath { get; init; }
    public required string ModelPath { get; init; }
    public required string TrainingPath { get; init; }
    public required string TestingPath { get; init; }
    public required string ExpDir { get; init; }
    public required int[] Dim { get; init; }
    public required int[] Steps { get; init; }
    public required int[] Blocks { get; init; }
    public required int NumberClass { get; init; }
    public required int IgnoreLabel { get; init; }
    public int ModelNum { get; init; } = 10;
    public int BatchSize { get; init; } = 64;
    public int TrainingNumber { get; init; }
    public int TestingNumber { get; init; }
    public bool ShareNoise { get; init; } = true;
    public string Category { get; init; } = "";
    public string? NoisePath { get; init; }
    public int Seed { get; init; }
    public string FeaturePath { get; init; } = "lean";
    public string FeatureStorage { get; init; } = "fp32";
    public int MaxEpochs { get; init; } = 100;

    public int ImageSize => Dim[0];

    /// <summary>Keys the original's files carry that have no effect here (as in the original's train_interpreter).</summary>
    static readonly HashSet<string> Ignored =
        ["model_type", "validation_path", "max_training", "upsample_mode", "input_activations", "deeplab_res", "proj_name"];

    public static ExperimentConfig Load(string path, Action<string>? warn = null)
    {
        JsonObject o;
        var bytes = IO.InputFile.ReadUtf8(path, MaxFileBytes, "an experiment file");
        try
        {
            o = JsonNode.Parse(bytes.Span) as JsonObject ?? throw new JsonException("the top level is not an object");
            // Objects are built lazily; counting builds it, so duplicate keys fail here.
            _ = o.Count;
        }
        catch (JsonException e)
        {
            throw DiffSegException.For(path, $"not valid JSON ({e.Message})");
        }
        catch (ArgumentException e)
        {
            throw DiffSegException.For(path, $"not valid JSON ({e.Message.Split(" (Parameter")[0]})");
        }
        catch (InvalidOperationException e)
        {
            throw DiffSegException.For(path, $"not valid JSON ({e.Message.TrimEnd('.')})");
        }
        var reader = new Reader(path, o);
        string baseDir = Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".";
        string Resolve(string key)
        {
            string p = reader.String(key);
            return string.IsNullOrWhiteSpace(p) ? throw DiffSegException.For(path, $"'{key}' is empty") : ResolvePath(p);
        }
        string ResolvePath(string p) => Path.IsPathRooted(p) || File.Exists(p) || Directory.Exists(p) ? p
            : File.Exists(Path.Combine(baseDir, p)) || Directory.Exists(Path.Combine(baseDir, p)) ? Path.Combine(baseDir, p) : p;

        var steps = reader.IntArray("steps");
        var blocks = reader.IntArray("blocks");
        var dim = reader.IntArray("dim");
        if (dim.Length != 3 || dim[0] != dim[1] || dim[0] < 8 || dim[0] > MaxImageSize || dim[2] < 1 || dim[2] > MaxFeatureDim)
        {
            throw DiffSegException.For(path, $"'dim' must be [size, size, feature_dim] with size in 8..{MaxImageSize} and feature_dim in " +
                                             $"1..{MaxFeatureDim}, got [{string.Join(", ", dim)}]");
        }
        if (steps.Length is 0 or > 64 || steps.Any(t => t < 0))
        {
            throw DiffSegException.For(path, $"'steps' must hold 1 to 64 diffusion steps t ≥ 0, got {reader.Text("steps")}");
        }
        if (blocks.Length is 0 or > 64 || blocks.Any(b => b < 0))
        {
            throw DiffSegException.For(path, $"'blocks' must hold 1 to 64 decoder block indices ≥ 0, got {reader.Text("blocks")}");
        }
        if (reader.Optional("upsample_mode") is not null && reader.String("upsample_mode") != "bilinear")
        {
            throw DiffSegException.For(path, "'upsample_mode' must be \"bilinear\" (the only mode the original's DDPM configs use)");
        }
        if (reader.Optional("input_activations") is { } ia && ia.GetValueKind() == JsonValueKind.True)
        {
            throw DiffSegException.For(path, "'input_activations': true (SwAV-style block inputs) is not supported for DDPM features");
        }
        string expDir = reader.String("exp_dir");
        var config = new ExperimentConfig
        {
            SourcePath = path,
            ModelPath = Resolve("model_path"),
            TrainingPath = Resolve("training_path"),
            TestingPath = Resolve("testing_path"),
            // The original appends "<steps>_<blocks>" to exp_dir.
            ExpDir = Path.Combine(expDir, $"{string.Join("_", steps)}_{string.Join("_", blocks)}"),
            Dim = dim,
            Steps = steps,
            Blocks = blocks,
            NumberClass = reader.Int("number_class"),
            IgnoreLabel = reader.Int("ignore_label"),
            ModelNum = reader.Int("model_num", 10),
            BatchSize = reader.Int("batch_size", 64),
            TrainingNumber = reader.Int("training_number", 0),
            TestingNumber = reader.Int("testing_number", 0),
            ShareNoise = reader.Bool("share_noise", true),
            Category = reader.String("category", ""),
            NoisePath = reader.Optional("noise_path") is null ? null : Resolve("noise_path"),
            Seed = reader.Int("seed", 0),
            FeaturePath = reader.Choice("feature_path", "lean", "lean", "materialized"),
            FeatureStorage = reader.Choice("feature_storage", "fp32", "fp32", "fp16"),
            MaxEpochs = reader.Int("max_epochs", 100),
        };
        if (config.NumberClass < 2 || config.NumberClass > 255)
        {
            throw DiffSegException.For(path, $"'number_class' must be in [2, 255], got {config.NumberClass}");
        }
        if (config.IgnoreLabel < 0 || config.IgnoreLabel > 255)
        {
            throw DiffSegException.For(path, $"'ignore_label' must be in [0, 255], got {config.IgnoreLabel}");
        }
        void Range(string key, long value, long min, long max)
        {
            if (value < min || value > max)
            {
                throw DiffSegException.For(path, $"'{key}' is {value}, expected {min}..{max}");
            }
        }
        Range("model_num", config.ModelNum, 1, MaxMembers);
        Range("batch_size", config.BatchSize, 2, 1 << 20);
        Range("max_epochs", config.MaxEpochs, 1, 1_000_000);
        Range("training_number", config.TrainingNumber, 0, int.MaxValue);
        Range("testing_number", config.TestingNumber, 0, int.MaxValue);
        foreach (var (key, value) in new[] { ("exp_dir", expDir), ("model_path", config.ModelPath), ("training_path", config.TrainingPath),
                     ("testing_path", config.TestingPath) })
        {
            if (string.IsNullOrWhiteSpace(value))
            {
                throw DiffSegException.For(path, $"'{key}' is empty");
            }
        }
        foreach (var key in o.Select(kv => kv.Key).Where(k => !reader.Seen.Contains(k) && !Ignored.Contains(k)))
        {
            warn?.Invoke($"{path}: ignoring unknown key '{key}'");
        }
        return config;
    }

    /// <summary>Experiment files are small; anything longer is not one.</summary>
    public const int MaxFileBytes = 1 << 20;

    /// <summary>Bounds on what a config may ask for, far above the original's experiments (256², 8448 channels, 10 members).</summary>
    public const int MaxImageSize = 4096;

    public const int MaxFeatureDim = 1 << 20;

    public const int MaxMembers = 100;

    /// <summary>
    /// Refuses an ensemble that was not trained for this config: a different number of members than model_num, or steps,
    /// blocks, classes, ignore label or image size in its metadata (written by 'diffseg train') that differ from the config's.
    /// </summary>
    public void CheckEnsemble(IReadOnlyDictionary<string, string> metadata, int members, string ensemblePath)
    {
        if (members != ModelNum)
        {
            throw DiffSegException.For(ensemblePath, $"holds {members} trained members but model_num in {SourcePath} is {ModelNum}; " +
                                                     "train again or set model_num to match");
        }
        foreach (var (key, expected) in new[]
                 {
                     ("steps", string.Join(",", Steps)), ("blocks", string.Join(",", Blocks)),
                     ("number_class", NumberClass.ToString(CultureInfo.InvariantCulture)),
                     ("ignore_label", IgnoreLabel.ToString(CultureInfo.InvariantCulture)),
                     ("image_size", ImageSize.ToString(CultureInfo.InvariantCulture)),
                 })
        {
            if (metadata.TryGetValue(key, out var stored) && stored != expected)
            {
                string shown = stored.Length > 40 ? stored[..40] + "…" : stored;
                throw DiffSegException.For(ensemblePath, $"was trained with {key} {shown} but {SourcePath} gives {expected}; " +
                                                         "train again for this config");
            }
        }
    }

    /// <summary>Typed access to the JSON object; every error names the file and the key.</summary>
    sealed class Reader(string path, JsonObject o)
    {
        public HashSet<string> Seen { get; } = new();

        public JsonNode? Optional(string key)
        {
            Seen.Add(key);
            return o[key];
        }

        JsonNode Required(string key) => Optional(key) ?? throw DiffSegException.For(path, $"missing key '{key}'");

        public string Text(string key)
        {
            string text = o[key]?.ToJsonString() ?? "null";
            return text.Length > 60 ? text[..60] + "…" : text;
        }

        DiffSegException Wrong(string key, string expected) => DiffSegException.For(path, $"'{key}' is {Text(key)}, expected {expected}");

        public string String(string key, string? fallback = null)
        {
            var n = fallback is null ? Required(key) : Optional(key);
            if (n is null)
            {
                return fallback!;
            }
            return n is JsonValue v && v.GetValueKind() == JsonValueKind.String && !v.GetValue<string>().Contains('\0')
                ? v.GetValue<string>()
                : throw Wrong(key, "a string (without NUL characters)");
        }

        public int Int(string key, int? fallback = null)
        {
            var n = fallback is null ? Required(key) : Optional(key);
            if (n is null)
            {
                return fallback!.Value;
            }
            return n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out int i) ? i : throw Wrong(key, "an integer");
        }

        public bool Bool(string key, bool fallback)
        {
            var n = Optional(key);
            if (n is null)
            {
                return fallback;
            }
            return n is JsonValue v && v.GetValueKind() is JsonValueKind.True or JsonValueKind.False ? v.GetValue<bool>() : throw Wrong(key, "true or false");
        }

        public int[] IntArray(string key)
        {
            var n = Required(key);
            if (n is JsonArray a && a.All(e => e is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out int _)))
            {
                return a.Select(e => e!.GetValue<int>()).ToArray();
            }
            throw Wrong(key, "a list of integers");
        }

        public string Choice(string key, string fallback, params string[] allowed)
        {
            var value = String(key, fallback);
            return allowed.Contains(value) ? value : throw Wrong(key, "one of " + string.Join(", ", allowed.Select(a => $"\"{a}\"")));
        }
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"steps [{string.Join(",", Steps)}], blocks [{string.Join(",", Blocks)}], {NumberClass} classes (ignore {IgnoreLabel}), " +
        $"{ModelNum} members, batch {BatchSize}");
}
