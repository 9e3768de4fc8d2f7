using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ILGPU.Runtime;
using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// Issue 5's harness: each kernel at the LSUN-256 model's shapes, and the end-to-end stages (UNet forward at batch 1
/// and 8, features of one image, ensemble training iterations, prediction of one 256² image), timed with ILGPU
/// profiling markers (CUDA events on a GPU) after warm-up, compilation excluded. Reports time, achieved TFLOP/s or GB/s
/// and the share of the device's peak. `--small` runs the demo UNet's shapes so the harness can be checked on a CPU.
/// The PyTorch peer for the same stages is benchmarks/torch_peer.py, run in the same session on the same device.
/// </summary>
public static class GpuBenchmark
{
    public sealed record Row(string Name, double Milliseconds, double Flop, double Bytes, string Unit, double Rate, double PercentOfPeak);

    sealed record Peak(double Fp32TeraFlops, double Fp16TensorTeraFlops, double TeraBytesPerSecond);

    /// <summary>Datasheet peaks: fp32 (non-tensor) FLOP/s, dense fp16 tensor-core FLOP/s, memory bandwidth.</summary>
    static Peak PeakOf(ComputeDevice dev)
    {
        string name = dev.Accelerator.Name;
        if (name.Contains("H200", StringComparison.OrdinalIgnoreCase))
        {
            return new Peak(67, 989, 4.8);
        }
        if (name.Contains("H100", StringComparison.OrdinalIgnoreCase))
        {
            return name.Contains("PCIe", StringComparison.OrdinalIgnoreCase) ? new Peak(51, 756, 2.0) : new Peak(67, 989, 3.35);
        }
        return new Peak(double.NaN, double.NaN, double.NaN);
    }

    /// <summary>Kernels to compare: every GPU kernel on CUDA; the host SIMD backend on the CPU.</summary>
    static MatmulKernel[] Kernels(ComputeDevice dev) =>
        dev.IsCuda ? [MatmulKernel.Registers, MatmulKernel.Tiled, MatmulKernel.TensorCoreFp16] : [MatmulKernel.HostSimd];

    public static int Run(bool small, string? outFile)
    {
        using var dev = ComputeDevice.Create(profiling: true, hostKernels: true);
        var plan = ExecutionPlan.For(dev);
        var peak = PeakOf(dev);
        var rows = new List<Row>();
        var flags = AdmFlags.Parse(small ? Demo.ModelFlags : MemoryBenchmark.Bedroom28.Flags, "benchmark");
        int size = small ? 64 : 256;
        int[] blocks = small ? Demo.Blocks : [5, 6, 7, 8, 12];
        using var model = new UNetModel(flags);
        ModelWeights.InitializeRandom(model, plan, 1);

        void Add(string name, double ms, double flop, double bytes, bool tensorCores = false)
        {
            bool compute = flop > 0;
            double rate = compute ? flop / (ms * 1e-3) / 1e12 : bytes / (ms * 1e-3) / 1e12;
            double pct = 100 * rate / (!compute ? peak.TeraBytesPerSecond : tensorCores ? peak.Fp16TensorTeraFlops : peak.Fp32TeraFlops);
            rows.Add(new Row(name, ms, flop, bytes, compute ? "TFLOP/s" : "TB/s", rate, pct));
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name,-58} {ms,10:F3} ms  {rate,8:F3} {(compute ? "TFLOP/s" : "TB/s")}  {pct,6:F1}% of peak"));
        }

