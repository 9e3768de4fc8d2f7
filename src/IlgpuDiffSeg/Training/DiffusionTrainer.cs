using ILGPU.Runtime;
using System.Diagnostics;
using System.Text.Json.Nodes;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Training;

/// <summary>Raised when a run stops at a request (Ctrl+C) after saving its state: the same command resumes it.</summary>
public sealed class TrainingStoppedException(string message) : Exception(message);

/// <summary>
/// guided-diffusion's TrainLoop (image_train.py) on the device: per step, microbatches of images with timesteps from the
/// schedule sampler and fresh noise, each contributing the gradient of mean(loss·w) over itself (summed, not averaged, over
/// microbatches, as the original); AdamW on the fp32 weights; the EMAs after every step taken; with fp16, the loss scaled by
/// 2^lg (lg from 20), a step with a non-finite gradient skipped and lg lowered by 1, else gradients unscaled and lg raised by
/// fp16_scale_growth. Every random draw of step s (timesteps, noise, dropout) comes from (seed, s), and the data stream from
/// its position, so a run resumed from a checkpoint ends with an uninterrupted run's weights.
/// </summary>
public sealed class DiffusionTrainer : IDisposable
{
    readonly TrainingOptions o;
    readonly ExecutionPlan plan;
    readonly UNetModel model;
    readonly GaussianDiffusion diffusion;
    readonly ScheduleSampler sampler;
    readonly List<Parameter> parameters;
    readonly List<(Tensor M, Tensor V)> moments = new();
    readonly List<(double Rate, List<Tensor> Values)> emas = new();
    readonly Tensor norms;
    readonly string fingerprint;

    public long Step { get; private set; }
    public long AdamSteps { get; private set; }
    public double LgLossScale { get; private set; }
    public UNetModel Model => model;
    public GaussianDiffusion Diffusion => diffusion;

