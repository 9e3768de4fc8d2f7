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
//       num_head_channels 64), chosen with the tiled kernels (MatmulKernel.Tiled).
// Backward (dy = dL/dout (N, C, T) → dqkv (N, 3C, T) in qkv's layout, every element written once):
//   P = softmax(σ²·qᵀk), dV = dY·P, dP = dYᵀ·V, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = σ²·K·dSᵀ, dK = σ²·Q·dS.
//   v1  P recomputed as forward v1 into one (N·H, T, T) buffer, dP into a second; four strided batched Gemms write
//       dV, dP, dQ, dK (the last three straight into dqkv's rows) and Softmax.Backward turns dP into dS in place. With
//       the fp16 kernels every product's operands are rounded to fp16 as in the forward; P, dP and dS are stored fp32.
// FLOPs: forward 4·N·H·T²·ch; backward v1 8·N·H·T²·ch (+ the recomputed P: 2·N·H·T²·ch).
// Score buffer N·H·T² floats (32 MB for the 256-model's 32×32 level at batch 1); backward v1 needs two.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class Attention
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

    // ---- GPU kernels (forward v2, flash; v1 are Gemm and Softmax launches)

    public struct FlashShape
    {
        public int Channels, Heads, HeadChannels, T, Legacy;
        public float ScaleSquared;
    }

    public const int FlashQueries = 64, FlashKeys = 32, FlashThreads = 256, FlashMaxHeadChannels = 64;

    static void FlashKernel(FlashShape s, ArrayView<float> qkv, ArrayView<float> y)
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

    // ---- launcher (v1: Gemm and Softmax; v2: the flash kernel)

    /// <summary>Whether the flash kernel can run this attention on this device.</summary>
    public static bool FlashSupported(ComputeDevice dev, int headChannels) =>
        headChannels <= FlashMaxHeadChannels && dev.Accelerator.WarpSize == 32 &&
        dev.Accelerator.MaxNumThreadsPerGroup >= FlashThreads;

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

    /// <summary>Forward v2: qkv (N, 3C, T) → y (N, C, T); see FlashSupported.</summary>
    public static void ForwardFlash(Tensor qkv, Tensor y, int heads, bool legacyOrder)
    {
        var dev = qkv.Device;
        var (n, channels, t) = Check(qkv, y, heads);
        var s = FlashShapeFor(dev, channels, heads, t, legacyOrder);
        var k = dev.Kernel(FlashKernel, a => a.LoadStreamKernel<FlashShape, ArrayView<float>, ArrayView<float>>(FlashKernel));
        var config = new KernelConfig(new Index2D((t + FlashQueries - 1) / FlashQueries, n * heads), new Index2D(FlashThreads, 1));
        k(config, s, qkv.View, y.View);
    }

    /// <summary>
    /// The backward of Forward: dy = dL/dy (N, C, T) → dqkv = dL/dqkv (N, 3C, T), overwritten, in qkv's layout (either
    /// order): backward v1 on <paramref name="kernel"/>'s Gemm — the fp16 kernels round each product's operands as the
    /// forward does. dqkv must not overlap qkv or dy.
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
