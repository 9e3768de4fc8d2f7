// TensorCoreGemm — v4 of Gemm and Conv2d: the tiled kernel of TiledGemm with its inner product on tensor cores.
//   C(i, j) = act(α·Σ_k half(A(i, k))·half(B(k, j)) + bias + R), products of fp16-rounded operands summed in fp32 —
//   the precision of the original's use_fp16 for the matrix products, while activations stay fp32 between kernels.
//   Block tile 128×128, K slices of 32 staged in shared memory as packed fp16 pairs, double-buffered (2 operands × 2
//   stages × 10 KB): while the warps multiply one stage, the next slice's 32 fp32 values per thread are in flight in
//   registers, packed to fp16 and stored into the other stage afterwards — one barrier per slice. 8 warps, each owning a
//   64×32 sub-tile as 4×4 tiles of mma.sync.m16n8k16 (64 fp32 accumulators per thread). Shared rows are padded to 20
//   words so that the fragment reads of a warp (8 rows × 4 words) hit 32 distinct banks. Operands are read through the
//   cursors and taps of TileOperands.cs (no division per element); A comes as fp16 pairs (IHalfPairRows): fp32 rows
//   rounded as they are staged (RoundedPairs), or convolution weights held in fp16 (HalfRowsOperand, HalfWeights), whose
//   tap-major order lets the im2col operand share one tap across a slice (TapMajorIm2ColOperand); the slice's two
//   k-steps are written out from one fragment base per operand (constant offsets, folded into the loads); exact-tile
//   launches skip the edge tests.
//   sm_90 SASS (benchmarks/results/sass-static-sm90.md): an im2col convolution slice is 392 instructions for 32 mma per
//   warp from fp32 weights and 284 from fp16 tap-major ones (exact tiles, 128 registers), against 4,281 for the first
//   version.
// On CUDA the product is one inline-PTX mma.sync per 16×8×16 tile; elsewhere (the CPU accelerator, warp-32 shape) the
// same fragments are multiplied in fp32 by an emulation of it (TensorCoreGemm.Mma.cs: fragments, packing, mma).
// Reference: Gemm.Reference over operands rounded to fp16 (RoundToHalf), tolerance in TensorCoreGemmTests.
using ILGPU;
using ILGPU.Util;

namespace IlgpuDiffSeg.Kernels;

public static partial class TensorCoreGemm
{
    public const int Tile = 128, Slice = 32, Threads = 256;

    /// <summary>Words (fp16 pairs) of one row's k slice.</summary>
    const int WordsPerRow = Slice / 2;

    /// <summary>Words per shared-memory row: the slice's 16 plus 4 of padding against bank conflicts.</summary>
    const int RowWords = WordsPerRow + 4;

    /// <summary>Words of one operand's stage: 128 rows (A) or columns (B).</summary>
    const int StageWords = Tile * RowWords;

    // ---- CPU reference: the operands as the tensor cores see them

    /// <summary>x rounded to the nearest fp16 (ties to even), back in fp32.</summary>
    public static float[] RoundToHalf(float[] x) => x.Select(v => (float)(System.Half)v).ToArray();

    /// <summary>Gemm.Reference with A and B rounded to fp16: what v4 computes, up to the order of fp32 additions.</summary>
    public static float[] Reference(float[] a, float[] b, float[]? bias, float[]? residual, GemmShape s, int cLength) =>
        Gemm.Reference(RoundToHalf(a), RoundToHalf(b), bias, residual, s, cLength);

    /// <summary>
    /// A pinned copy of a host-visible buffer with every value rounded to fp16: how the CPU backend (HostGemm) computes
    /// v4's products — same operands, fp32 sums — at SIMD speed, for accuracy runs without a GPU.
    /// </summary>
    internal static unsafe float[] HalfRoundedCopy(float* source, long length)
    {
        var copy = GC.AllocateUninitializedArray<float>(checked((int)length), pinned: true);
        var from = new ReadOnlySpan<float>(source, copy.Length);
        Parallel.For(0, (copy.Length + 65535) / 65536, chunk =>
        {
            int start = chunk * 65536, end = Math.Min(copy.Length, start + 65536);
            for (int i = start; i < end; i++)
            {
                copy[i] = (float)(System.Half)source[i];
            }
        });
        return copy;
    }

