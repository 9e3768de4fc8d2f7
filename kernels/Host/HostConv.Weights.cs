// HostConv, weight gradient — dW[co, ci, ky, kx] += Σ_{n, oy, ox} dy[n, co, oy, ox]·a[n, ci, oy·s − pad + ky, ox·s − pad + kx],
// a = act(norm(x)) or x, computed transposed, dWᵀ (taps × Cout), on the forward's micro-kernel: A = the taps' rows along the
// pixels (read in place through row pointers), B = dy transposed into panels of NR output channels (packed once per
// block of pixels and shared by every task), the sum running over pixels.
//   Stride 1: on a grid of rows W + 2·pad wide. dy's transpose has zero rows at the pad columns; each task writes its
//   channels' input rows, normalized and zero-padded, into a scratch of the same width, and tap (ky, kx) of channel ci is
//   that scratch shifted by ky·(W + 2·pad) + kx — its values line up with dy's pixel by pixel, and the pad columns meet
//   dy's zeros. Stride 2: the task writes the taps' rows (im2col) on the output grid instead.
//   Output rows go in blocks of ≤ 512 grid pixels: a panel of dy's transpose is 64 KB (L2), eight tap rows 16 KB (L1).
//   A task owns a block of input channels; each of its dW elements is an FMA chain over one block's pixels, added to the
//   element's sum over the blocks (images and row blocks in order) — the same bits whatever the number of tasks.
// An earlier version ran this as dot products of dy's rows against the tap rows (no transpose), but its 4 × 6 blocks
// with a horizontal sum per block reached ~60% of the micro-kernel's speed (perf, same run); the transpose costs one
// pass over dy per call.
// fp16 (HostSimdFp16): dy and a rounded to fp16 as they are copied, summed in fp32.
// db is not here: HostBackend sums dy per channel.
using System.Numerics;
using System.Runtime.Intrinsics.X86;

namespace IlgpuDiffSeg.Kernels;

static unsafe partial class HostConv
{
    /// <summary>The most grid pixels of a row block.</summary>
    const int BlockPixels = 512;

    [ThreadStatic] static float[]? tapScratch;
    [ThreadStatic] static float[]? blockSums;

    /// <summary>The caller's buffer for dy transposed (kept between calls: a fresh one costs its pages' first touch).</summary>
    [ThreadStatic] static float[]? transposedGradient;

    /// <summary>dw (Cout, Cin·k²) += the weight gradient of <see cref="Forward"/> for output gradient dy.</summary>
    public static void BackwardWeights(ConvShape s, float* x, HostNorm norm, float* dy, float* dw, bool roundToHalf)
    {
        int nr = HostMicroKernels.NR;
        int gridWidth = s.Stride == 1 ? s.W + 2 * s.Pad : s.Wo;
        int blockRows = Math.Clamp(BlockPixels / gridWidth, 1, s.Ho);
        int rowBlocks = (s.Ho + blockRows - 1) / blockRows;
        int run = blockRows * gridWidth, panels = (s.Cout + nr - 1) / nr;
        fixed (float* unaligned = Scratch(ref transposedGradient, (long)s.N * rowBlocks * panels * run * nr + 16))
        {
            // On a 64-byte boundary every B load of the micro-kernel stays within one cache line.
            float* t = (float*)(((nint)unaligned + 63) & ~(nint)63);
            var job = new WeightsJob
            {
                S = s, X = x, Norm = norm, Dy = dy, Transposed = t, Dw = dw, RoundToHalf = roundToHalf, BlockRows = blockRows,
                RowBlocks = rowBlocks, GridWidth = gridWidth, Run = run, Panels = panels,
            };
            HostMath.ForEach(s.N * rowBlocks * panels, 1, item => TransposeGradient(job, item));
            int tasks = Math.Min(s.Cin, 4 * HostMath.Cores), perTask = (s.Cin + tasks - 1) / tasks;
            job.ChannelsPerTask = perTask;
            HostMath.ForEach((s.Cin + perTask - 1) / perTask, 1, task => WeightsTask(job, task));
        }
    }

    struct WeightsJob
    {
        public ConvShape S;
        public float* X, Dy, Transposed, Dw;
        public HostNorm Norm;
        public bool RoundToHalf;
        public int BlockRows, RowBlocks, GridWidth, Run, Panels, ChannelsPerTask;
    }

