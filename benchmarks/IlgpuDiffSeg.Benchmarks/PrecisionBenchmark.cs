using System.Globalization;
using System.Text;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// Accuracy of precision fp16 (v4: operands of every convolution and attention product rounded to fp16, fp32 sums)
/// against fp32 on the full LSUN-256 configuration (random weights): one 256² input at t = 250, the five feature blocks
/// and eps. On CUDA this runs the tensor-core kernel; on the CPU the SIMD backend rounds the same operands, which
/// TensorCoreGemmTests shows to be what the kernel computes (NMSE ≤ 1e-10 apart).
/// </summary>
public static class PrecisionBenchmark
{
    public static int Run(string? outFile)
    {
        using var dev = ComputeDevice.Create(hostKernels: true);
        var plan = ExecutionPlan.For(dev);
        using var model = new UNetModel(AdmFlags.Parse(MemoryBenchmark.Bedroom28.Flags, "lsun"));
        ModelWeights.InitializeRandom(model, plan, 1);
        using var x = dev.Upload(Pipeline.NoiseSource.Draw(3 * 256 * 256, 3), 1, 3, 256, 256);
        using var t = dev.Upload([250f], 1);
        int[] blocks = [5, 6, 7, 8, 12];

        Dictionary<string, float[]> Run(MatmulKernel kernel)
        {
            using var pass = new Pass(ExecutionPlan.With(dev, kernel));
            using var o = model.Forward(pass, x, t, capture: blocks);
            var result = blocks.ToDictionary(b => $"out_block_{b} {o.Blocks[b].ShapeString}", b => o.Blocks[b].ToArray());
            result["eps (output)"] = o.Output!.ToArray();
            return result;
        }

        var fp32 = Run(dev.IsCpu ? MatmulKernel.HostSimd : MatmulKernel.Registers);
        var fp16 = Run(dev.IsCpu ? MatmulKernel.HostSimdFp16 : MatmulKernel.TensorCoreFp16);
        var report = new StringBuilder();
        report.AppendLine(CultureInfo.InvariantCulture, $"# Precision fp16 against fp32 — LSUN-256 UNet, random weights, t = 250");
        report.AppendLine();
        report.AppendLine(CultureInfo.InvariantCulture, $"- device: {dev.Describe()}");
        report.AppendLine("- command: `dotnet run --project benchmarks/IlgpuDiffSeg.Benchmarks -c Release -- precision`");
        report.AppendLine();
        report.AppendLine("| output | max abs error / max abs fp32 | NMSE |");
        report.AppendLine("|---|---|---|");
        foreach (var (name, reference) in fp32)
        {
            var got = fp16[name];
            double maxRef = 0, maxErr = 0, se = 0, ss = 0;
            for (int i = 0; i < reference.Length; i++)
            {
                double d = got[i] - reference[i];
                maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
                maxErr = Math.Max(maxErr, Math.Abs(d));
                se += d * d;
                ss += (double)reference[i] * reference[i];
            }
            report.AppendLine(CultureInfo.InvariantCulture, $"| {name} | {maxErr / maxRef:E2} | {se / ss:E2} |");
        }
        Console.WriteLine(report);
        if (outFile is not null)
        {
            File.WriteAllText(outFile, report.ToString());
        }
        return 0;
    }
}
