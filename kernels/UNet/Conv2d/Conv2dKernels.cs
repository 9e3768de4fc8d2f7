// Conv2d's own GPU kernels (v1, v2); the header of Conv2d.cs lists every version.
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Util;

namespace IlgpuDiffSeg.Kernels;

public static partial class Conv2d
{
    // ---- GPU kernels

    static void KernelV1(Index1D index, int stride, ConvShape s, ArrayView<float> x, ArrayView<float> w, ArrayView<float> bias,
        ArrayView<float> residual, ArrayView<float> y)
    {
        int total = s.N * s.Cout * s.Ho * s.Wo;
        for (int o = index; o < total; o += stride)
        {
            int ox = o % s.Wo;
            int oy = o / s.Wo % s.Ho;
            int co = o / (s.Wo * s.Ho) % s.Cout;
            int n = o / (s.Wo * s.Ho * s.Cout);
            float acc = 0f;
            for (int ci = 0; ci < s.Cin; ci++)
            {
                int xBase = (n * s.Cin + ci) * s.H;
                int wBase = (co * s.Cin + ci) * s.K;
                for (int ky = 0; ky < s.K; ky++)
                {
                    int iy = oy * s.Stride - s.Pad + ky;
                    if (iy < 0 || iy >= s.H)
                    {
                        continue;
                    }
                    for (int kx = 0; kx < s.K; kx++)
                    {
                        int ix = ox * s.Stride - s.Pad + kx;
                        if (ix >= 0 && ix < s.W)
                        {
                            acc += x[(xBase + iy) * s.W + ix] * w[(wBase + ky) * s.K + kx];
                        }
                    }
                }
            }
            if (s.HasBias != 0)
            {
                acc += bias[co];
            }
            if (s.HasResidual != 0)
            {
                acc += residual[o];
            }
            y[o] = acc;
        }
    }

    static void KernelV2(Index1D index, int stride, ConvShape s, ArrayView<float> x, ArrayView<float> w, ArrayView<float> bias,
        ArrayView<float> residual, ArrayView<float> y)
    {
        int wo4 = (s.Wo + 3) / 4;
        int co4 = (s.Cout + 3) / 4;
        int total = s.N * co4 * s.Ho * wo4;
        int kk = s.K * s.K;
        for (int item = index; item < total; item += stride)
        {
            int ox0 = item % wo4 * 4;
            int oy = item / wo4 % s.Ho;
            int co0 = item / (wo4 * s.Ho) % co4 * 4;
            int n = item / (wo4 * s.Ho * co4);

            // Out-of-range channels read channel Cout−1's weights and are never written.
            int c1 = Math.Min(co0 + 1, s.Cout - 1), c2 = Math.Min(co0 + 2, s.Cout - 1), c3 = Math.Min(co0 + 3, s.Cout - 1);
            float a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0;
            float a20 = 0, a21 = 0, a22 = 0, a23 = 0, a30 = 0, a31 = 0, a32 = 0, a33 = 0;
            int wStrideCo = s.Cin * kk;
            for (int ci = 0; ci < s.Cin; ci++)
            {
                int xPlane = (n * s.Cin + ci) * s.H;
                int wBase = ci * kk;
                for (int ky = 0; ky < s.K; ky++)
                {
                    int iy = oy * s.Stride - s.Pad + ky;
                    if (iy < 0 || iy >= s.H)
                    {
                        continue;
                    }
                    int xRow = (xPlane + iy) * s.W;
                    for (int kx = 0; kx < s.K; kx++)
                    {
                        int ix0 = ox0 * s.Stride - s.Pad + kx;
                        int ix1 = ix0 + s.Stride, ix2 = ix1 + s.Stride, ix3 = ix2 + s.Stride;
                        float x0 = ix0 >= 0 && ix0 < s.W ? x[xRow + ix0] : 0f;
                        float x1 = ix1 >= 0 && ix1 < s.W ? x[xRow + ix1] : 0f;
                        float x2 = ix2 >= 0 && ix2 < s.W ? x[xRow + ix2] : 0f;
                        float x3 = ix3 >= 0 && ix3 < s.W ? x[xRow + ix3] : 0f;
                        int wOff = wBase + ky * s.K + kx;
                        float w0 = w[co0 * wStrideCo + wOff];
                        float w1 = w[c1 * wStrideCo + wOff];
                        float w2 = w[c2 * wStrideCo + wOff];
                        float w3 = w[c3 * wStrideCo + wOff];
                        a00 += w0 * x0; a01 += w0 * x1; a02 += w0 * x2; a03 += w0 * x3;
                        a10 += w1 * x0; a11 += w1 * x1; a12 += w1 * x2; a13 += w1 * x3;
                        a20 += w2 * x0; a21 += w2 * x1; a22 += w2 * x2; a23 += w2 * x3;
                        a30 += w3 * x0; a31 += w3 * x1; a32 += w3 * x2; a33 += w3 * x3;
                    }
                }
            }
            StoreRow(s, bias, residual, y, n, co0, oy, ox0, a00, a01, a02, a03);
            StoreRow(s, bias, residual, y, n, co0 + 1, oy, ox0, a10, a11, a12, a13);
            StoreRow(s, bias, residual, y, n, co0 + 2, oy, ox0, a20, a21, a22, a23);
            StoreRow(s, bias, residual, y, n, co0 + 3, oy, ox0, a30, a31, a32, a33);
        }
    }

    static void StoreRow(ConvShape s, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y,
        int n, int co, int oy, int ox0, float v0, float v1, float v2, float v3)
    {
        if (co >= s.Cout)
        {
            return;
        }
        float b = s.HasBias != 0 ? bias[co] : 0f;
        int o = ((n * s.Cout + co) * s.Ho + oy) * s.Wo + ox0;
        Store(s, residual, y, o, ox0, v0 + b);
        Store(s, residual, y, o + 1, ox0 + 1, v1 + b);
        Store(s, residual, y, o + 2, ox0 + 2, v2 + b);
        Store(s, residual, y, o + 3, ox0 + 3, v3 + b);
    }

    static void Store(ConvShape s, ArrayView<float> residual, ArrayView<float> y, int o, int ox, float v)
    {
        if (ox < s.Wo)
        {
            y[o] = s.HasResidual != 0 ? v + residual[o] : v;
        }
    }
}
