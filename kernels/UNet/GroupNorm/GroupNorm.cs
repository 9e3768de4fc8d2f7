// GroupNorm — guided-diffusion's normalization(C): GroupNorm(32 groups, eps 1e-5, affine), statistics in fp32,
// fused with what follows it in the UNet:
//   y = GN(x)·γ + β                      (attention norm)
//   y = SiLU(GN(x)·γ + β)                 (ResBlock in_layers, the final out head)
//   y = SiLU((GN(x)·γ + β)·(1 + scale) + shift)   (ResBlock out_layers with use_scale_shift_norm;
//                                           scale = emb[:, :C], shift = emb[:, C:])
// Statistics: two passes (mean, then Σ(x−mean)²) so a large mean does not cost precision. Each (n, group) is a
// contiguous run of C/G·H·W values; it is split into P interleaved partial sums so the GPU gets N·G·P threads
// with coalesced reads, while the CPU accelerator uses P = 1 (one thread per group, no barriers).
//   v1  partial sums → partial squared deviations → finalise (mean, rstd) → fused element-wise apply. The CPU
//       accelerator's statistics (one thread per group there).
//   v2  statistics for GPUs (CUDA; the tests also run it on the warp-32 CPU simulator): one pass. Each (n, group) run is split into
//       contiguous chunks, one block of 256 threads each; a thread sums x − K and (x − K)² with K the chunk's first
//       value (shifted data: no cancellation from a large mean), four loads in flight; the block reduces in shared
//       memory; the finalise merges the chunks' moments in double (Chan et al.). v1 reads x twice with N·G·P ≤ 8,192
//       threads and one load in flight each — about 32 KB in flight, ~1% of an H200's bandwidth; v2 sizes its grid to
//       the device (8 blocks per SM: ~8 MB in flight) and reads x once. Deterministic: no atomics, fixed orders.
// x, y: (N, C, H, W) or (N, C, T); γ, β: (C); emb: (N, 2C). Memory-bound: 3 reads + 1 write per element.
// The backward (GroupNorm.Backward.cs) recomputes the normalised values from the statistics a training pass keeps.
// Coefficients: the same statistics folded per (n, c) into (mean, a, b, 0) with normalized = (x − mean)·a + b, for a
// convolution that applies the norm while it reads its input (NormalizedIm2ColOperand) instead of a separate pass;
// four floats per channel so that the convolution reads them with one 16-byte load.
// host  the CPU backend (HostBackend.GroupNorm.cs): statistics, apply and backward in SIMD lanes, a run or plane per item.
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

public static partial class GroupNorm
{
    public const int DefaultGroups = 32;
    public const float DefaultEps = 1e-5f;

    // ---- CPU reference

    /// <summary>Statistics in double, as the exact answer the fp32 kernels are measured against.</summary>
    public static float[] Reference(float[] x, float[] gamma, float[] beta, int n, int c, int spatial, int groups, float eps,
        bool silu, float[]? emb = null)
    {
        static double[] Wide(float[] a) => Array.ConvertAll(a, v => (double)v);
        var y = Reference(Wide(x), Wide(gamma), Wide(beta), n, c, spatial, groups, eps, silu, emb is null ? null : Wide(emb));
        return Array.ConvertAll(y, v => (float)v);
    }

