using System.Text;

namespace IlgpuDiffSeg.Tests;

/// <summary>
/// The tolerance policy of the tests. Element-wise ops: |actual − expected| ≤ atol + rtol·|expected|.
/// Reductions and convolutions: normalised mean squared error. Model parity: max |diff| / max |expected|.
/// Failures print the first offending pairs, the max difference and that difference as a fraction of the tolerance.
/// </summary>
public static class TensorAssert
{
    public static void Close(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double atol, double rtol, string what = "")
    {
        Assert.Equal(expected.Length, actual.Length);
        double worstRatio = 0, worstDiff = 0;
        int bad = 0;
        var sb = new StringBuilder();
        for (int i = 0; i < expected.Length; i++)
        {
            double diff = Math.Abs((double)actual[i] - expected[i]);
            double tol = atol + rtol * Math.Abs(expected[i]);
            if (double.IsNaN(actual[i]) != double.IsNaN(expected[i]))
            {
                diff = double.PositiveInfinity;
            }
            worstDiff = Math.Max(worstDiff, diff);
            worstRatio = Math.Max(worstRatio, diff / tol);
            if (diff > tol && bad++ < 5)
            {
                sb.AppendLine($"  [{i}] expected {expected[i]:R} got {actual[i]:R} (|diff| {diff:E3})");
            }
        }
        if (bad > 0)
        {
            Assert.Fail($"{what}: {bad} of {expected.Length} values outside atol {atol:E1} + rtol {rtol:E1}; " +
                        $"max |diff| {worstDiff:E3} = {worstRatio:F2}× tolerance\n{sb}");
        }
    }

    public static double Nmse(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = (double)actual[i] - expected[i];
            num += d * d;
            den += (double)expected[i] * expected[i];
        }
        return den == 0 ? num : num / den;
    }

    public static void NmseBelow(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double bound, string what = "")
    {
        Assert.Equal(expected.Length, actual.Length);
        double nmse = Nmse(expected, actual);
        if (!(nmse <= bound))
        {
            var sb = new StringBuilder();
            int shown = 0;
            for (int i = 0; i < expected.Length && shown < 5; i++)
            {
                if (Math.Abs(actual[i] - expected[i]) > 1e-3 * (1 + Math.Abs(expected[i])))
                {
                    sb.AppendLine($"  [{i}] expected {expected[i]:R} got {actual[i]:R}");
                    shown++;
                }
            }
            Assert.Fail($"{what}: NMSE {nmse:E3} > bound {bound:E1} ({nmse / bound:F2}× tolerance)\n{sb}");
        }
    }

    /// <summary>Max |actual − expected| over max |expected|, the fixture README's measure.</summary>
    public static double RelativeMaxError(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        double maxDiff = 0, maxRef = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            maxDiff = Math.Max(maxDiff, Math.Abs((double)actual[i] - expected[i]));
            maxRef = Math.Max(maxRef, Math.Abs((double)expected[i]));
        }
        return double.IsNaN(maxDiff) ? double.NaN : maxDiff / Math.Max(maxRef, 1e-30);
    }

    public static void RelativeMaxBelow(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double bound, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double rel = RelativeMaxError(expected, actual);
        Assert.True(rel <= bound, $"{what}: max|diff|/max|ref| = {rel:E3} > {bound:E1} ({rel / bound:F2}× tolerance)");
    }
}

/// <summary>Deterministic test data.</summary>
public static class TestData
{
    public static float[] Uniform(int count, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        var a = new float[count];
        for (int i = 0; i < a.Length; i++)
        {
            a[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        }
        return a;
    }
}
