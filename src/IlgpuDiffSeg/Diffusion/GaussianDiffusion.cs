using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Diffusion;

/// <summary>What the model's output means: the noise ε (EPSILON) or the clean image x₀ (START_X, predict_xstart).</summary>
public enum ModelMeanType
{
    Epsilon,
    StartX,
}

/// <summary>The variance of p(x_{t−1} | x_t): learned between β̃ and β (learn_sigma), or fixed at β or β̃.</summary>
public enum ModelVarianceType
{
    LearnedRange,
    FixedLarge,
    FixedSmall,
}

/// <summary>The training loss: MSE on the mean (+ the VLB on the learned variance), or the VLB alone, optionally rescaled.</summary>
public enum LossType
{
    Mse,
    RescaledMse,
    Kl,
    RescaledKl,
}

/// <summary>
/// guided-diffusion's diffusion process as create_gaussian_diffusion builds it — always a SpacedDiffusion: the kept steps
/// of the base schedule (all of them without respacing), betas rebuilt over them from the cumulative products, every
/// table in float64 and each entry cast to float32 when a sample takes it (docs/method.md, training and sampling).
/// Index t is a spaced index; the model sees TimestepMap[t], times 1000/T when rescale_timesteps.
/// </summary>
public sealed class GaussianDiffusion
{
    public ModelMeanType MeanType { get; }
    public ModelVarianceType VarianceType { get; }
    public LossType LossType { get; }
    public bool RescaleTimesteps { get; }

    /// <summary>Steps of the base schedule (diffusion_steps).</summary>
    public int OriginalSteps { get; }

    /// <summary>The base step of each spaced index.</summary>
    public int[] TimestepMap { get; }

    public int Steps => Betas.Length;
    public double[] Betas { get; }
    public double[] AlphasCumprod { get; }
    public double[] AlphasCumprodPrev { get; }
    public double[] SqrtAlphasCumprod { get; }
    public double[] SqrtOneMinusAlphasCumprod { get; }
    public double[] SqrtRecipAlphasCumprod { get; }
    public double[] SqrtRecipM1AlphasCumprod { get; }
    public double[] PosteriorVariance { get; }
    public double[] PosteriorLogVarianceClipped { get; }
    public double[] PosteriorMeanCoef1 { get; }
    public double[] PosteriorMeanCoef2 { get; }
    public double[] LogBetas { get; }
    public double[] FixedLargeVariance { get; }
    public double[] FixedLargeLogVariance { get; }

    /// <summary>The variance a fixed-variance model uses (fixed small: β̃, fixed large: β with β̃₁ at t = 0), and its log;
    /// chosen once from the variance type. Unused by learned-range models.</summary>
    (double[] Variance, double[] LogVariance) FixedVarianceTables { get; }

    public GaussianDiffusion(double[] baseBetas, IReadOnlySet<int> kept, ModelMeanType meanType, ModelVarianceType varianceType,
        LossType lossType, bool rescaleTimesteps)
    {
        MeanType = meanType;
        VarianceType = varianceType;
        LossType = lossType;
        RescaleTimesteps = rescaleTimesteps;
        OriginalSteps = baseBetas.Length;
        var betas = new List<double>();
        var map = new List<int>();
        double abar = 1, previous = 1;
        for (int i = 0; i < baseBetas.Length; i++)
        {
            abar *= 1 - baseBetas[i];
            if (kept.Contains(i))
            {
                betas.Add(1 - abar / previous);
                previous = abar;
                map.Add(i);
            }
        }
        if (betas.Count == 0)
        {
            throw new DiffSegException("the respacing keeps no step");
        }
        TimestepMap = map.ToArray();
        Betas = betas.ToArray();
        int n = Betas.Length;
        AlphasCumprod = new double[n];
        double product = 1;
        for (int i = 0; i < n; i++)
        {
            product *= 1 - Betas[i];
            AlphasCumprod[i] = product;
        }
        AlphasCumprodPrev = [1.0, .. AlphasCumprod[..^1]];
        SqrtAlphasCumprod = Map(i => Math.Sqrt(AlphasCumprod[i]));
        SqrtOneMinusAlphasCumprod = Map(i => Math.Sqrt(1.0 - AlphasCumprod[i]));
        SqrtRecipAlphasCumprod = Map(i => Math.Sqrt(1.0 / AlphasCumprod[i]));
        SqrtRecipM1AlphasCumprod = Map(i => Math.Sqrt(1.0 / AlphasCumprod[i] - 1));
        PosteriorVariance = Map(i => Betas[i] * (1.0 - AlphasCumprodPrev[i]) / (1.0 - AlphasCumprod[i]));
        // β̃ is 0 at t = 0; its log takes the t = 1 value there (with one step, the only value).
        PosteriorLogVarianceClipped = Map(i => Math.Log(PosteriorVariance[i == 0 && n > 1 ? 1 : i]));
        PosteriorMeanCoef1 = Map(i => Betas[i] * Math.Sqrt(AlphasCumprodPrev[i]) / (1.0 - AlphasCumprod[i]));
        PosteriorMeanCoef2 = Map(i => (1.0 - AlphasCumprodPrev[i]) * Math.Sqrt(1.0 - Betas[i]) / (1.0 - AlphasCumprod[i]));
        LogBetas = Map(i => Math.Log(Betas[i]));
        FixedLargeVariance = Map(i => i == 0 && n > 1 ? PosteriorVariance[1] : Betas[i]);
        FixedLargeLogVariance = Map(i => Math.Log(FixedLargeVariance[i]));
        FixedVarianceTables = varianceType == ModelVarianceType.FixedSmall
            ? (PosteriorVariance, PosteriorLogVarianceClipped)
            : (FixedLargeVariance, FixedLargeLogVariance);

        double[] Map(Func<int, double> f) => Enumerable.Range(0, n).Select(f).ToArray();
    }

