using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Classifier;

/// <summary>
/// Finite-difference check of the trainer's gradients: every parameter of every member, against central differences
/// (h = 1e-5) of a plain double-precision forward of the pixel classifier in training mode.
/// Tolerance: |analytic − numeric| ≤ 2e-4 + 2e-3·|numeric| (the analytic side is fp32).
/// </summary>
public abstract class GradientCheckTests(ExecutionPlan? plan)
{
    readonly ComputeDevice? device = plan?.Device;

    /// <summary>Loss of one member: Linear→ReLU→BN→Linear→ReLU→BN→Linear, BN with batch statistics, mean cross-entropy.</summary>
    static double Loss(double[] p, MlpLayout L, float[] x, int[] y, int rows)
    {
        double[] Layer(double[] input, int inF, int outF, int w, int b, bool relu)
        {
            var o = new double[rows * outF];
            for (int r = 0; r < rows; r++)
            for (int j = 0; j < outF; j++)
            {
                double acc = p[b + j];
                for (int k = 0; k < inF; k++)
                {
                    acc += input[r * inF + k] * p[w + j * inF + k];
                }
                o[r * outF + j] = relu ? Math.Max(acc, 0) : acc;
            }
            return o;
        }
        double[] Norm(double[] a, int f, int g, int be)
        {
            var o = new double[a.Length];
            for (int j = 0; j < f; j++)
            {
                double mean = 0, var = 0;
                for (int r = 0; r < rows; r++)
                {
                    mean += a[r * f + j] / rows;
                }
                for (int r = 0; r < rows; r++)
                {
                    var += Math.Pow(a[r * f + j] - mean, 2) / rows;
                }
                for (int r = 0; r < rows; r++)
                {
                    o[r * f + j] = (a[r * f + j] - mean) / Math.Sqrt(var + 1e-5) * p[g + j] + p[be + j];
                }
            }
            return o;
        }
        var h1 = Norm(Layer(x.Select(v => (double)v).ToArray(), L.In, L.Hidden1, L.W1, L.B1, true), L.Hidden1, L.Gamma1, L.Beta1);
        var h2 = Norm(Layer(h1, L.Hidden1, L.Hidden2, L.W2, L.B2, true), L.Hidden2, L.Gamma2, L.Beta2);
        var logits = Layer(h2, L.Hidden2, L.Classes, L.W3, L.B3, false);
        double loss = 0;
        for (int r = 0; r < rows; r++)
        {
            var row = logits.Skip(r * L.Classes).Take(L.Classes).ToArray();
            double max = row.Max();
            loss += max + Math.Log(row.Sum(v => Math.Exp(v - max))) - row[y[r]];
        }
        return loss / rows;
    }

    [Fact]
    public void EveryGradientMatchesFiniteDifferences()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var dev = device!;
        var layout = new MlpLayout(2, 7, 6, 4, 3);
        const int rows = 12;
        using var ensemble = PixelEnsemble.CreateRandom(plan!, layout, seed: 5);
        // Weights large enough that every layer matters (the original's N(0, 0.02) makes gradients tiny).
        var parameters = TestData.Uniform(layout.Members * layout.Size, 21, 0.8f);
        for (int m = 0; m < layout.Members; m++)
        {
            for (int j = 0; j < layout.Hidden1; j++)
            {
                parameters[m * layout.Size + layout.Gamma1 + j] += 1f;
            }
            for (int j = 0; j < layout.Hidden2; j++)
            {
                parameters[m * layout.Size + layout.Gamma2 + j] += 1f;
            }
        }
        ensemble.Parameters.View.CopyFromCPU(parameters);
        var x = TestData.Uniform(rows * layout.In, 22, 2f);
        var y = Enumerable.Range(0, rows).Select(i => i * 7 % layout.Classes).ToArray();
        using var dx = dev.Upload(x, x.Length);
        using var dy = dev.Accelerator.Allocate1D(y);
        using var trainer = new EnsembleTrainer(ensemble, rows);
        trainer.Step(dx.View, dy.View, epoch: 0);
        var grads = trainer.Gradients();
        var losses = trainer.LastLoss();

        const double h = 1e-5;
        for (int m = 0; m < layout.Members; m++)
        {
            var p = parameters.Skip(m * layout.Size).Take(layout.Size).Select(v => (double)v).ToArray();
            Assert.Equal(Loss(p, layout, x, y, rows), losses[m], 1e-4);
            var numeric = new float[layout.Size];
            for (int i = 0; i < layout.Size; i++)
            {
                double keep = p[i];
                p[i] = keep + h;
                double up = Loss(p, layout, x, y, rows);
                p[i] = keep - h;
                double down = Loss(p, layout, x, y, rows);
                p[i] = keep;
                numeric[i] = (float)((up - down) / (2 * h));
            }
            TensorAssert.Close(numeric, grads.AsSpan(m * layout.Size, layout.Size), 2e-4, 2e-3, $"member {m} gradients");
        }
    }
}

[Collection("cpu")]
public sealed class GradientCheckTestsCpu(CpuDeviceFixture f) : GradientCheckTests(f.Plan);

[Collection("cuda")]
public sealed class GradientCheckTestsCuda(CudaDeviceFixture f) : GradientCheckTests(f.Plan);
