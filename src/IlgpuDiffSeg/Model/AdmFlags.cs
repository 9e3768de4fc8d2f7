using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Model;

/// <summary>
/// guided-diffusion's model and diffusion flags (script_util.model_and_diffusion_defaults), with its names and
/// defaults, read from the FLAGS.json a user already has for a checkpoint.
/// </summary>
public sealed class AdmFlags
{
    public int ImageSize { get; set; } = 64;
    public int NumChannels { get; set; } = 128;
    public int NumResBlocks { get; set; } = 2;
    public int NumHeads { get; set; } = 4;
    public int NumHeadsUpsample { get; set; } = -1;
    public int NumHeadChannels { get; set; } = -1;
    public string AttentionResolutions { get; set; } = "16,8";
    public string ChannelMult { get; set; } = "";
    public double Dropout { get; set; }
    public bool ClassCond { get; set; }
    public bool UseCheckpoint { get; set; }
    public bool UseScaleShiftNorm { get; set; } = true;
    public bool ResblockUpdown { get; set; }
    public bool UseFp16 { get; set; }
    public bool UseNewAttentionOrder { get; set; }
    public bool LearnSigma { get; set; }
    public int DiffusionSteps { get; set; } = 1000;
    public string NoiseSchedule { get; set; } = "linear";
    public string TimestepRespacing { get; set; } = "";
    public bool UseKl { get; set; }
    public bool PredictXstart { get; set; }
    public bool RescaleTimesteps { get; set; }
    public bool RescaleLearnedSigmas { get; set; }

    /// <summary>With learn_sigma false: the posterior variance (FIXED_SMALL) instead of β (FIXED_LARGE). An argument of
    /// create_gaussian_diffusion that guided-diffusion's scripts do not expose as a flag; accepted here by that name.</summary>
    public bool SigmaSmall { get; set; }

    /// <summary>A super-resolution model (sr_create_model, SuperResModel): its size (image_size follows it) and the size of
    /// its low-resolution input; 0 for an ordinary model.</summary>
    public int LargeSize { get; set; }

    public int SmallSize { get; set; }

    public bool IsSuperResolution => LargeSize > 0;

    /// <summary>Image channels; a super-resolution model takes twice as many (x, then the upsampled low-resolution image).</summary>
    public const int InChannels = 3;

    public int ModelInChannels => IsSuperResolution ? 2 * InChannels : InChannels;
    public const int ImageNetClasses = 1000;
    public int OutChannels => LearnSigma ? 6 : 3;
    public int NumClasses => ClassCond ? ImageNetClasses : 0;
    public int TimeEmbedDim => 4 * NumChannels;

    /// <summary>Channel multipliers per level; "" picks guided-diffusion's default for the image size.</summary>
    public double[] ChannelMultipliers()
    {
        if (ChannelMult.Trim() == "" && IsSuperResolution)
        {
            // sr_create_model's own table (512 differs from the base model's).
            return LargeSize switch
            {
                512 or 256 => [1, 1, 2, 2, 4, 4],
                64 => [1, 2, 3, 4],
                _ => throw new DiffSegException($"channel_mult is empty and large_size {LargeSize} has no default (guided-diffusion " +
                                                "knows 64, 256, 512); set channel_mult"),
            };
        }
        if (ChannelMult.Trim() == "")
        {
            return ImageSize switch
            {
                512 => [0.5, 1, 1, 2, 2, 4, 4],
                256 => [1, 1, 2, 2, 4, 4],
                128 => [1, 1, 2, 3, 4],
                64 => [1, 2, 3, 4],
                _ => throw new DiffSegException($"channel_mult is empty and image_size {ImageSize} has no default " +
                                                "(guided-diffusion knows 64, 128, 256, 512); set channel_mult"),
            };
        }
        return ParseInts(ChannelMult, "channel_mult").Select(v => (double)v).ToArray();
    }

    /// <summary>Downsample rates (image_size / resolution) at which attention blocks are placed.</summary>
    public HashSet<int> AttentionDownsampleRates()
    {
        if (AttentionResolutions.Trim() == "")
        {
            return [];
        }
        return ParseInts(AttentionResolutions, "attention_resolutions").Select(r => r > 0
            ? ImageSize / r
            : throw new DiffSegException($"attention_resolutions has the non-positive value {r}")).ToHashSet();
    }

