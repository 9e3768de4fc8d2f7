using ILGPU.Runtime;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Model;

/// <summary>guided-diffusion's normalization(): GroupNorm32(32, C), affine.</summary>
public sealed class GroupNormLayer : Module
{
    public GroupNormLayer(string prefix, int channels) : base(prefix)
    {
        if (channels % Kernels.GroupNorm.DefaultGroups != 0)
        {
            throw new DiffSegException($"{prefix.TrimEnd('.')}: GroupNorm32 needs a channel count divisible by 32, got {channels}");
        }
        Channels = channels;
        Weight = Param("weight", channels);
        Bias = Param("bias", channels);
    }

    public int Channels { get; }
    public Parameter Weight { get; }
    public Parameter Bias { get; }
}

/// <summary>conv_nd(2, cin, cout, k, padding=k/2, stride).</summary>
public sealed class Conv2dLayer : Module, IBlockLayer
{
    public Conv2dLayer(string prefix, int inChannels, int outChannels, int kernel, int stride = 1) : base(prefix)
    {
        InChannels = inChannels;
        OutChannels = outChannels;
        Stride = stride;
        Weight = ConvolutionParam("weight", outChannels, inChannels, kernel, kernel);
        Bias = Param("bias", outChannels);
    }

    public int InChannels { get; }
    public int OutChannels { get; }
    public int Stride { get; }
    public Parameter Weight { get; }
    public Parameter Bias { get; }

    /// <summary>conv(x) [+ residual].</summary>
    public Tensor Forward(Pass p, Tensor x, Tensor? residual = null)
    {
        var y = AllocateOutput(p, x);
        Conv2d.Forward(x, Weight.ConvWeights, Bias.T, y, Stride, residual, p.Plan.UNetMatmul);
        p.Save(this, new SavedTensors(x));
        return y;
    }

    /// <summary>
    /// conv(act(norm(x))) [+ residual], act = SiLU when <paramref name="silu"/>, the norm with the ResBlock's scale-shift
    /// when given: one fused launch where the plan fuses norms, else the norm's own pass first — into x itself when
    /// <paramref name="overwriteInput"/> (x is a temporary of the caller's) and the pass does not train.
    /// </summary>
    public Tensor ForwardNormalized(Pass p, Tensor x, GroupNormLayer norm, bool silu, Tensor? scaleShift = null, Tensor? residual = null,
        bool overwriteInput = false)
    {
        var y = AllocateOutput(p, x);
        using var stats = Kernels.GroupNorm.Statistics(x);
        if (p.Plan.FusesNorms)
        {
            using var coefficients = Kernels.GroupNorm.Coefficients(x, stats, norm.Weight.T, norm.Bias.T, scaleShift);
            Conv2d.ForwardNormalized(x, coefficients, silu, Weight.ConvWeights, Bias.T, y, Stride, residual, p.Plan.UNetMatmul);
        }
        else
        {
            bool inPlace = overwriteInput && !p.Training;
            var normed = inPlace ? x : p.Device.Allocate(x.Shape);
            try
            {
                Kernels.GroupNorm.Apply(x, stats, norm.Weight.T, norm.Bias.T, normed, silu, scaleShift);
                Conv2d.Forward(normed, Weight.ConvWeights, Bias.T, y, Stride, residual, p.Plan.UNetMatmul);
            }
            finally
            {
                if (!inPlace)
                {
                    normed.Dispose();
                }
            }
        }
        p.Save(this, new SavedTensors(x, stats, scaleShift));
        return y;
    }

    Tensor IBlockLayer.Forward(Pass p, Tensor x, Tensor embSilu) => Forward(p, x);

    Tensor AllocateOutput(Pass p, Tensor x)
    {
        int k = Weight.Shape[2], pad = k / 2;
        return p.Device.Allocate(x[0], OutChannels, (x[2] + 2 * pad - k) / Stride + 1, (x[3] + 2 * pad - k) / Stride + 1);
    }
}

