// UpsampleNearest2x — F.interpolate(x, scale_factor=2, mode="nearest") on NCHW: y[.., oy, ox] = x[.., oy/2, ox/2].
// guided-diffusion's Upsample (and the up-ResBlock's h_upd/x_upd).
//   v1  grid-stride over outputs. 1 read (cached ×4) + 1 write per output.
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
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int,
            ArrayView<float>, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(y.Length);
        k(threads, threads, planes, h, w, x.View, y.View);
    }
}
