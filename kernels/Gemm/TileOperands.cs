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
// The CPU references are Gemm.Reference and Conv2d.Reference; the operands are tested through the kernels that use them.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
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

    /// <summary>The tap of the row <paramref name="j"/> rows after the one whose tap is <paramref name="first"/>, within a slice; used only when TapsPerSlice.</summary>
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
    public static TileTap InSlice(ConvShape s, TileTap first, int j) => new() { Delta = first.Delta, Ky = first.Ky, Kx = first.Kx, Ci = first.Ci + j };

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
public readonly struct TapMajorNormalizedIm2ColOperand(ArrayView<float> x, ArrayView<Float4> coefficients, ConvShape s, int silu) : IColumnOperand
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

/// <summary>Where C(i, j) of batch item b goes, and which bias applies.</summary>
public interface ITileOutput
{
    int Offset(int batch, int i, int j);

    int BiasIndex(int batch, int i, int j);
}

public readonly struct StridedOutput(GemmShape s) : ITileOutput
{
    public int Offset(int batch, int i, int j) =>
        s.COffset + batch / s.Batch1 * s.CBatch0 + batch % s.Batch1 * s.CBatch1 + i * s.CRow + j * s.CCol;

    public int BiasIndex(int batch, int i, int j) =>
        batch / s.Batch1 * s.BiasBatch0 + batch % s.Batch1 * s.BiasBatch1 + i * s.BiasRow + j * s.BiasCol;
}

/// <summary>Output channel i, column q = (image, pixel) → y[image, i, pixel]; bias per output channel.</summary>
public readonly struct ConvOutput(ConvShape s) : ITileOutput
{
    public int Offset(int batch, int i, int j)
    {
        int pixels = s.Ho * s.Wo;
        return (j / pixels * s.Cout + i) * pixels + j % pixels;
    }

    public int BiasIndex(int batch, int i, int j) => i;
}

/// <summary>Sizes and epilogue of one tiled launch.</summary>
public struct TileShape
{
    public int M, N, K, HasBias, HasResidual, Act;
    public float Alpha;
}

/// <summary>
/// Whether a launch's tiles reach past its matrix (M or N not a multiple of the tile, K not of the slice): then every
/// staged element is tested against the edges; otherwise the tests are constants and fold away. The kernels are compiled
/// once for each.
/// </summary>
public interface ITileEdges
{
    bool Checked { get; }
}

/// <summary>Tiles that end at the matrix's edges: no test.</summary>
public readonly struct ExactTiles : ITileEdges
{
    public bool Checked => false;
}

/// <summary>Tiles that cross an edge somewhere: every element tested.</summary>
public readonly struct CheckedEdges : ITileEdges
{
    public bool Checked => true;
}

/// <summary>
/// The per-thread staging helpers both tiled kernels share. Selects, not C#'s ?:, throughout: ILGPU turns ?: into
/// branches, and the load phase should have none.
/// </summary>
static class TileStaging
{
    /// <summary>
    /// Which elements of an operand's slice thread <paramref name="tid"/> stages: element r is at fixed index (A's row,
    /// B's column) fixed + r·fixedStep and slice position k + r·kStep, where a slice is <paramref name="kUnits"/> positions
    /// (floats or fp16 pairs) deep. Staging along k, consecutive threads take consecutive positions of one row; across,
    /// consecutive rows (columns) of one position — either way a warp walks the operand's contiguous dimension, so its
    /// global reads coalesce. Unsigned division by the power-of-two constants: ptxas keeps a shift where ILGPU sinks it
    /// into a loop (a signed one compiles to a full division there).
    /// </summary>
    public static (int Fixed, int FixedStep, int K, int KStep) Layout(bool alongK, int tid, int kUnits, int tile, int threads) =>
        alongK
            ? ((int)((uint)tid / (uint)kUnits), threads / kUnits, (int)((uint)tid % (uint)kUnits), 0)
            : ((int)((uint)tid % (uint)tile), 0, (int)((uint)tid / (uint)tile), threads / tile);

    /// <summary>i &lt; n, or the constant true when the tiles are exact.</summary>
    public static bool Inside<TE>(int i, int n) where TE : struct, ITileEdges => Utilities.Select(default(TE).Checked, i < n, true);

    /// <summary>
    /// The cursor of A's row <paramref name="row"/> — row 0's where the row is outside the matrix — setting bit
    /// <paramref name="bit"/> of <paramref name="inside"/> when it is inside.
    /// </summary>
    public static TileCursor RowCursor<TA, TE>(TA a, int batch, int row, int rows, int bit, ref int inside)
        where TA : struct, IRowCursors
        where TE : struct, ITileEdges
    {
        bool isInside = Inside<TE>(row, rows);
        inside |= Utilities.Select(isInside, 1 << bit, 0);
        return a.RowCursor(batch, Utilities.Select(isInside, row, 0));
    }

    /// <summary>The cursor of B's column <paramref name="col"/>, as <see cref="RowCursor"/>.</summary>
    public static TileCursor ColumnCursor<TB, TE>(TB b, int batch, int col, int cols, int bit, ref int inside)
        where TB : struct, IColumnOperand
        where TE : struct, ITileEdges
    {
        bool isInside = Inside<TE>(col, cols);
        inside |= Utilities.Select(isInside, 1 << bit, 0);
        return b.ColumnCursor(batch, Utilities.Select(isInside, col, 0));
    }

