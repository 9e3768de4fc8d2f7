// Conv2d's backward launches behind BackwardInput and BackwardWeights (Conv2d.cs, beside Forward): v1/v2, the implicit
// GEMMs of v3/v4 with their weight copy and K splits, the sums of split partials and the bias gradient. The header of
// Conv2d.cs lists every version; the kernels are in Conv2dBackwardKernels.cs, the tiled operands in ConvGradOperands.cs.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class Conv2d
{
    // ---- launcher

    /// <summary>Least K (output pixels) a split of the tiled weight gradient sums: its tiles' prologue and stores amortised.</summary>
    const int MinSplitPixels = 256;

    static void LaunchBackwardInputV1V2(ComputeDevice dev, ConvShape s, bool registers, ArrayView<float> dy, ArrayView<float> w,
        ArrayView<float> dx, bool accumulate)
    {
        var kernel = registers
            ? (Action<Index1D, int, ConvShape, int, ArrayView<float>, ArrayView<float>, ArrayView<float>>)BackwardInputV2
            : BackwardInputV1;
        var k = dev.Kernel(kernel, a => a.LoadAutoGroupedStreamKernel(kernel));
        long items = registers ? (long)s.N * ((s.Cin + 3) / 4) * s.H * s.Stride * (((s.W + s.Stride - 1) / s.Stride + 3) / 4)
            : (long)s.N * s.Cin * s.H * s.W;
        int threads = dev.StrideThreads(items);
        k(threads, threads, s, accumulate ? 1 : 0, dy, w, dx);
    }

    static void LaunchBackwardWeightsV1(ComputeDevice dev, ConvShape s, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dw)
    {
        var k = dev.Kernel(BackwardWeightsV1, a => a.LoadAutoGroupedStreamKernel<Index1D, int, ConvShape, ArrayView<float>,
            ArrayView<float>, ArrayView<float>>(BackwardWeightsV1));
        int threads = dev.StrideThreads((long)s.Cout * s.Cin * s.K * s.K);
        k(threads, threads, s, x, dy, dw);
    }

    /// <summary>
    /// v2 of dw over splits of <paramref name="splitRows"/> output rows (0: on CUDA as many splits as fill the device's
    /// threads, on the CPU accelerator one).
    /// </summary>
    static void LaunchBackwardWeightsV2(ComputeDevice dev, ConvShape s, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dw,
        int splitRows)
    {
        int rows = s.N * s.Ho;
        long items = (long)((s.Cout + 3) / 4) * ((s.Cin + 3) / 4) * s.K * s.K;
        if (splitRows <= 0)
        {
            long splitsWanted = dev.IsCpu ? 1 : (dev.StrideThreads(long.MaxValue) + items - 1) / items;
            splitRows = (int)((rows + Math.Min(splitsWanted, rows) - 1) / Math.Min(splitsWanted, rows));
        }
        int splits = (rows + splitRows - 1) / splitRows;
        int length = s.Cout * s.Cin * s.K * s.K;
        using var partials = splits > 1 ? dev.Allocate(splits, length) : null;
        var k = dev.Kernel(BackwardWeightsV2, a => a.LoadAutoGroupedStreamKernel<Index1D, int, ConvShape, int, int, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardWeightsV2));
        int threads = dev.StrideThreads(items * splits);
        k(threads, threads, s, splitRows, splits, x, dy, dw, partials?.View ?? dw.SubView(0, 0));
        if (partials is not null)
        {
            SumPartials(dev, partials.View, splits, length, dw);
        }
    }

    /// <summary>target += Σ over <paramref name="parts"/> consecutive blocks of <paramref name="length"/> partials, in order.</summary>
    static void SumPartials(ComputeDevice dev, ArrayView<float> partials, int parts, int length, ArrayView<float> target)
    {
        var k = dev.Kernel(SumPartialsKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>>(SumPartialsKernel));
        int threads = dev.StrideThreads(length);
        k(threads, threads, length, parts, partials, target);
    }

    /// <summary>
    /// db += Σ dy per channel, one group per channel: BiasThreads threads on CUDA; 4 on the CPU accelerator, whose groups
    /// are OS threads meeting at every barrier (256 cost seconds a call) — enough to run the tree.
    /// </summary>
    static void BiasGradient(ComputeDevice dev, ConvShape s, ArrayView<float> dy, ArrayView<float> db)
    {
        int threads = 1;
        while (threads * 2 <= Math.Min(dev.IsCpu ? 4 : BiasThreads, dev.Accelerator.MaxNumThreadsPerGroup))
        {
            threads *= 2;
        }
        var k = dev.Kernel(BiasGradientKernel, a => a.LoadStreamKernel<ConvShape, ArrayView<float>, ArrayView<float>>(BiasGradientKernel));
        k(new KernelConfig(new Index1D(s.Cout), new Index1D(threads)), s, dy, db);
    }

    /// <summary>
    /// dx (+)= conv_transpose(dy, w) as one implicit GEMM (v3, v4): M = Cin, N = N·H·W, K = Cout·k², A the weights copied
    /// transposed (flipped at stride 1, where B is the forward's im2col of dy; fp16 pairs for v4, tap-major when Cout is a
    /// multiple of its slice), B ConvTransposeOperand at stride 2. Accumulating reads dx as the residual.
    /// </summary>
    static void BackwardInputTiled(ComputeDevice dev, MatmulKernel kernel, ConvShape s, ArrayView<float> dy, ArrayView<float> w,
        ArrayView<float> dx, bool accumulate)
    {
        bool tensorCores = kernel == MatmulKernel.TensorCoreFp16;
        int columns = s.Cout * s.K * s.K;
        int flip = s.Stride == 1 ? 1 : 0;
        int tapMajor = flip == 1 && tensorCores && s.Cout % TensorCoreGemm.Slice == 0 ? 1 : 0;
        var tile = new TileShape { M = s.Cin, N = s.N * s.H * s.W, K = columns, HasResidual = accumulate ? 1 : 0, Alpha = 1f };
        // dx's layout as a convolution's output (Cin channels of H·W pixels), and dy as the input of the flipped convolution.
        var output = new ConvOutput(new ConvShape { Cout = s.Cin, Ho = s.H, Wo = s.W });
        var flipped = ConvShape.Create(s.N, s.Cout, s.Ho, s.Wo, s.Cin, s.K, 1, s.Pad);
        var empty = dx.SubView(0, 0);
        var residual = accumulate ? dx : empty;
        int threads = dev.StrideThreads((long)s.Cin * columns);
        if (tensorCores)
        {
            int rowWords = (columns + 1) / 2;
            using var packed = dev.Allocate(s.Cin * rowWords);
            var words = packed.View.Cast<uint>();
            var pack = dev.Kernel(TransposeWeightsHalfKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, ConvShape, int, int,
                ArrayView<float>, ArrayView<uint>>(TransposeWeightsHalfKernel));
            pack(threads, threads, s, flip, tapMajor, w, words);
            var rows = new HalfRowsOperand(words, rowWords);
            if (flip == 0)
            {
                TensorCoreGemm.RunPairs(dev, tile, 1, rows, new ConvTransposeOperand(dy, s), output, empty, residual, dx);
            }
            else if (tapMajor == 1)
            {
                TensorCoreGemm.RunPairs(dev, tile, 1, rows, new TapMajorIm2ColOperand(dy, flipped), output, empty, residual, dx);
            }
            else
            {
                TensorCoreGemm.RunPairs(dev, tile, 1, rows, new Im2ColOperand(dy, flipped), output, empty, residual, dx);
            }
            return;
        }
        using var transposed = dev.Allocate(s.Cin, columns);
        var copy = dev.Kernel(TransposeWeightsKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, ConvShape, int, int,
            ArrayView<float>, ArrayView<float>>(TransposeWeightsKernel));
        copy(threads, threads, s, flip, 0, w, transposed.View);
        var dense = new DenseRowsOperand(transposed.View, columns);
        if (flip == 0)
        {
            TiledGemm.Run(dev, tile, 1, dense, new ConvTransposeOperand(dy, s), output, empty, residual, dx);
        }
        else
        {
            TiledGemm.Run(dev, tile, 1, dense, new Im2ColOperand(dy, flipped), output, empty, residual, dx);
        }
    }

    /// <summary>
    /// The K splits of the tiled weight gradient: blocks of Rows output rows (a divisor of Ho, at most
    /// <paramref name="splitRows"/> when given), each row read 2^WidthShift ≥ Wo wide. By default one split per image on the
    /// CPU accelerator; on CUDA enough splits for about two blocks per SM, each at least MinSplitPixels deep.
    /// </summary>
    static WeightGradSplit TiledSplit(ComputeDevice dev, ConvShape s, int splitRows)
    {
        int shift = 0;
        while (1 << shift < s.Wo)
        {
            shift++;
        }
        int limit = splitRows;
        if (limit <= 0 && dev.IsCpu)
        {
            limit = s.Ho;
        }
        else if (limit <= 0)
        {
            int tiles = (s.Cout + TiledGemm.Tile - 1) / TiledGemm.Tile * ((s.Cin * s.K * s.K + TiledGemm.Tile - 1) / TiledGemm.Tile);
            int wanted = (2 * dev.Accelerator.NumMultiprocessors + tiles - 1) / tiles;
            int perImage = (wanted + s.N - 1) / s.N;
            limit = Math.Max((s.Ho + perImage - 1) / perImage, (MinSplitPixels + (1 << shift) - 1) >> shift);
        }
        int rows = Math.Min(limit, s.Ho);
        while (s.Ho % rows != 0)
        {
            rows--;
        }
        return new WeightGradSplit { Rows = rows, PerImage = s.Ho / rows, WidthShift = shift };
    }

    /// <summary>
    /// dw += Σ dy ⊗ im2col(x) as implicit GEMMs (v3, v4): M = Cout, N = Cin·k², one launch batch per K split (TiledSplit).
    /// One split adds into dw through the residual; several write partials, summed into dw in order.
    /// </summary>
    static void BackwardWeightsTiled(ComputeDevice dev, MatmulKernel kernel, ConvShape s, ArrayView<float> x, ArrayView<float> dy,
        ArrayView<float> dw, int splitRows)
    {
        var split = TiledSplit(dev, s, splitRows);
        int splits = s.N * split.PerImage;
        int columns = s.Cin * s.K * s.K, length = s.Cout * columns;
        var tile = new TileShape { M = s.Cout, N = columns, K = split.K, HasResidual = splits == 1 ? 1 : 0, Alpha = 1f };
        var layout = GemmShape.RowMajor(s.Cout, columns, split.K);
        layout.CBatch0 = length;
        var output = new StridedOutput(layout);
        var a = new PixelRowsOperand(dy, s, split);
        var b = new PixelIm2ColOperand(x, s, split);
        using var partials = splits > 1 ? dev.Allocate(splits, length) : null;
        var target = partials?.View ?? dw;
        var empty = dw.SubView(0, 0);
        var residual = splits == 1 ? dw : empty;
        if (kernel == MatmulKernel.TensorCoreFp16)
        {
            TensorCoreGemm.Run(dev, tile, splits, a, b, output, empty, residual, target);
        }
        else
        {
            TiledGemm.Run(dev, tile, splits, a, b, output, empty, residual, target);
        }
        if (partials is not null)
        {
            SumPartials(dev, partials.View, splits, length, dw);
        }
    }
}
