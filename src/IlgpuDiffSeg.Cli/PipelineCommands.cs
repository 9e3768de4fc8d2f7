using System.CommandLine;
using System.Globalization;
using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Cli;

/// <summary>features, train, evaluate, predict.</summary>
public static class PipelineCommands
{
    static Option<string> Config() => CommonOptions.Required("--config", "Experiment JSON in ddpm-segmentation's format (experiments/*/ddpm.json)");

    static void Log(string line) => Console.Error.WriteLine(line);

    static ExperimentConfig LoadConfig(ParseResult r, Option<string> config) => ExperimentConfig.Load(r.GetValue(config)!, Log);

    public static Command Features()
    {
        var model = CommonOptions.Required("--model", "Converted model (.safetensors)");
        var image = CommonOptions.Required("--image", "PNG/JPEG image, or .npy (3, H, W) in [-1, 1]");
        var noise = new Option<string>("--noise") { Description = "Shared noise ε, .npy (1, 3, H, W) or (3, H, W); default: drawn from --seed" };
        var seed = new Option<int>("--seed") { Description = "Seed for ε when --noise is not given", DefaultValueFactory = _ => 0 };
        var steps = new Option<string>("--steps") { Description = "Diffusion steps t", DefaultValueFactory = _ => "50,150,250" };
        var blocks = new Option<string>("--blocks") { Description = "Decoder blocks (output_blocks indices)", DefaultValueFactory = _ => "5,6,7,8,12" };
        var output = CommonOptions.Required("--output", "Features, .npy float32 (C, H, W)");
        output.Aliases.Add("-o");
        var cmd = new Command("features", "Write the DDPM pixel features of one image: (C, H, W), steps-major then blocks ascending")
        {
            model, image, noise, seed, steps, blocks, output,
        };
        cmd.SetAction(r => Program.Run(() =>
        {
            string outPath = r.GetValue(output)!;
            AtomicFile.CheckWritable(outPath);
            var stepList = ParseList(r.GetValue(steps)!, "--steps");
            var blockList = ParseList(r.GetValue(blocks)!, "--blocks");
            string imagePath = r.GetValue(image)!;
            string modelPath = r.GetValue(model)!;
            // The image's size is checked against the model (its flags, from the file's header) before it is decoded.
            using (var header = SafetensorsFile.Open(modelPath))
            {
                var imageSize = ImageData.ImageSize(imagePath);
                UNetRun.CheckSize(imagePath, 1, imageSize[0], imageSize[1], ModelWeights.FlagsOf(header), modelPath);
            }
            var x0 = ImageData.LoadImageAsIs(imagePath, out var size);
            int n = 3 * size[0] * size[1];
            float[] eps;
            if (r.GetValue(noise) is { } noisePath)
            {
                var a = Npy.Read(noisePath);
                if (a.Count != n || a.Shape.Length is < 3 or > 4 || (a.Shape.Length == 4 && a.Shape[0] != 1) ||
                    a.Shape[^2] != size[0] || a.Shape[^1] != size[1] || a.Shape[^3] != 3)
                {
                    throw DiffSegException.For(noisePath, $"noise shape is {a.ShapeString}, expected (1, 3, {size[0]}, {size[1]}) to match the image");
                }
                eps = a.ToFloat32(noisePath);
                Npy.RequireFinite(noisePath, eps, a.Shape);
            }
            else
            {
                eps = NoiseSource.Draw(n, r.GetValue(seed));
            }
            using var dev = CommonOptions.OpenDevice(r, out var plan);
            using var unet = ModelWeights.Load(modelPath, plan);
            if (Array.FindIndex(stepList, t => t < 0 || t >= unet.Flags.DiffusionSteps) is var si && si >= 0 && stepList[si] is var step)
            {
                throw new DiffSegException($"--steps: step {step} is outside [0, {unet.Flags.DiffusionSteps}), the diffusion steps of {modelPath}");
            }
            if (Array.FindIndex(blockList, b => b < 0 || b >= unet.OutputBlocks.Count) is var bi && bi >= 0 && blockList[bi] is var block)
            {
                throw new DiffSegException($"--blocks: block {block} does not exist; {modelPath} has decoder blocks 0..{unet.OutputBlocks.Count - 1}");
            }
            if (size[0] % unet.SizeMultiple != 0 || size[1] % unet.SizeMultiple != 0)
            {
                throw DiffSegException.For(imagePath, $"is {size[1]}×{size[0]}; the UNet of {modelPath} needs sides that are multiples of {unet.SizeMultiple}");
            }
            var extractor = new FeatureExtractor(unet, stepList, blockList);
            using var img = dev.Upload(x0, 3, size[0], size[1]);
            using var noiseTensor = dev.Upload(eps, 3, size[0], size[1]);
            using var features = extractor.Extract(img, noiseTensor);
            Npy.Write(outPath, features.ToArray(), features.Shape);
            Console.WriteLine($"wrote {outPath} ({string.Join("×", features.Shape)})");
        }));
        return cmd;
    }

    static int[] ParseList(string text, string option)
    {
        int[] values;
        try
        {
            values = text.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(s => int.Parse(s.Trim(), CultureInfo.InvariantCulture)).ToArray();
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new DiffSegException($"{option} \"{text}\" is not a comma-separated list of integers");
        }
        if (values.Length is 0 or > 64)
        {
            throw new DiffSegException($"{option} \"{text}\" must list 1 to 64 values");
        }
        return values;
    }

    public static Command Train()
    {
        var config = Config();
        var cmd = new Command("train", "Extract features of the training images and train the pixel-classifier ensemble (resumes if interrupted)")
        {
            config,
        };
        cmd.SetAction(r => Program.Run(() =>
        {
            var cfg = LoadConfig(r, config);
            using var dev = CommonOptions.OpenDevice(r, out var plan);
            // Ctrl+C saves the state at the current step instead of losing the run.
            using var ctrlC = new CtrlC();
            var s = TrainingRun.Run(cfg, plan, Log, _ => ctrlC.Requested);
            Console.WriteLine($"trained {cfg.ModelNum} members on {s.LabelledPixels:N0} labelled pixels of {s.Images} images: " +
                              $"{s.Iterations:N0} iterations, {s.Epochs} epochs, {Progress.Format(s.Seconds)}; wrote {s.EnsemblePath}");
        }));
        return cmd;
    }

    public static Command Evaluate()
    {
        var config = Config();
        var cmd = new Command("evaluate", "Label the test images and print per-class IoU, then a last line 'mIoU: <value>'") { config };
        cmd.SetAction(r => Program.Run(() =>
        {
            var cfg = LoadConfig(r, config);
            using var dev = CommonOptions.OpenDevice(r, out var plan);
            var iou = EvaluationRun.Run(cfg, plan, Log);
            Console.WriteLine(iou.Report());
        }));
        return cmd;
    }

    public static Command Predict()
    {
        var config = Config();
        var input = CommonOptions.Required("--input", "An image, or a folder of images");
        var output = CommonOptions.Required("--output", "Folder for <stem>.npy, <stem>.png, <stem>_overlay.png and uncertainty.tsv");
        output.Aliases.Add("-o");
        var cmd = new Command("predict", "Label new images with a trained experiment") { config, input, output };
        cmd.SetAction(r => Program.Run(() =>
        {
            var cfg = LoadConfig(r, config);
            using var dev = CommonOptions.OpenDevice(r, out var plan);
            int n = PredictionRun.Run(cfg, plan, r.GetValue(input)!, r.GetValue(output)!, Log);
            Console.WriteLine($"labelled {n} image(s) into {r.GetValue(output)}");
        }));
        return cmd;
    }
}