        // Kernels at the model's shapes.
        int c1 = flags.NumChannels;
        foreach (var (channels, res, batch) in small ? new[] { (32, 64, 1), (64, 32, 1) } : new[] { (c1, 256, 1), (2 * c1, 64, 1), (4 * c1, 16, 1), (c1, 256, 8) })
        {
            using var x = dev.Zeros(batch, channels, res, res);
            using var w = dev.Zeros(channels, channels, 3, 3);
            using var b = dev.Zeros(channels);
            using var y = dev.Allocate(batch, channels, res, res);
            double convFlop = 2.0 * batch * channels * channels * 9 * res * res;
            foreach (var kernel in Kernels(dev))
            {
                Add($"conv3x3 {channels}→{channels} @{res}² batch {batch} ({kernel.Label()})",
                    Time(dev, () => Conv2d.Forward(x, w, b, y, kernel: kernel)), convFlop, 0, tensorCores: kernel == MatmulKernel.TensorCoreFp16);
            }
            if (dev.IsCuda)
            {
                using var half = HalfWeights.From(w);
                var halfOnly = new ConvWeights(null, half, w.Shape);
                Add($"conv3x3 {channels}→{channels} @{res}² batch {batch} (v4, weights held in fp16)",
                    Time(dev, () => Conv2d.Forward(x, halfOnly, b, y, kernel: MatmulKernel.TensorCoreFp16)), convFlop, 0, tensorCores: true);
            }
            using var g = dev.Zeros(channels);
            Add($"group_norm+silu {channels}ch @{res}² batch {batch}", Time(dev, () => GroupNorm.Forward(x, g, g, y, silu: true)),
                0, 3.0 * 4 * x.Length);
            using var up = dev.Allocate(channels, size, size);
            Add($"bilinear {channels}ch {res}²→{size}²", Time(dev, () => UpsampleBilinear.Forward(x.Slice0(0), up)), 0, 4.0 * (x.Length / batch + up.Length));
        }
        foreach (var kernel in Kernels(dev).Where(k => k != MatmulKernel.TensorCoreFp16))
        {
            int d = small ? 864 : 8448;
            using var xg = dev.Zeros(64, d);
            using var wg = dev.Zeros(10 * 128 * d);
            using var hg = dev.Zeros(10 * 64 * 128);
            using var gg = dev.Zeros(10 * 128 * d);
            var forward = new GemmShape
            {
                M = 64, N = 128, K = d, Batch0 = 10, Batch1 = 1, Alpha = 1f, ARow = d, ACol = 1,
                BRow = 1, BCol = d, BBatch0 = 128 * d, CRow = 128, CCol = 1, CBatch0 = 64 * 128,
            };
            var weightGrad = new GemmShape
            {
                M = 128, N = d, K = 64, Batch0 = 10, Batch1 = 1, Alpha = 1f, ARow = 1, ACol = 128, ABatch0 = 64 * 128,
                BRow = d, BCol = 1, CRow = d, CCol = 1, CBatch0 = 128 * d,
            };
            Add($"gemm: classifier layer 1 forward, 10×(64×{d}·{d}×128) ({kernel.Label()})",
                Time(dev, () => Gemm.Run(dev, forward, xg.View, wg.View, hg.View, kernel: kernel)), 2.0 * 10 * 64 * 128 * d, 0);
            Add($"gemm: classifier layer 1 weight gradient ({kernel.Label()})",
                Time(dev, () => Gemm.Run(dev, weightGrad, hg.View, xg.View, gg.View, kernel: kernel)), 2.0 * 10 * 64 * 128 * d, 0);
        }
        foreach (var (channels, tokens, heads) in small ? new[] { (64, 64, 2) } : new[] { (2 * c1, 1024, 8), (4 * c1, 256, 16) })
        {
            using var qkv = dev.Zeros(1, 3 * channels, tokens);
            using var a = dev.Allocate(1, channels, tokens);
            using var dqkv = dev.Allocate(1, 3 * channels, tokens);
            foreach (var kernel in Kernels(dev))
            {
                string how = kernel == MatmulKernel.Tiled && Attention.FlashSupported(dev, channels / heads)
                    ? "flash" : $"score buffer, gemm {kernel.Label()}";
                Add($"attention {channels}ch, {tokens} tokens, {heads} heads ({how})",
                    Time(dev, () => Attention.Forward(qkv, a, heads, legacyOrder: true, kernel)), 4.0 * tokens * tokens * channels, 0,
                    tensorCores: kernel == MatmulKernel.TensorCoreFp16);
                // FLOPs counted as the backward's four products (dV, dP, dQ, dK), whatever each version recomputes; flash
                // here includes the forward it reruns for the row log-sum-exp.
                Add($"attention backward {channels}ch, {tokens} tokens, {heads} heads ({how})",
                    Time(dev, () => Attention.Backward(qkv, a, dqkv, heads, legacyOrder: true, kernel)),
                    8.0 * tokens * tokens * channels, 0, tensorCores: kernel == MatmulKernel.TensorCoreFp16);
            }
        }

