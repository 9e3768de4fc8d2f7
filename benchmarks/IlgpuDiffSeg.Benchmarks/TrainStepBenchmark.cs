using System.Diagnostics;
using System.Globalization;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;
using IlgpuDiffSeg.Training;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// One training step — forward, training loss, backward, AdamW, EMA — of the demo ADM (64², 1.9M parameters) or the
/// LSUN-256 ADM (552.8M), at a batch size, timed after a warm-up step; prints "train step batch N: S s per step" and the
/// peak device memory (benchmarks/train_step_ratio.sh runs the official code's step beside it and prints the ratio).
/// </summary>
public static class TrainStepBenchmark
{
    public static int Run(int batch, int reps, string precision, string config = "demo")
    {
        using var dev = ComputeDevice.Create(hostKernels: true);
        bool lsun = config == "lsun256";
        int size = lsun ? 256 : 64;
        var p = precision == "fp16" ? Precision.Fp16 : Precision.Fp32;
        var plan = ExecutionPlan.For(dev, p);
        var options = new TrainingOptions
        {
            Flags = AdmFlags.Parse(lsun ? MemoryBenchmark.Bedroom28.Flags : Demo.ModelFlags, config),
            Data = SyntheticImages.Name,
            BatchSize = batch,
            MaxSteps = reps + 1,
            Precision = p,
        };
        using var trainer = new DiffusionTrainer(options, plan);
        using var data = new SyntheticImages(size, batch, 0);
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
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"train step batch {batch}: {each:F3} s per step ({config}, {precision}, " +
            $"peak device memory {dev.PeakDeviceBytes / 1e9:F2} GB, " +
            $"{plan.Describe()})"));
        return 0;
    }
}
