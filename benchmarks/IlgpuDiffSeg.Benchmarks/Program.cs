using System.Globalization;
using BenchmarkDotNet.Running;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// Benchmarks (never tests). Usage:
///   memory [cpu-scaled|bedroom28] [images] [auto|cpu|cuda] [--out FILE]   feature-path memory and time, lean vs materialised
///   forward [batch] [reps] [lsun256|demo]                                   one LSUN-256 (or demo) UNet forward pass, timed
///   precision [--out FILE.md]                                               LSUN-256 features, fp16 operands against fp32
///   gpu [--small] [--out FILE.md]                                          kernels and stages at LSUN-256 shapes (CUDA events)
///   weights [auto|cpu|cuda] [--out FILE.md]                                 device memory of the LSUN-256 weights, fp32 and fp16
///   export-features EXP.json DIR                                            features + masks for original_mlp.py
///   train-trace FEATURES_DIR CLASSES STEPS OUT_DIR                         one member's training, for original_mlp.py --replay
///   train-step [batch] [reps] [fp32|fp16] [demo|lsun256]                    one training step of the demo or LSUN-256 ADM, timed
///   host [BenchmarkDotNet args]                                             CPU backend kernels (BenchmarkDotNet)
///   host-ops [batch] [reps] [name part|all] [channels] [size]               the CPU backend's UNet ops at the demo's shapes, timed
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length == 0)
        {
            Console.Error.WriteLine("usage: memory [cpu-scaled|bedroom28] [images] [auto|cpu|cuda] [--out FILE] | host [BenchmarkDotNet args]");
            return 2;
        }
        switch (args[0])
        {
            case "memory":
            {
                var positional = args.Skip(1).TakeWhile(a => !a.StartsWith("--", StringComparison.Ordinal)).ToArray();
                int outAt = Array.IndexOf(args, "--out");
                return MemoryBenchmark.Drive(positional.ElementAtOrDefault(0) ?? "cpu-scaled",
                    int.Parse(positional.ElementAtOrDefault(1) ?? "40", CultureInfo.InvariantCulture),
                    positional.ElementAtOrDefault(2) ?? "auto", outAt >= 0 ? args[outAt + 1] : null);
            }
            case "memory-child":
                return MemoryBenchmark.Child(args[1], args[2], int.Parse(args[3], CultureInfo.InvariantCulture), args[4]);
            case "weights":
            {
                int outAt = Array.IndexOf(args, "--out");
                return WeightsBenchmark.Run(args.ElementAtOrDefault(1) is { } d && !d.StartsWith("--", StringComparison.Ordinal) ? d : "auto",
                    outAt >= 0 ? args[outAt + 1] : null);
            }
            case "gpu":
            {
                int outAt = Array.IndexOf(args, "--out");
                return GpuBenchmark.Run(args.Contains("--small"), outAt >= 0 ? args[outAt + 1] : null);
            }
            case "export-features":
                return ExportFeatures.Run(args[1], args[2]);
            case "forward":
                return ForwardBenchmark.Run(int.Parse(args.ElementAtOrDefault(1) ?? "1", CultureInfo.InvariantCulture),
                    int.Parse(args.ElementAtOrDefault(2) ?? "3", CultureInfo.InvariantCulture), args.ElementAtOrDefault(3) ?? "lsun256");
            case "precision":
            {
                int outAt = Array.IndexOf(args, "--out");
                return PrecisionBenchmark.Run(outAt >= 0 ? args[outAt + 1] : null);
            }
            case "train-trace":
                return TrainTrace.Run(args[1], int.Parse(args[2], CultureInfo.InvariantCulture), int.Parse(args[3], CultureInfo.InvariantCulture), args[4]);
            case "train-step":
                return TrainStepBenchmark.Run(int.Parse(args.ElementAtOrDefault(1) ?? "16", CultureInfo.InvariantCulture),
                    int.Parse(args.ElementAtOrDefault(2) ?? "3", CultureInfo.InvariantCulture), args.ElementAtOrDefault(3) ?? "fp32",
                    args.ElementAtOrDefault(4) ?? "demo");
            case "host-ops":
            {
                string? only = args.ElementAtOrDefault(3) is "all" or null ? null : args[3];
                return HostOpsBenchmark.Run(int.Parse(args.ElementAtOrDefault(1) ?? "8", CultureInfo.InvariantCulture),
                    int.Parse(args.ElementAtOrDefault(2) ?? "5", CultureInfo.InvariantCulture), only,
                    int.Parse(args.ElementAtOrDefault(4) ?? "32", CultureInfo.InvariantCulture),
                    int.Parse(args.ElementAtOrDefault(5) ?? "64", CultureInfo.InvariantCulture));
            }
            case "host":
                return RunBenchmarkDotNet(args[1..]);
            default:
                Console.Error.WriteLine($"unknown benchmark '{args[0]}'");
                return 2;
        }
    }

    /// <summary>
    /// BenchmarkDotNet only here, so that the other commands never load it: the device's archive leaves it out
    /// (benchmarks/device/pack.sh).
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    static int RunBenchmarkDotNet(string[] args)
    {
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
