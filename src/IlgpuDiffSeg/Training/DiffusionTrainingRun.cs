using System.Diagnostics;
using System.Globalization;
using System.Text;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Training;

/// <summary>
/// `diffseg train-ddpm`: a DiffusionTrainer driven to the last step, resuming from RUN_DIR when it holds a run with the same
/// options; every log interval a progress line (loss, mse, vb and their means per quarter of the timesteps as the original
/// logs loss_q0..q3, grad and param norms, steps/s, ETA), a row of RUN_DIR/progress.csv and RUN_DIR/loss.png; checkpoints
/// every save interval and at the end; a stop request (Ctrl+C) saves the current step first.
/// </summary>
public static class DiffusionTrainingRun
{
    public const string CsvFile = "progress.csv";
    public const string CurveFile = "loss.png";

    public sealed record Summary(long FirstStep, long LastStep, double Seconds, double FinalLoss, string ModelPath);

    public static Summary Run(TrainingOptions options, ExecutionPlan plan, string runDir, Action<string> log,
        Func<bool>? stopRequested = null)
    {
        options.Validate();
        if (options.Data != SyntheticImages.Name && !Directory.Exists(options.Data))
        {
            throw DiffSegException.For(options.Data, "data folder not found");
        }
        CheckMemory(options, plan);
        // Made through the output scope: a run that fails before its first checkpoint leaves no folder behind.
        OutputScope.CreateDirectory(runDir);
        AtomicFile.CheckWritable(Path.Combine(runDir, CsvFile));
        using var trainer = new DiffusionTrainer(options, plan, options.FlagsPath);
        long? resumed = trainer.Resume(runDir);
        long first = trainer.Step, last = options.LastStep;
        using var data = options.Data == SyntheticImages.Name
            ? (ITrainingImages)new SyntheticImages(options.Flags.ImageSize, options.BatchSize, options.Seed)
            : new FolderImages(options.Data, options.Flags.ImageSize, options.BatchSize, options.Flags.ClassCond, options.RandomFlip,
                options.Seed, first);
        log($"{(resumed is null ? "training" : $"resuming from step {resumed} in")} {runDir}: " +
            $"{trainer.Model.ParameterCount:N0} parameters, {trainer.Diffusion.Steps} diffusion steps " +
            $"({trainer.Diffusion.LossType}, {trainer.Diffusion.VarianceType}); data: {data.Describe()}; batch {options.BatchSize}" +
            (options.MicrobatchSize < options.BatchSize ? $" in microbatches of {options.MicrobatchSize}" : "") +
            $", lr {options.Lr}, {options.Precision}; to step {last}");
        var csv = new ProgressCsv(Path.Combine(runDir, CsvFile), first);
        var window = new LogWindow(trainer.Diffusion.Steps);
        var clock = Stopwatch.StartNew();
        double lastLoss = double.NaN;
        long savedAt = resumed ?? -1;
        while (trainer.Step < last)
        {
            var (images, labels) = data.Batch(trainer.Step);
            var report = trainer.RunStep(images, labels);
            window.Add(report);
            lastLoss = report.Terms.MeanLoss;
            if (!report.Taken)
            {
                log($"step {report.Step}: non-finite gradients in fp16, step skipped; lg_loss_scale lowered to {report.LgLossScale:F3}");
            }
            long done = trainer.Step;
            if (done % options.LogInterval == 0 || done == last)
            {
                double seconds = clock.Elapsed.TotalSeconds, rate = (done - first) / Math.Max(seconds, 1e-9);
                var row = window.Flush(done, options.BatchSize, seconds);
                csv.Append(row);
                log($"step {done}/{last} · {row.Describe()} · {rate:F2} steps/s · {Progress.Format(seconds)} elapsed, " +
                    $"{Progress.Format((last - done) / Math.Max(rate, 1e-9))} left");
                LossCurve.Write(Path.Combine(runDir, CurveFile), csv.Rows);
            }
            if (done % options.SaveInterval == 0 || done == last)
            {
                Save(trainer, runDir, options);
                savedAt = done;
            }
            if (stopRequested?.Invoke() == true && done < last)
            {
                if (savedAt != done)
                {
                    Save(trainer, runDir, options);
                }
                throw new TrainingStoppedException($"stopped at step {done}; saved to {runDir} (run the same command to resume)");
            }
        }
        return new Summary(first, trainer.Step, clock.Elapsed.TotalSeconds, lastLoss, TrainingCheckpoint.ModelFile(runDir, trainer.Step));
    }

    /// <summary>Refuses a batch (host arrays) or microbatch (one pass's activations) that could never fit the device.</summary>
    static void CheckMemory(TrainingOptions o, ExecutionPlan plan)
    {
        using var model = ModelWeights.BuildChecked(o.Flags, o.FlagsPath ?? "flags");
        double imageBytes = 4.0 * 3 * o.Flags.ImageSize * o.Flags.ImageSize * (o.Flags.IsSuperResolution ? 2 : 1);
        // The batch as the data stream hands it over, and the copy being decoded ahead.
        MemoryEstimate.Check($"--batch-size {o.BatchSize}", o.BatchSize, 3 * imageBytes, 0, plan);
        double weights = model.ParameterCount * 4.0 * (4 + o.EmaRates.Length);
        MemoryEstimate.Check(o.MicrobatchSize < o.BatchSize ? $"--microbatch {o.MicrobatchSize}" : $"--batch-size {o.BatchSize}",
            o.MicrobatchSize, MemoryEstimate.ActivationBytesPerImage(o.Flags, training: true), weights + 3 * o.BatchSize * imageBytes,
            plan);
    }

