// TileOperands — how the tiled kernels (TiledGemm v3, TensorCoreGemm v4) read their operands and write their results.
//   A (M × K) is read along fixed rows, B (K × N) along fixed columns: in every launch each thread stages the same few
//   rows of A and columns of B, one k slice at a time. So an operand is read in three parts:
//     a cursor per fixed row or column, made once per launch — the batch split and an im2col column's image and pixel,
//     all the divisions, are paid there;
//     for B, a tap per k, made once per slice by one warp into a small shared table — an im2col row's (ci, ky, kx) and
//     its offset from the column's origin — since every column of the tile needs the same k's; or, where the rows of a
//     slice share one tap (tap-major im2col, TapsPerSlice), computed by each thread from the slice's first, so that the
//     padding test and the address base are common to the slice;
//     fetches, which combine the two: an add (strided) or an add and two compares (im2col).
//   Fetching is split from finishing a value (GroupNorm + SiLU of the fused convolution input) so that a kernel can issue
//   the next slice's global loads before it computes on the current one, and transform the values only when it stores
//   them into shared memory. Every fetch is in bounds by construction (rows, columns and taps outside are clamped to
//   element 0 and the value replaced by 0 afterwards), and selects stand where C# would branch, so a kernel's load phase
//   has no branches.
// Here: the contracts (cursors, taps, IRowOperand, IHalfPairRows, IColumnOperand) and the row operands, with
// StridedOperand (rows or columns); the im2col column operands are in Im2ColOperands.cs, the outputs, edge policies and
// staging helpers in TileStaging.cs. The CPU references are Gemm.Reference and Conv2d.Reference; the operands are tested
// through the kernels that use them.
using ILGPU;
using ILGPU.Util;

namespace IlgpuDiffSeg.Kernels;

/// <summary>
/// One thread's handle on a fixed row of A or column of B: the offset of its element k = 0 and, for an im2col column,
/// the input origin (Y, X) of its receptive field and its image's first channel (image·Cin).
/// </summary>
public struct TileCursor
{
    public int Base, Y, X, Channel;
}

/// <summary>The rows of a tiled kernel's A operand (M × K): where each starts.</summary>
public interface IRowCursors
{
    /// <summary>True when consecutive columns (k) are adjacent in memory (then a warp stages along k).</summary>
    bool ColumnsContiguous { get; }

    /// <summary>The cursor of row <paramref name="row"/> (0 ≤ row &lt; M) of batch item <paramref name="batch"/>.</summary>
    TileCursor RowCursor(int batch, int row);
}

/// <summary>The A operand of a tiled kernel in fp32: M × K, read along rows.</summary>
public interface IRowOperand : IRowCursors
{
    /// <summary>A(row, col) for 0 ≤ col &lt; K.</summary>
    float FetchInRow(TileCursor row, int col);
}

/// <summary>
/// What memory held for a pair of A's columns (2p, 2p+1) before it becomes an fp16 pair: two fp32 values, or one word of
/// fp16 bits (in Lo, as a float's bits). Splitting the fetch from the packing lets the tensor-core kernel issue its loads a
/// slice ahead and convert only after the slice's mma.
/// </summary>
public struct FetchedPair
{
    public float Lo, Hi;
}

/// <summary>The A operand of the tensor-core kernel: M × K read along rows, two columns at a time as fp16 pairs.</summary>
public interface IHalfPairRows : IRowCursors
{
    /// <summary>
    /// The raw pair at columns (col, col+1) of a row, col even; a column outside (<paramref name="lowInside"/>,
    /// <paramref name="highInside"/> false) reads as 0, and the load stays in bounds.
    /// </summary>
    FetchedPair FetchPair(TileCursor row, int col, bool lowInside, bool highInside);

    /// <summary>The fp16 pair, low column in the low half.</summary>
    uint FinishPair(FetchedPair fetched);
}

/// <summary>An fp32 A operand as fp16 pairs: two loads, converted (round to nearest-even) when finished.</summary>
public readonly struct RoundedPairs<TA>(TA a) : IHalfPairRows where TA : struct, IRowOperand
{
    public bool ColumnsContiguous => a.ColumnsContiguous;

    public TileCursor RowCursor(int batch, int row) => a.RowCursor(batch, row);

    public FetchedPair FetchPair(TileCursor row, int col, bool lowInside, bool highInside) => new()
    {
        Lo = Utilities.Select(lowInside, a.FetchInRow(row, Utilities.Select(lowInside, col, 0)), 0f),
        Hi = Utilities.Select(highInside, a.FetchInRow(row, Utilities.Select(highInside, col + 1, 0)), 0f),
    };

    public uint FinishPair(FetchedPair fetched) => TensorCoreGemm.Pack(fetched.Lo, fetched.Hi);
}

