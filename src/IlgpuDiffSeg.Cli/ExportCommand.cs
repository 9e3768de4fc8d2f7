using System.CommandLine;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Cli;

/// <summary>diffseg export MODEL.safetensors -o MODEL.pt [--flags-out FLAGS.json] | -o SMALLER.safetensors --half [--source TEXT]</summary>
public static class ExportCommand
{
    public static Command Create()
    {
        var input = new Argument<string>("model")
        {
            Description = "Converted or trained model (.safetensors with the flags in its metadata)",
        };
        var output = CommonOptions.Required("--output", "PyTorch checkpoint to write (.pt, what torch.save(model.state_dict()) writes), " +
                                                        "or a model again (.safetensors, with --half or --source)");
        output.Aliases.Add("-o");
        var flagsOut = new Option<string>("--flags-out")
        {
            Description = "Also write the model's flags as JSON with guided-diffusion's names (what 'diffseg convert --flags' reads)",
        };
        var half = new Option<bool>("--half")
        {
            Description = "Store the weights as F16 (half the file; they load as fp32 rounded to fp16): .safetensors output only",
        };
        var source = new Option<string>("--source")
        {
            Description = "Where the weights come from, kept in the model's metadata (what 'diffseg demo' shows): .safetensors output only",
        };
        var cmd = new Command("export", "Write a model as a PyTorch state_dict checkpoint that torch.load and guided-diffusion read")
        {
            input, output, flagsOut, half, source,
        };
        cmd.SetAction(r => Program.Run(() =>
        {
            string? flags = r.GetValue(flagsOut);
            ModelWeights.Export(
                r.GetValue(input)!, r.GetValue(output)!, flags, Console.Error.WriteLine, r.GetValue(half), r.GetValue(source));
            Console.WriteLine($"wrote {r.GetValue(output)}");
            if (flags is not null)
            {
                Console.WriteLine($"wrote {flags}");
            }
        }));
        return cmd;
    }
}
