using System.Globalization;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>What 'diffseg sample' was asked for (image_sample.py's arguments, with recorded noise and raw output).</summary>
public sealed class SampleOptions
{
    public required string ModelPath { get; init; }
    public required string OutputPath { get; init; }
    public int NumSamples { get; init; } = 16;
    public int BatchSize { get; init; } = 16;

    /// <summary>space_timesteps' spec; null takes the model's timestep_respacing flag.</summary>
    public string? TimestepRespacing { get; init; }

    public bool UseDdim { get; init; }
    public double Eta { get; init; }
    public bool ClipDenoised { get; init; } = true;
    public int Seed { get; init; }
    public string? ClassLabelsPath { get; init; }

    /// <summary>A recorded noise stack (S + 1, N, 3, H, W) replacing every draw.</summary>
    public string? NoisePath { get; init; }

    /// <summary>Also write the final float32 samples (N, 3, H, W) before quantisation.</summary>
    public string? RawPath { get; init; }

    /// <summary>A converted noisy-image classifier: classifier guidance (classifier_sample.py).</summary>
    public string? ClassifierPath { get; init; }

    public double ClassifierScale { get; init; } = 1.0;

    /// <summary>A super-resolution model's inputs: an npz as image_sample.py writes (arr_0 uint8 NHWC, arr_1 labels).</summary>
    public string? BaseSamplesPath { get; init; }
}

/// <summary>
/// 'diffseg sample': guided-diffusion's image_sample.py — batches of samples from a converted or trained model, written as
/// its samples_NxHxWx3.npz (arr_0 uint8 NHWC, arr_1 the labels of a class-conditional model) with a PNG grid beside it.
/// Every input is read and checked before the device is opened; outputs are written only when all batches are done.
/// </summary>
public sealed class SampleRun
{
    readonly SampleOptions o;
    readonly AdmFlags flags;
    readonly GaussianDiffusion diffusion;
    readonly long[]? labels;
    readonly RecordedNoise? recorded;
    readonly ClassifierFlags? classifier;
    readonly BaseSamples? baseSamples;

    /// <summary>super_res_sample.py's input: base images (M, s, s, 3) uint8, taken in turn (sample i uses image i mod M).</summary>
    sealed record BaseSamples(byte[] Images, int Count, int Size, long[]? Labels)
    {
        /// <summary>Images first .. first + n − 1 as (n, 3, s, s) floats: b/127.5 − 1, channels first.</summary>
        public float[] LowRes(int first, int n)
        {
            int plane = Size * Size;
            var x = new float[n * 3 * plane];
            for (int i = 0; i < n; i++)
            {
                int image = (first + i) % Count;
                for (int p = 0; p < plane; p++)
                for (int c = 0; c < 3; c++)
                {
                    x[(i * 3 + c) * plane + p] = Images[((long)image * plane + p) * 3 + c] / 127.5f - 1f;
                }
            }
            return x;
        }
    }

    SampleRun(SampleOptions o, AdmFlags flags, GaussianDiffusion diffusion, long[]? labels, RecordedNoise? recorded,
        ClassifierFlags? classifier, BaseSamples? baseSamples)
    {
        this.classifier = classifier;
        this.baseSamples = baseSamples;
        this.o = o;
        this.flags = flags;
        this.diffusion = diffusion;
        this.labels = labels;
        this.recorded = recorded;
    }

    public GaussianDiffusion Diffusion => diffusion;
    public AdmFlags Flags => flags;

    public static SampleRun Prepare(SampleOptions o)
    {
        foreach (var path in new[] { o.OutputPath, SampleImages.GridPathFor(o.OutputPath), o.RawPath })
        {
            if (path is not null)
            {
                AtomicFile.CheckWritable(path);
            }
        }
        string grid = SampleImages.GridPathFor(o.OutputPath);
        if (AtomicFile.SamePath(o.RawPath, o.OutputPath) || AtomicFile.SamePath(o.RawPath, grid))
        {
            throw DiffSegException.For(o.RawPath, $"--raw names a file this command also writes ({o.OutputPath} and its grid)");
        }
        foreach (var input in new[] { o.ModelPath, o.ClassifierPath, o.ClassLabelsPath, o.NoisePath, o.BaseSamplesPath })
        {
            if (input is not null && new[] { o.OutputPath, grid, o.RawPath }.Any(p => AtomicFile.SamePath(p, input)))
            {
                throw DiffSegException.For(input, "is an input and also an output of this command; give the output another name");
            }
        }
        if (o.NumSamples <= 0 || o.BatchSize <= 0)
        {
            throw new DiffSegException($"--num-samples {o.NumSamples} and --batch-size {o.BatchSize} must be positive");
        }
        SamplerOptions.CheckEta(o.Eta, o.UseDdim);
        if (!double.IsFinite(o.ClassifierScale))
        {
            throw new DiffSegException($"--classifier-scale {o.ClassifierScale.ToString(CultureInfo.InvariantCulture)} is not finite");
        }
        var flags = ReadFlags(o.ModelPath);
        // All samples stay in memory until the end (float, then uint8, labels): refuse a count that could never fit.
        int perSample = 3 * flags.ImageSize * flags.ImageSize;
        MemoryEstimate.CheckArray($"--num-samples {o.NumSamples}", o.NumSamples, perSample);
        MemoryEstimate.Check($"--num-samples {o.NumSamples}", o.NumSamples, 5.0 * perSample + 16, 0, null);
        GaussianDiffusion diffusion;
        try
        {
            diffusion = GaussianDiffusion.FromFlags(flags, o.TimestepRespacing);
        }
        catch (DiffSegException e)
        {
            throw new DiffSegException($"--timestep-respacing: {e.Message}");
        }
        var classifier = o.ClassifierPath is null ? null : ReadClassifierFlags(o.ClassifierPath, flags);
        var baseSamples = ReadBaseSamples(o, flags);
        var labels = o.ClassLabelsPath is null && baseSamples?.Labels is { } cycled
            ? Enumerable.Range(0, o.NumSamples).Select(i => cycled[i % cycled.Length]).ToArray()
            : ReadLabels(o, flags, classifier);
        RecordedNoise? recorded = null;
        if (o.NoisePath is not null)
        {
            int size = flags.ImageSize;
            var a = Npy.Read(o.NoisePath);
            Npy.CheckShape(o.NoisePath, a, [diffusion.Steps + 1, o.NumSamples, 3, size, size]);
            var values = a.ToFloat32(o.NoisePath);
            int bad = Array.FindIndex(values, v => !float.IsFinite(v));
            if (bad >= 0)
            {
                throw DiffSegException.For(o.NoisePath, $"holds a non-finite value ({values[bad]}) at flat index {bad}");
            }
            recorded = new RecordedNoise(values, a.Shape);
        }
        return new SampleRun(o, flags, diffusion, labels, recorded, classifier, baseSamples);
    }

    /// <summary>The flags in a converted model's metadata, read without loading its weights.</summary>
    public static AdmFlags ReadFlags(string modelPath)
    {
        if (!File.Exists(modelPath))
        {
            throw DiffSegException.For(modelPath, "file not found");
        }
        using var file = SafetensorsFile.Open(modelPath);
        return ModelWeights.FlagsOf(file);
    }

    /// <summary>The base samples a super-resolution model needs (and only it takes), checked against its small_size.</summary>
    static BaseSamples? ReadBaseSamples(SampleOptions o, AdmFlags flags)
    {
        if (o.BaseSamplesPath is null)
        {
            return flags.IsSuperResolution
                ? throw DiffSegException.For(o.ModelPath, $"is a super-resolution model ({flags.SmallSize} → {flags.LargeSize}): give " +
                                                          "its low-resolution inputs with --base-samples samples.npz")
                : null;
        }
        if (!flags.IsSuperResolution)
        {
            throw DiffSegException.For(o.BaseSamplesPath, $"base samples given, but {o.ModelPath} is not a super-resolution model");
        }
        var arrays = Npz.Read(o.BaseSamplesPath);
        if (!arrays.TryGetValue("arr_0", out var images) || images.Type != NpyType.UInt8 || images.Shape.Length != 4 ||
            images.Shape[0] == 0 || images.Shape[1] != flags.SmallSize || images.Shape[2] != flags.SmallSize || images.Shape[3] != 3)
        {
            string got = images is null ? "no arr_0" : $"arr_0 {Npy.Descr(images.Type)} {images.ShapeString}";
            throw DiffSegException.For(o.BaseSamplesPath, $"{got}; expected uint8 (M, {flags.SmallSize}, {flags.SmallSize}, 3) " +
                                                          "images as image_sample.py writes them");
        }
        long[]? labels = null;
        if (flags.ClassCond && arrays.TryGetValue("arr_1", out var l))
        {
            Npy.CheckShape(o.BaseSamplesPath + ":arr_1", l, [images.Shape[0]]);
            labels = l.ToInt64(o.BaseSamplesPath);
        }
        return new BaseSamples(images.Data, images.Shape[0], flags.SmallSize, labels);
    }

    /// <summary>A converted classifier's flags, checked against the model it is to guide.</summary>
    static ClassifierFlags ReadClassifierFlags(string path, AdmFlags model)
    {
        if (!File.Exists(path))
        {
            throw DiffSegException.For(path, "file not found");
        }
        using var file = SafetensorsFile.Open(path);
        var c = ClassifierWeights.FlagsOf(file);
        if (c.ImageSize != model.ImageSize)
        {
            throw DiffSegException.For(path, $"the classifier takes {c.ImageSize}×{c.ImageSize} images, the model samples " +
                                             $"{model.ImageSize}×{model.ImageSize}: it does not fit the model");
        }
        if (model.ClassCond && c.OutChannels != model.NumClasses)
        {
            throw DiffSegException.For(path, $"the classifier has {c.OutChannels} classes, the model {model.NumClasses}");
        }
        return c;
    }

    /// <summary>The labels of a class-conditional model and/or the classifier's targets: given, or random per sample.</summary>
    static long[]? ReadLabels(SampleOptions o, AdmFlags flags, ClassifierFlags? classifier)
    {
        int classes = classifier?.OutChannels ?? flags.NumClasses;
        if (o.ClassLabelsPath is null)
        {
            return flags.ClassCond || classifier is not null ? SampleImages.RandomLabels(o.Seed, 0, o.NumSamples, classes) : null;
        }
        if (!flags.ClassCond && classifier is null)
        {
            throw DiffSegException.For(o.ClassLabelsPath, $"class labels given, but {o.ModelPath} is not class-conditional " +
                                                          "and no --classifier is given");
        }
        var a = Npy.Read(o.ClassLabelsPath);
        Npy.CheckShape(o.ClassLabelsPath, a, [o.NumSamples]);
        var values = a.ToInt64(o.ClassLabelsPath);
        int bad = Array.FindIndex(values, v => v < 0 || v >= classes);
        if (bad >= 0)
        {
            throw DiffSegException.For(o.ClassLabelsPath, $"label {values[bad]} at index {bad} is outside [0, {classes})");
        }
        return values;
    }

    /// <summary>The samples, and the time: in all, and from the end of the first step (which compiles the kernels).</summary>
    public sealed record Result(byte[] Images, float[] Raw, long[]? Labels, int Steps, double Seconds, double SecondsAfterFirstStep)
    {
        public double StepsPerSecond => Steps / Math.Max(Seconds, 1e-9);

        /// <summary>The rate once the kernels are compiled (the first step excluded).</summary>
        public double SteadyStepsPerSecond => Steps > 1 ? (Steps - 1) / Math.Max(SecondsAfterFirstStep, 1e-9) : StepsPerSecond;
    }

    /// <summary>Samples every batch on the plan's device and writes the outputs.</summary>
    public Result Execute(ExecutionPlan plan, Action<string>? log = null)
    {
        using var model = ModelWeights.Load(o.ModelPath, plan);
        using var classifierModel = o.ClassifierPath is null ? null : ClassifierWeights.Load(o.ClassifierPath, plan);
        var guidance = classifierModel is null ? null : new ClassifierGuidance(classifierModel, (float)o.ClassifierScale);
        var sampler = new Sampler(model, diffusion, new SamplerOptions(o.UseDdim, o.Eta, o.ClipDenoised));
        int size = flags.ImageSize, perSample = 3 * size * size;
        ISamplerNoise noise = recorded is null ? new DrawnNoise(o.Seed) : recorded;
        MemoryEstimate.Check($"--batch-size {o.BatchSize}", Math.Min(o.BatchSize, o.NumSamples),
            MemoryEstimate.ActivationBytesPerImage(flags, training: classifierModel is not null), model.ParameterCount * 4.0, plan);
        log?.Invoke($"model: {model.ParameterCount:N0} parameters at {size}×{size}; {diffusion.Steps} " +
                    $"{(o.UseDdim ? "DDIM" : "ancestral")} steps of {diffusion.OriginalSteps}, {o.NumSamples} samples in batches of " +
                    $"{o.BatchSize}; noise {(recorded is null ? $"drawn with seed {o.Seed}" : "from " + o.NoisePath)}" +
                    (classifierModel is null ? "" : $"; guided by a {classifierModel.ParameterCount:N0}-parameter classifier, " +
                                                    $"scale {o.ClassifierScale.ToString(CultureInfo.InvariantCulture)}"));
        var raw = new float[(long)o.NumSamples * perSample];
        long totalSteps = (long)diffusion.Steps * ((o.NumSamples + o.BatchSize - 1) / o.BatchSize), done = 0;
        double firstStep = 0;
        var progress = new Progress(log, "sampling step", totalSteps);
        for (int first = 0; first < o.NumSamples; first += o.BatchSize)
        {
            int n = Math.Min(o.BatchSize, o.NumSamples - first);
            var batchLabels = labels?.Skip(first).Take(n).ToArray();
            using var lowRes = baseSamples is null ? null : plan.Device.Upload(baseSamples.LowRes(first, n), n, 3, baseSamples.Size,
                baseSamples.Size);
            using var x = sampler.Sample(first, n, size, noise, batchLabels, guidance, lowRes: lowRes, stepDone: _ =>
            {
                done++;
                if (done == 1)
                {
                    firstStep = progress.Elapsed.TotalSeconds;
                }
                progress.Report(done, $"{done / Math.Max(progress.Elapsed.TotalSeconds, 1e-9):F2} steps/s");
            });
            x.CopyTo(raw.AsSpan(first * perSample, n * perSample));
        }
        double seconds = progress.Elapsed.TotalSeconds;
        var images = SampleImages.ToUint8Nhwc(raw, o.NumSamples, size, size);
        var entries = new List<NpzEntry> { NpzEntry.Of("arr_0", images, o.NumSamples, size, size, 3) };
        if (labels is not null)
        {
            entries.Add(NpzEntry.Of("arr_1", labels, o.NumSamples));
        }
        Npz.Write(o.OutputPath, entries);
        SampleImages.SaveGrid(SampleImages.GridPathFor(o.OutputPath), images, o.NumSamples, size, size);
        if (o.RawPath is not null)
        {
            Npy.Write(o.RawPath, raw, [o.NumSamples, 3, size, size]);
        }
        return new Result(images, raw, labels, (int)totalSteps, seconds, seconds - firstStep);
    }
}
