using System.CommandLine;
using System.Globalization;
using IlgpuDiffSeg.Training;

namespace IlgpuDiffSeg.Cli;

/// <summary>diffseg loss --model M --x X.npy --t T.npy --noise N.npy [--y Y.npy] [-o GRADS.safetensors]</summary>
public static class LossCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Required("--model", "Converted or trained model (.safetensors)");
        var x = CommonOptions.Required("--x", "Clean batch x_start, .npy float (N, 3, H, W) in [-1, 1]");
        var t = CommonOptions.Required("--t", "Timesteps, .npy integers (N,), in the model's (respaced) diffusion");
        var noise = CommonOptions.Required("--noise", "The noise q_sample adds, .npy float (N, 3, H, W)");
        var y = new Option<string>("--y") { Description = "Class labels for class-conditional models, .npy integers (N,)" };
        var output = new Option<string>("--output")
        {
            Description = "Write d mean(loss) / d every parameter as .safetensors, under the state_dict names",
        };
        output.Aliases.Add("-o");
        var cmd = new Command("loss", "guided-diffusion's training loss on one batch (dropout off) and its gradients")
        {
            model, x, t, noise, y, output,
        };
        cmd.SetAction(r => Program.Run(() =>
        {
            var run = LossRun.Prepare(r.GetValue(model)!, r.GetValue(x)!, r.GetValue(t)!, r.GetValue(noise)!, r.GetValue(y),
                r.GetValue(output));
            using var dev = CommonOptions.OpenDevice(r, out var plan);
            var result = run.Execute(plan, Console.Error.WriteLine);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"loss: {result.Terms.MeanLoss:R}"));
            if (result.HasMse)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"mse: {result.Terms.MeanMse:R}"));
            }
            if (result.HasVb)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"vb: {result.Terms.MeanVb:R}"));
            }
            if (r.GetValue(output) is { } path)
            {
                LossRun.WriteGradients(path, result, r.GetValue(model)!);
                Console.Error.WriteLine($"wrote {path} ({result.Gradients.Count} gradient tensors)");
            }
        }));
        return cmd;
    }
}
