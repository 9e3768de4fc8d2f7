// Dropout — nn.Dropout(p) in training mode (the ResBlock's out_layers, guided-diffusion's `dropout` flag): y = x·mask/(1 − p)
// with mask_i ~ Bernoulli(1 − p). No mask is stored: mask_i is a counter-based hash of (seed, i) — SplitMix64's output
// for the counter seed + i·γ (γ = 2⁶⁴/φ) — whose top 24 bits u_i keep element i when u_i ≥ ⌈p·2²⁴⌉, so the backward
// regenerates the forward's mask from the same seed. A caller derives one seed per layer and step.
// The scale is PyTorch's: 1/(1 − p) in fp32 (noise.div_(1 − p)), applied as x·(mask·scale). p = 1 drops everything.
//   v1  grid-stride element-wise. 1 read + 1 write per element; the hash is ~10 integer operations.
//   host  the CPU backend (HostBackend.Elementwise.cs): contiguous chunks, a few per core, in SIMD lanes where they apply.
// Forward and backward are the same kernel: y = x·m·scale, dx = dy·m·scale. Either may run in place.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class Dropout
{
    /// <summary>The 24-bit uniform value of element <paramref name="i"/> under <paramref name="seed"/> (SplitMix64's finaliser).</summary>
    public static uint Bits(ulong seed, int i)
    {
        ulong z = seed + (ulong)(uint)i * 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (uint)(z >> 40);
    }

    /// <summary>The smallest 24-bit value that keeps an element: ⌈p·2²⁴⌉ (0 keeps all, 2²⁴ none).</summary>
    public static uint Threshold(float p) => (uint)Math.Ceiling(p * (double)(1 << 24));

    /// <summary>The factor kept elements get: 1/(1 − p) in fp32, 0 when p = 1.</summary>
    public static float Scale(float p) => p >= 1f ? 0f : 1f / (float)(1.0 - p);

    // ---- CPU reference

    public static float[] Reference(float[] x, float p, ulong seed)
    {
        uint threshold = Threshold(p);
        float scale = Scale(p);
        var y = new float[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            y[i] = x[i] * (Bits(seed, i) >= threshold ? scale : 0f);
        }
        return y;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int n, ulong seed, uint threshold, float scale, ArrayView<float> x, ArrayView<float> y)
    {
        for (int i = index; i < n; i += stride)
        {
            y[i] = x[i] * (Bits(seed, i) >= threshold ? scale : 0f);
        }
    }

    // ---- launcher

    /// <summary>y = dropout(x) with drop probability <paramref name="p"/> and the mask of <paramref name="seed"/>; y may alias x.</summary>
    public static void Forward(Tensor x, Tensor y, float p, ulong seed) => Launch("dropout", x, y, p, seed);

    /// <summary>dx = dy·mask·scale with the forward's <paramref name="p"/> and <paramref name="seed"/>; dx may alias dy.</summary>
    public static void Backward(Tensor dy, Tensor dx, float p, ulong seed) => Launch("dropout backward", dy, dx, p, seed);

    static void Launch(string what, Tensor input, Tensor output, float p, ulong seed)
    {
        if (input.Length != output.Length || !(p >= 0f && p <= 1f))
        {
            throw new ArgumentException($"{what}: {input.ShapeString} → {output.ShapeString}, p = {p} (must be in [0, 1])");
        }
        var dev = input.Device;
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.Dropout(dev, input.View, output.View, seed, Threshold(p), Scale(p));
            return;
        }
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, ulong, uint, float, ArrayView<float>,
            ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(input.Length);
        k(threads, threads, input.Length, seed, Threshold(p), Scale(p), input.View, output.View);
    }
}
