using System.CommandLine;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Cli;

/// <summary>diffseg convert MODEL.pt --flags FLAGS.json -o MODEL.safetensors (a diffusion model or, with classifier_* flags, a
/// classifier)</summary>
public static class ConvertCommand
{
    public static Command Create()
    {
        var input = new Argument<string>("checkpoint") { Description = "Official guided-diffusion checkpoint (.pt, PyTorch zip format)" };
        var flags = CommonOptions.Required("--flags", "Model flags as JSON, with guided-diffusion's names (e.g. image_size, num_channels)");
        var output = CommonOptions.Required("--output", "Converted model (.safetensors)");
        output.Aliases.Add("-o");
        var cmd = new Command("convert", "Check a .pt checkpoint against its flags and convert it to safetensors (no Python needed)")
        {
            input, flags, output,
        };
        cmd.SetAction(r => Program.Run(() =>
        {
            // Flags with classifier_* names describe a noisy-image classifier (classifier guidance), others a diffusion model.
            var convert = ClassifierWeights.IsClassifierFlags(r.GetValue(flags)!) ? (Action<string, string, string, Action<string>>)
                ClassifierWeights.Convert : ModelWeights.Convert;
            convert(r.GetValue(input)!, r.GetValue(flags)!, r.GetValue(output)!, Console.Error.WriteLine);
            Console.WriteLine($"wrote {r.GetValue(output)}");
        }));
        return cmd;
    }
}
