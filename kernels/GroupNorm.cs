// GroupNorm — guided-diffusion's normalization(C): GroupNorm(32 groups, eps 1e-5, affine), statistics in fp32,
// fused with what follows it in the UNet:
//   y = GN(x)·γ + β                      (attention norm)
//   y = SiLU(GN(x)·γ + β)                 (ResBlock in_layers, the final out head)
//   y = SiLU((GN(x)·γ + β)·(1 + scale) + shift)   (ResBlock out_layers with use_scale_shift_norm;
//                                           scale = emb[:, :C], shift = emb[:, C:])
// Statistics: two passes (mean, then Σ(x−mean)²) so a large mean does not cost precision. Each (n, group) is a
// contiguous run of C/G·H·W values; it is split into P interleaved partial sums so the GPU gets N·G·P threads
// with coalesced reads, while the CPU accelerator uses P = 1 (one thread per group, no barriers).
//   v1  partial sums → partial squared deviations → finalise (mean, rstd) → fused element-wise apply.
// x, y: (N, C, H, W) or (N, C, T); γ, β: (C); emb: (N, 2C). Memory-bound: 3 reads + 1 write per element.
// Coefficients: the same statistics folded per (n, c) into (mean, a, b, 0) with normalized = (x − mean)·a + b, for a
// convolution that applies the norm while it reads its input (NormalizedIm2ColOperand) instead of a separate pass;
// four floats per channel so that the convolution reads them with one 16-byte load.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public struct GroupNormShape
{
    public int N, C, Spatial, Groups, Partials, Silu, ScaleShift;
    public float Eps;

    public readonly int ChannelsPerGroup => C / Groups;
    public readonly int GroupSize => C / Groups * Spatial;
}

public static class GroupNorm
{
    public const int DefaultGroups = 32;
    public const float DefaultEps = 1e-5f;

    // ---- CPU reference

    /// <summary>Statistics in double, as the exact answer the fp32 kernels are measured against.</summary>
    public static float[] Reference(float[] x, float[] gamma, float[] beta, int n, int c, int spatial, int groups, float eps,
        bool silu, float[]? emb = null)
    {
        var y = new float[x.Length];
        int cg = c / groups;
        for (int b = 0; b < n; b++)
        for (int g = 0; g < groups; g++)
        {
            int start = (b * c + g * cg) * spatial, count = cg * spatial;
            double mean = 0, var = 0;
            for (int e = 0; e < count; e++)
            {
                mean += x[start + e];
            }
            mean /= count;
            for (int e = 0; e < count; e++)
            {
                var += (x[start + e] - mean) * (x[start + e] - mean);
            }
            var /= count;
            double rstd = 1 / Math.Sqrt(var + eps);
            for (int e = 0; e < count; e++)
            {
                int ch = g * cg + e / spatial;
                double v = (x[start + e] - mean) * rstd * gamma[ch] + beta[ch];
                if (emb is not null)
                {
                    v = v * (1 + emb[b * 2 * c + ch]) + emb[b * 2 * c + c + ch];
                }
                if (silu)
                {
                    v /= 1 + Math.Exp(-v);
                }
                y[start + e] = (float)v;
            }
        }
        return y;
    }

    // ---- GPU kernels

    static void PartialSumKernel(Index1D index, GroupNormShape s, ArrayView<float> x, ArrayView<float> partials)
    {
        int p = index % s.Partials;
        int ng = index / s.Partials;
        int start = ng * s.GroupSize;
        float acc = 0f;
        for (int e = p; e < s.GroupSize; e += s.Partials)
        {
            acc += x[start + e];
        }
        partials[index] = acc;
    }

    static float GroupMean(GroupNormShape s, ArrayView<float> partials, int ng)
    {
        float sum = 0f;
        for (int q = 0; q < s.Partials; q++)
        {
            sum += partials[ng * s.Partials + q];
        }
        return sum / s.GroupSize;
    }

