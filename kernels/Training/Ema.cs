// Ema — guided-diffusion's update_ema: targ.detach().mul_(rate).add_(src, alpha=1 − rate) after every step, per EMA rate.
// In PyTorch's order of operations: ema ← fma(p, f32(1 − rate), ema·f32(rate)) — mul_ rounds, and add_ with alpha is a fused
// multiply-add in PyTorch 1.13's CPU kernel (checked bit for bit by tests/generators/make_adamw_fixture.py).
// The rate arrives as fp32; 1 − rate is taken, as in Python, in double from the decimal the rate was written as (its
// shortest round-trip form: 0.9999f → 0.9999), since 1 − (double)0.9999f differs from 1 − 0.9999 by 1.7e−4 relative.
//   v1  grid-stride element-wise. 2 reads + 1 write per parameter.
//   host  the CPU backend (HostBackend.Elementwise.cs): SIMD lanes over contiguous chunks; fused multiply-add and a
//         multiply, each rounded once, as RoundedMath's: the same bits.
using System.Globalization;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class Ema
{
    /// <summary>f32(1 − rate) with 1 − rate computed in double from the rate's decimal form, as Python computes it.</summary>
    public static float Complement(float rate) =>
        (float)(1 - double.Parse(rate.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture));

    // ---- CPU reference

    public static void Reference(float[] ema, float[] p, float rate)
    {
        float alpha = Complement(rate);
        for (int i = 0; i < ema.Length; i++)
        {
            ema[i] = MathF.FusedMultiplyAdd(p[i], alpha, ema[i] * rate);
        }
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int n, float rate, float alpha, ArrayView<float> ema, ArrayView<float> p)
    {
        for (int i = index; i < n; i += stride)
        {
            ema[i] = RoundedMath.Fma(p[i], alpha, RoundedMath.Mul(ema[i], rate));
        }
    }

    // ---- launcher

    /// <summary>ema ← rate·ema + (1 − rate)·p, in place.</summary>
    public static void Update(Tensor ema, Tensor p, float rate)
    {
        if (ema.Length != p.Length)
        {
            throw new ArgumentException($"ema: average {ema.ShapeString} and parameter {p.ShapeString} differ");
        }
        var dev = ema.Device;
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.Ema(dev, ema.View, p.View, rate, Complement(rate));
            return;
        }
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, float, float, ArrayView<float>,
            ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(ema.Length);
        k(threads, threads, ema.Length, rate, Complement(rate), ema.View, p.View);
    }
}
