// AttentionPool — the token plumbing of guided-diffusion's AttentionPool2d (the noisy-image classifier's head) and its
// adaptive average pool; the attention itself and the 1×1 projections are Attention and Conv2d.
//   Tokens:     x (N, C, H, W) → t (N, C, 1 + HW): t[n,c,0] = mean_p x[n,c,p], t[n,c,1+p] = x[n,c,p]; + pos (C, 1 + HW)
//               backward: dx[n,c,p] = dt[n,c,1+p] + dt[n,c,0]/HW (the positional embedding's gradient is not needed)
//   First:      y (N, C, T) → y[:, :, 0] (N, C); backward scatters into zeros
//   Mean:       x (N, C, H, W) → (N, C), the adaptive pool; backward dx = dm/HW
//   v1  one thread per output element (the mean loops over HW in order). The pooled level is small (8×8 at 256²):
//       microseconds next to the encoder's convolutions.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class AttentionPool
{
    // ---- CPU reference

    public static float[] TokensReference(float[] x, float[] pos, int n, int c, int hw)
    {
        var t = new float[n * c * (hw + 1)];
        for (int b = 0; b < n; b++)
        for (int ch = 0; ch < c; ch++)
        {
            int src = (b * c + ch) * hw, dst = (b * c + ch) * (hw + 1);
            float sum = 0f;
            for (int p = 0; p < hw; p++)
            {
                sum += x[src + p];
            }
            t[dst] = sum / hw + pos[ch * (hw + 1)];
            for (int p = 0; p < hw; p++)
            {
                t[dst + 1 + p] = x[src + p] + pos[ch * (hw + 1) + 1 + p];
            }
        }
        return t;
    }

    public static float[] TokensBackwardReference(float[] dt, int n, int c, int hw)
    {
        var dx = new float[n * c * hw];
        for (int i = 0; i < n * c; i++)
        for (int p = 0; p < hw; p++)
        {
            dx[i * hw + p] = dt[i * (hw + 1) + 1 + p] + dt[i * (hw + 1)] / hw;
        }
        return dx;
    }

    public static float[] MeanReference(float[] x, int rows, int hw)
    {
        var m = new float[rows];
        for (int i = 0; i < rows; i++)
        {
            float sum = 0f;
            for (int q = 0; q < hw; q++)
            {
                sum += x[i * hw + q];
            }
            m[i] = sum / hw;
        }
        return m;
    }

    // ---- GPU kernels (grid-stride)

    static void TokensKernel(Index1D index, int stride, int total, int hw, int channels, ArrayView<float> x, ArrayView<float> pos,
        ArrayView<float> t)
    {
        int tokens = hw + 1;
        for (int i = index; i < total; i += stride)
        {
            int row = i / tokens, p = i - row * tokens, ch = row % channels;
            float v;
            if (p == 0)
            {
                float sum = 0f;
                for (int q = 0; q < hw; q++)
                {
                    sum += x[row * hw + q];
                }
                v = sum / hw;
            }
            else
            {
                v = x[row * hw + p - 1];
            }
            t[i] = v + pos[ch * tokens + p];
        }
    }

    static void TokensBackwardKernel(Index1D index, int stride, int total, int hw, ArrayView<float> dt, ArrayView<float> dx)
    {
        for (int i = index; i < total; i += stride)
        {
            int row = i / hw, p = i - row * hw;
            dx[i] = dt[row * (hw + 1) + 1 + p] + dt[row * (hw + 1)] / hw;
        }
    }

    static void FirstKernel(Index1D index, int stride, int total, int tokens, ArrayView<float> y, ArrayView<float> first)
    {
        for (int i = index; i < total; i += stride)
        {
            first[i] = y[i * tokens];
        }
    }

    static void FirstBackwardKernel(Index1D index, int stride, int total, int tokens, ArrayView<float> dFirst, ArrayView<float> dy)
    {
        for (int i = index; i < total; i += stride)
        {
            dy[i] = i % tokens == 0 ? dFirst[i / tokens] : 0f;
        }
    }

    static void MeanKernel(Index1D index, int stride, int total, int hw, ArrayView<float> x, ArrayView<float> m)
    {
        for (int i = index; i < total; i += stride)
        {
            float sum = 0f;
            for (int q = 0; q < hw; q++)
            {
                sum += x[i * hw + q];
            }
            m[i] = sum / hw;
        }
    }

    static void MeanBackwardKernel(Index1D index, int stride, int total, int hw, ArrayView<float> dm, ArrayView<float> dx)
    {
        for (int i = index; i < total; i += stride)
        {
            dx[i] = dm[i / hw] / hw;
        }
    }

    // ---- launchers

    /// <summary>x (N, C, H, W), pos (C, 1 + HW) → t (N, C, 1, 1 + HW).</summary>
    public static void Tokens(Tensor x, Tensor pos, Tensor t)
    {
        int nc = x[0] * x[1], hw = x.Length / nc;
        if (pos.Length != x[1] * (hw + 1) || t.Length != nc * (hw + 1))
        {
            throw new ArgumentException($"attention pool tokens: x {x.ShapeString}, pos {pos.ShapeString} → {t.ShapeString}");
        }
        var dev = x.Device;
        var k = dev.Kernel(TokensKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, ArrayView<float>,
            ArrayView<float>, ArrayView<float>>(TokensKernel));
        int threads = dev.StrideThreads(t.Length);
        k(threads, threads, t.Length, hw, x[1], x.View, pos.View, t.View);
    }

    /// <summary>dt (N, C, 1, 1 + HW) → dx (N, C, H, W).</summary>
    public static void TokensBackward(Tensor dt, Tensor dx)
    {
        int hw = dx.Length / (dx[0] * dx[1]);
        Launch(TokensBackwardKernel, dx.Length, hw, dt, dx);
    }

    /// <summary>y (N, C, 1, T) → first (N, C, 1, 1): token 0.</summary>
    public static void First(Tensor y, Tensor first) => Launch(FirstKernel, first.Length, y.Length / first.Length, y, first);

    /// <summary>dFirst (N, C, 1, 1) → dy (N, C, 1, T), zero but at token 0.</summary>
    public static void FirstBackward(Tensor dFirst, Tensor dy) =>
        Launch(FirstBackwardKernel, dy.Length, dy.Length / dFirst.Length, dFirst, dy);

    /// <summary>x (N, C, H, W) → m (N, C, 1, 1): the spatial mean.</summary>
    public static void Mean(Tensor x, Tensor m) => Launch(MeanKernel, m.Length, x.Length / m.Length, x, m);

    /// <summary>dm (N, C, 1, 1) → dx (N, C, H, W).</summary>
    public static void MeanBackward(Tensor dm, Tensor dx) => Launch(MeanBackwardKernel, dx.Length, dx.Length / dm.Length, dm, dx);

    static void Launch(Action<Index1D, int, int, int, ArrayView<float>, ArrayView<float>> kernel, int total, int inner, Tensor a, Tensor b)
    {
        var dev = a.Device;
        var k = dev.Kernel(kernel, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>>(kernel));
        int threads = dev.StrideThreads(total);
        k(threads, threads, total, inner, a.View, b.View);
    }
}
