// Conv2d — 2-D convolution on NCHW fp32, square odd kernel (1×1, 3×3), stride 1 or 2, zero padding,
// optional bias, optional residual added to the output (ResBlock: skip(x) + out_conv(h)); and its backward.
// Forward (Conv2dKernels.cs, Conv2d.cs):
//   v1  one output element per grid-stride step, plain reduction over Cin·k·k. The shape of the reference.
//   v2  register tile of 4 output channels × 4 output columns per step: each input value loaded once feeds
//       4 channels and each weight feeds 4 columns (8 loads per 16 FMAs instead of 32). Default on CUDA.
//   v3  implicit GEMM through TiledGemm (weights × im2col read on the fly), for GPUs.
//   v4  the same on tensor cores through TensorCoreGemm (fp16 operands, fp32 sums).
//   host  HostConv on the host's SIMD units: per task the input rows it reads (normalized when fused) in a scratch,
//         im2col panels packed from it, an AVX-512 8×32 (AVX2 6×16) micro-kernel with the weights read in place.
// ForwardNormalized: v3/v4 reading GroupNorm(+scale-shift)(+SiLU) of x on the fly (NormalizedIm2ColOperand); host the same
// (HostNorm), and BackwardWeightsNormalized recomputes it there for the weight gradient.
// Backward (Conv2dBackward.cs, Conv2dBackwardKernels.cs, ConvGradOperands.cs, HostBackend.Conv2dBackward*):
//   BackwardInput   dx (+)= conv_transpose(dy, w): dx[n,ci,iy,ix] = Σ_{co,ky,kx} w[co,ci,ky,kx]·dy[n,co,oy,ox] over the
//                   taps with iy = oy·s − pad + ky (integer oy, ox in range).
//     v1  one dx element per grid-stride step.
//     v2  4 input channels × 4 columns of one phase (ix ≡ r mod s) per step: the 4 columns of a phase read 4 consecutive
//         dy columns through the same taps, so every tap is one parity test, 4 dy and 4 weight loads for 16 FMAs.
//     v3/v4  implicit GEMM, M = Cin, N = N·H·W, K = Cout·k², A = the weights transposed (a copy; fp16 pairs for v4):
//         stride 1: B is im2col(dy) with the kernel flipped — the forward's Im2ColOperand (tap-major on v4 when Cout
//         is a multiple of its slice); stride 2: ConvTransposeOperand, whose taps with no integer source read 0 —
//         3/4 of K on average for k = 3, the price of one launch (ADM strides only in its downsampling convs).
//     host  stride 1: HostConv's forward of dy with wᵀ flipped; stride 2: HostGemm wᵀ·dy into a column buffer, then
//           col2im, one task per input channel (deterministic).
//   BackwardWeights dw += Σ_{n,oy,ox} dy ⊗ im2col(x), db += Σ dy — both accumulate (gradients sum over microbatches).
//     v1  one dw element per grid-stride step.
//     v2  4 output × 4 input channels of one tap per step (8 loads, 16 FMAs); on CUDA the N·Ho rows split so that
//         the device fills up, partial sums added in a fixed order.
//     v3/v4  implicit GEMM, M = Cout, N = Cin·k², K = pixels: dy rows (PixelRowsOperand) × im2col(x)ᵀ
//         (PixelIm2ColOperand), split over (image, block of output rows) as the launch's batches into partials
//         summed in a fixed order — M·N alone is a handful of 128×128 tiles.
//     host  dot products of dy rows with the input's shifted rows (HostConv.Weights.cs), a task per block of input
//           channels (deterministic).
//     db  one group per channel, strided sums and a shared-memory tree (deterministic), or on the host.
//   fp16 kernels (v4, HostSimdFp16): both products' operands rounded to fp16 (nearest-even; past 65504 → ±inf, which
//   fp16 loss scaling detects), summed in fp32; db sums dy in fp32.
//
// x, dx: (N, Cin, H, W); w, dw: (Cout, Cin, k, k); b, db: (Cout); y, dy, residual: (N, Cout, Ho, Wo),
// Ho = (H + 2·pad − k)/stride + 1. FLOPs = 2·N·Cout·Ho·Wo·Cin·k² for each of forward, dx and dw → compute-bound for
// Cin ≥ 32; db reads dy once.
// Measured (Stopwatch, best of 7, 2 shared cores under varying load, 4 runs): 64→64 3×3 at 64², batch 4 (1.21 GFLOP
// each) on the host backend: forward 39–80 ms, dx 35–44 ms, dw + db 23–41 ms — each pass 0.5–0.9× the forward in the same
// run; v2 on the CPU accelerator 1.3–2.2 s each. Not yet timed on a GPU.
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Util;

