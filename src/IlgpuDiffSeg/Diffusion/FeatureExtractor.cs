using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Diffusion;

/// <summary>
/// ddpm-segmentation's pixel features (docs/method.md, Feature extraction): for each step t, x_t = q_sample(x0, t, ε) with one shared
/// ε; one UNet call captures the chosen decoder blocks; each is upsampled bilinearly to the image size and the
/// results are concatenated step-major, then block-ascending. Steps of a small image run as one batch; a large image
/// runs one step at a time (one 256² image already fills a GPU, and batching three would triple the activations).
/// The UNet stops after the last captured block.
/// </summary>
public sealed class FeatureExtractor
{
    readonly UNetModel model;
    readonly ExecutionPlan? plan;
    readonly NoiseSchedule schedule;

    public IReadOnlyList<int> Steps { get; }

    /// <summary>The captured decoder blocks, ascending (the order of the original's forward hooks).</summary>
    public IReadOnlyList<int> Blocks { get; }

    /// <param name="plan">The plan the UNet runs by; the model's own unless a benchmark compares kernels.</param>
    public FeatureExtractor(UNetModel model, IEnumerable<int> steps, IEnumerable<int> blocks, ExecutionPlan? plan = null)
    {
        this.model = model;
        this.plan = plan;
        schedule = NoiseSchedule.Create(model.Flags.NoiseSchedule, model.Flags.DiffusionSteps);
        Steps = steps.ToArray();
        Blocks = blocks.Distinct().Order().ToArray();
        if (Steps.Count == 0 || Blocks.Count == 0)
        {
            throw new DiffSegException("feature extraction needs at least one step and one block");
        }
        foreach (var t in Steps)
        {
            schedule.QSampleCoefficients(t);
        }
        foreach (var b in Blocks)
        {
            if (b < 0 || b >= model.OutputBlocks.Count)
            {
                throw new DiffSegException($"block {b} does not exist: the model has decoder blocks 0..{model.OutputBlocks.Count - 1}");
            }
        }
    }

    /// <summary>Channels per step (sum over the blocks) and in total (× steps): dim[2] of an experiment.</summary>
    public int ChannelsPerStep => Blocks.Sum(b => model.OutputBlocks[b].Channels);

    public int Channels => ChannelsPerStep * Steps.Count;

    public UNetModel Model => model;

    /// <summary>Pixels a UNet batch may hold before the steps of an image are run one at a time.</summary>
    public int MaxBatchPixels { get; set; } = 3 * 128 * 128;

    /// <summary>The UNet's captured blocks at native resolution, (S, C_b, H/d, W/d) each, for all steps of one image.</summary>
    public UNetOutputs Activations(Tensor image, Tensor noise)
    {
        var dev = image.Device;
        int steps = Steps.Count;
        int perBatch = Math.Clamp(MaxBatchPixels / (image[1] * image[2]), 1, steps);
        if (perBatch == steps)
        {
            return Run(image, noise, 0, steps);
        }
        var result = new UNetOutputs();
        try
        {
            for (int s0 = 0; s0 < steps; s0 += perBatch)
            {
                int count = Math.Min(perBatch, steps - s0);
                using var part = Run(image, noise, s0, count);
                foreach (var (b, t) in part.Blocks)
                {
                    if (!result.Blocks.TryGetValue(b, out var all))
                    {
                        result.Blocks[b] = all = dev.Allocate([steps, .. t.Shape[1..]]);
                    }
                    t.View.CopyTo(all.View.SubView((long)s0 * (t.Length / count), t.Length));
                }
            }
            return result;
        }
        catch
        {
            result.Dispose();
            throw;
        }
    }

    /// <summary>One UNet call on steps [first, first + count) of one image.</summary>
    UNetOutputs Run(Tensor image, Tensor noise, int first, int count)
    {
        var dev = image.Device;
        var coefficients = new float[2 * count];
        for (int s = 0; s < count; s++)
        {
            (coefficients[2 * s], coefficients[2 * s + 1]) = schedule.QSampleCoefficients(Steps[first + s]);
        }
        using var coef = dev.Upload(coefficients, count, 2);
        using var xt = dev.Allocate(count, image[0], image[1], image[2]);
        using var eps = noise.Rank == 4 ? noise.Alias(noise.Shape).Slice0Range(first, count) : noise.Alias(noise.Shape);
        QSample.Forward(image, eps, coef, xt);
        using var t = dev.Upload(Steps.Skip(first).Take(count).Select(s => (float)s).ToArray(), count);
        using var pass = new Pass(plan ?? model.Plan);
        return model.Forward(pass, xt, t, capture: Blocks.ToArray(), computeOutput: false);
    }

    /// <summary>The materialised features of one image: (Channels, H, W). The caller owns the result.</summary>
    public Tensor Extract(Tensor image, Tensor noise)
    {
        var dev = image.Device;
        int h = image[1], w = image[2];
        using var acts = Activations(image, noise);
        var features = dev.Allocate(Channels, h, w);
        int offset = 0;
        for (int s = 0; s < Steps.Count; s++)
        {
            foreach (var b in Blocks)
            {
                using var one = acts.Blocks[b].Slice0(s);
                UpsampleBilinear.Forward(one, features, offset);
                offset += one[0];
            }
        }
        return features;
    }
}
