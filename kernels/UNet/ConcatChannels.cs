// ConcatChannels — torch.cat([a, b], dim=1) for (N, C, ...) tensors: the UNet decoder's [h, skip] input.
//   v1  grid-stride over outputs. 1 read + 1 write per element.
//   host  the CPU backend (HostBackend.Elementwise.cs): contiguous chunks, a few per core, in SIMD lanes where they apply.
// Backward: the split of dy into da (its first Ca channels) and db (the rest); grid-stride over dy, 1 read + 1 write each.
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

    public static (float[] Da, float[] Db) BackwardReference(float[] dy, int ca, int cb, int n, int spatial)
    {
        var da = new float[n * ca * spatial];
        var db = new float[n * cb * spatial];
        for (int i = 0; i < n; i++)
        {
            Array.Copy(dy, i * (ca + cb) * spatial, da, i * ca * spatial, ca * spatial);
            Array.Copy(dy, (i * (ca + cb) + ca) * spatial, db, i * cb * spatial, cb * spatial);
        }
        return (da, db);
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

    static void BackwardKernel(Index1D index, int stride, int n, int ca, int cb, int spatial, ArrayView<float> dy, ArrayView<float> da,
        ArrayView<float> db)
    {
        int c = ca + cb;
        int total = n * c * spatial;
        for (int o = index; o < total; o += stride)
        {
            int p = o % spatial;
            int ch = o / spatial % c;
            int i = o / (spatial * c);
            float g = dy[o];
            if (ch < ca)
            {
                da[(i * ca + ch) * spatial + p] = g;
            }
            else
            {
                db[(i * cb + ch - ca) * spatial + p] = g;
            }
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

    public static void Forward(Tensor a, Tensor b, Tensor y) => Launch(a, b, y, forward: true);

    /// <summary>dy (N, Ca + Cb, ...) split into da (N, Ca, ...) and db (N, Cb, ...).</summary>
    public static void Backward(Tensor dy, Tensor da, Tensor db) => Launch(da, db, dy, forward: false);

    /// <summary>The forward fills <paramref name="whole"/> = [a, b] along channels; the backward splits it into a and b.</summary>
    static void Launch(Tensor a, Tensor b, Tensor whole, bool forward)
    {
        int n = a[0], ca = a[1], cb = b[1], spatial = a.Length / (n * ca);
        if (b[0] != n || b.Length / (n * cb) != spatial || whole.Length != n * (ca + cb) * spatial || whole[1] != ca + cb)
        {
            throw new ArgumentException(forward
                ? $"concat: {a.ShapeString} ++ {b.ShapeString} → {whole.ShapeString}"
                : $"concat backward: {whole.ShapeString} → {a.ShapeString} ++ {b.ShapeString}");
        }
        var dev = a.Device;
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.Concat(dev, a.View, b.View, whole.View, n, ca, cb, spatial, forward);
            return;
        }
        int threads = dev.StrideThreads(whole.Length);
        if (forward)
        {
            var k = dev.Kernel(Kernel, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, int,
                ArrayView<float>, ArrayView<float>, ArrayView<float>>(Kernel));
            k(threads, threads, n, ca, cb, spatial, a.View, b.View, whole.View);
        }
        else
        {
            var k = dev.Kernel(BackwardKernel, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, int,
                ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardKernel));
            k(threads, threads, n, ca, cb, spatial, whole.View, a.View, b.View);
        }
    }
}
