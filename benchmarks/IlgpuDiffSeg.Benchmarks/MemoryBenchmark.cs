using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// Issue 4's benchmark: peak host RAM, peak device memory and time of the lean and the materialised feature paths,
/// for a training set of the Bedroom-28 shape (LSUN-256 UNet, blocks 5,6,7,8,12, steps 50,150,250, 40 images,
/// 10 members, 29 classes — needs a GPU) or a scaled-down shape that runs on a CPU (the demo UNet at 64², 40 images).
/// Each path runs in its own child process, so each peak RSS belongs to one path; the driver prints one table.
/// </summary>
public static class MemoryBenchmark
{
    public sealed record Shape(string Name, string Flags, int Size, int[] Blocks, int[] Steps, int Classes, int Members, int Images);

    public static readonly Shape Bedroom28 = new("bedroom28", """
        {"attention_resolutions": "32,16,8", "class_cond": false, "diffusion_steps": 1000, "dropout": 0.1, "image_size": 256,
         "learn_sigma": true, "noise_schedule": "linear", "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
         "resblock_updown": true, "use_fp16": true, "use_scale_shift_norm": true}
        """, 256, [5, 6, 7, 8, 12], [50, 150, 250], 29, 10, 40);

    public static readonly Shape CpuScaled = new("cpu-scaled", Demo.ModelFlags, 64, Demo.Blocks, Demo.Steps, 5, 10, 40);

    public sealed record Result(string Shape, string Path, string Device, int Images, long PeakRssBytes, long PeakDeviceBytes,
        long FeatureStoreBytes, double ExtractSecondsPerImage, double TrainIterationsPerSecond, double PredictSecondsPerImage);

    /// <summary>Driver: runs both paths (and fp16 lean) in child processes of this program and reports them together.</summary>
    public static int Drive(string shapeName, int images, string device, string? outFile)
    {
        var results = new List<Result>();
        foreach (var path in new[] { "lean", "lean-fp16", "materialized" })
        {
            var psi = new ProcessStartInfo(Environment.ProcessPath!)
            {
                RedirectStandardOutput = true,
                UseShellExecute = false,
            };
            if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet")
            {
                psi.ArgumentList.Add(typeof(MemoryBenchmark).Assembly.Location);
            }
            else if (System.Reflection.Assembly.GetEntryAssembly() != typeof(MemoryBenchmark).Assembly)
            {
                // Run from the test executable (the device's one program): its benchmarks answer to `bench`.
                psi.ArgumentList.Add("bench");
            }
            foreach (var a in new[] { "memory-child", shapeName, path, images.ToString(CultureInfo.InvariantCulture), device })
            {
                psi.ArgumentList.Add(a);
            }
            using var child = Process.Start(psi)!;
            string output = child.StandardOutput.ReadToEnd();
            child.WaitForExit();
            var line = output.Split('\n').LastOrDefault(l => l.StartsWith('{'));
            if (child.ExitCode != 0 || line is null)
            {
                Console.Error.WriteLine($"{path}: child failed (exit {child.ExitCode})");
                results.Add(new Result(shapeName, path, device, images, 0, 0, 0, double.NaN, double.NaN, double.NaN));
                continue;
            }
            results.Add(JsonSerializer.Deserialize<Result>(line)!);
        }
        string report = Report(results);
        Console.WriteLine(report);
        if (outFile is not null)
        {
            File.WriteAllText(outFile, report);
        }
        return results.All(r => r.PeakRssBytes > 0) ? 0 : 1;
    }

