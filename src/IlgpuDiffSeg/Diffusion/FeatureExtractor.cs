using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Diffusion;

/// <summary>
/// ddpm-segmentation's pixel features (REFERENCE §A1–A6): for each step t, x_t = q_sample(x0, t, ε) with one shared
/// ε; one UNet call captures the chosen decoder blocks; each is upsampled bilinearly to the image size and the
/// results are concatenated step-major, then block-ascending. All steps of an image run as one batch, and the UNet
/// stops after the last captured block.
/// </summary>
public sealed class FeatureExtractor
{
    readonly UNetModel model;
    readonly NoiseSchedule schedule;

    public IReadOnlyList<int> Steps { get; }

    /// <summary>The captured decoder blocks, ascending (the order of the original's forward hooks).</summary>
    public IReadOnlyList<int> Blocks { get; }

    public FeatureExtractor(UNetModel model, IEnumerable<int> steps, IEnumerable<int> blocks)
    {
        this.model = model;
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

    /// <summary>The UNet's captured blocks at native resolution, (S, C_b, H/d, W/d) each, for all steps of one image.</summary>
    public UNetOutputs Activations(Tensor image, Tensor noise)
    {
        var dev = image.Device;
        int steps = Steps.Count;
        var coefficients = new float[2 * steps];
        for (int s = 0; s < steps; s++)
        {
            (coefficients[2 * s], coefficients[2 * s + 1]) = schedule.QSampleCoefficients(Steps[s]);
        }
        using var coef = dev.Upload(coefficients, steps, 2);
        using var xt = dev.Allocate(steps, image[0], image[1], image[2]);
        QSample.Forward(image, noise, coef, xt);
        using var t = dev.Upload(Steps.Select(s => (float)s).ToArray(), steps);
        return model.Forward(xt, t, capture: Blocks.ToArray(), computeOutput: false);
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
