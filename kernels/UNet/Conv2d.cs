// Conv2d — 2-D convolution on NCHW fp32, square odd kernel (1×1, 3×3), stride 1 or 2, zero padding,
// optional bias, optional residual added to the output (ResBlock: skip(x) + out_conv(h)).
//   v1  one output element per grid-stride step, plain reduction over Cin·k·k. The shape of the reference.
//   v2  register tile of 4 output channels × 4 output columns per step: each input value loaded once feeds
//       4 channels and each weight feeds 4 columns (8 loads per 16 FMAs instead of 32). Default everywhere.
//   v3  implicit GEMM through TiledGemm (weights × im2col read on the fly), for GPUs.
//   v4  the same on tensor cores through TensorCoreGemm (fp16 operands, fp32 sums).
// ForwardNormalized: v3/v4 reading GroupNorm(+scale-shift)(+SiLU) of x on the fly (NormalizedIm2ColOperand).
//
// x: (N, Cin, H, W); w: (Cout, Cin, k, k); b: (Cout); y, residual: (N, Cout, Ho, Wo),
// Ho = (H + 2·pad − k)/stride + 1. FLOPs = 2·N·Cout·Ho·Wo·Cin·k² → compute-bound for Cin ≥ 32.
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Util;

namespace IlgpuDiffSeg.Kernels;

/// <summary>Geometry of one convolution, passed to the kernels as a single struct.</summary>
public struct ConvShape
{
    public int N, Cin, H, W, Cout, K, Stride, Pad, Ho, Wo;
    public int HasBias, HasResidual;

    /// <summary>Reciprocal(k²), Reciprocal(k) and Reciprocal(Cin): Divide(n, them) is n / k², n / k and n / Cin.</summary>
    public uint TapReciprocal, KernelReciprocal, ChannelReciprocal;

    public static ConvShape Create(int n, int cin, int h, int w, int cout, int k, int stride, int pad) => new()
    {
        N = n, Cin = cin, H = h, W = w, Cout = cout, K = k, Stride = stride, Pad = pad,
        Ho = (h + 2 * pad - k) / stride + 1,
        Wo = (w + 2 * pad - k) / stride + 1,
        TapReciprocal = Reciprocal(k * k),
        KernelReciprocal = Reciprocal(k),
        ChannelReciprocal = Reciprocal(cin),
    };

    /// <summary>
    /// m = ⌊2³¹/d⌋ + 1, which fits 32 bits for every d ≥ 1. With m·d = 2³¹ + e, 1 ≤ e ≤ d:
    /// 2n·m / 2³² = n/d + n·e/(d·2³¹), whose floor is ⌊n/d⌋ whenever n·e &lt; 2³¹ — for every n &lt; 2³¹/d, and im2col rows
    /// (Cin·k²) are far below that.
    /// </summary>
    public static uint Reciprocal(int d) => (uint)((1UL << 31) / (uint)d + 1);

    /// <summary>n / d for 0 ≤ n &lt; 2³¹/d, given Reciprocal(d): a shift and one 32×32→64 multiply instead of a division.</summary>
    public static int Divide(int n, uint reciprocal) => (int)((ulong)((uint)n << 1) * reciprocal >> 32);
}

/// <summary>
/// A convolution's weights (Cout, Cin, k, k) as its kernels take them: fp32, fp16 rows (HalfWeights, read only by the
/// tensor-core kernel v4), or both — then v4 reads the fp16 rows and every other kernel the fp32 tensor.
/// </summary>
public readonly struct ConvWeights
{
    public ConvWeights(Tensor? fp32, HalfWeights? half, int[] shape)
    {
        if (fp32 is null && half is null)
        {
            throw new ArgumentException("conv2d: weights need an fp32 tensor or fp16 rows");
        }
        // Tap-major rows are ordered by their own Cin, which another view must keep.
        if (Tensor.Count(shape) != (fp32?.Length ?? (long)half!.Rows * half.Columns) || (half is not null && shape[0] != half.Rows) ||
            (half is { TapMajor: true } && (shape.Length < 2 || shape[1] != half.Shape[1])))
        {
            throw new ArgumentException($"conv2d: weights cannot be seen as ({string.Join(", ", shape)})");
        }
        Fp32 = fp32;
        Half = half;
        Shape = shape;
    }

    public Tensor? Fp32 { get; }
    public HalfWeights? Half { get; }
    public int[] Shape { get; }
    public int Rank => Shape.Length;
    public int this[int dim] => Shape[dim];
    public string ShapeString => "(" + string.Join(", ", Shape) + ")";

    /// <summary>The same weights seen with another shape of the same output channels and count (a 1-d conv's (Cout, Cin, 1)).</summary>
    public ConvWeights Reshaped(params int[] shape) => new(Fp32, Half, shape);

    /// <summary>The fp32 tensor, which every kernel but v4 needs.</summary>
    public Tensor Float32For(string kernel) => Fp32 ?? throw new NotSupportedException(
        $"conv2d: these weights are held in fp16 only, which only the tensor-core kernel (v4) on an ILGPU accelerator reads, not {kernel}");

    public static implicit operator ConvWeights(Tensor fp32) => new(fp32, null, fp32.Shape);
}

