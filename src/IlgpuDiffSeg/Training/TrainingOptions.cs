using System.Globalization;
using System.Text.Json.Nodes;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Training;

/// <summary>
/// What `diffseg train-ddpm` trains with: image_train.py's flags (their names and defaults) plus a step limit, a seed and
/// the precision. Everything that decides the weights is in <see cref="Fingerprint"/>, which a run directory keeps, so a
/// resumed run refuses options that would make it another run.
/// </summary>
public sealed record TrainingOptions
{
    public required AdmFlags Flags { get; init; }

    /// <summary>Where the images come from: a folder (image_datasets.py's reading) or "synthetic-scenes" (the demo's stream).</summary>
    public required string Data { get; init; }

    public string? InitPath { get; init; }

    /// <summary>The file the flags came from, named by refusals of them (not part of the fingerprint).</summary>
    public string? FlagsPath { get; init; }

    /// <summary>The most EMA rates a run keeps: each is a full copy of the weights, updated every step.</summary>
    public const int MaxEmaRates = 16;
    public double Lr { get; init; } = 1e-4;
    public int BatchSize { get; init; } = 1;

    /// <summary>-1: the whole batch at once.</summary>
    public int Microbatch { get; init; } = -1;

    public double[] EmaRates { get; init; } = [0.9999];
    public string ScheduleSampler { get; init; } = "uniform";
    public double WeightDecay { get; init; }
    public long LrAnnealSteps { get; init; }

    /// <summary>Stop after this many steps in all (0: only lr_anneal_steps stops a run, as in the original).</summary>
    public long MaxSteps { get; init; }

    public int SaveInterval { get; init; } = 10000;
    public int LogInterval { get; init; } = 10;
    public int Seed { get; init; }
    public Precision Precision { get; init; } = Precision.Fp32;
    public double Fp16ScaleGrowth { get; init; } = 1e-3;

    /// <summary>The loss scale's starting log₂ (the original's 20).</summary>
    public double InitialLgLossScale { get; init; } = 20;

    public bool RandomFlip { get; init; } = true;

    public int MicrobatchSize => Microbatch > 0 ? Microbatch : BatchSize;

    /// <summary>Checks the values; throws naming the option.</summary>
    public void Validate()
    {
        Require(Lr > 0 && double.IsFinite(Lr), $"--lr must be positive, not {Lr}");
        Require(BatchSize >= 1, $"--batch-size must be at least 1, not {BatchSize}");
        Require(Microbatch == -1 || (Microbatch >= 1 && Microbatch <= BatchSize),
            $"--microbatch must be -1 or between 1 and the batch size {BatchSize}, not {Microbatch}");
        Require(EmaRates.Length > 0 && EmaRates.All(r => r > 0 && r < 1), "--ema-rate values must lie in (0, 1)");
        Require(EmaRates.Distinct().Count() == EmaRates.Length, "--ema-rate lists a rate twice (each names its own checkpoint files)");
        Require(EmaRates.Length <= MaxEmaRates, $"--ema-rate lists {EmaRates.Length} rates, more than {MaxEmaRates} " +
                                                "(each is a full copy of the weights)");
        Require(WeightDecay >= 0 && double.IsFinite(WeightDecay), $"--weight-decay must be non-negative, not {WeightDecay}");
        Require(LrAnnealSteps >= 0 && MaxSteps >= 0, "--lr-anneal-steps and --max-steps must be non-negative");
        Require(LrAnnealSteps > 0 || MaxSteps > 0, "give --max-steps (or --lr-anneal-steps): the original trains until it is killed");
        Require(SaveInterval >= 1 && LogInterval >= 1, "--save-interval and --log-interval must be at least 1");
        Require(Fp16ScaleGrowth >= 0, "fp16_scale_growth must be non-negative");
        if (ScheduleSampler is not ("uniform" or "loss-second-moment"))
        {
            throw new DiffSegException($"--schedule-sampler '{ScheduleSampler}' is neither uniform nor loss-second-moment");
        }

        static void Require(bool ok, string problem)
        {
            if (!ok)
            {
                throw new DiffSegException(problem);
            }
        }
    }

    /// <summary>The last step this run trains to.</summary>
    public long LastStep => MaxSteps > 0 ? (LrAnnealSteps > 0 ? Math.Min(MaxSteps, LrAnnealSteps) : MaxSteps) : LrAnnealSteps;

    /// <summary>
    /// The learning rate of step s (0-based) when annealing: the original sets it after each step from that step's index, so
    /// step s ≥ 1 runs at lr·(1 − (s − 1)/lr_anneal_steps) and step 0 at lr.
    /// </summary>
    public double LearningRate(long step) => LrAnnealSteps > 0 && step > 0 ? Lr * (1 - (double)(step - 1) / LrAnnealSteps) : Lr;

    /// <summary>
    /// Everything that decides the trained weights (model and diffusion flags, data, optimiser, batch, sampler, precision,
    /// seed), as JSON; max_steps, the intervals and the init file's name are not in it.
    /// </summary>
    public string Fingerprint()
    {
        var o = new JsonObject
        {
            ["flags"] = JsonNode.Parse(Flags.ToJson()),
            ["data"] = Data,
            ["lr"] = Lr,
            ["batch_size"] = BatchSize,
            ["microbatch"] = MicrobatchSize,
            ["ema_rate"] = string.Join(",", EmaRates.Select(r => r.ToString("R", CultureInfo.InvariantCulture))),
            ["schedule_sampler"] = ScheduleSampler,
            ["weight_decay"] = WeightDecay,
            ["lr_anneal_steps"] = LrAnnealSteps,
            ["seed"] = Seed,
            ["precision"] = Precision.ToString(),
            ["fp16_scale_growth"] = Fp16ScaleGrowth,
            ["random_flip"] = RandomFlip,
        };
        return o.ToJsonString();
    }

    /// <summary>"0.9999" or "0.999,0.9999".</summary>
    public static double[] ParseEmaRates(string text)
    {
        try
        {
            return text.Split(',').Select(r => double.Parse(r.Trim(), CultureInfo.InvariantCulture)).ToArray();
        }
        catch (FormatException)
        {
            throw new DiffSegException($"--ema-rate \"{text}\" is not a comma-separated list of numbers");
        }
    }

    /// <summary>An EMA rate as the original names its files: str(rate) in Python.</summary>
    public static string RateName(double rate) => rate.ToString("R", CultureInfo.InvariantCulture);
}