/// <summary>
/// Convolution weights held as fp16 rows (HalfWeights): one load per pair, no conversion. Rows are padded to whole words
/// with a zero half, so a pair's high column past K needs no test of its own.
/// </summary>
public readonly struct HalfRowsOperand(ArrayView<uint> words, int rowWords) : IHalfPairRows
{
    public bool ColumnsContiguous => true;

    public TileCursor RowCursor(int batch, int row) => new() { Base = row * rowWords };

    public FetchedPair FetchPair(TileCursor row, int col, bool lowInside, bool highInside) => new()
    {
        Lo = Interop.IntAsFloat(Utilities.Select(lowInside, words[Utilities.Select(lowInside, row.Base + (col >> 1), 0)], 0u)),
    };

    public uint FinishPair(FetchedPair fetched) => Interop.FloatAsInt(fetched.Lo);
}

/// <summary>
/// A row-major matrix with unit column stride — a convolution's (Cout, Cin·k²) weights. Unlike a StridedOperand, whose
/// layout is only known at run time, its staging pattern is a compile-time constant, so the kernels' shared-memory
/// stores and the fetches along k need no per-element index arithmetic.
/// </summary>
public readonly struct DenseRowsOperand(ArrayView<float> data, int rowStride) : IRowOperand
{
    public bool ColumnsContiguous => true;

    public TileCursor RowCursor(int batch, int row) => new() { Base = row * rowStride };

    public float FetchInRow(TileCursor row, int col) => data[row.Base + col];
}

/// <summary>
/// What a B operand needs to know of row k, the same for every column: for im2col the offset of (ci, ky, kx) from a
/// column's origin, the tap (ky, kx) for the padding test and ci for the norm's coefficients; for a strided matrix only the
/// offset. Stored in shared memory as an Int4 (one 16-byte read).
/// </summary>
public struct TileTap
{
    public int Delta, Ky, Kx, Ci;

    public static TileTap FromInt4(Int4 v) => new() { Delta = v.X, Ky = v.Y, Kx = v.Z, Ci = v.W };

    public readonly Int4 ToInt4() => new(Delta, Ky, Kx, Ci);
}

/// <summary>The B operand of a tiled kernel: K × N, read along columns.</summary>
public interface IColumnOperand
{
    /// <summary>True when consecutive columns (n) are adjacent in memory (then a warp stages along n).</summary>
    bool ColumnsContiguous { get; }

    /// <summary>The cursor of column <paramref name="col"/> (0 ≤ col &lt; N) of batch item <paramref name="batch"/>.</summary>
    TileCursor ColumnCursor(int batch, int col);

    /// <summary>The tap of row <paramref name="row"/>, 0 ≤ row &lt; K.</summary>
    TileTap Tap(int row);

    /// <summary>
    /// True (a constant of the type) when the taps of a slice follow from its first row's (<see cref="TapInSlice"/>):
    /// then a kernel computes them instead of reading a shared table, and a column's padding test is the same for the
    /// whole slice.
    /// </summary>
    bool TapsPerSlice { get; }

    /// <summary>
    /// The tap of the row <paramref name="j"/> rows after the one whose tap is <paramref name="first"/>, within a slice;
    /// used only when TapsPerSlice.
    /// </summary>
    TileTap TapInSlice(TileTap first, int j);

    /// <summary>What memory holds for B(row, col): the raw value, before <see cref="FinishInColumn"/>.</summary>
    float FetchInColumn(TileCursor column, TileTap row);

    /// <summary>B(row, col) from its fetched value.</summary>
    float FinishInColumn(TileCursor column, TileTap row, float fetched);
}

/// <summary>A strided, batched matrix: base + b0·batch0 + b1·batch1 + row·rowStride + col·colStride.</summary>
public readonly struct StridedOperand(ArrayView<float> data, int offset, int batch1Count, int batch0Stride, int batch1Stride, int rowStride,
    int colStride) : IRowOperand, IColumnOperand
{
    public bool ColumnsContiguous => colStride == 1;

    int BatchBase(int batch) => offset + batch / batch1Count * batch0Stride + batch % batch1Count * batch1Stride;

    public TileCursor RowCursor(int batch, int row) => new() { Base = BatchBase(batch) + row * rowStride };

    public float FetchInRow(TileCursor row, int col) => data[row.Base + col * colStride];

    public TileCursor ColumnCursor(int batch, int col) => new() { Base = BatchBase(batch) + col * colStride };

    public TileTap Tap(int row) => new() { Delta = row * rowStride };

    public bool TapsPerSlice => false;

    public TileTap TapInSlice(TileTap first, int j) => default;

    public float FetchInColumn(TileCursor column, TileTap row) => data[column.Base + row.Delta];

    public float FinishInColumn(TileCursor column, TileTap row, float fetched) => fetched;
}
