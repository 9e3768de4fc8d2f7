// BatchNorm1d — the pixel classifier's normalisation, for every ensemble member at once (nn.BatchNorm1d:
// eps 1e-5, momentum 0.1, affine, running statistics). Activations are (M members, B rows, F features); γ and β live
// in each member's packed parameters at a given offset, members P floats apart.
//   train forward  batch mean and biased variance per (member, feature); y = x̂·γ + β; x̂ and 1/σ kept for backward;
//                  running stats of active members updated with the unbiased variance, as PyTorch does.
//   eval forward   y = (x − running_mean)/√(running_var + eps)·γ + β.
//   backward       dγ = Σ dy·x̂, dβ = Σ dy, dx = γ/σ/B·(B·dy − dβ − x̂·dγ); fused with the ReLU before the norm
//                  (dz = dx where the ReLU output x > 0) and the bias gradient of the Linear before it (Σ_b dz).
// One (member, feature) per grid-stride step, looping over the B rows: B = 64 in training, so this is latency-, not
// bandwidth-bound; M·F ≈ 1280 items. The CPU backend runs the same item bodies on the host (HostBackend.ForEach).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>Where one normalisation's parameters and gradients are in the packed per-member buffers.</summary>
public struct BatchNormShape
{
    public int Members, Rows, Features, MemberStride, GammaOffset, BetaOffset, LinearBiasOffset;
    public float Eps, Momentum;
}

public static class BatchNorm1d
{
    public const float DefaultEps = 1e-5f;
    public const float DefaultMomentum = 0.1f;

    // ---- CPU reference

    /// <summary>Batch mean and biased variance of feature j over the rows, in double.</summary>
    static (double Mean, double Var) Statistics(float[] x, int rows, int features, int j)
    {
        double mean = 0, var = 0;
        for (int b = 0; b < rows; b++)
        {
            mean += x[b * features + j];
        }
        mean /= rows;
        for (int b = 0; b < rows; b++)
        {
            var += Math.Pow(x[b * features + j] - mean, 2);
        }
        return (mean, var / rows);
    }

    /// <summary>Training forward for one member: x (B, F) → y; updates running stats in place.</summary>
    public static float[] TrainReference(float[] x, int rows, int features, float[] gamma, float[] beta, float[] runningMean,
        float[] runningVar, float eps = DefaultEps, float momentum = DefaultMomentum)
    {
        var y = new float[x.Length];
        for (int j = 0; j < features; j++)
        {
            var (mean, var) = Statistics(x, rows, features, j);
            double rstd = 1 / Math.Sqrt(var + eps);
            for (int b = 0; b < rows; b++)
            {
                y[b * features + j] = (float)((x[b * features + j] - mean) * rstd * gamma[j] + beta[j]);
            }
            runningMean[j] = (float)((1 - momentum) * runningMean[j] + momentum * mean);
            runningVar[j] = (float)((1 - momentum) * runningVar[j] + momentum * var * rows / (rows - 1));
        }
        return y;
    }

    /// <summary>Backward for one member given dy and the forward input x (the ReLU output): returns dz, dγ, dβ, dbias.</summary>
    public static (float[] dz, float[] dGamma, float[] dBeta, float[] dBias) BackwardReference(float[] x, float[] dy, int rows, int features,
        float[] gamma, float eps = DefaultEps)
    {
        var dz = new float[x.Length];
        var dGamma = new float[features];
        var dBeta = new float[features];
        var dBias = new float[features];
        for (int j = 0; j < features; j++)
        {
            var (mean, var) = Statistics(x, rows, features, j);
            double rstd = 1 / Math.Sqrt(var + eps), sumDy = 0, sumDyXhat = 0;
            for (int b = 0; b < rows; b++)
            {
                sumDy += dy[b * features + j];
                sumDyXhat += dy[b * features + j] * (x[b * features + j] - mean) * rstd;
            }
            dGamma[j] = (float)sumDyXhat;
            dBeta[j] = (float)sumDy;
            double bias = 0;
            for (int b = 0; b < rows; b++)
            {
                double xhat = (x[b * features + j] - mean) * rstd;
                double dx = gamma[j] * rstd / rows * (rows * dy[b * features + j] - sumDy - xhat * sumDyXhat);
                double d = x[b * features + j] > 0 ? dx : 0;
                dz[b * features + j] = (float)d;
                bias += d;
            }
            dBias[j] = (float)bias;
        }
        return (dz, dGamma, dBeta, dBias);
    }

