using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Training;

/// <summary>Per-sample terms of one batch's training loss (mse and vb are present as the loss type defines them).</summary>
public sealed record LossTerms(float[] Loss, float[] Mse, float[] Vb)
{
    public double MeanLoss => Loss.Average(v => (double)v);
    public double MeanMse => Mse.Average(v => (double)v);
    public double MeanVb => Vb.Average(v => (double)v);
}

/// <summary>
/// One forward and backward of guided-diffusion's training_losses on a batch: x_t = q_sample(x₀, t, ε), the model on x_t
/// at its timesteps, the per-sample terms (TrainingLoss), and d(Σ_n w_n·loss_n)/dθ added to every parameter's gradient
/// (the caller zeroes them between optimiser steps; microbatches simply add).
/// </summary>
public static class DiffusionLossStep
{
    /// <param name="weights">w_n: the importance weight of each sample divided by the batch size (the batch mean's factor),
    /// times the loss scale when fp16 training scales the loss.</param>
    public static LossTerms Run(UNetModel model, GaussianDiffusion diffusion, Pass pass, Tensor x0, Tensor noise, IReadOnlyList<int> t,
        IReadOnlyList<long>? classLabels, IReadOnlyList<float> weights)
    {
        var dev = pass.Device;
        int n = x0[0];
        if (t.Count != n || weights.Count != n || noise.Length != x0.Length)
        {
            throw new ArgumentException($"loss step: batch {x0.ShapeString}, noise {noise.ShapeString}, {t.Count} timesteps, " +
                                        $"{weights.Count} weights");
        }
        var qCoefficients = new float[2 * n];
        for (int i = 0; i < n; i++)
        {
            (qCoefficients[2 * i], qCoefficients[2 * i + 1]) = diffusion.QSampleCoefficients(t[i]);
        }
        using var xt = dev.Allocate(x0.Shape);
        using (var coefficients = dev.Upload(qCoefficients, n, 2))
        {
            QSample.Forward(x0, noise, coefficients, xt);
        }
        using var modelTimesteps = dev.Upload(t.Select(diffusion.ModelTimestep).ToArray(), n);
        using var outputs = ForwardModel(model, pass, x0, xt, modelTimesteps, classLabels);
        var output = outputs.Output!;
        int expected = (diffusion.VarianceType == ModelVarianceType.LearnedRange ? 2 : 1) * x0[1];
        if (output[1] != expected)
        {
            throw new DiffSegException($"the model outputs {output[1]} channels but its diffusion needs {expected} (check learn_sigma)");
        }
        var lossCoefficients = Enumerable.Range(0, n).Select(i => diffusion.LossCoefficientsAt(t[i], weights[i])).ToArray();
        using var deviceCoefficients = dev.Buffer<LossCoefficients>(lossCoefficients);
        using var losses = dev.Allocate(n, 3);
        using var dOutput = dev.Allocate(output.Shape);
        TrainingLoss.Compute(x0, noise, xt, output, deviceCoefficients, losses, dOutput);
        model.Backward(pass, dOutput);
        var host = losses.ToArray();
        return new LossTerms(
            Enumerable.Range(0, n).Select(i => host[3 * i]).ToArray(),
            Enumerable.Range(0, n).Select(i => host[3 * i + 1]).ToArray(),
            Enumerable.Range(0, n).Select(i => host[3 * i + 2]).ToArray());
    }

    /// <summary>The model on x_t; a super-resolution model also on x₀ area-downsampled to its small size and upsampled back
    /// (super_res_train.py's low_res).</summary>
    static UNetOutputs ForwardModel(UNetModel model, Pass pass, Tensor x0, Tensor xt, Tensor t, IReadOnlyList<long>? classLabels)
    {
        if (!model.Flags.IsSuperResolution)
        {
            return model.Forward(pass, xt, t, classLabels);
        }
        using var low = SuperResolution.LowResolution(x0, model.Flags.SmallSize);
        using var up = SuperResolution.Upsample(low, x0[2]);
        return SuperResolution.Forward(model, pass, xt, up, t, classLabels);
    }
}
