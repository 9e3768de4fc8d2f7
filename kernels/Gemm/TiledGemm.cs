// TiledGemm — v3 of Gemm and Conv2d for GPUs: one explicitly grouped kernel, generic over how its operands are read.
//   C(i, j) = act(α·Σ_k A(i, k)·B(k, j) + bias + R) per batch, with A and B given as struct operands (TileOperands.cs):
//     StridedOperand            a strided (batched) matrix — every Gemm;
//     Im2ColOperand             a convolution's input read as its im2col matrix on the fly (implicit GEMM: K = Cin·k²,
//                               N = N·Ho·Wo); NormalizedIm2ColOperand the same with GroupNorm and SiLU applied
//                               (Im2ColOperands.cs).
//   Block tile 128×128, 256 threads each accumulating an 8×8 sub-tile in registers (Accumulator8x8: rows ty·4+{0..3}
//   and 64+ty·4+{0..3}, columns likewise). K runs in slices of 8, double-buffered in shared memory (2 operands × 2
//   stages × 8 × 132 floats = 16.5 KB, plus B's taps of two slices): while a thread computes on one stage, the next
//   slice's global loads (4 of A, 4 of B per thread) are in flight in registers, and it stores them into the other stage
//   afterwards — one barrier per slice, global latency hidden behind 512 FMAs.
//   Per k a thread reads its 8 A and 8 B values as four float4 shared loads (64 FMAs per 4 loads): A's two addresses per
//   warp broadcast, B's 16 consecutive float4s are conflict-free. Shared rows are 132 floats, so the stores of a warp
//   staging along k (8 k × 4 rows) hit 32 distinct banks and rows stay 16-byte aligned. k-steps go in pairs from one
//   base, so the reads' addresses are constants ptxas folds into the loads.
//   Staging follows each operand's contiguous dimension, so a warp's global reads coalesce; rows, columns and taps are
//   resolved once per launch or slice (TileOperands.cs), so a fetch costs an add or two. Launches whose tiles end at the
//   matrix's edges run an instance compiled without edge tests (ExactTiles).
//   sm_90 SASS (benchmarks/results/sass-static-sm90.md): an im2col convolution slice is 691 instructions, 74% FFMA, at
//   128 registers (exact tiles).
// Not yet the CUDA default: it waits for a GPU to measure it against v2 (see benchmarks/IlgpuDiffSeg.Benchmarks gpu).
// Tested against the references on the CPU accelerator with a warp-32 shape (256-thread groups).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Util;

namespace IlgpuDiffSeg.Kernels;

/// <summary>One thread's 8×8 outputs of the tiled kernel: rows a0..a7, columns b0..b7 (fields, so they stay in registers).</summary>
public struct Accumulator8x8
{
    public float C00, C01, C02, C03, C04, C05, C06, C07;
    public float C10, C11, C12, C13, C14, C15, C16, C17;
    public float C20, C21, C22, C23, C24, C25, C26, C27;
    public float C30, C31, C32, C33, C34, C35, C36, C37;
    public float C40, C41, C42, C43, C44, C45, C46, C47;
    public float C50, C51, C52, C53, C54, C55, C56, C57;
    public float C60, C61, C62, C63, C64, C65, C66, C67;
    public float C70, C71, C72, C73, C74, C75, C76, C77;