    /// <summary>The diffusion a model's flags describe (create_gaussian_diffusion), respaced by <paramref name="respacing"/>
    /// or, when null, by the flags' timestep_respacing.</summary>
    public static GaussianDiffusion FromFlags(AdmFlags flags, string? respacing = null)
    {
        var baseBetas = NoiseSchedule.Create(flags.NoiseSchedule, flags.DiffusionSteps).Betas;
        string spec = respacing ?? flags.TimestepRespacing;
        var kept = spec.Trim() == "" ? Enumerable.Range(0, flags.DiffusionSteps).ToHashSet() : Respacing.Kept(flags.DiffusionSteps, spec);
        var loss = flags.UseKl ? LossType.RescaledKl : flags.RescaleLearnedSigmas ? LossType.RescaledMse : LossType.Mse;
        var variance = flags.LearnSigma ? ModelVarianceType.LearnedRange
            : flags.SigmaSmall ? ModelVarianceType.FixedSmall : ModelVarianceType.FixedLarge;
        var mean = flags.PredictXstart ? ModelMeanType.StartX : ModelMeanType.Epsilon;
        return new GaussianDiffusion(baseBetas, kept, mean, variance, loss, flags.RescaleTimesteps);
    }

    /// <summary>The timestep the model is called with for spaced index t (the _WrappedModel of respace.py).</summary>
    public float ModelTimestep(int t)
    {
        CheckStep(t);
        int mapped = TimestepMap[t];
        return RescaleTimesteps ? mapped * (float)(1000.0 / OriginalSteps) : mapped;
    }

    public void CheckStep(int t)
    {
        if (t < 0 || t >= Steps)
        {
            throw new DiffSegException($"timestep {t} is outside [0, {Steps})");
        }
    }

    /// <summary>(√ᾱ_t, √(1−ᾱ_t)) as float32: q_sample's coefficients.</summary>
    public (float SqrtAlphaBar, float SqrtOneMinusAlphaBar) QSampleCoefficients(int t)
    {
        CheckStep(t);
        return ((float)SqrtAlphasCumprod[t], (float)SqrtOneMinusAlphasCumprod[t]);
    }

    /// <summary>
    /// One sample's coefficients for the training loss kernel (TrainingLoss), each table entry cast to float32 as the
    /// original's _extract_into_tensor does; <paramref name="weight"/> multiplies the sample's loss in the batch mean
    /// (the schedule sampler's importance weight divided by the batch size).
    /// </summary>
    public LossCoefficients LossCoefficientsAt(int t, float weight)
    {
        CheckStep(t);
        bool learned = VarianceType == ModelVarianceType.LearnedRange;
        bool kl = LossType is LossType.Kl or LossType.RescaledKl;
        float vbScale = LossType switch
        {
            LossType.RescaledKl => Steps,
            LossType.RescaledMse => (float)(Steps / 1000.0),
            _ => 1f,
        };
        return new LossCoefficients
        {
            SqrtRecipAlphaBar = (float)SqrtRecipAlphasCumprod[t],
            SqrtRecipM1AlphaBar = (float)SqrtRecipM1AlphasCumprod[t],
            PosteriorCoef1 = (float)PosteriorMeanCoef1[t],
            PosteriorCoef2 = (float)PosteriorMeanCoef2[t],
            PosteriorLogVariance = (float)PosteriorLogVarianceClipped[t],
            LogBeta = (float)LogBetas[t],
            FixedLogVariance = (float)FixedVarianceTables.LogVariance[t],
            Weight = weight,
            VbScale = vbScale,
            IsFirstStep = t == 0 ? 1 : 0,
            LearnedVariance = learned ? 1 : 0,
            PredictsStart = MeanType == ModelMeanType.StartX ? 1 : 0,
            KlOnly = kl ? 1 : 0,
        };
    }

