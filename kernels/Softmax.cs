// Softmax — row-wise softmax over the last dimension, in fp32: y = exp(x − max) / Σ exp(x − max).
// Attention weights (QKVAttention softmaxes in fp32 even under use_fp16).
//   v1  one row per grid-stride step, three passes over the row (max, sum, normalise). In place allowed.
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

    // ---- launcher

    public static void Forward(ComputeDevice dev, ArrayView<float> x, ArrayView<float> y, int rows, int cols)
    {
        var k = dev.Kernel("softmax", a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(rows);
        k(threads, threads, rows, cols, x, y);
    }
}
