using System.CommandLine;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Cli;

/// <summary>
/// diffseg sample --model M.safetensors -o samples.npz [image_sample.py's options, either spelling]: samples a diffusion
/// model as guided-diffusion's image_sample.py does.
/// </summary>
public static class SampleCommand
{
    /// <summary>An option under our spelling (--num-samples) that also answers to guided-diffusion's (--num_samples).</summary>
    internal static Option<T> Spelled<T>(string name, string description, T? defaultValue = default, bool hasDefault = true)
    {
        var option = new Option<T>(name) { Description = description };
        if (hasDefault)
        {
            option.DefaultValueFactory = _ => defaultValue!;
        }
        if (name.LastIndexOf('-') > 1)
        {
            option.Aliases.Add("--" + name[2..].Replace('-', '_'));
        }
        return option;
    }

    public static Command Create()
    {
        var model = Spelled<string>("--model", "Converted or trained model (.safetensors)", hasDefault: false);
        model.Required = true;
        model.Aliases.Add("--model_path");
        var output = CommonOptions.Required("--output",
            "Samples as image_sample.py's .npz (arr_0 uint8 NHWC, arr_1 labels); a PNG grid beside");
        output.Aliases.Add("-o");
        var num = Spelled("--num-samples", "Samples in all", 16);
        var batch = Spelled("--batch-size", "Samples per batch", 16);
        var respacing = Spelled<string>("--timestep-respacing", "space_timesteps' spec: 250, ddim25, sections 10,5,3 " +
                                                                 "(default: the model's flag, else every step)", hasDefault: false);
        var ddim = Spelled("--use-ddim", "DDIM instead of ancestral sampling", false);
        var eta = Spelled("--eta", "DDIM's η (0: deterministic)", 0.0);
        var clip = Spelled("--clip-denoised", "Clip the predicted x0 to [-1, 1] (true|false)", true);
        var seed = Spelled("--seed", "Seed of the noise and of random class labels", 0);
        var labels = Spelled<string>("--class-labels", "Class labels, .npy integers (N,) (class-conditional models; default: random)",
            hasDefault: false);
        var noise = Spelled<string>("--noise", "Recorded noise, .npy float (S+1, N, 3, H, W): x_T, then the draw of each step",
            hasDefault: false);
        var raw = Spelled<string>("--raw", "Also write the final float32 samples (N, 3, H, W) before quantisation", hasDefault: false);
        var classifier = Spelled<string>("--classifier", "Converted noisy-image classifier: classifier guidance as classifier_sample.py",
            hasDefault: false);
        classifier.Aliases.Add("--classifier_path");
        var scale = Spelled("--classifier-scale", "Guidance scale (classifier_scale)", 1.0);
        var baseSamples = Spelled<string>("--base-samples", "A super-resolution model's low-resolution inputs: an npz as this " +
                                                            "command writes (super_res_sample.py)", hasDefault: false);
        var cmd = new Command("sample", "Sample a diffusion model as guided-diffusion's image_sample.py (and classifier_sample.py) does")
        {
            model, output, num, batch, respacing, ddim, eta, clip, seed, labels, noise, raw, classifier, scale, baseSamples,
        };
        cmd.SetAction(r => Program.Run(() =>
        {
            var options = new SampleOptions
            {
                ModelPath = r.GetValue(model)!,
                OutputPath = r.GetValue(output)!,
                NumSamples = r.GetValue(num),
                BatchSize = r.GetValue(batch),
                TimestepRespacing = r.GetValue(respacing),
                UseDdim = r.GetValue(ddim),
                Eta = r.GetValue(eta),
                ClipDenoised = r.GetValue(clip),
                Seed = r.GetValue(seed),
                ClassLabelsPath = r.GetValue(labels),
                NoisePath = r.GetValue(noise),
                RawPath = r.GetValue(raw),
                ClassifierPath = r.GetValue(classifier),
                ClassifierScale = r.GetValue(scale),
                BaseSamplesPath = r.GetValue(baseSamples),
            };
            var run = SampleRun.Prepare(options);
            using var dev = CommonOptions.OpenDevice(r, out var plan);
            var result = run.Execute(plan, Console.Error.WriteLine);
            Console.WriteLine($"sampled {options.NumSamples} images in {result.Steps} steps ({Progress.Format(result.Seconds)}, " +
                              $"{result.StepsPerSecond:F2} steps/s, {result.SteadyStepsPerSecond:F2} after the first); wrote " +
                              $"{options.OutputPath} and " +
                              SampleImages.GridPathFor(options.OutputPath) + (options.RawPath is null ? "" : " and " + options.RawPath));
        }));
        return cmd;
    }
}
