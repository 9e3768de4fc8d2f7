// Attention — guided-diffusion's multi-head QKV attention on qkv: (N, 3C, T) → (N, C, T), heads H, ch = C/H.
//   legacy order (QKVAttentionLegacy, every LSUN/FFHQ/ImageNet-128/256/512 checkpoint): per head the rows
//     [h·3ch, h·3ch+ch) are q, the next ch are k, the next ch v — layout (head, {q,k,v}, ch).
//   new order (QKVAttention, ImageNet-64): q = rows [0,C), k = [C,2C), v = [2C,3C), each (head, ch).
// w[t,s] = softmax_s(Σ_c (q[c,t]·σ)(k[c,s]·σ)) with σ = ch^(−1/4); out[c,t] = Σ_s w[t,s]·v[c,s];
// output channels head-major in both orders.
// Forward:
//   v1  two batched Gemms through a (N·H, T, T) score buffer and a row Softmax between them (any Gemm version).
//   v2  flash: one kernel, tile by tile with an online softmax, never writing the T×T scores. A group of 256 threads
//       owns 64 queries of one head: Q (64 × ch, pre-scaled by σ²) stays in shared memory; per tile of 32 keys it
//       computes S (4×2 per thread), updates each row's running max and sum (4 lanes per row, shuffles), rescales its
//       4 queries × 4 channels of O and adds P·Vᵀ. fp32 throughout; for ch ≤ 64 and 32-lane warps (the UNet's
//       num_head_channels 64), chosen with the tiled kernels (MatmulKernel.Tiled). Optionally writes each query's
//       log Σ_s exp(S) (max + log sum), which is what its backward needs to recompute P.
// Backward (dy = dL/dout (N, C, T) → dqkv (N, 3C, T) in qkv's layout, every element written once):
//   P = softmax(σ²·qᵀk), dV = dY·P, dP = dYᵀ·V, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = σ²·K·dSᵀ, dK = σ²·Q·dS.
//   v1  P recomputed as forward v1 into one (N·H, T, T) buffer, dP into a second; four strided batched Gemms write
//       dV, dP, dQ, dK (the last three straight into dqkv's rows) and Softmax.Backward turns dP into dS in place. With
//       the fp16 kernels every product's operands are rounded to fp16 as in the forward; P, dP and dS are stored fp32.
//   v2  flash (MatmulKernel.Tiled, where forward v2 runs): the T×T matrices are never written. From the forward's
//       output and log Σ exp (forward v2 is rerun when only qkv is given), a pre-pass takes D = rowsum(dY ⊙ Y) (equal
//       to rowsum(dP ⊙ P)); then two kernels of 256 threads over 32 × 32 tiles, each thread 4 scores, recompute
//       P = exp(S − lse) and dS = P ⊙ (dP − D) tile by tile: one owns 32 keys and loops over every query tile,
//       summing dK and dV (8 channels of one key per thread, each in registers), the other owns 32 queries and loops
//       over the key tiles, summing dQ. No atomics: each output has one writer and a fixed summation order, so the
//       result is deterministic. 7 products of T²·ch each (S and dP computed twice) against forward v2's 2.
//       Shared memory: 4 tiles of 64 × 32 floats, P and dS 32 × 33: 41.5 KB of the 48 KB. Read statically
//       (benchmarks/ptx/sass-mix.sh, ptxas 11.8 for sm_90): 48 and 40 registers, no spills; the score and sum loops are
//       20–25% FFMA, the rest shared loads and their address arithmetic. Not yet timed on a GPU.
// FLOPs: forward 4·N·H·T²·ch; backward v1 8·N·H·T²·ch (+ the recomputed P: 2·N·H·T²·ch), v2 14·N·H·T²·ch.
// Score buffer N·H·T² floats (32 MB for the 256-model's 32×32 level at batch 1); backward v1 needs two.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class Attention
{
    // ---- CPU reference

    /// <summary>The forward in double: qkv (N, 3C, T) → y (N, C, T).</summary>
    public static double[] Reference(double[] qkv, int n, int channels, int t, int heads, bool legacyOrder)
    {
        int ch = channels / heads;
        double scale2 = 1 / Math.Sqrt(ch);
        var y = new double[n * channels * t];
        var w = new double[t];
        for (int b = 0; b < n; b++)
        for (int h = 0; h < heads; h++)
        {
            QkvOffsets(b, h, channels, t, heads, legacyOrder, out int q0, out int k0, out int v0);
            for (int i = 0; i < t; i++)
            {
                double max = double.NegativeInfinity;
                for (int j = 0; j < t; j++)
                {
                    double acc = 0;
                    for (int c = 0; c < ch; c++)
                    {
                        acc += qkv[q0 + c * t + i] * qkv[k0 + c * t + j];
                    }
                    w[j] = scale2 * acc;
                    max = Math.Max(max, w[j]);
                }
                double sum = 0;
                for (int j = 0; j < t; j++)
                {
                    w[j] = Math.Exp(w[j] - max);
                    sum += w[j];
                }
                for (int c = 0; c < ch; c++)
                {
                    double acc = 0;
                    for (int j = 0; j < t; j++)
                    {
                        acc += w[j] / sum * qkv[v0 + c * t + j];
                    }
                    y[(b * channels + h * ch + c) * t + i] = acc;
                }
            }
        }
        return y;
    }

    public static float[] Reference(float[] qkv, int n, int channels, int t, int heads, bool legacyOrder) =>
        ToSingle(Reference(ToDouble(qkv), n, channels, t, heads, legacyOrder));

    /// <summary>
    /// The backward in double: dqkv (N, 3C, T), in qkv's layout, of the loss whose gradient at the output is dy (N, C, T).
    /// <paramref name="roundOperandsToHalf"/>: both operands of each of the five products (qᵀk, dY·P, dYᵀ·V, K·dSᵀ, Q·dS)
    /// rounded to fp16 first, P and dS through fp32, as the fp16 kernels run backward v1; the softmax and dS stay unrounded.
    /// </summary>
    public static double[] BackwardReference(double[] qkv, double[] dy, int n, int channels, int t, int heads, bool legacyOrder,
        bool roundOperandsToHalf = false)
    {
        int ch = channels / heads;
        double scale2 = 1 / Math.Sqrt(ch);
        Func<double, double> r = roundOperandsToHalf ? x => (double)(System.Half)(float)x : x => x;
        var dqkv = new double[qkv.Length];
        var p = new double[t * t];
        var ds = new double[t * t];
        for (int b = 0; b < n; b++)
        for (int h = 0; h < heads; h++)
        {
            QkvOffsets(b, h, channels, t, heads, legacyOrder, out int q0, out int k0, out int v0);
            int y0 = (b * channels + h * ch) * t;
            // P = softmax(σ²·qᵀk) by rows
            for (int i = 0; i < t; i++)
            {
                double max = double.NegativeInfinity, sum = 0;
                for (int j = 0; j < t; j++)
                {
                    double acc = 0;
                    for (int c = 0; c < ch; c++)
                    {
                        acc += r(qkv[q0 + c * t + i]) * r(qkv[k0 + c * t + j]);
                    }
                    p[i * t + j] = scale2 * acc;
                    max = Math.Max(max, p[i * t + j]);
                }
                for (int j = 0; j < t; j++)
                {
                    p[i * t + j] = Math.Exp(p[i * t + j] - max);
                    sum += p[i * t + j];
                }
                for (int j = 0; j < t; j++)
                {
                    p[i * t + j] /= sum;
                }
            }
            // dP = dYᵀ·V, then dS = P ⊙ (dP − rowsum(dP ⊙ P))
            for (int i = 0; i < t; i++)
            {
                double dot = 0;
                for (int j = 0; j < t; j++)
                {
                    double acc = 0;
                    for (int c = 0; c < ch; c++)
                    {
                        acc += r(dy[y0 + c * t + i]) * r(qkv[v0 + c * t + j]);
                    }
                    ds[i * t + j] = acc;
                    dot += acc * p[i * t + j];
                }
                for (int j = 0; j < t; j++)
                {
                    ds[i * t + j] = p[i * t + j] * (ds[i * t + j] - dot);
                }
            }
            // dV = dY·P, dK = σ²·Q·dS, dQ = σ²·K·dSᵀ
            for (int c = 0; c < ch; c++)
            {
                for (int j = 0; j < t; j++)
                {
                    double dv = 0, dk = 0;
                    for (int i = 0; i < t; i++)
                    {
                        dv += r(dy[y0 + c * t + i]) * r(p[i * t + j]);
                        dk += r(qkv[q0 + c * t + i]) * r(ds[i * t + j]);
                    }
                    dqkv[v0 + c * t + j] = dv;
                    dqkv[k0 + c * t + j] = scale2 * dk;
                }
                for (int i = 0; i < t; i++)
                {
                    double dq = 0;
                    for (int j = 0; j < t; j++)
                    {
                        dq += r(qkv[k0 + c * t + j]) * r(ds[i * t + j]);
                    }
                    dqkv[q0 + c * t + i] = scale2 * dq;
                }
            }
        }
        return dqkv;
    }

    public static float[] BackwardReference(float[] qkv, float[] dy, int n, int channels, int t, int heads, bool legacyOrder,
        bool roundOperandsToHalf = false) =>
        ToSingle(BackwardReference(ToDouble(qkv), ToDouble(dy), n, channels, t, heads, legacyOrder, roundOperandsToHalf));

    static double[] ToDouble(float[] x) => Array.ConvertAll(x, v => (double)v);

    static float[] ToSingle(double[] x) => Array.ConvertAll(x, v => (float)v);

    /// <summary>Where q, k, v of one head start, relative to the batch item; and the stride between heads.</summary>
    static (int k, int v, int head) Layout(int channels, int t, int heads, bool legacy)
    {
        int ch = channels / heads;
        return legacy ? (ch * t, 2 * ch * t, 3 * ch * t) : (channels * t, 2 * channels * t, ch * t);
    }

    static void QkvOffsets(int b, int h, int channels, int t, int heads, bool legacy, out int q, out int k, out int v)
    {
        var (kOff, vOff, headStride) = Layout(channels, t, heads, legacy);
        q = b * 3 * channels * t + h * headStride;
        k = q + kOff;
        v = q + vOff;
    }

    // ---- launcher (v1: Gemm and Softmax; v2: the flash kernels)

    /// <summary>Whether the flash kernels (forward and backward v2) can run this attention on this device.</summary>
    public static bool FlashSupported(ComputeDevice dev, int headChannels) =>
        headChannels <= FlashMaxHeadChannels && dev.Accelerator.WarpSize == 32 &&
        dev.Accelerator.MaxNumThreadsPerGroup >= Math.Max(FlashThreads, FlashBackwardThreads);

    /// <summary>
    /// qkv: (N, 3C, T) → y: (N, C, T). kernel: the UNet's matmul kernel — the tiled v3 runs the flash kernel where it
    /// applies; otherwise that kernel's Gemm computes both products around an fp32 softmax.
    /// </summary>
    public static void Forward(Tensor qkv, Tensor y, int heads, bool legacyOrder, MatmulKernel kernel = MatmulKernel.Registers)
    {
        var dev = qkv.Device;
        var (n, channels, t) = Check(qkv, y, heads);
        int ch = channels / heads;
        if (kernel == MatmulKernel.Tiled && FlashSupported(dev, ch))
        {
            ForwardFlash(qkv, y, heads, legacyOrder);
            return;
        }
        using var probs = dev.Allocate(n * heads, t, t);
        Probabilities(qkv, probs, n, channels, t, heads, legacyOrder, kernel);
        var (_, v0, headStride) = Layout(channels, t, heads, legacyOrder);
        // y[b, h·ch + c, i] = Σ_j v[c,j]·w[i,j]
        var av = new GemmShape
        {
            M = ch, N = t, K = t, Batch0 = n, Batch1 = heads, Alpha = 1f,
            AOffset = v0, ABatch0 = 3 * channels * t, ABatch1 = headStride, ARow = t, ACol = 1,
            BOffset = 0, BBatch0 = heads * t * t, BBatch1 = t * t, BRow = 1, BCol = t,
            COffset = 0, CBatch0 = channels * t, CBatch1 = ch * t, CRow = t, CCol = 1,
        };
        Gemm.Run(dev, av, qkv.View, probs.View, y.View, kernel: kernel);
    }

    /// <summary>
    /// Forward v2: qkv (N, 3C, T) → y (N, C, T); see FlashSupported. <paramref name="rowLogSumExp"/> (N·H·T floats), if
    /// given, receives each query's log Σ_s exp(σ²·q·k_s): what BackwardFlash needs besides y.
    /// </summary>
    public static void ForwardFlash(Tensor qkv, Tensor y, int heads, bool legacyOrder, Tensor? rowLogSumExp = null)
    {
        var dev = qkv.Device;
        var (n, channels, t) = Check(qkv, y, heads);
        var s = FlashShapeFor(dev, channels, heads, t, legacyOrder);
        if (rowLogSumExp is not null && rowLogSumExp.Length != n * heads * t)
        {
            throw new ArgumentException($"attention: log-sum-exp {rowLogSumExp.ShapeString} for {n}×{heads} heads × {t} queries");
        }
        s.LogSumExp = rowLogSumExp is null ? 0 : 1;
        var k = dev.Kernel(FlashKernel, a => a.LoadStreamKernel<FlashShape, ArrayView<float>, ArrayView<float>,
            ArrayView<float>>(FlashKernel));
        var config = new KernelConfig(new Index2D((t + FlashQueries - 1) / FlashQueries, n * heads), new Index2D(FlashThreads, 1));
        k(config, s, qkv.View, y.View, rowLogSumExp?.View ?? y.View.SubView(0, 0));
    }

    /// <summary>
    /// The backward of Forward: dy = dL/dy (N, C, T) → dqkv = dL/dqkv (N, 3C, T), overwritten, in qkv's layout (either
    /// order). kernel as Forward's: the tiled v3 runs backward v2 (flash, rerunning forward v2 for y and the row
    /// log-sum-exp; call BackwardFlash with the saved ones to skip that) where it applies; otherwise backward v1 on that
    /// kernel's Gemm — the fp16 kernels round each product's operands as the forward does. dqkv must not overlap qkv or dy.
    /// </summary>
    public static void Backward(Tensor qkv, Tensor dy, Tensor dqkv, int heads, bool legacyOrder,
        MatmulKernel kernel = MatmulKernel.Registers)
    {
        var dev = qkv.Device;
        var (n, channels, t) = Check(qkv, dy, heads);
        if (dqkv.Length != qkv.Length)
        {
            throw new ArgumentException($"attention backward: dqkv {dqkv.ShapeString} for qkv {qkv.ShapeString}");
        }
        int ch = channels / heads;
        if (kernel == MatmulKernel.Tiled && FlashSupported(dev, ch))
        {
            using var y = dev.Allocate(n, channels, t);
            using var lse = dev.Allocate(n * heads, t);
            ForwardFlash(qkv, y, heads, legacyOrder, lse);
            BackwardFlash(qkv, y, lse, dy, dqkv, heads, legacyOrder);
            return;
        }
        using var probs = dev.Allocate(n * heads, t, t);
        using var grads = dev.Allocate(n * heads, t, t);
        Probabilities(qkv, probs, n, channels, t, heads, legacyOrder, kernel);
        var (k0, v0, headStride) = Layout(channels, t, heads, legacyOrder);
        float scale2 = (float)(1 / Math.Sqrt(ch));
        int image = 3 * channels * t, tt = t * t;
        // dV[c,j] = Σ_i dy[c,i]·P[i,j], into v's rows
        var dv = new GemmShape
        {
            M = ch, N = t, K = t, Batch0 = n, Batch1 = heads, Alpha = 1f,
            AOffset = 0, ABatch0 = channels * t, ABatch1 = ch * t, ARow = t, ACol = 1,
            BOffset = 0, BBatch0 = heads * tt, BBatch1 = tt, BRow = t, BCol = 1,
            COffset = v0, CBatch0 = image, CBatch1 = headStride, CRow = t, CCol = 1,
        };
        Gemm.Run(dev, dv, dy.View, probs.View, dqkv.View, kernel: kernel);
        // dP[i,j] = Σ_c dy[c,i]·v[c,j], then dS = P ⊙ (dP − rowsum(dP ⊙ P)) in place
        var dp = new GemmShape
        {
            M = t, N = t, K = ch, Batch0 = n, Batch1 = heads, Alpha = 1f,
            AOffset = 0, ABatch0 = channels * t, ABatch1 = ch * t, ARow = 1, ACol = t,
            BOffset = v0, BBatch0 = image, BBatch1 = headStride, BRow = t, BCol = 1,
            COffset = 0, CBatch0 = heads * tt, CBatch1 = tt, CRow = t, CCol = 1,
        };
        Gemm.Run(dev, dp, dy.View, qkv.View, grads.View, kernel: kernel);
        Softmax.Backward(dev, probs.View, grads.View, grads.View, n * heads * t, t);
        // dQ[c,i] = σ² Σ_j k[c,j]·dS[i,j], into q's rows
        var dq = new GemmShape
        {
            M = ch, N = t, K = t, Batch0 = n, Batch1 = heads, Alpha = scale2,
            AOffset = k0, ABatch0 = image, ABatch1 = headStride, ARow = t, ACol = 1,
            BOffset = 0, BBatch0 = heads * tt, BBatch1 = tt, BRow = 1, BCol = t,
            COffset = 0, CBatch0 = image, CBatch1 = headStride, CRow = t, CCol = 1,
        };
        Gemm.Run(dev, dq, qkv.View, grads.View, dqkv.View, kernel: kernel);
        // dK[c,j] = σ² Σ_i q[c,i]·dS[i,j], into k's rows
        var dk = new GemmShape
        {
            M = ch, N = t, K = t, Batch0 = n, Batch1 = heads, Alpha = scale2,
            AOffset = 0, ABatch0 = image, ABatch1 = headStride, ARow = t, ACol = 1,
            BOffset = 0, BBatch0 = heads * tt, BBatch1 = tt, BRow = t, BCol = 1,
            COffset = k0, CBatch0 = image, CBatch1 = headStride, CRow = t, CCol = 1,
        };
        Gemm.Run(dev, dk, qkv.View, grads.View, dqkv.View, kernel: kernel);
    }

    /// <summary>
    /// Backward v2 from what forward v2 saved: qkv, its output y (N, C, T) and rowLogSumExp (N·H·T) → dqkv (N, 3C, T),
    /// overwritten; see FlashSupported. Launches the D pre-pass, the keys kernel (dK, dV) and the queries kernel (dQ).
    /// </summary>
    public static void BackwardFlash(Tensor qkv, Tensor y, Tensor rowLogSumExp, Tensor dy, Tensor dqkv, int heads, bool legacyOrder)
    {
        var dev = qkv.Device;
        var (n, channels, t) = Check(qkv, dy, heads);
        if (y.Length != dy.Length || dqkv.Length != qkv.Length || rowLogSumExp.Length != n * heads * t)
        {
            throw new ArgumentException($"attention backward: qkv {qkv.ShapeString}, y {y.ShapeString}, lse {rowLogSumExp.ShapeString}, " +
                                        $"dy {dy.ShapeString} → dqkv {dqkv.ShapeString}");
        }
        var s = FlashShapeFor(dev, channels, heads, t, legacyOrder);
        int rows = n * heads * t;
        using var d = dev.Allocate(n * heads, t);
        var rowDot = dev.Kernel(FlashRowDotKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, FlashShape, int, ArrayView<float>,
            ArrayView<float>, ArrayView<float>>(FlashRowDotKernel));
        int threads = dev.StrideThreads(rows);
        rowDot(threads, threads, s, rows, y.View, dy.View, d.View);
        var config = new KernelConfig(new Index2D((t + FlashBlock - 1) / FlashBlock, n * heads), new Index2D(FlashBackwardThreads, 1));
        var keys = dev.Kernel(FlashBackwardKeysKernel, a => a.LoadStreamKernel<FlashShape, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>>(FlashBackwardKeysKernel));
        keys(config, s, qkv.View, dy.View, rowLogSumExp.View, d.View, dqkv.View);
        var queries = dev.Kernel(FlashBackwardQueriesKernel, a => a.LoadStreamKernel<FlashShape, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>>(FlashBackwardQueriesKernel));
        queries(config, s, qkv.View, dy.View, rowLogSumExp.View, d.View, dqkv.View);
    }

    /// <summary>probs (N·H, T, T) = softmax(σ²·qᵀk) per (image, head): the score product on kernel, then fp32 Softmax.</summary>
    static void Probabilities(Tensor qkv, Tensor probs, int n, int channels, int t, int heads, bool legacyOrder, MatmulKernel kernel)
    {
        var dev = qkv.Device;
        int ch = channels / heads;
        float scale = (float)(1 / Math.Sqrt(Math.Sqrt(ch)));
        var (k0, _, headStride) = Layout(channels, t, heads, legacyOrder);
        // scores[b,h](i,j) = Σ_c q[c,i]·k[c,j]
        var qk = new GemmShape
        {
            M = t, N = t, K = ch, Batch0 = n, Batch1 = heads, Alpha = scale * scale,
            AOffset = 0, ABatch0 = 3 * channels * t, ABatch1 = headStride, ARow = 1, ACol = t,
            BOffset = k0, BBatch0 = 3 * channels * t, BBatch1 = headStride, BRow = t, BCol = 1,
            COffset = 0, CBatch0 = heads * t * t, CBatch1 = t * t, CRow = t, CCol = 1,
        };
        Gemm.Run(dev, qk, qkv.View, qkv.View, probs.View, kernel: kernel);
        Softmax.Forward(dev, probs.View, probs.View, n * heads * t, t);
    }

    static FlashShape FlashShapeFor(ComputeDevice dev, int channels, int heads, int t, bool legacyOrder)
    {
        int ch = channels / heads;
        if (!FlashSupported(dev, ch))
        {
            throw new NotSupportedException($"flash attention needs ch ≤ {FlashMaxHeadChannels} and 32-lane warps; got ch {ch}, " +
                                            $"warp {dev.Accelerator.WarpSize}");
        }
        double sigma = 1 / Math.Sqrt(Math.Sqrt(ch));
        return new FlashShape
        {
            Channels = channels, Heads = heads, HeadChannels = ch, T = t, Legacy = legacyOrder ? 1 : 0,
            ScaleSquared = (float)(sigma * sigma),
        };
    }

    /// <summary>(N, C, T) of qkv (N, 3C, ...) with y (or dy) of N·C·T values; throws on a mismatch.</summary>
    static (int n, int channels, int t) Check(Tensor qkv, Tensor y, int heads)
    {
        int n = qkv[0], channels = qkv[1] / 3, t = qkv.Length / (n * qkv[1]);
        if (qkv[1] != 3 * channels || channels % heads != 0 || y.Length != n * channels * t)
        {
            throw new ArgumentException($"attention: qkv {qkv.ShapeString} with {heads} heads → {y.ShapeString}");
        }
        return (n, channels, t);
    }
}
