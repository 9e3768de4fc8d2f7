// Silu — y = x·sigmoid(x) = x / (1 + e^−x) (torch.nn.SiLU). Used on the timestep embedding, which every
// ResBlock's emb_layers starts with; inside the torso SiLU is fused into GroupNorm.
//   v1  grid-stride element-wise. 1 read + 1 write per element.
//   host  the CPU backend (HostBackend.Elementwise.cs): contiguous chunks, a few per core, in SIMD lanes where they apply.
// Backward: dx = dy·SiLU'(x), SiLU'(x) = σ(x)·(1 + x·(1 − σ(x))). 2 reads + 1 write per element; dx may alias dy.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class Silu
{
    // ---- CPU reference

    public static float[] Reference(float[] x) => x.Select(v => (float)Reference((double)v)).ToArray();

    public static double Reference(double x) => x / (1 + Math.Exp(-x));

    /// <summary>SiLU'(x) in double.</summary>
    public static double DerivativeReference(double x)
    {
        double sig = 1 / (1 + Math.Exp(-x));
        return sig * (1 + x * (1 - sig));
    }

    public static float[] BackwardReference(float[] x, float[] dy) => x.Select((v, i) => (float)(dy[i] * DerivativeReference(v))).ToArray();

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int n, ArrayView<float> x, ArrayView<float> y)
    {
        for (int i = index; i < n; i += stride)
        {
            float v = x[i];
            y[i] = v / (1f + XMath.Exp(-v));
        }
    }

    static void BackwardKernel(Index1D index, int stride, int n, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dx)
    {
        for (int i = index; i < n; i += stride)
        {
            float v = x[i];
            float sig = 1f / (1f + XMath.Exp(-v));
            dx[i] = dy[i] * (sig * (1f + v * (1f - sig)));
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
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.Silu(dev, x.View, y.View);
            return;
        }
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, ArrayView<float>, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(x.Length);
        k(threads, threads, x.Length, x.View, y.View);
    }

    /// <summary>dx = dy·SiLU'(x); dx may alias dy.</summary>
    public static void Backward(Tensor x, Tensor dy, Tensor dx)
    {
        if (x.Length != dy.Length || x.Length != dx.Length)
        {
            throw new ArgumentException($"silu backward: input {x.ShapeString}, dy {dy.ShapeString}, dx {dx.ShapeString} differ");
        }
        var dev = x.Device;
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.SiluBackward(dev, x.View, dy.View, dx.View);
            return;
        }
        var k = dev.Kernel(BackwardKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, ArrayView<float>, ArrayView<float>,
            ArrayView<float>>(BackwardKernel));
        int threads = dev.StrideThreads(x.Length);
        k(threads, threads, x.Length, x.View, dy.View, dx.View);
    }
}