public static class Conv2d
{
    // ---- CPU reference

    /// <summary>Plain loops, double accumulation: the oracle for the kernels.</summary>
    public static float[] Reference(float[] x, float[] w, float[]? bias, ConvShape s, float[]? residual = null)
    {
        var y = new float[s.N * s.Cout * s.Ho * s.Wo];
        for (int n = 0; n < s.N; n++)
        for (int co = 0; co < s.Cout; co++)
        for (int oy = 0; oy < s.Ho; oy++)
        for (int ox = 0; ox < s.Wo; ox++)
        {
            double acc = bias is null ? 0 : bias[co];
            for (int ci = 0; ci < s.Cin; ci++)
            for (int ky = 0; ky < s.K; ky++)
            for (int kx = 0; kx < s.K; kx++)
            {
                int iy = oy * s.Stride - s.Pad + ky, ix = ox * s.Stride - s.Pad + kx;
                if (iy >= 0 && iy < s.H && ix >= 0 && ix < s.W)
                {
                    acc += (double)x[((n * s.Cin + ci) * s.H + iy) * s.W + ix] * w[((co * s.Cin + ci) * s.K + ky) * s.K + kx];
                }
            }
            int o = ((n * s.Cout + co) * s.Ho + oy) * s.Wo + ox;
            y[o] = (float)(acc + (residual is null ? 0 : residual[o]));
        }
        return y;
    }

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

    // ---- CPU backend

    const int HostColumns = 4096;

    /// <summary>The CPU backend; halfOperands: v4's precision (input and weights rounded to fp16).</summary>
    static unsafe void RunOnHost(ComputeDevice dev, ConvShape s, Tensor x, Tensor w, Tensor? bias, Tensor? residual, Tensor y, bool halfOperands)
    {
        dev.Synchronize();
        float* px = (float*)x.View.LoadEffectiveAddressAsPtr();
        float* pw = (float*)w.View.LoadEffectiveAddressAsPtr();
        // Pinned copies: their addresses stay valid while they are referenced (KeepAlive below).
        float[]? xHalf = halfOperands ? TensorCoreGemm.HalfRoundedCopy(px, x.Length) : null;
        float[]? wHalf = halfOperands ? TensorCoreGemm.HalfRoundedCopy(pw, w.Length) : null;
        if (xHalf is not null && wHalf is not null)
        {
            px = (float*)Marshal.UnsafeAddrOfPinnedArrayElement(xHalf, 0);
            pw = (float*)Marshal.UnsafeAddrOfPinnedArrayElement(wHalf, 0);
        }
        float* pb = bias is null ? null : (float*)bias.View.LoadEffectiveAddressAsPtr();
        float* pr = residual is null ? null : (float*)residual.View.LoadEffectiveAddressAsPtr();
        float* py = (float*)y.View.LoadEffectiveAddressAsPtr();
        int kk = s.K * s.K, rows = s.Cin * kk, pixels = s.Ho * s.Wo;
        bool direct = s.K == 1 && s.Stride == 1 && s.Pad == 0;
        int columns = Math.Min(pixels, HostColumns);
        var cols = direct ? [] : GC.AllocateUninitializedArray<float>(rows * columns, pinned: true);
        fixed (float* pc = cols)
        {
            nint colPtr = (nint)pc, xPtr = (nint)px;
            for (int n = 0; n < s.N; n++)
            {
                for (int p0 = 0; p0 < pixels; p0 += columns)
                {
                    int count = Math.Min(columns, pixels - p0);
                    float* xn = px + (long)n * s.Cin * s.H * s.W;
                    var g = new GemmShape
                    {
                        M = s.Cout, N = count, K = rows, Batch0 = 1, Batch1 = 1, Alpha = 1f,
                        ARow = rows, ACol = 1,
                        BRow = direct ? pixels : count, BCol = 1,
                        CRow = pixels, CCol = 1, COffset = n * s.Cout * pixels + p0,
                        BiasRow = 1, HasBias = s.HasBias, HasResidual = s.HasResidual,
                    };
                    if (!direct)
                    {
                        int nn = n, start = p0;
                        Parallel.For(0, rows, r => Im2ColRow(s, (float*)xPtr + (long)nn * s.Cin * s.H * s.W, r, start, count,
                            (float*)colPtr + (long)r * count));
                    }
                    HostGemm.Run(g, pw, direct ? xn + p0 : pc, py, pb, pr);
                }
            }
        }
        GC.KeepAlive(xHalf);
        GC.KeepAlive(wHalf);
    }

