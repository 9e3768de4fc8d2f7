// HostConv — the CPU backend's convolutions (NCHW fp32, odd square kernel, zero padding k/2, any stride), GroupNorm
// (+scale-shift, +SiLU) optionally applied to the input as it is read: the host's counterpart of the tiled kernels'
// NormalizedIm2ColOperand, so a normalized activation is never written to memory, in the forward and in the
// backward's recomputation alike.
//   Forward   y = W·im2col(act(norm(x))) + b (+ residual): a task per (image, block of output rows[, block of output
//             channels when images × row blocks are too few to fill the cores]). K runs in blocks of whole input
//             channels (≤ 512 taps): for each, the task writes the input rows the block reads — normalized, zero-padded
//             to W + 2·pad, fp16-rounded for the fp16 kernel — into a per-thread scratch, packs im2col panels of NR
//             output pixels from it (a row segment per tap: vector copies), and runs the micro-kernel
//             (HostMicroKernels.Gemm) over MR output channels × NR pixels with the weights read in place (row stride
//             Cin·k²: never packed). Scratch and panels (≤ 512 KB) stay in L2 while every MR rows of weights pass over
//             them (the LSUN model's 256-channel rows at 256², filled whole, were 792 KB: 6% of its forward in Fill).
//             C starts as bias + residual and the products add to it.
//   Backward input, stride 1: dx = conv(dy, W') with W'[ci, co, t] = W[co, ci, k² − 1 − t] (transposed, kernel
//             flipped, built per call): the forward's engine, dx as the residual when accumulating. No col2im.
//   Backward weights: HostConv.Weights.cs.
// Every output element is summed by one task in a fixed order: the same bits whatever the number of cores or the
// scheduling.
// FLOPs 2·N·Cout·Ho·Wo·Cin·k²; per 16-float vector of a packed panel, MR FMAs per MR rows of weights (Cout of them), so
// packing (2 memory operations per vector) costs ~5% of the FMAs at Cout = 32.
using System.Numerics;
using System.Runtime.Intrinsics;

namespace IlgpuDiffSeg.Kernels;

/// <summary>GroupNorm applied while a convolution reads its input: (mean, a, b, 0) per (n, c) as GroupNorm.Coefficients
/// writes them, and SiLU after it when <see cref="Silu"/>.</summary>
readonly unsafe struct HostNorm(float* coefficients, bool silu)
{
    public readonly float* Coefficients = coefficients;
    public readonly bool Silu = silu;

    public bool Applies => Coefficients != null;
}

static unsafe partial class HostConv
{
    /// <summary>Output pixels a forward task aims at: 8 panels of 32 (AVX-512) — the panels of one K block stay in L2.</summary>
    const int TaskPixels = 256;

    /// <summary>The largest K block: with TaskPixels, 512 KB of packed panels.</summary>
    const int MaxKc = 512;

    [ThreadStatic] static float[]? sourceScratch;
    [ThreadStatic] static float[]? panelScratch;

    /// <summary>A pinned per-thread buffer of at least <paramref name="length"/> floats (grown, never shrunk).</summary>
    internal static float[] Scratch(ref float[]? buffer, long length)
    {
        if (buffer is null || buffer.Length < length)
        {
            buffer = GC.AllocateUninitializedArray<float>(checked((int)length), pinned: true);
        }
        return buffer;
    }

    /// <summary>
    /// y = W·im2col(act(norm(x))) + bias (+ residual); bias, residual may be null, residual may be y itself (then y is added
    /// to). <paramref name="w"/> is (Cout, Cin·k²) row-major; <paramref name="roundToHalf"/> rounds the input (after the
    /// norm) to fp16, the weights being rounded by the caller.
    /// </summary>
    public static void Forward(ConvShape s, float* x, float* w, float* bias, float* residual, float* y, HostNorm norm, bool roundToHalf)
    {
        int rowsPerTask = Math.Clamp(TaskPixels / s.Wo, 1, s.Ho);
        int rowBlocks = (s.Ho + rowsPerTask - 1) / rowsPerTask;
        int mPanels = (s.Cout + HostMicroKernels.MR - 1) / HostMicroKernels.MR;
        long spatialTasks = (long)s.N * rowBlocks;
        int mSplits = (int)Math.Clamp((4L * HostMath.Cores + spatialTasks - 1) / spatialTasks, 1, mPanels);
        int panelsPerSplit = (mPanels + mSplits - 1) / mSplits;
        mSplits = (mPanels + panelsPerSplit - 1) / panelsPerSplit;
        bool direct = s.K == 1 && s.Stride == 1 && !norm.Applies && !roundToHalf;
        var taps = new Source(s, 0, rowsPerTask, direct).TapOffsets(BlockChannels(s));
        fixed (int* tapOffsets = taps)
        {
            var job = new ForwardJob
            {
                S = s, X = x, W = w, Bias = bias, Residual = residual, Y = y, Norm = norm, RoundToHalf = roundToHalf,
                RowsPerTask = rowsPerTask, RowBlocks = rowBlocks, MSplits = mSplits, PanelsPerSplit = panelsPerSplit, Taps = tapOffsets,
                Direct = direct, BlockChannels = BlockChannels(s),
            };
            HostMath.ForEach((int)(spatialTasks * mSplits), 1, t => ForwardTask(job, t));
        }
    }

