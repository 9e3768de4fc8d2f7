using System.Globalization;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Diffusion;

/// <summary>How a sampling loop steps: ancestral (p_sample_loop) or DDIM with η (ddim_sample_loop), and clip_denoised.</summary>
public sealed record SamplerOptions(bool Ddim = false, double Eta = 0, bool ClipDenoised = true)
{
    /// <summary>Refuses an η that no sampler takes: η belongs to DDIM, and is finite and not negative (sample, synthesize).</summary>
    public static void CheckEta(double eta, bool ddim)
    {
        if (!double.IsFinite(eta) || eta < 0 || (eta != 0 && !ddim))
        {
            throw new DiffSegException($"--eta {eta.ToString(CultureInfo.InvariantCulture)}: " +
                                       "η is DDIM's (with --use-ddim), and not negative");
        }
    }
}

/// <summary>
/// The noise a sampling loop draws, as numbered streams: stream 0 is x_T, stream k + 1 the draw of sampling step k (t from
/// high to low) — the layout of the recorded stacks in tests/fixtures/adm-tiny/sample.
/// </summary>
public interface ISamplerNoise
{
    /// <summary>Fills <paramref name="y"/> (N, 3, H, W) with stream <paramref name="stream"/> of samples first .. first + N − 1.</summary>
    void Fill(Tensor y, int stream, int first);
}

/// <summary>Noise drawn on the device by GaussianNoise: a sample's values depend on the seed and its index only.</summary>
public sealed class DrawnNoise(int seed) : ISamplerNoise
{
    public void Fill(Tensor y, int stream, int first) => GaussianNoise.Fill(y, seed, stream, first);
}

/// <summary>A recorded stack (S + 1, N_all, 3, H, W) in host memory.</summary>
public sealed class RecordedNoise(float[] stack, int[] shape) : ISamplerNoise
{
    public int[] Shape { get; } = shape;

    public void Fill(Tensor y, int stream, int first)
    {
        long perSample = y.Length / y[0], perStream = perSample * Shape[1];
        y.CopyFrom(stack.AsSpan((int)(stream * perStream + first * perSample), y.Length));
    }
}

/// <summary>The classifier's pull in a guided step: ∇_x log p(y | x_t) for each sample's label, and its scale.</summary>
public interface IGuidance
{
    /// <summary>classifier_scale: the step multiplies the gradient by it.</summary>
    float Scale { get; }

    /// <summary>Writes the unscaled gradient (N, 3, H, W) at the model timesteps <paramref name="t"/>.</summary>
    void Gradient(Tensor x, Tensor t, IReadOnlyList<long> labels, Tensor gradient);
}

/// <summary>
/// guided-diffusion's sampling loops on a batch (docs/method.md, Sampling and respacing): x_T from stream 0, then for every
/// kept step from the last to 0 one UNet call at the mapped timestep and one SamplerStep launch (p_mean_variance and the
/// step fused), with the classifier's gradient when guided.
/// </summary>
public sealed class Sampler(UNetModel model, GaussianDiffusion diffusion, SamplerOptions options)
{
    public UNetModel Model => model;
    public GaussianDiffusion Diffusion => diffusion;
    public SamplerOptions Options => options;

    /// <summary>Sampling steps a batch takes (the kept steps of the respacing).</summary>
    public int Steps => diffusion.Steps;

    /// <summary>
    /// Samples first .. first + n − 1 at <paramref name="size"/>²: the final x (n, 3, size, size), owned by the caller.
    /// <paramref name="labels"/> are the class labels of a class-conditional model, or the classifier's targets;
    /// <paramref name="lowRes"/> is a super-resolution model's low-resolution input (n, 3, h, w) in [−1, 1].
    /// <paramref name="stepDone"/> is called after each step with the number of steps done.
    /// </summary>
    public Tensor Sample(int first, int n, int size, ISamplerNoise noise, IReadOnlyList<long>? labels = null, IGuidance? guidance = null,
        Action<int>? stepDone = null, Tensor? lowRes = null)
    {
        var dev = model.Plan.Device;
        if (guidance is not null && labels is null)
        {
            throw new ArgumentException("classifier guidance needs a label per sample");
        }
        if (model.Flags.IsSuperResolution != (lowRes is not null))
        {
            throw new DiffSegException(lowRes is null ? "a super-resolution model needs its low-resolution input (base samples)"
                : "a low-resolution input was given to a model that is not a super-resolution model");
        }
        var x = dev.Allocate(n, 3, size, size);
        try
        {
            noise.Fill(x, 0, first);
            using var z = dev.Allocate(x.Shape);
            using var gradient = guidance is null ? null : dev.Allocate(x.Shape);
            using var upsampled = lowRes is null ? null : SuperResolution.Upsample(lowRes, size);
            var modelLabels = model.Flags.ClassCond ? labels : null;
            for (int k = 0; k < diffusion.Steps; k++)
            {
                int t = diffusion.Steps - 1 - k;
                var coefficients = diffusion.StepCoefficientsAt(t, options.Ddim, options.Eta, options.ClipDenoised, guidance?.Scale);
                // DDIM with η = 0 adds σ·z = 0: no draw needed.
                if (options.Ddim && options.Eta == 0)
                {
                    coefficients.AddsNoise = 0;
                }
                using var timesteps = dev.Upload(Enumerable.Repeat(diffusion.ModelTimestep(t), n).ToArray(), n);
                using var pass = new Pass(model.Plan);
                using var outputs = upsampled is null
                    ? model.Forward(pass, x, timesteps, modelLabels)
                    : SuperResolution.Forward(model, pass, x, upsampled, timesteps, modelLabels);
                if (coefficients.AddsNoise != 0)
                {
                    noise.Fill(z, k + 1, first);
                }
                if (guidance is not null)
                {
                    guidance.Gradient(x, timesteps, labels!, gradient!);
                }
                SamplerStep.Run(x, outputs.Output!, z, gradient, coefficients, x);
                stepDone?.Invoke(k + 1);
            }
            return x;
        }
        catch
        {
            x.Dispose();
            throw;
        }
    }
}
