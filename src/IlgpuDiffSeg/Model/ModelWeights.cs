using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Model;

/// <summary>Checking a set of named tensors against a model, converting official checkpoints, loading converted ones.</summary>
public static class ModelWeights
{
    public const string FormatTag = "ilgpudiffseg-adm-v1";

    /// <summary>
    /// Throws, naming <paramref name="source"/>, when the tensors are not exactly the model's parameters: a missing
    /// key, an unexpected key, or a shape the flags contradict. Hints name the flag that usually explains it.
    /// </summary>
    public static void CheckAgainst(UNetModel model, IReadOnlyDictionary<string, int[]> available, string source)
    {
        var expected = model.Parameters().ToDictionary(p => p.Name);
        var missing = expected.Keys.Where(k => !available.ContainsKey(k)).ToList();
        var unexpected = available.Keys.Where(k => !expected.ContainsKey(k)).ToList();
        if (missing.Count > 0 || unexpected.Count > 0)
        {
            string what = missing.Count > 0
                ? $"missing key '{missing[0]}'{More(missing)} that the flags require" +
                  (unexpected.Count > 0 ? $", and {unexpected.Count} unexpected (e.g. '{unexpected[0]}')" : "")
                : $"unexpected key '{unexpected[0]}'{More(unexpected)}, not part of the model the flags describe";
            throw DiffSegException.For(source, what + Hint(missing.Concat(unexpected).ToList(), model.Flags));
        }
        foreach (var (name, p) in expected)
        {
            var shape = available[name];
            if (!shape.SequenceEqual(p.Shape))
            {
                string hint = name.StartsWith("out.2.", StringComparison.Ordinal) && shape.Length > 0 && shape[0] != p.Shape[0]
                    ? $" (learn_sigma is {(model.Flags.LearnSigma ? "true" : "false")} in the flags)"
                    : " (check num_channels, channel_mult, num_res_blocks, attention_resolutions, use_scale_shift_norm)";
                throw DiffSegException.For(source, $"'{name}' has shape ({string.Join(", ", shape)}), the flags give {p.ShapeString}{hint}");
            }
        }
    }

    /// <summary>Weights must be finite: a NaN would silently turn every output and feature into NaN.</summary>
    static void RequireFinite(string path, string name, ReadOnlySpan<float> values, int[] shape)
    {
        int bad = Finite.IndexOfNonFinite(values);
        if (bad >= 0)
        {
            throw DiffSegException.For(path, $"weight '{name}' holds {Finite.Name(values[bad])} at index {Npy.IndexString(shape, bad)}");
        }
    }

    static string More(List<string> keys) => keys.Count > 1 ? $" (and {keys.Count - 1} more)" : "";

    static string Hint(List<string> keys, AdmFlags flags)
    {
        if (keys.Any(k => k.StartsWith("label_emb.", StringComparison.Ordinal)))
        {
            return $" (class_cond is {(flags.ClassCond ? "true" : "false")} in the flags)";
        }
        if (keys.Any(k => k.Contains(".qkv.", StringComparison.Ordinal) || k.Contains(".proj_out.", StringComparison.Ordinal)))
        {
            return " (check attention_resolutions)";
        }
        if (keys.Any(k => k.Contains(".op.", StringComparison.Ordinal) || k.EndsWith(".conv.weight", StringComparison.Ordinal)))
        {
            return " (check resblock_updown)";
        }
        return "";
    }

