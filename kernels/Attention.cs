// Attention — guided-diffusion's multi-head QKV attention on qkv: (N, 3C, T) → (N, C, T), heads H, ch = C/H.
//   legacy order (QKVAttentionLegacy, every LSUN/FFHQ/ImageNet-128/256/512 checkpoint): per head the rows
//     [h·3ch, h·3ch+ch) are q, the next ch are k, the next ch v — layout (head, {q,k,v}, ch).
//   new order (QKVAttention, ImageNet-64): q = rows [0,C), k = [C,2C), v = [2C,3C), each (head, ch).
// w[t,s] = softmax_s(Σ_c (q[c,t]·σ)(k[c,s]·σ)) with σ = ch^(−1/4); out[c,t] = Σ_s w[t,s]·v[c,s];
// output channels head-major in both orders.
//   v1  two batched Gemms through a (N·H, T, T) score buffer and a row Softmax between them.
// FLOPs = 4·N·H·T²·ch; score buffer N·H·T² floats (32 MB for the 256-model's 32×32 level at batch 1).
using ILGPU;

namespace IlgpuDiffSeg.Kernels;

public static class Attention
{
    // ---- CPU reference

    public static float[] Reference(float[] qkv, int n, int channels, int t, int heads, bool legacyOrder)
    {
        int ch = channels / heads;
        float scale = (float)(1 / Math.Sqrt(Math.Sqrt(ch)));
        var y = new float[n * channels * t];
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
                        acc += (double)(qkv[q0 + c * t + i] * scale) * (qkv[k0 + c * t + j] * scale);
                    }
                    w[j] = acc;
                    max = Math.Max(max, acc);
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
                    y[(b * channels + h * ch + c) * t + i] = (float)acc;
                }
            }
        }
        return y;
    }

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

    // ---- launcher (kernels: Gemm, Softmax)

    /// <summary>qkv: (N, 3C, T) → y: (N, C, T); version: the Gemm kernel of both products (softmax stays fp32).</summary>
    public static void Forward(Tensor qkv, Tensor y, int heads, bool legacyOrder, int version = 2)
    {
        var dev = qkv.Device;
        int n = qkv[0], channels = qkv[1] / 3, t = qkv.Length / (n * qkv[1]);
        if (qkv[1] != 3 * channels || channels % heads != 0 || y.Length != n * channels * t)
        {
            throw new ArgumentException($"attention: qkv {qkv.ShapeString} with {heads} heads → {y.ShapeString}");
        }
        int ch = channels / heads;
        float scale = (float)(1 / Math.Sqrt(Math.Sqrt(ch)));
        var scores = dev.RentScratch((long)n * heads * t * t);
        try
        {
            var (k0, v0, headStride) = Layout(channels, t, heads, legacyOrder);
            // scores[b,h](i,j) = Σ_c q[c,i]·k[c,j]
            var qk = new GemmShape
            {
                M = t, N = t, K = ch, Batch0 = n, Batch1 = heads, Alpha = scale * scale,
                AOffset = 0, ABatch0 = 3 * channels * t, ABatch1 = headStride, ARow = 1, ACol = t,
                BOffset = k0, BBatch0 = 3 * channels * t, BBatch1 = headStride, BRow = t, BCol = 1,
                COffset = 0, CBatch0 = heads * t * t, CBatch1 = t * t, CRow = t, CCol = 1,
            };
            Gemm.Run(dev, qk, qkv.View, qkv.View, scores.View, version: version);
            Softmax.Forward(dev, scores.View, scores.View, n * heads * t, t);
            // y[b, h·ch + c, i] = Σ_j v[c,j]·w[i,j]
            var av = new GemmShape
            {
                M = ch, N = t, K = t, Batch0 = n, Batch1 = heads, Alpha = 1f,
                AOffset = v0, ABatch0 = 3 * channels * t, ABatch1 = headStride, ARow = t, ACol = 1,
                BOffset = 0, BBatch0 = heads * t * t, BBatch1 = t * t, BRow = 1, BCol = t,
                COffset = 0, CBatch0 = channels * t, CBatch1 = ch * t, CRow = t, CCol = 1,
            };
            Gemm.Run(dev, av, qkv.View, scores.View, y.View, version: version);
        }
        finally
        {
            dev.ReturnScratch(scores);
        }
    }
}
