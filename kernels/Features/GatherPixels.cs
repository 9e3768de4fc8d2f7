// GatherPixels — builds a training batch from materialised features: X[b, c] = F[img_b, c, p_b] for pixel ids
// g_b = img_b·H·W + p_b, with F: (images, C, H·W) — the original's FeatureDataset row lookup, on the device.
// Labels ride along: y[b] = label[g_b].
//   v1  grid-stride over B·C outputs, c fastest (coalesced writes; reads stride H·W apart).
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class GatherPixels
{
    // ---- CPU reference

    public static float[] Reference(float[] features, int channels, int pixelsPerImage, int[] ids)
    {
        var x = new float[ids.Length * channels];
        for (int b = 0; b < ids.Length; b++)
        for (int c = 0; c < channels; c++)
        {
            int img = ids[b] / pixelsPerImage, p = ids[b] % pixelsPerImage;
            x[b * channels + c] = features[((long)img * channels + c) * pixelsPerImage + p];
        }
        return x;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int rows, int channels, int pixelsPerImage, ArrayView<int> ids,
        ArrayView<float> features, ArrayView<byte> labels, ArrayView<float> x, ArrayView<int> y)
    {
        int total = rows * channels;
        for (int i = index; i < total; i += stride)
        {
            int b = i / channels;
            int c = i % channels;
            int g = ids[b];
            int img = g / pixelsPerImage;
            int p = g % pixelsPerImage;
            x[i] = features[((long)img * channels + c) * pixelsPerImage + p];
            if (c == 0)
            {
                y[b] = labels[g];
            }
        }
    }

    // ---- launcher

    public static void Forward(ComputeDevice dev, int rows, int channels, int pixelsPerImage, ArrayView<int> ids, ArrayView<float> features,
        ArrayView<byte> labels, ArrayView<float> x, ArrayView<int> y)
    {
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, ArrayView<int>,
            ArrayView<float>, ArrayView<byte>, ArrayView<float>, ArrayView<int>>(Kernel));
        int threads = dev.StrideThreads((long)rows * channels);
        k(threads, threads, rows, channels, pixelsPerImage, ids, features, labels, x, y);
    }
}