    /// <summary>One k-step: the outer product of a thread's 8 A values (two float4) and 8 B values.</summary>
    public void Add(Float4 aLo, Float4 aHi, Float4 bLo, Float4 bHi)
    {
        float a0 = aLo.X, a1 = aLo.Y, a2 = aLo.Z, a3 = aLo.W, a4 = aHi.X, a5 = aHi.Y, a6 = aHi.Z, a7 = aHi.W;
        float b0 = bLo.X, b1 = bLo.Y, b2 = bLo.Z, b3 = bLo.W, b4 = bHi.X, b5 = bHi.Y, b6 = bHi.Z, b7 = bHi.W;
        C00 += a0 * b0;
        C01 += a0 * b1;
        C02 += a0 * b2;
        C03 += a0 * b3;
        C04 += a0 * b4;
        C05 += a0 * b5;
        C06 += a0 * b6;
        C07 += a0 * b7;

        C10 += a1 * b0;
        C11 += a1 * b1;
        C12 += a1 * b2;
        C13 += a1 * b3;
        C14 += a1 * b4;
        C15 += a1 * b5;
        C16 += a1 * b6;
        C17 += a1 * b7;

        C20 += a2 * b0;
        C21 += a2 * b1;
        C22 += a2 * b2;
        C23 += a2 * b3;
        C24 += a2 * b4;
        C25 += a2 * b5;
        C26 += a2 * b6;
        C27 += a2 * b7;

        C30 += a3 * b0;
        C31 += a3 * b1;
        C32 += a3 * b2;
        C33 += a3 * b3;
        C34 += a3 * b4;
        C35 += a3 * b5;
        C36 += a3 * b6;
        C37 += a3 * b7;

        C40 += a4 * b0;
        C41 += a4 * b1;
        C42 += a4 * b2;
        C43 += a4 * b3;
        C44 += a4 * b4;
        C45 += a4 * b5;
        C46 += a4 * b6;
        C47 += a4 * b7;

        C50 += a5 * b0;
        C51 += a5 * b1;
        C52 += a5 * b2;
        C53 += a5 * b3;
        C54 += a5 * b4;
        C55 += a5 * b5;
        C56 += a5 * b6;
        C57 += a5 * b7;

        C60 += a6 * b0;
        C61 += a6 * b1;
        C62 += a6 * b2;
        C63 += a6 * b3;
        C64 += a6 * b4;
        C65 += a6 * b5;
        C66 += a6 * b6;
        C67 += a6 * b7;

        C70 += a7 * b0;
        C71 += a7 * b1;
        C72 += a7 * b2;
        C73 += a7 * b3;
        C74 += a7 * b4;
        C75 += a7 * b5;
        C76 += a7 * b6;
        C77 += a7 * b7;
    }
}

public static class TiledGemm
{
    public const int Tile = 128, Slice = 8, Threads = 256;

    /// <summary>Floats per shared row (one k of a slice): the tile plus 4 of padding, a multiple of 4 for float4 reads.</summary>
    const int RowFloats = Tile + 4;

    /// <summary>Floats of one operand's stage: a slice of Slice rows.</summary>
    const int StageFloats = Slice * RowFloats;

