// HostConv, weight gradient — dW[co, ci, ky, kx] += Σ_{n, oy, ox} dy[n, co, oy, ox]·a[n, ci, oy·s − pad + ky, ox·s − pad + kx],
// a = act(norm(x)) or x: a sum over pixels whose two operands are both contiguous along the pixels, so it runs as dot
// products (HostMicroKernels.Dot: rows of dy against rows of a) with nothing transposed or packed.
//   Stride 1: on a grid of rows W + 2·pad wide. dy is copied once into that grid (zero in the pad columns); each task
//   writes its channels' input rows, normalized and zero-padded, into a scratch of the same width, and tap (ky, kx) of
//   channel ci is that scratch shifted by ky·(W + 2·pad) + kx — its values line up with dy's pixel by pixel, and the
//   pad columns meet dy's zeros. Stride 2: the task writes the taps' rows (im2col) on the output grid instead.
//   Output rows go in blocks whose runs are ≤ 512 values (a row of dy and of a tap in L1 for each 4 × 4 block of dots).
//   A task owns a block of input channels — every dW element it writes is its own, summed over images and row blocks in
//   order, whatever the number of tasks: the same bits on every run. dy's copy is shared by the tasks.
// fp16 (HostSimdFp16): dy and a rounded to fp16 as they are copied, summed in fp32.
// db is not here: HostBackend sums dy per channel.
namespace IlgpuDiffSeg.Kernels;

static unsafe partial class HostConv
{
    /// <summary>The longest dot-product run of a row block.</summary>
    const int DotRun = 512;

    [ThreadStatic] static float[]? tapScratch;

    /// <summary>dw (Cout, Cin·k²) += the weight gradient of <see cref="Forward"/> for output gradient dy.</summary>
    public static void BackwardWeights(ConvShape s, float* x, HostNorm norm, float* dy, float* dw, bool roundToHalf)
    {
        int lanes = HostMicroKernels.DotLanes;
        int gridWidth = s.Stride == 1 ? s.W + 2 * s.Pad : s.Wo;
        int blockRows = Math.Clamp(DotRun / gridWidth, 1, s.Ho);
        int rowBlocks = (s.Ho + blockRows - 1) / blockRows;
        int run = (blockRows * gridWidth + lanes - 1) / lanes * lanes;
        var grid = GC.AllocateUninitializedArray<float>(checked(s.N * rowBlocks * s.Cout * run), pinned: true);
        fixed (float* g = grid)
        {
            nint gp = (nint)g, dyp = (nint)dy;
            HostMath.ForEach(s.N * rowBlocks, 1, item => CopyGradientBlock(s, (float*)dyp, (float*)gp, item, blockRows, gridWidth, run,
                roundToHalf));
            int tasks = Math.Min(s.Cin, 4 * HostMath.Cores), perTask = (s.Cin + tasks - 1) / tasks;
            tasks = (s.Cin + perTask - 1) / perTask;
            var job = new WeightsJob
            {
                S = s, X = x, Norm = norm, Grid = g, Dw = dw, RoundToHalf = roundToHalf, BlockRows = blockRows,
                RowBlocks = rowBlocks, GridWidth = gridWidth, Run = run, ChannelsPerTask = perTask,
            };
            HostMath.ForEach(tasks, 1, t => WeightsTask(job, t));
        }
    }

    struct WeightsJob
    {
        public ConvShape S;
        public float* X, Grid, Dw;
        public HostNorm Norm;
        public bool RoundToHalf;
        public int BlockRows, RowBlocks, GridWidth, Run, ChannelsPerTask;
    }

    /// <summary>dy's rows of (image, row block) <paramref name="item"/> into its grid block: Cout runs of <paramref name="run"/>.
    /// </summary>
    static void CopyGradientBlock(ConvShape s, float* dy, float* grid, int item, int blockRows, int gridWidth, int run, bool roundToHalf)
    {
        int n = item / ((s.Ho + blockRows - 1) / blockRows), rb = item % ((s.Ho + blockRows - 1) / blockRows);
        int oy0 = rb * blockRows, rows = Math.Min(blockRows, s.Ho - oy0);
        for (int co = 0; co < s.Cout; co++)
        {
            float* dst = grid + ((long)item * s.Cout + co) * run;
            new Span<float>(dst, run).Clear();
            for (int r = 0; r < rows; r++)
            {
                float* from = dy + (((long)n * s.Cout + co) * s.Ho + oy0 + r) * s.Wo;
                Copy(from, dst + r * gridWidth, s.Wo);
                if (roundToHalf)
                {
                    for (int ox = 0; ox < s.Wo; ox++)
                    {
                        dst[r * gridWidth + ox] = (float)(Half)from[ox];
                    }
                }
            }
        }
    }

    static void WeightsTask(WeightsJob j, int t)
    {
        var s = j.S;
        int kk = s.K * s.K, k = s.Cin * kk, rows = HostMicroKernels.DotRows;
        int c0 = t * j.ChannelsPerTask, c1 = Math.Min(s.Cin, c0 + j.ChannelsPerTask), taps = (c1 - c0) * kk;
        long plane = (long)(j.BlockRows + s.K - 1) * j.GridWidth + j.Run + s.K;
        long length = s.Stride == 1 ? (c1 - c0) * plane : (long)taps * j.Run;
        float** a = stackalloc float*[rows];
        float** b = stackalloc float*[taps];
        fixed (float* scratch = Scratch(ref tapScratch, length))
        {
            for (int tap = 0; tap < taps; tap++)
            {
                int ci = tap / kk, ky = tap % kk / s.K, kx = tap % s.K;
                b[tap] = s.Stride == 1 ? scratch + ci * plane + ky * j.GridWidth + kx : scratch + (long)tap * j.Run;
            }
            for (int n = 0; n < s.N; n++)
            {
                for (int rb = 0; rb < j.RowBlocks; rb++)
                {
                    FillTaps(j, n, rb, c0, c1, scratch, plane);
                    float* block = j.Grid + ((long)n * j.RowBlocks + rb) * s.Cout * j.Run;
                    for (int b0 = 0; b0 < taps; b0 += rows)
                    {
                        int mb = Math.Min(rows, taps - b0);
                        for (int co = 0; co < s.Cout; co += rows)
                        {
                            int ma = Math.Min(rows, s.Cout - co);
                            for (int i = 0; i < ma; i++)
                            {
                                a[i] = block + (long)(co + i) * j.Run;
                            }
                            HostMicroKernels.Dot(j.Run, a, ma, b + b0, mb, j.Dw + (long)co * k + c0 * kk + b0, k);
                        }
                    }
                }
            }
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
                new Span<float>(dst, (int)plane).Clear();
                for (int r = 0; r < rows + s.K - 1; r++)
                {
                    int iy = oy0 - s.Pad + r;
                    if (iy >= 0 && iy < s.H)
                    {
                        InputRow(x + ((long)ci * s.H + iy) * s.W, q == null ? null : q + 4 * ci, j.Norm.Silu, j.RoundToHalf,
                            dst + (long)r * j.GridWidth + s.Pad, s.W);
                    }
                }
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
