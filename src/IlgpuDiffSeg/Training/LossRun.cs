using System.Globalization;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Training;

/// <summary>
/// The 'loss' command: guided-diffusion's training_losses on one batch given as .npy files (x₀, t, ε, y) with dropout off,
/// the batch means of its terms, and d mean(loss) / d every parameter — the research entry to the backward pass. Every
/// input is read and checked before the device is touched.
/// </summary>
public sealed class LossRun
{
    readonly string modelPath, xPath, tPath;
    readonly string? yPath;
    readonly float[] x0, noise;
    readonly int[] shape;
    readonly long[] t;
    readonly long[]? y;

    LossRun(string modelPath, float[] x0, float[] noise, int[] shape, long[] t, long[]? y, (string X, string T, string? Y) paths)
    {
        this.modelPath = modelPath;
        (xPath, tPath, yPath) = paths;
        this.x0 = x0;
        this.noise = noise;
        this.shape = shape;
        this.t = t;
        this.y = y;
    }

    /// <summary>The batch's terms (HasMse, HasVb: which of them the loss type defines) and every parameter's gradient.</summary>
    public sealed record Result(LossTerms Terms, bool HasMse, bool HasVb, IReadOnlyList<(Parameter Parameter, float[] Gradient)> Gradients);

    public static LossRun Prepare(string modelPath, string xPath, string tPath, string noisePath, string? yPath, string? outputPath)
    {
        if (outputPath is not null)
        {
            AtomicFile.CheckWritable(outputPath);
            if (new[] { modelPath, xPath, tPath, noisePath, yPath }.Any(p => AtomicFile.SamePath(p, outputPath)))
            {
                throw DiffSegException.For(outputPath, "is also one of the inputs; give the gradients another name");
            }
        }
        if (!File.Exists(modelPath))
        {
            throw DiffSegException.For(modelPath, "file not found");
        }
        var x = Npy.ReadFloat32(xPath, out var shape, -1, AdmFlags.InChannels, -1, -1);
        if (shape[0] == 0)
        {
            throw DiffSegException.For(xPath, $"holds no images: shape ({string.Join(", ", shape)})");
        }
        CheckFinite(xPath, x);
        var eps = Npy.ReadFloat32(noisePath, out var noiseShape);
        if (!noiseShape.SequenceEqual(shape))
        {
            throw DiffSegException.For(noisePath, $"has shape ({string.Join(", ", noiseShape)}), the batch {xPath} is " +
                                                  $"({string.Join(", ", shape)})");
        }
        CheckFinite(noisePath, eps);
        var tArray = Npy.Read(tPath);
        Npy.CheckShape(tPath, tArray, [shape[0]]);
        long[]? labels = null;
        if (yPath is not null)
        {
            var yArray = Npy.Read(yPath);
            Npy.CheckShape(yPath, yArray, [shape[0]]);
            labels = yArray.ToInt64(yPath);
        }
        return new LossRun(modelPath, x, eps, shape, tArray.ToInt64(tPath), labels, (xPath, tPath, yPath));
    }

    static void CheckFinite(string path, float[] values)
    {
        int bad = Array.FindIndex(values, v => !float.IsFinite(v));
        if (bad >= 0)
        {
            throw DiffSegException.For(path, $"holds a non-finite value ({values[bad]}) at flat index {bad}");
        }
    }

    public Result Execute(ExecutionPlan plan, Action<string>? log = null)
    {
        using var model = ModelWeights.Load(modelPath, plan);
        var diffusion = GaussianDiffusion.FromFlags(model.Flags);
        int n = shape[0];
        var steps = new int[n];
        for (int i = 0; i < n; i++)
        {
            if (t[i] < 0 || t[i] >= diffusion.Steps)
            {
                throw DiffSegException.For(tPath, $"timestep {t[i]} (sample {i}) is outside [0, {diffusion.Steps}) of {modelPath}'s " +
                                                  "diffusion");
            }
            steps[i] = (int)t[i];
        }
        if (model.Flags.ClassCond != (y is not null))
        {
            throw DiffSegException.For(modelPath, model.Flags.ClassCond ? "is class-conditional: pass class labels with --y"
                : "is not class-conditional: --y must not be given");
        }
        if (y is not null && Array.FindIndex(y, v => v < 0 || v >= model.Flags.NumClasses) is var badLabel and >= 0)
        {
            throw DiffSegException.For(yPath!, $"class label {y[badLabel]} (sample {badLabel}) is outside [0, {model.Flags.NumClasses})");
        }
        if (shape[2] % model.SizeMultiple != 0 || shape[3] % model.SizeMultiple != 0)
        {
            throw DiffSegException.For(xPath, $"images of {shape[2]}×{shape[3]}: {modelPath}'s UNet needs sides divisible by " +
                                              $"{model.SizeMultiple}");
        }
        MemoryEstimate.Check($"{xPath}: a batch of {n} at {shape[2]}×{shape[3]}", n,
            MemoryEstimate.ActivationBytesPerImage(model.Flags, training: true, (double)shape[2] * shape[3]), model.ParameterCount * 8.0,
            plan);
        log?.Invoke($"model: {model.ParameterCount:N0} parameters; batch {n} at {shape[2]}×{shape[3]}; " +
                    $"loss {diffusion.LossType}, variance {diffusion.VarianceType}, mean {diffusion.MeanType}");
        model.AllocateGradients(plan.Device);
        using var dx0 = plan.Device.Upload(x0, shape);
        using var dNoise = plan.Device.Upload(noise, shape);
        // Dropout off (the original's run with p = 0), activations saved for the backward.
        using var pass = new Pass(plan, training: false, saves: true);
        var terms = DiffusionLossStep.Run(model, diffusion, pass, dx0, dNoise, steps, y, Enumerable.Repeat(1f / n, n).ToArray());
        var gradients = model.Parameters().Select(p => (p, p.G.ToArray())).ToList();
        bool kl = diffusion.LossType is LossType.Kl or LossType.RescaledKl;
        return new Result(terms, !kl, !kl && diffusion.VarianceType == ModelVarianceType.LearnedRange, gradients);
    }

    /// <summary>The gradients as safetensors, each under its state_dict name; the loss terms in the metadata.</summary>
    public static void WriteGradients(string path, Result result, string modelPath)
    {
        var metadata = new Dictionary<string, string>
        {
            ["format"] = "ilgpudiffseg-gradients-v1",
            ["model"] = Path.GetFileName(modelPath),
            ["loss"] = result.Terms.MeanLoss.ToString("R", CultureInfo.InvariantCulture),
        };
        if (result.HasMse)
        {
            metadata["mse"] = result.Terms.MeanMse.ToString("R", CultureInfo.InvariantCulture);
        }
        if (result.HasVb)
        {
            metadata["vb"] = result.Terms.MeanVb.ToString("R", CultureInfo.InvariantCulture);
        }
        var sources = result.Gradients
            .Select(g => new SafetensorSource(g.Parameter.Name, g.Parameter.Shape, span => g.Gradient.CopyTo(span)))
            .ToList();
        SafetensorsFile.Write(path, sources, metadata);
    }
}