    static void PartialSquaresKernel(Index1D index, GroupNormShape s, ArrayView<float> x, ArrayView<float> partials,
        ArrayView<float> squares)
    {
        int p = index % s.Partials;
        int ng = index / s.Partials;
        float mean = GroupMean(s, partials, ng);
        int start = ng * s.GroupSize;
        float acc = 0f;
        for (int e = p; e < s.GroupSize; e += s.Partials)
        {
            float d = x[start + e] - mean;
            acc += d * d;
        }
        squares[index] = acc;
    }

    static void FinalizeKernel(Index1D ng, GroupNormShape s, ArrayView<float> partials, ArrayView<float> squares,
        ArrayView<float> stats)
    {
        float sq = 0f;
        for (int q = 0; q < s.Partials; q++)
        {
            sq += squares[ng * s.Partials + q];
        }
        stats[2 * ng] = GroupMean(s, partials, ng);
        stats[2 * ng + 1] = 1f / XMath.Sqrt(sq / s.GroupSize + s.Eps);
    }

    static void ApplyKernel(Index1D index, int stride, GroupNormShape s, ArrayView<float> x, ArrayView<float> gamma,
        ArrayView<float> beta, ArrayView<float> emb, ArrayView<float> stats, ArrayView<float> y)
    {
        int total = s.N * s.C * s.Spatial;
        for (int i = index; i < total; i += stride)
        {
            int ch = i / s.Spatial % s.C;
            int n = i / (s.Spatial * s.C);
            int ng = n * s.Groups + ch / s.ChannelsPerGroup;
            float v = (x[i] - stats[2 * ng]) * stats[2 * ng + 1] * gamma[ch] + beta[ch];
            if (s.ScaleShift != 0)
            {
                v = v * (1f + emb[n * 2 * s.C + ch]) + emb[n * 2 * s.C + s.C + ch];
            }
            if (s.Silu != 0)
            {
                v = v / (1f + XMath.Exp(-v));
            }
            y[i] = v;
        }
    }

    static void CoefficientsKernel(Index1D index, GroupNormShape s, ArrayView<float> gamma, ArrayView<float> beta, ArrayView<float> emb,
        ArrayView<float> stats, ArrayView<float> coefficients)
    {
        int ch = index % s.C, n = index / s.C;
        int ng = n * s.Groups + ch / s.ChannelsPerGroup;
        float a = stats[2 * ng + 1] * gamma[ch], b = beta[ch];
        if (s.ScaleShift != 0)
        {
            float scale = 1f + emb[n * 2 * s.C + ch];
            a *= scale;
            b = b * scale + emb[n * 2 * s.C + s.C + ch];
        }
        coefficients[4 * index] = stats[2 * ng];
        coefficients[4 * index + 1] = a;
        coefficients[4 * index + 2] = b;
        coefficients[4 * index + 3] = 0f;
    }

    // ---- launcher

    /// <summary>
    /// y = [SiLU]([scale-shift](GN(x)·γ + β)). x is (N, C, ...spatial); <paramref name="scaleShift"/> is the
    /// ResBlock's emb_layers output (N, 2C) or null. y may alias x.
    /// </summary>
    public static void Forward(Tensor x, Tensor gamma, Tensor beta, Tensor y, bool silu, Tensor? scaleShift = null,
        int groups = DefaultGroups, float eps = DefaultEps)
    {
        var dev = x.Device;
        if (y.Length != x.Length)
        {
            throw new ArgumentException($"group_norm: output {y.ShapeString} does not match input {x.ShapeString}");
        }
        var s = Shape(x, gamma, beta, scaleShift, groups, eps, silu);
        var stats = Statistics(dev, x, s);
        try
        {
            var applyK = dev.Kernel("group_norm.apply", a => a.LoadAutoGroupedStreamKernel<Index1D, int, GroupNormShape,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(ApplyKernel));
            int threads = dev.StrideThreads(x.Length);
            applyK(threads, threads, s, x.View, gamma.View, beta.View, scaleShift?.View ?? stats.View, stats.View, y.View);
        }
        finally
        {
            dev.ReturnScratch(stats);
        }
    }
    static GroupNormShape Shape(Tensor x, Tensor gamma, Tensor beta, Tensor? scaleShift, int groups, float eps, bool silu)
    {
        int n = x[0], c = x[1];
        if (c % groups != 0 || gamma.Length != c || beta.Length != c)
        {
            throw new ArgumentException($"group_norm: input {x.ShapeString}, γ {gamma.ShapeString}, β {beta.ShapeString}, {groups} groups");
        }
        if (scaleShift is not null && scaleShift.Length != n * 2 * c)
        {
            throw new ArgumentException($"group_norm: scale-shift {scaleShift.ShapeString} should be ({n}, {2 * c})");
        }
        return new GroupNormShape
        {
            N = n, C = c, Spatial = x.Length / (n * c), Groups = groups, Eps = eps,
            Silu = silu ? 1 : 0, ScaleShift = scaleShift is null ? 0 : 1,
        };
    }

