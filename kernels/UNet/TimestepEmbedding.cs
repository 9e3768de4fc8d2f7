// TimestepEmbedding — guided-diffusion nn.timestep_embedding(t, dim, max_period=10000):
//   freq_i = exp(−ln(max_period)·i / half) (fp32, as PyTorch rounds it), arg = float(t)·freq_i,
//   emb = [cos(arg_0..half−1), sin(arg_0..half−1)] — cos first — and a trailing 0 when dim is odd.
// cos/sin/exp are evaluated in double and rounded once: arguments reach ~1000 rad, where the GPU's
// approximate sin/cos lose digits.
//   v1  one element per thread. N·dim outputs, negligible cost.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class TimestepEmbedding
{
    // ---- CPU reference

    public static float[] Reference(float[] t, int dim, float maxPeriod = 10000f)
    {
        int half = dim / 2;
        var y = new float[t.Length * dim];
        for (int n = 0; n < t.Length; n++)
        for (int i = 0; i < half; i++)
        {
            float freq = (float)Math.Exp((float)(-Math.Log(maxPeriod)) * (float)i / half);
            float arg = t[n] * freq;
            y[n * dim + i] = (float)Math.Cos(arg);
            y[n * dim + half + i] = (float)Math.Sin(arg);
        }
        return y;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int dim, float negLogMaxPeriod, ArrayView<float> t, ArrayView<float> y)
    {
        int half = dim / 2;
        int n = index / dim;
        int i = index % dim;
        if (i >= 2 * half)
        {
            y[index] = 0f;
            return;
        }
        int f = i < half ? i : i - half;
        float scaled = negLogMaxPeriod * f;
        float freq = (float)Math.Exp(scaled / half);
        float arg = t[n] * freq;
        y[index] = i < half ? (float)Math.Cos(arg) : (float)Math.Sin(arg);
    }

    // ---- launcher

    /// <summary>t: (N) timesteps as floats → y: (N, dim).</summary>
    public static void Forward(Tensor t, Tensor y, float maxPeriod = 10000f)
    {
        int dim = y[-1];
        if (y.Length != t.Length * dim)
        {
            throw new ArgumentException($"timestep_embedding: t {t.ShapeString} → {y.ShapeString}");
        }
        var dev = t.Device;
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, float, ArrayView<float>,
            ArrayView<float>>(Kernel));
        k(y.Length, dim, (float)-Math.Log(maxPeriod), t.View, y.View);
    }
}
