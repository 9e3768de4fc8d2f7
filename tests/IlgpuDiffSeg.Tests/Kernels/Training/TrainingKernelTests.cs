using System.Text.Json;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using K = IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>RoundedMath's fused multiply-add on the CPU accelerator (rounding to odd in double) against .NET's.</summary>
public sealed class RoundedMathTests
{
    /// <summary>
    /// Tolerance: exact. Random triples over wide exponents, the cancellations c ≈ −a·b (whose results are the product's
    /// rounding error, where a doubly rounded sum goes wrong), sums near fp32 midpoints, subnormal results, infinities, NaN.
    /// </summary>
    [Fact]
    public void FmaByRoundingToOddIsCorrectlyRounded()
    {
        var rng = new Random(5);
        float Any(int lo, int hi) => (rng.Next(2) == 0 ? -1 : 1) * (float)(rng.NextDouble() + 0.5) * MathF.Pow(2, rng.Next(lo, hi));
        int checkedCount = 0;
        void Check(float a, float b, float c)
        {
            float expected = MathF.FusedMultiplyAdd(a, b, c), actual = RoundedMath.FmaByRoundingToOdd(a, b, c);
            Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(actual) ||
                        (float.IsNaN(expected) && float.IsNaN(actual)), $"fma({a:R}, {b:R}, {c:R}) = {expected:R}, got {actual:R}");
            checkedCount++;
        }
        for (int i = 0; i < 300_000; i++)
        {
            float a = Any(-40, 40), b = Any(-40, 40);
            Check(a, b, Any(-90, 90));
            float product = a * b;
            Check(a, b, -product);
            Check(a, b, -product * (1 + MathF.Pow(2, -rng.Next(1, 30))));
            // A sum whose exact value is near the midpoint between two floats: c puts the rounded product half an ulp off.
            float ulp = MathF.BitIncrement(MathF.Abs(product)) - MathF.Abs(product);
            Check(a, b, ulp / 2 * (rng.Next(2) == 0 ? -1 : 1));
            Check(a * 1e-20f, b * 1e-20f, Any(-149, -120));
        }
        foreach (float special in new[] { float.PositiveInfinity, float.NegativeInfinity, float.NaN, float.MaxValue, float.Epsilon, 0f })
        {
            Check(special, 2f, 1f);
            Check(3f, 1f, special);
            Check(special, 0f, 1f);
        }
        Assert.True(checkedCount > 1_000_000);
    }
}

