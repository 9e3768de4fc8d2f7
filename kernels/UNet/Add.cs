// Add — y = a + b, element-wise (residual connections that are not fused into a conv or GEMM epilogue), and
// its broadcast form y[n,c,:] = x[n,c,:] + b[n,c] (a ResBlock without scale-shift adds emb_out that way).
//   v1  grid-stride element-wise. 2 reads + 1 write per element.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class Add
{
    // ---- CPU reference

    public static float[] Reference(float[] a, float[] b) => a.Zip(b, (p, q) => p + q).ToArray();

    public static float[] ChannelBiasReference(float[] x, float[] bias, int spatial) =>
        x.Select((v, i) => v + bias[i / spatial]).ToArray();

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int n, ArrayView<float> a, ArrayView<float> b, ArrayView<float> y)
    {
        for (int i = index; i < n; i += stride)
        {
            y[i] = a[i] + b[i];
        }
    }

    static void ChannelBiasKernel(Index1D index, int stride, int n, int spatial, ArrayView<float> x, ArrayView<float> bias,
        ArrayView<float> y)
    {
        for (int i = index; i < n; i += stride)
        {
            y[i] = x[i] + bias[i / spatial];
        }
    }

    // ---- launcher

    public static void Forward(Tensor a, Tensor b, Tensor y)
    {
        if (a.Length != b.Length || a.Length != y.Length)
        {
            throw new ArgumentException($"add: shapes {a.ShapeString} + {b.ShapeString} → {y.ShapeString} differ");
        }
        var dev = a.Device;
        var k = dev.Kernel(Kernel, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, int, ArrayView<float>, ArrayView<float>,
            ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(a.Length);
        k(threads, threads, a.Length, a.View, b.View, y.View);
    }

    /// <summary>y[n, c, ...] = x[n, c, ...] + bias[n, c]; y may alias x.</summary>
    public static void ChannelBias(Tensor x, Tensor bias, Tensor y)
    {
        int nc = x[0] * x[1];
        if (bias.Length != nc || y.Length != x.Length)
        {
            throw new ArgumentException($"add channel bias: {x.ShapeString} + {bias.ShapeString} → {y.ShapeString}");
        }
        var dev = x.Device;
        var k = dev.Kernel(ChannelBiasKernel, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>, ArrayView<float>>(ChannelBiasKernel));
        int threads = dev.StrideThreads(x.Length);
        k(threads, threads, x.Length, x.Length / nc, x.View, bias.View, y.View);
    }
}