namespace IlgpuDiffSeg.Kernels;

public static partial class Conv2d
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

    /// <summary>
    /// The gradient of <see cref="Reference"/> with respect to x for output gradient dy, plus <paramref name="dxInit"/> when
    /// given: plain loops over the taps that reach each input element, double accumulation.
    /// </summary>
    public static float[] BackwardInputReference(float[] dy, float[] w, ConvShape s, float[]? dxInit = null)
    {
        var dx = new float[s.N * s.Cin * s.H * s.W];
        for (int n = 0; n < s.N; n++)
        for (int ci = 0; ci < s.Cin; ci++)
        for (int iy = 0; iy < s.H; iy++)
        for (int ix = 0; ix < s.W; ix++)
        {
            int i = ((n * s.Cin + ci) * s.H + iy) * s.W + ix;
            double acc = dxInit is null ? 0 : dxInit[i];
            for (int co = 0; co < s.Cout; co++)
            for (int ky = 0; ky < s.K; ky++)
            for (int kx = 0; kx < s.K; kx++)
            {
                int ty = iy + s.Pad - ky, tx = ix + s.Pad - kx;
                if (ty < 0 || tx < 0 || ty % s.Stride != 0 || tx % s.Stride != 0 || ty / s.Stride >= s.Ho || tx / s.Stride >= s.Wo)
                {
                    continue;
                }
                acc += (double)w[((co * s.Cin + ci) * s.K + ky) * s.K + kx] *
                       dy[((n * s.Cout + co) * s.Ho + ty / s.Stride) * s.Wo + tx / s.Stride];
            }
            dx[i] = (float)acc;
        }
        return dx;
    }

    /// <summary>
    /// The gradients of <see cref="Reference"/> with respect to w and b for output gradient dy, plus
    /// <paramref name="dwInit"/> and <paramref name="dbInit"/> when given; double accumulation.
    /// </summary>
    public static (float[] Dw, float[] Db) BackwardWeightsReference(float[] x, float[] dy, ConvShape s, float[]? dwInit = null,
        float[]? dbInit = null)
    {
        var dw = new float[s.Cout * s.Cin * s.K * s.K];
        var db = new float[s.Cout];
        for (int co = 0; co < s.Cout; co++)
        {
            double bias = dbInit is null ? 0 : dbInit[co];
            for (int n = 0; n < s.N; n++)
            for (int p = 0; p < s.Ho * s.Wo; p++)
            {
                bias += dy[(n * s.Cout + co) * s.Ho * s.Wo + p];
            }
            db[co] = (float)bias;
            for (int ci = 0; ci < s.Cin; ci++)
            for (int ky = 0; ky < s.K; ky++)
            for (int kx = 0; kx < s.K; kx++)
            {
                int i = ((co * s.Cin + ci) * s.K + ky) * s.K + kx;
                double acc = dwInit is null ? 0 : dwInit[i];
                for (int n = 0; n < s.N; n++)
                for (int oy = 0; oy < s.Ho; oy++)
                for (int ox = 0; ox < s.Wo; ox++)
                {
                    int iy = oy * s.Stride - s.Pad + ky, ix = ox * s.Stride - s.Pad + kx;
                    if (iy >= 0 && iy < s.H && ix >= 0 && ix < s.W)
                    {
                        acc += (double)dy[((n * s.Cout + co) * s.Ho + oy) * s.Wo + ox] * x[((n * s.Cin + ci) * s.H + iy) * s.W + ix];
                    }
                }
                dw[i] = (float)acc;
            }
        }
        return (dw, db);
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

    /// <summary>The geometry of a backward pass from the input's (or its gradient's) shape, the weights' and dy's, checked.</summary>
    static ConvShape BackwardShape(string what, Tensor input, int[] weight, Tensor dy, int stride)
    {
        if (input.Rank != 4 || weight.Length != 4 || weight[2] != weight[3] || weight[2] % 2 == 0 || weight[1] != input[1])
        {
            throw new ArgumentException($"conv2d {what}: input {input.ShapeString} does not fit weight ({string.Join(", ", weight)})");
        }
        if (stride is not (1 or 2))
        {
            throw new ArgumentException($"conv2d {what}: stride {stride}; the backward supports 1 and 2");
        }
        var s = ConvShape.Create(input[0], input[1], input[2], input[3], weight[0], weight[2], stride, weight[2] / 2);
        if (dy.Rank != 4 || dy[0] != s.N || dy[1] != s.Cout || dy[2] != s.Ho || dy[3] != s.Wo)
        {
            throw new ArgumentException($"conv2d {what}: output gradient {dy.ShapeString} should be ({s.N}, {s.Cout}, {s.Ho}, {s.Wo})");
        }
        return s;
    }

    /// <summary>
    /// y = conv(act(GN(x)), w) + b (+ residual) in one implicit-GEMM launch (v3 or v4) or on the host: the input is normalized
    /// while it is read, from <paramref name="coefficients"/> = GroupNorm.Coefficients(x, ...), with SiLU when
    /// <paramref name="silu"/>.
    /// </summary>
    public static void ForwardNormalized(Tensor x, Tensor coefficients, bool silu, ConvWeights w, Tensor? bias, Tensor y, int stride,
        Tensor? residual, MatmulKernel kernel)
    {
        var s = Shape(x, w, bias, y, stride, residual);
        if (coefficients.Length != 4L * s.N * s.Cin)
        {
            throw new ArgumentException($"conv2d: norm coefficients {coefficients.ShapeString} should be ({s.N}, {s.Cin}, 4)");
        }
        if (kernel.IsHost())
        {
            HostBackend.Conv2d(x.Device, s, x.View, w.Float32For(kernel).View, bias?.View, residual?.View, y.View,
                kernel.RoundsOperandsToHalf(), coefficients.View, silu);
            return;
        }
        if (!kernel.IsTiled())
        {
            throw new NotSupportedException($"conv2d: the norm is fused only into the tiled and host kernels, not {kernel.Label()}");
        }
        var norm = coefficients.View.Cast<Float4>();
        int act = silu ? 1 : 0;
        RunTiled(kernel, s, w, bias, residual, y, new NormalizedIm2ColOperand(x.View, norm, s, act),
            new TapMajorNormalizedIm2ColOperand(x.View, norm, s, act));
    }

    /// <summary>y = conv(x, w) + b (+ residual) with <paramref name="kernel"/>. Shapes are checked; padding is k/2 ("same" at
    /// stride 1).</summary>
    public static void Forward(Tensor x, ConvWeights weight, Tensor? bias, Tensor y, int stride = 1, Tensor? residual = null,
        MatmulKernel kernel = MatmulKernel.Registers)
    {
        var dev = x.Device;
        var s = Shape(x, weight, bias, y, stride, residual);
        var empty = y.View.SubView(0, 0);
        switch (kernel)
        {
            case MatmulKernel.Tiled or MatmulKernel.TensorCoreFp16:
                RunTiled(kernel, s, weight, bias, residual, y, new Im2ColOperand(x.View, s), new TapMajorIm2ColOperand(x.View, s));
                break;
            case MatmulKernel.HostSimd or MatmulKernel.HostSimdFp16:
                HostBackend.Conv2d(dev, s, x.View, weight.Float32For(kernel).View, bias?.View, residual?.View, y.View,
                    roundToHalf: kernel.RoundsOperandsToHalf());
                break;
            case MatmulKernel.Direct:
            {
                var k = dev.Kernel(KernelV1, a => a.LoadAutoGroupedStreamKernel<Index1D, int, ConvShape, ArrayView<float>,
                    ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(KernelV1));
                int threads = dev.StrideThreads((long)s.N * s.Cout * s.Ho * s.Wo);
                k(threads, threads, s, x.View, weight.Float32For(kernel).View, bias?.View ?? empty, residual?.View ?? empty, y.View);
                break;
            }
            default:
            {
                var k = dev.Kernel(KernelV2, a => a.LoadAutoGroupedStreamKernel<Index1D, int, ConvShape, ArrayView<float>,
                    ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(KernelV2));
                int threads = dev.StrideThreads((long)s.N * ((s.Cout + 3) / 4) * s.Ho * ((s.Wo + 3) / 4));
                k(threads, threads, s, x.View, weight.Float32For(kernel).View, bias?.View ?? empty, residual?.View ?? empty, y.View);
                break;
            }
        }
    }

    /// <summary>
    /// dx = conv_transpose(dy, w), or dx += it when <paramref name="accumulate"/>: the gradient of Forward with respect to
    /// its input. dx (N, Cin, H, W) gives the input size, which dy (N, Cout, Ho, Wo) leaves open at stride 2. Reads w's fp32
    /// tensor; the fp16 kernels round both operands to fp16.
    /// </summary>
    public static void BackwardInput(Tensor dy, ConvWeights w, Tensor dx, int stride, MatmulKernel kernel, bool accumulate = false)
    {
        var dev = dx.Device;
        var s = BackwardShape("input gradient", dx, w.Shape, dy, stride);
        var weights = w.Float32For(kernel).View;
        switch (kernel)
        {
            case MatmulKernel.Tiled or MatmulKernel.TensorCoreFp16:
                BackwardInputTiled(dev, kernel, s, dy.View, weights, dx.View, accumulate);
                break;
            case MatmulKernel.HostSimd or MatmulKernel.HostSimdFp16:
                HostBackend.Conv2dBackwardInput(dev, s, dy.View, weights, dx.View, accumulate, roundToHalf: kernel.RoundsOperandsToHalf());
                break;
            default:
                LaunchBackwardInputV1V2(dev, s, kernel != MatmulKernel.Direct, dy.View, weights, dx.View, accumulate);
                break;
        }
    }

    /// <summary>
    /// dw += Σ dy ⊗ im2col(x) and, when <paramref name="db"/> is given, db += Σ dy: the gradients of Forward with respect to
    /// its weights and bias, added to what dw and db hold (gradients sum over microbatches). x (N, Cin, H, W), dy (N, Cout,
    /// Ho, Wo), dw (Cout, Cin, k, k), db (Cout). The fp16 kernels round dy and x to fp16 for dw; db sums dy in fp32.
    /// </summary>
    public static void BackwardWeights(Tensor x, Tensor dy, Tensor dw, Tensor? db, int stride, MatmulKernel kernel) =>
        BackwardWeights(x, dy, dw, db, stride, kernel, splitRows: 0);

    /// <summary>
    /// <see cref="BackwardWeights(Tensor, Tensor, Tensor, Tensor?, int, MatmulKernel)"/> of a convolution that read act(GN(x))
    /// (ForwardNormalized), recomputing the normalized input from <paramref name="coefficients"/> as it reads x: the host
    /// kernels only.
    /// </summary>
    public static void BackwardWeightsNormalized(Tensor x, Tensor coefficients, bool silu, Tensor dy, Tensor dw, Tensor? db, int stride,
        MatmulKernel kernel)
    {
        var s = BackwardShape("weight gradient", x, dw.Shape, dy, stride);
        if (coefficients.Length != 4L * s.N * s.Cin || (db is not null && (db.Rank != 1 || db[0] != s.Cout)))
        {
            throw new ArgumentException($"conv2d weight gradient: norm coefficients {coefficients.ShapeString} should be ({s.N}, " +
                                        $"{s.Cin}, 4), bias gradient {db?.ShapeString ?? "none"} ({s.Cout})");
        }
        if (!kernel.IsHost())
        {
            throw new NotSupportedException($"conv2d: the weight gradient reads a normalized input only on the host, not {kernel.Label()}");
        }
        HostBackend.Conv2dBackwardWeights(x.Device, s, x.View, dy.View, dw.View, db?.View, kernel.RoundsOperandsToHalf(), coefficients.View,
            silu);
    }

    /// <summary>
    /// BackwardWeights with the output rows per K split of v2–v4, otherwise chosen from the device (0) — for the tests,
    /// which run the multi-split paths on the CPU.
    /// </summary>
    internal static void BackwardWeights(Tensor x, Tensor dy, Tensor dw, Tensor? db, int stride, MatmulKernel kernel, int splitRows)
    {
        var dev = x.Device;
        var s = BackwardShape("weight gradient", x, dw.Shape, dy, stride);
        if (db is not null && (db.Rank != 1 || db[0] != s.Cout))
        {
            throw new ArgumentException($"conv2d weight gradient: bias gradient {db.ShapeString} should be ({s.Cout})");
        }
        switch (kernel)
        {
            case MatmulKernel.HostSimd or MatmulKernel.HostSimdFp16:
                HostBackend.Conv2dBackwardWeights(dev, s, x.View, dy.View, dw.View, db?.View, roundToHalf: kernel.RoundsOperandsToHalf());
                return;
            case MatmulKernel.Tiled or MatmulKernel.TensorCoreFp16:
                BackwardWeightsTiled(dev, kernel, s, x.View, dy.View, dw.View, splitRows);
                break;
            case MatmulKernel.Direct:
                LaunchBackwardWeightsV1(dev, s, x.View, dy.View, dw.View);
                break;
            default:
                LaunchBackwardWeightsV2(dev, s, x.View, dy.View, dw.View, splitRows);
                break;
        }
        if (db is not null)
        {
            BiasGradient(dev, s, dy.View, db.View);
        }
    }

    /// <summary>
    /// The implicit GEMM of v3/v4: weights (Cout × Cin·k²) times the im2col of the input, read on the fly. v4 reads the
    /// weights' fp16 rows where they are held (tap-major rows with the tap-major im2col, whose K slices share one tap);
    /// otherwise it rounds fp32 weights as it stages them.
    /// </summary>
    static void RunTiled<TB, TTapMajor>(MatmulKernel kernel, ConvShape s, ConvWeights w, Tensor? bias, Tensor? residual, Tensor y,
        TB im2col, TTapMajor tapMajorIm2col)
        where TB : struct, IColumnOperand
        where TTapMajor : struct, IColumnOperand
    {
        var dev = y.Device;
        var empty = y.View.SubView(0, 0);
        var biasView = bias?.View ?? empty;
        var residualView = residual?.View ?? empty;
        int kk = s.Cin * s.K * s.K;
        var tile = new TileShape
        {
            M = s.Cout, N = s.N * s.Ho * s.Wo, K = kk, HasBias = s.HasBias, HasResidual = s.HasResidual, Alpha = 1f,
        };
        var output = new ConvOutput(s);
        if (kernel == MatmulKernel.TensorCoreFp16 && w.Half is { } half)
        {
            var rows = new HalfRowsOperand(half.View, half.RowWords);
            if (half.TapMajor)
            {
                TensorCoreGemm.RunPairs(dev, tile, 1, rows, tapMajorIm2col, output, biasView, residualView, y.View);
            }
            else
            {
                TensorCoreGemm.RunPairs(dev, tile, 1, rows, im2col, output, biasView, residualView, y.View);
            }
            return;
        }
        var weights = new DenseRowsOperand(w.Float32For(kernel).View, kk);
        if (kernel == MatmulKernel.TensorCoreFp16)
        {
            TensorCoreGemm.Run(dev, tile, 1, weights, im2col, output, biasView, residualView, y.View);
        }
        else
        {
            TiledGemm.Run(dev, tile, 1, weights, im2col, output, biasView, residualView, y.View);
        }
    }
}
