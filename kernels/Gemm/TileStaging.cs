// TileStaging — what the tiled kernels (TiledGemm v3, TensorCoreGemm v4) share besides their operands (TileOperands.cs):
// where results go (ITileOutput: StridedOutput for Gemm, ConvOutput for Conv2d), a launch's sizes and epilogue
// (TileShape), the edge policy compiled into each instance (ExactTiles, CheckedEdges), and the per-thread staging helpers.
//   Layout: the 256 threads of a group stage a slice of 128 rows of A and 128 columns of B, 4 elements each per operand
//   (v3, slices of 8 floats) or 8 fp16 pairs (v4, slices of 32), walking the operand's contiguous dimension so that a
//   warp's global reads coalesce.
//   Edges: with ExactTiles every inside test is the constant true and folds away; with CheckedEdges each staged element
//   costs a compare and a select (no branch), and what lies outside reads element 0 and stages 0.
//   Taps: threads 0..slice−1 write the next slice's taps (an Int4 each) into a two-slice shared table once per slice;
//   TapsPerSlice operands derive them from the slice's first instead.
// No CPU reference of its own: exercised through the kernels' tests, edge shapes (130, 131, exact 128 tiles) included.
using ILGPU;
using ILGPU.Util;

namespace IlgpuDiffSeg.Kernels;

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
    public static void WriteTaps<TB>(ArrayView<Int4> taps, int at, TB b, int k0, int kCount, int tid, int slice)
        where TB : struct, IColumnOperand
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
