// GroupNorm backward — the gradients of Forward's y = [SiLU]([(·)(1 + scale) + shift](GN(x)·γ + β)) from the statistics
// (mean, rstd) the forward pass kept. Per element, with r = rstd of its (n, group), s/t = its (n, c)'s scale/shift:
//   u = (x − mean)·r,  v = u·γ + β,  w = v·(1 + s) + t,  dw = dy·SiLU'(w)   (SiLU'(w) = σ(w)·(1 + w·(1 − σ(w))))
// Two sums per (n, c) plane carry every parameter gradient: S1 = Σ_spatial dw, S2 = Σ_spatial dw·u. Then
//   dt = S1,  ds = Σ dw·v = γ·S2 + β·S1,  dβ += Σ_n (1 + s)·S1,  dγ += Σ_n (1 + s)·S2,
//   dx = r·(g − mean_group(g) − u·mean_group(g·u)),  g = dw·(1 + s)·γ, so mean_group(g) = Σ_c (1 + s)γ·S1 / |group| and
//   mean_group(g·u) = Σ_c (1 + s)γ·S2 / |group|.
// Passes (deterministic: no atomics, every sum in a fixed order):
//   1. plane sums (S1, S2), in chunks: (N·C, chunks, 2)
//        v1  a thread per plane, one chunk, summed in double (Reduction.ThreadPerRow: the CPU accelerator, where double
//            costs nothing; an fp32 running sum over a 2,053-value plane put 3e-6 relative error into dγ, measured).
//        v2  a block of 256 threads per chunk of a plane, tree-summed in shared memory (Reduction.Parallel: GPUs; tested on
//            the warp-32 simulator); chunks sized as the forward's statistics v2 (about 8 blocks per SM in all, at least
//            4 values per thread).
//   2. group terms (mean_group(g), mean_group(g·u)): a thread per (n, group), its channels' chunks in order.
//   3. parameter gradients: a thread per channel, batches in order: dγ, dβ accumulated; dScaleShift (N, 2C) written.
//   4. dx: grid-stride over elements, written or (accumulateInput) added.
// x, dy, dx: (N, C, ...spatial); stats: (N·G, 2); γ, β, dγ, dβ: (C); scaleShift, dScaleShift: (N, 2C) = [scale | shift].
// Memory-bound: passes 1 and 4 each read x and dy (4 reads + 1 write per element, +1 read when accumulating); the
// per-element SiLU' costs one exp, as the forward.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class GroupNorm
{
    // ---- CPU reference

    /// <summary>
    /// The gradients of <see cref="Reference(double[], double[], double[], int, int, int, int, double, bool, double[])"/>
    /// against dy, in double with the statistics recomputed from x: (dx, dγ, dβ, dScaleShift or null).
    /// </summary>
    public static (double[] Dx, double[] Dgamma, double[] Dbeta, double[]? DscaleShift) BackwardReference(double[] x, double[] gamma,
        double[] beta, double[]? emb, bool silu, double[] dy, int n, int c, int spatial, int groups, double eps)
    {
        var dx = new double[x.Length];
        var dgamma = new double[c];
        var dbeta = new double[c];
        var demb = emb is null ? null : new double[n * 2 * c];
        int cg = c / groups, count = cg * spatial;
        var u = new double[count];
        var g = new double[count];
        for (int b = 0; b < n; b++)
        for (int grp = 0; grp < groups; grp++)
        {
            int start = (b * c + grp * cg) * spatial;
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
            double rstd = 1 / Math.Sqrt(var / count + eps);
            double meanG = 0, meanGu = 0;
            for (int e = 0; e < count; e++)
            {
                int ch = grp * cg + e / spatial;
                double scale = emb is null ? 0 : emb[b * 2 * c + ch], shift = emb is null ? 0 : emb[b * 2 * c + c + ch];
                u[e] = (x[start + e] - mean) * rstd;
                double v = u[e] * gamma[ch] + beta[ch];
                double w = v * (1 + scale) + shift;
                double dw = dy[start + e];
                if (silu)
                {
                    double sig = 1 / (1 + Math.Exp(-w));
                    dw *= sig * (1 + w * (1 - sig));
                }
                double dv = dw * (1 + scale);
                dbeta[ch] += dv;
                dgamma[ch] += dv * u[e];
                if (demb is not null)
                {
                    demb[b * 2 * c + ch] += dw * v;
                    demb[b * 2 * c + c + ch] += dw;
                }
                g[e] = dv * gamma[ch];
                meanG += g[e];
                meanGu += g[e] * u[e];
            }
            meanG /= count;
            meanGu /= count;
            for (int e = 0; e < count; e++)
            {
                dx[start + e] = rstd * (g[e] - meanG - u[e] * meanGu);
            }
        }
        return (dx, dgamma, dbeta, demb);
    }

    // ---- GPU kernels

    /// <summary>dL/dw of one element: dy through SiLU' of w = v·(1 + scale) + shift (w = v without scale-shift).</summary>
    static float PreActivationGrad(GroupNormShape s, float v, float scale, float shift, float dy)
    {
        if (s.Silu == 0)
        {
            return dy;
        }
        float w = s.ScaleShift != 0 ? v * (1f + scale) + shift : v;
        float sig = 1f / (1f + XMath.Exp(-w));
        return dy * (sig * (1f + w * (1f - sig)));
    }

    /// <summary>scale of (n, ch), or 0 without scale-shift.</summary>
    static float ScaleOf(GroupNormShape s, ArrayView<float> emb, int n, int ch) => s.ScaleShift != 0 ? emb[n * 2 * s.C + ch] : 0f;

    static float ShiftOf(GroupNormShape s, ArrayView<float> emb, int n, int ch) => s.ScaleShift != 0 ? emb[n * 2 * s.C + s.C + ch] : 0f;

    /// <summary>v1: a thread per (n, c) plane writes (S1, S2) = (Σ dw, Σ dw·u) over its spatial run (one chunk), in double.</summary>
    static void PlaneSumsKernel(Index1D index, int stride, GroupNormShape s, ArrayView<float> x, ArrayView<float> stats,
        ArrayView<float> gamma, ArrayView<float> beta, ArrayView<float> emb, ArrayView<float> dy, ArrayView<float> sums)
    {
        int planes = s.N * s.C;
        for (int plane = index; plane < planes; plane += stride)
        {
            int ch = plane % s.C, n = plane / s.C;
            int ng = n * s.Groups + ch / s.ChannelsPerGroup;
            float mean = stats[2 * ng], rstd = stats[2 * ng + 1], gam = gamma[ch], bet = beta[ch];
            float scale = ScaleOf(s, emb, n, ch), shift = ShiftOf(s, emb, n, ch);
            int start = plane * s.Spatial;
            double s1 = 0, s2 = 0;
            for (int e = 0; e < s.Spatial; e++)
            {
                float u = (x[start + e] - mean) * rstd;
                float dw = PreActivationGrad(s, u * gam + bet, scale, shift, dy[start + e]);
                s1 += dw;
                s2 += dw * u;
            }
            sums[2 * plane] = (float)s1;
            sums[2 * plane + 1] = (float)s2;
        }
    }

    const int BackwardThreads = 256;

    /// <summary>
    /// v2: grid (chunks, N·C), 256 threads. Chunk b of plane p writes sums[2·(p·chunks + b) ..] = (Σ dw, Σ dw·u) over its
    /// contiguous run; a warp reads 32 consecutive values per load.
    /// </summary>
    static void PlaneChunkSumsKernel(GroupNormShape s, ArrayView<float> x, ArrayView<float> stats, ArrayView<float> gamma,
        ArrayView<float> beta, ArrayView<float> emb, ArrayView<float> dy, ArrayView<float> sums)
    {
        var first = SharedMemory.Allocate<float>(BackwardThreads);
        var second = SharedMemory.Allocate<float>(BackwardThreads);
        int chunks = Grid.DimX, b = Grid.IdxX, plane = Grid.IdxY, tid = Group.IdxX;
        int ch = plane % s.C, n = plane / s.C;
        int ng = n * s.Groups + ch / s.ChannelsPerGroup;
        float mean = stats[2 * ng], rstd = stats[2 * ng + 1], gam = gamma[ch], bet = beta[ch];
        float scale = ScaleOf(s, emb, n, ch), shift = ShiftOf(s, emb, n, ch);
        int chunk = (s.Spatial + chunks - 1) / chunks;
        int lo = XMath.Min(b * chunk, s.Spatial), hi = XMath.Min(lo + chunk, s.Spatial);
        int start = plane * s.Spatial;
        float s1 = 0f, s2 = 0f;
        for (int e = lo + tid; e < hi; e += BackwardThreads)
        {
            float u = (x[start + e] - mean) * rstd;
            float dw = PreActivationGrad(s, u * gam + bet, scale, shift, dy[start + e]);
            s1 += dw;
            s2 += dw * u;
        }
        first[tid] = s1;
        second[tid] = s2;
        Group.Barrier();
        for (int half = BackwardThreads / 2; half > 0; half /= 2)
        {
            if (tid < half)
            {
                first[tid] += first[tid + half];
                second[tid] += second[tid + half];
            }
            Group.Barrier();
        }
        if (tid == 0)
        {
            int at = 2 * (plane * chunks + b);
            sums[at] = first[0];
            sums[at + 1] = second[0];
        }
    }

    /// <summary>S1 (which = 0) or S2 (which = 1) of a plane: its chunks summed in order.</summary>
    static float PlaneSum(ArrayView<float> sums, int chunks, int plane, int which)
    {
        float acc = 0f;
        for (int b = 0; b < chunks; b++)
        {
            acc += sums[2 * (plane * chunks + b) + which];
        }
        return acc;
    }

    /// <summary>(mean_group(g), mean_group(g·u)) of group ng: Σ over its channels of (1 + s)·γ·(S1, S2), over the group's size.</summary>
    static void GroupTermsKernel(Index1D ng, GroupNormShape s, int chunks, ArrayView<float> gamma, ArrayView<float> emb,
        ArrayView<float> sums, ArrayView<float> terms)
    {
        int n = ng / s.Groups, c0 = ng % s.Groups * s.ChannelsPerGroup;
        float meanG = 0f, meanGu = 0f;
        for (int ch = c0; ch < c0 + s.ChannelsPerGroup; ch++)
        {
            float k = (1f + ScaleOf(s, emb, n, ch)) * gamma[ch];
            int plane = n * s.C + ch;
            meanG += k * PlaneSum(sums, chunks, plane, 0);
            meanGu += k * PlaneSum(sums, chunks, plane, 1);
        }
        terms[2 * ng] = meanG / s.GroupSize;
        terms[2 * ng + 1] = meanGu / s.GroupSize;
    }

    /// <summary>
    /// A thread per channel: dγ += Σ_n (1 + s)·S2, dβ += Σ_n (1 + s)·S1; with scale-shift dScaleShift = (γ·S2 + β·S1, S1).
    /// </summary>
    static void ParameterGradsKernel(Index1D index, int stride, GroupNormShape s, int chunks, ArrayView<float> gamma, ArrayView<float> beta,
        ArrayView<float> emb, ArrayView<float> sums, ArrayView<float> dgamma, ArrayView<float> dbeta, ArrayView<float> dScaleShift)
    {
        for (int ch = index; ch < s.C; ch += stride)
        {
            float gam = gamma[ch], bet = beta[ch];
            float dg = 0f, db = 0f;
            for (int n = 0; n < s.N; n++)
            {
                int plane = n * s.C + ch;
                float s1 = PlaneSum(sums, chunks, plane, 0), s2 = PlaneSum(sums, chunks, plane, 1);
                float k = 1f + ScaleOf(s, emb, n, ch);
                db += k * s1;
                dg += k * s2;
                if (s.ScaleShift != 0)
                {
                    dScaleShift[n * 2 * s.C + ch] = gam * s2 + bet * s1;
                    dScaleShift[n * 2 * s.C + s.C + ch] = s1;
                }
            }
            dgamma[ch] += dg;
            dbeta[ch] += db;
        }
    }

    /// <summary>dx = r·(g − mean_group(g) − u·mean_group(g·u)) per element, written or added (accumulate ≠ 0).</summary>
    static void InputGradKernel(Index1D index, int stride, GroupNormShape s, int accumulate, ArrayView<float> x, ArrayView<float> stats,
        ArrayView<float> gamma, ArrayView<float> beta, ArrayView<float> emb, ArrayView<float> dy, ArrayView<float> terms,
        ArrayView<float> dx)
    {
        int total = s.N * s.C * s.Spatial;
        for (int i = index; i < total; i += stride)
        {
            int ch = i / s.Spatial % s.C;
            int n = i / (s.Spatial * s.C);
            int ng = n * s.Groups + ch / s.ChannelsPerGroup;
            float rstd = stats[2 * ng + 1], gam = gamma[ch], scale = ScaleOf(s, emb, n, ch);
            float u = (x[i] - stats[2 * ng]) * rstd;
            float dw = PreActivationGrad(s, u * gam + beta[ch], scale, ShiftOf(s, emb, n, ch), dy[i]);
            float g = dw * (1f + scale) * gam;
            float grad = rstd * (g - terms[2 * ng] - u * terms[2 * ng + 1]);
            dx[i] = accumulate != 0 ? dx[i] + grad : grad;
        }
    }

    // ---- launcher

    /// <summary>
    /// The backward of <see cref="Apply"/> with the statistics it used: dx written (added to when
    /// <paramref name="accumulateInput"/>), dγ and dβ accumulated (+=), dScaleShift (N, 2C) written when scaleShift is
    /// given. The device chooses the plane-sum kernel (v1 on the CPU accelerator, v2 on CUDA).
    /// </summary>
    public static void Backward(Tensor x, Tensor stats, Tensor gamma, Tensor beta, Tensor? scaleShift, bool silu, Tensor dy, Tensor dx,
        Tensor dgamma, Tensor dbeta, Tensor? dScaleShift, bool accumulateInput = false) =>
        Backward(x, stats, gamma, beta, scaleShift, silu, dy, dx, dgamma, dbeta, dScaleShift, accumulateInput, Reduction.Auto);

    /// <summary>Backward with the plane sums' kernel chosen: ThreadPerRow (v1) or Parallel (v2).</summary>
    public static void Backward(Tensor x, Tensor stats, Tensor gamma, Tensor beta, Tensor? scaleShift, bool silu, Tensor dy, Tensor dx,
        Tensor dgamma, Tensor dbeta, Tensor? dScaleShift, bool accumulateInput, Reduction reduction)
    {
        var dev = x.Device;
        var s = Shape(x, gamma, beta, scaleShift, stats.Length / (2 * x[0]), DefaultEps, silu);
        if (dy.Length != x.Length || dx.Length != x.Length || dgamma.Length != s.C || dbeta.Length != s.C ||
            stats.Length != 2 * s.N * s.Groups)
        {
            throw new ArgumentException($"group_norm backward: x {x.ShapeString}, stats {stats.ShapeString}, dy {dy.ShapeString}, " +
                                        $"dx {dx.ShapeString}, dγ {dgamma.ShapeString}, dβ {dbeta.ShapeString}");
        }
        if ((scaleShift is null) != (dScaleShift is null) || (dScaleShift is not null && dScaleShift.Length != 2 * s.N * s.C))
        {
            throw new ArgumentException($"group_norm backward: dScaleShift {dScaleShift?.ShapeString ?? "null"} should be " +
                                        $"({s.N}, {2 * s.C}) exactly when scaleShift is given");
        }
        if (dev.RunsKernelsOnHost && reduction == Reduction.Auto)
        {
            HostBackend.GroupNormBackward(dev, s, x.View, stats.View, gamma.View, beta.View, scaleShift?.View, dy.View, dx.View,
                dgamma.View, dbeta.View, dScaleShift?.View, accumulateInput);
            return;
        }
        var emb = scaleShift?.View ?? stats.View;
        int planes = s.N * s.C;
        bool parallel = reduction.For(dev) == Reduction.Parallel;
        int chunks = parallel ? BackwardChunks(dev, s) : 1;
        using var sums = dev.Allocate(planes, chunks, 2);
        if (parallel)
        {
            var k = dev.Kernel(PlaneChunkSumsKernel, a => a.LoadStreamKernel<GroupNormShape, ArrayView<float>, ArrayView<float>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(PlaneChunkSumsKernel));
            k(new KernelConfig(new Index2D(chunks, planes), new Index2D(BackwardThreads, 1)), s, x.View, stats.View, gamma.View,
                beta.View, emb, dy.View, sums.View);
        }
        else
        {
            var k = dev.Kernel(PlaneSumsKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, GroupNormShape, ArrayView<float>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(
                PlaneSumsKernel));
            int threads = dev.StrideThreads(planes);
            k(threads, threads, s, x.View, stats.View, gamma.View, beta.View, emb, dy.View, sums.View);
        }
        int groupCount = s.N * s.Groups;
        using var terms = dev.Allocate(groupCount, 2);
        var termsK = dev.Kernel(GroupTermsKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, GroupNormShape, int, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>>(GroupTermsKernel));
        termsK(groupCount, s, chunks, gamma.View, emb, sums.View, terms.View);
        var paramsK = dev.Kernel(ParameterGradsKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, GroupNormShape, int,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>>(ParameterGradsKernel));
        int channelThreads = dev.StrideThreads(s.C);
        paramsK(channelThreads, channelThreads, s, chunks, gamma.View, beta.View, emb, sums.View, dgamma.View, dbeta.View,
            dScaleShift?.View ?? stats.View);
        var dxK = dev.Kernel(InputGradKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, GroupNormShape, int, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
            ArrayView<float>>(InputGradKernel));
        int threads2 = dev.StrideThreads(x.Length);
        dxK(threads2, threads2, s, accumulateInput ? 1 : 0, x.View, stats.View, gamma.View, beta.View, emb, dy.View, terms.View, dx.View);
    }

    /// <summary>v2's chunks per plane: about 8 blocks per SM in all, but no chunk under 4 values per thread.</summary>
    static int BackwardChunks(ComputeDevice dev, GroupNormShape s)
    {
        int planes = s.N * s.C;
        int wanted = (8 * Math.Max(2, dev.Accelerator.NumMultiprocessors) + planes - 1) / planes;
        return Math.Max(1, Math.Min(wanted, s.Spatial / (4 * BackwardThreads)));
    }
}
