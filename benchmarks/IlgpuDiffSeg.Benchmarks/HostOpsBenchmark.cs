using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// The CPU backend's UNet ops at the demo ADM's largest shapes (32 channels at 64², batch 8 unless given; any channel count
/// and size): each op timed with a Stopwatch around the call and a Synchronize, best of <c>reps</c>, printed as ms (and
/// GFLOP/s for the convolutions) with the process's CPU time of its best run (all cores; on a loaded machine the less
/// disturbed figure) — the per-op table of benchmarks/results/cpu-backend.md. Each op is first called for a second (at
/// least twice, at most 40 times): the JIT compiles a method's loops fully only after some 30 calls, as a training step or
/// a forward pass calls them.
/// </summary>
public static partial class HostOpsBenchmark
{
    [StructLayout(LayoutKind.Sequential)]
    struct Timespec
    {
        public long Seconds, Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "clock_gettime")]
    private static partial int ClockGetTime(int clock, out Timespec time);

    /// <summary>The CPU time of every thread of this process (CLOCK_PROCESS_CPUTIME_ID, ns resolution); NaN off Linux.</summary>
    static double ProcessCpuMilliseconds()
    {
        if (!OperatingSystem.IsLinux() || ClockGetTime(2, out var t) != 0)
        {
            return double.NaN;
        }
        return t.Seconds * 1e3 + t.Nanoseconds / 1e6;
    }

    public static int Run(int batch, int reps, string? only = null, int c = 32, int size = 64)
    {
        using var dev = ComputeDevice.Create(DeviceChoice.Cpu, hostKernels: true);
        int h = size, w = size;
        var rng = new Random(1);
        float[] R(long n) => Enumerable.Range(0, (int)n).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        using var x = dev.Upload(R((long)batch * c * h * w), batch, c, h, w);
        using var x2 = dev.Upload(R((long)batch * c * h * w), batch, c, h, w);
        using var dy = dev.Upload(R((long)batch * c * h * w), batch, c, h, w);
        using var y = dev.Allocate(batch, c, h, w);
        using var dx = dev.Allocate(batch, c, h, w);
        using var wt = dev.Upload(R(c * c * 9), c, c, 3, 3);
        using var bias = dev.Upload(R(c), c);
        using var dw = dev.Zeros(c, c, 3, 3);
        using var db = dev.Zeros(c);
        using var gamma = dev.Upload(R(c).Select(v => 1 + v).ToArray(), c);
        using var beta = dev.Upload(R(c), c);
        using var dgamma = dev.Zeros(c);
        using var dbeta = dev.Zeros(c);
        using var emb = dev.Upload(R(batch * 2 * c), batch, 2 * c);
        using var dEmb = dev.Allocate(batch, 2 * c);
        using var up = dev.Allocate(batch, c, 2 * h, 2 * w);
        using var stats = GroupNorm.Statistics(x);
        double convFlop = 2.0 * batch * c * h * w * c * 9;
        Console.WriteLine($"CPU backend ops, batch {batch}, {c} channels at {h}²; best of {reps} ({dev.Describe()})");
        Time("conv3x3 forward", reps, convFlop, () => Conv2d.Forward(x, wt, bias, y, 1, null, MatmulKernel.HostSimd));
        Time("conv3x3 backward input", reps, convFlop, () => Conv2d.BackwardInput(dy, wt, dx, 1, MatmulKernel.HostSimd));
        Time("conv3x3 backward weights + bias", reps, convFlop, () => Conv2d.BackwardWeights(x, dy, dw, db, 1, MatmulKernel.HostSimd));
        Time("GroupNorm statistics + apply (scale-shift, SiLU)", reps, 0, () =>
        {
            using var s = GroupNorm.Statistics(x);
            GroupNorm.Apply(x, s, gamma, beta, y, silu: true, emb);
        });
        Time("GroupNorm backward (scale-shift, SiLU)", reps, 0, () =>
            GroupNorm.Backward(x, stats, gamma, beta, emb, silu: true, dy, dx, dgamma, dbeta, dEmb));
        Time($"nearest upsample {h}² → {2 * h}²", reps, 0, () => UpsampleNearest2x.Forward(x, up));
        Time("SiLU", reps, 0, () => Silu.Forward(x, y));
        Time("add", reps, 0, () => Add.Forward(x, x2, y));
        return 0;

        void Time(string what, int n, double flop, Action op)
        {
            if (only is not null && !what.Contains(only, StringComparison.Ordinal))
            {
                return;
            }
            var warm = Stopwatch.StartNew();
            for (int i = 0; i < 40 && (i < 2 || warm.Elapsed.TotalSeconds < 1); i++)
            {
                op();
                dev.Synchronize();
            }
            double best = double.MaxValue, bestCpu = double.MaxValue;
            for (int i = 0; i < n; i++)
            {
                double cpu = ProcessCpuMilliseconds();
                var clock = Stopwatch.StartNew();
                op();
                dev.Synchronize();
                best = Math.Min(best, clock.Elapsed.TotalMilliseconds);
                bestCpu = Math.Min(bestCpu, ProcessCpuMilliseconds() - cpu);
            }
            string rate = flop > 0 ? string.Create(CultureInfo.InvariantCulture, $"  {flop / best / 1e6,6:F1} GFLOP/s") : "";
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{what,-52} {best,8:F2} ms (CPU {bestCpu,8:F2} ms){rate}"));
        }
    }
}