    static int[] ParseInts(string list, string name)
    {
        try
        {
            return list.Split(',').Select(s => int.Parse(s.Trim(), CultureInfo.InvariantCulture)).ToArray();
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new DiffSegException($"{name} \"{Shorten(list)}\" is not a comma-separated list of integers");
        }
    }

    static readonly Dictionary<string, (Type type, Action<AdmFlags, object> set, Func<AdmFlags, object> get)> Fields = new()
    {
        ["image_size"] = (typeof(int), (f, v) => f.ImageSize = (int)v, f => f.ImageSize),
        ["num_channels"] = (typeof(int), (f, v) => f.NumChannels = (int)v, f => f.NumChannels),
        ["num_res_blocks"] = (typeof(int), (f, v) => f.NumResBlocks = (int)v, f => f.NumResBlocks),
        ["num_heads"] = (typeof(int), (f, v) => f.NumHeads = (int)v, f => f.NumHeads),
        ["num_heads_upsample"] = (typeof(int), (f, v) => f.NumHeadsUpsample = (int)v, f => f.NumHeadsUpsample),
        ["num_head_channels"] = (typeof(int), (f, v) => f.NumHeadChannels = (int)v, f => f.NumHeadChannels),
        ["attention_resolutions"] = (typeof(string), (f, v) => f.AttentionResolutions = (string)v, f => f.AttentionResolutions),
        ["channel_mult"] = (typeof(string), (f, v) => f.ChannelMult = (string)v, f => f.ChannelMult),
        ["dropout"] = (typeof(double), (f, v) => f.Dropout = (double)v, f => f.Dropout),
        ["class_cond"] = (typeof(bool), (f, v) => f.ClassCond = (bool)v, f => f.ClassCond),
        ["use_checkpoint"] = (typeof(bool), (f, v) => f.UseCheckpoint = (bool)v, f => f.UseCheckpoint),
        ["use_scale_shift_norm"] = (typeof(bool), (f, v) => f.UseScaleShiftNorm = (bool)v, f => f.UseScaleShiftNorm),
        ["resblock_updown"] = (typeof(bool), (f, v) => f.ResblockUpdown = (bool)v, f => f.ResblockUpdown),
        ["use_fp16"] = (typeof(bool), (f, v) => f.UseFp16 = (bool)v, f => f.UseFp16),
        ["use_new_attention_order"] = (typeof(bool), (f, v) => f.UseNewAttentionOrder = (bool)v, f => f.UseNewAttentionOrder),
        ["learn_sigma"] = (typeof(bool), (f, v) => f.LearnSigma = (bool)v, f => f.LearnSigma),
        ["diffusion_steps"] = (typeof(int), (f, v) => f.DiffusionSteps = (int)v, f => f.DiffusionSteps),
        ["noise_schedule"] = (typeof(string), (f, v) => f.NoiseSchedule = (string)v, f => f.NoiseSchedule),
        ["timestep_respacing"] = (typeof(string), (f, v) => f.TimestepRespacing = (string)v, f => f.TimestepRespacing),
        ["use_kl"] = (typeof(bool), (f, v) => f.UseKl = (bool)v, f => f.UseKl),
        ["predict_xstart"] = (typeof(bool), (f, v) => f.PredictXstart = (bool)v, f => f.PredictXstart),
        ["rescale_timesteps"] = (typeof(bool), (f, v) => f.RescaleTimesteps = (bool)v, f => f.RescaleTimesteps),
        ["rescale_learned_sigmas"] = (typeof(bool), (f, v) => f.RescaleLearnedSigmas = (bool)v, f => f.RescaleLearnedSigmas),
        ["sigma_small"] = (typeof(bool), (f, v) => f.SigmaSmall = (bool)v, f => f.SigmaSmall),
        ["large_size"] = (typeof(int), (f, v) => f.LargeSize = (int)v, f => f.LargeSize),
        ["small_size"] = (typeof(int), (f, v) => f.SmallSize = (int)v, f => f.SmallSize),
    };

    /// <summary>Flags written only when set: the super-resolution sizes.</summary>
    static readonly HashSet<string> OnlyWhenSet = ["large_size", "small_size"];

    /// <summary>The flag names guided-diffusion knows.</summary>
    public static IEnumerable<string> Names => Fields.Keys;

