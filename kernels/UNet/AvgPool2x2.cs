// AvgPool2x2 — nn.AvgPool2d(2, 2) on NCHW (guided-diffusion's Downsample without conv, and the down-ResBlock's
// h_upd/x_upd). Summed in PyTorch's order, row by row, then divided by 4.
//   v1  grid-stride over outputs. 4 reads + 1 write per output.
//   host  the CPU backend (HostBackend.Elementwise.cs): contiguous chunks, a few per core, in SIMD lanes where they apply.
// Backward: each of an output's four inputs gets dy/4 (exact); inputs in a dropped odd row/column get 0. Grid-stride over
// inputs: 1 read + 1 write per input.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class AvgPool2x2
{
    // ---- CPU reference

    public static float[] Reference(float[] x, int planes, int h, int w)
    {
        int ho = h / 2, wo = w / 2;
        var y = new float[planes * ho * wo];
        for (int p = 0; p < planes; p++)
        for (int oy = 0; oy < ho; oy++)
        for (int ox = 0; ox < wo; ox++)
        {
            int i = (p * h + 2 * oy) * w + 2 * ox;
            y[(p * ho + oy) * wo + ox] = (x[i] + x[i + 1] + x[i + w] + x[i + w + 1]) / 4f;
        }
        return y;
    }

    public static float[] BackwardReference(float[] dy, int planes, int h, int w)
    {
        int ho = h / 2, wo = w / 2;
        var dx = new float[planes * h * w];
        for (int p = 0; p < planes; p++)
        for (int oy = 0; oy < ho; oy++)
        for (int ox = 0; ox < wo; ox++)
        {
            float g = dy[(p * ho + oy) * wo + ox] / 4f;
            int i = (p * h + 2 * oy) * w + 2 * ox;
            dx[i] = dx[i + 1] = dx[i + w] = dx[i + w + 1] = g;
        }
        return dx;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int planes, int h, int w, ArrayView<float> x, ArrayView<float> y)
    {
        int ho = h / 2, wo = w / 2;
        int total = planes * ho * wo;
        for (int o = index; o < total; o += stride)
        {
            int ox = o % wo;
            int oy = o / wo % ho;
            int p = o / (wo * ho);
            int i = (p * h + 2 * oy) * w + 2 * ox;
            y[o] = (x[i] + x[i + 1] + x[i + w] + x[i + w + 1]) / 4f;
        }
    }

    static void BackwardKernel(Index1D index, int stride, int planes, int h, int w, ArrayView<float> dy, ArrayView<float> dx)
    {
        int ho = h / 2, wo = w / 2;
        int total = planes * h * w;
        for (int i = index; i < total; i += stride)
        {
            int ix = i % w;
            int iy = i / w % h;
            int p = i / (w * h);
            dx[i] = ix < 2 * wo && iy < 2 * ho ? dy[(p * ho + iy / 2) * wo + ix / 2] / 4f : 0f;
        }
    }

    // ---- launcher

    /// <summary>x: (N, C, H, W) → y: (N, C, H/2, W/2); odd rows/columns are dropped, as PyTorch does.</summary>
    public static void Forward(Tensor x, Tensor y)
    {
        int planes = x[0] * x[1], h = x[2], w = x[3];
        if (y.Rank != 4 || y[0] != x[0] || y[1] != x[1] || y[2] != h / 2 || y[3] != w / 2)
        {
            throw new ArgumentException($"avg_pool2x2: {x.ShapeString} → {y.ShapeString}");
        }
        var dev = x.Device;
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.AvgPool2x2(dev, x.View, y.View, planes, h, w);
            return;
        }
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int,
            ArrayView<float>, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(y.Length);
        k(threads, threads, planes, h, w, x.View, y.View);
    }

    /// <summary>dy: (N, C, H/2, W/2) → dx: (N, C, H, W).</summary>
    public static void Backward(Tensor dy, Tensor dx)
    {
        int planes = dx[0] * dx[1], h = dx[2], w = dx[3];
        if (dy.Rank != 4 || dy[0] != dx[0] || dy[1] != dx[1] || dy[2] != h / 2 || dy[3] != w / 2)
        {
            throw new ArgumentException($"avg_pool2x2 backward: {dy.ShapeString} → {dx.ShapeString}");
        }
        var dev = dy.Device;
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.AvgPool2x2Backward(dev, dy.View, dx.View, planes, h, w);
            return;
        }
        var k = dev.Kernel(BackwardKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int,
            ArrayView<float>, ArrayView<float>>(BackwardKernel));
        int threads = dev.StrideThreads(dx.Length);
        k(threads, threads, planes, h, w, dy.View, dx.View);
    }
}