    /// <summary>The same forward entirely in double: what the backward references are checked against by finite differences.</summary>
    public static double[] Reference(double[] x, double[] gamma, double[] beta, int n, int c, int spatial, int groups, double eps,
        bool silu, double[]? emb = null)
    {
        var y = new double[x.Length];
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
                y[start + e] = v;
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

    const int MomentThreads = 256;

    /// <summary>
    /// v2: grid (chunks, N·G), 256 threads. Chunk b of group ng writes moments[3·(ng·chunks + b) ..] = (count, Σ(x − K),
    /// Σ(x − K)²) with K = the chunk's first value.
    /// </summary>
    static void ChunkMomentsKernel(GroupNormShape s, ArrayView<float> x, ArrayView<float> moments)
    {
        var sums = SharedMemory.Allocate<float>(MomentThreads);
        var squares = SharedMemory.Allocate<float>(MomentThreads);
        int chunks = Grid.DimX, b = Grid.IdxX, ng = Grid.IdxY, tid = Group.IdxX;
        int chunk = (s.GroupSize + chunks - 1) / chunks;
        int lo = XMath.Min(b * chunk, s.GroupSize), hi = XMath.Min(lo + chunk, s.GroupSize);
        int start = ng * s.GroupSize;
        float shift = x[start + XMath.Min(lo, s.GroupSize - 1)];
        // Four independent sums keep four loads in flight per thread; a warp reads 32 consecutive values per load.
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0, q0 = 0, q1 = 0, q2 = 0, q3 = 0;
        int e = lo + tid;
        for (; e + 3 * MomentThreads < hi; e += 4 * MomentThreads)
        {
            float v0 = x[start + e] - shift, v1 = x[start + e + MomentThreads] - shift;
            float v2 = x[start + e + 2 * MomentThreads] - shift, v3 = x[start + e + 3 * MomentThreads] - shift;
            s0 += v0; s1 += v1; s2 += v2; s3 += v3;
            q0 += v0 * v0; q1 += v1 * v1; q2 += v2 * v2; q3 += v3 * v3;
        }
        for (; e < hi; e += MomentThreads)
        {
            float v = x[start + e] - shift;
            s0 += v;
            q0 += v * v;
        }
        sums[tid] = (s0 + s1) + (s2 + s3);
        squares[tid] = (q0 + q1) + (q2 + q3);
        Group.Barrier();
        for (int half = MomentThreads / 2; half > 0; half /= 2)
        {
            if (tid < half)
            {
                sums[tid] += sums[tid + half];
                squares[tid] += squares[tid + half];
            }
            Group.Barrier();
        }
        if (tid == 0)
        {
            int at = 3 * (ng * chunks + b);
            moments[at] = hi - lo;
            moments[at + 1] = sums[0];
            moments[at + 2] = squares[0];
        }
    }

    /// <summary>v2: (mean, rstd) of group ng from its chunks' moments, merged in double.</summary>
    static void MergeMomentsKernel(Index1D ng, GroupNormShape s, int chunks, ArrayView<float> x, ArrayView<float> moments,
        ArrayView<float> stats)
    {
        double count = 0, mean = 0, m2 = 0;
        int start = ng * s.GroupSize;
        for (int b = 0; b < chunks; b++)
        {
            int at = 3 * (ng * chunks + b);
            double n = moments[at];
            if (n > 0)
            {
                int chunk = (s.GroupSize + chunks - 1) / chunks;
                double shift = x[start + b * chunk];
                double sum = moments[at + 1], sq = moments[at + 2];
                double chunkMean = shift + sum / n, chunkM2 = XMath.Max(sq - sum * sum / n, 0.0);
                // Chan et al.'s pairwise update: merge (n, chunkMean, chunkM2) into (count, mean, m2).
                double total = count + n, delta = chunkMean - mean;
                mean += delta * n / total;
                m2 += chunkM2 + delta * delta * count * n / total;
                count = total;
            }
        }
        stats[2 * ng] = (float)mean;
        stats[2 * ng + 1] = (float)(1.0 / XMath.Sqrt(m2 / count + s.Eps));
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
        int groups = DefaultGroups, float eps = DefaultEps, Reduction statistics = Reduction.Auto)
    {
        using var stats = Statistics(x, groups, eps, statistics);
        Apply(x, stats, gamma, beta, y, silu, scaleShift);
    }

    /// <summary>The normalisation of Forward from statistics already computed (<see cref="Statistics"/>).</summary>
    public static void Apply(Tensor x, Tensor stats, Tensor gamma, Tensor beta, Tensor y, bool silu, Tensor? scaleShift = null)
    {
        var dev = x.Device;
        if (y.Length != x.Length)
        {
            throw new ArgumentException($"group_norm: output {y.ShapeString} does not match input {x.ShapeString}");
        }
        var s = Shape(x, gamma, beta, scaleShift, stats.Length / (2 * x[0]), DefaultEps, silu);
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.GroupNormApply(dev, s, x.View, stats.View, gamma.View, beta.View, scaleShift?.View, y.View);
            return;
        }
        var applyK = dev.Kernel(ApplyKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, GroupNormShape,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(ApplyKernel));
        int threads = dev.StrideThreads(x.Length);
        applyK(threads, threads, s, x.View, gamma.View, beta.View, scaleShift?.View ?? stats.View, stats.View, y.View);
    }

