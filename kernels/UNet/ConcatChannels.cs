// ConcatChannels — torch.cat([a, b], dim=1) for (N, C, ...) tensors: the UNet decoder's [h, skip] input.
//   v1  grid-stride over outputs. 1 read + 1 write per element.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class ConcatChannels
{
    // ---- CPU reference

    public static float[] Reference(float[] a, int ca, float[] b, int cb, int n, int spatial)
    {
        var y = new float[n * (ca + cb) * spatial];
        for (int i = 0; i < n; i++)
        {
            Array.Copy(a, i * ca * spatial, y, i * (ca + cb) * spatial, ca * spatial);
            Array.Copy(b, i * cb * spatial, y, (i * (ca + cb) + ca) * spatial, cb * spatial);
        }
        return y;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int n, int ca, int cb, int spatial, ArrayView<float> a, ArrayView<float> b,
        ArrayView<float> y)
    {
        int c = ca + cb;
        int total = n * c * spatial;
        for (int o = index; o < total; o += stride)
        {
            int p = o % spatial;
            int ch = o / spatial % c;
            int i = o / (spatial * c);
            y[o] = ch < ca ? a[(i * ca + ch) * spatial + p] : b[(i * cb + ch - ca) * spatial + p];
        }
    }

    // ---- launcher

    /// <summary>[a, b] along channels, in a new tensor the caller owns.</summary>
    public static Tensor Forward(Tensor a, Tensor b)
    {
        var y = a.Device.Allocate([a[0], a[1] + b[1], .. a.Shape[2..]]);
        Forward(a, b, y);
        return y;
    }

    public static void Forward(Tensor a, Tensor b, Tensor y)
    {
        int n = a[0], ca = a[1], cb = b[1], spatial = a.Length / (n * ca);
        if (b[0] != n || b.Length / (n * cb) != spatial || y.Length != n * (ca + cb) * spatial || y[1] != ca + cb)
        {
            throw new ArgumentException($"concat: {a.ShapeString} ++ {b.ShapeString} → {y.ShapeString}");
        }
        var dev = a.Device;
        var k = dev.Kernel(Kernel, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, int,
            ArrayView<float>, ArrayView<float>, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(y.Length);
        k(threads, threads, n, ca, cb, spatial, a.View, b.View, y.View);
    }
}
