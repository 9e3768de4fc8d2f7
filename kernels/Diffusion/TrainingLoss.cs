// TrainingLoss — guided-diffusion's training_losses on a batch's model output, forward and backward in one pass:
// per sample n at step t_n, with ε̂ (and v, learned variance) the model output and M = C·H·W:
//   mse_n  = mean((target − ε̂)²), target = ε (EPSILON) or x₀ (START_X)
//   vb_n   = mean(KL(q(x_{t−1}|x_t,x₀) ‖ p(x_{t−1}|x_t))) / ln 2   for t > 0,
//            mean(−log p(x₀ | x₁)) / ln 2 (the discretised Gaussian decoder) at t = 0; × T/1000 (RESCALED_MSE), × T
//            (RESCALED_KL). With the MSE losses the mean of p enters vb detached: vb trains only the variance v.
//   loss_n = mse_n [+ vb_n] (MSE, RESCALED_MSE), or vb_n (KL, RESCALED_KL)
// and d(Σ_n w_n·loss_n)/d output, w_n the sample's weight in the batch mean (importance weight / N).
//   p's log variance: learned L = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1)/2; or fixed (β or β̃).
//   p's mean: coef1·x̂₀ + coef2·x_t with x̂₀ = √(1/ᾱ)·x_t − √(1/ᾱ − 1)·ε̂ (EPSILON) or ε̂ (START_X).
// All arithmetic in fp32 in the original's order; coefficients are the float64 tables cast to fp32 per sample.
//   v1  grid-stride over the N·C·H·W elements (terms and gradients), then one thread per sample sums its terms in a fixed
//       order. Memory-bound: ~6 reads and 4 writes per element — nothing next to a UNet pass.
// x0, noise, xt: (N, 3, H, W); output, dOutput: (N, 3 or 6, H, W); terms: (N, 2, 3·H·W); losses: (N, 3) = (loss, mse, vb).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>One sample's fp32 coefficients and switches (GaussianDiffusion.LossCoefficientsAt builds them).</summary>
public struct LossCoefficients
{
    public float SqrtRecipAlphaBar, SqrtRecipM1AlphaBar, PosteriorCoef1, PosteriorCoef2, PosteriorLogVariance, LogBeta, FixedLogVariance;

    /// <summary>The sample's factor in the batch loss (importance weight / batch size).</summary>
    public float Weight;

    /// <summary>vb's factor: 1, T/1000 (RESCALED_MSE) or T (RESCALED_KL).</summary>
    public float VbScale;

    public int IsFirstStep, LearnedVariance, PredictsStart, KlOnly;
}

public static class TrainingLoss
{
    const double Ln2 = 0.69314718055994530942;
    const float BinHalfWidth = 1f / 255f;

    // ---- CPU reference

    /// <summary>Per-sample (loss, mse, vb) and d(Σ w·loss)/d output, in double: the oracle for the kernel.</summary>
    public static (double[] Losses, float[] DOutput) Reference(float[] x0, float[] noise, float[] xt, float[] output,
        LossCoefficients[] coefficients, int channels, int spatial)
    {
        int n = coefficients.Length, outChannels = output.Length / (n * spatial), m = channels * spatial;
        var losses = new double[3 * n];
        var dOutput = new float[output.Length];
        for (int b = 0; b < n; b++)
        {
            var k = coefficients[b];
            double mse = 0, vb = 0;
            for (int c = 0; c < channels; c++)
            for (int p = 0; p < spatial; p++)
            {
                int i = (b * channels + c) * spatial + p;
                int eIndex = (b * outChannels + c) * spatial + p, vIndex = eIndex + channels * spatial;
                double e = output[eIndex], v = k.LearnedVariance != 0 ? output[vIndex] : 0;
                var g = Element(x0[i], noise[i], xt[i], e, v, k);
                mse += g.Mse;
                vb += g.Vb;
                double vbFactor = k.Weight * k.VbScale / (m * Ln2);
                double dE = k.KlOnly != 0 ? 0 : k.Weight * 2.0 / m * g.DMseDE;
                if (k.KlOnly != 0)
                {
                    dE += vbFactor * g.DVbDE;
                }
                dOutput[eIndex] = (float)dE;
                if (k.LearnedVariance != 0)
                {
                    dOutput[vIndex] = (float)(vbFactor * g.DVbDV);
                }
            }
            mse /= m;
            vb = vb / m / Ln2 * k.VbScale;
            losses[3 * b] = k.KlOnly != 0 ? vb : mse + (k.LearnedVariance != 0 ? vb : 0);
            losses[3 * b + 1] = mse;
            losses[3 * b + 2] = vb;
        }
        return (losses, dOutput);
    }