    // ---- GPU kernels

    static void TrainKernel(Index1D index, int stride, BatchNormShape s, ArrayView<float> x, ArrayView<float> parameters,
        ArrayView<float> runningMean, ArrayView<float> runningVar, ArrayView<float> active, ArrayView<float> xhat,
        ArrayView<float> rstdOut, ArrayView<float> y)
    {
        for (int item = index; item < s.Members * s.Features; item += stride)
        {
            TrainItem(item, s, x, parameters, runningMean, runningVar, active, xhat, rstdOut, y);
        }
    }

    static void TrainItem(int index, BatchNormShape s, ArrayView<float> x, ArrayView<float> parameters,
        ArrayView<float> runningMean, ArrayView<float> runningVar, ArrayView<float> active, ArrayView<float> xhat,
        ArrayView<float> rstdOut, ArrayView<float> y)
    {
        int m = index / s.Features;
        int j = index % s.Features;
        int baseIndex = m * s.Rows * s.Features + j;
        float mean = 0f;
        for (int b = 0; b < s.Rows; b++)
        {
            mean += x[baseIndex + b * s.Features];
        }
        mean /= s.Rows;
        float var = 0f;
        for (int b = 0; b < s.Rows; b++)
        {
            float d = x[baseIndex + b * s.Features] - mean;
            var += d * d;
        }
        var /= s.Rows;
        float rstd = 1f / XMath.Sqrt(var + s.Eps);
        float gamma = parameters[m * s.MemberStride + s.GammaOffset + j];
        float beta = parameters[m * s.MemberStride + s.BetaOffset + j];
        for (int b = 0; b < s.Rows; b++)
        {
            int i = baseIndex + b * s.Features;
            float h = (x[i] - mean) * rstd;
            xhat[i] = h;
            y[i] = h * gamma + beta;
        }
        rstdOut[index] = rstd;
        if (active[m] != 0f)
        {
            runningMean[index] = (1f - s.Momentum) * runningMean[index] + s.Momentum * mean;
            runningVar[index] = (1f - s.Momentum) * runningVar[index] + s.Momentum * var * s.Rows / (s.Rows - 1);
        }
    }

    static void EvalKernel(Index1D index, int stride, BatchNormShape s, ArrayView<float> x, ArrayView<float> parameters,
        ArrayView<float> runningMean, ArrayView<float> runningVar, ArrayView<float> y)
    {
        int total = s.Members * s.Rows * s.Features;
        for (int i = index; i < total; i += stride)
        {
            EvalItem(i, s, x, parameters, runningMean, runningVar, y);
        }
    }

    static void EvalItem(int i, BatchNormShape s, ArrayView<float> x, ArrayView<float> parameters, ArrayView<float> runningMean,
        ArrayView<float> runningVar, ArrayView<float> y)
    {
        int j = i % s.Features;
        int m = i / (s.Rows * s.Features);
        int mj = m * s.Features + j;
        float scale = parameters[m * s.MemberStride + s.GammaOffset + j] / XMath.Sqrt(runningVar[mj] + s.Eps);
        y[i] = (x[i] - runningMean[mj]) * scale + parameters[m * s.MemberStride + s.BetaOffset + j];
    }

    static void BackwardKernel(Index1D index, int stride, BatchNormShape s, ArrayView<float> x, ArrayView<float> xhat,
        ArrayView<float> rstd, ArrayView<float> dy, ArrayView<float> parameters, ArrayView<float> grads, ArrayView<float> dz)
    {
        for (int item = index; item < s.Members * s.Features; item += stride)
        {
            BackwardItem(item, s, x, xhat, rstd, dy, parameters, grads, dz);
        }
    }

