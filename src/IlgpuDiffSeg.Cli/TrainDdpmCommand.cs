using System.CommandLine;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;
using IlgpuDiffSeg.Training;

namespace IlgpuDiffSeg.Cli;

/// <summary>
/// diffseg train-ddpm --flags FLAGS.json (--data-dir DIR | --synthetic-scenes) -o RUN_DIR [image_train.py's options]: trains
/// (or, with --init, fine-tunes) a diffusion model; the same command on an existing RUN_DIR resumes it.
/// </summary>
public static class TrainDdpmCommand
{
    /// <summary>An option under our spelling (--batch-size) that also answers to guided-diffusion's (--batch_size).</summary>
    static Option<T> Option<T>(string name, string description, T defaultValue)
    {
        var option = new Option<T>(name) { Description = description, DefaultValueFactory = _ => defaultValue };
        if (name.Contains('-', StringComparison.Ordinal) && name.LastIndexOf('-') > 1)
        {
            option.Aliases.Add("--" + name[2..].Replace('-', '_'));
        }
        return option;
    }

    public static Command Create()
    {
        var flags = CommonOptions.Required("--flags", "The model and diffusion flags, guided-diffusion's names (FLAGS.json)");
        var dataDir = new Option<string>("--data-dir") { Description = "Training images (jpg/jpeg/png/gif, found recursively)" };
        dataDir.Aliases.Add("--data_dir");
        var synthetic = new Option<bool>("--synthetic-scenes") { Description = "Train on the demo's endless stream of generated scenes" };
        var superRes = new Option<bool>("--super-res")
        {
            Description = "Train a super-resolution model (super_res_train.py): the flags give large_size and small_size; the " +
                          "low-resolution input is the batch area-downsampled",
        };
        var output = CommonOptions.Required("--output", "Run directory: checkpoints, progress.csv, loss.png (resumed when it exists)");
        output.Aliases.Add("-o");
        var init = new Option<string>("--init") { Description = "Start from a converted or trained model (fine-tuning); flags must agree" };
        var lr = Option("--lr", "Learning rate (AdamW)", 1e-4);
        var batch = Option("--batch-size", "Images per step", 1);
        var micro = Option("--microbatch", "Images per forward/backward (-1: the whole batch); gradients add up", -1);
        var ema = Option("--ema-rate", "EMA rate(s), comma-separated", "0.9999");
        var sampler = Option("--schedule-sampler", "uniform or loss-second-moment", "uniform");
        var decay = Option("--weight-decay", "AdamW weight decay", 0.0);
        var anneal = Option("--lr-anneal-steps", "Anneal the learning rate linearly to 0 over this many steps (0: constant)", 0L);
        var maxSteps = Option("--max-steps", "Stop after this many steps in all", 0L);
        var save = Option("--save-interval", "Steps between checkpoints", 10000);
        var logEvery = Option("--log-interval", "Steps between progress lines", 10);
        var seed = Option("--seed", "Seed of the initial weights, timesteps, noise, dropout and data order", 0);
        var cmd = new Command("train-ddpm", "Train or fine-tune an ADM diffusion model as guided-diffusion's image_train.py does")
        {
            flags, dataDir, synthetic, superRes, output, init, lr, batch, micro, ema, sampler, decay, anneal, maxSteps, save, logEvery,
            seed,
        };
        cmd.SetAction(r => Program.Run(() =>
        {
            string flagsPath = r.GetValue(flags)!;
            var admFlags = AdmFlags.Load(flagsPath);
            if (admFlags.IsSuperResolution != r.GetValue(superRes))
            {
                throw DiffSegException.For(flagsPath, admFlags.IsSuperResolution
                    ? $"describes a super-resolution model (large_size {admFlags.LargeSize}, small_size {admFlags.SmallSize}): " +
                      "add --super-res"
                    : "--super-res needs super_res_train.py's large_size and small_size in the flags");
            }
            string? folder = r.GetValue(dataDir);
            if ((folder is null) == !r.GetValue(synthetic))
            {
                throw new DiffSegException("give exactly one of --data-dir DIR and --synthetic-scenes");
            }
            if (r.GetValue(init) is { } initPath && !File.Exists(initPath))
            {
                throw DiffSegException.For(initPath, "file not found");
            }
            var options = new TrainingOptions
            {
                Flags = admFlags,
                FlagsPath = flagsPath,
                Data = folder ?? SyntheticImages.Name,
                InitPath = r.GetValue(init),
                Lr = r.GetValue(lr),
                BatchSize = r.GetValue(batch),
                Microbatch = r.GetValue(micro),
                EmaRates = TrainingOptions.ParseEmaRates(r.GetValue(ema)!),
                ScheduleSampler = r.GetValue(sampler)!,
                WeightDecay = r.GetValue(decay),
                LrAnnealSteps = r.GetValue(anneal),
                MaxSteps = r.GetValue(maxSteps),
                SaveInterval = r.GetValue(save),
                LogInterval = r.GetValue(logEvery),
                Seed = r.GetValue(seed),
                Precision = r.GetValue(CommonOptions.Precision) == "fp16" ? Precision.Fp16 : Precision.Fp32,
            };
            options.Validate();
            using var dev = CommonOptions.OpenDevice(r, out var plan);
            using var ctrlC = new CtrlC();
            var s = DiffusionTrainingRun.Run(options, plan, r.GetValue(output)!, Console.Error.WriteLine, () => ctrlC.Requested);
            Console.WriteLine($"trained steps {s.FirstStep}..{s.LastStep} in {Progress.Format(s.Seconds)}; " +
                              $"final loss {s.FinalLoss:F5}; " +
                              $"wrote {s.ModelPath}");
        }));
        return cmd;
    }
}
