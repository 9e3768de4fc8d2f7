// Conv2d's backward GPU kernels: v1 and v2 of the input and weight gradients, the bias gradient, the sum of split partials
// and the weight copy of v3/v4's input gradient. The header of Conv2d.cs lists every version; all are grid-stride loops.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class Conv2d
{
    // ---- GPU kernels

    /// <summary>v1 of dx: one input element per step, summing the taps that reach it (oy·stride = iy + pad − ky).</summary>
    static void BackwardInputV1(Index1D index, int stride, ConvShape s, int accumulate, ArrayView<float> dy, ArrayView<float> w,
        ArrayView<float> dx)
    {
        int total = s.N * s.Cin * s.H * s.W;
        int kk = s.K * s.K;
        for (int i = index; i < total; i += stride)
        {
            int ix = i % s.W;
            int iy = i / s.W % s.H;
            int ci = i / (s.W * s.H) % s.Cin;
            int n = i / (s.W * s.H * s.Cin);
            float acc = 0f;
            for (int co = 0; co < s.Cout; co++)
            {
                int dyPlane = (n * s.Cout + co) * s.Ho;
                int wBase = (co * s.Cin + ci) * kk;
                for (int ky = 0; ky < s.K; ky++)
                {
                    // Truncating division: a negative ty that is a multiple of the stride gives oy < 0, tested below.
                    int ty = iy + s.Pad - ky, oy = ty / s.Stride;
                    if (ty < 0 || oy * s.Stride != ty || oy >= s.Ho)
                    {
                        continue;
                    }
                    for (int kx = 0; kx < s.K; kx++)
                    {
                        int tx = ix + s.Pad - kx, ox = tx / s.Stride;
                        if (tx >= 0 && ox * s.Stride == tx && ox < s.Wo)
                        {
                            acc += w[wBase + ky * s.K + kx] * dy[(dyPlane + oy) * s.Wo + ox];
                        }
                    }
                }
            }
            dx[i] = accumulate != 0 ? dx[i] + acc : acc;
        }
    }

    /// <summary>
    /// v2 of dx: 4 input channels × 4 columns of one phase per step. The columns ix0 + j·stride (j = 0..3) share their
    /// remainder mod the stride, so for a tap (ky, kx) either all or none reach dy, at 4 consecutive columns ox0 + j: one
    /// parity test, 4 dy and 4 weight loads feed 16 FMAs.
    /// </summary>
    static void BackwardInputV2(Index1D index, int stride, ConvShape s, int accumulate, ArrayView<float> dy, ArrayView<float> w,
        ArrayView<float> dx)
    {
        // A phase (ix ≡ phase mod stride) has at most ⌈W/stride⌉ columns, taken 4 at a time.
        int quads = ((s.W + s.Stride - 1) / s.Stride + 3) / 4;
        int ci4 = (s.Cin + 3) / 4;
        int total = s.N * ci4 * s.H * s.Stride * quads;
        int kk = s.K * s.K;
        for (int item = index; item < total; item += stride)
        {
            int quad = item % quads;
            int phase = item / quads % s.Stride;
            int iy = item / (quads * s.Stride) % s.H;
            int ci0 = item / (quads * s.Stride * s.H) % ci4 * 4;
            int n = item / (quads * s.Stride * s.H * ci4);
            int ix0 = phase + quad * 4 * s.Stride;

            // Out-of-range channels read channel Cin−1's weights and are never written.
            int c1 = Math.Min(ci0 + 1, s.Cin - 1), c2 = Math.Min(ci0 + 2, s.Cin - 1), c3 = Math.Min(ci0 + 3, s.Cin - 1);
            float a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0;
            float a20 = 0, a21 = 0, a22 = 0, a23 = 0, a30 = 0, a31 = 0, a32 = 0, a33 = 0;
            for (int co = 0; co < s.Cout; co++)
            {
                int dyPlane = (n * s.Cout + co) * s.Ho;
                int wCo = co * s.Cin * kk;
                for (int ky = 0; ky < s.K; ky++)
                {
                    int ty = iy + s.Pad - ky, oy = ty / s.Stride;
                    if (ty < 0 || oy * s.Stride != ty || oy >= s.Ho)
                    {
                        continue;
                    }
                    int dyRow = (dyPlane + oy) * s.Wo;
                    for (int kx = 0; kx < s.K; kx++)
                    {
                        int tx = ix0 + s.Pad - kx, ox0 = tx / s.Stride;
                        if (ox0 * s.Stride != tx)
                        {
                            continue;
                        }
                        int ox1 = ox0 + 1, ox2 = ox0 + 2, ox3 = ox0 + 3;
                        float d0 = (uint)ox0 < (uint)s.Wo ? dy[dyRow + ox0] : 0f;
                        float d1 = (uint)ox1 < (uint)s.Wo ? dy[dyRow + ox1] : 0f;
                        float d2 = (uint)ox2 < (uint)s.Wo ? dy[dyRow + ox2] : 0f;
                        float d3 = (uint)ox3 < (uint)s.Wo ? dy[dyRow + ox3] : 0f;
                        int wOff = wCo + ky * s.K + kx;
                        float w0 = w[wOff + ci0 * kk];
                        float w1 = w[wOff + c1 * kk];
                        float w2 = w[wOff + c2 * kk];
                        float w3 = w[wOff + c3 * kk];
                        a00 += w0 * d0; a01 += w0 * d1; a02 += w0 * d2; a03 += w0 * d3;
                        a10 += w1 * d0; a11 += w1 * d1; a12 += w1 * d2; a13 += w1 * d3;
                        a20 += w2 * d0; a21 += w2 * d1; a22 += w2 * d2; a23 += w2 * d3;
                        a30 += w3 * d0; a31 += w3 * d1; a32 += w3 * d2; a33 += w3 * d3;
                    }
                }
            }
            StoreInputRow(s, accumulate, dx, n, ci0, iy, ix0, a00, a01, a02, a03);
            StoreInputRow(s, accumulate, dx, n, ci0 + 1, iy, ix0, a10, a11, a12, a13);
            StoreInputRow(s, accumulate, dx, n, ci0 + 2, iy, ix0, a20, a21, a22, a23);
            StoreInputRow(s, accumulate, dx, n, ci0 + 3, iy, ix0, a30, a31, a32, a33);
        }
    }

    static void StoreInputRow(ConvShape s, int accumulate, ArrayView<float> dx, int n, int ci, int iy, int ix0, float v0, float v1,
        float v2, float v3)
    {
        if (ci >= s.Cin)
        {
            return;
        }
        int row = ((n * s.Cin + ci) * s.H + iy) * s.W;
        StoreInput(s, accumulate, dx, row, ix0, v0);
        StoreInput(s, accumulate, dx, row, ix0 + s.Stride, v1);
        StoreInput(s, accumulate, dx, row, ix0 + 2 * s.Stride, v2);
        StoreInput(s, accumulate, dx, row, ix0 + 3 * s.Stride, v3);
    }

    static void StoreInput(ConvShape s, int accumulate, ArrayView<float> dx, int row, int ix, float v)
    {
        if (ix < s.W)
        {
            dx[row + ix] = accumulate != 0 ? dx[row + ix] + v : v;
        }
    }

    /// <summary>v1 of dw: one weight per step, dw[co, ci, ky, kx] += Σ over images and output pixels of dy·x.</summary>
    static void BackwardWeightsV1(Index1D index, int stride, ConvShape s, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dw)
    {
        int kk = s.K * s.K;
        int total = s.Cout * s.Cin * kk;
        for (int i = index; i < total; i += stride)
        {
            int kx = i % s.K;
            int ky = i / s.K % s.K;
            int ci = i / kk % s.Cin;
            int co = i / (kk * s.Cin);
            float acc = 0f;
            for (int n = 0; n < s.N; n++)
            {
                int dyPlane = (n * s.Cout + co) * s.Ho;
                int xPlane = (n * s.Cin + ci) * s.H;
                for (int oy = 0; oy < s.Ho; oy++)
                {
                    int iy = oy * s.Stride - s.Pad + ky;
                    if (iy < 0 || iy >= s.H)
                    {
                        continue;
                    }
                    for (int ox = 0; ox < s.Wo; ox++)
                    {
                        int ix = ox * s.Stride - s.Pad + kx;
                        if (ix >= 0 && ix < s.W)
                        {
                            acc += dy[(dyPlane + oy) * s.Wo + ox] * x[(xPlane + iy) * s.W + ix];
                        }
                    }
                }
            }
            dw[i] += acc;
        }
    }

    /// <summary>
    /// v2 of dw: 4 output × 4 input channels of one tap per step, over the output rows [split·splitRows, …) of the N·Ho
    /// rows: per output pixel 4 dy and 4 x loads feed 16 FMAs. Items run tap fastest, so neighbouring threads read the same
    /// dy and neighbouring x. One split adds into dw; several write partials[split] (summed by SumPartialsKernel).
    /// </summary>
    static void BackwardWeightsV2(Index1D index, int stride, ConvShape s, int splitRows, int splits, ArrayView<float> x,
        ArrayView<float> dy, ArrayView<float> dw, ArrayView<float> partials)
    {
        int kk = s.K * s.K;
        int co4 = (s.Cout + 3) / 4, ci4 = (s.Cin + 3) / 4;
        int total = splits * co4 * ci4 * kk;
        int rows = s.N * s.Ho, dyChannel = s.Ho * s.Wo, xChannel = s.H * s.W;
        for (int item = index; item < total; item += stride)
        {
            int tap = item % kk;
            int ci0 = item / kk % ci4 * 4;
            int co0 = item / (kk * ci4) % co4 * 4;
            int split = item / (kk * ci4 * co4);
            int ky = tap / s.K, kx = tap - ky * s.K;
            // Out-of-range channels read channel C−1 and are never written.
            // Offsets of channels 1..3 of the tile from channel 0 in dy (o) and x (i).
            int o1 = (Math.Min(co0 + 1, s.Cout - 1) - co0) * dyChannel, o2 = (Math.Min(co0 + 2, s.Cout - 1) - co0) * dyChannel;
            int o3 = (Math.Min(co0 + 3, s.Cout - 1) - co0) * dyChannel;
            int i1 = (Math.Min(ci0 + 1, s.Cin - 1) - ci0) * xChannel, i2 = (Math.Min(ci0 + 2, s.Cin - 1) - ci0) * xChannel;
            int i3 = (Math.Min(ci0 + 3, s.Cin - 1) - ci0) * xChannel;
            // The output columns whose tap lands inside the row: 0 ≤ ox·stride − pad + kx < W.
            int oxLo = Math.Max(0, -FloorDiv(kx - s.Pad, s.Stride));
            int oxHi = Math.Min(s.Wo, FloorDiv(s.W - 1 + s.Pad - kx, s.Stride) + 1);
            float a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0;
            float a20 = 0, a21 = 0, a22 = 0, a23 = 0, a30 = 0, a31 = 0, a32 = 0, a33 = 0;
            int rowEnd = Math.Min(rows, (split + 1) * splitRows);
            for (int row = split * splitRows; row < rowEnd; row++)
            {
                int n = row / s.Ho, oy = row - n * s.Ho;
                int iy = oy * s.Stride - s.Pad + ky;
                if (iy < 0 || iy >= s.H)
                {
                    continue;
                }
                int dyRow = ((n * s.Cout + co0) * s.Ho + oy) * s.Wo;
                int xRow = ((n * s.Cin + ci0) * s.H + iy) * s.W - s.Pad + kx;
                for (int ox = oxLo; ox < oxHi; ox++)
                {
                    int d = dyRow + ox, xi = xRow + ox * s.Stride;
                    float d0 = dy[d], d1 = dy[d + o1], d2 = dy[d + o2], d3 = dy[d + o3];
                    float x0 = x[xi], x1 = x[xi + i1], x2 = x[xi + i2], x3 = x[xi + i3];
                    a00 += d0 * x0; a01 += d0 * x1; a02 += d0 * x2; a03 += d0 * x3;
                    a10 += d1 * x0; a11 += d1 * x1; a12 += d1 * x2; a13 += d1 * x3;
                    a20 += d2 * x0; a21 += d2 * x1; a22 += d2 * x2; a23 += d2 * x3;
                    a30 += d3 * x0; a31 += d3 * x1; a32 += d3 * x2; a33 += d3 * x3;
                }
            }
            // Where several splits run, each writes its own copy of dw's layout.
            var target = splits == 1 ? dw : partials.SubView((long)split * s.Cout * s.Cin * kk, s.Cout * s.Cin * kk);
            int add = splits == 1 ? 1 : 0;
            StoreWeightRow(s, add, target, co0, ci0, tap, a00, a01, a02, a03);
            StoreWeightRow(s, add, target, co0 + 1, ci0, tap, a10, a11, a12, a13);
            StoreWeightRow(s, add, target, co0 + 2, ci0, tap, a20, a21, a22, a23);
            StoreWeightRow(s, add, target, co0 + 3, ci0, tap, a30, a31, a32, a33);
        }
    }

    /// <summary>⌊a / b⌋ for b &gt; 0 (C#'s division truncates toward zero).</summary>
    static int FloorDiv(int a, int b) => a >= 0 ? a / b : -((-a + b - 1) / b);

    static void StoreWeightRow(ConvShape s, int add, ArrayView<float> target, int co, int ci0, int tap, float v0, float v1, float v2,
        float v3)
    {
        if (co >= s.Cout)
        {
            return;
        }
        int kk = s.K * s.K;
        int o = (co * s.Cin + ci0) * kk + tap;
        StoreWeight(s, add, target, o, ci0, v0);
        StoreWeight(s, add, target, o + kk, ci0 + 1, v1);
        StoreWeight(s, add, target, o + 2 * kk, ci0 + 2, v2);
        StoreWeight(s, add, target, o + 3 * kk, ci0 + 3, v3);
    }

    static void StoreWeight(ConvShape s, int add, ArrayView<float> target, int o, int ci, float v)
    {
        if (ci < s.Cin)
        {
            target[o] = add != 0 ? target[o] + v : v;
        }
    }

    /// <summary>Threads of a bias-gradient group on CUDA: the size of its shared tree.</summary>
    const int BiasThreads = 256;

    /// <summary>
    /// db[co] += Σ dy[·, co, ·, ·], one group per channel (explicitly grouped, Group.DimX a power of two ≤ BiasThreads): each
    /// thread sums every DimX-th value of each image's plane — a warp reads consecutive values — with two sums for two
    /// loads in flight, then a shared-memory tree. The order is fixed by the group size, so the result is deterministic.
    /// </summary>
    static void BiasGradientKernel(ConvShape s, ArrayView<float> dy, ArrayView<float> db)
    {
        var partial = SharedMemory.Allocate<float>(BiasThreads);
        int co = Grid.IdxX, tid = Group.IdxX, threads = Group.DimX;
        int pixels = s.Ho * s.Wo;
        float a0 = 0f, a1 = 0f;
        for (int n = 0; n < s.N; n++)
        {
            int plane = (n * s.Cout + co) * pixels;
            int p = tid;
            for (; p + threads < pixels; p += 2 * threads)
            {
                a0 += dy[plane + p];
                a1 += dy[plane + p + threads];
            }
            if (p < pixels)
            {
                a0 += dy[plane + p];
            }
        }
        partial[tid] = a0 + a1;
        Group.Barrier();
        for (int half = threads / 2; half > 0; half /= 2)
        {
            if (tid < half)
            {
                partial[tid] += partial[tid + half];
            }
            Group.Barrier();
        }
        if (tid == 0)
        {
            db[co] += partial[0];
        }
    }

    /// <summary>target[i] += Σ_p partials[p·length + i], p = 0, 1, … in order: deterministic whatever the thread count.</summary>
    static void SumPartialsKernel(Index1D index, int stride, int length, int parts, ArrayView<float> partials, ArrayView<float> target)
    {
        for (int i = index; i < length; i += stride)
        {
            float acc = 0f;
            for (int p = 0; p < parts; p++)
            {
                acc += partials[p * length + i];
            }
            target[i] += acc;
        }
    }

    /// <summary>
    /// Where column c of the transposed weights (Cin × Cout·k²) of dx's GEMM comes from in w (Cout, Cin, k, k): c = (co, tap)
    /// or, tap-major, (tap, co); the tap flipped (k² − 1 − tap, i.e. (k−1−ky, k−1−kx)) when <paramref name="flip"/> ≠ 0.
    /// </summary>
    static int TransposedSource(ConvShape s, int ci, int c, int flip, int tapMajor)
    {
        int kk = s.K * s.K;
        int co = tapMajor != 0 ? c % s.Cout : c / kk;
        int tap = tapMajor != 0 ? c / s.Cout : c % kk;
        tap = flip != 0 ? kk - 1 - tap : tap;
        return (co * s.Cin + ci) * kk + tap;
    }

    /// <summary>wT[ci, c] = w at TransposedSource: the fp32 A operand of v3's input gradient. Cin·Cout·k² copies.</summary>
    static void TransposeWeightsKernel(Index1D index, int stride, ConvShape s, int flip, int tapMajor, ArrayView<float> w,
        ArrayView<float> transposed)
    {
        int columns = s.Cout * s.K * s.K, total = s.Cin * columns;
        for (int i = index; i < total; i += stride)
        {
            int ci = i / columns;
            transposed[i] = w[TransposedSource(s, ci, i - ci * columns, flip, tapMajor)];
        }
    }

    /// <summary>
    /// The same as fp16 pairs in HalfWeights' row layout (⌈Cout·k²/2⌉ words a row, a zero half after an odd count),
    /// rounded to nearest-even: the A operand of v4's input gradient, read without conversion (HalfRowsOperand).
    /// </summary>
    static void TransposeWeightsHalfKernel(Index1D index, int stride, ConvShape s, int flip, int tapMajor, ArrayView<float> w,
        ArrayView<uint> words)
    {
        int columns = s.Cout * s.K * s.K, rowWords = (columns + 1) / 2, total = s.Cin * rowWords;
        for (int i = index; i < total; i += stride)
        {
            int ci = i / rowWords, c = 2 * (i - ci * rowWords);
            float lo = w[TransposedSource(s, ci, c, flip, tapMajor)];
            float hi = c + 1 < columns ? w[TransposedSource(s, ci, c + 1, flip, tapMajor)] : 0f;
            words[i] = TensorCoreGemm.Pack(lo, hi);
        }
    }
}
