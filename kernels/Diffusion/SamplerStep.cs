// SamplerStep — one step of guided-diffusion's samplers on a batch, p_mean_variance and the step fused in one launch
// (docs/method.md, guided-diffusion training and sampling). Per element, with ε̂ (and v, learned variance) the model output:
//   log σ² = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1)/2 (learned), or the fixed table entry (β or β̃)
//   x̂₀ = √(1/ᾱ)·x_t − √(1/ᾱ − 1)·ε̂ (EPSILON) or ε̂ (START_X), clamped to [−1, 1] with clip_denoised
//   ancestral: mean = c1·x̂₀ + c2·x_t [+ σ²·g, condition_mean]; x ← mean + [t > 0]·exp(½ log σ²)·z
//   DDIM:      ε = (√(1/ᾱ)·x_t − x̂₀)/√(1/ᾱ − 1) [− √(1 − ᾱ)·g and x̂₀ rebuilt from it, condition_score];
//              σ = η·√((1 − ᾱ_prev)/(1 − ᾱ))·√(1 − ᾱ/ᾱ_prev); x ← x̂₀·√ᾱ_prev + √(1 − ᾱ_prev − σ²)·ε + [t > 0]·σ·z
// g is the classifier's gradient ∇ log p(y | x_t) times classifier_scale (classifier guidance) or absent. All arithmetic in fp32 in the
// original's order; the coefficients are the float64 tables cast to fp32 (GaussianDiffusion.StepCoefficientsAt).
//   v1  grid-stride over the N·3·H·W elements; x may be overwritten in place. Memory-bound: 3–5 reads and 1 write per
//       element — nothing next to the UNet pass of the same step.
// x, z, g, xNext: (N, 3, H, W); output: (N, 3 or 6, H, W).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>One step's fp32 coefficients and switches (every sample of a batch is at the same step).</summary>
public struct StepCoefficients
{
    public float SqrtRecipAlphaBar, SqrtRecipM1AlphaBar, PosteriorCoef1, PosteriorCoef2;

    /// <summary>log β̃_t (clipped) and log β_t: the ends of the learned range.</summary>
    public float PosteriorLogVariance, LogBeta;

    /// <summary>The fixed variance and its log (FIXED_LARGE or FIXED_SMALL); unused with a learned variance.</summary>
    public float FixedVariance, FixedLogVariance;

    /// <summary>ᾱ_t and ᾱ_{t−1} (1 at t = 0), and DDIM's η.</summary>
    public float AlphaBar, AlphaBarPrev, Eta;

    /// <summary>classifier_scale: the gradient g enters as g·scale (cond_fn's output).</summary>
    public float GuidanceScale;

    public int LearnedVariance, PredictsStart, Clip, Ddim, Guided;

    /// <summary>1 when noise is added (t &gt; 0).</summary>
    public int AddsNoise;
}

public static class SamplerStep
{
    // ---- CPU reference

    /// <summary>
    /// The step in plain loops, each operation rounded to fp32 in the order guided-diffusion writes it: the oracle for the
    /// kernel and for the original's rounding. <paramref name="gradient"/> may be null (no guidance).
    /// </summary>
    public static float[] Reference(float[] x, float[] output, float[] noise, float[]? gradient, StepCoefficients k, int n)
    {
        int m = x.Length / n, outChannels = output.Length / x.Length * 3, spatial = m / 3;
        var next = new float[x.Length];
        for (int b = 0; b < n; b++)
        for (int c = 0; c < 3; c++)
        for (int p = 0; p < spatial; p++)
        {
            int i = (b * 3 + c) * spatial + p;
            int e = (b * outChannels + c) * spatial + p;
            float xt = x[i], eps = output[e], z = noise[i], g = gradient is null ? 0f : gradient[i] * k.GuidanceScale;
            float v = k.LearnedVariance != 0 ? output[e + 3 * spatial] : 0f;
            next[i] = Element(xt, eps, v, z, g, k, MathF.Exp, MathF.Sqrt);
        }
        return next;
    }