    /// <summary>(mean, rstd) of every (n, group) of x, in a scratch tensor the caller returns.</summary>
    static MemoryBuffer1D<float, Stride1D.Dense> Statistics(ComputeDevice dev, Tensor x, GroupNormShape s)
    {
        s.Partials = dev.IsCpu ? 1 : Math.Clamp(s.GroupSize / 256, 1, 256);
        int groupCount = s.N * s.Groups;
        var partials = dev.RentScratch(groupCount * s.Partials);
        var squares = dev.RentScratch(groupCount * s.Partials);
        var stats = dev.RentScratch(2 * groupCount);
        try
        {
            var sumK = dev.Kernel("group_norm.partial_sum", a => a.LoadAutoGroupedStreamKernel<Index1D, GroupNormShape,
                ArrayView<float>, ArrayView<float>>(PartialSumKernel));
            var sqK = dev.Kernel("group_norm.partial_squares", a => a.LoadAutoGroupedStreamKernel<Index1D, GroupNormShape,
                ArrayView<float>, ArrayView<float>, ArrayView<float>>(PartialSquaresKernel));
            var finK = dev.Kernel("group_norm.finalize", a => a.LoadAutoGroupedStreamKernel<Index1D, GroupNormShape,
                ArrayView<float>, ArrayView<float>, ArrayView<float>>(FinalizeKernel));
            sumK(groupCount * s.Partials, s, x.View, partials.View);
            sqK(groupCount * s.Partials, s, x.View, partials.View, squares.View);
            finK(groupCount, s, partials.View, squares.View, stats.View);
            return stats;
        }
        finally
        {
            dev.ReturnScratch(partials);
            dev.ReturnScratch(squares);
        }
    }

    /// <summary>
    /// The norm of Forward as per-(n, c) coefficients (N, C, 4) = (mean, a, b, 0): [scale-shift](GN(x)·γ + β) equals
    /// (x − mean)·a + b. The caller owns the returned tensor; SiLU, if any, is applied by the consumer.
    /// </summary>
    public static Tensor Coefficients(Tensor x, Tensor gamma, Tensor beta, Tensor? scaleShift = null, int groups = DefaultGroups,
        float eps = DefaultEps)
    {
        var dev = x.Device;
        var s = Shape(x, gamma, beta, scaleShift, groups, eps, silu: false);
        var coefficients = dev.Allocate(s.N, s.C, 4);
        var stats = Statistics(dev, x, s);
        try
        {
            var k = dev.Kernel("group_norm.coefficients", a => a.LoadAutoGroupedStreamKernel<Index1D, GroupNormShape, ArrayView<float>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(CoefficientsKernel));
            k(s.N * s.C, s, gamma.View, beta.View, scaleShift?.View ?? stats.View, stats.View, coefficients.View);
        }
        finally
        {
            dev.ReturnScratch(stats);
        }
        return coefficients;
    }
}
