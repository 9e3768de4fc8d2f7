using System.Diagnostics;
using System.Globalization;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;
using IlgpuDiffSeg.Training;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// One training step of the demo ADM (64², 1.9M parameters) — forward, training loss, backward, AdamW, EMA — at a batch
/// size, timed after a warm-up step; prints "train step batch N: S s per step" (benchmarks/train_step_peer.sh runs the
/// official code's step beside it and prints the ratio).
/// </summary>
public static class TrainStepBenchmark
{
    public static int Run(int batch, int reps, string precision)
    {
        using var dev = ComputeDevice.Create();
        var p = precision == "fp16" ? Precision.Fp16 : Precision.Fp32;
        var plan = ExecutionPlan.For(dev, p);
        var options = new TrainingOptions
        {
            Flags = AdmFlags.Parse(Demo.ModelFlags, "demo flags"),
            Data = SyntheticImages.Name,
            BatchSize = batch,
            MaxSteps = reps + 1,
            Precision = p,
        };
        using var trainer = new DiffusionTrainer(options, plan);
        using var data = new SyntheticImages(64, batch, 0);
        var batches = Enumerable.Range(0, reps + 1).Select(s => data.Batch(s).Images).ToArray();
        Console.Error.WriteLine($"{trainer.Model.ParameterCount:N0} parameters on {plan.Describe()}");
        trainer.RunStep(batches[0], null);
        dev.Synchronize();
        var clock = Stopwatch.StartNew();
        for (int i = 1; i <= reps; i++)
        {
            trainer.RunStep(batches[i], null);
        }
        dev.Synchronize();
        double each = clock.Elapsed.TotalSeconds / reps;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"train step batch {batch}: {each:F3} s per step ({precision}, {Environment.ProcessorCount} cores)"));
        return 0;
    }
}
