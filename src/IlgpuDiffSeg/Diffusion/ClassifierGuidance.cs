using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Diffusion;

/// <summary>
/// classifier_sample.py's cond_fn: ∇_x Σ_n log softmax(classifier(x_t, t))[y_n], by a forward and a backward pass of the
/// noisy-image classifier at the step's model timestep. The sampler's step multiplies it by <see cref="Scale"/>
/// (classifier_scale) and adds σ²·g to the mean (ancestral, condition_mean) or −√(1 − ᾱ)·g to ε (DDIM, condition_score).
/// </summary>
public sealed class ClassifierGuidance(EncoderUNetModel classifier, float scale) : IGuidance
{
    public float Scale => scale;

    public EncoderUNetModel Classifier => classifier;

    public void Gradient(Tensor x, Tensor t, IReadOnlyList<long> labels, Tensor gradient)
    {
        var dev = classifier.Plan.Device;
        int classes = classifier.Flags.OutChannels;
        if (labels.Any(l => l < 0 || l >= classes))
        {
            throw new DiffSegException($"a class label is outside the classifier's [0, {classes})");
        }
        // Only d/dx is wanted; the parameter gradients the layers sum as they go are cleared, never read.
        classifier.ZeroGradients();
        using var pass = new Pass(classifier.Plan, training: false, saves: true);
        using var logits = classifier.Forward(pass, x, t);
        using var y = dev.Buffer<int>(labels.Select(l => (int)l).ToArray());
        using var dLogits = dev.Allocate(logits.Shape);
        ClassifierGradient.Forward(logits, y, dLogits);
        using var dx = classifier.InputGradient(pass, dLogits);
        dx.View.CopyTo(gradient.View);
    }
}
