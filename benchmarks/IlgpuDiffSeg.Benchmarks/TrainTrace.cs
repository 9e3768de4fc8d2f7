using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// One ensemble member trained for a fixed number of steps on exported features (export-features), writing its initial
/// parameters, the batch order and the final parameters, so that original_mlp.py --replay can train the original's
/// PyTorch classifier from the same start on the same batches and compare (the training step's parity with PyTorch).
/// </summary>
public static class TrainTrace
{
    public static int Run(string featureDir, int classes, int steps, string outDir)
    {
        var files = Directory.GetFiles(Path.Combine(featureDir, "train"), "*_features.npy").Order(StringComparer.Ordinal).ToArray();
        var first = Npy.Read(files[0]);
        int d = first.Shape[0], pixels = first.Shape[1] * first.Shape[2];
        var x = new float[(long)files.Length * pixels * d];
        var y = new int[files.Length * pixels];
        for (int i = 0; i < files.Length; i++)
        {
            var f = Npy.Read(files[i]).ToFloat32(files[i]);
            var m = Npy.Read(files[i].Replace("_features.npy", "_mask.npy")).ToInt64("mask");
            for (int p = 0; p < pixels; p++)
            {
                y[i * pixels + p] = (int)m[p];
                for (int c = 0; c < d; c++)
                {
                    x[((long)i * pixels + p) * d + c] = f[(long)c * pixels + p];
                }
            }
        }
        var rng = new Random(7);
        var order = Enumerable.Range(0, steps * 64).Select(_ => rng.Next(y.Length)).ToArray();
        using var dev = ComputeDevice.Create(DeviceChoice.Auto, hostKernels: true);
        using var ensemble = PixelEnsemble.CreateRandom(ExecutionPlan.For(dev), MlpLayout.ForClasses(1, d, classes), seed: 11);
        using var trainer = new EnsembleTrainer(ensemble, 64);
        Directory.CreateDirectory(outDir);
        Npy.Write(Path.Combine(outDir, "initial.npy"), ensemble.Parameters.ToArray(), [(int)ensemble.Parameters.Length]);
        Npy.Write(Path.Combine(outDir, "order.npy"), order.Select(v => (long)v).ToArray(), [order.Length]);
        using var xb = dev.Buffer<float>(64L * d);
        using var yb = dev.Buffer<int>(64);
        var bx = new float[64 * d];
        var by = new int[64];
        var losses = new float[steps];
        for (int s = 0; s < steps; s++)
        {
            for (int b = 0; b < 64; b++)
            {
                int g = order[s * 64 + b];
                Array.Copy(x, (long)g * d, bx, (long)b * d, d);
                by[b] = y[g];
            }
            xb.CopyFrom(bx);
            yb.CopyFrom(by);
            trainer.Step(xb.View, yb.View, epoch: 0);
            losses[s] = trainer.LastLoss()[0];
        }
        Npy.Write(Path.Combine(outDir, "final.npy"), ensemble.Parameters.ToArray(), [(int)ensemble.Parameters.Length]);
        Npy.Write(Path.Combine(outDir, "running.npy"), ensemble.RunningMean1.ToArray().Concat(ensemble.RunningVar1.ToArray())
            .Concat(ensemble.RunningMean2.ToArray()).Concat(ensemble.RunningVar2.ToArray()).ToArray(), [2 * (128 + 32)]);
        Npy.Write(Path.Combine(outDir, "losses.npy"), losses, [steps]);
        Console.WriteLine($"{steps} steps of one member (D={d}, {classes} classes) → {outDir}");
        return 0;
    }
}
