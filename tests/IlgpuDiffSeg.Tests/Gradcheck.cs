using System.Text;

namespace IlgpuDiffSeg.Tests;

/// <summary>
/// Central finite differences, the oracle of every backward reference: the gradient of a scalar loss L(θ) = Σ dy·f(θ) is
/// compared with (L(θ + h·e_i) − L(θ − h·e_i)) / 2h, one coordinate at a time.
/// </summary>
public static class Gradcheck
{
    public static double[] Numeric(double[] at, Func<double[], double> loss, double h)
    {
        var grad = new double[at.Length];
        var probe = (double[])at.Clone();
        for (int i = 0; i < at.Length; i++)
        {
            probe[i] = at[i] + h;
            double up = loss(probe);
            probe[i] = at[i] - h;
            double down = loss(probe);
            probe[i] = at[i];
            grad[i] = (up - down) / (2 * h);
        }
        return grad;
    }

    /// <summary>Σ dy·y.</summary>
    public static double Dot(double[] dy, double[] y)
    {
        double acc = 0;
        for (int i = 0; i < y.Length; i++)
        {
            acc += dy[i] * y[i];
        }
        return acc;
    }

    public static double Dot(float[] dy, float[] y)
    {
        double acc = 0;
        for (int i = 0; i < y.Length; i++)
        {
            acc += (double)dy[i] * y[i];
        }
        return acc;
    }

    public static double[] ToDouble(float[] x) => Array.ConvertAll(x, v => (double)v);

    public static float[] ToFloat(double[] x) => Array.ConvertAll(x, v => (float)v);

    /// <summary>|analytic − numeric| ≤ atol + rtol·|numeric| for every coordinate; the worst pairs on failure.</summary>
    public static void Matches(double[] numeric, double[] analytic, double atol, double rtol, string what)
    {
        Assert.Equal(numeric.Length, analytic.Length);
        var sb = new StringBuilder();
        int bad = 0;
        double worst = 0;
        for (int i = 0; i < numeric.Length; i++)
        {
            double diff = Math.Abs(analytic[i] - numeric[i]), tol = atol + rtol * Math.Abs(numeric[i]);
            worst = Math.Max(worst, diff / tol);
            if (!(diff <= tol) && bad++ < 5)
            {
                sb.AppendLine($"  [{i}] numeric {numeric[i]:R} analytic {analytic[i]:R}");
            }
        }
        Assert.True(bad == 0, $"{what}: {bad} of {numeric.Length} gradients off (worst {worst:F2}× tolerance)\n{sb}");
    }
}
