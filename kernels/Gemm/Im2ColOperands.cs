// Im2ColOperands — the B operands of the tiled kernels (TiledGemm v3, TensorCoreGemm v4) that read a convolution's input
// as its im2col matrix while staging it (implicit GEMM: the matrix is never written), in the terms of TileOperands.cs.
//   x: (N, Cin, H, W) fp32 → B: (Cin·k², N·Ho·Wo), row r = (ci, ky, kx), column q = (image, oy, ox), zero padding.
//   Im2ColOperand                    channel-major rows; each slice's taps come from the shared table.
//   NormalizedIm2ColOperand          the same with GroupNorm's (x − mean)·a + b, then SiLU, applied to each value as it is
//                                    staged: the normalised activation is never written, the norm costs no pass of its own.
//   TapMajorIm2ColOperand            tap-major rows r = (ky·k + kx)·Cin + ci, matching HalfWeights.TapMajor: with Cin a
//                                    multiple of the slice, a slice has one tap, so its padding test and base are shared.
//   TapMajorNormalizedIm2ColOperand  both.
//   Costs: a column's image and pixel (two divisions) once per launch (Cursor); a row's tap by multiply-high with
//   ConvShape's reciprocals once per slice (TapOf); per fetched element an add, two unsigned compares and a select; the
//   norm adds one float4 coefficient load, two multiply-adds, and for SiLU an ex2 and a reciprocal.
// The CPU reference is Conv2d.Reference; tested through the kernels (TiledGemmTests, TensorCoreGemmTests,
// NormalizedConvTests, HalfWeightsTests).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime.Cuda;
using ILGPU.Util;

namespace IlgpuDiffSeg.Kernels;

/// <summary>
/// A convolution's input as the (Cin·k², N·Ho·Wo) im2col matrix, computed while loading: row r = (ci, ky, kx), column
/// q = (image, oy, ox). Zero padding outside the image. A column's cursor holds its receptive field's origin (Y, X) =
/// (oy·stride − pad, ox·stride − pad) and Base, the offset of (image, 0, Y, X) — outside x when the origin is in the
/// padding, but only ever read at taps inside the image.
/// </summary>
public readonly struct Im2ColOperand(ArrayView<float> x, ConvShape s) : IColumnOperand
{
    public bool ColumnsContiguous => true;

    public TileCursor ColumnCursor(int batch, int col) => Cursor(s, col);

    public TileTap Tap(int row) => TapOf(s, row);

    public bool TapsPerSlice => false;

    public TileTap TapInSlice(TileTap first, int j) => default;

    public float FetchInColumn(TileCursor column, TileTap row) => Fetch(x, s, column, row);

    public float FinishInColumn(TileCursor column, TileTap row, float fetched) => fetched;

    /// <summary>The cursor of im2col column q = (image, oy, ox).</summary>
    public static TileCursor Cursor(ConvShape s, int col)
    {
        int pixels = s.Ho * s.Wo;
        int img = col / pixels, p = col - img * pixels;
        int oy = p / s.Wo, ox = p - oy * s.Wo;
        int y = oy * s.Stride - s.Pad, x = ox * s.Stride - s.Pad;
        return new TileCursor { Base = img * s.Cin * s.H * s.W + y * s.W + x, Y = y, X = x, Channel = img * s.Cin };
    }

    /// <summary>Im2col row r = (ci, ky, kx) without a division: multiply-high by ConvShape's reciprocals of k² and k.</summary>
    public static TileTap TapOf(ConvShape s, int row)
    {
        int ci = ConvShape.Divide(row, s.TapReciprocal);
        int tap = row - ci * s.K * s.K;
        int ky = ConvShape.Divide(tap, s.KernelReciprocal);
        int kx = tap - ky * s.K;
        return new TileTap { Delta = (ci * s.H + ky) * s.W + kx, Ky = ky, Kx = kx, Ci = ci };
    }

    /// <summary>Whether the tap lands inside the image (else it reads the zero padding).</summary>
    public static bool Inside(ConvShape s, TileCursor column, TileTap row) =>
        // & rather than &&: both compares are cheap, and a short circuit would be a branch in the load phase.
        ((uint)(column.Y + row.Ky) < (uint)s.H) & ((uint)(column.X + row.Kx) < (uint)s.W);

    /// <summary>x at the element, or 0 in the padding; the load itself always reads inside x.</summary>
    public static float Fetch(ArrayView<float> x, ConvShape s, TileCursor column, TileTap row)
    {
        bool inside = Inside(s, column, row);
        return Utilities.Select(inside, x[Utilities.Select(inside, column.Base + row.Delta, 0)], 0f);
    }
}

