// Scale — x ← x·factor in place: the fp16 loss scaling's unscaling of gradients (grad.mul_(2^−lg)) where it is not folded
// into AdamW, and any other uniform rescale. The factor is fp32, as PyTorch rounds a Python scalar for an fp32 tensor.
//   v1  grid-stride element-wise. 1 read + 1 write per element.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class Scale
{
    // ---- CPU reference

    public static float[] Reference(float[] x, float factor) => x.Select(v => v * factor).ToArray();

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int n, float factor, ArrayView<float> x)
    {
        for (int i = index; i < n; i += stride)
        {
            x[i] = x[i] * factor;
        }
    }

    // ---- launcher

    public static void Apply(Tensor x, float factor)
    {
        var dev = x.Device;
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, float, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(x.Length);
        k(threads, threads, x.Length, factor, x.View);
    }
}
