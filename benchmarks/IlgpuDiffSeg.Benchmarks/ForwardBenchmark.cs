using System.Diagnostics;
using System.Globalization;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>One full UNet forward pass of the LSUN-256 configuration (or the demo's, <c>demo</c>) with random weights at a
/// given batch size, timed after a warm-up pass: the figure issue 2 asks to write down (benchmarks/cpu_ratio.sh runs the
/// official code's pass beside it).</summary>
public static class ForwardBenchmark
{
    public static int Run(int batch, int reps, string config = "lsun256")
    {
        using var dev = ComputeDevice.Create(hostKernels: true);
        var plan = ExecutionPlan.For(dev);
        var clock = Stopwatch.StartNew();
        bool demo = config == "demo";
        int size = demo ? 64 : 256;
        using var model = new UNetModel(AdmFlags.Parse(demo ? Pipeline.Demo.ModelFlags : MemoryBenchmark.Bedroom28.Flags, config));
        ModelWeights.InitializeRandom(model, plan, 1);
        Console.Error.WriteLine($"{model.ParameterCount:N0} parameters initialised in {clock.Elapsed.TotalSeconds:F1} s on {plan.Describe()}");
        using var x = dev.Upload(Pipeline.NoiseSource.Draw(batch * 3 * size * size, 3), batch, 3, size, size);
        using var t = dev.Upload(Enumerable.Repeat(250f, batch).ToArray(), batch);
        clock.Restart();
        using (var warm = model.Forward(x, t))
        {
            dev.Synchronize();
        }
        double first = clock.Elapsed.TotalSeconds;
        clock.Restart();
        for (int i = 0; i < reps; i++)
        {
            using var o = model.Forward(x, t);
            dev.Synchronize();
        }
        double each = clock.Elapsed.TotalSeconds / reps;
        string rate = demo ? "" : string.Create(CultureInfo.InvariantCulture,
            $"{2.24e12 * batch / each / 1e12:F3} TFLOP/s at 2.24 TFLOP per image; ");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{(demo ? "demo" : "LSUN-256")} UNet forward, batch {batch}: {each:F3} s per pass (first pass, with kernel compilation: " +
            $"{first:F3} s); {rate}peak device memory {dev.PeakDeviceBytes / 1e9:F2} GB; device: {dev.Describe()}"));
        return 0;
    }
}