    /// <summary>One element of the step; the kernel and the reference share it, with their own exp and sqrt.</summary>
    static float Element(float xt, float modelOut, float v, float z, float g, StepCoefficients k, Func<float, float> exp,
        Func<float, float> sqrt)
    {
        float logVar = k.FixedLogVariance, variance = k.FixedVariance;
        if (k.LearnedVariance != 0)
        {
            float frac = (v + 1f) / 2f;
            logVar = frac * k.LogBeta + (1f - frac) * k.PosteriorLogVariance;
            variance = exp(logVar);
        }
        float x0 = k.PredictsStart != 0 ? modelOut : k.SqrtRecipAlphaBar * xt - k.SqrtRecipM1AlphaBar * modelOut;
        if (k.Clip != 0)
        {
            x0 = x0 < -1f ? -1f : x0 > 1f ? 1f : x0;
        }
        if (k.Ddim == 0)
        {
            float mean = k.PosteriorCoef1 * x0 + k.PosteriorCoef2 * xt;
            if (k.Guided != 0)
            {
                mean += variance * g;
            }
            return k.AddsNoise != 0 ? mean + exp(0.5f * logVar) * z : mean;
        }
        float eps = (k.SqrtRecipAlphaBar * xt - x0) / k.SqrtRecipM1AlphaBar;
        if (k.Guided != 0)
        {
            eps -= sqrt(1f - k.AlphaBar) * g;
            x0 = k.SqrtRecipAlphaBar * xt - k.SqrtRecipM1AlphaBar * eps;
            eps = (k.SqrtRecipAlphaBar * xt - x0) / k.SqrtRecipM1AlphaBar;
        }
        float sigma = k.Eta * sqrt((1f - k.AlphaBarPrev) / (1f - k.AlphaBar)) * sqrt(1f - k.AlphaBar / k.AlphaBarPrev);
        float meanPred = x0 * sqrt(k.AlphaBarPrev) + sqrt(1f - k.AlphaBarPrev - sigma * sigma) * eps;
        return k.AddsNoise != 0 ? meanPred + sigma * z : meanPred;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int total, int spatial, int outChannels, StepCoefficients k, ArrayView<float> x,
        ArrayView<float> output, ArrayView<float> noise, ArrayView<float> gradient, ArrayView<float> xNext)
    {
        for (int i = index; i < total; i += stride)
        {
            int b = i / (3 * spatial), within = i - b * 3 * spatial;
            int e = b * outChannels * spatial + within;
            float xt = x[i], modelOut = output[e];
            float v = k.LearnedVariance != 0 ? output[e + 3 * spatial] : 0f;
            float z = k.AddsNoise != 0 ? noise[i] : 0f;
            float g = k.Guided != 0 ? gradient[i] * k.GuidanceScale : 0f;
            // Element() written out: a kernel cannot take delegates.
            float logVar = k.FixedLogVariance, variance = k.FixedVariance;
            if (k.LearnedVariance != 0)
            {
                float frac = (v + 1f) / 2f;
                logVar = frac * k.LogBeta + (1f - frac) * k.PosteriorLogVariance;
                variance = XMath.Exp(logVar);
            }
            float x0 = k.PredictsStart != 0 ? modelOut : k.SqrtRecipAlphaBar * xt - k.SqrtRecipM1AlphaBar * modelOut;
            if (k.Clip != 0)
            {
                x0 = XMath.Clamp(x0, -1f, 1f);
            }
            float result;
            if (k.Ddim == 0)
            {
                float mean = k.PosteriorCoef1 * x0 + k.PosteriorCoef2 * xt;
                if (k.Guided != 0)
                {
                    mean += variance * g;
                }
                result = k.AddsNoise != 0 ? mean + XMath.Exp(0.5f * logVar) * z : mean;
            }
            else
            {
                float eps = (k.SqrtRecipAlphaBar * xt - x0) / k.SqrtRecipM1AlphaBar;
                if (k.Guided != 0)
                {
                    eps -= XMath.Sqrt(1f - k.AlphaBar) * g;
                    x0 = k.SqrtRecipAlphaBar * xt - k.SqrtRecipM1AlphaBar * eps;
                    eps = (k.SqrtRecipAlphaBar * xt - x0) / k.SqrtRecipM1AlphaBar;
                }
                float sigma = k.Eta * XMath.Sqrt((1f - k.AlphaBarPrev) / (1f - k.AlphaBar)) * XMath.Sqrt(1f - k.AlphaBar / k.AlphaBarPrev);
                float meanPred = x0 * XMath.Sqrt(k.AlphaBarPrev) + XMath.Sqrt(1f - k.AlphaBarPrev - sigma * sigma) * eps;
                result = k.AddsNoise != 0 ? meanPred + sigma * z : meanPred;
            }
            xNext[i] = result;
        }
    }

    // ---- launcher

    /// <summary>
    /// x_{t−1} into <paramref name="xNext"/> (which may be <paramref name="x"/>) from x_t, the model output at t, the step's
    /// noise z (read only when <see cref="StepCoefficients.AddsNoise"/>) and, with guidance, the scaled classifier
    /// gradient.
    /// </summary>
    public static void Run(Tensor x, Tensor output, Tensor? noise, Tensor? gradient, StepCoefficients k, Tensor xNext)
    {
        int n = x[0], spatial = x.Length / (n * 3), outChannels = output[1];
        bool ok = x.Rank == 4 && x[1] == 3 && output.Length == n * outChannels * spatial && xNext.Length == x.Length &&
                  outChannels == (k.LearnedVariance != 0 ? 6 : 3) && (k.AddsNoise == 0 || noise?.Length == x.Length) &&
                  (k.Guided == 0 || gradient?.Length == x.Length);
        if (!ok)
        {
            throw new ArgumentException($"sampler step: x {x.ShapeString}, output {output.ShapeString}, " +
                                        $"noise {noise?.ShapeString ?? "none"}, gradient {gradient?.ShapeString ?? "none"}");
        }
        var dev = x.Device;
        var kernel = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, StepCoefficients, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(x.Length);
        kernel(threads, threads, x.Length, spatial, outChannels, k, x.View, output.View, (noise ?? x).View, (gradient ?? x).View,
            xNext.View);
    }
}
