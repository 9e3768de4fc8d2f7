using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// Conv2d's backward references against central finite differences of the forward's reference (Conv2d.Reference): the
/// loss L = Σ g·y in double, perturbing one input, weight or bias at a time.
/// Tolerance: |fd − gradient| ≤ 2e-4. The forward is linear in each argument, so the difference quotient is exact up to
/// the fp32 rounding of the ≤ Cout·k² outputs a perturbation moves (each ≤ 27 in magnitude, rounded to 2⁻²⁴ relative):
/// ≤ 4e-5 over a step of 2 (h = 1). A tap of the wrong parity or a flipped kernel misses by 0.1 or more.
/// </summary>
public sealed class Conv2dBackwardReferenceTests
{
    [Theory]
    [InlineData(2, 3, 5, 7, 4, 3, 1)]
    [InlineData(2, 3, 7, 5, 4, 3, 2)] // stride 2, odd H and W
    [InlineData(1, 2, 6, 5, 3, 3, 2)] // stride 2, even H: the last input row reaches no output through ky = 2
    [InlineData(2, 3, 5, 7, 4, 1, 2)]
    [InlineData(1, 3, 4, 5, 2, 1, 1)]
    public void ReferencesMatchFiniteDifferences(int n, int cin, int h, int w, int cout, int k, int stride)
    {
        var s = ConvShape.Create(n, cin, h, w, cout, k, stride, k / 2);
        var x = TestData.Uniform(n * cin * h * w, 1);
        var wt = TestData.Uniform(cout * cin * k * k, 2);
        var b = TestData.Uniform(cout, 3);
        var g = TestData.Uniform(n * cout * s.Ho * s.Wo, 4);
        double Loss(float[] xs, float[] ws, float[] bs)
        {
            var y = Conv2d.Reference(xs, ws, bs, s);
            double loss = 0;
            for (int o = 0; o < y.Length; o++)
            {
                loss += (double)g[o] * y[o];
            }
            return loss;
        }
        var dx = Conv2d.BackwardInputReference(g, wt, s);
        var (dw, db) = Conv2d.BackwardWeightsReference(x, g, s);
        CheckFiniteDifferences("dx", x, dx, v => Loss(v, wt, b));
        CheckFiniteDifferences("dw", wt, dw, v => Loss(x, v, b));
        CheckFiniteDifferences("db", b, db, v => Loss(x, wt, v));
    }

    static void CheckFiniteDifferences(string what, float[] values, float[] gradient, Func<float[], double> loss)
    {
        var probe = (float[])values.Clone();
        for (int i = 0; i < values.Length; i++)
        {
            float plus = values[i] + 1f, minus = values[i] - 1f;
            probe[i] = plus;
            double up = loss(probe);
            probe[i] = minus;
            double down = loss(probe);
            probe[i] = values[i];
            double fd = (up - down) / ((double)plus - minus);
            Assert.True(Math.Abs(fd - gradient[i]) <= 2e-4, $"{what}[{i}]: finite difference {fd:R}, reference {gradient[i]:R}");
        }
    }
}