    /// <summary>Row r = (ci, ky, kx) of the column matrix for output pixels [p0, p0 + count).</summary>
    static unsafe void Im2ColRow(ConvShape s, float* x, int r, int p0, int count, float* dst)
    {
        int kx = r % s.K, ky = r / s.K % s.K, ci = r / (s.K * s.K);
        float* plane = x + (long)ci * s.H * s.W;
        for (int q = 0; q < count; q++)
        {
            int p = p0 + q, oy = p / s.Wo, ox = p % s.Wo;
            int iy = oy * s.Stride - s.Pad + ky, ix = ox * s.Stride - s.Pad + kx;
            dst[q] = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W ? plane[iy * s.W + ix] : 0f;
        }
    }

    // ---- launcher

    static ConvShape Shape(Tensor x, ConvWeights w, Tensor? bias, Tensor y, int stride, Tensor? residual)
    {
        if (x.Rank != 4 || w.Rank != 4 || w[2] != w[3] || w[1] != x[1])
        {
            throw new ArgumentException($"conv2d: input {x.ShapeString} does not fit weight {w.ShapeString}");
        }
        var s = ConvShape.Create(x[0], x[1], x[2], x[3], w[0], w[2], stride, w[2] / 2);
        if (y.Rank != 4 || y[0] != s.N || y[1] != s.Cout || y[2] != s.Ho || y[3] != s.Wo)
        {
            throw new ArgumentException($"conv2d: output {y.ShapeString} should be ({s.N}, {s.Cout}, {s.Ho}, {s.Wo})");
        }
        if (residual is not null && residual.Length != y.Length)
        {
            throw new ArgumentException($"conv2d: residual {residual.ShapeString} does not match output {y.ShapeString}");
        }
        s.HasBias = bias is null ? 0 : 1;
        s.HasResidual = residual is null ? 0 : 1;
        return s;
    }

    /// <summary>
    /// y = conv(act(GN(x)), w) + b (+ residual) in one implicit-GEMM launch (v3 or v4): the input is normalized while it is
    /// read, from <paramref name="coefficients"/> = GroupNorm.Coefficients(x, ...), with SiLU when <paramref name="silu"/>.
    /// </summary>
    public static void ForwardNormalized(Tensor x, Tensor coefficients, bool silu, ConvWeights w, Tensor? bias, Tensor y, int stride,
        Tensor? residual, int version)
    {
        var dev = x.Device;
        var s = Shape(x, w, bias, y, stride, residual);
        if (coefficients.Length != 4L * s.N * s.Cin)
        {
            throw new ArgumentException($"conv2d: norm coefficients {coefficients.ShapeString} should be ({s.N}, {s.Cin}, 4)");
        }
        if (version < 3 || dev.UseHostKernels)
        {
            throw new NotSupportedException($"conv2d: the norm is fused only into the tiled kernels (v3, v4) on an ILGPU accelerator, not v{version}");
        }
        var empty = y.View.SubView(0, 0);
        int kk = s.Cin * s.K * s.K;
        var tile = new TileShape { M = s.Cout, N = s.N * s.Ho * s.Wo, K = kk, HasBias = s.HasBias, HasResidual = s.HasResidual, Alpha = 1f };
        var input = new NormalizedIm2ColOperand(x.View, coefficients.View.Cast<Float4>(), s, silu ? 1 : 0);
        if (version == 4 && w.Half is { } half)
        {
            var rows = new HalfRowsOperand(half.View, half.RowWords);
            if (half.TapMajor)
            {
                TensorCoreGemm.RunPairs(dev, "conv2d.normalized.v4.half.tap_major", tile, 1, rows,
                    new TapMajorNormalizedIm2ColOperand(x.View, coefficients.View.Cast<Float4>(), s, silu ? 1 : 0), new ConvOutput(s),
                    bias?.View ?? empty, residual?.View ?? empty, y.View);
            }
            else
            {
                TensorCoreGemm.RunPairs(dev, "conv2d.normalized.v4.half", tile, 1, rows, input, new ConvOutput(s), bias?.View ?? empty,
                    residual?.View ?? empty, y.View);
            }
            return;
        }
        var weights = new DenseRowsOperand(w.Float32For($"v{version}").View, kk);
        if (version == 4)
        {
            TensorCoreGemm.Run(dev, "conv2d.normalized.v4", tile, 1, weights, input, new ConvOutput(s), bias?.View ?? empty,
                residual?.View ?? empty, y.View);
        }
        else
        {
            TiledGemm.Run(dev, "conv2d.normalized.v3", tile, 1, weights, input, new ConvOutput(s), bias?.View ?? empty,
                residual?.View ?? empty, y.View);
        }
    }

