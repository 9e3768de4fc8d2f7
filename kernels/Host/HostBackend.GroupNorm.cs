// HostBackend, GroupNorm — the CPU backend's statistics, apply and backward of GroupNorm (+scale-shift, +SiLU): one
// (n, group) run or (n, c) plane per item, SIMD lanes along it, items in fixed chunks over the cores (HostMath.For).
//   Statistics  two passes as v1 (mean, then Σ(x − mean)²) over the group's contiguous run, fp32 lanes summed over at
//               most 1,024 values before each block is added in double: mean and variance to ~1e-7 relative.
//   Apply       per plane y = act((x − mean)·a + b), a = rstd·γ·(1 + scale), b = β·(1 + scale) + shift — the kernel's
//               (x − mean)·rstd·γ + β then ·(1 + scale) + shift with the per-plane factors folded, so each value may differ
//               from the kernel's by an ulp or two of the normalised value (the tests' 2e-5 allows ~100).
//   Backward    per (n, group): pass 1 writes dw = dy·SiLU'(w) of each element to a per-thread scratch and sums
//               S1 = Σ dw, S2 = Σ dw·u per plane (lanes, then double); the group's two terms follow at once, and pass 2
//               reads x and the scratch dw while they are still in cache (an (n, group) run of the demo's 64-channel
//               level at 64² is 32 KB) to write dx — one exp per element instead of the kernel's two. Then a pass over
//               channels adds dγ, dβ over the images in order and writes d(scale, shift): the kernel's formulas, every
//               sum in a fixed order, so the same bits on every run.
// Memory-bound: statistics read x twice (the second from cache), apply reads x once and writes y, backward reads x and
// dy once and writes dx (the scratch stays in cache).
using System.Numerics;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static unsafe partial class HostBackend
{
    [ThreadStatic] static float[]? normScratch;

    /// <summary>(mean, rstd) of every (n, group) run of x into stats (N·G, 2).</summary>
    public static void GroupNormStatistics(ComputeDevice dev, GroupNormShape s, ArrayView<float> x, ArrayView<float> stats)
    {
        dev.Synchronize();
        nint px = (nint)Pointer(x), ps = (nint)Pointer(stats);
        int count = s.GroupSize;
        HostMath.For((long)s.N * s.Groups, Math.Max(1, ElementGrain / count), (first, last) =>
        {
            for (long ng = first; ng < last; ng++)
            {
                float* run = (float*)px + ng * count;
                double mean = Sum(run, count) / count;
                double squares = SquaredDeviations(run, count, (float)mean);
                ((float*)ps)[2 * ng] = (float)mean;
                ((float*)ps)[2 * ng + 1] = (float)(1.0 / Math.Sqrt(squares / count + s.Eps));
            }
        });
    }

    /// <summary>Σ (x − mean)² over x[0..n): fp32 lanes over blocks of 1,024 values, the blocks added in double.</summary>
    static double SquaredDeviations(float* x, int n, float mean)
    {
        double total = 0;
        var m = new Vector<float>(mean);
        int i = 0;
        for (; i + Lanes <= n;)
        {
            var acc = Vector<float>.Zero;
            int end = Math.Min(n - Lanes, i + 1024 - Lanes);
            for (; i <= end; i += Lanes)
            {
                var d = Vector.Load(x + i) - m;
                acc = Vector.FusedMultiplyAdd(d, d, acc);
            }
            Vector.Widen(acc, out var low, out var high);
            total += Vector.Sum(low + high);
        }
        for (; i < n; i++)
        {
            double d = x[i] - mean;
            total += d * d;
        }
        return total;
    }

    /// <summary>The per-plane factors of plane (n, c): normalised value = (x − mean)·a + b, before SiLU.</summary>
    static (float Mean, float A, float B) PlaneFactors(GroupNormShape s, float* stats, float* gamma, float* beta, float* emb, int n,
        int c)
    {
        int ng = n * s.Groups + c / s.ChannelsPerGroup;
        float a = stats[2 * ng + 1] * gamma[c], b = beta[c];
        if (emb != null)
        {
            float scale = 1f + emb[n * 2 * s.C + c];
            a *= scale;
            b = b * scale + emb[n * 2 * s.C + s.C + c];
        }
        return (stats[2 * ng], a, b);
    }

    /// <summary>y = [SiLU]([scale-shift](GN(x)·γ + β)) from the statistics; <paramref name="emb"/> null without scale-shift.</summary>
    public static void GroupNormApply(ComputeDevice dev, GroupNormShape s, ArrayView<float> x, ArrayView<float> stats,
        ArrayView<float> gamma, ArrayView<float> beta, ArrayView<float>? emb, ArrayView<float> y)
    {
        dev.Synchronize();
        nint px = (nint)Pointer(x), ps = (nint)Pointer(stats), pg = (nint)Pointer(gamma), pb = (nint)Pointer(beta);
        nint pe = emb is { } e ? (nint)Pointer(e) : 0, py = (nint)Pointer(y);
        bool silu = s.Silu != 0;
        HostMath.For((long)s.N * s.C, Math.Max(1, ElementGrain / s.Spatial), (first, last) =>
        {
            for (long plane = first; plane < last; plane++)
            {
                int n = (int)(plane / s.C), c = (int)(plane % s.C);
                var (mean, a, b) = PlaneFactors(s, (float*)ps, (float*)pg, (float*)pb, (float*)pe, n, c);
                NormalizeRun((float*)px + plane * s.Spatial, (float*)py + plane * s.Spatial, s.Spatial, mean, a, b, silu);
            }
        });
    }

    /// <summary>dst[i] = act((src[i] − mean)·a + b) for i in [0, n); dst may alias src.</summary>
    internal static void NormalizeRun(float* src, float* dst, int n, float mean, float a, float b, bool silu)
    {
        var m = new Vector<float>(mean);
        var av = new Vector<float>(a);
        var bv = new Vector<float>(b);
        int i = 0;
        for (; i + Lanes <= n; i += Lanes)
        {
            var v = Vector.FusedMultiplyAdd(Vector.Load(src + i) - m, av, bv);
            Vector.Store(silu ? HostMath.Silu(v) : v, dst + i);
        }
        for (; i < n; i++)
        {
            float v = MathF.FusedMultiplyAdd(src[i] - mean, a, b);
            dst[i] = silu ? HostMath.Silu(v) : v;
        }
    }

    /// <summary>
    /// The backward of <see cref="GroupNormApply"/>: dx written (added when <paramref name="accumulate"/>), dγ and dβ added,
    /// d(scale, shift) written when <paramref name="emb"/> is given.
    /// </summary>
    public static void GroupNormBackward(ComputeDevice dev, GroupNormShape s, ArrayView<float> x, ArrayView<float> stats,
        ArrayView<float> gamma, ArrayView<float> beta, ArrayView<float>? emb, ArrayView<float> dy, ArrayView<float> dx,
        ArrayView<float> dgamma, ArrayView<float> dbeta, ArrayView<float>? dScaleShift, bool accumulate)
    {
        dev.Synchronize();
        var sums = new double[2 * s.N * s.C];
        var args = new NormBackwardArgs
        {
            S = s, X = Pointer(x), Stats = Pointer(stats), Gamma = Pointer(gamma), Beta = Pointer(beta),
            Emb = emb is { } e ? Pointer(e) : null, Dy = Pointer(dy), Dx = Pointer(dx), Accumulate = accumulate,
        };
        fixed (double* ps = sums)
        {
            args.Sums = ps;
            HostMath.ForEach(s.N * s.Groups, Math.Max(1, ElementGrain / s.GroupSize), ng => GroupBackward(args, ng));
        }
        float* dg = Pointer(dgamma), db = Pointer(dbeta), dss = dScaleShift is { } d ? Pointer(d) : null;
        for (int c = 0; c < s.C; c++)
        {
            double g = 0, b = 0;
            for (int n = 0; n < s.N; n++)
            {
                double s1 = sums[2 * (n * s.C + c)], s2 = sums[2 * (n * s.C + c) + 1];
                double k = args.Emb == null ? 1.0 : 1.0 + args.Emb[n * 2 * s.C + c];
                b += k * s1;
                g += k * s2;
                if (dss != null)
                {
                    dss[n * 2 * s.C + c] = (float)(args.Gamma[c] * s2 + args.Beta[c] * s1);
                    dss[n * 2 * s.C + s.C + c] = (float)s1;
                }
            }
            dg[c] += (float)g;
            db[c] += (float)b;
        }
    }

    struct NormBackwardArgs
    {
        public GroupNormShape S;
        public float* X, Stats, Gamma, Beta, Emb, Dy, Dx;
        public double* Sums;
        public bool Accumulate;
    }

    /// <summary>Both passes of one (n, group): the plane sums into Sums, then dx of the group's elements.</summary>
    static void GroupBackward(NormBackwardArgs p, int ng)
    {
        var s = p.S;
        int n = ng / s.Groups, c0 = ng % s.Groups * s.ChannelsPerGroup, spatial = s.Spatial;
        float mean = p.Stats[2 * ng], rstd = p.Stats[2 * ng + 1];
        bool silu = s.Silu != 0;
        if (silu && (normScratch is null || normScratch.Length < s.GroupSize))
        {
            normScratch = GC.AllocateUninitializedArray<float>(s.GroupSize, pinned: true);
        }
        fixed (float* scratch = normScratch)
        {
            double meanG = 0, meanGu = 0;
            for (int c = c0; c < c0 + s.ChannelsPerGroup; c++)
            {
                long plane = (long)n * s.C + c;
                float scale = p.Emb == null ? 0f : p.Emb[n * 2 * s.C + c];
                float shift = p.Emb == null ? 0f : p.Emb[n * 2 * s.C + s.C + c];
                float* dw = silu ? scratch + (c - c0) * spatial : p.Dy + plane * spatial;
                var (s1, s2) = PlaneSums(p.X + plane * spatial, p.Dy + plane * spatial, dw, spatial, mean, rstd, p.Gamma[c], p.Beta[c],
                    scale, shift, silu);
                p.Sums[2 * plane] = s1;
                p.Sums[2 * plane + 1] = s2;
                double k = (1.0 + scale) * p.Gamma[c];
                meanG += k * s1;
                meanGu += k * s2;
            }
            float tg = (float)(meanG / s.GroupSize), tgu = (float)(meanGu / s.GroupSize);
            for (int c = c0; c < c0 + s.ChannelsPerGroup; c++)
            {
                long plane = (long)n * s.C + c;
                float scale = p.Emb == null ? 0f : p.Emb[n * 2 * s.C + c];
                float* dw = silu ? scratch + (c - c0) * spatial : p.Dy + plane * spatial;
                InputGradRun(p.X + plane * spatial, dw, p.Dx + plane * spatial, spatial, mean, rstd, (1f + scale) * p.Gamma[c], tg, tgu,
                    p.Accumulate);
            }
        }
    }

    /// <summary>
    /// (Σ dw, Σ dw·u) over one plane, u = (x − mean)·rstd, dw = dy·SiLU'(w) with w = (u·γ + β)·(1 + scale) + shift (written
    /// to <paramref name="dw"/> when <paramref name="silu"/>; else dw is dy itself).
    /// </summary>
    static (double S1, double S2) PlaneSums(float* x, float* dy, float* dw, int n, float mean, float rstd, float gamma, float beta,
        float scale, float shift, bool silu)
    {
        var m = new Vector<float>(mean);
        var r = new Vector<float>(rstd);
        var a = new Vector<float>(gamma * (1f + scale));
        var b = new Vector<float>(beta * (1f + scale) + shift);
        double s1 = 0, s2 = 0;
        int i = 0;
        for (; i + Lanes <= n;)
        {
            Vector<float> acc1 = Vector<float>.Zero, acc2 = Vector<float>.Zero;
            int end = Math.Min(n - Lanes, i + 1024 - Lanes);
            for (; i <= end; i += Lanes)
            {
                var u = (Vector.Load(x + i) - m) * r;
                var g = Vector.Load(dy + i);
                if (silu)
                {
                    g *= HostMath.SiluDerivative(Vector.FusedMultiplyAdd(u, a, b));
                    Vector.Store(g, dw + i);
                }
                acc1 += g;
                acc2 = Vector.FusedMultiplyAdd(g, u, acc2);
            }
            Vector.Widen(acc1, out var l1, out var h1);
            Vector.Widen(acc2, out var l2, out var h2);
            s1 += Vector.Sum(l1 + h1);
            s2 += Vector.Sum(l2 + h2);
        }
        for (; i < n; i++)
        {
            float u = (x[i] - mean) * rstd, g = dy[i];
            if (silu)
            {
                g *= HostMath.SiluDerivative(MathF.FusedMultiplyAdd(u, gamma * (1f + scale), beta * (1f + scale) + shift));
                dw[i] = g;
            }
            s1 += g;
            s2 += (double)g * u;
        }
        return (s1, s2);
    }

    /// <summary>dx = rstd·(dw·k − tg − u·tgu) over one plane, k = (1 + scale)·γ; written or added.</summary>
    static void InputGradRun(float* x, float* dw, float* dx, int n, float mean, float rstd, float k, float tg, float tgu,
        bool accumulate)
    {
        var m = new Vector<float>(mean);
        var r = new Vector<float>(rstd);
        var kv = new Vector<float>(k);
        var tgv = new Vector<float>(tg);
        var tguv = new Vector<float>(tgu);
        int i = 0;
        for (; i + Lanes <= n; i += Lanes)
        {
            var u = (Vector.Load(x + i) - m) * r;
            var grad = r * (Vector.Load(dw + i) * kv - tgv - u * tguv);
            Vector.Store(accumulate ? Vector.Load(dx + i) + grad : grad, dx + i);
        }
        for (; i < n; i++)
        {
            float u = (x[i] - mean) * rstd;
            float grad = rstd * (dw[i] * k - tg - u * tgu);
            dx[i] = accumulate ? dx[i] + grad : grad;
        }
    }
}
