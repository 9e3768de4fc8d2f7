// UpsampleNearest2x — F.interpolate(x, scale_factor=2, mode="nearest") on NCHW: y[.., oy, ox] = x[.., oy/2, ox/2].
// guided-diffusion's Upsample (and the up-ResBlock's h_upd/x_upd).
//   v1  grid-stride over outputs. 1 read (cached ×4) + 1 write per output.
//   host  the CPU backend (HostBackend.Elementwise.cs): contiguous chunks, a few per core, in SIMD lanes where they apply.
// Backward: dx[.., y, x] = the sum of dy's 2×2 block, ((dy[2y, 2x] + dy[2y, 2x+1]) + dy[2y+1, 2x]) + dy[2y+1, 2x+1] — the order
// in which the outputs reach their input. Grid-stride over inputs: 4 reads + 1 write per input.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class UpsampleNearest2x
{
    // ---- CPU reference

    public static float[] Reference(float[] x, int planes, int h, int w)
    {
        var y = new float[planes * 4 * h * w];
        for (int p = 0; p < planes; p++)
        for (int oy = 0; oy < 2 * h; oy++)
        for (int ox = 0; ox < 2 * w; ox++)
        {
            y[(p * 2 * h + oy) * 2 * w + ox] = x[(p * h + oy / 2) * w + ox / 2];
        }
        return y;
    }

    public static float[] BackwardReference(float[] dy, int planes, int h, int w)
    {
        var dx = new float[planes * h * w];
        for (int p = 0; p < planes; p++)
        for (int oy = 0; oy < 2 * h; oy++)
        for (int ox = 0; ox < 2 * w; ox++)
        {
            dx[(p * h + oy / 2) * w + ox / 2] += dy[(p * 2 * h + oy) * 2 * w + ox];
        }
        return dx;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int planes, int h, int w, ArrayView<float> x, ArrayView<float> y)
    {
        int wo = 2 * w, ho = 2 * h;
        int total = planes * ho * wo;
        for (int o = index; o < total; o += stride)
        {
            int ox = o % wo;
            int oy = o / wo % ho;
            int p = o / (wo * ho);
            y[o] = x[(p * h + oy / 2) * w + ox / 2];
        }
    }

    static void BackwardKernel(Index1D index, int stride, int planes, int h, int w, ArrayView<float> dy, ArrayView<float> dx)
    {
        int total = planes * h * w;
        for (int i = index; i < total; i += stride)
        {
            int ix = i % w;
            int iy = i / w % h;
            int p = i / (w * h);
            int o = (p * 2 * h + 2 * iy) * 2 * w + 2 * ix;
            dx[i] = dy[o] + dy[o + 1] + dy[o + 2 * w] + dy[o + 2 * w + 1];
        }
    }

    // ---- launcher

    /// <summary>x: (N, C, H, W) → y: (N, C, 2H, 2W).</summary>
    public static void Forward(Tensor x, Tensor y)
    {
        int planes = x[0] * x[1], h = x[2], w = x[3];
        if (y.Rank != 4 || y[0] != x[0] || y[1] != x[1] || y[2] != 2 * h || y[3] != 2 * w)
        {
            throw new ArgumentException($"upsample_nearest2x: {x.ShapeString} → {y.ShapeString}");
        }
        var dev = x.Device;
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.UpsampleNearest2x(dev, x.View, y.View, planes, h, w);
            return;
        }
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int,
            ArrayView<float>, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(y.Length);
        k(threads, threads, planes, h, w, x.View, y.View);
    }

    /// <summary>dy: (N, C, 2H, 2W) → dx: (N, C, H, W), each input the sum of the four outputs it was copied to.</summary>
    public static void Backward(Tensor dy, Tensor dx)
    {
        int planes = dx[0] * dx[1], h = dx[2], w = dx[3];
        if (dy.Rank != 4 || dy[0] != dx[0] || dy[1] != dx[1] || dy[2] != 2 * h || dy[3] != 2 * w)
        {
            throw new ArgumentException($"upsample_nearest2x backward: {dy.ShapeString} → {dx.ShapeString}");
        }
        var dev = dy.Device;
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.UpsampleNearest2xBackward(dev, dy.View, dx.View, planes, h, w);
            return;
        }
        var k = dev.Kernel(BackwardKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int,
            ArrayView<float>, ArrayView<float>>(BackwardKernel));
        int threads = dev.StrideThreads(dx.Length);
        k(threads, threads, planes, h, w, dy.View, dx.View);
    }
}