/// <summary>conv_nd(1, cin, cout, 1): the attention's qkv and proj_out; weights (cout, cin, 1), run as a 1×1 2-d convolution.</summary>
public sealed class Conv1x1Layer : Module
{
    public Conv1x1Layer(string prefix, int inChannels, int outChannels) : base(prefix)
    {
        OutChannels = outChannels;
        Weight = ConvolutionParam("weight", outChannels, inChannels, 1);
        Bias = Param("bias", outChannels);
    }

    public int OutChannels { get; }
    public Parameter Weight { get; }
    public Parameter Bias { get; }

    /// <summary>The (Cout, Cin, 1) weights as the 1×1 2-d convolution that computes this layer.</summary>
    ConvWeights PlaneWeights => Weight.ConvWeights.Reshaped(Weight.Shape[0], Weight.Shape[1], 1, 1);

    /// <summary>x: (N, Cin, H, W) → (N, Cout, H, W), treating H·W as the 1-d length T; [+ residual].</summary>
    public Tensor Forward(Pass p, Tensor x, Tensor? residual = null)
    {
        var y = p.Device.Allocate(x[0], OutChannels, x[2], x[3]);
        Conv2d.Forward(x, PlaneWeights, Bias.T, y, 1, residual, p.Plan.UNetMatmul);
        p.Save(this, new SavedTensors(x));
        return y;
    }

    /// <summary>This layer applied to norm(x) (the attention's qkv of GN(x)), fused where the plan fuses norms.</summary>
    public Tensor ForwardNormalized(Pass p, Tensor x, GroupNormLayer norm)
    {
        var y = p.Device.Allocate(x[0], OutChannels, x[2], x[3]);
        using var stats = Kernels.GroupNorm.Statistics(x);
        if (p.Plan.FusesNorms)
        {
            using var coefficients = Kernels.GroupNorm.Coefficients(x, stats, norm.Weight.T, norm.Bias.T, null);
            Conv2d.ForwardNormalized(x, coefficients, false, PlaneWeights, Bias.T, y, 1, null, p.Plan.UNetMatmul);
        }
        else
        {
            using var normed = p.Device.Allocate(x.Shape);
            Kernels.GroupNorm.Apply(x, stats, norm.Weight.T, norm.Bias.T, normed, silu: false);
            Conv2d.Forward(normed, PlaneWeights, Bias.T, y, 1, null, p.Plan.UNetMatmul);
        }
        p.Save(this, new SavedTensors(x, stats));
        return y;
    }
}

/// <summary>nn.Linear(in, out).</summary>
public sealed class LinearLayer : Module
{
    public LinearLayer(string prefix, int inFeatures, int outFeatures) : base(prefix)
    {
        OutFeatures = outFeatures;
        Weight = Param("weight", outFeatures, inFeatures);
        Bias = Param("bias", outFeatures);
    }

    public int OutFeatures { get; }
    public Parameter Weight { get; }
    public Parameter Bias { get; }

    public Tensor Forward(Pass p, Tensor x)
    {
        var y = p.Device.Allocate(x[0], OutFeatures);
        Linear.Forward(x, Weight.T, Bias.T, y, kernel: p.Plan.Fp32Matmul);
        p.Save(this, new SavedTensors(x));
        return y;
    }
}

/// <summary>nn.Embedding(num, dim): the class-label embedding of class-conditional models.</summary>
public sealed class EmbeddingLayer : Module
{
    public EmbeddingLayer(string prefix, int count, int dim) : base(prefix)
    {
        Count = count;
        Dim = dim;
        Weight = Param("weight", count, dim);
    }

    public int Count { get; }
    public int Dim { get; }
    public Parameter Weight { get; }

    /// <summary>Rows of the table for <paramref name="labels"/>, as (N, dim); device-to-device copies only.</summary>
    public Tensor Forward(Pass p, IReadOnlyList<long> labels)
    {
        var y = p.Device.Allocate(labels.Count, Dim);
        for (int i = 0; i < labels.Count; i++)
        {
            if (labels[i] < 0 || labels[i] >= Count)
            {
                y.Dispose();
                throw new DiffSegException($"class label {labels[i]} is outside [0, {Count})");
            }
            Weight.T.View.SubView(labels[i] * Dim, Dim).CopyTo(y.View.SubView((long)i * Dim, Dim));
        }
        return y;
    }
}