    struct ForwardJob
    {
        public ConvShape S;
        public float* X, W, Bias, Residual, Y;
        public HostNorm Norm;
        public bool RoundToHalf, Direct;
        public int RowsPerTask, RowBlocks, MSplits, PanelsPerSplit, BlockChannels;
        public int* Taps;
    }

    static void ForwardTask(ForwardJob j, int t)
    {
        var s = j.S;
        int mr = HostMicroKernels.MR, nr = HostMicroKernels.NR;
        int split = t % j.MSplits, rb = t / j.MSplits % j.RowBlocks, n = t / (j.MSplits * j.RowBlocks);
        int oy0 = rb * j.RowsPerTask, oy1 = Math.Min(s.Ho, oy0 + j.RowsPerTask);
        int m0 = split * j.PanelsPerSplit * mr, m1 = Math.Min(s.Cout, m0 + j.PanelsPerSplit * mr);
        int pixels = s.Ho * s.Wo, p0 = oy0 * s.Wo, count = (oy1 - oy0) * s.Wo;
        int k = s.Cin * s.K * s.K, panels = (count + nr - 1) / nr;
        float* c = j.Y + (long)n * s.Cout * pixels + p0;
        float* residual = j.Residual == null ? null : j.Residual + (long)n * s.Cout * pixels + p0;
        InitializeOutput(c, residual, j.Bias, m0, m1, count, pixels);
        var src = new Source(s, oy0, j.RowsPerTask, j.Direct);
        float* image = j.X + (long)n * s.Cin * s.H * s.W;
        float* coefficients = j.Norm.Applies ? j.Norm.Coefficients + 4L * n * s.Cin : null;
        int kk = s.K * s.K, blockChannels = j.BlockChannels;
        fixed (float* buffer = Scratch(ref sourceScratch, j.Direct ? 0 : blockChannels * src.Plane))
        fixed (float* packed = Scratch(ref panelScratch, (long)blockChannels * kk * panels * nr))
        {
            // K runs in blocks of whole input channels: the scratch holds one block's rows (the L2 keeps them while the
            // block's panels are packed), and the tap offsets are the same in every block.
            for (int c0 = 0; c0 < s.Cin; c0 += blockChannels)
            {
                int channels = Math.Min(blockChannels, s.Cin - c0), k0 = c0 * kk, kc = channels * kk;
                // A plain 1×1 convolution packs straight from x: its rows need no padding, and a copy would cost more than
                // its 2·Cout flops per value.
                float* scratch = j.Direct ? image + c0 * src.Plane + (long)oy0 * s.W : buffer;
                if (!j.Direct)
                {
                    src.Fill(scratch, image, c0, channels, coefficients, j.Norm.Silu, j.RoundToHalf);
                }
                for (int pi = 0; pi < panels; pi++)
                {
                    src.Pack(scratch, j.Taps, kc, p0 + pi * nr, Math.Min(nr, count - pi * nr), packed + (long)pi * kc * nr);
                }
                for (int m = m0; m < m1; m += mr)
                {
                    for (int pi = 0; pi < panels; pi++)
                    {
                        float* a = j.W + (long)m * k + k0;
                        float* tile = c + (long)m * pixels + pi * nr;
                        int rows = Math.Min(mr, m1 - m), cols = Math.Min(nr, count - pi * nr);
                        if (rows == mr && cols == nr)
                        {
                            HostMicroKernels.Gemm(kc, a, k, packed + (long)pi * kc * nr, tile, pixels);
                        }
                        else
                        {
                            EdgeTile(kc, a, k, rows, cols, packed + (long)pi * kc * nr, tile, pixels);
                        }
                    }
                }
            }
        }
    }

