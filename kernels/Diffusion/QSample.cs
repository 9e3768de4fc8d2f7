// QSample — the forward diffusion x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (gaussian_diffusion.q_sample), with the two
// coefficients computed in float64 and rounded to float32 on the host, as guided-diffusion's _extract_into_tensor does.
// Writes several timesteps at once: x_t for step s lands in batch slot s, so one UNet call runs every step.
// ε is shared by every step (ddpm-segmentation's share_noise) or given per step; x0 likewise (a training batch: one
// image and one step per slot).
//   v1  grid-stride element-wise. x0, ε: (C, H, W) or (S, C, H, W); y: (S, C, H, W); coefficients: (S, 2).
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class QSample
{
    // ---- CPU reference

    /// <summary>x0 and ε each (C, H, W) shared by every step or (S, C, H, W); <paramref name="size"/> = C·H·W (default: the
    /// shorter of the two).</summary>
    public static float[] Reference(float[] x0, float[] noise, float[] coefficients, int size = 0)
    {
        int steps = coefficients.Length / 2;
        size = size > 0 ? size : Math.Min(x0.Length, noise.Length);
        var y = new float[steps * size];
        for (int s = 0; s < steps; s++)
        for (int i = 0; i < size; i++)
        {
            float a = coefficients[2 * s] * x0[x0.Length == size ? i : s * size + i];
            float b = coefficients[2 * s + 1] * noise[noise.Length == size ? i : s * size + i];
            y[s * size + i] = a + b;
        }
        return y;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int perStep, int steps, int x0PerStep, int noisePerStep, ArrayView<float> x0,
        ArrayView<float> noise, ArrayView<float> coefficients, ArrayView<float> y)
    {
        int total = perStep * steps;
        for (int o = index; o < total; o += stride)
        {
            int s = o / perStep;
            int i = o % perStep;
            // Two rounded products then a rounded sum, as PyTorch evaluates coef1·x + coef2·ε.
            float a = coefficients[2 * s] * x0[x0PerStep != 0 ? o : i];
            float b = coefficients[2 * s + 1] * noise[noisePerStep != 0 ? o : i];
            y[o] = a + b;
        }
    }

    // ---- launcher

    /// <summary>
    /// x0, ε: (C, H, W) shared by every step or (S, C, H, W) one per step; <paramref name="coefficients"/>: (S, 2) =
    /// (√ᾱ_t, √(1−ᾱ_t)); y: (S, C, H, W).
    /// </summary>
    public static void Forward(Tensor x0, Tensor noise, Tensor coefficients, Tensor y)
    {
        int steps = coefficients.Length / 2, size = y.Length / Math.Max(steps, 1);
        if ((x0.Length != size && x0.Length != y.Length) || (noise.Length != size && noise.Length != y.Length) || y.Length != steps * size)
        {
            throw new ArgumentException($"q_sample: x0 {x0.ShapeString}, noise {noise.ShapeString}, {steps} steps → {y.ShapeString}");
        }
        var dev = x0.Device;
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, int, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(y.Length);
        k(threads, threads, size, steps, x0.Length == size ? 0 : 1, noise.Length == size ? 0 : 1, x0.View, noise.View, coefficients.View,
            y.View);
    }
}