        // End to end: the UNet with each kernel behind its convolutions and attention; the stages after it use the
        // fastest fp32 one, since the pipeline's default precision is fp32.
        // The tiled kernels run with their norms fused into the convolutions and without, to show what fusion gains.
        // v4 reads the convolutions' weights from fp16 copies, as `--precision fp16` holds them (there without fp32 ones).
        if (dev.IsCuda)
        {
            ModelWeights.AddHalfCopies(model);
            var convs = model.Parameters().Where(p => p.IsConvolutionWeight).ToList();
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"convolution weights: {convs.Sum(p => 4L * p.Count) / 1e9:F3} GB in fp32, {convs.Sum(p => p.Half!.Bytes) / 1e9:F3} GB held in fp16"));
        }
        // One model, each kernel through a pass of its own plan (the weights stay as loaded).
        var forwardMs = new Dictionary<ExecutionPlan, double>();
        foreach (var kernel in Kernels(dev))
        {
            foreach (bool fuse in kernel.IsTiled() ? new[] { true, false } : new[] { false })
            {
                var candidate = ExecutionPlan.With(dev, kernel, fuse);
                foreach (int batch in new[] { 1, 8 })
                {
                    using var x = dev.Zeros(batch, 3, size, size);
                    using var t = dev.Upload(Enumerable.Repeat(250f, batch).ToArray(), batch);
                    double ms = Time(dev, () =>
                    {
                        using var pass = new Pass(candidate);
                        model.Forward(pass, x, t).Dispose();
                    }, reps: small ? 3 : 5);
                    forwardMs.TryAdd(candidate, ms);
                    Add($"UNet forward, batch {batch} ({kernel.Label()}: {kernel}{(fuse ? ", norms fused" : "")})", ms,
                        batch * ForwardFlop(small), 0, tensorCores: kernel == MatmulKernel.TensorCoreFp16);
                }
            }
        }
        var best = forwardMs.Where(p => p.Key.UNetMatmul != MatmulKernel.TensorCoreFp16).MinBy(p => p.Value).Key;
        Console.Error.WriteLine($"stages below: UNet kernel {best.UNetMatmul}, norms fused: {best.FusesNorms}");
        var extractor = new FeatureExtractor(model, [50, 150, 250], blocks, best);
        using (var image = dev.Zeros(3, size, size))
        using (var noise = dev.Zeros(3, size, size))
        {
            Add("features of one image (3 steps, materialised)", Time(dev, () => extractor.Extract(image, noise).Dispose(), reps: 3), 0, 0);
            Add("features of one image (3 steps, native blocks)", Time(dev, () => extractor.Activations(image, noise).Dispose(), reps: 3), 0, 0);
        }
        var layout = MlpLayout.ForClasses(10, extractor.Channels, small ? 5 : 29);
        using var ensemble = PixelEnsemble.CreateRandom(plan, layout, 0);
        using var trainer = new EnsembleTrainer(ensemble, 64);
        using var xb = dev.Buffer<float>(64L * layout.In);
        using var yb = dev.Buffer<int>(64);
        xb.Clear();
        yb.Clear();
        double stepMs = Time(dev, () => trainer.Step(xb.View, yb.View, 0), reps: 50);
        double stepFlop = 6.0 * 64 * layout.Members * ((double)layout.In * layout.Hidden1 + layout.Hidden1 * layout.Hidden2 + layout.Hidden2 * layout.Classes);
        Add($"ensemble training step (10 members, D={layout.In}) = {1000 / stepMs:F0} it/s", stepMs, stepFlop, 0);
        using (var image = dev.Zeros(3, size, size))
        using (var noise = dev.Zeros(3, size, size))
        using (var logits = dev.Buffer<float>((long)layout.Members * 16384 * layout.Classes))
        using (var labels = dev.Buffer<int>(16384))
        using (var js = dev.Buffer<float>(16384))
        {
            foreach (var lean in new[] { true, false })
            {
                Add($"prediction of one {size}² image ({(lean ? "lean" : "materialised")}, incl. features)", Time(dev, () =>
                {
                    using IImageFeatures f = lean
                        ? new LeanImageFeatures(dev, extractor, extractor.Activations(image, noise), size)
                        : new MaterializedImageFeatures(extractor.Extract(image, noise));
                    for (int start = 0; start < size * size; start += 16384)
                    {
                        int count = Math.Min(16384, size * size - start);
                        f.Logits(ensemble, start, count, logits.View);
                        EnsembleVote.Forward(dev, layout.Members, count, layout.Classes, logits.View, labels.View, js.View);
                    }
                }, reps: 3), 0, 0);
            }
        }

        string report = Report(dev, rows, small);
        Console.WriteLine(report);
        if (outFile is not null)
        {
            File.WriteAllText(outFile, report);
            File.WriteAllText(Path.ChangeExtension(outFile, ".json"), JsonSerializer.Serialize(rows));
        }
        return 0;
    }

    /// <summary>FLOPs of one full forward (convs, linears, attention products), counted from the model at 1 image.</summary>
    static double ForwardFlop(bool small) => small ? double.NaN : 2.24e12;

    /// <summary>Mean milliseconds of <paramref name="work"/> between profiling markers, after warm-up runs.</summary>
    static double Time(ComputeDevice dev, Action work, int warmup = 2, int reps = 10)
    {
        for (int i = 0; i < warmup; i++)
        {
            work();
        }
        dev.Synchronize();
        if (dev.IsCuda)
        {
            var start = dev.Accelerator.DefaultStream.AddProfilingMarker();
            for (int i = 0; i < reps; i++)
            {
                work();
            }
            var end = dev.Accelerator.DefaultStream.AddProfilingMarker();
            dev.Synchronize();
            return (end - start).TotalMilliseconds / reps;
        }
        // The CPU backend runs host code between launches, which markers on the accelerator stream do not see.
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < reps; i++)
        {
            work();
        }
        dev.Synchronize();
        return clock.Elapsed.TotalMilliseconds / reps;
    }

    static string Report(ComputeDevice dev, List<Row> rows, bool small)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"# IlgpuDiffSeg kernels and stages — {(small ? "demo UNet shapes" : "LSUN-256 ADM shapes")}");
        sb.AppendLine();
        sb.AppendLine($"- device: {dev.Describe()}");
        sb.AppendLine($"- date: {DateTime.UtcNow:yyyy-MM-dd}");
        sb.AppendLine($"- command: `IlgpuDiffSeg.Benchmarks gpu{(small ? " --small" : "")}`; timing: ILGPU profiling markers (CUDA events), " +
                      "warm-up excluded, mean of the repetitions; random weights");
        sb.AppendLine();
        sb.AppendLine("| what | ms | rate | % of peak |");
        sb.AppendLine("|---|---|---|---|");
        foreach (var r in rows)
        {
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Name} | {r.Milliseconds:F3} | {(double.IsNaN(r.Rate) || r.Rate == 0 ? "" : $"{r.Rate:F2} {r.Unit}")} | " +
                $"{(double.IsNaN(r.PercentOfPeak) || r.PercentOfPeak == 0 ? "" : $"{r.PercentOfPeak:F1}%")} |"));
        }
        return sb.ToString();
    }
}