    /// <summary>Input channels per K block: blocks of ≤ MaxKc taps, as even as whole channels allow.</summary>
    static int BlockChannels(ConvShape s)
    {
        int kk = s.K * s.K, most = Math.Max(1, MaxKc / kk), blocks = (s.Cin + most - 1) / most;
        return (s.Cin + blocks - 1) / blocks;
    }

    /// <summary>The micro-kernel on a partial tile: A's missing rows read as zeros, C's missing rows and columns dropped.</summary>
    static void EdgeTile(int kc, float* a, long lda, int rows, int cols, float* b, float* c, long ldc)
    {
        int mr = HostMicroKernels.MR, nr = HostMicroKernels.NR;
        float* tile = stackalloc float[mr * nr];
        float* rowsA = stackalloc float[mr * kc];
        new Span<float>(tile, mr * nr).Clear();
        new Span<float>(rowsA, mr * kc).Clear();
        for (int r = 0; r < rows; r++)
        {
            Buffer.MemoryCopy(a + r * lda, rowsA + r * kc, kc * sizeof(float), kc * sizeof(float));
            Buffer.MemoryCopy(c + r * ldc, tile + r * nr, cols * sizeof(float), cols * sizeof(float));
        }
        HostMicroKernels.Gemm(kc, rowsA, kc, b, tile, nr);
        for (int r = 0; r < rows; r++)
        {
            Buffer.MemoryCopy(tile + r * nr, c + r * ldc, cols * sizeof(float), cols * sizeof(float));
        }
    }

    /// <summary>C rows [m0, m1) of a task's pixels start as bias + residual (either may be absent; residual may be C).</summary>
    static void InitializeOutput(float* c, float* residual, float* bias, int m0, int m1, int count, int ldc)
    {
        for (int m = m0; m < m1; m++)
        {
            float* row = c + (long)m * ldc;
            float* res = residual == null ? null : residual + (long)m * ldc;
            var b = new Vector<float>(bias == null ? 0f : bias[m]);
            int i = 0;
            for (; i + Vector<float>.Count <= count; i += Vector<float>.Count)
            {
                Vector.Store(res == null ? b : b + Vector.Load(res + i), row + i);
            }
            for (; i < count; i++)
            {
                row[i] = b[0] + (res == null ? 0f : res[i]);
            }
        }
    }

    /// <summary>dx (+)= conv_transpose(dy, w) at stride 1: the forward of dy with w transposed and its kernel flipped.</summary>
    public static void BackwardInput(ConvShape s, float* dy, float* w, float* dx, bool accumulate, bool roundToHalf)
    {
        int kk = s.K * s.K;
        var flipped = GC.AllocateUninitializedArray<float>(s.Cin * s.Cout * kk, pinned: true);
        fixed (float* wt = flipped)
        {
            for (int ci = 0; ci < s.Cin; ci++)
            {
                for (int co = 0; co < s.Cout; co++)
                {
                    for (int t = 0; t < kk; t++)
                    {
                        wt[((long)ci * s.Cout + co) * kk + t] = w[((long)co * s.Cin + ci) * kk + kk - 1 - t];
                    }
                }
            }
            var transposed = ConvShape.Create(s.N, s.Cout, s.Ho, s.Wo, s.Cin, s.K, 1, s.Pad);
            Forward(transposed, dy, wt, null, accumulate ? dx : null, dx, default, roundToHalf);
        }
    }

