using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace IlgpuDiffSeg.Model;

/// <summary>
/// guided-diffusion's classifier flags (script_util.classifier_defaults, the flags of classifier_sample.py), with its
/// names and defaults: the noisy-image classifier of classifier guidance, an EncoderUNetModel. The diffusion flags that
/// classifier_and_diffusion_defaults adds are accepted and ignored (the sampled model's flags decide the diffusion).
/// Two keys are ours, for small models: <c>classifier_channel_mult</c> (empty: guided-diffusion's choice by image_size)
/// and <c>classifier_num_head_channels</c> (guided-diffusion fixes 64).
/// </summary>
public sealed class ClassifierFlags
{
    public int ImageSize { get; set; } = 64;
    public bool ClassifierUseFp16 { get; set; }
    public int ClassifierWidth { get; set; } = 128;
    public int ClassifierDepth { get; set; } = 2;
    public string ClassifierAttentionResolutions { get; set; } = "32,16,8";
    public bool ClassifierUseScaleShiftNorm { get; set; } = true;
    public bool ClassifierResblockUpdown { get; set; } = true;
    public string ClassifierPool { get; set; } = "attention";
    public string ClassifierChannelMult { get; set; } = "";
    public int ClassifierNumHeadChannels { get; set; } = 64;

    /// <summary>create_classifier's out_channels: the ImageNet classes.</summary>
    public int OutChannels => AdmFlags.ImageNetClasses;

    public int TimeEmbedDim => 4 * ClassifierWidth;

    static readonly string[] DiffusionFlags =
    [
        "learn_sigma", "diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl", "predict_xstart", "rescale_timesteps",
        "rescale_learned_sigmas",
    ];

    /// <summary>Whether a flags object describes a classifier (it carries a classifier_* flag).</summary>
    public static bool Describes(JsonObject flags) => flags.Any(kv => kv.Key.StartsWith("classifier_", StringComparison.Ordinal));

    /// <summary>The flags as the underlying UNet flags of its torso (the encoder half of an ADM with these settings).</summary>
    public AdmFlags Torso() => new()
    {
        ImageSize = ImageSize,
        NumChannels = ClassifierWidth,
        NumResBlocks = ClassifierDepth,
        NumHeads = 1,
        NumHeadChannels = ClassifierNumHeadChannels,
        AttentionResolutions = ClassifierAttentionResolutions,
        ChannelMult = ClassifierChannelMult,
        UseScaleShiftNorm = ClassifierUseScaleShiftNorm,
        ResblockUpdown = ClassifierResblockUpdown,
        UseFp16 = ClassifierUseFp16,
    };

    public static ClassifierFlags Load(string path)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw DiffSegException.For(path, "file not found");
        }
        return Parse(text, path);
    }

    public static ClassifierFlags Parse(string json, string source)
    {
        JsonObject obj;
        try
        {
            obj = JsonNode.Parse(json) as JsonObject ?? throw new JsonException("the top level is not an object");
            _ = obj.Count;
        }
        catch (Exception e) when (e is JsonException or ArgumentException)
        {
            throw DiffSegException.For(source, $"not valid JSON ({e.Message.Split(" (Parameter")[0]})");
        }
        var f = new ClassifierFlags();
        foreach (var (key, node) in obj)
        {
            if (DiffusionFlags.Contains(key))
            {
                continue;
            }
            string text = node is JsonValue v && v.GetValueKind() == JsonValueKind.String
                ? v.GetValue<string>()
                : node?.ToJsonString() ?? "";
            if (node is JsonArray a)
            {
                text = string.Join(",", a.Select(e => e?.ToJsonString()));
            }
            switch (key)
            {
                case "image_size": f.ImageSize = Int(key, text, source); break;
                case "classifier_use_fp16": f.ClassifierUseFp16 = Bool(key, text, source); break;
                case "classifier_width": f.ClassifierWidth = Int(key, text, source); break;
                case "classifier_depth": f.ClassifierDepth = Int(key, text, source); break;
                case "classifier_attention_resolutions": f.ClassifierAttentionResolutions = text; break;
                case "classifier_use_scale_shift_norm": f.ClassifierUseScaleShiftNorm = Bool(key, text, source); break;
                case "classifier_resblock_updown": f.ClassifierResblockUpdown = Bool(key, text, source); break;
                case "classifier_pool": f.ClassifierPool = text; break;
                case "classifier_channel_mult": f.ClassifierChannelMult = text; break;
                case "classifier_num_head_channels": f.ClassifierNumHeadChannels = Int(key, text, source); break;
                default: throw DiffSegException.For(source, $"unknown classifier flag '{key}'");
            }
        }
        if (f.ClassifierPool is not ("attention" or "adaptive"))
        {
            throw DiffSegException.For(source, $"classifier_pool '{f.ClassifierPool}': attention and adaptive are supported");
        }
        return f;
    }

    static int Int(string key, string text, string source) =>
        int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v)
            ? v
            : throw DiffSegException.For(source, $"flag '{key}' is {text}, expected an integer");

    static bool Bool(string key, string text, string source) => text.Trim().ToLowerInvariant() switch
    {
        "true" or "1" or "yes" => true,
        "false" or "0" or "no" => false,
        _ => throw DiffSegException.For(source, $"flag '{key}' is {text}, expected true or false"),
    };

    /// <summary>All flags as a JSON object with guided-diffusion's names (stored in converted classifiers).</summary>
    public string ToJson() => new JsonObject
    {
        ["image_size"] = ImageSize,
        ["classifier_use_fp16"] = ClassifierUseFp16,
        ["classifier_width"] = ClassifierWidth,
        ["classifier_depth"] = ClassifierDepth,
        ["classifier_attention_resolutions"] = ClassifierAttentionResolutions,
        ["classifier_use_scale_shift_norm"] = ClassifierUseScaleShiftNorm,
        ["classifier_resblock_updown"] = ClassifierResblockUpdown,
        ["classifier_pool"] = ClassifierPool,
        ["classifier_channel_mult"] = ClassifierChannelMult,
        ["classifier_num_head_channels"] = ClassifierNumHeadChannels,
    }.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
}