    /// <summary>
    /// Converts an official guided-diffusion checkpoint (PyTorch zip) to safetensors, after checking every key and shape
    /// against the flags. The flags are stored in the file's metadata. Writes nothing on failure.
    /// </summary>
    public static void Convert(string checkpointPath, string flagsPath, string outputPath, Action<string>? log = null)
    {
        AtomicFile.CheckWritable(outputPath);
        var flags = AdmFlags.Load(flagsPath);
        var model = BuildChecked(flags, flagsPath);
        using var ckpt = TorchCheckpoint.Open(checkpointPath);
        var byName = new Dictionary<string, TorchTensor>();
        foreach (var t in ckpt.Tensors)
        {
            byName[t.Name] = t;
        }
        CheckAgainst(model, byName.ToDictionary(kv => kv.Key, kv => kv.Value.Shape), checkpointPath);
        var sources = model.Parameters()
            .Select(p => new SafetensorSource(p.Name, p.Shape, span =>
            {
                ckpt.ReadFloat32(byName[p.Name], span);
                RequireFinite(checkpointPath, p.Name, span, p.Shape);
            }))
            .ToList();
        var metadata = new Dictionary<string, string>
        {
            ["format"] = FormatTag,
            ["flags"] = flags.ToJson(),
            ["source"] = Path.GetFileName(checkpointPath),
            ["parameters"] = model.ParameterCount.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        log?.Invoke($"{checkpointPath}: {sources.Count} tensors, {model.ParameterCount:N0} parameters match the flags");
        int lastShown = -1;
        SafetensorsFile.Write(outputPath, sources, metadata, (done, total) =>
        {
            int pct = done * 100 / total;
            if (log is not null && pct / 10 != lastShown / 10)
            {
                lastShown = pct;
                log($"  writing {outputPath}: {pct}%");
            }
        });
    }

    /// <summary>
    /// The way back to PyTorch: writes a converted or trained model (safetensors with flags in its metadata) as the .pt
    /// torch.save(model.state_dict()) writes, keys in state_dict order, after checking every key and shape against the
    /// flags. With <paramref name="flagsOutPath"/>, also the flags as FLAGS.json in guided-diffusion's names, which
    /// 'diffseg convert' reads back. Tensors are streamed one at a time from the memory-mapped input. Writes nothing on
    /// failure. An output named *.safetensors is a converted model again (for --half or a new "source" note).
    /// </summary>
    public static void Export(string modelPath, string outputPath, string? flagsOutPath = null, Action<string>? log = null,
        bool half = false, string? source = null)
    {
        bool toSafetensors = outputPath.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase);
        if (!toSafetensors && (half || source is not null))
        {
            throw DiffSegException.For(outputPath, "--half and --source write a .safetensors model; name the output *.safetensors");
        }
        AtomicFile.CheckWritable(outputPath);
        if (flagsOutPath is not null)
        {
            AtomicFile.CheckWritable(flagsOutPath);
            if (AtomicFile.SamePath(flagsOutPath, outputPath))
            {
                throw DiffSegException.For(flagsOutPath, "is also the output checkpoint; give the flags another name");
            }
            if (AtomicFile.SamePath(flagsOutPath, modelPath))
            {
                throw DiffSegException.For(flagsOutPath, "is the input model; give the flags another name");
            }
        }
        if (AtomicFile.SamePath(outputPath, modelPath))
        {
            throw DiffSegException.For(outputPath, "is the input model; give the checkpoint another name");
        }
        using var file = SafetensorsFile.Open(modelPath);
        var flags = FlagsOf(file);
        var model = BuildChecked(flags, modelPath + " (metadata)");
        CheckAgainst(model, file.Entries.ToDictionary(e => e.Name, e => e.Shape), modelPath);
        if (file.Entries.FirstOrDefault(e => e.DType is not ("F32" or "F16")) is { } notFloat)
        {
            throw DiffSegException.For(modelPath, $"tensor '{notFloat.Name}' is {notFloat.DType}; only F32 and F16 models are exported");
        }
        if (toSafetensors)
        {
            var metadata = file.Metadata.ToDictionary();
            if (source is not null)
            {
                metadata["source"] = source;
            }
            var tensors = model.Parameters().Select(p =>
            {
                file.TryGet(p.Name, out var entry);
                return new SafetensorSource(p.Name, p.Shape, span =>
                {
                    using var mapped = file.Map(entry);
                    mapped.Span.CopyTo(span);
                }, half);
            }).ToList();
            try
            {
                SafetensorsFile.Write(outputPath, tensors, metadata);
            }
            catch (DiffSegException e) when (half)
            {
                // A weight past fp16's range is the input's (or the --half request's) problem, not the output file's.
                throw DiffSegException.For(modelPath, $"--half: {e.Message}");
            }
            log?.Invoke($"{modelPath}: {tensors.Count} tensors written as " + (half ? "F16" : "F32"));
            WriteFlags(flags, flagsOutPath, outputPath);
            return;
        }
        var sources = model.Parameters().Select(p =>
        {
            file.TryGet(p.Name, out var entry);
            return TorchTensorSource.Float32(p.Name, p.Shape, span =>
            {
                using var mapped = file.Map(entry);
                mapped.Span.CopyTo(span);
            });
        }).ToList();
        log?.Invoke($"{modelPath}: {sources.Count} tensors, {model.ParameterCount:N0} parameters match the flags");
        int lastShown = -1;
        TorchCheckpointWriter.Write(outputPath, sources, (done, total) =>
        {
            int pct = total == 0 ? 100 : (int)(done * 100 / total);
            if (log is not null && pct / 10 != lastShown / 10)
            {
                lastShown = pct;
                log($"  writing {outputPath}: {pct}%");
            }
        });
        WriteFlags(flags, flagsOutPath, outputPath);
    }

