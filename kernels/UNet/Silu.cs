// Silu — y = x·sigmoid(x) = x / (1 + e^−x) (torch.nn.SiLU). Used on the timestep embedding, which every
// ResBlock's emb_layers starts with; inside the torso SiLU is fused into GroupNorm.
//   v1  grid-stride element-wise. 1 read + 1 write per element.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class Silu
{
    // ---- CPU reference

    public static float[] Reference(float[] x) => x.Select(v => (float)(v / (1 + Math.Exp(-(double)v)))).ToArray();

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int n, ArrayView<float> x, ArrayView<float> y)
    {
        for (int i = index; i < n; i += stride)
        {
            float v = x[i];
            y[i] = v / (1f + XMath.Exp(-v));
        }
    }

    // ---- launcher

    public static void Forward(Tensor x, Tensor y)
    {
        if (x.Length != y.Length)
        {
            throw new ArgumentException($"silu: input {x.ShapeString} and output {y.ShapeString} differ");
        }
        var dev = x.Device;
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, ArrayView<float>, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(x.Length);
        k(threads, threads, x.Length, x.View, y.View);
    }
}
