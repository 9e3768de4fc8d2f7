using System.CommandLine;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Cli;

/// <summary>diffseg unet --model M --x X.npy --t T.npy [--y Y.npy] -o OUT.npy [--blocks-dir DIR]</summary>
public static class UNetCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Required("--model", "Converted model (.safetensors from 'diffseg convert')");
        var x = CommonOptions.Required("--x", "Input batch, .npy float (N, 3, H, W)");
        var t = CommonOptions.Required("--t", "Timesteps, .npy integers (N,)");
        var y = new Option<string>("--y") { Description = "Class labels for class-conditional models, .npy integers (N,)" };
        var output = CommonOptions.Required("--output", "Model output, .npy float32 (N, 3 or 6, H, W)");
        output.Aliases.Add("-o");
        var blocksDir = new Option<string>("--blocks-dir") { Description = "Also write every decoder block's output as DIR/out_block_<i>.npy" };
        var cmd = new Command("unet", "Run one forward pass of the UNet on a batch") { model, x, t, y, output, blocksDir };
        cmd.SetAction(r => Program.Run(() =>
        {
            var run = UNetRun.Prepare(r.GetValue(model)!, r.GetValue(x)!, r.GetValue(t)!, r.GetValue(y), r.GetValue(output)!);
            string? dir = r.GetValue(blocksDir);
            using var dev = CommonOptions.OpenDevice(r, out var plan);
            var result = run.Execute(plan, capture: dir is not null, Console.Error.WriteLine);
            if (dir is not null)
            {
                OutputScope.CreateDirectory(dir);
            }
            Npy.Write(r.GetValue(output)!, result.Output, result.OutputShape);
            Console.WriteLine($"wrote {r.GetValue(output)} ({string.Join("×", result.OutputShape)})");
            if (dir is not null)
            {
                foreach (var (index, (values, shape)) in result.Blocks)
                {
                    Npy.Write(Path.Combine(dir, $"out_block_{index}.npy"), values, shape);
                }
                Console.WriteLine($"wrote {result.Blocks.Count} decoder blocks to {dir}");
            }
        }));
        return cmd;
    }
}
