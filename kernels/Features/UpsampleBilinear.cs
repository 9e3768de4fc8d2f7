// UpsampleBilinear — F.interpolate(x, size=(Ho, Wo), mode="bilinear", align_corners=False) for one image's
// channels, written into a channel range of a larger destination so that upsampling and concatenation are one pass
// (the ddpm-segmentation pixel features: every captured block, every step, stacked along channels).
// Per axis: src = max(0, (dst + 0.5)·in/out − 0.5); i0 = floor(src); i1 = min(i0 + 1, in − 1); w1 = src − i0.
// The scale in/out is a float32 ratio, as ATen computes it when an output size is given.
//   v1  grid-stride over outputs. 4 reads (cached) + 1 write per output → write-bound.
// x: (C, H, W); y: (Ctotal, Ho, Wo), channels [offset, offset + C) written.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class UpsampleBilinear
{
    /// <summary>The source position and weights along one axis, as ATen's area_pixel_compute_source_index does.</summary>
    public static void Taps(int dst, int inSize, int outSize, out int i0, out int i1, out float w1)
    {
        float scale = (float)inSize / outSize;
        float src = (dst + 0.5f) * scale - 0.5f;
        if (src < 0f)
        {
            src = 0f;
        }
        i0 = (int)src;
        i1 = i0 + (i0 < inSize - 1 ? 1 : 0);
        w1 = src - i0;
    }

    // ---- CPU reference

    public static float[] Reference(float[] x, int channels, int h, int w, int ho, int wo)
    {
        var y = new float[channels * ho * wo];
        for (int c = 0; c < channels; c++)
        for (int oy = 0; oy < ho; oy++)
        for (int ox = 0; ox < wo; ox++)
        {
            Taps(oy, h, ho, out int y0, out int y1, out float wy);
            Taps(ox, w, wo, out int x0, out int x1, out float wx);
            int p = c * h * w;
            float top = (1 - wx) * x[p + y0 * w + x0] + wx * x[p + y0 * w + x1];
            float bottom = (1 - wx) * x[p + y1 * w + x0] + wx * x[p + y1 * w + x1];
            y[(c * ho + oy) * wo + ox] = (1 - wy) * top + wy * bottom;
        }
        return y;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int channels, int h, int w, int ho, int wo, int channelOffset,
        ArrayView<float> x, ArrayView<float> y)
    {
        int total = channels * ho * wo;
        for (int o = index; o < total; o += stride)
        {
            int ox = o % wo;
            int oy = o / wo % ho;
            int c = o / (wo * ho);
            Taps(oy, h, ho, out int y0, out int y1, out float wy);
            Taps(ox, w, wo, out int x0, out int x1, out float wx);
            int p = c * h * w;
            float top = (1f - wx) * x[p + y0 * w + x0] + wx * x[p + y0 * w + x1];
            float bottom = (1f - wx) * x[p + y1 * w + x0] + wx * x[p + y1 * w + x1];
            y[((channelOffset + c) * ho + oy) * wo + ox] = (1f - wy) * top + wy * bottom;
        }
    }

    // ---- launcher

    /// <summary>x: (C, H, W) → channels [offset, offset + C) of y: (Ctotal, Ho, Wo).</summary>
    public static void Forward(Tensor x, Tensor y, int channelOffset = 0)
    {
        int c = x[-3], h = x[-2], w = x[-1];
        int ho = y[-2], wo = y[-1];
        if (x.Length != c * h * w || channelOffset < 0 || channelOffset + c > y[-3] || y.Length != y[-3] * ho * wo)
        {
            throw new ArgumentException($"upsample_bilinear: {x.ShapeString} into channels {channelOffset}.. of {y.ShapeString}");
        }
        var dev = x.Device;
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, int, int, int,
            ArrayView<float>, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads((long)c * ho * wo);
        k(threads, threads, c, h, w, ho, wo, channelOffset, x.View, y.View);
    }
}