    /// <summary>
    /// Writes the current step's checkpoint and keeps it, with the log beside it, even if the command fails later (a corrupt
    /// image met at step 5000): a saved step is complete, and the same command resumes from it.
    /// </summary>
    static void Save(DiffusionTrainer trainer, string runDir, TrainingOptions options)
    {
        long step = trainer.Step;
        trainer.Save(runDir);
        foreach (var path in options.EmaRates.Select(r => TrainingCheckpoint.EmaFile(runDir, r, step))
                     .Append(TrainingCheckpoint.OptimizerFile(runDir, step)).Append(TrainingCheckpoint.ModelFile(runDir, step))
                     .Append(Path.Combine(runDir, CsvFile)).Append(Path.Combine(runDir, CurveFile)))
        {
            OutputScope.Keep(path);
        }
    }
}

/// <summary>The means the original logs over an interval (logkv_mean): each term, each term by quarter of t, the norms.</summary>
sealed class LogWindow(int diffusionSteps)
{
    readonly Dictionary<string, (double Sum, int Count)> sums = new();
    int skipped;
    double lr, lg;

    public void Add(DiffusionTrainer.StepReport r)
    {
        for (int i = 0; i < r.Timesteps.Length; i++)
        {
            int quarter = Math.Min(3, 4 * r.Timesteps[i] / diffusionSteps);
            Add("loss", r.Terms.Loss[i], quarter);
            Add("mse", r.Terms.Mse[i], quarter);
            Add("vb", r.Terms.Vb[i], quarter);
        }
        if (r.Taken)
        {
            Add("grad_norm", r.GradNorm);
            Add("param_norm", r.ParamNorm);
        }
        else
        {
            skipped++;
        }
        lr = r.Lr;
        lg = r.LgLossScale;
    }

    void Add(string key, double value, int quarter = -1)
    {
        Accumulate(key, value);
        if (quarter >= 0)
        {
            Accumulate($"{key}_q{quarter}", value);
        }
    }

    void Accumulate(string key, double value)
    {
        var (s, c) = sums.GetValueOrDefault(key);
        sums[key] = (s + value, c + 1);
    }

    public ProgressRow Flush(long step, int batchSize, double seconds)
    {
        var values = ProgressRow.Columns.ToDictionary(k => k,
            k => sums.TryGetValue(k, out var v) && v.Count > 0 ? v.Sum / v.Count : double.NaN);
        var row = new ProgressRow(step, step * batchSize, values, lr, lg, skipped, seconds);
        sums.Clear();
        skipped = 0;
        return row;
    }
}

/// <summary>One row of progress.csv.</summary>
sealed record ProgressRow(long Step, long Samples, Dictionary<string, double> Values, double Lr, double LgLossScale, int Skipped,
    double Seconds)
{
    public static readonly string[] Columns =
    [
        "loss", "mse", "vb", "loss_q0", "loss_q1", "loss_q2", "loss_q3", "mse_q0", "mse_q1", "mse_q2", "mse_q3",
        "vb_q0", "vb_q1", "vb_q2", "vb_q3", "grad_norm", "param_norm",
    ];

    public static string Header => "step,samples," + string.Join(",", Columns) + ",lr,lg_loss_scale,skipped,seconds";

    public string ToCsv() => string.Create(CultureInfo.InvariantCulture,
        $"{Step},{Samples},{string.Join(",", Columns.Select(c => Values[c].ToString("G6", CultureInfo.InvariantCulture)))}," +
        $"{Lr:G6},{LgLossScale:G6},{Skipped},{Seconds:F1}");

    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"loss {Values["loss"]:F4} (q0 {Values["loss_q0"]:F3} q1 {Values["loss_q1"]:F3} q2 {Values["loss_q2"]:F3} " +
        $"q3 {Values["loss_q3"]:F3}) · " +
        $"mse {Values["mse"]:F4} · vb {Values["vb"]:F4} · grad_norm {Values["grad_norm"]:F3}");

    /// <summary>A row as <see cref="ToCsv"/> writes it, or null for anything else (the log is rewritten without it).</summary>
    public static ProgressRow? Parse(string line)
    {
        var f = line.Split(',');
        if (f.Length != Columns.Length + 6 || !long.TryParse(f[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out long step))
        {
            return null;
        }
        try
        {
            double D(int i) => double.Parse(f[i], CultureInfo.InvariantCulture);
            var values = Columns.Select((c, i) => (c, D(2 + i))).ToDictionary(p => p.c, p => p.Item2);
            int k = 2 + Columns.Length;
            return new ProgressRow(step, long.Parse(f[1], CultureInfo.InvariantCulture), values, D(k), D(k + 1),
                int.Parse(f[k + 2], CultureInfo.InvariantCulture), D(k + 3));
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            return null;
        }
    }
}

/// <summary>RUN_DIR/progress.csv: rows past a resumed step (logged after its checkpoint) are dropped on resume.</summary>
sealed class ProgressCsv
{
    readonly string path;

    public List<ProgressRow> Rows { get; } = new();

    public ProgressCsv(string path, long resumedStep)
    {
        this.path = path;
        if (File.Exists(path))
        {
            Rows.AddRange(File.ReadLines(path).Skip(1).Select(ProgressRow.Parse).OfType<ProgressRow>().Where(r => r.Step <= resumedStep));
        }
        Rewrite();
    }

    public void Append(ProgressRow row)
    {
        Rows.Add(row);
        File.AppendAllText(path, row.ToCsv() + "\n");
    }

    void Rewrite()
    {
        var text = new StringBuilder(ProgressRow.Header).Append('\n');
        foreach (var r in Rows)
        {
            text.Append(r.ToCsv()).Append('\n');
        }
        AtomicFile.Write(path, s => s.Write(Encoding.UTF8.GetBytes(text.ToString())));
    }
}
