using System.Globalization;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Model;

/// <summary>Converting guided-diffusion's classifier checkpoints (EncoderUNetModel) and loading converted ones.</summary>
public static class ClassifierWeights
{
    public const string FormatTag = "ilgpudiffseg-classifier-v1";

    /// <summary>Whether a flags file describes a classifier (it carries a classifier_* flag); false when unreadable.</summary>
    public static bool IsClassifierFlags(string path)
    {
        try
        {
            return System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path)) is System.Text.Json.Nodes.JsonObject o &&
                   ClassifierFlags.Describes(o);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Text.Json.JsonException)
        {
            return false;
        }
    }

    /// <summary>Builds the classifier the flags describe, naming the flags' source in any error.</summary>
    public static EncoderUNetModel Build(ClassifierFlags flags, string source)
    {
        try
        {
            return new EncoderUNetModel(flags);
        }
        catch (DiffSegException e)
        {
            throw DiffSegException.For(source, e.Message);
        }
    }

    /// <summary>Throws, naming <paramref name="source"/>, unless the tensors are exactly the classifier's parameters.</summary>
    public static void CheckAgainst(EncoderUNetModel model, IReadOnlyDictionary<string, int[]> available, string source)
    {
        var expected = model.Parameters().ToDictionary(p => p.Name);
        if (expected.Keys.FirstOrDefault(k => !available.ContainsKey(k)) is { } missing)
        {
            throw DiffSegException.For(source, $"missing key '{missing}' that the classifier flags require (check classifier_depth, " +
                                               "classifier_attention_resolutions, classifier_resblock_updown, classifier_pool)");
        }
        if (available.Keys.FirstOrDefault(k => !expected.ContainsKey(k)) is { } extra)
        {
            bool diffusionModel = extra.StartsWith("label_emb.", StringComparison.Ordinal) ||
                                  extra.StartsWith("output_blocks.", StringComparison.Ordinal);
            string hint = diffusionModel
                ? " — it is a diffusion model, not a classifier"
                : "";
            throw DiffSegException.For(source, $"unexpected key '{extra}', not part of the classifier the flags describe{hint}");
        }
        foreach (var (name, p) in expected)
        {
            if (!available[name].SequenceEqual(p.Shape))
            {
                throw DiffSegException.For(source, $"'{name}' has shape ({string.Join(", ", available[name])}), the classifier " +
                                                   $"flags give {p.ShapeString} (check image_size, classifier_width, " +
                                                   "classifier_use_scale_shift_norm)");
            }
        }
    }

    /// <summary>Converts an official classifier checkpoint (PyTorch zip) to safetensors with its flags in the metadata.</summary>
    public static void Convert(string checkpointPath, string flagsPath, string outputPath, Action<string>? log = null)
    {
        AtomicFile.CheckWritable(outputPath);
        var flags = ClassifierFlags.Load(flagsPath);
        var model = Build(flags, flagsPath);
        using var ckpt = TorchCheckpoint.Open(checkpointPath);
        var byName = ckpt.Tensors.ToDictionary(t => t.Name);
        CheckAgainst(model, byName.ToDictionary(kv => kv.Key, kv => kv.Value.Shape), checkpointPath);
        var sources = model.Parameters()
            .Select(p => new SafetensorSource(p.Name, p.Shape, span => ckpt.ReadFloat32(byName[p.Name], span)))
            .ToList();
        var metadata = new Dictionary<string, string>
        {
            ["format"] = FormatTag,
            ["flags"] = flags.ToJson(),
            ["source"] = Path.GetFileName(checkpointPath),
            ["parameters"] = model.ParameterCount.ToString(CultureInfo.InvariantCulture),
        };
        log?.Invoke($"{checkpointPath}: classifier, {sources.Count} tensors, {model.ParameterCount:N0} parameters match the flags");
        SafetensorsFile.Write(outputPath, sources, metadata);
    }

    /// <summary>The classifier flags of a converted file; refuses a converted diffusion model with a hint.</summary>
    public static ClassifierFlags FlagsOf(SafetensorsFile file)
    {
        if (!file.Metadata.TryGetValue("format", out var format) || format != FormatTag ||
            !file.Metadata.TryGetValue("flags", out var json))
        {
            throw DiffSegException.For(file.Path, format == ModelWeights.FormatTag
                ? "is a diffusion model, not a classifier (convert the classifier checkpoint with its classifier_* flags)"
                : "is not a converted classifier; convert it with 'diffseg convert CLASSIFIER.pt --flags FLAGS.json -o C.safetensors'");
        }
        return ClassifierFlags.Parse(json, file.Path + " (metadata)");
    }

    /// <summary>Opens a converted classifier and uploads its weights, with gradient buffers (its backward sums into them).</summary>
    public static EncoderUNetModel Load(string path, ExecutionPlan plan)
    {
        if (!File.Exists(path))
        {
            throw DiffSegException.For(path, "file not found");
        }
        using var file = SafetensorsFile.Open(path);
        var model = Build(FlagsOf(file), path);
        CheckAgainst(model, file.Entries.ToDictionary(e => e.Name, e => e.Shape), path);
        model.Plan = plan;
        try
        {
            foreach (var p in model.Parameters())
            {
                file.TryGet(p.Name, out var entry);
                using var mapped = file.Map(entry);
                ModelWeights.Place(p, plan, mapped.Span, keepFp32: true);
            }
            if (plan.HoldsConvWeightsInHalf)
            {
                ModelWeights.AddHalfCopies(model);
            }
            model.AllocateGradients(plan.Device);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        return model;
    }
}