/// <summary>
/// Im2ColOperand of the normalized input: each value is GroupNorm's (x − mean)·a + b from GroupNorm.Coefficients (one
/// float4 per image and channel), then SiLU when silu ≠ 0, computed while staging — the norm costs no pass of its own.
/// The padding stays zero: PyTorch pads the normalized tensor, not x.
/// </summary>
public readonly struct NormalizedIm2ColOperand(ArrayView<float> x, ArrayView<Float4> coefficients, ConvShape s, int silu) : IColumnOperand
{
    public bool ColumnsContiguous => true;

    public TileCursor ColumnCursor(int batch, int col) => Im2ColOperand.Cursor(s, col);

    public TileTap Tap(int row) => Im2ColOperand.TapOf(s, row);

    public bool TapsPerSlice => false;

    public TileTap TapInSlice(TileTap first, int j) => default;

    public float FetchInColumn(TileCursor column, TileTap row) => Im2ColOperand.Fetch(x, s, column, row);

    public float FinishInColumn(TileCursor column, TileTap row, float fetched) => Normalize(coefficients, s, silu, column, row, fetched);

    /// <summary>GroupNorm (+SiLU) of a fetched input value; 0 in the padding.</summary>
    public static float Normalize(ArrayView<Float4> coefficients, ConvShape s, int silu, TileCursor column, TileTap row, float fetched)
    {
        var c = coefficients[column.Channel + row.Ci];
        float v = (fetched - c.X) * c.Y + c.Z;
        v = Utilities.Select(silu != 0, v * FastReciprocal(1f + XMath.Exp(-v)), v);
        return Utilities.Select(Im2ColOperand.Inside(s, column, row), v, 0f);
    }

    /// <summary>
    /// 1/x within one ulp: on CUDA rcp.approx (one MUFU.RCP) — C#'s division compiles to IEEE div.rn with a slow-path
    /// call, 16 of them per staged slice of the tensor-core kernel. Elsewhere the exact quotient.
    /// </summary>
    static float FastReciprocal(float x)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("rcp.approx.ftz.f32 %0, %1;", out float r, x);
            return r;
        }
        return 1f / x;
    }
}

/// <summary>
/// The im2col matrix with its rows in tap-major order, r = (ky·k + kx)·Cin + ci, for weights packed the same way
/// (HalfWeights.TapMajor). With Cin a multiple of the slice, the rows of a slice share one tap (ky, kx) and run through
/// consecutive channels: a column's padding test is the same for the whole slice, and its addresses step by one plane —
/// the tensor-core kernel computes the taps from the slice's first (TapsPerSlice) instead of reading a table per row.
/// </summary>
public readonly struct TapMajorIm2ColOperand(ArrayView<float> x, ConvShape s) : IColumnOperand
{
    public bool ColumnsContiguous => true;

    public TileCursor ColumnCursor(int batch, int col) => Im2ColOperand.Cursor(s, col);

    public TileTap Tap(int row) => TapOf(s, row);

    public bool TapsPerSlice => true;

    public TileTap TapInSlice(TileTap first, int j) => InSlice(s, first, j);

    public float FetchInColumn(TileCursor column, TileTap row) => Fetch(x, s, column, row);

    public float FinishInColumn(TileCursor column, TileTap row, float fetched) => fetched;

    /// <summary>
    /// Tap-major row r = (ky, kx, ci), by multiply-high with ConvShape's reciprocals of Cin and k. Its Delta is the spatial
    /// offset ky·W + kx alone, common to the slice; the channel's plane is added at the fetch.
    /// </summary>
    public static TileTap TapOf(ConvShape s, int row)
    {
        int tap = ConvShape.Divide(row, s.ChannelReciprocal);
        int ci = row - tap * s.Cin;
        int ky = ConvShape.Divide(tap, s.KernelReciprocal);
        int kx = tap - ky * s.K;
        return new TileTap { Delta = ky * s.W + kx, Ky = ky, Kx = kx, Ci = ci };
    }

    /// <summary>The tap j channels after <paramref name="first"/>: the same (ky, kx), channel ci + j.</summary>
    public static TileTap InSlice(ConvShape s, TileTap first, int j) =>
        new() { Delta = first.Delta, Ky = first.Ky, Kx = first.Kx, Ci = first.Ci + j };

    /// <summary>
    /// x at the element, or 0 in the padding. The padding test and the spatial index (its selected form too) are the same
    /// for every row of a slice, so they are computed once; only the plane ci·H·W differs. Outside, the load reads plane ci
    /// of x's first image, which exists.
    /// </summary>
    public static float Fetch(ArrayView<float> x, ConvShape s, TileCursor column, TileTap row)
    {
        bool inside = Im2ColOperand.Inside(s, column, row);
        return Utilities.Select(inside, x[Utilities.Select(inside, column.Base + row.Delta, 0) + row.Ci * (s.H * s.W)], 0f);
    }
}

/// <summary>NormalizedIm2ColOperand with its rows in tap-major order, as <see cref="TapMajorIm2ColOperand"/>.</summary>
public readonly struct TapMajorNormalizedIm2ColOperand(ArrayView<float> x, ArrayView<Float4> coefficients, ConvShape s, int silu)
    : IColumnOperand
{
    public bool ColumnsContiguous => true;

    public TileCursor ColumnCursor(int batch, int col) => Im2ColOperand.Cursor(s, col);

    public TileTap Tap(int row) => TapMajorIm2ColOperand.TapOf(s, row);

    public bool TapsPerSlice => true;

    public TileTap TapInSlice(TileTap first, int j) => TapMajorIm2ColOperand.InSlice(s, first, j);

    public float FetchInColumn(TileCursor column, TileTap row) => TapMajorIm2ColOperand.Fetch(x, s, column, row);

    public float FinishInColumn(TileCursor column, TileTap row, float fetched) =>
        NormalizedIm2ColOperand.Normalize(coefficients, s, silu, column, row, fetched);
}
