using System.CommandLine;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Cli;

/// <summary>diffseg demo: the whole method on procedural scenes with the small ADM from weights/.</summary>
public static class DemoCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--output") { Description = "Folder for the data set, experiment, predictions and pictures", DefaultValueFactory = _ => "demo-out" };
        output.Aliases.Add("-o");
        var train = new Option<int>("--train") { Description = "Training images", DefaultValueFactory = _ => 16 };
        var test = new Option<int>("--test") { Description = "Test images", DefaultValueFactory = _ => 8 };
        var members = new Option<int>("--members") { Description = "Ensemble members (the original uses 10)", DefaultValueFactory = _ => 10 };
        var writeModel = new Option<string>("--write-model")
        {
            Description = "Only write the demo UNet with random weights (seed 1234) at this path and stop: the baseline for --model",
        };
        var model = new Option<string>("--model") { Description = "The UNet to use instead of weights/demo-adm.safetensors" };
        var cmd = new Command("demo", "Build a small labelled data set, train and evaluate the whole pipeline on it, print mIoU, write pictures")
        {
            output, train, test, members, writeModel, model,
        };
        cmd.SetAction(r => Program.Run(() =>
        {
            using var dev = CommonOptions.OpenDevice(r, out var plan);
            if (r.GetValue(writeModel) is { } path)
            {
                Demo.WriteModel(path, plan);
                Console.WriteLine($"wrote {path}");
                return;
            }
            if (r.GetValue(train) < 1 || r.GetValue(test) < 1 || r.GetValue(members) < 1)
            {
                throw new DiffSegException("--train, --test and --members must be at least 1");
            }
            var options = new Demo.Options(r.GetValue(output)!, r.GetValue(train), r.GetValue(test), Members: r.GetValue(members),
                ModelPath: r.GetValue(model));
            var iou = Demo.Run(options, plan, Console.Error.WriteLine);
            Console.WriteLine(iou.Report(c => IlgpuDiffSeg.Data.SyntheticScenes.ClassNames[c]));
        }));
        return cmd;
    }
}
