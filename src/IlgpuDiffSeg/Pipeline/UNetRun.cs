using System.Diagnostics;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg;

/// <summary>
/// One UNet forward pass on .npy inputs (the 'unet' command): every input is read and checked before the device
/// is touched, and the results come back to the host for the caller to write.
/// </summary>
public sealed class UNetRun
{
    readonly string modelPath;
    readonly float[] x;
    readonly int[] xShape;
    readonly float[] t;
    readonly long[]? y;

    UNetRun(string modelPath, float[] x, int[] xShape, float[] t, long[]? y)
    {
        this.modelPath = modelPath;
        this.x = x;
        this.xShape = xShape;
        this.t = t;
        this.y = y;
    }

    public sealed record Result(float[] Output, int[] OutputShape, SortedDictionary<int, (float[] Values, int[] Shape)> Blocks);

    public static UNetRun Prepare(string modelPath, string xPath, string tPath, string? yPath, string outputPath)
    {
        AtomicFile.CheckWritable(outputPath);
        if (!File.Exists(modelPath))
        {
            throw DiffSegException.For(modelPath, "file not found");
        }
        var xs = Npy.ReadFloat32(xPath, out var shape, -1, AdmFlags.InChannels, -1, -1);
        var tArray = Npy.Read(tPath);
        Npy.CheckShape(tPath, tArray, [shape[0]]);
        var ts = tArray.ToInt64(tPath);
        long[]? ys = null;
        if (yPath is not null)
        {
            var yArray = Npy.Read(yPath);
            Npy.CheckShape(yPath, yArray, [shape[0]]);
            ys = yArray.ToInt64(yPath);
        }
        return new UNetRun(modelPath, xs, shape, ts.Select(v => (float)v).ToArray(), ys);
    }

    public Result Execute(ExecutionPlan plan, bool capture, Action<string>? log = null)
    {
        var dev = plan.Device;
        using var model = ModelWeights.Load(modelPath, plan);
        if (model.Flags.ClassCond && y is null)
        {
            throw DiffSegException.For(modelPath, "is class-conditional: pass class labels with --y");
        }
        if (!model.Flags.ClassCond && y is not null)
        {
            throw DiffSegException.For(modelPath, "is not class-conditional: --y must not be given");
        }
        log?.Invoke($"model: {model.ParameterCount:N0} parameters, {model.OutputBlocks.Count} decoder blocks; batch {xShape[0]} at " +
                    $"{xShape[2]}×{xShape[3]}");
        using var dx = dev.Upload(x, xShape);
        using var dt = dev.Upload(t, t.Length);
        var sw = Stopwatch.StartNew();
        using var outputs = model.Forward(dx, dt, y, capture ? Enumerable.Range(0, model.OutputBlocks.Count).ToArray() : null);
        var blocks = new SortedDictionary<int, (float[], int[])>();
        foreach (var (i, b) in outputs.Blocks)
        {
            blocks[i] = (b.ToArray(), b.Shape);
        }
        var output = outputs.Output!.ToArray();
        log?.Invoke($"forward pass: {sw.Elapsed.TotalSeconds:F2} s");
        return new Result(output, outputs.Output.Shape, blocks);
    }
}