    // ---- GPU kernel

    static void Kernel<TA, TB, TC, TE>(TileShape s, TA a, TB b, TC c, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y)
        where TA : struct, IHalfPairRows
        where TB : struct, IColumnOperand
        where TC : struct, ITileOutput
        where TE : struct, ITileEdges
    {
        // sa[stage][m][k/2] and sb[stage][n][k/2]: both operands k-contiguous in pairs, as mma's row.col fragments want them.
        var sa = SharedMemory.Allocate<uint>(2 * StageWords);
        var sb = SharedMemory.Allocate<uint>(2 * StageWords);
        var exchange = SharedMemory.Allocate<uint>(Threads * ExchangeWords);
        // B's taps of two slices: the one being staged and the next (TileStaging.WriteTaps).
        var taps = SharedMemory.Allocate<Int4>(2 * Slice);
        int tid = Group.IdxX;
        int batch = Grid.IdxZ;
        int m0 = Grid.IdxY * Tile, n0 = Grid.IdxX * Tile;
        // Bit operations for the power-of-two constants: ILGPU sinks these into the loops, where ptxas compiles a signed % of a
        // constant as a full division.
        int lane = tid & 31, g = lane >> 2, t = lane & 3;
        int wm = (tid >> 7) * 64, wn = ((tid >> 5) & 3) * 32;

        // The words (k pairs) this thread stages, r = 0..7: A(m0 + am + r·amStep, k0 + 2(ap + r·apStep) + {0, 1}) and
        // B likewise; B stages along k when its columns are not contiguous.
        var (am, amStep, ap, apStep) = TileStaging.Layout(a.ColumnsContiguous, tid, WordsPerRow, Tile, Threads);
        var (bn, bnStep, bp, bpStep) = TileStaging.Layout(!b.ColumnsContiguous, tid, WordsPerRow, Tile, Threads);

        // Rows and columns outside the matrix read row/column 0 and stage zeros; bit r of a mask: element r is inside.
        int aInside = 0, bInside = 0;
        var ra0 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am, s.M, 0, ref aInside);
        var ra1 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am + amStep, s.M, 1, ref aInside);
        var ra2 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am + 2 * amStep, s.M, 2, ref aInside);
        var ra3 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am + 3 * amStep, s.M, 3, ref aInside);
        var ra4 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am + 4 * amStep, s.M, 4, ref aInside);
        var ra5 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am + 5 * amStep, s.M, 5, ref aInside);
        var ra6 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am + 6 * amStep, s.M, 6, ref aInside);
        var ra7 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am + 7 * amStep, s.M, 7, ref aInside);
        var cb0 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn, s.N, 0, ref bInside);
        var cb1 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn + bnStep, s.N, 1, ref bInside, cb0);
        var cb2 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn + 2 * bnStep, s.N, 2, ref bInside, cb0);
        var cb3 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn + 3 * bnStep, s.N, 3, ref bInside, cb0);
        var cb4 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn + 4 * bnStep, s.N, 4, ref bInside, cb0);
        var cb5 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn + 5 * bnStep, s.N, 5, ref bInside, cb0);
        var cb6 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn + 6 * bnStep, s.N, 6, ref bInside, cb0);
        var cb7 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn + 7 * bnStep, s.N, 7, ref bInside, cb0);
        int sa0 = am * RowWords + ap, saStep = amStep * RowWords + apStep;
        int sb0 = bn * RowWords + bp, sbStep = bnStep * RowWords + bpStep;

        // Prologue: the taps of slices 0 and 1, then slice 0 into stage 0.
        TileStaging.WriteTaps(taps, 0, b, 0, s.K, tid, Slice);
        TileStaging.WriteTaps(taps, Slice, b, Slice, s.K, tid, Slice);
        Group.Barrier();
        // Views at this thread's first staged element and first tap: the staged elements and their taps are then the view
        // plus constants where the operand's layout is known at compile time, which ptxas folds into the accesses.
        var aStaged = sa.SubView(sa0, 2 * StageWords - sa0);
        var bStaged = sb.SubView(sb0, 2 * StageWords - sb0);
        var tapsFirst = taps.SubView(2 * bp, 2 * Slice - 2 * bp);
        int ka = 2 * ap, kb = 2 * bp, jb = 2 * bp;
        // For operands whose slices share one tap (TapsPerSlice) the rows' taps come from the slice's first, not the table.
        var slice0 = TileStaging.SliceTap(b, 0, s.K);
        aStaged[0] = TileStaging.FetchFinishPairA<TA, TE>(a, ra0, TileStaging.Bit(aInside, 0), ka, s.K);
        aStaged[saStep] = TileStaging.FetchFinishPairA<TA, TE>(a, ra1, TileStaging.Bit(aInside, 1), ka + 2 * apStep, s.K);
        aStaged[2 * saStep] = TileStaging.FetchFinishPairA<TA, TE>(a, ra2, TileStaging.Bit(aInside, 2), ka + 4 * apStep, s.K);
        aStaged[3 * saStep] = TileStaging.FetchFinishPairA<TA, TE>(a, ra3, TileStaging.Bit(aInside, 3), ka + 6 * apStep, s.K);
        aStaged[4 * saStep] = TileStaging.FetchFinishPairA<TA, TE>(a, ra4, TileStaging.Bit(aInside, 4), ka + 8 * apStep, s.K);
        aStaged[5 * saStep] = TileStaging.FetchFinishPairA<TA, TE>(a, ra5, TileStaging.Bit(aInside, 5), ka + 10 * apStep, s.K);
        aStaged[6 * saStep] = TileStaging.FetchFinishPairA<TA, TE>(a, ra6, TileStaging.Bit(aInside, 6), ka + 12 * apStep, s.K);
        aStaged[7 * saStep] = TileStaging.FetchFinishPairA<TA, TE>(a, ra7, TileStaging.Bit(aInside, 7), ka + 14 * apStep, s.K);
        bStaged[0] = Pack(
            TileStaging.FetchFinishB<TB, TE>(b, cb0, TileStaging.Bit(bInside, 0), kb, s.K,
                TileStaging.RowTap(b, tapsFirst, 0, slice0, jb)),
            TileStaging.FetchFinishB<TB, TE>(b, cb0, TileStaging.Bit(bInside, 0), kb + 1, s.K,
                TileStaging.RowTap(b, tapsFirst, 1, slice0, jb + 1)));
        bStaged[sbStep] = Pack(
            TileStaging.FetchFinishB<TB, TE>(b, cb1, TileStaging.Bit(bInside, 1), kb + 2 * bpStep, s.K,
                TileStaging.RowTap(b, tapsFirst, 2 * bpStep, slice0, jb + 2 * bpStep)),
            TileStaging.FetchFinishB<TB, TE>(b, cb1, TileStaging.Bit(bInside, 1), kb + 2 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsFirst, 2 * bpStep + 1, slice0, jb + 2 * bpStep + 1)));
        bStaged[2 * sbStep] = Pack(
            TileStaging.FetchFinishB<TB, TE>(b, cb2, TileStaging.Bit(bInside, 2), kb + 4 * bpStep, s.K,
                TileStaging.RowTap(b, tapsFirst, 4 * bpStep, slice0, jb + 4 * bpStep)),
            TileStaging.FetchFinishB<TB, TE>(b, cb2, TileStaging.Bit(bInside, 2), kb + 4 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsFirst, 4 * bpStep + 1, slice0, jb + 4 * bpStep + 1)));
        bStaged[3 * sbStep] = Pack(
            TileStaging.FetchFinishB<TB, TE>(b, cb3, TileStaging.Bit(bInside, 3), kb + 6 * bpStep, s.K,
                TileStaging.RowTap(b, tapsFirst, 6 * bpStep, slice0, jb + 6 * bpStep)),
            TileStaging.FetchFinishB<TB, TE>(b, cb3, TileStaging.Bit(bInside, 3), kb + 6 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsFirst, 6 * bpStep + 1, slice0, jb + 6 * bpStep + 1)));
        bStaged[4 * sbStep] = Pack(
            TileStaging.FetchFinishB<TB, TE>(b, cb4, TileStaging.Bit(bInside, 4), kb + 8 * bpStep, s.K,
                TileStaging.RowTap(b, tapsFirst, 8 * bpStep, slice0, jb + 8 * bpStep)),
            TileStaging.FetchFinishB<TB, TE>(b, cb4, TileStaging.Bit(bInside, 4), kb + 8 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsFirst, 8 * bpStep + 1, slice0, jb + 8 * bpStep + 1)));
        bStaged[5 * sbStep] = Pack(
            TileStaging.FetchFinishB<TB, TE>(b, cb5, TileStaging.Bit(bInside, 5), kb + 10 * bpStep, s.K,
                TileStaging.RowTap(b, tapsFirst, 10 * bpStep, slice0, jb + 10 * bpStep)),
            TileStaging.FetchFinishB<TB, TE>(b, cb5, TileStaging.Bit(bInside, 5), kb + 10 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsFirst, 10 * bpStep + 1, slice0, jb + 10 * bpStep + 1)));
        bStaged[6 * sbStep] = Pack(
            TileStaging.FetchFinishB<TB, TE>(b, cb6, TileStaging.Bit(bInside, 6), kb + 12 * bpStep, s.K,
                TileStaging.RowTap(b, tapsFirst, 12 * bpStep, slice0, jb + 12 * bpStep)),
            TileStaging.FetchFinishB<TB, TE>(b, cb6, TileStaging.Bit(bInside, 6), kb + 12 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsFirst, 12 * bpStep + 1, slice0, jb + 12 * bpStep + 1)));
        bStaged[7 * sbStep] = Pack(
            TileStaging.FetchFinishB<TB, TE>(b, cb7, TileStaging.Bit(bInside, 7), kb + 14 * bpStep, s.K,
                TileStaging.RowTap(b, tapsFirst, 14 * bpStep, slice0, jb + 14 * bpStep)),
            TileStaging.FetchFinishB<TB, TE>(b, cb7, TileStaging.Bit(bInside, 7), kb + 14 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsFirst, 14 * bpStep + 1, slice0, jb + 14 * bpStep + 1)));
        Group.Barrier();

        MmaAccumulator c00 = default, c01 = default, c02 = default, c03 = default;
        MmaAccumulator c10 = default, c11 = default, c12 = default, c13 = default;
        MmaAccumulator c20 = default, c21 = default, c22 = default, c23 = default;
        MmaAccumulator c30 = default, c31 = default, c32 = default, c33 = default;
        int stage = 0, tapNext = Slice;
        for (int k0 = 0; k0 < s.K; k0 += Slice)
        {
            // The next slice's loads go out first, raw; they are packed to fp16 only after this slice's 32 mma per warp.
            // After the last slice they fetch slice 0 again, unused: cheaper than a branch, and in bounds with exact tiles.
            int kNext = TileStaging.NextSlice(k0, Slice, s.K);
            ka = kNext + 2 * ap;
            kb = kNext + 2 * bp;
            var tapsNext = taps.SubView(tapNext + 2 * bp, 2 * Slice - tapNext - 2 * bp);
            var sliceNext = TileStaging.SliceTap(b, kNext, s.K);
            var pa0 = TileStaging.FetchPairA<TA, TE>(a, ra0, TileStaging.Bit(aInside, 0), ka, s.K);
            var pa1 = TileStaging.FetchPairA<TA, TE>(a, ra1, TileStaging.Bit(aInside, 1), ka + 2 * apStep, s.K);
            var pa2 = TileStaging.FetchPairA<TA, TE>(a, ra2, TileStaging.Bit(aInside, 2), ka + 4 * apStep, s.K);
            var pa3 = TileStaging.FetchPairA<TA, TE>(a, ra3, TileStaging.Bit(aInside, 3), ka + 6 * apStep, s.K);
            var pa4 = TileStaging.FetchPairA<TA, TE>(a, ra4, TileStaging.Bit(aInside, 4), ka + 8 * apStep, s.K);
            var pa5 = TileStaging.FetchPairA<TA, TE>(a, ra5, TileStaging.Bit(aInside, 5), ka + 10 * apStep, s.K);
            var pa6 = TileStaging.FetchPairA<TA, TE>(a, ra6, TileStaging.Bit(aInside, 6), ka + 12 * apStep, s.K);
            var pa7 = TileStaging.FetchPairA<TA, TE>(a, ra7, TileStaging.Bit(aInside, 7), ka + 14 * apStep, s.K);
            float pb0l = TileStaging.FetchB<TB, TE>(b, cb0, TileStaging.Bit(bInside, 0), kb, s.K,
                TileStaging.RowTap(b, tapsNext, 0, sliceNext, jb));
            float pb0h = TileStaging.FetchB<TB, TE>(b, cb0, TileStaging.Bit(bInside, 0), kb + 1, s.K,
                TileStaging.RowTap(b, tapsNext, 1, sliceNext, jb + 1));
            float pb1l = TileStaging.FetchB<TB, TE>(b, cb1, TileStaging.Bit(bInside, 1), kb + 2 * bpStep, s.K,
                TileStaging.RowTap(b, tapsNext, 2 * bpStep, sliceNext, jb + 2 * bpStep));
            float pb1h = TileStaging.FetchB<TB, TE>(b, cb1, TileStaging.Bit(bInside, 1), kb + 2 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsNext, 2 * bpStep + 1, sliceNext, jb + 2 * bpStep + 1));
            float pb2l = TileStaging.FetchB<TB, TE>(b, cb2, TileStaging.Bit(bInside, 2), kb + 4 * bpStep, s.K,
                TileStaging.RowTap(b, tapsNext, 4 * bpStep, sliceNext, jb + 4 * bpStep));
            float pb2h = TileStaging.FetchB<TB, TE>(b, cb2, TileStaging.Bit(bInside, 2), kb + 4 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsNext, 4 * bpStep + 1, sliceNext, jb + 4 * bpStep + 1));
            float pb3l = TileStaging.FetchB<TB, TE>(b, cb3, TileStaging.Bit(bInside, 3), kb + 6 * bpStep, s.K,
                TileStaging.RowTap(b, tapsNext, 6 * bpStep, sliceNext, jb + 6 * bpStep));
            float pb3h = TileStaging.FetchB<TB, TE>(b, cb3, TileStaging.Bit(bInside, 3), kb + 6 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsNext, 6 * bpStep + 1, sliceNext, jb + 6 * bpStep + 1));
            float pb4l = TileStaging.FetchB<TB, TE>(b, cb4, TileStaging.Bit(bInside, 4), kb + 8 * bpStep, s.K,
                TileStaging.RowTap(b, tapsNext, 8 * bpStep, sliceNext, jb + 8 * bpStep));
            float pb4h = TileStaging.FetchB<TB, TE>(b, cb4, TileStaging.Bit(bInside, 4), kb + 8 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsNext, 8 * bpStep + 1, sliceNext, jb + 8 * bpStep + 1));
            float pb5l = TileStaging.FetchB<TB, TE>(b, cb5, TileStaging.Bit(bInside, 5), kb + 10 * bpStep, s.K,
                TileStaging.RowTap(b, tapsNext, 10 * bpStep, sliceNext, jb + 10 * bpStep));
            float pb5h = TileStaging.FetchB<TB, TE>(b, cb5, TileStaging.Bit(bInside, 5), kb + 10 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsNext, 10 * bpStep + 1, sliceNext, jb + 10 * bpStep + 1));
            float pb6l = TileStaging.FetchB<TB, TE>(b, cb6, TileStaging.Bit(bInside, 6), kb + 12 * bpStep, s.K,
                TileStaging.RowTap(b, tapsNext, 12 * bpStep, sliceNext, jb + 12 * bpStep));
            float pb6h = TileStaging.FetchB<TB, TE>(b, cb6, TileStaging.Bit(bInside, 6), kb + 12 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsNext, 12 * bpStep + 1, sliceNext, jb + 12 * bpStep + 1));
            float pb7l = TileStaging.FetchB<TB, TE>(b, cb7, TileStaging.Bit(bInside, 7), kb + 14 * bpStep, s.K,
                TileStaging.RowTap(b, tapsNext, 14 * bpStep, sliceNext, jb + 14 * bpStep));
            float pb7h = TileStaging.FetchB<TB, TE>(b, cb7, TileStaging.Bit(bInside, 7), kb + 14 * bpStep + 1, s.K,
                TileStaging.RowTap(b, tapsNext, 14 * bpStep + 1, sliceNext, jb + 14 * bpStep + 1));
            // The slice's two k-steps from one base per operand, written out: every fragment read is then the base plus a
            // constant, which ptxas folds into the load (a loop over the steps recomputed 24 addresses per step).
            var aFragments = sa.SubView(stage + (wm + g) * RowWords + t, StageWords - (wm + g) * RowWords - t);
            var bFragments = sb.SubView(stage + (wn + g) * RowWords + t, StageWords - (wn + g) * RowWords - t);
            MultiplyStep(aFragments, bFragments, 0, exchange, ref c00, ref c01, ref c02, ref c03, ref c10, ref c11, ref c12, ref c13,
                ref c20, ref c21, ref c22, ref c23, ref c30, ref c31, ref c32, ref c33);
            MultiplyStep(aFragments, bFragments, 8, exchange, ref c00, ref c01, ref c02, ref c03, ref c10, ref c11, ref c12, ref c13,
                ref c20, ref c21, ref c22, ref c23, ref c30, ref c31, ref c32, ref c33);
            // The other stage was last read before the previous barrier, so it is free to overwrite.
            stage = StageWords - stage;
            aStaged = sa.SubView(stage + sa0, 2 * StageWords - stage - sa0);
            bStaged = sb.SubView(stage + sb0, 2 * StageWords - stage - sb0);
            aStaged[0] = a.FinishPair(pa0);
            aStaged[saStep] = a.FinishPair(pa1);
            aStaged[2 * saStep] = a.FinishPair(pa2);
            aStaged[3 * saStep] = a.FinishPair(pa3);
            aStaged[4 * saStep] = a.FinishPair(pa4);
            aStaged[5 * saStep] = a.FinishPair(pa5);
            aStaged[6 * saStep] = a.FinishPair(pa6);
            aStaged[7 * saStep] = a.FinishPair(pa7);
            bStaged[0] = Pack(
                TileStaging.FinishB<TB, TE>(b, cb0, TileStaging.Bit(bInside, 0), kb, s.K,
                    TileStaging.RowTap(b, tapsNext, 0, sliceNext, jb), pb0l),
                TileStaging.FinishB<TB, TE>(b, cb0, TileStaging.Bit(bInside, 0), kb + 1, s.K,
                    TileStaging.RowTap(b, tapsNext, 1, sliceNext, jb + 1), pb0h));
            bStaged[sbStep] = Pack(
                TileStaging.FinishB<TB, TE>(b, cb1, TileStaging.Bit(bInside, 1), kb + 2 * bpStep, s.K,
                    TileStaging.RowTap(b, tapsNext, 2 * bpStep, sliceNext, jb + 2 * bpStep), pb1l),
                TileStaging.FinishB<TB, TE>(b, cb1, TileStaging.Bit(bInside, 1), kb + 2 * bpStep + 1, s.K,
                    TileStaging.RowTap(b, tapsNext, 2 * bpStep + 1, sliceNext, jb + 2 * bpStep + 1), pb1h));
            bStaged[2 * sbStep] = Pack(
                TileStaging.FinishB<TB, TE>(b, cb2, TileStaging.Bit(bInside, 2), kb + 4 * bpStep, s.K,
                    TileStaging.RowTap(b, tapsNext, 4 * bpStep, sliceNext, jb + 4 * bpStep), pb2l),
                TileStaging.FinishB<TB, TE>(b, cb2, TileStaging.Bit(bInside, 2), kb + 4 * bpStep + 1, s.K,
                    TileStaging.RowTap(b, tapsNext, 4 * bpStep + 1, sliceNext, jb + 4 * bpStep + 1), pb2h));
            bStaged[3 * sbStep] = Pack(
                TileStaging.FinishB<TB, TE>(b, cb3, TileStaging.Bit(bInside, 3), kb + 6 * bpStep, s.K,
                    TileStaging.RowTap(b, tapsNext, 6 * bpStep, sliceNext, jb + 6 * bpStep), pb3l),
                TileStaging.FinishB<TB, TE>(b, cb3, TileStaging.Bit(bInside, 3), kb + 6 * bpStep + 1, s.K,
                    TileStaging.RowTap(b, tapsNext, 6 * bpStep + 1, sliceNext, jb + 6 * bpStep + 1), pb3h));
            bStaged[4 * sbStep] = Pack(
                TileStaging.FinishB<TB, TE>(b, cb4, TileStaging.Bit(bInside, 4), kb + 8 * bpStep, s.K,
                    TileStaging.RowTap(b, tapsNext, 8 * bpStep, sliceNext, jb + 8 * bpStep), pb4l),
                TileStaging.FinishB<TB, TE>(b, cb4, TileStaging.Bit(bInside, 4), kb + 8 * bpStep + 1, s.K,
                    TileStaging.RowTap(b, tapsNext, 8 * bpStep + 1, sliceNext, jb + 8 * bpStep + 1), pb4h));
            bStaged[5 * sbStep] = Pack(
                TileStaging.FinishB<TB, TE>(b, cb5, TileStaging.Bit(bInside, 5), kb + 10 * bpStep, s.K,
                    TileStaging.RowTap(b, tapsNext, 10 * bpStep, sliceNext, jb + 10 * bpStep), pb5l),
                TileStaging.FinishB<TB, TE>(b, cb5, TileStaging.Bit(bInside, 5), kb + 10 * bpStep + 1, s.K,
                    TileStaging.RowTap(b, tapsNext, 10 * bpStep + 1, sliceNext, jb + 10 * bpStep + 1), pb5h));
            bStaged[6 * sbStep] = Pack(
                TileStaging.FinishB<TB, TE>(b, cb6, TileStaging.Bit(bInside, 6), kb + 12 * bpStep, s.K,
                    TileStaging.RowTap(b, tapsNext, 12 * bpStep, sliceNext, jb + 12 * bpStep), pb6l),
                TileStaging.FinishB<TB, TE>(b, cb6, TileStaging.Bit(bInside, 6), kb + 12 * bpStep + 1, s.K,
                    TileStaging.RowTap(b, tapsNext, 12 * bpStep + 1, sliceNext, jb + 12 * bpStep + 1), pb6h));
            bStaged[7 * sbStep] = Pack(
                TileStaging.FinishB<TB, TE>(b, cb7, TileStaging.Bit(bInside, 7), kb + 14 * bpStep, s.K,
                    TileStaging.RowTap(b, tapsNext, 14 * bpStep, sliceNext, jb + 14 * bpStep), pb7l),
                TileStaging.FinishB<TB, TE>(b, cb7, TileStaging.Bit(bInside, 7), kb + 14 * bpStep + 1, s.K,
                    TileStaging.RowTap(b, tapsNext, 14 * bpStep + 1, sliceNext, jb + 14 * bpStep + 1), pb7h));
            // The taps of the slice after next replace those of this slice, which nobody reads any more.
            tapNext = Slice - tapNext;
            TileStaging.WriteTaps(taps, tapNext, b, k0 + 2 * Slice, s.K, tid, Slice);
            Group.Barrier();
        }
        int i = m0 + wm + g, j = n0 + wn + 2 * t;
        Store(s, c, batch, bias, residual, y, i, j, c00);
        Store(s, c, batch, bias, residual, y, i, j + 8, c01);
        Store(s, c, batch, bias, residual, y, i, j + 16, c02);
        Store(s, c, batch, bias, residual, y, i, j + 24, c03);
        Store(s, c, batch, bias, residual, y, i + 16, j, c10);
        Store(s, c, batch, bias, residual, y, i + 16, j + 8, c11);
        Store(s, c, batch, bias, residual, y, i + 16, j + 16, c12);
        Store(s, c, batch, bias, residual, y, i + 16, j + 24, c13);
        Store(s, c, batch, bias, residual, y, i + 32, j, c20);
        Store(s, c, batch, bias, residual, y, i + 32, j + 8, c21);
        Store(s, c, batch, bias, residual, y, i + 32, j + 16, c22);
        Store(s, c, batch, bias, residual, y, i + 32, j + 24, c23);
        Store(s, c, batch, bias, residual, y, i + 48, j, c30);
        Store(s, c, batch, bias, residual, y, i + 48, j + 8, c31);
        Store(s, c, batch, bias, residual, y, i + 48, j + 16, c32);
        Store(s, c, batch, bias, residual, y, i + 48, j + 24, c33);
    }

    /// <summary>One lane's four results of a 16×8 tile whose (g, 2t) element is C(i, j).</summary>
    static void Store<TC>(TileShape s, TC c, int batch, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y, int i, int j,
        MmaAccumulator acc) where TC : struct, ITileOutput
    {
        if (i < s.M)
        {
            TiledGemm.Store(s, c, batch, bias, residual, y, i, j, acc.C0);
            TiledGemm.Store(s, c, batch, bias, residual, y, i, j + 1, acc.C1);
        }
        if (i + 8 < s.M)
        {
            TiledGemm.Store(s, c, batch, bias, residual, y, i + 8, j, acc.C2);
            TiledGemm.Store(s, c, batch, bias, residual, y, i + 8, j + 1, acc.C3);
        }
    }

    // ---- launcher

    /// <summary>Launches over ceil(N/128) × ceil(M/128) × batches groups of 256 threads (8 warps of 32); A in fp32.</summary>
    public static void Run<TA, TB, TC>(ComputeDevice dev, TileShape s, int batches, TA a, TB b, TC c, ArrayView<float> bias,
        ArrayView<float> residual, ArrayView<float> y)
        where TA : struct, IRowOperand
        where TB : struct, IColumnOperand
        where TC : struct, ITileOutput =>
        RunPairs(dev, s, batches, new RoundedPairs<TA>(a), b, c, bias, residual, y);

    /// <summary>As <see cref="Run"/>, with A read as fp16 pairs (HalfRowsOperand: weights held in fp16).</summary>
    public static void RunPairs<TA, TB, TC>(ComputeDevice dev, TileShape s, int batches, TA a, TB b, TC c,
        ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y)
        where TA : struct, IHalfPairRows
        where TB : struct, IColumnOperand
        where TC : struct, ITileOutput
    {
        if (dev.Accelerator.WarpSize != 32 || dev.Accelerator.MaxNumThreadsPerGroup < Threads)
        {
            throw new NotSupportedException($"the tensor-core kernel needs 32-lane warps and {Threads}-thread groups; this accelerator " +
                                            $"has {dev.Accelerator.WarpSize} and {dev.Accelerator.MaxNumThreadsPerGroup}");
        }
        TiledGemm.Launch(dev, Kernel<TA, TB, TC, ExactTiles>, Kernel<TA, TB, TC, CheckedEdges>, Slice, s, batches, a, b, c, bias,
            residual, y);
    }
}
