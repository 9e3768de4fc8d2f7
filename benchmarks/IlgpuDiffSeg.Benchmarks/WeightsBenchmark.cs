using System.Diagnostics;
using System.Globalization;
using System.Text;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// Device memory the LSUN-256 UNet's weights hold once placed, at each precision: fp32, and fp16 (the tensor-core kernel,
/// which keeps convolution weights as fp16 rows only — HalfWeights). Read from the device's own allocation count, current
/// and peak during placement (which shows that loading never holds both copies of the model). Random weights; each
/// precision on a fresh device.
/// </summary>
public static class WeightsBenchmark
{
    public static int Run(string device, string? outFile)
    {
        var report = new StringBuilder();
        report.AppendLine("# UNet weights on the device — LSUN-256 ADM (552.8M parameters), by precision");
        report.AppendLine();
        string described = "";
        var rows = new List<string>();
        foreach (var kernel in new[] { MatmulKernel.Registers, MatmulKernel.TensorCoreFp16 })
        {
            using var dev = ComputeDevice.Create(device == "cuda" ? DeviceChoice.Cuda : device == "cpu" ? DeviceChoice.Cpu : DeviceChoice.Auto);
            described = dev.Describe();
            var plan = ExecutionPlan.With(dev, kernel);
            using var model = new UNetModel(AdmFlags.Parse(MemoryBenchmark.Bedroom28.Flags, "lsun"));
            var clock = Stopwatch.StartNew();
            ModelWeights.InitializeRandom(model, plan, 1);
            dev.Synchronize();
            double seconds = clock.Elapsed.TotalSeconds;
            var convs = model.Parameters().Where(p => p.IsConvolutionWeight).ToList();
            string precision = kernel == MatmulKernel.TensorCoreFp16 ? "fp16 (`--precision fp16`)" : "fp32";
            string held = plan.HoldsConvWeightsInHalf ? "fp16 rows only" : "fp32";
            rows.Add(string.Create(CultureInfo.InvariantCulture,
                $"| {precision} | {held} | {convs.Count} | {dev.DeviceBytes / 1e9:F3} | {dev.PeakDeviceBytes / 1e9:F3} | {seconds:F1} |"));
            Console.Error.WriteLine(rows[^1]);
        }
        report.AppendLine($"- device: {described}");
        report.AppendLine($"- date: {DateTime.UtcNow:yyyy-MM-dd}");
        report.AppendLine($"- command: `dotnet run --project benchmarks/IlgpuDiffSeg.Benchmarks -c Release -- weights {device}`");
        report.AppendLine("- bytes: ComputeDevice.DeviceBytes (every pooled tensor and DeviceBuffer), after placement and at its peak");
        report.AppendLine();
        report.AppendLine("| precision | convolution weights held as | convolutions | device GB held | peak GB while placing | seconds to place (incl. drawing random weights) |");
        report.AppendLine("|---|---|---|---|---|---|");
        rows.ForEach(r => report.AppendLine(r));
        Console.WriteLine(report);
        if (outFile is not null)
        {
            File.WriteAllText(outFile, report.ToString());
        }
        return 0;
    }
}