    /// <summary>
    /// Panel p of (image, row block) of dy transposed: Run grid pixels × NR channels, zero at the grid's pad columns and past
    /// Cout. <paramref name="item"/> = (n·RowBlocks + rb)·Panels + p. 8 × 8 blocks go through registers (AVX).
    /// </summary>
    static void TransposeGradient(WeightsJob j, int item)
    {
        var s = j.S;
        int nr = HostMicroKernels.NR, p = item % j.Panels, block = item / j.Panels;
        int n = block / j.RowBlocks, oy0 = block % j.RowBlocks * j.BlockRows, rows = Math.Min(j.BlockRows, s.Ho - oy0);
        int co0 = p * nr, channels = Math.Min(nr, s.Cout - co0);
        float* dst = j.Transposed + (long)item * j.Run * nr;
        float* first = j.Dy + ((long)n * s.Cout + co0) * s.Ho * s.Wo + (long)oy0 * s.Wo;
        long channelStride = (long)s.Ho * s.Wo;
        for (int r = 0; r < j.BlockRows; r++)
        {
            float* line = dst + (long)r * j.GridWidth * nr;
            if (r >= rows)
            {
                new Span<float>(line, j.GridWidth * nr).Clear();
                continue;
            }
            new Span<float>(line + (long)s.Wo * nr, (j.GridWidth - s.Wo) * nr).Clear();
            float* from = first + (long)r * s.Wo;
            int ox = 0, c;
            if (Avx.IsSupported && !j.RoundToHalf)
            {
                for (; ox + 8 <= s.Wo; ox += 8)
                {
                    for (c = 0; c + 8 <= channels; c += 8)
                    {
                        Transpose8x8(from + c * channelStride + ox, channelStride, line + (long)ox * nr + c, nr);
                    }
                }
            }
            for (int q = 0; q < s.Wo; q++)
            {
                // What the blocks left: pixels past the last block of 8, channels past the last 8, the zero channels past Cout.
                c = q < ox ? channels / 8 * 8 : 0;
                for (; c < channels; c++)
                {
                    float v = from[c * channelStride + q];
                    line[(long)q * nr + c] = j.RoundToHalf ? (float)(Half)v : v;
                }
                for (; c < nr; c++)
                {
                    line[(long)q * nr + c] = 0f;
                }
            }
        }
    }

