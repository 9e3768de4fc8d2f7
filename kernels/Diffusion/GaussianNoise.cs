// GaussianNoise — standard normal values drawn on the device from a counter, so that a value depends only on (seed,
// stream, sample, element): a sample's noise is the same whatever batch, shard or device draws it. Per sample a key
// h = H(seed ⊕ H(stream ⊕ H(sample ⊕ φ))), with H a 32-bit integer mixer (lowbias32); pair p of the sample's elements
// takes a = H(h ⊕ H(2p)), b = H(h ⊕ H(2p + 1)), u₁ = ((a ≫ 8) + 1)·2⁻²⁴ ∈ (0, 1], u₂ = (b ≫ 8)·2⁻²⁴ ∈ [0, 1), and
// Box–Muller gives r·cos θ (element 2p) and r·sin θ (element 2p + 1), r = √(−2 ln u₁), θ = 2π·u₂ − π.
//   v1  grid-stride over pairs, both values written. Compute-bound on a few transcendental ops per pair; the integer
//       hashing is exact everywhere, so devices differ only by their log, sqrt, sin and cos (a few ulp).
// y: (N, ...) with M = y.Length / N elements per sample; samples first .. first + N − 1.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class GaussianNoise
{
    const uint Golden = 0x9E3779B9u;
    const float TwoPi = 6.28318530717958647692f;
    const float Pi = 3.14159265358979323846f;
    const float InvTwo24 = 1f / 16777216f;

    /// <summary>lowbias32: a 32-bit integer hash with low bias (xor-shift-multiply, two rounds).</summary>
    static uint Hash(uint x)
    {
        x ^= x >> 16;
        x *= 0x7FEB352Du;
        x ^= x >> 15;
        x *= 0x846CA68Bu;
        x ^= x >> 16;
        return x;
    }

    static uint SampleKey(uint seed, uint stream, uint sample) => Hash(seed ^ Hash(stream ^ Hash(sample ^ Golden)));

    // ---- CPU reference

    /// <summary>The values of samples first .. first + n − 1, <paramref name="perSample"/> each, in plain loops.</summary>
    public static float[] Reference(int seed, int stream, int first, int n, int perSample)
    {
        var y = new float[n * perSample];
        for (int s = 0; s < n; s++)
        {
            uint h = SampleKey((uint)seed, (uint)stream, (uint)(first + s));
            for (int e = 0; e < perSample; e++)
            {
                uint pair = (uint)(e / 2);
                uint a = Hash(h ^ Hash(2 * pair)), b = Hash(h ^ Hash(2 * pair + 1));
                float u1 = ((a >> 8) + 1) * InvTwo24, u2 = (b >> 8) * InvTwo24;
                float r = MathF.Sqrt(-2f * MathF.Log(u1)), theta = TwoPi * u2 - Pi;
                y[s * perSample + e] = e % 2 == 0 ? r * MathF.Cos(theta) : r * MathF.Sin(theta);
            }
        }
        return y;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int pairsPerSample, int perSample, int n, uint seed, uint stream, uint first,
        ArrayView<float> y)
    {
        int total = pairsPerSample * n;
        for (int i = index; i < total; i += stride)
        {
            int s = i / pairsPerSample, pair = i - s * pairsPerSample;
            uint h = SampleKey(seed, stream, first + (uint)s);
            uint a = Hash(h ^ Hash(2 * (uint)pair)), b = Hash(h ^ Hash(2 * (uint)pair + 1));
            float u1 = ((a >> 8) + 1) * InvTwo24, u2 = (b >> 8) * InvTwo24;
            float r = XMath.Sqrt(-2f * XMath.Log(u1)), theta = TwoPi * u2 - Pi;
            int e = s * perSample + 2 * pair;
            y[e] = r * XMath.Cos(theta);
            if (2 * pair + 1 < perSample)
            {
                y[e + 1] = r * XMath.Sin(theta);
            }
        }
    }

    // ---- launcher

    /// <summary>Fills <paramref name="y"/> (N, ...) with the draws of stream <paramref name="stream"/> for samples
    /// <paramref name="first"/> .. first + N − 1.</summary>
    public static void Fill(Tensor y, int seed, int stream, int first)
    {
        int n = y[0], perSample = y.Length / n, pairs = (perSample + 1) / 2;
        var dev = y.Device;
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, uint, uint, uint,
            ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads((long)pairs * n);
        k(threads, threads, pairs, perSample, n, (uint)seed, (uint)stream, (uint)first, y.View);
    }
}