    /// <summary>
    /// The input rows a block of output rows (rowsPerTask of them from oy0, fewer in the image's last block; the planes
    /// keep their size) reads, as written to a task's scratch: channel-major planes of <see cref="Rows"/> rows
    /// of W + 2·pad, zero where the convolution pads or past the image.
    /// </summary>
    readonly struct Source
    {
        readonly ConvShape s;
        readonly int oy0, iy0;

        /// <summary><paramref name="direct"/>: the rows are x's own (a 1×1 convolution at stride 1 without norm), planes
        /// H·W apart.</summary>
        public Source(ConvShape shape, int firstRow, int rowsPerTask, bool direct)
        {
            s = shape;
            oy0 = firstRow;
            iy0 = firstRow * s.Stride - s.Pad;
            Rows = (rowsPerTask - 1) * s.Stride + s.K;
            RowLength = s.W + 2 * s.Pad;
            Plane = direct ? (long)s.H * s.W : (long)Rows * RowLength;
        }

        public int Rows { get; }
        public int RowLength { get; }
        public long Plane { get; }

        /// <summary>Writes the rows of channels [c0, c0 + channels) of image <paramref name="x"/> to planes 0, 1, …:
        /// normalized (coefficients of the image's channels, or none), padded.</summary>
        public void Fill(float* dst, float* x, int c0, int channels, float* coefficients, bool silu, bool roundToHalf)
        {
            for (int ci = c0; ci < c0 + channels; ci++)
            {
                for (int r = 0; r < Rows; r++)
                {
                    float* row = dst + (ci - c0) * Plane + (long)r * RowLength;
                    int iy = iy0 + r;
                    if (iy < 0 || iy >= s.H)
                    {
                        new Span<float>(row, RowLength).Clear();
                        continue;
                    }
                    new Span<float>(row, s.Pad).Clear();
                    new Span<float>(row + s.Pad + s.W, s.Pad).Clear();
                    float* from = x + ((long)ci * s.H + iy) * s.W;
                    if (coefficients != null)
                    {
                        float* q = coefficients + 4L * ci;
                        HostBackend.NormalizeRun(from, row + s.Pad, s.W, q[0], q[1], q[2], silu);
                    }
                    else
                    {
                        Buffer.MemoryCopy(from, row + s.Pad, s.W * sizeof(float), s.W * sizeof(float));
                    }
                    if (roundToHalf)
                    {
                        for (int i = 0; i < s.W; i++)
                        {
                            row[s.Pad + i] = (float)(Half)row[s.Pad + i];
                        }
                    }
                }
            }
        }

        /// <summary>Where tap k = (ci, ky, kx) of im2col starts in the scratch, relative to its output pixel's first value:
        /// ci·plane + ky·row + kx. Every task's scratch has the same row length, and planes of the first task's size.</summary>
        public int[] TapOffsets(int channels)
        {
            var offsets = GC.AllocateUninitializedArray<int>(channels * s.K * s.K, pinned: true);
            for (int k = 0; k < offsets.Length; k++)
            {
                int ci = k / (s.K * s.K), ky = k / s.K % s.K, kx = k % s.K;
                offsets[k] = checked((int)(ci * Plane + ky * RowLength + kx));
            }
            return offsets;
        }

        /// <summary>
        /// One packed panel: kc rows of im2col (the taps of a block of channels, <paramref name="taps"/> = TapOffsets()) at
        /// output pixels
        /// p .. p + cols, NR floats a row, zero past cols. A full panel within one output row at stride 1 — the common case —
        /// is one vector copy per row.
        /// </summary>
        public void Pack(float* scratch, int* taps, int kc, int p, int cols, float* panel)
        {
            int nr = HostMicroKernels.NR;
            int oy = p / s.Wo, ox = p % s.Wo;
            if (s.Stride == 1 && cols == nr && ox + nr <= s.Wo)
            {
                float* from = scratch + (long)(oy - oy0) * RowLength + ox;
                if (nr == 32)
                {
                    for (int kr = 0; kr < kc; kr++, panel += 32)
                    {
                        float* src = from + taps[kr];
                        Vector512.Store(Vector512.Load(src), panel);
                        Vector512.Store(Vector512.Load(src + 16), panel + 16);
                    }
                    return;
                }
                for (int kr = 0; kr < kc; kr++, panel += nr)
                {
                    Copy(from + taps[kr], panel, nr);
                }
                return;
            }
            for (int j = 0; j < cols;)
            {
                oy = (p + j) / s.Wo;
                ox = (p + j) % s.Wo;
                int run = Math.Min(cols - j, s.Wo - ox);
                float* from = scratch + (long)(oy - oy0) * s.Stride * RowLength + ox * s.Stride;
                for (int kr = 0; kr < kc; kr++)
                {
                    float* src = from + taps[kr], dst = panel + (long)kr * nr + j;
                    if (s.Stride == 1)
                    {
                        Copy(src, dst, run);
                    }
                    else
                    {
                        for (int q = 0; q < run; q++)
                        {
                            dst[q] = src[q * s.Stride];
                        }
                    }
                }
                j += run;
            }
            for (int kr = 0; kr < kc && cols < nr; kr++)
            {
                new Span<float>(panel + (long)kr * nr + cols, nr - cols).Clear();
            }
        }
    }

    static void Copy(float* from, float* to, int n)
    {
        int i = 0;
        for (; i + Vector<float>.Count <= n; i += Vector<float>.Count)
        {
            Vector.Store(Vector.Load(from + i), to + i);
        }
        for (; i < n; i++)
        {
            to[i] = from[i];
        }
    }
}