    static void WriteFlags(AdmFlags flags, string? flagsOutPath, string outputPath)
    {
        if (flagsOutPath is null)
        {
            return;
        }
        try
        {
            AtomicFile.Write(flagsOutPath, s => s.Write(System.Text.Encoding.UTF8.GetBytes(flags.ToJson() + "\n")));
        }
        catch
        {
            // Both outputs or neither.
            File.Delete(outputPath);
            throw;
        }
    }

    /// <summary>Builds the model the flags describe, naming the flags' source in any error.</summary>
    public static UNetModel BuildChecked(AdmFlags flags, string flagsSource)
    {
        try
        {
            return new UNetModel(flags);
        }
        catch (DiffSegException e)
        {
            throw DiffSegException.For(flagsSource, e.Message);
        }
    }

    /// <summary>Reads the flags stored by <see cref="Convert"/> in a safetensors file's metadata.</summary>
    public static AdmFlags FlagsOf(SafetensorsFile file)
    {
        if (!file.Metadata.TryGetValue("flags", out var json))
        {
            throw DiffSegException.For(file.Path, "has no model flags in its metadata; convert the checkpoint with " +
                                                  "'diffseg convert MODEL.pt --flags FLAGS.json -o MODEL.safetensors'");
        }
        return AdmFlags.Parse(json, file.Path + " (metadata)");
    }

    /// <summary>
    /// Random weights by the recipe of the shared fixtures (weights N(0, 1/fan_in), GroupNorm gains 1 + 0.1·N, every
    /// other vector 0.1·N), uploaded to the device. For benchmarks and demos that need no trained model.
    /// </summary>
    /// <param name="keepFp32">Keep fp32 copies even where the device holds convolutions in fp16 (weights to be saved).</param>
    public static void InitializeRandom(Module model, ExecutionPlan plan, int seed, bool keepFp32 = false)
    {
        if (model is UNetModel unet)
        {
            unet.Plan = plan;
        }
        // One stream, drawn from one thread: without MathNet's lock per draw the same values come ~1.8× faster (34 against
        // 60 ns a sample, measured) — 552.8M of them for the LSUN-256 model.
        var rng = new MathNet.Numerics.Random.MersenneTwister(seed, threadSafe: false);
        foreach (var p in model.Parameters())
        {
            var values = new float[p.Count];
            bool norm = p.Name.EndsWith(".weight", StringComparison.Ordinal) && p.Shape.Length == 1;
            double scale = p.Shape.Length > 1 ? 1 / Math.Sqrt(p.Count / p.Shape[0]) : 0.1;
            if (p.Name.StartsWith("label_emb.", StringComparison.Ordinal))
            {
                scale = 1;
            }
            for (int i = 0; i < values.Length; i++)
            {
                values[i] = (float)((norm ? 1 : 0) + scale * MathNet.Numerics.Distributions.Normal.Sample(rng, 0, 1));
            }
            Place(p, plan, values, keepFp32);
        }
    }

    /// <summary>
    /// Uploads a parameter's values; a convolution weight goes straight to fp16 rows where the plan holds them so
    /// (ExecutionPlan.HoldsConvWeightsInHalf), through a staging buffer of its own, so that loading never holds more than
    /// one fp32 weight at a time.
    /// </summary>
    internal static void Place(Parameter p, ExecutionPlan plan, ReadOnlySpan<float> values, bool keepFp32 = false)
    {
        p.Release();
        if (p.IsConvolutionWeight && plan.HoldsConvWeightsInHalf && !keepFp32)
        {
            p.Half = HalfWeights.Upload(plan.Device, values, p.Shape);
            return;
        }
        p.Value = plan.Device.Upload(values, p.Shape);
    }

