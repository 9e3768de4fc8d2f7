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

    /// <summary>
    /// Reads and checks every input against the model's flags (read from the file's header, before any weight): x is
    /// (N, 3, H, W) with N ≥ 1 and H, W multiples of the UNet's size step, finite; t holds N timesteps in
    /// [0, diffusion_steps); y, for class-conditional models only, N labels in [0, classes). Each problem names its file.
    /// </summary>
    public static UNetRun Prepare(string modelPath, string xPath, string tPath, string? yPath, string outputPath)
    {
        AtomicFile.CheckWritable(outputPath);
        AdmFlags flags;
        using (var file = SafetensorsFile.Open(modelPath))
        {
            flags = ModelWeights.FlagsOf(file);
        }
        // UNetModel.SizeMultiple: one factor of 2 per resolution level below the first.
        int sizeMultiple = 1 << (flags.ChannelMultipliers().Length - 1);
        var xs = Npy.ReadFloat32(xPath, out var shape, -1, AdmFlags.InChannels, -1, -1);
        if (shape[0] == 0 || shape[2] == 0 || shape[3] == 0 || shape[2] % sizeMultiple != 0 || shape[3] % sizeMultiple != 0)
        {
            throw DiffSegException.For(xPath, $"shape is {Npy.ShapeString(shape)}: the batch must not be empty and H, W must be positive " +
                                              $"multiples of {sizeMultiple}, as the UNet of {modelPath} needs");
        }
        CheckSize(xPath, shape[0], shape[2], shape[3], flags, modelPath);
        Npy.RequireFinite(xPath, xs, shape);
        var ts = ReadPerImage(tPath, shape[0], xPath);
        for (int i = 0; i < ts.Length; i++)
        {
            if (ts[i] < 0 || ts[i] >= flags.DiffusionSteps)
            {
                throw DiffSegException.For(tPath, $"timestep {ts[i]} at index {i} is outside [0, {flags.DiffusionSteps}), the diffusion " +
                                                  $"steps of {modelPath}");
            }
        }
        long[]? ys = null;
        if (yPath is not null)
        {
            if (!flags.ClassCond)
            {
                throw DiffSegException.For(modelPath, "is not class-conditional: --y must not be given");
            }
            ys = ReadPerImage(yPath, shape[0], xPath);
            if (Array.FindIndex(ys, v => v < 0 || v >= flags.NumClasses) is var i && i >= 0 && ys[i] is var bad)
            {
                throw DiffSegException.For(yPath, $"class label {bad} is outside [0, {flags.NumClasses})");
            }
        }
        return new UNetRun(modelPath, xs, shape, ts.Select(v => (float)v).ToArray(), ys);
    }

    /// <summary>
    /// The UNet's activations grow with the pixels it is given: images up to twice the model's training size per side, and
    /// batches up to 256 images at that size, so that a large but valid input file is refused rather than run out of memory.
    /// </summary>
    public static void CheckSize(string path, int n, int h, int w, AdmFlags flags, string modelPath)
    {
        int side = 2 * flags.ImageSize;
        if (h > side || w > side)
        {
            throw DiffSegException.For(path, $"is {w}×{h}; the UNet of {modelPath} (image_size {flags.ImageSize}) takes images up to " +
                                             $"{side}×{side}: resize it first");
        }
        if ((long)n * h * w > 256L * flags.ImageSize * flags.ImageSize)
        {
            throw DiffSegException.For(path, $"holds a batch of {n} images of {w}×{h}, more than 256 images at the model's image_size " +
                                             $"{flags.ImageSize}: split it");
        }
    }

    static long[] ReadPerImage(string path, int n, string xPath)
    {
        var a = Npy.Read(path);
        if (a.Shape.Length != 1 || a.Shape[0] != n)
        {
            throw DiffSegException.For(path, $"shape is {a.ShapeString}, expected ({n}) to match the batch of {xPath}");
        }
        if (a.Type == NpyType.Bool)
        {
            throw DiffSegException.For(path, "is a bool array, expected integers");
        }
        return a.ToInt64(path);
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