    /// <summary>
    /// The cursor of B's staged column <paramref name="col"/> after the first. Where the layout stages one column per
    /// thread (along n) it is the same column, computed again: neither ILGPU nor ptxas merges the copies. For operands
    /// whose slices share one tap, reusing <paramref name="first"/>'s cursor and inside bit lets ptxas share one padding
    /// test and one base across the slice (sm_90: 320 → 284 instructions per slice, 128 registers). For the others it
    /// does not pay: with per-row taps, separate copies give ptxas precomputed bases that it would otherwise rebuild per
    /// element (measured: v3's im2col staging 259 → 276, v4 over fp32 weights 392 → 452), so they keep them.
    /// </summary>
    public static TileCursor ColumnCursor<TB, TE>(TB b, int batch, int col, int cols, int bit, ref int inside, TileCursor first)
        where TB : struct, IColumnOperand
        where TE : struct, ITileEdges
    {
        if (b.ColumnsContiguous & b.TapsPerSlice)
        {
            inside |= (inside & 1) << bit;
            return first;
        }
        return ColumnCursor<TB, TE>(b, batch, col, cols, bit, ref inside);
    }

    /// <summary>Bit <paramref name="bit"/> of an inside mask.</summary>
    public static bool Bit(int mask, int bit) => (mask & (1 << bit)) != 0;

    /// <summary>Threads 0..slice−1 write the taps of rows k0..k0+slice−1 at <paramref name="at"/> (callers then barrier).</summary>
    public static void WriteTaps<TB>(ArrayView<Int4> taps, int at, TB b, int k0, int kCount, int tid, int slice) where TB : struct, IColumnOperand
    {
        if (tid < slice & !b.TapsPerSlice)
        {
            taps[at + tid] = TapB(b, k0 + tid, kCount);
        }
    }

    /// <summary>The tap of a slice's first row k0, for operands whose taps follow from it (TapsPerSlice); else unused.</summary>
    public static TileTap SliceTap<TB>(TB b, int k0, int kCount) where TB : struct, IColumnOperand =>
        b.TapsPerSlice ? TileTap.FromInt4(TapB(b, k0, kCount)) : default;

    /// <summary>
    /// The tap of a staged row: entry <paramref name="at"/> of the thread's view of the shared table, or — for TapsPerSlice
    /// operands — computed from the slice's first tap, the row being <paramref name="j"/> rows into the slice.
    /// </summary>
    public static Int4 RowTap<TB>(TB b, ArrayView<Int4> taps, int at, TileTap slice, int j) where TB : struct, IColumnOperand =>
        b.TapsPerSlice ? b.TapInSlice(slice, j).ToInt4() : taps[at];

    /// <summary>The first k of the slice after the one at k0, or 0 after the last slice (whose prefetch is never used).</summary>
    public static int NextSlice(int k0, int slice, int kCount) => Utilities.Select(k0 + slice < kCount, k0 + slice, 0);

    /// <summary>A(row, k), or 0 where the row is outside the tile's matrix or k ≥ K; the load stays in bounds.</summary>
    public static float FetchA<TA, TE>(TA a, TileCursor row, bool rowInside, int k, int kCount)
        where TA : struct, IRowOperand
        where TE : struct, ITileEdges
    {
        bool inside = rowInside & Inside<TE>(k, kCount);
        return Utilities.Select(inside, a.FetchInRow(row, Utilities.Select(inside, k, 0)), 0f);
    }

    /// <summary>A's raw pair at (row, k), (row, k+1), k even; columns outside the tile's matrix read 0.</summary>
    public static FetchedPair FetchPairA<TA, TE>(TA a, TileCursor row, bool rowInside, int k, int kCount)
        where TA : struct, IHalfPairRows
        where TE : struct, ITileEdges =>
        a.FetchPair(row, k, rowInside & Inside<TE>(k, kCount), rowInside & Inside<TE>(k + 1, kCount));

    /// <summary>A's fp16 pair at (row, k), (row, k+1) fetched and finished at once, for a kernel's prologue.</summary>
    public static uint FetchFinishPairA<TA, TE>(TA a, TileCursor row, bool rowInside, int k, int kCount)
        where TA : struct, IHalfPairRows
        where TE : struct, ITileEdges =>
        a.FinishPair(FetchPairA<TA, TE>(a, row, rowInside, k, kCount));

    /// <summary>The tap of row k for the shared table; rows k ≥ K get row 0's (their values are zeroed by the fetch).</summary>
    public static Int4 TapB<TB>(TB b, int k, int kCount) where TB : struct, IColumnOperand =>
        b.Tap(Utilities.Select(k < kCount, k, 0)).ToInt4();

    /// <summary>The fetched B(k, col), or 0 outside the matrix.</summary>
    public static float FetchB<TB, TE>(TB b, TileCursor column, bool columnInside, int k, int kCount, Int4 tap)
        where TB : struct, IColumnOperand
        where TE : struct, ITileEdges
    {
        bool inside = columnInside & Inside<TE>(k, kCount);
        return Utilities.Select(inside, b.FetchInColumn(column, TileTap.FromInt4(tap)), 0f);
    }

    /// <summary>B(k, col) fetched and finished at once, for a kernel's prologue.</summary>
    public static float FetchFinishB<TB, TE>(TB b, TileCursor column, bool columnInside, int k, int kCount, Int4 tap)
        where TB : struct, IColumnOperand
        where TE : struct, ITileEdges =>
        FinishB<TB, TE>(b, column, columnInside, k, kCount, tap, FetchB<TB, TE>(b, column, columnInside, k, kCount, tap));

    /// <summary>B(k, col) from what FetchB returned, or 0 outside the matrix.</summary>
    public static float FinishB<TB, TE>(TB b, TileCursor column, bool columnInside, int k, int kCount, Int4 tap, float fetched)
        where TB : struct, IColumnOperand
        where TE : struct, ITileEdges
    {
        bool inside = columnInside & Inside<TE>(k, kCount);
        return Utilities.Select(inside, b.FinishInColumn(column, TileTap.FromInt4(tap), fetched), 0f);
    }
}