    /// <summary>Builds the model (random init, or <see cref="TrainingOptions.InitPath"/>) and the optimiser state.</summary>
    public DiffusionTrainer(TrainingOptions options, ExecutionPlan plan, string? flagsSource = null)
    {
        o = options;
        o.Validate();
        this.plan = plan;
        fingerprint = o.Fingerprint();
        try
        {
            diffusion = GaussianDiffusion.FromFlags(o.Flags);
        }
        catch (DiffSegException e) when (flagsSource is not null)
        {
            throw DiffSegException.For(flagsSource, e.Message);
        }
        sampler = ScheduleSampler.Create(o.ScheduleSampler, diffusion.Steps);
        LgLossScale = o.InitialLgLossScale;
        model = ModelWeights.BuildChecked(o.Flags, flagsSource ?? "flags");
        try
        {
            if (o.InitPath is null)
            {
                // The official init differs (zeroed output convs); this is the fixtures' recipe, seeded.
                ModelWeights.InitializeRandom(model, plan, o.Seed, keepFp32: true);
            }
            else
            {
                ModelWeights.LoadInto(model, o.InitPath, plan, o.Flags);
            }
            model.AllocateGradients(plan.Device);
            parameters = model.Parameters().ToList();
            foreach (var p in parameters)
            {
                moments.Add((plan.Device.Zeros(p.Shape), plan.Device.Zeros(p.Shape)));
            }
            foreach (var rate in o.EmaRates)
            {
                emas.Add((rate, parameters.Select(p => Copy(p.T)).ToList()));
            }
            norms = plan.Device.Zeros(2, parameters.Count);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    Tensor Copy(Tensor t)
    {
        var c = plan.Device.Allocate(t.Shape);
        t.View.CopyTo(c.View);
        return c;
    }

    /// <summary>Continues from the last complete step in <paramref name="runDir"/>, if any; returns it.</summary>
    public long? Resume(string runDir)
    {
        var latest = TrainingCheckpoint.Latest(runDir, o.EmaRates, fingerprint);
        if (latest is not { } step)
        {
            return null;
        }
        var state = TrainingCheckpoint.LoadOptimizer(runDir, step, model, moments, fingerprint);
        TrainingCheckpoint.LoadWeights(TrainingCheckpoint.ModelFile(runDir, step), model, parameters.Select(p => p.T).ToList());
        foreach (var (rate, values) in emas)
        {
            TrainingCheckpoint.LoadWeights(TrainingCheckpoint.EmaFile(runDir, rate, step), model, values);
        }
        try
        {
            sampler.Restore(state.SamplerState == "" ? null : JsonNode.Parse(state.SamplerState));
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or NullReferenceException or
                                      FormatException or InvalidCastException or DiffSegException)
        {
            throw DiffSegException.For(TrainingCheckpoint.OptimizerFile(runDir, step),
                $"its schedule sampler state cannot be restored ({e.Message.Split('\n')[0]})");
        }
        Step = step;
        AdamSteps = state.AdamSteps;
        LgLossScale = state.LgLossScale;
        return step;
    }

    public void Save(string runDir) => TrainingCheckpoint.Save(runDir, model,
        emas.Select(e => (e.Rate, (IReadOnlyList<Tensor>)e.Values)).ToList(), moments,
        new TrainingCheckpoint.OptimizerState(Step, AdamSteps, LgLossScale, sampler.State()?.ToJsonString() ?? "", fingerprint));

    /// <summary>What one step did, for the log.</summary>
    public sealed record StepReport(long Step, int[] Timesteps, LossTerms Terms, double GradNorm, double ParamNorm, bool Taken, double Lr,
        double LgLossScale);

    /// <summary>One optimisation step on <paramref name="images"/> (N, 3, S, S) [with class labels].</summary>
    public StepReport RunStep(float[] images, long[]? labels)
    {
        var dev = plan.Device;
        int n = o.BatchSize, size = o.Flags.ImageSize, plane = 3 * size * size;
        if (images.Length != n * plane)
        {
            throw new ArgumentException($"a batch of {n} images of {size}² holds {n * plane} values, not {images.Length}");
        }
        var random = new MathNet.Numerics.Random.MersenneTwister(StepSeed(o.Seed, Step));
        model.ZeroGradients();
        bool fp16 = o.Precision == Precision.Fp16;
        float lossScale = fp16 ? (float)Math.Pow(2, LgLossScale) : 1f;
        var timesteps = new List<int>();
        var loss = new List<float>();
        var mse = new List<float>();
        var vb = new List<float>();
        int mb = o.MicrobatchSize;
        for (int first = 0; first < n; first += mb)
        {
            int count = Math.Min(mb, n - first);
            var (t, w) = sampler.Sample(count, random);
            var noise = new float[count * plane];
            for (int i = 0; i < noise.Length; i++)
            {
                noise[i] = (float)MathNet.Numerics.Distributions.Normal.Sample(random, 0, 1);
            }
            using var x0 = dev.Upload(images.AsSpan(first * plane, count * plane), count, 3, size, size);
            using var eps = dev.Upload(noise, count, 3, size, size);
            using var pass = new Pass(plan, training: true, dropoutSeed: (ulong)random.NextInt64(), saves: true);
            var terms = DiffusionLossStep.Run(model, diffusion, pass, x0, eps, t, labels?[first..(first + count)],
                w.Select(v => v / count * lossScale).ToArray());
            sampler.Update(t, terms.Loss);
            timesteps.AddRange(t);
            loss.AddRange(terms.Loss);
            mse.AddRange(terms.Mse);
            vb.AddRange(terms.Vb);
        }
        if (!fp16 && loss.Any(v => !float.IsFinite(v)))
        {
            throw new DiffSegException($"the loss became non-finite at step {Step} (lr {o.Lr} may be too high); " +
                                       "the last checkpoint is intact");
        }
        var (gradNorm, paramNorm) = Norms2();
        double lr = o.LearningRate(Step);
        bool taken = true;
        if (fp16 && !double.IsFinite(gradNorm))
        {
            LgLossScale -= 1;
            taken = false;
        }
        else
        {
            float unscale = fp16 ? (float)(1.0 / lossScale) : 1f;
            AdamSteps++;
            for (int i = 0; i < parameters.Count; i++)
            {
                AdamW.Step(plan, parameters[i].T, parameters[i].G, moments[i].M, moments[i].V, AdamSteps, lr, o.WeightDecay,
                    gradScale: unscale);
            }
            foreach (var (rate, values) in emas)
            {
                for (int i = 0; i < parameters.Count; i++)
                {
                    Ema.Update(values[i], parameters[i].T, (float)rate);
                }
            }
            if (fp16)
            {
                LgLossScale += o.Fp16ScaleGrowth;
                gradNorm /= lossScale;
            }
        }
        var batchTerms = new LossTerms(loss.ToArray(), mse.ToArray(), vb.ToArray());
        var report = new StepReport(Step, timesteps.ToArray(), batchTerms, gradNorm, paramNorm, taken, lr, LgLossScale);
        Step++;
        return report;
    }

    /// <summary>The global gradient and parameter norms (the original logs both; a non-finite gradient norm marks fp16 overflow).</summary>
    (double Grad, double Param) Norms2()
    {
        for (int i = 0; i < parameters.Count; i++)
        {
            Norms.SumOfSquares(parameters[i].G, norms, i);
            Norms.SumOfSquares(parameters[i].T, norms, parameters.Count + i);
        }
        var host = norms.ToArray();
        double g = 0, p = 0;
        for (int i = 0; i < parameters.Count; i++)
        {
            g += host[i];
            p += host[parameters.Count + i];
        }
        return (Math.Sqrt(g), Math.Sqrt(p));
    }

    /// <summary>A seed for step <paramref name="step"/>'s draws: a hash of (seed, step).</summary>
    public static int StepSeed(int seed, long step) => Data.SyntheticScenes.SeedOf(unchecked(seed * 31 + 7), step);

    public void Dispose()
    {
        foreach (var (m, v) in moments)
        {
            m.Dispose();
            v.Dispose();
        }
        foreach (var (_, values) in emas)
        {
            values.ForEach(t => t.Dispose());
        }
        norms?.Dispose();
        model.Dispose();
    }
}