    /// <summary>One element's terms and their derivatives, in double (DMseDE is d((target − ε̂)²)/dε̂ / 2).</summary>
    static (double Mse, double Vb, double DMseDE, double DVbDE, double DVbDV) Element(double x0, double noise, double xt, double e,
        double v, LossCoefficients k)
    {
        double target = k.PredictsStart != 0 ? x0 : noise;
        double mse = (target - e) * (target - e);
        double logVar = k.LearnedVariance != 0 ? (v + 1) / 2 * k.LogBeta + (1 - (v + 1) / 2) * k.PosteriorLogVariance : k.FixedLogVariance;
        double predX0 = k.PredictsStart != 0 ? e : k.SqrtRecipAlphaBar * xt - k.SqrtRecipM1AlphaBar * e;
        double mean2 = k.PosteriorCoef1 * predX0 + k.PosteriorCoef2 * xt;
        double mean1 = k.PosteriorCoef1 * x0 + k.PosteriorCoef2 * xt;
        double vb, dVbDMean, dVbDLogVar;
        if (k.IsFirstStep != 0)
        {
            (vb, dVbDMean, dVbDLogVar) = DecoderNll(x0, mean2, logVar);
        }
        else
        {
            double lv1 = k.PosteriorLogVariance, d = mean1 - mean2;
            vb = 0.5 * (-1 + logVar - lv1 + Math.Exp(lv1 - logVar) + d * d * Math.Exp(-logVar));
            dVbDMean = -d * Math.Exp(-logVar);
            dVbDLogVar = 0.5 * (1 - Math.Exp(lv1 - logVar) - d * d * Math.Exp(-logVar));
        }
        double dMeanDE = k.PosteriorCoef1 * (k.PredictsStart != 0 ? 1 : -k.SqrtRecipM1AlphaBar);
        double dLogVarDV = (k.LogBeta - k.PosteriorLogVariance) / 2;
        return (mse, vb, e - target, dVbDMean * dMeanDE, dVbDLogVar * dLogVarDV);
    }