    static void BackwardItem(int index, BatchNormShape s, ArrayView<float> x, ArrayView<float> xhat, ArrayView<float> rstd,
        ArrayView<float> dy, ArrayView<float> parameters, ArrayView<float> grads, ArrayView<float> dz)
    {
        int m = index / s.Features;
        int j = index % s.Features;
        int baseIndex = m * s.Rows * s.Features + j;
        float sumDy = 0f, sumDyXhat = 0f;
        for (int b = 0; b < s.Rows; b++)
        {
            int i = baseIndex + b * s.Features;
            sumDy += dy[i];
            sumDyXhat += dy[i] * xhat[i];
        }
        float gamma = parameters[m * s.MemberStride + s.GammaOffset + j];
        float k = gamma * rstd[index] / s.Rows;
        float bias = 0f;
        for (int b = 0; b < s.Rows; b++)
        {
            int i = baseIndex + b * s.Features;
            float d = x[i] > 0f ? k * (s.Rows * dy[i] - sumDy - xhat[i] * sumDyXhat) : 0f;
            dz[i] = d;
            bias += d;
        }
        grads[m * s.MemberStride + s.GammaOffset + j] = sumDyXhat;
        grads[m * s.MemberStride + s.BetaOffset + j] = sumDy;
        grads[m * s.MemberStride + s.LinearBiasOffset + j] = bias;
    }

    // ---- launchers

    public static void TrainForward(ExecutionPlan plan, BatchNormShape s, ArrayView<float> x, ArrayView<float> parameters,
        ArrayView<float> runningMean, ArrayView<float> runningVar, ArrayView<float> active, ArrayView<float> xhat,
        ArrayView<float> rstd, ArrayView<float> y)
    {
        var dev = plan.Device;
        if (plan.OnHost)
        {
            HostBackend.ForEach(dev, s.Members * s.Features, item => TrainItem(item, s, x, parameters, runningMean, runningVar, active, xhat, rstd, y));
            return;
        }
        var k = dev.Kernel(TrainKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, BatchNormShape, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>>(TrainKernel));
        int threads = dev.StrideThreads(s.Members * s.Features);
        k(threads, threads, s, x, parameters, runningMean, runningVar, active, xhat, rstd, y);
    }

    public static void EvalForward(ExecutionPlan plan, BatchNormShape s, ArrayView<float> x, ArrayView<float> parameters,
        ArrayView<float> runningMean, ArrayView<float> runningVar, ArrayView<float> y)
    {
        var dev = plan.Device;
        if (plan.OnHost)
        {
            HostBackend.ForEach(dev, s.Members * s.Rows * s.Features, i => EvalItem(i, s, x, parameters, runningMean, runningVar, y));
            return;
        }
        var k = dev.Kernel(EvalKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, BatchNormShape, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(EvalKernel));
        int threads = dev.StrideThreads((long)s.Members * s.Rows * s.Features);
        k(threads, threads, s, x, parameters, runningMean, runningVar, y);
    }

    public static void Backward(ExecutionPlan plan, BatchNormShape s, ArrayView<float> x, ArrayView<float> xhat, ArrayView<float> rstd,
        ArrayView<float> dy, ArrayView<float> parameters, ArrayView<float> grads, ArrayView<float> dz)
    {
        var dev = plan.Device;
        if (plan.OnHost)
        {
            HostBackend.ForEach(dev, s.Members * s.Features, item => BackwardItem(item, s, x, xhat, rstd, dy, parameters, grads, dz));
            return;
        }
        var k = dev.Kernel(BackwardKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, BatchNormShape, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardKernel));
        int threads = dev.StrideThreads(s.Members * s.Features);
        k(threads, threads, s, x, xhat, rstd, dy, parameters, grads, dz);
    }
}
