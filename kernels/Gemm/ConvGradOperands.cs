// ConvGradOperands — the operands of Conv2d's backward as implicit GEMMs on the tiled kernels (v3 TiledGemm, v4
// TensorCoreGemm), read through the cursors and taps of TileOperands.cs like the forward's.
//   Input gradient dx = conv_transpose(dy, w): M = Cin, N = N·H·W (dx's pixels), K = Cout·k², A = the weights transposed
//   (Cin × Cout·k², a copy). At stride 1 (pad = (k−1)/2) dy is read at oy = iy − pad + (k−1−ky): the forward's
//   Im2ColOperand over dy with the kernel flipped, which the copy holds — no operand of its own. At stride 2 a tap reads
//   dy at oy = (iy + pad − ky)/2 only where that is an integer in range: ConvTransposeOperand.
//   Weight gradient dw = Σ dy ⊗ im2col(x): M = Cout, N = Cin·k², K = output pixels. One launch batch is one split of K:
//   a block of WeightGradSplit.Rows output rows of one image, each row Wo wide padded to a power of two, so that a k
//   splits into (row, column) by a shift and a mask — no division per element — and the padding columns read 0.
//   A = dy's rows (PixelRowsOperand), B = im2col(x) transposed (PixelIm2ColOperand): its columns (ci, ky, kx) are the
//   forward's im2col rows and its rows the pixels, so a column's cursor is the forward's tap and a row's tap the
//   forward's cursor, and Im2ColOperand's padding test and fetch serve unchanged.
// The CPU references are Conv2d.BackwardInputReference and BackwardWeightsReference; the operands are tested through the
// kernels (Conv2dBackwardTests).
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Util;

namespace IlgpuDiffSeg.Kernels;

/// <summary>
/// dy (N, Cout, Ho, Wo) as the (Cout·k², N·H·W) matrix of the transposed convolution at stride 1 or 2: row
/// r = (co, ky, kx), column q = (image, iy, ix) reads dy[image, co, (iy + pad − ky)/stride, (ix + pad − kx)/stride], 0
/// where a quotient is no integer in [0, Ho) × [0, Wo). <paramref name="s"/> is the forward's geometry. A column's cursor
/// holds (Y, X) = (iy + pad, ix + pad) and its image's offset in dy; a row's tap (ky, kx) and the offset co·Ho·Wo.
/// </summary>
public readonly struct ConvTransposeOperand(ArrayView<float> dy, ConvShape s) : IColumnOperand
{
    public bool ColumnsContiguous => true;

    public TileCursor ColumnCursor(int batch, int col)
    {
        int pixels = s.H * s.W;
        int img = col / pixels, p = col - img * pixels;
        int iy = p / s.W, ix = p - iy * s.W;
        return new TileCursor { Base = img * s.Cout * s.Ho * s.Wo, Y = iy + s.Pad, X = ix + s.Pad, Channel = img * s.Cout };
    }

    public TileTap Tap(int row)
    {
        int co = ConvShape.Divide(row, s.TapReciprocal);
        int tap = row - co * s.K * s.K;
        int ky = ConvShape.Divide(tap, s.KernelReciprocal);
        return new TileTap { Delta = co * s.Ho * s.Wo, Ky = ky, Kx = tap - ky * s.K, Ci = co };
    }

    public bool TapsPerSlice => false;

    public TileTap TapInSlice(TileTap first, int j) => default;

    /// <summary>
    /// dy at the tap, or 0: (ty, tx) = (Y − ky, X − kx) must be multiples of the stride (a mask; the quotient a shift by
    /// stride/2, for strides 1 and 2) inside [0, stride·Ho) × [0, stride·Wo) (one unsigned compare each); the load itself
    /// always reads inside dy.
    /// </summary>
    public float FetchInColumn(TileCursor column, TileTap row)
    {
        int ty = column.Y - row.Ky, tx = column.X - row.Kx;
        int mask = s.Stride - 1, shift = s.Stride >> 1;
        bool inside = (((ty | tx) & mask) == 0) & ((uint)ty < (uint)(s.Ho * s.Stride)) & ((uint)tx < (uint)(s.Wo * s.Stride));
        int at = column.Base + row.Delta + (ty >> shift) * s.Wo + (tx >> shift);
        return Utilities.Select(inside, dy[Utilities.Select(inside, at, 0)], 0f);
    }

    public float FinishInColumn(TileCursor column, TileTap row, float fetched) => fetched;
}