    /// <summary>
    /// Adds fp16 rows (HalfWeights) beside every convolution weight's fp32 tensor: the tensor-core kernel then reads the
    /// rows and every other kernel the tensor, so one model compares kernels. (Loading while the device holds
    /// convolutions in fp16 keeps the rows alone, through Place.)
    /// </summary>
    public static void AddHalfCopies(Module model)
    {
        foreach (var p in model.Parameters().Where(p => p.IsConvolutionWeight && p.Half is null))
        {
            p.Half = HalfWeights.From(p.T);
        }
    }

    /// <summary>
    /// Writes a model's current weights — or <paramref name="values"/>, one tensor per parameter in order (an EMA of them) —
    /// as a converted checkpoint (flags in the metadata, as Convert writes).
    /// </summary>
    public static void Save(UNetModel model, string path, IReadOnlyDictionary<string, string>? extraMetadata = null,
        IReadOnlyList<Tensor>? values = null)
    {
        var metadata = new Dictionary<string, string>
        {
            ["format"] = FormatTag,
            ["flags"] = model.Flags.ToJson(),
            ["parameters"] = model.ParameterCount.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        foreach (var (k, v) in extraMetadata ?? new Dictionary<string, string>())
        {
            metadata[k] = v;
        }
        var parameters = model.Parameters().ToList();
        if (values is null && parameters.FirstOrDefault(p => p.Value is null) is { } missing)
        {
            throw DiffSegException.For(path, $"cannot be written: '{missing.Name}' is " + (missing.Half is null
                ? "not loaded"
                : "held in fp16 only (precision fp16); saving needs the fp32 weights"));
        }
        var sources = parameters.Select((p, i) => new SafetensorSource(p.Name, p.Shape, span => (values?[i] ?? p.T).CopyTo(span))).ToList();
        SafetensorsFile.Write(path, sources, metadata);
    }

    /// <summary>The flags that decide a network's parameters and forward (dropout, checkpointing, fp16 and the diffusion do not).</summary>
    static readonly string[] ArchitectureFlags =
    [
        "image_size", "num_channels", "num_res_blocks", "num_heads", "num_heads_upsample", "num_head_channels", "attention_resolutions",
        "channel_mult", "class_cond", "use_scale_shift_norm", "resblock_updown", "use_new_attention_order", "learn_sigma",
    ];

    /// <summary>
    /// Loads a converted checkpoint's weights, as fp32 (a trainer's master weights), into <paramref name="model"/>, built
    /// from <paramref name="flags"/>: fine-tuning with --init. The checkpoint's flags must describe the same network.
    /// </summary>
    public static void LoadInto(UNetModel model, string path, ExecutionPlan plan, AdmFlags flags)
    {
        using var file = SafetensorsFile.Open(path);
        var theirs = System.Text.Json.Nodes.JsonNode.Parse(FlagsOf(file).ToJson())!.AsObject();
        var ours = System.Text.Json.Nodes.JsonNode.Parse(flags.ToJson())!.AsObject();
        foreach (var name in ArchitectureFlags)
        {
            string a = theirs[name]?.ToJsonString() ?? "", b = ours[name]?.ToJsonString() ?? "";
            if (a != b)
            {
                throw DiffSegException.For(path, $"was made with {name} {a}, the flags give {b}: it is another network");
            }
        }
        CheckAgainst(model, file.Entries.ToDictionary(e => e.Name, e => e.Shape), path);
        model.Plan = plan;
        foreach (var p in model.Parameters())
        {
            file.TryGet(p.Name, out var entry);
            using var mapped = file.Map(entry);
            Place(p, plan, mapped.Span, keepFp32: true);
        }
    }

    /// <summary>
    /// Opens a converted model and uploads its weights to the plan's device (memory-mapped, no full copy in RAM), in the form
    /// the plan runs them.
    /// </summary>
    public static UNetModel Load(string path, ExecutionPlan plan)
    {
        using var file = SafetensorsFile.Open(path);
        var model = BuildChecked(FlagsOf(file), path);
        model.Plan = plan;
        CheckAgainst(model, file.Entries.ToDictionary(e => e.Name, e => e.Shape), path);
        try
        {
            foreach (var p in model.Parameters())
            {
                file.TryGet(p.Name, out var entry);
                using var mapped = file.Map(entry);
                RequireFinite(path, p.Name, mapped.Span, p.Shape);
                Place(p, plan, mapped.Span);
            }
        }
        catch
        {
            model.Dispose();
            throw;
        }
        return model;
    }
}