    /// <summary>
    /// The coefficients of one sampling step at spaced index t for the SamplerStep kernel: ancestral (p_sample) or DDIM
    /// with <paramref name="eta"/>, each table entry cast to float32 as _extract_into_tensor does; guided by a classifier
    /// gradient times <paramref name="guidanceScale"/> when given.
    /// </summary>
    public StepCoefficients StepCoefficientsAt(int t, bool ddim, double eta, bool clipDenoised, float? guidanceScale = null)
    {
        CheckStep(t);
        return new StepCoefficients
        {
            SqrtRecipAlphaBar = (float)SqrtRecipAlphasCumprod[t],
            SqrtRecipM1AlphaBar = (float)SqrtRecipM1AlphasCumprod[t],
            PosteriorCoef1 = (float)PosteriorMeanCoef1[t],
            PosteriorCoef2 = (float)PosteriorMeanCoef2[t],
            PosteriorLogVariance = (float)PosteriorLogVarianceClipped[t],
            LogBeta = (float)LogBetas[t],
            FixedVariance = (float)FixedVarianceTables.Variance[t],
            FixedLogVariance = (float)FixedVarianceTables.LogVariance[t],
            AlphaBar = (float)AlphasCumprod[t],
            AlphaBarPrev = (float)AlphasCumprodPrev[t],
            Eta = (float)eta,
            LearnedVariance = VarianceType == ModelVarianceType.LearnedRange ? 1 : 0,
            PredictsStart = MeanType == ModelMeanType.StartX ? 1 : 0,
            Clip = clipDenoised ? 1 : 0,
            Ddim = ddim ? 1 : 0,
            Guided = guidanceScale is null ? 0 : 1,
            GuidanceScale = guidanceScale ?? 0f,
            AddsNoise = t > 0 ? 1 : 0,
        };
    }
}

/// <summary>space_timesteps: which steps of the base schedule a respacing keeps.</summary>
public static class Respacing
{
    /// <summary>"ddimN" (the integer stride giving N steps), or comma-separated counts per equal section.</summary>
    public static HashSet<int> Kept(int steps, string spec)
    {
        spec = spec.Trim();
        string shown = spec.Length > 60 ? spec[..60] + "…" : spec;
        if (spec.StartsWith("ddim", StringComparison.Ordinal))
        {
            if (!int.TryParse(spec[4..], out int wanted) || wanted <= 0)
            {
                throw new DiffSegException($"timestep_respacing \"{shown}\": ddim needs a positive step count, as in ddim25");
            }
            for (int stride = 1; stride < steps; stride++)
            {
                if ((steps + stride - 1) / stride == wanted)
                {
                    return Enumerable.Range(0, wanted).Select(i => i * stride).ToHashSet();
                }
            }
            throw new DiffSegException($"timestep_respacing \"{shown}\": no integer stride takes {wanted} of {steps} steps");
        }
        int[] counts;
        try
        {
            counts = spec.Split(',').Select(c => int.Parse(c.Trim(), System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new DiffSegException($"timestep_respacing \"{shown}\" is neither ddimN nor comma-separated step counts" +
                                       (e is OverflowException ? " (a count past 2^31)" : ""));
        }
        int baseSize = steps / counts.Length, longer = steps % counts.Length;
        var kept = new HashSet<int>();
        int first = 0;
        for (int i = 0; i < counts.Length; i++)
        {
            int size = baseSize + (i < longer ? 1 : 0), count = counts[i];
            if (count < 0 || count > size)
            {
                throw new DiffSegException($"timestep_respacing \"{shown}\": a section of {size} steps cannot keep {count}");
            }
            double stride = count <= 1 ? 1 : (size - 1) / (double)(count - 1);
            double position = 0;
            for (int k = 0; k < count; k++)
            {
                // Python's round(): halves to the even integer.
                kept.Add(first + (int)Math.Round(position, MidpointRounding.ToEven));
                position += stride;
            }
            first += size;
        }
        return kept;
    }
}