/// <summary>
/// One split of the weight gradient's K: <see cref="Rows"/> output rows of one image (Rows divides Ho, so a split never
/// crosses an image), each read as 2^<see cref="WidthShift"/> ≥ Wo columns. Launch batch b is image b / PerImage, rows
/// from (b mod PerImage)·Rows; K = Rows·2^WidthShift.
/// </summary>
public struct WeightGradSplit
{
    public int Rows, PerImage, WidthShift;

    public readonly int K => Rows << WidthShift;

    /// <summary>The image and first output row of launch batch <paramref name="batch"/>.</summary>
    public readonly (int Image, int Row) Origin(int batch)
    {
        int image = batch / PerImage;
        return (image, (batch - image * PerImage) * Rows);
    }
}

/// <summary>
/// dy (N, Cout, Ho, Wo) as the A operand of the weight gradient: row co, column k = (row r, column ox) of the batch's split,
/// dy[image, co, oy0 + r, ox], 0 for the padding columns ox ≥ Wo.
/// </summary>
public readonly struct PixelRowsOperand(ArrayView<float> dy, ConvShape s, WeightGradSplit split) : IRowOperand
{
    public bool ColumnsContiguous => true;

    public TileCursor RowCursor(int batch, int row)
    {
        var (image, oy0) = split.Origin(batch);
        return new TileCursor { Base = ((image * s.Cout + row) * s.Ho + oy0) * s.Wo };
    }

    public float FetchInRow(TileCursor row, int col)
    {
        int r = col >> split.WidthShift, ox = col & ((1 << split.WidthShift) - 1);
        bool inside = ox < s.Wo;
        return Utilities.Select(inside, dy[Utilities.Select(inside, row.Base + r * s.Wo + ox, 0)], 0f);
    }
}

/// <summary>
/// im2col(x) transposed, the B operand of the weight gradient: row k = (r, ox) of the batch's split (as
/// <see cref="PixelRowsOperand"/>), column j = (ci, ky, kx): x[image, ci, (oy0 + r)·stride − pad + ky, ox·stride − pad + kx],
/// 0 in the padding. A column's cursor is the origin (Y, X) = (oy0·stride − pad + ky, kx − pad) and the offset of
/// (image, ci, Y, X) in x; a row's tap is (Ky, Kx) = (r·stride, ox·stride) and its offset. Padding columns (ox ≥ Wo) get
/// a Kx far outside the image, so they read 0 too (the product is 0 either way; this keeps an inf in x out of it).
/// Consecutive columns are not adjacent in x, consecutive rows are: a warp stages along k.
/// </summary>
public readonly struct PixelIm2ColOperand(ArrayView<float> x, ConvShape s, WeightGradSplit split) : IColumnOperand
{
    public bool ColumnsContiguous => false;

    public TileCursor ColumnCursor(int batch, int col)
    {
        var (image, oy0) = split.Origin(batch);
        var tap = Im2ColOperand.TapOf(s, col);
        int y = oy0 * s.Stride - s.Pad + tap.Ky, x0 = tap.Kx - s.Pad;
        return new TileCursor { Base = ((image * s.Cin + tap.Ci) * s.H + y) * s.W + x0, Y = y, X = x0, Channel = image * s.Cin + tap.Ci };
    }

    public TileTap Tap(int row)
    {
        int r = row >> split.WidthShift, ox = row & ((1 << split.WidthShift) - 1);
        int ky = r * s.Stride, kx = Utilities.Select(ox < s.Wo, ox * s.Stride, -(1 << 30));
        return new TileTap { Delta = ky * s.W + ox * s.Stride, Ky = ky, Kx = kx };
    }

    public bool TapsPerSlice => false;

    public TileTap TapInSlice(TileTap first, int j) => default;

    public float FetchInColumn(TileCursor column, TileTap row) => Im2ColOperand.Fetch(x, s, column, row);

    public float FinishInColumn(TileCursor column, TileTap row, float fetched) => fetched;
}
