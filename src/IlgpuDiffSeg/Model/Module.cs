using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Model;

/// <summary>A weight of the model, known by its state_dict name and shape before any value is loaded.</summary>
public sealed class Parameter(string name, int[] shape)
{
    public string Name { get; } = name;
    public int[] Shape { get; } = shape;
    public long Count => Tensor.Count(Shape);
    public string ShapeString => "(" + string.Join(", ", Shape) + ")";

    /// <summary>The device copy; set by the weight loader.</summary>
    public Tensor? Value { get; internal set; }

    /// <summary>The fp16 rows of a convolution's weight, for the tensor-core kernel (ModelWeights.Place, AddHalfCopies).</summary>
    public HalfWeights? Half { get; internal set; }

    /// <summary>A convolution's weight: it may be held as fp16 rows (ComputeDevice.HoldsConvWeightsInHalf).</summary>
    public bool IsConvolutionWeight { get; init; }

    public Tensor T => Value ?? throw new InvalidOperationException(Half is null
        ? $"weight '{Name}' is not loaded"
        : $"weight '{Name}' is held in fp16 only (precision fp16), for the tensor-core kernel");

    /// <summary>The weight as a convolution takes it: fp32, fp16 rows, or both.</summary>
    public ConvWeights ConvWeights => new(Value, Half, Shape);

    /// <summary>Frees the device copies.</summary>
    public void Release()
    {
        Value?.Dispose();
        Value = null;
        Half?.Dispose();
        Half = null;
    }
}

/// <summary>
/// A piece of the model with a state_dict prefix (e.g. "input_blocks.1.0."). Parameters are listed in PyTorch's
/// registration order: own parameters first, then each child's.
/// </summary>
public abstract class Module(string prefix)
{
    readonly List<Parameter> own = new();
    readonly List<Module> children = new();

    public string Prefix { get; } = prefix;

    protected Parameter Param(string localName, params int[] shape) => Register(new Parameter(Prefix + localName, shape));

    /// <summary>A convolution's weight (Cout, Cin, k…): one that may be held as fp16 rows.</summary>
    protected Parameter ConvolutionParam(string localName, params int[] shape) =>
        Register(new Parameter(Prefix + localName, shape) { IsConvolutionWeight = true });

    Parameter Register(Parameter p)
    {
        own.Add(p);
        return p;
    }

    protected T Add<T>(T child) where T : Module
    {
        children.Add(child);
        return child;
    }

    public IEnumerable<Parameter> Parameters()
    {
        foreach (var p in own)
        {
            yield return p;
        }
        foreach (var c in children)
        {
            foreach (var p in c.Parameters())
            {
                yield return p;
            }
        }
    }
}

/// <summary>Something a TimestepEmbedSequential runs: given x and SiLU(emb), returns a new tensor (the caller owns it).</summary>
public interface IBlockLayer
{
    Tensor Forward(Tensor x, Tensor embSilu);
}

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

    public Tensor Forward(Tensor x, bool silu, Tensor? scaleShift = null)
    {
        var y = x.Device.Allocate(x.Shape);
        Kernels.GroupNorm.Forward(x, Weight.T, Bias.T, y, silu, scaleShift);
        return y;
    }

    /// <summary>
    /// y = conv(act(this(x)), w) + b (+ residual): one fused launch where the device fuses norms into convolutions, else
    /// this norm's own pass first — into x itself when <paramref name="overwriteInput"/> (x is the caller's temporary).
    /// </summary>
    internal void ForwardInto(Tensor x, bool silu, Tensor? scaleShift, bool overwriteInput, ConvWeights w, Tensor bias, Tensor y, int stride,
        Tensor? residual)
    {
        var dev = x.Device;
        if (dev.NormFusedIntoConv)
        {
            using var coefficients = Kernels.GroupNorm.Coefficients(x, Weight.T, Bias.T, scaleShift);
            Conv2d.ForwardNormalized(x, coefficients, silu, w, bias, y, stride, residual, (int)dev.UNetMatmul);
            return;
        }
        var normed = overwriteInput ? x : dev.Allocate(x.Shape);
        try
        {
            Kernels.GroupNorm.Forward(x, Weight.T, Bias.T, normed, silu, scaleShift);
            Conv2d.Forward(normed, w, bias, y, stride, residual, (int)dev.UNetMatmul);
        }
        finally
        {
            if (!overwriteInput)
            {
                normed.Dispose();
            }
        }
    }
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

    public Tensor Forward(Tensor x, Tensor? residual = null)
    {
        var y = AllocateOutput(x);
        Conv2d.Forward(x, Weight.ConvWeights, Bias.T, y, Stride, residual, (int)x.Device.UNetMatmul);
        return y;
    }

    /// <summary>
    /// conv(act(norm(x))) + residual, with act = SiLU when <paramref name="silu"/>: one fused launch where the device fuses
    /// norms (ComputeDevice.NormFusedIntoConv), else the norm's own pass — into x itself when <paramref name="overwriteInput"/>
    /// (x is a temporary of the caller), so that the unfused path needs no extra activation.
    /// </summary>
    public Tensor ForwardNormalized(Tensor x, GroupNormLayer norm, bool silu, Tensor? scaleShift = null, Tensor? residual = null,
        bool overwriteInput = false)
    {
        var y = AllocateOutput(x);
        norm.ForwardInto(x, silu, scaleShift, overwriteInput, Weight.ConvWeights, Bias.T, y, Stride, residual);
        return y;
    }

    Tensor AllocateOutput(Tensor x)
    {
        int k = Weight.Shape[2], pad = k / 2;
        return x.Device.Allocate(x[0], OutChannels, (x[2] + 2 * pad - k) / Stride + 1, (x[3] + 2 * pad - k) / Stride + 1);
    }

    Tensor IBlockLayer.Forward(Tensor x, Tensor embSilu) => Forward(x);
}

/// <summary>conv_nd(1, cin, cout, 1): the attention's qkv and proj_out; weights (cout, cin, 1).</summary>
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

    /// <summary>x: (N, Cin, H, W) → (N, Cout, H, W), treating H·W as the 1-d length T.</summary>
    public Tensor Forward(Tensor x, Tensor? residual = null)
    {
        var y = x.Device.Allocate(x[0], OutChannels, x[2], x[3]);
        Conv2d.Forward(x, PlaneWeights, Bias.T, y, 1, residual, (int)x.Device.UNetMatmul);
        return y;
    }

    /// <summary>This layer applied to norm(x) (the attention's qkv of GN(x)); fused as in Conv2dLayer.ForwardNormalized.</summary>
    public Tensor ForwardNormalized(Tensor x, GroupNormLayer norm)
    {
        var y = x.Device.Allocate(x[0], OutChannels, x[2], x[3]);
        norm.ForwardInto(x, silu: false, scaleShift: null, overwriteInput: false, PlaneWeights, Bias.T, y, 1, residual: null);
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

    public Tensor Forward(Tensor x)
    {
        var y = x.Device.Allocate(x[0], OutFeatures);
        Kernels.Linear.Forward(x, Weight.T, Bias.T, y);
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
    public Tensor Forward(ComputeDevice dev, IReadOnlyList<long> labels)
    {
        var y = dev.Allocate(labels.Count, Dim);
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