    /// <summary>y = conv(x, w) + b (+ residual). Shapes are checked; padding is k/2 ("same" at stride 1).</summary>
    public static void Forward(Tensor x, ConvWeights weight, Tensor? bias, Tensor y, int stride = 1, Tensor? residual = null, int version = 2)
    {
        var dev = x.Device;
        var s = Shape(x, weight, bias, y, stride, residual);
        var empty = y.View.SubView(0, 0);
        var biasView = bias?.View ?? empty;
        var residualView = residual?.View ?? empty;
        int kk = s.Cin * s.K * s.K;
        var tile = new TileShape { M = s.Cout, N = s.N * s.Ho * s.Wo, K = kk, HasBias = s.HasBias, HasResidual = s.HasResidual, Alpha = 1f };
        if (version == 4 && weight.Half is { } half && !dev.UseHostKernels)
        {
            var rows = new HalfRowsOperand(half.View, half.RowWords);
            if (half.TapMajor)
            {
                TensorCoreGemm.RunPairs(dev, "conv2d.v4.half.tap_major", tile, 1, rows, new TapMajorIm2ColOperand(x.View, s), new ConvOutput(s),
                    biasView, residualView, y.View);
            }
            else
            {
                TensorCoreGemm.RunPairs(dev, "conv2d.v4.half", tile, 1, rows, new Im2ColOperand(x.View, s), new ConvOutput(s), biasView,
                    residualView, y.View);
            }
            return;
        }
        var w = weight.Float32For(dev.UseHostKernels ? "the CPU backend" : $"v{version}");
        if (dev.UseHostKernels)
        {
            RunOnHost(dev, s, x, w, bias, residual, y, halfOperands: version == 4);
            return;
        }
        if (version >= 3)
        {
            var weights = new DenseRowsOperand(w.View, kk);
            if (version == 4)
            {
                TensorCoreGemm.Run(dev, "conv2d.v4", tile, 1, weights, new Im2ColOperand(x.View, s), new ConvOutput(s), biasView, residualView, y.View);
            }
            else
            {
                TiledGemm.Run(dev, "conv2d.v3", tile, 1, weights, new Im2ColOperand(x.View, s), new ConvOutput(s), biasView, residualView, y.View);
            }
            return;
        }
        if (version == 1)
        {
            var k = dev.Kernel("conv2d.v1", a => a.LoadAutoGroupedStreamKernel<Index1D, int, ConvShape, ArrayView<float>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(KernelV1));
            int threads = dev.StrideThreads((long)s.N * s.Cout * s.Ho * s.Wo);
            k(threads, threads, s, x.View, w.View, biasView, residualView, y.View);
        }
        else
        {
            var k = dev.Kernel("conv2d.v2", a => a.LoadAutoGroupedStreamKernel<Index1D, int, ConvShape, ArrayView<float>,
                ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(KernelV2));
            int threads = dev.StrideThreads((long)s.N * ((s.Cout + 3) / 4) * s.Ho * ((s.Wo + 3) / 4));
            k(threads, threads, s, x.View, w.View, biasView, residualView, y.View);
        }
    }
}