    /// <summary>dst[i·ldd + r] = src[r·lds + i] for an 8 × 8 block: unpack, shuffle, then swap 128-bit halves.</summary>
    static void Transpose8x8(float* src, long lds, float* dst, long ldd)
    {
        var r0 = Avx.LoadVector256(src);
        var r1 = Avx.LoadVector256(src + lds);
        var r2 = Avx.LoadVector256(src + 2 * lds);
        var r3 = Avx.LoadVector256(src + 3 * lds);
        var r4 = Avx.LoadVector256(src + 4 * lds);
        var r5 = Avx.LoadVector256(src + 5 * lds);
        var r6 = Avx.LoadVector256(src + 6 * lds);
        var r7 = Avx.LoadVector256(src + 7 * lds);
        var t0 = Avx.UnpackLow(r0, r1);
        var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3);
        var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5);
        var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7);
        var t7 = Avx.UnpackHigh(r6, r7);
        var u0 = Avx.Shuffle(t0, t2, 0x44);
        var u1 = Avx.Shuffle(t0, t2, 0xEE);
        var u2 = Avx.Shuffle(t1, t3, 0x44);
        var u3 = Avx.Shuffle(t1, t3, 0xEE);
        var u4 = Avx.Shuffle(t4, t6, 0x44);
        var u5 = Avx.Shuffle(t4, t6, 0xEE);
        var u6 = Avx.Shuffle(t5, t7, 0x44);
        var u7 = Avx.Shuffle(t5, t7, 0xEE);
        Avx.Store(dst, Avx.Permute2x128(u0, u4, 0x20));
        Avx.Store(dst + ldd, Avx.Permute2x128(u1, u5, 0x20));
        Avx.Store(dst + 2 * ldd, Avx.Permute2x128(u2, u6, 0x20));
        Avx.Store(dst + 3 * ldd, Avx.Permute2x128(u3, u7, 0x20));
        Avx.Store(dst + 4 * ldd, Avx.Permute2x128(u0, u4, 0x31));
        Avx.Store(dst + 5 * ldd, Avx.Permute2x128(u1, u5, 0x31));
        Avx.Store(dst + 6 * ldd, Avx.Permute2x128(u2, u6, 0x31));
        Avx.Store(dst + 7 * ldd, Avx.Permute2x128(u3, u7, 0x31));
    }

    static void WeightsTask(WeightsJob j, int t)
    {
        var s = j.S;
        int kk = s.K * s.K, k = s.Cin * kk, mr = HostMicroKernels.MR, nr = HostMicroKernels.NR;
        int c0 = t * j.ChannelsPerTask, c1 = Math.Min(s.Cin, c0 + j.ChannelsPerTask), taps = (c1 - c0) * kk;
        int groups = (taps + mr - 1) / mr, ldc = j.Panels * nr;
        long plane = (long)(j.BlockRows + s.K - 1) * j.GridWidth + s.K;
        long length = s.Stride == 1 ? (c1 - c0) * plane : (long)taps * j.Run;
        float** rows = stackalloc float*[groups * mr];
        long sumsLength = 2L * groups * mr * ldc;
        fixed (float* scratch = Scratch(ref tapScratch, length + j.Run))
        fixed (float* sums = Scratch(ref blockSums, sumsLength))
        {
            float* zeros = scratch + length, total = sums, block = sums + sumsLength / 2;
            new Span<float>(zeros, j.Run).Clear();
            new Span<float>(total, (int)(sumsLength / 2)).Clear();
            for (int tap = 0; tap < groups * mr; tap++)
            {
                int ci = tap / kk, ky = tap % kk / s.K, kx = tap % s.K;
                rows[tap] = tap >= taps ? zeros
                    : s.Stride == 1 ? scratch + ci * plane + ky * j.GridWidth + kx : scratch + (long)tap * j.Run;
            }
            for (int n = 0; n < s.N; n++)
            {
                for (int rb = 0; rb < j.RowBlocks; rb++)
                {
                    FillTaps(j, n, rb, c0, c1, scratch, plane);
                    float* panels = j.Transposed + ((long)n * j.RowBlocks + rb) * j.Panels * j.Run * nr;
                    new Span<float>(block, (int)(sumsLength / 2)).Clear();
                    for (int g = 0; g < groups; g++)
                    {
                        for (int p = 0; p < j.Panels; p++)
                        {
                            HostMicroKernels.Gemm(j.Run, rows + g * mr, panels + (long)p * j.Run * nr, block + (long)g * mr * ldc + p * nr,
                                ldc);
                        }
                    }
                    AddTo(total, block, (int)(sumsLength / 2));
                }
            }
            for (int co = 0; co < s.Cout; co++)
            {
                for (int tap = 0; tap < taps; tap++)
                {
                    j.Dw[(long)co * k + c0 * kk + tap] += total[(long)tap * ldc + co];
                }
            }
        }
    }

    static void AddTo(float* total, float* part, int n)
    {
        int i = 0;
        for (; i + Vector<float>.Count <= n; i += Vector<float>.Count)
        {
            Vector.Store(Vector.Load(total + i) + Vector.Load(part + i), total + i);
        }
        for (; i < n; i++)
        {
            total[i] += part[i];
        }
    }

    /// <summary>
    /// The task's channels [c0, c1) of image n for row block rb: stride 1 — the input rows the block reads, normalized and
    /// padded, one plane per channel; otherwise — every tap's values on the block's output grid.
    /// </summary>
    static void FillTaps(WeightsJob j, int n, int rb, int c0, int c1, float* scratch, long plane)
    {
        var s = j.S;
        int oy0 = rb * j.BlockRows, rows = Math.Min(j.BlockRows, s.Ho - oy0), kk = s.K * s.K;
        float* x = j.X + (long)n * s.Cin * s.H * s.W;
        float* q = j.Norm.Applies ? j.Norm.Coefficients + 4L * n * s.Cin : null;
        if (s.Stride == 1)
        {
            for (int ci = c0; ci < c1; ci++)
            {
                float* dst = scratch + (ci - c0) * plane;
                int filled = rows + s.K - 1;
                for (int r = 0; r < filled; r++)
                {
                    int iy = oy0 - s.Pad + r;
                    float* line = dst + (long)r * j.GridWidth;
                    if (iy < 0 || iy >= s.H)
                    {
                        new Span<float>(line, j.GridWidth).Clear();
                        continue;
                    }
                    new Span<float>(line, s.Pad).Clear();
                    new Span<float>(line + s.Pad + s.W, j.GridWidth - s.Pad - s.W).Clear();
                    InputRow(x + ((long)ci * s.H + iy) * s.W, q == null ? null : q + 4 * ci, j.Norm.Silu, j.RoundToHalf, line + s.Pad,
                        s.W);
                }
                new Span<float>(dst + (long)filled * j.GridWidth, (int)(plane - (long)filled * j.GridWidth)).Clear();
            }
            return;
        }
        float* row = stackalloc float[s.W];
        for (int ci = c0; ci < c1; ci++)
        {
            float* taps = scratch + (long)(ci - c0) * kk * j.Run;
            new Span<float>(taps, kk * j.Run).Clear();
            for (int r = 0; r < rows; r++)
            {
                for (int ky = 0; ky < s.K; ky++)
                {
                    int iy = (oy0 + r) * s.Stride - s.Pad + ky;
                    if (iy < 0 || iy >= s.H)
                    {
                        continue;
                    }
                    InputRow(x + ((long)ci * s.H + iy) * s.W, q == null ? null : q + 4 * ci, j.Norm.Silu, j.RoundToHalf, row, s.W);
                    for (int kx = 0; kx < s.K; kx++)
                    {
                        float* dst = taps + (long)(ky * s.K + kx) * j.Run + r * s.Wo;
                        for (int ox = 0; ox < s.Wo; ox++)
                        {
                            int ix = ox * s.Stride - s.Pad + kx;
                            dst[ox] = ix >= 0 && ix < s.W ? row[ix] : 0f;
                        }
                    }
                }
            }
        }
    }

    /// <summary>One input row as the convolution reads it: normalized (coefficients (mean, a, b) or none), fp16-rounded.</summary>
    static void InputRow(float* from, float* coefficients, bool silu, bool roundToHalf, float* dst, int w)
    {
        if (coefficients != null)
        {
            HostBackend.NormalizeRun(from, dst, w, coefficients[0], coefficients[1], coefficients[2], silu);
        }
        else
        {
            Buffer.MemoryCopy(from, dst, w * sizeof(float), w * sizeof(float));
        }
        if (roundToHalf)
        {
            for (int i = 0; i < w; i++)
            {
                dst[i] = (float)(Half)dst[i];
            }
        }
    }
}