    public static AdmFlags Load(string path)
    {
        var bytes = InputFile.ReadUtf8(path, 1 << 20, "a flags file");
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(bytes.Span);
        }
        catch (JsonException e)
        {
            throw DiffSegException.For(path, $"not valid JSON ({e.Message})");
        }
        return ParseNode(node, path);
    }

    /// <summary>Parses a JSON object of flags; <paramref name="source"/> names it in errors.</summary>
    public static AdmFlags Parse(string json, string source)
    {
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(json);
        }
        catch (JsonException e)
        {
            throw DiffSegException.For(source, $"not valid JSON ({e.Message})");
        }
        return ParseNode(node, source);
    }

    static AdmFlags ParseNode(JsonNode? node, string source)
    {
        if (node is not JsonObject obj)
        {
            throw DiffSegException.For(source, "not valid flags: the top level is not a JSON object");
        }
        try
        {
            // Objects are built lazily; counting builds it, so duplicate keys fail here.
            _ = obj.Count;
        }
        catch (ArgumentException e)
        {
            throw DiffSegException.For(source, $"not valid JSON ({e.Message.Split(" (Parameter")[0]})");
        }
        catch (InvalidOperationException e)
        {
            throw DiffSegException.For(source, $"not valid JSON ({e.Message.TrimEnd('.')})");
        }
        return FromJson(obj, source);
    }

    public static AdmFlags FromJson(JsonObject obj, string source)
    {
        var flags = new AdmFlags();
        foreach (var (key, node) in obj)
        {
            if (!Fields.TryGetValue(key, out var field))
            {
                string? near = Fields.Keys.OrderBy(k => Distance(k, key)).First();
                string hint = Distance(near, key) <= 3 ? $" (did you mean '{near}'?)" : "";
                throw DiffSegException.For(source, $"unknown flag '{key}'{hint}");
            }
            field.set(flags, Coerce(node, field.type, key, source));
        }
        if (flags.IsSuperResolution || flags.SmallSize != 0)
        {
            // super_res_*.py's flags name the model's size large_size and have no image_size.
            if (flags.LargeSize <= 0 || flags.SmallSize <= 0 || flags.SmallSize > flags.LargeSize)
            {
                throw DiffSegException.For(source, $"large_size {flags.LargeSize} and small_size {flags.SmallSize}: a super-resolution " +
                                                   "model needs both, with 0 < small_size ≤ large_size");
            }
            if (obj.ContainsKey("image_size") && flags.ImageSize != flags.LargeSize)
            {
                throw DiffSegException.For(source, $"image_size {flags.ImageSize} and large_size {flags.LargeSize} disagree");
            }
            flags.ImageSize = flags.LargeSize;
        }
        flags.Validate(source);
        return flags;
    }

    /// <summary>
    /// Refuses values guided-diffusion could not have trained with, before any model is built from them: sizes are bounded
    /// (so a typo such as num_res_blocks 100000 is an error, not gigabytes of modules), the schedule is one it knows.
    /// </summary>
    public void Validate(string source)
    {
        void Range(string key, long value, long min, long max, string? why = null)
        {
            if (value < min || value > max)
            {
                throw DiffSegException.For(source, $"flag '{key}' is {value}, expected {min}..{max}{why}");
            }
        }
        Range("image_size", ImageSize, 8, 8192);
        Range("num_channels", NumChannels, 1, 8192);
        Range("num_res_blocks", NumResBlocks, 0, 64);
        Range("num_heads", NumHeads, 1, 4096);
        if (NumHeadsUpsample != -1)
        {
            Range("num_heads_upsample", NumHeadsUpsample, 1, 4096, " (or -1)");
        }
        if (NumHeadChannels != -1)
        {
            Range("num_head_channels", NumHeadChannels, 1, 8192, " (or -1)");
        }
        Range("diffusion_steps", DiffusionSteps, 1, 1_000_000);
        if (NoiseSchedule is not ("linear" or "cosine"))
        {
            throw DiffSegException.For(source, $"flag 'noise_schedule' is \"{Shorten(NoiseSchedule)}\", expected \"linear\" or \"cosine\"");
        }
        if (!(Dropout >= 0 && Dropout < 1))
        {
            throw DiffSegException.For(source, $"flag 'dropout' is {Dropout.ToString(CultureInfo.InvariantCulture)}, " +
                                               "expected 0 ≤ dropout < 1");
        }
        try
        {
            var mult = ChannelMultipliers();
            if (mult.Length is < 1 or > 10 || mult.Any(m => m is < 0.5 or > 64))
            {
                throw DiffSegException.For(source, $"flag 'channel_mult' is \"{Shorten(ChannelMult)}\", " +
                                                   "expected 1 to 10 multipliers of 1..64");
            }
            if (AttentionResolutions.Trim() != "")
            {
                var res = ParseInts(AttentionResolutions, "attention_resolutions");
                if (res.Length > 16 || res.Any(r => r < 1 || r > ImageSize))
                {
                    throw DiffSegException.For(source, $"flag 'attention_resolutions' is \"{Shorten(AttentionResolutions)}\", " +
                                                       $"expected up to 16 resolutions in 1..image_size ({ImageSize})");
                }
            }
        }
        catch (DiffSegException e) when (!e.Message.StartsWith(source, StringComparison.Ordinal))
        {
            throw DiffSegException.For(source, e.Message);
        }
    }

    static string Shorten(string s) => s.Length > 40 ? s[..40] + "…" : s;

    // Users copy flags from shell scripts, so "True", "256" and [32, 16, 8] are accepted where the
    // intent is plain; anything else is a type error naming the flag.
    static object Coerce(JsonNode? node, Type type, string key, string source)
    {
        string expected = type == typeof(int) ? "an integer" : type == typeof(double) ? "a number" :
            type == typeof(bool) ? "true or false" : "a string";
        try
        {
            if (node is JsonValue v)
            {
                var kind = v.GetValueKind();
                if (type == typeof(int) && kind == JsonValueKind.Number && v.TryGetValue(out int i))
                {
                    return i;
                }
                if (type == typeof(int) && kind == JsonValueKind.String &&
                    int.TryParse(v.GetValue<string>(), NumberStyles.Integer, CultureInfo.InvariantCulture, out i))
                {
                    return i;
                }
                if (type == typeof(double) && kind == JsonValueKind.Number)
                {
                    return v.GetValue<double>();
                }
                if (type == typeof(double) && kind == JsonValueKind.String &&
                    double.TryParse(v.GetValue<string>(), NumberStyles.Float, CultureInfo.InvariantCulture, out var d))
                {
                    return d;
                }
                if (type == typeof(bool) && kind is JsonValueKind.True or JsonValueKind.False)
                {
                    return v.GetValue<bool>();
                }
                if (type == typeof(bool) && kind == JsonValueKind.String)
                {
                    switch (v.GetValue<string>().Trim().ToLowerInvariant())
                    {
                        case "true" or "yes" or "1": return true;
                        case "false" or "no" or "0": return false;
                    }
                }
                if (type == typeof(string) && kind == JsonValueKind.String)
                {
                    return v.GetValue<string>();
                }
                if (type == typeof(string) && kind == JsonValueKind.Number)
                {
                    return v.ToJsonString();
                }
            }
            if (node is JsonArray a && type == typeof(string) && a.All(e => e is JsonValue ev && ev.GetValueKind() == JsonValueKind.Number))
            {
                return string.Join(",", a.Select(e => e!.ToJsonString()));
            }
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            // fall through to the type error
        }
        throw DiffSegException.For(source, $"flag '{key}' is {node?.ToJsonString() ?? "null"}, expected {expected}");
    }

    static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++)
        {
            d[i, 0] = i;
        }
        for (int j = 0; j <= b.Length; j++)
        {
            d[0, j] = j;
        }
        for (int i = 1; i <= a.Length; i++)
        for (int j = 1; j <= b.Length; j++)
        {
            d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        }
        return d[a.Length, b.Length];
    }

    /// <summary>All flags as a JSON object with guided-diffusion's names (stored in converted checkpoints).</summary>
    public string ToJson()
    {
        var o = new JsonObject();
        foreach (var (key, field) in Fields)
        {
            if (OnlyWhenSet.Contains(key) && field.get(this) is 0)
            {
                continue;
            }
            o[key] = field.get(this) switch
            {
                int i => JsonValue.Create(i),
                double d => JsonValue.Create(d),
                bool b => JsonValue.Create(b),
                var s => JsonValue.Create((string)s),
            };
        }
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }
}