    static GroupNormShape Shape(Tensor x, Tensor gamma, Tensor beta, Tensor? scaleShift, int groups, float eps, bool silu)
    {
        int n = x[0], c = x[1];
        if (groups <= 0 || c % groups != 0 || gamma.Length != c || beta.Length != c)
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

    /// <summary>
    /// (mean, rstd) of every (n, group) of x, as a (N·G, 2) tensor the caller owns (a training pass keeps it for the
    /// backward). <paramref name="reduction"/>: v1 (a thread per group) or v2 (chunked blocks), the device's by default.
    /// </summary>
    public static Tensor Statistics(Tensor x, int groups = DefaultGroups, float eps = DefaultEps, Reduction reduction = Reduction.Auto)
    {
        var dev = x.Device;
        int n = x[0], c = x[1];
        if (groups <= 0 || c % groups != 0)
        {
            throw new ArgumentException($"group_norm: {c} channels cannot form {groups} groups");
        }
        var s = new GroupNormShape { N = n, C = c, Spatial = x.Length / (n * c), Groups = groups, Eps = eps };
        if (dev.RunsKernelsOnHost && reduction == Reduction.Auto)
        {
            var stats = dev.Allocate(n * groups, 2);
            HostBackend.GroupNormStatistics(dev, s, x.View, stats.View);
            return stats;
        }
        return reduction.For(dev) == Reduction.Parallel ? StatisticsV2(dev, x, s) : StatisticsV1(dev, x, s);
    }

    static Tensor StatisticsV2(ComputeDevice dev, Tensor x, GroupNormShape s)
    {
        int groupCount = s.N * s.Groups;
        // About 8 blocks per SM in all, but no chunk under 4 loads per thread.
        int wanted = (8 * Math.Max(2, dev.Accelerator.NumMultiprocessors) + groupCount - 1) / groupCount;
        int chunks = Math.Max(1, Math.Min(wanted, s.GroupSize / (4 * MomentThreads)));
        using var moments = dev.Allocate(groupCount * chunks, 3);
        var stats = dev.Allocate(groupCount, 2);
        var momentsK = dev.Kernel(ChunkMomentsKernel, a => a.LoadStreamKernel<GroupNormShape, ArrayView<float>, ArrayView<float>>(
            ChunkMomentsKernel));
        var mergeK = dev.Kernel(MergeMomentsKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, GroupNormShape, int,
            ArrayView<float>, ArrayView<float>, ArrayView<float>>(MergeMomentsKernel));
        momentsK(new KernelConfig(new Index2D(chunks, groupCount), new Index2D(MomentThreads, 1)), s, x.View, moments.View);
        mergeK(groupCount, s, chunks, x.View, moments.View, stats.View);
        return stats;
    }

    static Tensor StatisticsV1(ComputeDevice dev, Tensor x, GroupNormShape s)
    {
        s.Partials = dev.IsCpu ? 1 : Math.Clamp(s.GroupSize / 256, 1, 256);
        int groupCount = s.N * s.Groups;
        using var partials = dev.Allocate(groupCount, s.Partials);
        using var squares = dev.Allocate(groupCount, s.Partials);
        var stats = dev.Allocate(groupCount, 2);
        var sumK = dev.Kernel(PartialSumKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, GroupNormShape,
            ArrayView<float>, ArrayView<float>>(PartialSumKernel));
        var sqK = dev.Kernel(PartialSquaresKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, GroupNormShape,
            ArrayView<float>, ArrayView<float>, ArrayView<float>>(PartialSquaresKernel));
        var finK = dev.Kernel(FinalizeKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, GroupNormShape,
            ArrayView<float>, ArrayView<float>, ArrayView<float>>(FinalizeKernel));
        sumK(groupCount * s.Partials, s, x.View, partials.View);
        sqK(groupCount * s.Partials, s, x.View, partials.View, squares.View);
        finK(groupCount, s, partials.View, squares.View, stats.View);
        return stats;
    }

    /// <summary>
    /// The norm of Forward as per-(n, c) coefficients (N, C, 4) = (mean, a, b, 0): [scale-shift](GN(x)·γ + β) equals
    /// (x − mean)·a + b. The caller owns the returned tensor; SiLU, if any, is applied by the consumer.
    /// </summary>
    public static Tensor Coefficients(Tensor x, Tensor gamma, Tensor beta, Tensor? scaleShift = null, int groups = DefaultGroups,
        float eps = DefaultEps, Reduction statistics = Reduction.Auto)
    {
        using var stats = Statistics(x, groups, eps, statistics);
        return Coefficients(x, stats, gamma, beta, scaleShift);
    }

    /// <summary>Coefficients from statistics already computed.</summary>
    public static Tensor Coefficients(Tensor x, Tensor stats, Tensor gamma, Tensor beta, Tensor? scaleShift)
    {
        var dev = x.Device;
        var s = Shape(x, gamma, beta, scaleShift, stats.Length / (2 * x[0]), DefaultEps, silu: false);
        var coefficients = dev.Allocate(s.N, s.C, 4);
        var k = dev.Kernel(CoefficientsKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, GroupNormShape, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(CoefficientsKernel));
        k(s.N * s.C, s, gamma.View, beta.View, scaleShift?.View ?? stats.View, stats.View, coefficients.View);
        return coefficients;
    }
}
