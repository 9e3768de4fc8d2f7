using System.Text.Json.Nodes;

namespace IlgpuDiffSeg.Training;

/// <summary>
/// guided-diffusion's schedule samplers (resample.py): which timesteps a batch trains on, and each one's importance weight
/// 1/(T·p_t), so that the weighted loss stays an unbiased estimate of the uniform one.
/// </summary>
public abstract class ScheduleSampler(int steps)
{
    public int Steps { get; } = steps;

    /// <summary>The probability of each timestep.</summary>
    public abstract double[] Weights();

    /// <summary>Draws <paramref name="count"/> timesteps and their importance weights from <paramref name="random"/>.</summary>
    public (int[] Timesteps, float[] Weights) Sample(int count, Random random)
    {
        var w = Weights();
        double total = w.Sum();
        var cumulative = new double[w.Length];
        double acc = 0;
        for (int i = 0; i < w.Length; i++)
        {
            acc += w[i] / total;
            cumulative[i] = acc;
        }
        var t = new int[count];
        var weights = new float[count];
        for (int k = 0; k < count; k++)
        {
            double u = random.NextDouble();
            int i = Array.BinarySearch(cumulative, u);
            i = Math.Min(i < 0 ? ~i : i, w.Length - 1);
            t[k] = i;
            weights[k] = (float)(1.0 / (Steps * (w[i] / total)));
        }
        return (t, weights);
    }

    /// <summary>Records the per-sample losses of a step (loss-aware samplers learn from them).</summary>
    public virtual void Update(IReadOnlyList<int> timesteps, IReadOnlyList<float> losses)
    {
    }

    /// <summary>The sampler's state, for a checkpoint.</summary>
    public virtual JsonNode? State() => null;

    public virtual void Restore(JsonNode? state)
    {
    }

    /// <summary>"uniform" or "loss-second-moment" (guided-diffusion's names).</summary>
    public static ScheduleSampler Create(string name, int steps) => name switch
    {
        "uniform" => new UniformSampler(steps),
        "loss-second-moment" => new LossSecondMomentSampler(steps),
        _ => throw new DiffSegException($"unknown schedule sampler '{name}' (uniform or loss-second-moment)"),
    };
}

/// <summary>Every timestep equally likely; weights 1.</summary>
public sealed class UniformSampler(int steps) : ScheduleSampler(steps)
{
    public override double[] Weights() => Enumerable.Repeat(1.0, Steps).ToArray();
}

/// <summary>
/// LossSecondMomentResampler: the last 10 losses of every timestep are kept; until each has 10, sampling is uniform; then
/// p_t ∝ √mean(loss²), mixed with 0.1% of uniform so that no timestep starves.
/// </summary>
public sealed class LossSecondMomentSampler(int steps) : ScheduleSampler(steps)
{
    const int History = 10;
    const double UniformProbability = 0.001;

    readonly double[,] history = new double[steps, History];
    readonly int[] counts = new int[steps];

    bool WarmedUp => counts.All(c => c == History);

    public override double[] Weights()
    {
        if (!WarmedUp)
        {
            return Enumerable.Repeat(1.0, Steps).ToArray();
        }
        var w = new double[Steps];
        for (int t = 0; t < Steps; t++)
        {
            double sum = 0;
            for (int k = 0; k < History; k++)
            {
                sum += history[t, k] * history[t, k];
            }
            w[t] = Math.Sqrt(sum / History);
        }
        double total = w.Sum();
        for (int t = 0; t < Steps; t++)
        {
            w[t] = w[t] / total * (1 - UniformProbability) + UniformProbability / Steps;
        }
        return w;
    }

    public override void Update(IReadOnlyList<int> timesteps, IReadOnlyList<float> losses)
    {
        for (int i = 0; i < timesteps.Count; i++)
        {
            int t = timesteps[i];
            if (counts[t] == History)
            {
                // Shift out the oldest.
                for (int k = 0; k < History - 1; k++)
                {
                    history[t, k] = history[t, k + 1];
                }
                history[t, History - 1] = losses[i];
            }
            else
            {
                history[t, counts[t]++] = losses[i];
            }
        }
    }

    public override JsonNode State()
    {
        var o = new JsonObject { ["counts"] = new JsonArray(counts.Select(c => (JsonNode)c).ToArray()) };
        var h = new JsonArray();
        for (int t = 0; t < Steps; t++)
        {
            for (int k = 0; k < counts[t]; k++)
            {
                h.Add(history[t, k]);
            }
        }
        o["history"] = h;
        return o;
    }

    public override void Restore(JsonNode? state)
    {
        if (state is null)
        {
            return;
        }
        var c = state["counts"]!.AsArray().Select(v => (int)v!).ToArray();
        var h = state["history"]!.AsArray().Select(v => (double)v!).ToArray();
        if (c.Length != Steps || c.Any(v => v < 0 || v > History) || h.Length != c.Sum())
        {
            throw new DiffSegException("the checkpoint's loss-second-moment history does not fit this diffusion");
        }
        int at = 0;
        for (int t = 0; t < Steps; t++)
        {
            counts[t] = c[t];
            for (int k = 0; k < c[t]; k++)
            {
                history[t, k] = h[at++];
            }
        }
    }
}