    static string Report(List<Result> results)
    {
        var sb = new StringBuilder();
        var first = results.First(r => r.Device != "");
        sb.AppendLine($"# Feature-path memory benchmark — {first.Shape}, {first.Images} training images");
        sb.AppendLine();
        sb.AppendLine($"- device: {first.Device}");
        sb.AppendLine($"- date: {DateTime.UtcNow:yyyy-MM-dd}, commit: {Git("rev-parse --short HEAD")}");
        sb.AppendLine($"- command: `dotnet run --project benchmarks/IlgpuDiffSeg.Benchmarks -c Release -- memory {first.Shape} {first.Images}`");
        sb.AppendLine();
        sb.AppendLine("| path | peak host RAM | peak device memory | feature store | extract s/image | train it/s | predict s/image |");
        sb.AppendLine("|---|---|---|---|---|---|---|");
        foreach (var r in results)
        {
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Path} | {r.PeakRssBytes / 1e9:F2} GB | {r.PeakDeviceBytes / 1e9:F2} GB | {r.FeatureStoreBytes / 1e9:F3} GB | " +
                $"{r.ExtractSecondsPerImage:F2} | {r.TrainIterationsPerSecond:F1} | {r.PredictSecondsPerImage:F2} |"));
        }
        sb.AppendLine();
        sb.AppendLine("Peak host RAM is the child process's VmHWM (on the CPU accelerator the \"device\" is host memory, so it " +
                      "includes the device figures). Peak device memory counts every allocation of the program (tensor pool, " +
                      "feature store, ensemble, optimizer state, batch buffers).");
        return sb.ToString();
    }

    static string Git(string args)
    {
        try
        {
            var p = Process.Start(new ProcessStartInfo("git", args) { RedirectStandardOutput = true, UseShellExecute = false })!;
            string s = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return s;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return "unknown";
        }
    }

    /// <summary>Child: one path, one shape; prints its Result as a JSON line.</summary>
    public static int Child(string shapeName, string path, int images, string device)
    {
        var shape = shapeName == Bedroom28.Name ? Bedroom28 : CpuScaled;
        using var dev = ComputeDevice.Create(device == "cuda" ? DeviceChoice.Cuda : device == "cpu" ? DeviceChoice.Cpu : DeviceChoice.Auto,
            hostKernels: true);
        var plan = ExecutionPlan.For(dev);
        var flags = AdmFlags.Parse(shape.Flags, shape.Name);
        using var model = new UNetModel(flags);
        ModelWeights.InitializeRandom(model, plan, 1);
        var extractor = new FeatureExtractor(model, shape.Steps, shape.Blocks);
        int size = shape.Size, pixels = size * size;
        dev.ResetPeak();

        ITrainingFeatures store = path == "materialized"
            ? new MaterializedTrainingFeatures(dev, extractor, images, size)
            : new LeanTrainingFeatures(plan, extractor, images, size, half: path == "lean-fp16");
        var labels = new byte[(long)images * pixels];
        using var noise = dev.Upload(NoiseSource.Draw(3 * pixels, 0), 3, size, size);
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < images; i++)
        {
            var (rgb, mask) = SyntheticScenes.Render(size, i);
            var x0 = new float[3 * pixels];
            for (int p = 0; p < pixels; p++)
            {
                for (int c = 0; c < 3; c++)
                {
                    x0[c * pixels + p] = 2f * (rgb[3 * p + c] / 255f) - 1f;
                }
                labels[(long)i * pixels + p] = (byte)(mask[p] % shape.Classes);
            }
            using var image = dev.Upload(x0, 3, size, size);
            store.Add(i, image, noise);
        }
        dev.Synchronize();
        double extract = clock.Elapsed.TotalSeconds / images;

        var layout = MlpLayout.ForClasses(shape.Members, store.Channels, shape.Classes);
        using var ensemble = PixelEnsemble.CreateRandom(plan, layout, 0);
        using var trainer = new EnsembleTrainer(ensemble, 64);
        var rng = new Random(0);
        var ids = Enumerable.Range(0, 64 * 200).Select(_ => rng.Next(images * pixels)).ToArray();
        using var deviceIds = dev.Buffer<int>(ids);
        using var deviceLabels = dev.Buffer<byte>(labels);
        using var x = dev.Buffer<float>(64L * store.Channels);
        using var y = dev.Buffer<int>(64);
        for (int warm = 0; warm < 5; warm++)
        {
            store.Gather(deviceIds.View, 64, deviceLabels.View, x.View, y.View);
            trainer.Step(x.View, y.View, 0);
        }
        dev.Synchronize();
        clock.Restart();
        for (int it = 0; it < 200; it++)
        {
            store.Gather(deviceIds.From(64L * it), 64, deviceLabels.View, x.View, y.View);
            trainer.Step(x.View, y.View, 0);
        }
        dev.Synchronize();
        double rate = 200 / clock.Elapsed.TotalSeconds;
        long storeBytes = store.DeviceBytes;
        store.Dispose();

        // Prediction of one image through the same path.
        clock.Restart();
        using (var image = dev.Upload(new float[3 * pixels], 3, size, size))
        {
            IImageFeatures features = path == "materialized"
                ? new MaterializedImageFeatures(extractor.Extract(image, noise))
                : new LeanImageFeatures(dev, extractor, extractor.Activations(image, noise), size);
            using (features)
            {
                int chunk = Math.Min(pixels, 16384);
                using var logits = dev.Buffer<float>((long)layout.Members * chunk * layout.Classes);
                using var votes = dev.Buffer<int>(chunk);
                using var js = dev.Buffer<float>(chunk);
                for (int start = 0; start < pixels; start += chunk)
                {
                    int count = Math.Min(chunk, pixels - start);
                    features.Logits(ensemble, start, count, logits.View);
                    EnsembleVote.Forward(dev, layout.Members, count, layout.Classes, logits.View, votes.View, js.View);
                }
                dev.Synchronize();
            }
        }
        double predict = clock.Elapsed.TotalSeconds;
        var result = new Result(shape.Name, path, dev.Describe(), images, Process.GetCurrentProcess().PeakWorkingSet64, dev.PeakDeviceBytes,
            storeBytes, extract, rate, predict);
        Console.WriteLine(JsonSerializer.Serialize(result));
        return 0;
    }
}
