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

    // ---- GPU kernels (forward v2 and backward v2, flash; v1 are Gemm and Softmax launches)

    public struct FlashShape
    {
        public int Channels, Heads, HeadChannels, T, Legacy;
        public float ScaleSquared;

        /// <summary>1: FlashKernel also writes each query's log Σ exp of its scores.</summary>
        public int LogSumExp;
    }

    public const int FlashQueries = 64, FlashKeys = 32, FlashThreads = 256, FlashMaxHeadChannels = 64;

    /// <summary>Forward v2; lse (N·H, T): each query's max + log Σ exp(S − max) when s.LogSumExp is 1.</summary>
    static void FlashKernel(FlashShape s, ArrayView<float> qkv, ArrayView<float> y, ArrayView<float> lse)
    {
        var qs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashQueries);             // [c][query]
        var kv = SharedMemory.Allocate<float>(FlashMaxHeadChannels * (FlashKeys + 1));          // [c][key], K then V
        var ps = SharedMemory.Allocate<float>(FlashQueries * FlashKeys);                        // [query][key]
        var rowMax = SharedMemory.Allocate<float>(FlashQueries);
        var rowSum = SharedMemory.Allocate<float>(FlashQueries);
        var rowScale = SharedMemory.Allocate<float>(FlashQueries);
        int tid = Group.IdxX;
        int b = Grid.IdxY / s.Heads, h = Grid.IdxY % s.Heads;
        int i0 = Grid.IdxX * FlashQueries;
        QkvOffsets(b, h, s.Channels, s.T, s.Heads, s.Legacy != 0, out int q0, out int k0, out int v0);
        for (int e = tid; e < FlashMaxHeadChannels * FlashQueries; e += FlashThreads)
        {
            int c = e / FlashQueries, i = i0 + e % FlashQueries;
            qs[e] = c < s.HeadChannels && i < s.T ? qkv[q0 + c * s.T + i] * s.ScaleSquared : 0f;
        }
        if (tid < FlashQueries)
        {
            rowMax[tid] = float.NegativeInfinity;
            rowSum[tid] = 0f;
        }
        int ty = tid / 16, tx = tid % 16;
        float o00 = 0, o01 = 0, o02 = 0, o03 = 0, o10 = 0, o11 = 0, o12 = 0, o13 = 0;
        float o20 = 0, o21 = 0, o22 = 0, o23 = 0, o30 = 0, o31 = 0, o32 = 0, o33 = 0;
        Group.Barrier();
        for (int j0 = 0; j0 < s.T; j0 += FlashKeys)
        {
            LoadKeyTile(s, qkv, k0, j0, kv, tid);
            Group.Barrier();
            // S for queries ty·4+r and keys tx·2+u; keys past T get −∞, i.e. weight 0.
            float s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
            for (int c = 0; c < s.HeadChannels; c++)
            {
                int qa = c * FlashQueries + ty * 4, ka = c * (FlashKeys + 1) + tx * 2;
                float q0v = qs[qa], q1v = qs[qa + 1], q2v = qs[qa + 2], q3v = qs[qa + 3];
                float k0v = kv[ka], k1v = kv[ka + 1];
                s00 += q0v * k0v; s01 += q0v * k1v; s10 += q1v * k0v; s11 += q1v * k1v;
                s20 += q2v * k0v; s21 += q2v * k1v; s30 += q3v * k0v; s31 += q3v * k1v;
            }
            bool valid0 = j0 + tx * 2 < s.T, valid1 = j0 + tx * 2 + 1 < s.T;
            int pa = ty * 4 * FlashKeys + tx * 2;
            ps[pa] = valid0 ? s00 : float.NegativeInfinity; ps[pa + 1] = valid1 ? s01 : float.NegativeInfinity;
            ps[pa + FlashKeys] = valid0 ? s10 : float.NegativeInfinity; ps[pa + FlashKeys + 1] = valid1 ? s11 : float.NegativeInfinity;
            ps[pa + 2 * FlashKeys] = valid0 ? s20 : float.NegativeInfinity;
            ps[pa + 2 * FlashKeys + 1] = valid1 ? s21 : float.NegativeInfinity;
            ps[pa + 3 * FlashKeys] = valid0 ? s30 : float.NegativeInfinity;
            ps[pa + 3 * FlashKeys + 1] = valid1 ? s31 : float.NegativeInfinity;
            Group.Barrier();
            LoadKeyTile(s, qkv, v0, j0, kv, tid);
            OnlineSoftmaxStep(ps, rowMax, rowSum, rowScale, tid);
            Group.Barrier();
            // O = O·scale + P·Vᵀ for queries ty·4+r and channels tx·4+u.
            float a0 = rowScale[ty * 4], a1 = rowScale[ty * 4 + 1], a2 = rowScale[ty * 4 + 2], a3 = rowScale[ty * 4 + 3];
            o00 *= a0; o01 *= a0; o02 *= a0; o03 *= a0; o10 *= a1; o11 *= a1; o12 *= a1; o13 *= a1;
            o20 *= a2; o21 *= a2; o22 *= a2; o23 *= a2; o30 *= a3; o31 *= a3; o32 *= a3; o33 *= a3;
            for (int j = 0; j < FlashKeys; j++)
            {
                int pr = ty * 4 * FlashKeys + j, vr = tx * 4 * (FlashKeys + 1) + j;
                float p0 = ps[pr], p1 = ps[pr + FlashKeys], p2 = ps[pr + 2 * FlashKeys], p3 = ps[pr + 3 * FlashKeys];
                float w0 = kv[vr], w1 = kv[vr + FlashKeys + 1], w2 = kv[vr + 2 * (FlashKeys + 1)], w3 = kv[vr + 3 * (FlashKeys + 1)];
                o00 += p0 * w0; o01 += p0 * w1; o02 += p0 * w2; o03 += p0 * w3;
                o10 += p1 * w0; o11 += p1 * w1; o12 += p1 * w2; o13 += p1 * w3;
                o20 += p2 * w0; o21 += p2 * w1; o22 += p2 * w2; o23 += p2 * w3;
                o30 += p3 * w0; o31 += p3 * w1; o32 += p3 * w2; o33 += p3 * w3;
            }
            Group.Barrier();
        }
        int yBase = (b * s.Channels + h * s.HeadChannels) * s.T, i4 = i0 + ty * 4, c4 = tx * 4;
        StoreQuery(s, y, yBase, i4, c4, rowSum[ty * 4], o00, o01, o02, o03);
        StoreQuery(s, y, yBase, i4 + 1, c4, rowSum[ty * 4 + 1], o10, o11, o12, o13);
        StoreQuery(s, y, yBase, i4 + 2, c4, rowSum[ty * 4 + 2], o20, o21, o22, o23);
        StoreQuery(s, y, yBase, i4 + 3, c4, rowSum[ty * 4 + 3], o30, o31, o32, o33);
        if (s.LogSumExp != 0 && tx == 0)
        {
            for (int r = 0; r < 4; r++)
            {
                if (i4 + r < s.T)
                {
                    lse[Grid.IdxY * s.T + i4 + r] = rowMax[ty * 4 + r] + XMath.Log(rowSum[ty * 4 + r]);
                }
            }
        }
    }

    /// <summary>Keys (or values) j0..j0+31 of one head into kv[c][key], zero past T and past ch.</summary>
    static void LoadKeyTile(FlashShape s, ArrayView<float> qkv, int start, int j0, ArrayView<float> kv, int tid)
    {
        for (int e = tid; e < FlashMaxHeadChannels * FlashKeys; e += FlashThreads)
        {
            int c = e / FlashKeys, j = e % FlashKeys;
            kv[c * (FlashKeys + 1) + j] = c < s.HeadChannels && j0 + j < s.T ? qkv[start + c * s.T + j0 + j] : 0f;
        }
    }

    /// <summary>
    /// Four adjacent lanes per query row: the row's new running max over this tile, its scores turned into
    /// exp(score − max) in place, the old sum rescaled by exp(oldMax − max) plus this tile's; rowScale gets that factor.
    /// </summary>
    static void OnlineSoftmaxStep(ArrayView<float> ps, ArrayView<float> rowMax, ArrayView<float> rowSum, ArrayView<float> rowScale, int tid)
    {
        int row = tid / 4, part = tid % 4, first = row * FlashKeys + part * 8;
        float tileMax = float.NegativeInfinity;
        for (int u = 0; u < 8; u++)
        {
            tileMax = XMath.Max(tileMax, ps[first + u]);
        }
        tileMax = XMath.Max(tileMax, Warp.ShuffleXor(tileMax, 1));
        tileMax = XMath.Max(tileMax, Warp.ShuffleXor(tileMax, 2));
        float oldMax = rowMax[row];
        float newMax = XMath.Max(oldMax, tileMax);
        float sum = 0f;
        for (int u = 0; u < 8; u++)
        {
            float p = XMath.Exp(ps[first + u] - newMax);
            ps[first + u] = p;
            sum += p;
        }
        sum += Warp.ShuffleXor(sum, 1);
        sum += Warp.ShuffleXor(sum, 2);
        if (part == 0)
        {
            float scale = XMath.Exp(oldMax - newMax);
            rowScale[row] = scale;
            rowSum[row] = rowSum[row] * scale + sum;
            rowMax[row] = newMax;
        }
    }

    static void StoreQuery(FlashShape s, ArrayView<float> y, int yBase, int i, int c, float sum, float v0, float v1, float v2, float v3)
    {
        if (i >= s.T)
        {
            return;
        }
        float inv = 1f / sum;
        if (c < s.HeadChannels)
        {
            y[yBase + c * s.T + i] = v0 * inv;
        }
        if (c + 1 < s.HeadChannels)
        {
            y[yBase + (c + 1) * s.T + i] = v1 * inv;
        }
        if (c + 2 < s.HeadChannels)
        {
            y[yBase + (c + 2) * s.T + i] = v2 * inv;
        }
        if (c + 3 < s.HeadChannels)
        {
            y[yBase + (c + 3) * s.T + i] = v3 * inv;
        }
    }

    // Backward v2: tiles of FlashBlock queries × FlashBlock keys, FlashBackwardThreads threads. In the score phase thread
    // (r, u) = (tid / 8, tid % 8) computes the 4 entries (r, u + 8m) of S and dP; in the sum phase thread (lane, w) =
    // (tid % 32, tid / 32) accumulates the channels w + 8m of its row lane. Shared tiles are [c][position], 64 × 32
    // (channels past ch and positions past T hold zeros); P and dS are [row][column] with a padded stride of 33, so
    // the sum phase's lanes (32 rows, one column) hit 32 banks.
    public const int FlashBlock = 32, FlashBackwardThreads = 256;

    /// <summary>
    /// Backward v2, keys: one group per 32 keys of one head (Grid.IdxY = b·H + h) loops over every query tile and
    /// writes dK and dV of its keys. dy: (N, C, T); lse, d: (N·H, T).
    /// Per tile: S = σ²·kᵀq and dP = vᵀ·dy (4 each per thread, ch FMAs each), P = exp(S − lse), dS = P ⊙ (dP − D);
    /// then dV[c,j] += Σ_i P[j,i]·dy[c,i] and dK[c,j] += Σ_i dS[j,i]·σ²q[c,i] (16 accumulators per thread).
    /// </summary>
    static void FlashBackwardKeysKernel(FlashShape s, ArrayView<float> qkv, ArrayView<float> dy, ArrayView<float> lse,
        ArrayView<float> d, ArrayView<float> dqkv)
    {
        var ks = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // this block's k, [c][key]
        var vs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // its v
        var qs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // the query tile's σ²·q, [c][query]
        var gs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // its dy
        var ps = SharedMemory.Allocate<float>(FlashBlock * (FlashBlock + 1));      // P, [key][query]
        var dss = SharedMemory.Allocate<float>(FlashBlock * (FlashBlock + 1));     // dS, [key][query]
        var stats = SharedMemory.Allocate<float>(2 * FlashBlock);                  // the query tile's lse, then D
        int tid = Group.IdxX, bh = Grid.IdxY, j0 = Grid.IdxX * FlashBlock;
        QkvOffsets(bh / s.Heads, bh % s.Heads, s.Channels, s.T, s.Heads, s.Legacy != 0, out int q0, out int k0, out int v0);
        int g0 = bh * s.HeadChannels * s.T, stat0 = bh * s.T;
        LoadBlock(s, qkv, k0, j0, 1f, ks, tid);
        LoadBlock(s, qkv, v0, j0, 1f, vs, tid);
        int r = tid / 8, u = tid % 8, lane = tid % FlashBlock, w = tid / FlashBlock;
        bool key = j0 + r < s.T;
        int pr = r * (FlashBlock + 1) + u;
        float dv0 = 0, dv1 = 0, dv2 = 0, dv3 = 0, dv4 = 0, dv5 = 0, dv6 = 0, dv7 = 0;
        float dk0 = 0, dk1 = 0, dk2 = 0, dk3 = 0, dk4 = 0, dk5 = 0, dk6 = 0, dk7 = 0;
        for (int i0 = 0; i0 < s.T; i0 += FlashBlock)
        {
            Group.Barrier();
            LoadBlock(s, qkv, q0, i0, s.ScaleSquared, qs, tid);
            LoadBlock(s, dy, g0, i0, 1f, gs, tid);
            LoadStats(s, lse, d, stat0, i0, stats, tid);
            Group.Barrier();
            ScoreTile(s, ks, vs, qs, gs, r, u, out float s0, out float s1, out float s2, out float s3,
                out float e0, out float e1, out float e2, out float e3);
            float p0 = key && i0 + u < s.T ? XMath.Exp(s0 - stats[u]) : 0f;
            float p1 = key && i0 + u + 8 < s.T ? XMath.Exp(s1 - stats[u + 8]) : 0f;
            float p2 = key && i0 + u + 16 < s.T ? XMath.Exp(s2 - stats[u + 16]) : 0f;
            float p3 = key && i0 + u + 24 < s.T ? XMath.Exp(s3 - stats[u + 24]) : 0f;
            ps[pr] = p0;
            ps[pr + 8] = p1;
            ps[pr + 16] = p2;
            ps[pr + 24] = p3;
            dss[pr] = p0 * (e0 - stats[FlashBlock + u]);
            dss[pr + 8] = p1 * (e1 - stats[FlashBlock + u + 8]);
            dss[pr + 16] = p2 * (e2 - stats[FlashBlock + u + 16]);
            dss[pr + 24] = p3 * (e3 - stats[FlashBlock + u + 24]);
            Group.Barrier();
            // Channel w + 8m of position i sits at (w + 8m)·32 + i = c + m·256.
            const int M = 8 * FlashBlock;
            for (int i = 0; i < FlashBlock; i++)
            {
                float p = ps[lane * (FlashBlock + 1) + i], g = dss[lane * (FlashBlock + 1) + i];
                int c = w * FlashBlock + i;
                dv0 += p * gs[c]; dv1 += p * gs[c + M]; dv2 += p * gs[c + 2 * M]; dv3 += p * gs[c + 3 * M];
                dv4 += p * gs[c + 4 * M]; dv5 += p * gs[c + 5 * M]; dv6 += p * gs[c + 6 * M]; dv7 += p * gs[c + 7 * M];
                dk0 += g * qs[c]; dk1 += g * qs[c + M]; dk2 += g * qs[c + 2 * M]; dk3 += g * qs[c + 3 * M];
                dk4 += g * qs[c + 4 * M]; dk5 += g * qs[c + 5 * M]; dk6 += g * qs[c + 6 * M]; dk7 += g * qs[c + 7 * M];
            }
        }
        StoreChannels(s, dqkv, k0, j0 + lane, w, 1f, dk0, dk1, dk2, dk3, dk4, dk5, dk6, dk7);
        StoreChannels(s, dqkv, v0, j0 + lane, w, 1f, dv0, dv1, dv2, dv3, dv4, dv5, dv6, dv7);
    }

    /// <summary>
    /// Backward v2, queries: one group per 32 queries of one head loops over every key tile and writes dQ of its queries.
    /// Per tile: S = σ²·qᵀk and dP = dyᵀ·v, P = exp(S − lse), dS = P ⊙ (dP − D); then dQ[c,i] += Σ_j dS[i,j]·k[c,j]
    /// (8 accumulators per thread), scaled by σ² when stored.
    /// </summary>
    static void FlashBackwardQueriesKernel(FlashShape s, ArrayView<float> qkv, ArrayView<float> dy, ArrayView<float> lse,
        ArrayView<float> d, ArrayView<float> dqkv)
    {
        var qs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // this block's σ²·q, [c][query]
        var gs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // its dy
        var ks = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // the key tile's k, [c][key]
        var vs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // its v
        var dss = SharedMemory.Allocate<float>(FlashBlock * (FlashBlock + 1));     // dS, [query][key]
        var stats = SharedMemory.Allocate<float>(2 * FlashBlock);                  // this block's lse, then D
        int tid = Group.IdxX, bh = Grid.IdxY, i0 = Grid.IdxX * FlashBlock;
        QkvOffsets(bh / s.Heads, bh % s.Heads, s.Channels, s.T, s.Heads, s.Legacy != 0, out int q0, out int k0, out int v0);
        int g0 = bh * s.HeadChannels * s.T, stat0 = bh * s.T;
        LoadBlock(s, qkv, q0, i0, s.ScaleSquared, qs, tid);
        LoadBlock(s, dy, g0, i0, 1f, gs, tid);
        LoadStats(s, lse, d, stat0, i0, stats, tid);
        int r = tid / 8, u = tid % 8, lane = tid % FlashBlock, w = tid / FlashBlock;
        bool query = i0 + r < s.T;
        int pr = r * (FlashBlock + 1) + u;
        float dq0 = 0, dq1 = 0, dq2 = 0, dq3 = 0, dq4 = 0, dq5 = 0, dq6 = 0, dq7 = 0;
        for (int j0 = 0; j0 < s.T; j0 += FlashBlock)
        {
            Group.Barrier();
            LoadBlock(s, qkv, k0, j0, 1f, ks, tid);
            LoadBlock(s, qkv, v0, j0, 1f, vs, tid);
            Group.Barrier();
            ScoreTile(s, qs, gs, ks, vs, r, u, out float s0, out float s1, out float s2, out float s3,
                out float e0, out float e1, out float e2, out float e3);
            float l = stats[r], dr = stats[FlashBlock + r];
            dss[pr] = query && j0 + u < s.T ? XMath.Exp(s0 - l) * (e0 - dr) : 0f;
            dss[pr + 8] = query && j0 + u + 8 < s.T ? XMath.Exp(s1 - l) * (e1 - dr) : 0f;
            dss[pr + 16] = query && j0 + u + 16 < s.T ? XMath.Exp(s2 - l) * (e2 - dr) : 0f;
            dss[pr + 24] = query && j0 + u + 24 < s.T ? XMath.Exp(s3 - l) * (e3 - dr) : 0f;
            Group.Barrier();
            const int M = 8 * FlashBlock;
            for (int j = 0; j < FlashBlock; j++)
            {
                float g = dss[lane * (FlashBlock + 1) + j];
                int c = w * FlashBlock + j;
                dq0 += g * ks[c]; dq1 += g * ks[c + M]; dq2 += g * ks[c + 2 * M]; dq3 += g * ks[c + 3 * M];
                dq4 += g * ks[c + 4 * M]; dq5 += g * ks[c + 5 * M]; dq6 += g * ks[c + 6 * M]; dq7 += g * ks[c + 7 * M];
            }
        }
        StoreChannels(s, dqkv, q0, i0 + lane, w, s.ScaleSquared, dq0, dq1, dq2, dq3, dq4, dq5, dq6, dq7);
    }

    /// <summary>Positions p0..p0+31 of a head's ch × T slab starting at <paramref name="start"/>, times scale, into tile[c][p].</summary>
    static void LoadBlock(FlashShape s, ArrayView<float> src, int start, int p0, float scale, ArrayView<float> tile, int tid)
    {
        for (int e = tid; e < FlashMaxHeadChannels * FlashBlock; e += FlashBackwardThreads)
        {
            int c = e / FlashBlock, p = e % FlashBlock;
            tile[e] = c < s.HeadChannels && p0 + p < s.T ? src[start + c * s.T + p0 + p] * scale : 0f;
        }
    }

    /// <summary>lse and D of queries i0..i0+31 into stats[0..32) and stats[32..64); zero past T.</summary>
    static void LoadStats(FlashShape s, ArrayView<float> lse, ArrayView<float> d, int stat0, int i0, ArrayView<float> stats, int tid)
    {
        if (tid < FlashBlock)
        {
            bool valid = i0 + tid < s.T;
            stats[tid] = valid ? lse[stat0 + i0 + tid] : 0f;
            stats[FlashBlock + tid] = valid ? d[stat0 + i0 + tid] : 0f;
        }
    }

    /// <summary>
    /// For row r of the group's own tiles a1, a2 and columns u, u+8, u+16, u+24 of the streamed b1, b2:
    /// s_m = Σ_c a1[c][r]·b1[c][u+8m] and e_m = Σ_c a2[c][r]·b2[c][u+8m] — the scores and dP, either way round.
    /// </summary>
    static void ScoreTile(FlashShape s, ArrayView<float> a1, ArrayView<float> a2, ArrayView<float> b1, ArrayView<float> b2, int r,
        int u, out float s0, out float s1, out float s2, out float s3, out float e0, out float e1, out float e2, out float e3)
    {
        s0 = s1 = s2 = s3 = e0 = e1 = e2 = e3 = 0f;
        for (int c = 0; c < s.HeadChannels; c++)
        {
            int row = c * FlashBlock;
            float x = a1[row + r], y = a2[row + r];
            float b10 = b1[row + u], b11 = b1[row + u + 8], b12 = b1[row + u + 16], b13 = b1[row + u + 24];
            float b20 = b2[row + u], b21 = b2[row + u + 8], b22 = b2[row + u + 16], b23 = b2[row + u + 24];
            s0 += x * b10; s1 += x * b11; s2 += x * b12; s3 += x * b13;
            e0 += y * b20; e1 += y * b21; e2 += y * b22; e3 += y * b23;
        }
    }

    /// <summary>dst[start + c·T + p] = scale·x_m for the channels c = w + 8m below ch, if p &lt; T (a lane per position).</summary>
    static void StoreChannels(FlashShape s, ArrayView<float> dst, int start, int p, int w, float scale,
        float x0, float x1, float x2, float x3, float x4, float x5, float x6, float x7)
    {
        if (p >= s.T)
        {
            return;
        }
        StoreChannel(s, dst, start, p, w, scale * x0);
        StoreChannel(s, dst, start, p, w + 8, scale * x1);
        StoreChannel(s, dst, start, p, w + 16, scale * x2);
        StoreChannel(s, dst, start, p, w + 24, scale * x3);
        StoreChannel(s, dst, start, p, w + 32, scale * x4);
        StoreChannel(s, dst, start, p, w + 40, scale * x5);
        StoreChannel(s, dst, start, p, w + 48, scale * x6);
        StoreChannel(s, dst, start, p, w + 56, scale * x7);
    }

    static void StoreChannel(FlashShape s, ArrayView<float> dst, int start, int p, int c, float v)
    {
        if (c < s.HeadChannels)
        {
            dst[start + c * s.T + p] = v;
        }
    }

    /// <summary>
    /// Backward v2's pre-pass over the (N·H·T) rows (b, h, i): d = Σ_c y[b, h·ch + c, i]·dy[b, h·ch + c, i], which equals
    /// rowsum(dP ⊙ P). Consecutive threads take consecutive i: coalesced; 2·C·T reads in all.
    /// </summary>
    static void FlashRowDotKernel(Index1D index, int stride, FlashShape s, int rows, ArrayView<float> y, ArrayView<float> dy,
        ArrayView<float> d)
    {
        for (int e = index; e < rows; e += stride)
        {
            int at = e / s.T * s.HeadChannels * s.T + e % s.T;
            float acc = 0f;
            for (int c = 0; c < s.HeadChannels; c++)
            {
                acc += y[at + c * s.T] * dy[at + c * s.T];
            }
            d[e] = acc;
        }
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
