// Add — y = a + b, element-wise (residual connections that are not fused into a conv or GEMM epilogue).
//   v1  grid-stride element-wise. 2 reads + 1 write per element.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class Add
{
    // ---- CPU reference

    public static float[] Reference(float[] a, float[] b) => a.Zip(b, (p, q) => p + q).ToArray();

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int n, ArrayView<float> a, ArrayView<float> b, ArrayView<float> y)
    {
        for (int i = index; i < n; i += stride)
        {
            y[i] = a[i] + b[i];
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
        var k = dev.Kernel("add", acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, int, ArrayView<float>, ArrayView<float>,
            ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(a.Length);
        k(threads, threads, a.Length, a.View, b.View, y.View);
    }
}
