// AreaResize — F.interpolate(x, size, mode="area"), i.e. adaptive average pooling: output (i, j) is the mean of input rows
// [⌊i·H/h⌋, ⌈(i+1)·H/h⌉) and columns [⌊j·W/w⌋, ⌈(j+1)·W/w⌉) — for an integer ratio f the f×f block. How
// super_res_train.py makes a super-resolution model's low-resolution input from its training batch.
// The sum runs rows then columns in fp32, then is divided by the row and then the column count, as ATen's CPU kernel does.
//   v1  grid-stride over outputs, each summing its window (f² reads). Once per training batch: negligible.
// x: (N, C, H, W) → y: (N, C, h, w).
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class AreaResize
{
    static int Start(int i, int inSize, int outSize) => i * inSize / outSize;

    static int End(int i, int inSize, int outSize) => ((i + 1) * inSize + outSize - 1) / outSize;

    // ---- CPU reference

    public static float[] Reference(float[] x, int planes, int h, int w, int ho, int wo)
    {
        var y = new float[planes * ho * wo];
        for (int p = 0; p < planes; p++)
        for (int i = 0; i < ho; i++)
        for (int j = 0; j < wo; j++)
        {
            int r0 = Start(i, h, ho), r1 = End(i, h, ho), c0 = Start(j, w, wo), c1 = End(j, w, wo);
            float sum = 0f;
            for (int r = r0; r < r1; r++)
            for (int c = c0; c < c1; c++)
            {
                sum += x[(p * h + r) * w + c];
            }
            y[(p * ho + i) * wo + j] = sum / (r1 - r0) / (c1 - c0);
        }
        return y;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int total, int h, int w, int ho, int wo, ArrayView<float> x, ArrayView<float> y)
    {
        for (int o = index; o < total; o += stride)
        {
            int j = o % wo, i = o / wo % ho, p = o / (wo * ho);
            int r0 = Start(i, h, ho), r1 = End(i, h, ho), c0 = Start(j, w, wo), c1 = End(j, w, wo);
            float sum = 0f;
            for (int r = r0; r < r1; r++)
            {
                for (int c = c0; c < c1; c++)
                {
                    sum += x[(p * h + r) * w + c];
                }
            }
            y[o] = sum / (r1 - r0) / (c1 - c0);
        }
    }

    // ---- launcher

    /// <summary>x (N, C, H, W) → y (N, C, h, w), h ≤ H and w ≤ W.</summary>
    public static void Forward(Tensor x, Tensor y)
    {
        int planes = x[0] * x[1], h = x[2], w = x[3], ho = y[2], wo = y[3];
        if (y[0] * y[1] != planes || ho > h || wo > w || ho <= 0 || wo <= 0)
        {
            throw new ArgumentException($"area resize: {x.ShapeString} → {y.ShapeString}");
        }
        var dev = x.Device;
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, int, int, ArrayView<float>,
            ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(y.Length);
        k(threads, threads, y.Length, h, w, ho, wo, x.View, y.View);
    }
}