    static void Kernel<TA, TB, TC, TE>(TileShape s, TA a, TB b, TC c, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y)
        where TA : struct, IRowOperand
        where TB : struct, IColumnOperand
        where TC : struct, ITileOutput
        where TE : struct, ITileEdges
    {
        // sa[stage][k][m] and sb[stage][k][n]; float4 views for the compute loop's reads.
        var sa4 = SharedMemory.Allocate<Float4>(2 * StageFloats / 4);
        var sb4 = SharedMemory.Allocate<Float4>(2 * StageFloats / 4);
        var sa = sa4.Cast<float>();
        var sb = sb4.Cast<float>();
        // B's taps of two slices: the one being staged and the next (TileStaging.WriteTaps).
        var taps = SharedMemory.Allocate<Int4>(2 * Slice);
        int tid = Group.IdxX;
        int batch = Grid.IdxZ;
        int m0 = Grid.IdxY * Tile, n0 = Grid.IdxX * Tile;
        // Bit operations for the power-of-two constants: ILGPU sinks these into the loops, where ptxas compiles a signed % of a
        // constant as a full division.
        int tx = tid & 15, ty = tid >> 4;

        // The elements this thread stages, r = 0..3: A(m0 + am + r·amStep, k0 + ak + r·akStep), B(k0 + bk + r·bkStep,
        // n0 + bn + r·bnStep); B stages along k when its columns are not contiguous.
        var (am, amStep, ak, akStep) = TileStaging.Layout(a.ColumnsContiguous, tid, Slice, Tile, Threads);
        var (bn, bnStep, bk, bkStep) = TileStaging.Layout(!b.ColumnsContiguous, tid, Slice, Tile, Threads);

        // Rows and columns outside the matrix read row/column 0 and stage zeros.
        int aInside = 0, bInside = 0;
        var ra0 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am, s.M, 0, ref aInside);
        var ra1 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am + amStep, s.M, 1, ref aInside);
        var ra2 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am + 2 * amStep, s.M, 2, ref aInside);
        var ra3 = TileStaging.RowCursor<TA, TE>(a, batch, m0 + am + 3 * amStep, s.M, 3, ref aInside);
        var cb0 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn, s.N, 0, ref bInside);
        var cb1 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn + bnStep, s.N, 1, ref bInside, cb0);
        var cb2 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn + 2 * bnStep, s.N, 2, ref bInside, cb0);
        var cb3 = TileStaging.ColumnCursor<TB, TE>(b, batch, n0 + bn + 3 * bnStep, s.N, 3, ref bInside, cb0);
        // Shared offsets of the four staged elements within a stage.
        int sa0 = ak * RowFloats + am, saStep = akStep * RowFloats + amStep;
        int sb0 = bk * RowFloats + bn, sbStep = bkStep * RowFloats + bnStep;

        // Prologue: the taps of slices 0 and 1, then slice 0 into stage 0.
        TileStaging.WriteTaps(taps, 0, b, 0, s.K, tid, Slice);
        TileStaging.WriteTaps(taps, Slice, b, Slice, s.K, tid, Slice);
        Group.Barrier();
        // Views at this thread's first staged element and first tap: the staged elements and their taps are then the view
        // plus constants where the operand's layout is known at compile time, which ptxas folds into the accesses.
        var aStaged = sa.SubView(sa0, 2 * StageFloats - sa0);
        var bStaged = sb.SubView(sb0, 2 * StageFloats - sb0);
        var tapsFirst = taps.SubView(bk, 2 * Slice - bk);
        int ka = ak, kb = bk;
        // For operands whose slices share one tap (TapsPerSlice) the rows' taps come from the slice's first, not the table.
        var slice0 = TileStaging.SliceTap(b, 0, s.K);
        aStaged[0] = TileStaging.FetchA<TA, TE>(a, ra0, TileStaging.Bit(aInside, 0), ka, s.K);
        aStaged[saStep] = TileStaging.FetchA<TA, TE>(a, ra1, TileStaging.Bit(aInside, 1), ka + akStep, s.K);
        aStaged[2 * saStep] = TileStaging.FetchA<TA, TE>(a, ra2, TileStaging.Bit(aInside, 2), ka + 2 * akStep, s.K);
        aStaged[3 * saStep] = TileStaging.FetchA<TA, TE>(a, ra3, TileStaging.Bit(aInside, 3), ka + 3 * akStep, s.K);
        bStaged[0] = TileStaging.FetchFinishB<TB, TE>(b, cb0, TileStaging.Bit(bInside, 0), kb, s.K,
            TileStaging.RowTap(b, tapsFirst, 0, slice0, bk));
        bStaged[sbStep] = TileStaging.FetchFinishB<TB, TE>(b, cb1, TileStaging.Bit(bInside, 1), kb + bkStep, s.K,
            TileStaging.RowTap(b, tapsFirst, bkStep, slice0, bk + bkStep));
        bStaged[2 * sbStep] = TileStaging.FetchFinishB<TB, TE>(b, cb2, TileStaging.Bit(bInside, 2), kb + 2 * bkStep, s.K,
            TileStaging.RowTap(b, tapsFirst, 2 * bkStep, slice0, bk + 2 * bkStep));
        bStaged[3 * sbStep] = TileStaging.FetchFinishB<TB, TE>(b, cb3, TileStaging.Bit(bInside, 3), kb + 3 * bkStep, s.K,
            TileStaging.RowTap(b, tapsFirst, 3 * bkStep, slice0, bk + 3 * bkStep));
        Group.Barrier();

        var acc = default(Accumulator8x8);
        int stage = 0, tapNext = Slice;
        for (int k0 = 0; k0 < s.K; k0 += Slice)
        {
            // The next slice's loads go out first; their values are needed only after this slice's 512 FMAs.
            // After the last slice they fetch slice 0 again, unused: cheaper than a branch, and in bounds with exact tiles.
            int kNext = TileStaging.NextSlice(k0, Slice, s.K);
            ka = kNext + ak;
            kb = kNext + bk;
            var tapsNext = taps.SubView(tapNext + bk, 2 * Slice - tapNext - bk);
            var sliceNext = TileStaging.SliceTap(b, kNext, s.K);
            float pa0 = TileStaging.FetchA<TA, TE>(a, ra0, TileStaging.Bit(aInside, 0), ka, s.K);
            float pa1 = TileStaging.FetchA<TA, TE>(a, ra1, TileStaging.Bit(aInside, 1), ka + akStep, s.K);
            float pa2 = TileStaging.FetchA<TA, TE>(a, ra2, TileStaging.Bit(aInside, 2), ka + 2 * akStep, s.K);
            float pa3 = TileStaging.FetchA<TA, TE>(a, ra3, TileStaging.Bit(aInside, 3), ka + 3 * akStep, s.K);
            float pb0 = TileStaging.FetchB<TB, TE>(b, cb0, TileStaging.Bit(bInside, 0), kb, s.K,
                TileStaging.RowTap(b, tapsNext, 0, sliceNext, bk));
            float pb1 = TileStaging.FetchB<TB, TE>(b, cb1, TileStaging.Bit(bInside, 1), kb + bkStep, s.K,
                TileStaging.RowTap(b, tapsNext, bkStep, sliceNext, bk + bkStep));
            float pb2 = TileStaging.FetchB<TB, TE>(b, cb2, TileStaging.Bit(bInside, 2), kb + 2 * bkStep, s.K,
                TileStaging.RowTap(b, tapsNext, 2 * bkStep, sliceNext, bk + 2 * bkStep));
            float pb3 = TileStaging.FetchB<TB, TE>(b, cb3, TileStaging.Bit(bInside, 3), kb + 3 * bkStep, s.K,
                TileStaging.RowTap(b, tapsNext, 3 * bkStep, sliceNext, bk + 3 * bkStep));
            // Two k-steps per iteration from one base per operand: their float4 reads are the base plus constants, which
            // ptxas folds into the loads. (All eight written out let ptxas hoist every read, at 240-255 registers.)
            for (int k = 0; k < Slice; k += 2)
            {
                var aRows = sa4.SubView(((stage + k * RowFloats) >> 2) + ty, (StageFloats - k * RowFloats) / 4 - ty);
                var bCols = sb4.SubView(((stage + k * RowFloats) >> 2) + tx, (StageFloats - k * RowFloats) / 4 - tx);
                acc.Add(aRows[0], aRows[16], bCols[0], bCols[16]);
                acc.Add(aRows[RowFloats / 4], aRows[RowFloats / 4 + 16], bCols[RowFloats / 4], bCols[RowFloats / 4 + 16]);
            }
            // The other stage was last read before the previous barrier, so it is free to overwrite.
            stage = StageFloats - stage;
            aStaged = sa.SubView(stage + sa0, 2 * StageFloats - stage - sa0);
            bStaged = sb.SubView(stage + sb0, 2 * StageFloats - stage - sb0);
            aStaged[0] = pa0;
            aStaged[saStep] = pa1;
            aStaged[2 * saStep] = pa2;
            aStaged[3 * saStep] = pa3;
            bStaged[0] = TileStaging.FinishB<TB, TE>(b, cb0, TileStaging.Bit(bInside, 0), kb, s.K,
                TileStaging.RowTap(b, tapsNext, 0, sliceNext, bk), pb0);
            bStaged[sbStep] = TileStaging.FinishB<TB, TE>(b, cb1, TileStaging.Bit(bInside, 1), kb + bkStep, s.K,
                TileStaging.RowTap(b, tapsNext, bkStep, sliceNext, bk + bkStep), pb1);
            bStaged[2 * sbStep] = TileStaging.FinishB<TB, TE>(b, cb2, TileStaging.Bit(bInside, 2), kb + 2 * bkStep, s.K,
                TileStaging.RowTap(b, tapsNext, 2 * bkStep, sliceNext, bk + 2 * bkStep), pb2);
            bStaged[3 * sbStep] = TileStaging.FinishB<TB, TE>(b, cb3, TileStaging.Bit(bInside, 3), kb + 3 * bkStep, s.K,
                TileStaging.RowTap(b, tapsNext, 3 * bkStep, sliceNext, bk + 3 * bkStep), pb3);
            // The taps of the slice after next replace those of this slice, which nobody reads any more.
            tapNext = Slice - tapNext;
            TileStaging.WriteTaps(taps, tapNext, b, k0 + 2 * Slice, s.K, tid, Slice);
            Group.Barrier();
        }
        int i0 = m0 + ty * 4, i1 = m0 + 64 + ty * 4, j0 = n0 + tx * 4, j1 = n0 + 64 + tx * 4;
        Row(s, c, batch, bias, residual, y, i0, j0, j1, acc.C00, acc.C01, acc.C02, acc.C03, acc.C04, acc.C05, acc.C06, acc.C07);
        Row(s, c, batch, bias, residual, y, i0 + 1, j0, j1, acc.C10, acc.C11, acc.C12, acc.C13, acc.C14, acc.C15, acc.C16, acc.C17);
        Row(s, c, batch, bias, residual, y, i0 + 2, j0, j1, acc.C20, acc.C21, acc.C22, acc.C23, acc.C24, acc.C25, acc.C26, acc.C27);
        Row(s, c, batch, bias, residual, y, i0 + 3, j0, j1, acc.C30, acc.C31, acc.C32, acc.C33, acc.C34, acc.C35, acc.C36, acc.C37);
        Row(s, c, batch, bias, residual, y, i1, j0, j1, acc.C40, acc.C41, acc.C42, acc.C43, acc.C44, acc.C45, acc.C46, acc.C47);
        Row(s, c, batch, bias, residual, y, i1 + 1, j0, j1, acc.C50, acc.C51, acc.C52, acc.C53, acc.C54, acc.C55, acc.C56, acc.C57);
        Row(s, c, batch, bias, residual, y, i1 + 2, j0, j1, acc.C60, acc.C61, acc.C62, acc.C63, acc.C64, acc.C65, acc.C66, acc.C67);
        Row(s, c, batch, bias, residual, y, i1 + 3, j0, j1, acc.C70, acc.C71, acc.C72, acc.C73, acc.C74, acc.C75, acc.C76, acc.C77);
    }

    static void Row<TC>(TileShape s, TC c, int batch, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y, int i, int j0,
        int j1, float v0, float v1, float v2, float v3, float v4, float v5, float v6, float v7) where TC : struct, ITileOutput
    {
        if (i >= s.M)
        {
            return;
        }
        Store(s, c, batch, bias, residual, y, i, j0, v0);
        Store(s, c, batch, bias, residual, y, i, j0 + 1, v1);
        Store(s, c, batch, bias, residual, y, i, j0 + 2, v2);
        Store(s, c, batch, bias, residual, y, i, j0 + 3, v3);
        Store(s, c, batch, bias, residual, y, i, j1, v4);
        Store(s, c, batch, bias, residual, y, i, j1 + 1, v5);
        Store(s, c, batch, bias, residual, y, i, j1 + 2, v6);
        Store(s, c, batch, bias, residual, y, i, j1 + 3, v7);
    }

    internal static void Store<TC>(TileShape s, TC c, int batch, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y,
        int i, int j, float acc) where TC : struct, ITileOutput
    {
        if (j >= s.N)
        {
            return;
        }
        int o = c.Offset(batch, i, j);
        float v = s.Alpha * acc;
        if (s.HasBias != 0)
        {
            v += bias[c.BiasIndex(batch, i, j)];
        }
        if (s.HasResidual != 0)
        {
            v += residual[o];
        }
        y[o] = s.Act == (int)Activation.Relu ? XMath.Max(v, 0f) : v;
    }

    /// <summary>Launches the tiled kernel over ceil(N/128) × ceil(M/128) × batches groups of 256 threads.</summary>
    public static void Run<TA, TB, TC>(ComputeDevice dev, TileShape s, int batches, TA a, TB b, TC c, ArrayView<float> bias,
        ArrayView<float> residual, ArrayView<float> y)
        where TA : struct, IRowOperand
        where TB : struct, IColumnOperand
        where TC : struct, ITileOutput
    {
        if (dev.Accelerator.MaxNumThreadsPerGroup < Threads)
        {
            throw new NotSupportedException($"the tiled kernel needs {Threads}-thread groups; this accelerator allows " +
                                            $"{dev.Accelerator.MaxNumThreadsPerGroup}");
        }
        Launch(dev, Kernel<TA, TB, TC, ExactTiles>, Kernel<TA, TB, TC, CheckedEdges>, Slice, s, batches, a, b, c, bias, residual, y);
    }

    /// <summary>
    /// One tiled kernel over ceil(N/128) × ceil(M/128) × batches groups of 256 threads (shared with TensorCoreGemm): the
    /// exact-tile instance when M and N are multiples of the tile and K of <paramref name="slice"/>, else the checked one.
    /// </summary>
    internal static void Launch<TA, TB, TC>(ComputeDevice dev,
        Action<TileShape, TA, TB, TC, ArrayView<float>, ArrayView<float>, ArrayView<float>> exact,
        Action<TileShape, TA, TB, TC, ArrayView<float>, ArrayView<float>, ArrayView<float>> edgeChecked, int slice, TileShape s,
        int batches, TA a, TB b, TC c, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y)
        where TA : struct, IRowCursors
        where TB : struct, IColumnOperand
        where TC : struct, ITileOutput
    {
        bool isExact = s.M % Tile == 0 && s.N % Tile == 0 && s.K % slice == 0;
        var kernel = isExact ? exact : edgeChecked;
        var k = dev.Kernel(kernel, acc => acc.LoadStreamKernel(kernel));
        var grid = new Index3D((s.N + Tile - 1) / Tile, (s.M + Tile - 1) / Tile, batches);
        k(new KernelConfig(grid, new Index3D(Threads, 1, 1)), s, a, b, c, bias, residual, y);
    }
}