    /// <summary>−log P(x₀) of the discretised Gaussian (mean, log variance) and its derivatives, in double.</summary>
    static (double Nll, double DMean, double DLogVar) DecoderNll(double x0, double mean, double logVar)
    {
        double logScale = 0.5 * logVar, inv = Math.Exp(-logScale), d = x0 - mean;
        double hi = inv * (d + 1.0 / 255), lo = inv * (d - 1.0 / 255);
        double cHi = Cdf(hi), cLo = Cdf(lo), gHi = 0, gLo = 0, logProb;
        if (x0 < -0.999)
        {
            logProb = Math.Log(Math.Max(cHi, 1e-12));
            gHi = cHi >= 1e-12 ? CdfSlope(hi) / cHi : 0;
        }
        else if (x0 > 0.999)
        {
            logProb = Math.Log(Math.Max(1 - cLo, 1e-12));
            gLo = 1 - cLo >= 1e-12 ? -CdfSlope(lo) / (1 - cLo) : 0;
        }
        else
        {
            double delta = cHi - cLo;
            logProb = Math.Log(Math.Max(delta, 1e-12));
            gHi = delta >= 1e-12 ? CdfSlope(hi) / delta : 0;
            gLo = delta >= 1e-12 ? -CdfSlope(lo) / delta : 0;
        }
        // hi and lo fall as the mean rises (slope −inv) and as the log scale rises (slope −hi, −lo).
        return (-logProb, inv * (gHi + gLo), 0.5 * (gHi * hi + gLo * lo));

        static double Cdf(double z) => 0.5 * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (z + 0.044715 * z * z * z)));

        static double CdfSlope(double z)
        {
            double th = Math.Tanh(Math.Sqrt(2 / Math.PI) * (z + 0.044715 * z * z * z));
            return 0.5 * (1 - th * th) * Math.Sqrt(2 / Math.PI) * (1 + 3 * 0.044715 * z * z);
        }
    }

    // ---- GPU kernels

    static float Cdf(float z) => 0.5f * (1f + XMath.Tanh(0.7978845608f * (z + 0.044715f * (z * z * z))));

    static float CdfSlope(float z)
    {
        float th = XMath.Tanh(0.7978845608f * (z + 0.044715f * (z * z * z)));
        return 0.5f * (1f - th * th) * (0.7978845608f * (1f + 3f * 0.044715f * (z * z)));
    }

    static void ElementKernel(Index1D index, int stride, int n, int channels, int spatial, ArrayView<LossCoefficients> coefficients,
        ArrayView<float> x0, ArrayView<float> noise, ArrayView<float> xt, ArrayView<float> output, ArrayView<float> terms,
        ArrayView<float> dOutput)
    {
        int m = channels * spatial, total = n * m, outChannels = (int)(output.Length / (n * spatial));
        for (int i = index; i < total; i += stride)
        {
            int b = i / m, within = i - b * m;
            var k = coefficients[b];
            int eIndex = b * outChannels * spatial + within, vIndex = eIndex + m;
            float e = output[eIndex], x = x0[i], t = xt[i];
            float target = k.PredictsStart != 0 ? x : noise[i];
            float diff = target - e;
            float logVar = k.FixedLogVariance;
            float dLogVarDV = 0f;
            if (k.LearnedVariance != 0)
            {
                float frac = (output[vIndex] + 1f) / 2f;
                logVar = frac * k.LogBeta + (1f - frac) * k.PosteriorLogVariance;
                dLogVarDV = (k.LogBeta - k.PosteriorLogVariance) * 0.5f;
            }
            float predX0 = k.PredictsStart != 0 ? e : k.SqrtRecipAlphaBar * t - k.SqrtRecipM1AlphaBar * e;
            float mean2 = k.PosteriorCoef1 * predX0 + k.PosteriorCoef2 * t;
            float vb, dMean, dLogVar;
            if (k.IsFirstStep != 0)
            {
                float inv = XMath.Exp(-(0.5f * logVar)), d = x - mean2;
                float hi = inv * (d + BinHalfWidth), lo = inv * (d - BinHalfWidth);
                float cHi = Cdf(hi), cLo = Cdf(lo), gHi = 0f, gLo = 0f, logProb;
                if (x < -0.999f)
                {
                    logProb = XMath.Log(XMath.Max(cHi, 1e-12f));
                    gHi = cHi >= 1e-12f ? CdfSlope(hi) / cHi : 0f;
                }
                else if (x > 0.999f)
                {
                    float upper = 1f - cLo;
                    logProb = XMath.Log(XMath.Max(upper, 1e-12f));
                    gLo = upper >= 1e-12f ? -CdfSlope(lo) / upper : 0f;
                }
                else
                {
                    float delta = cHi - cLo;
                    logProb = XMath.Log(XMath.Max(delta, 1e-12f));
                    gHi = delta >= 1e-12f ? CdfSlope(hi) / delta : 0f;
                    gLo = delta >= 1e-12f ? -CdfSlope(lo) / delta : 0f;
                }
                vb = -logProb;
                dMean = inv * (gHi + gLo);
                dLogVar = 0.5f * (gHi * hi + gLo * lo);
            }
            else
            {
                float mean1 = k.PosteriorCoef1 * x + k.PosteriorCoef2 * t, d = mean1 - mean2, lv1 = k.PosteriorLogVariance;
                float ratio = XMath.Exp(lv1 - logVar), precision = XMath.Exp(-logVar);
                vb = 0.5f * (-1f + logVar - lv1 + ratio + d * d * precision);
                dMean = -d * precision;
                dLogVar = 0.5f * (1f - ratio - d * d * precision);
            }
            terms[(2 * b) * m + within] = diff * diff;
            terms[(2 * b + 1) * m + within] = vb;
            float vbFactor = k.Weight * k.VbScale / (m * (float)Ln2);
            float dE = k.KlOnly != 0
                ? vbFactor * dMean * (k.PosteriorCoef1 * (k.PredictsStart != 0 ? 1f : -k.SqrtRecipM1AlphaBar))
                : k.Weight * 2f / m * (e - target);
            dOutput[eIndex] = dE;
            if (k.LearnedVariance != 0)
            {
                dOutput[vIndex] = vbFactor * dLogVar * dLogVarDV;
            }
        }
    }

    /// <summary>Sample b's (loss, mse, vb) from its terms, summed in index order.</summary>
    static void SumKernel(Index1D b, int m, ArrayView<LossCoefficients> coefficients, ArrayView<float> terms, ArrayView<float> losses)
    {
        var k = coefficients[b];
        float mse = 0f, vb = 0f;
        for (int i = 0; i < m; i++)
        {
            mse += terms[(2 * b) * m + i];
            vb += terms[(2 * b + 1) * m + i];
        }
        mse /= m;
        vb = vb / m / (float)Ln2 * k.VbScale;
        losses[3 * b] = k.KlOnly != 0 ? vb : k.LearnedVariance != 0 ? mse + vb : mse;
        losses[3 * b + 1] = mse;
        losses[3 * b + 2] = vb;
    }

    // ---- launcher

    /// <summary>
    /// Per-sample (loss, mse, vb) into <paramref name="losses"/> (N, 3) and d(Σ_n w_n·loss_n)/d output into
    /// <paramref name="dOutput"/> (shaped as the output).
    /// </summary>
    public static void Compute(Tensor x0, Tensor noise, Tensor xt, Tensor output, DeviceBuffer<LossCoefficients> coefficients,
        Tensor losses, Tensor dOutput)
    {
        var dev = x0.Device;
        int n = x0[0], channels = x0[1], spatial = x0.Length / (n * channels);
        int outChannels = output[1];
        if (noise.Length != x0.Length || xt.Length != x0.Length || output.Length != n * outChannels * spatial ||
            (outChannels != channels && outChannels != 2 * channels) || dOutput.Length != output.Length || losses.Length != 3 * n ||
            coefficients.Length != n)
        {
            throw new ArgumentException($"training loss: x0 {x0.ShapeString}, output {output.ShapeString}, losses {losses.ShapeString}");
        }
        using var terms = dev.Allocate(n, 2, channels * spatial);
        var elementK = dev.Kernel(ElementKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int,
            ArrayView<LossCoefficients>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>>(ElementKernel));
        var sumK = dev.Kernel(SumKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, ArrayView<LossCoefficients>, ArrayView<float>,
            ArrayView<float>>(SumKernel));
        int threads = dev.StrideThreads(x0.Length);
        elementK(threads, threads, n, channels, spatial, coefficients.View, x0.View, noise.View, xt.View, output.View, terms.View,
            dOutput.View);
        sumK(n, channels * spatial, coefficients.View, terms.View, losses.View);
    }
}
