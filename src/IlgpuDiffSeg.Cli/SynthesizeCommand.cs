using System.CommandLine;
using System.Globalization;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Cli;

/// <summary>
/// diffseg synthesize --config EXP.json --num-samples N -o OUT_DIR [--shard i/n]: ddpm-segmentation's DatasetDDPM
/// (generate_dataset.py), resumable batch by batch, split over shards with no coordination.
/// </summary>
public static class SynthesizeCommand
{
    public static Command Create()
    {
        var config = CommonOptions.Required("--config", "Trained experiment (ddpm-segmentation's JSON; 'diffseg train' ran on it)");
        config.Aliases.Add("--exp");
        var num = SampleCommand.Spelled("--num-samples", "Samples in all (over every shard)", 0, hasDefault: false);
        num.Required = true;
        var output = CommonOptions.Required("--output", "Output folder: batches/, samples_HxWx3.npz, dataset/ (resumed when it exists)");
        output.Aliases.Add("-o");
        var batch = SampleCommand.Spelled("--batch-size", "Samples per batch (the unit of resuming and sharding)", 8);
        var shard = new Option<string>("--shard") { Description = "i/n: take batches i, i+n, i+2n, … (a job array's task i of n)" };
        var respacing = SampleCommand.Spelled<string>("--timestep-respacing", "space_timesteps' spec (default: the model's, else " +
                                                                              "every step, as the original)", hasDefault: false);
        var ddim = SampleCommand.Spelled("--use-ddim", "DDIM instead of ancestral sampling", false);
        var eta = SampleCommand.Spelled("--eta", "DDIM's η", 0.0);
        var clip = SampleCommand.Spelled("--clip-denoised", "Clip the predicted x0 to [-1, 1] (true|false)", true);
        var seed = SampleCommand.Spelled("--seed", "Seed of the sampling noise", 0);
        var portion = SampleCommand.Spelled("--uncertainty-portion", "Fraction of samples the dataset folder drops (train_deeplab.py)",
            0.1);
        var devices = new Option<string>("--devices")
        {
            Description = "all: one worker per CUDA device of this machine, batches dealt in turn; or a count",
            DefaultValueFactory = _ => "1",
        };
        var cmd = new Command("synthesize", "DatasetDDPM: sample the experiment's DDPM and label the samples with its ensemble")
        {
            config, num, output, batch, shard, respacing, ddim, eta, clip, seed, portion, devices,
        };
        cmd.SetAction(r => Program.Run(() =>
        {
            var (index, count) = r.GetValue(shard) is { } s ? SynthesizeOptions.ParseShard(s) : (0, 1);
            var options = new SynthesizeOptions
            {
                ConfigPath = r.GetValue(config)!,
                OutputDir = r.GetValue(output)!,
                NumSamples = r.GetValue(num),
                BatchSize = r.GetValue(batch),
                Shard = index,
                Shards = count,
                TimestepRespacing = r.GetValue(respacing),
                UseDdim = r.GetValue(ddim),
                Eta = r.GetValue(eta),
                ClipDenoised = r.GetValue(clip),
                Seed = r.GetValue(seed),
                UncertaintyPortion = r.GetValue(portion),
            };
            int wanted = DeviceCount(r.GetValue(devices)!, CommonOptions.DeviceChoiceOf(r));
            var cfg = SynthesizeRun.Prepare(options, Console.Error.WriteLine);
            var opened = new List<ComputeDevice>();
            var plans = new List<ExecutionPlan>();
            using var first = CommonOptions.OpenDevice(r, out var plan);
            plans.Add(plan);
            try
            {
                for (int k = 1; k < wanted; k++)
                {
                    opened.Add(ComputeDevice.Create(DeviceChoice.Cuda, cudaIndex: k));
                    plans.Add(ExecutionPlan.For(opened[^1], plan.UNetMatmul.RoundsOperandsToHalf() ? Precision.Fp16 : Precision.Fp32));
                    Console.Error.WriteLine($"device {k}: {plans[^1].Describe()}");
                }
                Synthesize(options, cfg, plans, index, count);
            }
            finally
            {
                opened.ForEach(d => d.Dispose());
            }
        }));
        return cmd;
    }

    /// <summary>--devices: "all" (every CUDA device, or the one CPU accelerator) or a count that this machine has.</summary>
    static int DeviceCount(string text, DeviceChoice choice)
    {
        int cuda = choice == DeviceChoice.Cpu ? 0 : ComputeDevice.CudaDeviceCount();
        if (text == "all")
        {
            return Math.Max(1, cuda);
        }
        if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 1)
        {
            throw new DiffSegException($"--devices {text}: expected all or a positive count");
        }
        if (n > 1 && n > cuda)
        {
            throw new DiffSegException($"--devices {n}: several devices are CUDA devices, and this machine has {cuda}");
        }
        return n;
    }

    static void Synthesize(SynthesizeOptions options, ExperimentConfig cfg, List<ExecutionPlan> plans, int index, int count)
    {
        using var ctrlC = new CtrlC();
        var sum = SynthesizeRun.Run(options, cfg, plans, Console.Error.WriteLine, () => ctrlC.Requested);
        Console.WriteLine(sum.NpzPath is null
            ? $"shard {index}/{count}: {sum.BatchesDone} batches done, {sum.BatchesSkipped} already there; " +
              $"{sum.BatchesPresent} of {sum.BatchesTotal} present in {options.OutputDir}"
            : $"synthesized {options.NumSamples} samples ({sum.BatchesDone} batches now, {Progress.Format(sum.Seconds)}); wrote " +
              $"{sum.NpzPath} and {sum.DatasetPath} ({sum.DatasetImages} images with masks)");
    }
}