/// <summary>The optimizer and training-step kernels: AdamW, EMA, norms, scaling.</summary>
public abstract class TrainingKernelTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    /// <summary>The reductions' variant: the device's unless a subclass forces one.</summary>
    protected virtual Reduction NormReduction => Reduction.Auto;

    /// <summary>
    /// Three AdamW steps (weight decay, an unscaled fp16 gradient, zero, subnormal-squared and large gradients) against the
    /// C# transcription of PyTorch's formula. Tolerance: exact — the same fp32 operations, fused where PyTorch fuses them,
    /// on the CPU accelerator, the host path and CUDA.
    /// </summary>
    [Fact]
    public void AdamWMatchesTheFormulaBitForBit()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        const int n = 1031;
        var p = TestData.Uniform(n, 1);
        var m = new float[n];
        var v = new float[n];
        using var tp = device!.Upload(p, n);
        using var tm = device.Zeros(n);
        using var tv = device.Zeros(n);
        for (int t = 1; t <= 3; t++)
        {
            var g = TestData.Uniform(n, 10 + t, t == 2 ? 5e3f : 1e-2f);
            g[0] = 0;
            g[1] = 1e-30f;
            float scale = t == 2 ? 1f / 1024 : 1f;
            using var tg = device.Upload(g, n);
            AdamW.Step(plan!, tp, tg, tm, tv, t, lr: 1e-3 / t, weightDecay: 0.1, gradScale: scale);
            AdamW.Reference(p, g, m, v, AdamWStep.At(t, 1e-3 / t, 0.1, gradScale: scale));
            Assert.Equal(g, tg.ToArray());
        }
        TensorAssert.Close(m, tm.ToArray(), 0, 0, "adamw exp_avg");
        TensorAssert.Close(v, tv.ToArray(), 0, 0, "adamw exp_avg_sq");
        TensorAssert.Close(p, tp.ToArray(), 0, 0, "adamw parameters");
    }

    /// <summary>
    /// AdamW and the EMA against torch 1.13 (tests/fixtures/adamw, from tests/generators/make_adamw_fixture.py): three steps
    /// of guided-diffusion's loop. Tolerance: exact.
    /// </summary>
    [Fact]
    public void AdamWAndEmaMatchTorch()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        string dir = Path.Combine(Fixtures.Root, "adamw");
        using var meta = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "meta.json")));
        var root = meta.RootElement;
        double[] Doubles(string name) => root.GetProperty(name).EnumerateArray().Select(e => e.GetDouble()).ToArray();
        var lr = Doubles("lr");
        var scales = Doubles("grad_scale");
        var rates = Doubles("ema_rates");
        var betas = Doubles("betas");
        double wd = root.GetProperty("weight_decay").GetDouble(), eps = root.GetProperty("eps").GetDouble();
        var p0 = Npy.ReadFloat32(Path.Combine(dir, "p0.npy"), out _);
        int n = p0.Length;
        var grads = Npy.ReadFloat32(Path.Combine(dir, "grads.npy"), out _, 3, n);
        var expected = new[] { "p", "m", "v" }.ToDictionary(k => k, k => Npy.ReadFloat32(Path.Combine(dir, k + ".npy"), out _, 3, n));
        var emaExpected = Npy.ReadFloat32(Path.Combine(dir, "ema.npy"), out _, 3, rates.Length, n);
        var dev = device!;
        using var tp = dev.Upload(p0, n);
        using var tm = dev.Zeros(n);
        using var tv = dev.Zeros(n);
        var emas = rates.Select(_ => dev.Upload(p0, n)).ToArray();
        try
        {
            for (int t = 1; t <= 3; t++)
            {
                using var tg = dev.Upload(grads.AsSpan((t - 1) * n, n), n);
                AdamW.Step(plan!, tp, tg, tm, tv, t, lr[t - 1], wd, betas[0], betas[1], eps, (float)scales[t - 1]);
                for (int r = 0; r < rates.Length; r++)
                {
                    Ema.Update(emas[r], tp, (float)rates[r]);
                    TensorAssert.Close(emaExpected.AsSpan(((t - 1) * rates.Length + r) * n, n), emas[r].ToArray(), 0, 0,
                        $"ema {rates[r]} after step {t}");
                }
                TensorAssert.Close(expected["p"].AsSpan((t - 1) * n, n), tp.ToArray(), 0, 0, $"parameters after step {t}");
                TensorAssert.Close(expected["m"].AsSpan((t - 1) * n, n), tm.ToArray(), 0, 0, $"exp_avg after step {t}");
                TensorAssert.Close(expected["v"].AsSpan((t - 1) * n, n), tv.ToArray(), 0, 0, $"exp_avg_sq after step {t}");
            }
        }
        finally
        {
            foreach (var e in emas)
            {
                e.Dispose();
            }
        }
    }

    [Fact]
    public void EmaMatchesTheFormula()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (one product and one fused multiply-add). 1 − rate comes from the rate's decimal form.
        Assert.Equal((float)(1 - 0.9999), Ema.Complement(0.9999f));
        var ema = TestData.Uniform(999, 20);
        var p = TestData.Uniform(999, 21);
        using var te = device!.Upload(ema, 999);
        using var tp = device.Upload(p, 999);
        Ema.Update(te, tp, 0.999f);
        Ema.Reference(ema, p, 0.999f);
        TensorAssert.Close(ema, te.ToArray(), 0, 0, "ema");
    }

    [Fact]
    public void ScaleInPlace()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: exact (one fp32 product).
        var x = TestData.Uniform(333, 22, 1e4f);
        using var tx = device!.Upload(x, 3, 111);
        Scale.Apply(tx, 9.51693266e-07f);
        TensorAssert.Close(Scale.Reference(x, 9.51693266e-07f), tx.ToArray(), 0, 0, "scale");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(5000)]
    [InlineData(3 * 8192 + 5)] // v2: three full blocks and a short one
    [InlineData(65536 + 17)] // v1: a full chunk and a short one
    public void SumOfSquaresIsDeterministicAndClose(int n)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        // Tolerance: rtol 1e-6 (fp32 squares; v1 sums a chunk in double, v2 as a 256-way tree of 32-term fp32 runs).
        var x = TestData.Uniform(n, 23, 3f);
        using var tx = device!.Upload(x, n);
        using var into = device.Zeros(4);
        K.Norms.SumOfSquares(tx, into, 2, NormReduction);
        K.Norms.SumOfSquares(tx, into, 3, NormReduction);
        var slots = into.ToArray();
        double expected = K.Norms.SumOfSquaresReference(x);
        Assert.True(Math.Abs(slots[2] - expected) <= 1e-6 * expected, $"Σx² = {slots[2]:R}, expected {expected:R}");
        Assert.Equal(slots[2], slots[3]);
        Assert.Equal(0f, slots[0]);
    }

    [Fact]
    public void AllFiniteFlagsInfinitiesAndNaNs()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        const int n = 70_000;
        var x = TestData.Uniform(n, 24, 3e38f);
        using var tx = device!.Upload(x, n);
        using var into = device.Allocate(3);
        K.Norms.AllFinite(tx, into, 0, NormReduction);
        foreach (float bad in new[] { float.PositiveInfinity, float.NegativeInfinity, float.NaN })
        {
            var y = (float[])x.Clone();
            y[n - 3] = bad;
            using var ty = device.Upload(y, n);
            K.Norms.AllFinite(ty, into, 1, NormReduction);
            Assert.Equal(new[] { 1f, 0f }, into.ToArray()[..2]);
        }
        Assert.True(K.Norms.AllFiniteReference(x));
    }
}

[Collection("cpu")]
public sealed class TrainingKernelTestsCpu(CpuDeviceFixture f) : TrainingKernelTests(f.Plan);

/// <summary>The host SIMD plan: AdamW on the host's vector lanes.</summary>
[Collection("cpu")]
public sealed class TrainingKernelTestsCpuSimd(CpuSimdDeviceFixture f) : TrainingKernelTests(f.Plan);

/// <summary>The reductions' v2 (256-thread blocks) on the warp-32 simulator.</summary>
[Collection("cpu")]
public sealed class TrainingKernelTestsCpuWarp32(CpuWarp32DeviceFixture f) : TrainingKernelTests(f.Plan)
{
    protected override Reduction NormReduction => Reduction.Parallel;
}

[Collection("cuda")]
public sealed class TrainingKernelTestsCuda(CudaDeviceFixture f) : TrainingKernelTests(f.Plan);
