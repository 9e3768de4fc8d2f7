// Softmax — row-wise softmax over the last dimension, in fp32: y = exp(x − max) / Σ exp(x − max).
// Attention weights (QKVAttention softmaxes in fp32 even under use_fp16).
//   v1  one row per grid-stride step, three passes over the row (max, sum, normalise). In place allowed. The CPU
//       accelerator's (one simulated thread per row is what it runs fastest).
//   v2  one row per warp (CUDA): lanes read consecutive columns, so a warp's loads coalesce, and the row max and sum are
//       butterfly shuffles. v1's threads each walk their own row — on a GPU every load of a warp hits a different
//       sector (T = 1,024: 4 KB apart), an eighth of each 32-byte sector used, with T·rows/threads dependent steps.
// Backward (attention's dS from its probabilities and their gradient): dx = y ⊙ (dy − Σ_c y·dy), per row; the same two
// variants (v1 a thread per row, v2 a warp per row). Two passes read y and dy (the second again, from cache when the row
// fits), one writes dx: 3–5 floats moved per element for 3 flops, memory-bound. In place (dx = dy) allowed: each
// element is read and then written by the same thread.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class Softmax
{
    // ---- CPU reference

    public static float[] Reference(float[] x, int rows, int cols)
    {
        var y = new float[x.Length];
        for (int r = 0; r < rows; r++)
        {
            double max = double.NegativeInfinity, sum = 0;
            for (int c = 0; c < cols; c++)
            {
                max = Math.Max(max, x[r * cols + c]);
            }
            for (int c = 0; c < cols; c++)
            {
                sum += Math.Exp(x[r * cols + c] - max);
            }
            for (int c = 0; c < cols; c++)
            {
                y[r * cols + c] = (float)(Math.Exp(x[r * cols + c] - max) / sum);
            }
        }
        return y;
    }

    /// <summary>The backward of a row softmax: dx = y ⊙ (dy − rowsum(y ⊙ dy)), in double.</summary>
    public static float[] BackwardReference(float[] y, float[] dy, int rows, int cols)
    {
        var dx = new float[y.Length];
        for (int r = 0; r < rows; r++)
        {
            double dot = 0;
            for (int c = 0; c < cols; c++)
            {
                dot += (double)y[r * cols + c] * dy[r * cols + c];
            }
            for (int c = 0; c < cols; c++)
            {
                dx[r * cols + c] = (float)(y[r * cols + c] * (dy[r * cols + c] - dot));
            }
        }
        return dx;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int rows, int cols, ArrayView<float> x, ArrayView<float> y)
    {
        for (int r = index; r < rows; r += stride)
        {
            int b = r * cols;
            float max = x[b];
            for (int c = 1; c < cols; c++)
            {
                max = XMath.Max(max, x[b + c]);
            }
            float sum = 0f;
            for (int c = 0; c < cols; c++)
            {
                float e = XMath.Exp(x[b + c] - max);
                y[b + c] = e;
                sum += e;
            }
            float inv = 1f / sum;
            for (int c = 0; c < cols; c++)
            {
                y[b + c] *= inv;
            }
        }
    }

    const int WarpRowsThreads = 256;

    /// <summary>v2: warp w of the grid takes rows w, w + warps, ...; 256-thread groups.</summary>
    static void WarpRowsKernel(int rows, int cols, ArrayView<float> x, ArrayView<float> y)
    {
        int lane = Warp.LaneIdx, width = Warp.WarpSize;
        int warpsPerGroup = Group.DimX / width;
        int warps = Grid.DimX * warpsPerGroup;
        // Every lane of a warp runs the same rows and loop counts, so the shuffles see the whole warp.
        for (int r = Grid.IdxX * warpsPerGroup + Warp.WarpIdx; r < rows; r += warps)
        {
            int b = r * cols;
            float max = float.NegativeInfinity;
            for (int c = lane; c < cols; c += width)
            {
                max = XMath.Max(max, x[b + c]);
            }
            for (int offset = width / 2; offset > 0; offset /= 2)
            {
                max = XMath.Max(max, Warp.ShuffleXor(max, offset));
            }
            float sum = 0f;
            for (int c = lane; c < cols; c += width)
            {
                float e = XMath.Exp(x[b + c] - max);
                y[b + c] = e;
                sum += e;
            }
            for (int offset = width / 2; offset > 0; offset /= 2)
            {
                sum += Warp.ShuffleXor(sum, offset);
            }
            float inv = 1f / sum;
            for (int c = lane; c < cols; c += width)
            {
                y[b + c] *= inv;
            }
        }
    }

    /// <summary>Backward v1: a thread per row (grid stride), dx = y ⊙ (dy − y·dy).</summary>
    static void BackwardKernel(Index1D index, int stride, int rows, int cols, ArrayView<float> y, ArrayView<float> dy, ArrayView<float> dx)
    {
        for (int r = index; r < rows; r += stride)
        {
            int b = r * cols;
            float dot = 0f;
            for (int c = 0; c < cols; c++)
            {
                dot += y[b + c] * dy[b + c];
            }
            for (int c = 0; c < cols; c++)
            {
                float p = y[b + c];
                dx[b + c] = p * (dy[b + c] - dot);
            }
        }
    }

    /// <summary>Backward v2: a warp per row as WarpRowsKernel; the dot product is a butterfly of the lanes' partial sums.</summary>
    static void BackwardWarpRowsKernel(int rows, int cols, ArrayView<float> y, ArrayView<float> dy, ArrayView<float> dx)
    {
        int lane = Warp.LaneIdx, width = Warp.WarpSize;
        int warpsPerGroup = Group.DimX / width;
        int warps = Grid.DimX * warpsPerGroup;
        for (int r = Grid.IdxX * warpsPerGroup + Warp.WarpIdx; r < rows; r += warps)
        {
            int b = r * cols;
            float dot = 0f;
            for (int c = lane; c < cols; c += width)
            {
                dot += y[b + c] * dy[b + c];
            }
            for (int offset = width / 2; offset > 0; offset /= 2)
            {
                dot += Warp.ShuffleXor(dot, offset);
            }
            for (int c = lane; c < cols; c += width)
            {
                float p = y[b + c];
                dx[b + c] = p * (dy[b + c] - dot);
            }
        }
    }

    // ---- launcher

    /// <summary>Row softmax of (rows, cols); <paramref name="reduction"/> picks v1 (thread per row) or v2 (warp per row).</summary>
    public static void Forward(ComputeDevice dev, ArrayView<float> x, ArrayView<float> y, int rows, int cols,
        Reduction reduction = Reduction.Auto)
    {
        if (reduction.For(dev) == Reduction.Parallel)
        {
            var warpK = dev.Kernel(WarpRowsKernel, a => a.LoadStreamKernel<int, int, ArrayView<float>, ArrayView<float>>(WarpRowsKernel));
            int rowsPerGroup = WarpRowsThreads / dev.Accelerator.WarpSize;
            int groups = (int)Math.Min((rows + rowsPerGroup - 1) / rowsPerGroup,
                (long)dev.Accelerator.NumMultiprocessors * dev.Accelerator.MaxNumThreadsPerMultiprocessor / WarpRowsThreads);
            warpK(new KernelConfig(Math.Max(1, groups), WarpRowsThreads), rows, cols, x, y);
            return;
        }
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(rows);
        k(threads, threads, rows, cols, x, y);
    }

    /// <summary>
    /// The backward of Forward: dx = y ⊙ (dy − rowsum(y ⊙ dy)) over (rows, cols), y the forward's output; dx may be dy.
    /// <paramref name="reduction"/> picks v1 (thread per row) or v2 (warp per row).
    /// </summary>
    public static void Backward(ComputeDevice dev, ArrayView<float> y, ArrayView<float> dy, ArrayView<float> dx, int rows, int cols,
        Reduction reduction = Reduction.Auto)
    {
        if (reduction.For(dev) == Reduction.Parallel)
        {
            var warpK = dev.Kernel(BackwardWarpRowsKernel, a => a.LoadStreamKernel<int, int, ArrayView<float>, ArrayView<float>,
                ArrayView<float>>(BackwardWarpRowsKernel));
            int rowsPerGroup = WarpRowsThreads / dev.Accelerator.WarpSize;
            int groups = (int)Math.Min((rows + rowsPerGroup - 1) / rowsPerGroup,
                (long)dev.Accelerator.NumMultiprocessors * dev.Accelerator.MaxNumThreadsPerMultiprocessor / WarpRowsThreads);
            warpK(new KernelConfig(Math.Max(1, groups), WarpRowsThreads), rows, cols, y, dy, dx);
            return;
        }
        var k = dev.Kernel(BackwardKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>, ArrayView<float>>(BackwardKernel));
        int threads = dev.StrideThreads(rows);
        k(threads, threads, rows, cols, y, dy, dx);
    }
}
