namespace IlgpuDiffSeg.Diffusion;

/// <summary>
/// guided-diffusion's beta schedules and the q_sample coefficients, in float64 as its numpy arrays are
/// (gaussian_diffusion.get_named_beta_schedule, GaussianDiffusion.__init__). Index t addresses the arrays directly.
/// </summary>
public sealed class NoiseSchedule
{
    public double[] Betas { get; }
    public double[] AlphasCumprod { get; }
    public int Steps => Betas.Length;

    NoiseSchedule(double[] betas)
    {
        Betas = betas;
        AlphasCumprod = new double[betas.Length];
        double product = 1;
        for (int i = 0; i < betas.Length; i++)
        {
            product *= 1 - betas[i];
            AlphasCumprod[i] = product;
        }
    }

    public static NoiseSchedule Create(string name, int steps)
    {
        if (steps <= 0)
        {
            throw new DiffSegException($"diffusion_steps must be positive, got {steps}");
        }
        return name switch
        {
            "linear" => Linear(steps),
            "cosine" => Cosine(steps),
            _ => throw new DiffSegException($"unknown noise_schedule '{name}' (guided-diffusion knows linear and cosine)"),
        };
    }

    /// <summary>np.linspace(scale·1e-4, scale·0.02, T) with scale = 1000/T.</summary>
    public static NoiseSchedule Linear(int steps)
    {
        double scale = 1000.0 / steps;
        double start = scale * 0.0001, end = scale * 0.02;
        var betas = new double[steps];
        // numpy.linspace: start + i·step, with the last value pinned to end.
        double step = steps > 1 ? (end - start) / (steps - 1) : 0;
        for (int i = 0; i < steps; i++)
        {
            betas[i] = start + i * step;
        }
        betas[^1] = end;
        return new NoiseSchedule(betas);
    }

    /// <summary>betas_for_alpha_bar with ᾱ(t) = cos²((t + 0.008)/1.008 · π/2), β capped at 0.999.</summary>
    public static NoiseSchedule Cosine(int steps)
    {
        static double AlphaBar(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
        var betas = new double[steps];
        for (int i = 0; i < steps; i++)
        {
            double t1 = (double)i / steps, t2 = (double)(i + 1) / steps;
            betas[i] = Math.Min(1 - AlphaBar(t2) / AlphaBar(t1), 0.999);
        }
        return new NoiseSchedule(betas);
    }

    /// <summary>(√ᾱ_t, √(1−ᾱ_t)) rounded to float32 — what _extract_into_tensor(...).float() feeds q_sample.</summary>
    public (float SqrtAlphaBar, float SqrtOneMinusAlphaBar) QSampleCoefficients(int t)
    {
        if (t < 0 || t >= Steps)
        {
            throw new DiffSegException($"diffusion step {t} is outside [0, {Steps})");
        }
        return ((float)Math.Sqrt(AlphasCumprod[t]), (float)Math.Sqrt(1.0 - AlphasCumprod[t]));
    }
}
