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

    /// <summary>
    /// act(norm(x)) from statistics already computed, into y: [scale-shift] with the ResBlock's emb_layers output, SiLU when
    /// <paramref name="silu"/>, then dropout when the pass trains and <paramref name="dropout"/> &gt; 0 (the ResBlock's
    /// out_layers order: norm, SiLU, Dropout).
    /// </summary>
    public void Apply(Pass p, Tensor x, Tensor stats, bool silu, Tensor? scaleShift, float dropout, Tensor y)
    {
        Kernels.GroupNorm.Apply(x, stats, Weight.T, Bias.T, y, silu, scaleShift);
        if (p.Training && dropout > 0)
        {
            Dropout.Forward(y, y, dropout, DropoutSeed(p));
        }
    }

    /// <summary>
    /// The backward of <see cref="Apply"/>: dγ and dβ added to the gradients, dx written (or added, with
    /// <paramref name="accumulate"/>), d scale-shift written when the forward had one.
    /// </summary>
    public void Backward(Pass p, Tensor x, Tensor stats, bool silu, Tensor? scaleShift, float dropout, Tensor dy, Tensor dx,
        Tensor? dScaleShift, bool accumulate = false)
    {
        if (p.Training && dropout > 0)
        {
            Dropout.Backward(dy, dy, dropout, DropoutSeed(p));
        }
        Kernels.GroupNorm.Backward(x, stats, Weight.T, Bias.T, scaleShift, silu, dy, dx, Weight.G, Bias.G, dScaleShift, accumulate);
    }

    /// <summary>This layer's dropout seed in a pass: the pass's seed mixed with the layer's name, so layers draw apart.</summary>
    ulong DropoutSeed(Pass p)
    {
        ulong h = p.DropoutSeed ^ 0x9E3779B97F4A7C15UL;
        foreach (char c in Prefix)
        {
            h = (h ^ c) * 0x100000001B3UL;
        }
        return h;
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

    /// <summary>What a training forward keeps: the input, and for a normalized input the norm's statistics and scale-shift.</summary>
    sealed class Saved(Tensor x, Tensor? stats, Tensor? scaleShift, GroupNormLayer? norm, bool silu, float dropout) : IDisposable
    {
        public readonly SavedTensors Tensors = new(x, stats, scaleShift);
        public readonly GroupNormLayer? Norm = norm;
        public readonly bool Silu = silu;
        public readonly float Dropout = dropout;

        public void Dispose() => Tensors.Dispose();
    }

    /// <summary>conv(x) [+ residual].</summary>
    public Tensor Forward(Pass p, Tensor x, Tensor? residual = null)
    {
        var y = AllocateOutput(p, x);
        Conv2d.Forward(x, Weight.ConvWeights, Bias.T, y, Stride, residual, p.Plan.UNetMatmul);
        p.Save(this, new Saved(x, null, null, null, false, 0));
        return y;
    }

    /// <summary>
    /// conv(act(norm(x))) [+ residual], act = SiLU when <paramref name="silu"/> (then dropout when training), the norm with
    /// the ResBlock's scale-shift when given: one fused launch where the plan fuses norms and no dropout applies, else the
    /// norm's own pass first — into x itself when <paramref name="overwriteInput"/> (x is a temporary of the caller's) and
    /// the pass saves nothing.
    /// </summary>
    public Tensor ForwardNormalized(Pass p, Tensor x, GroupNormLayer norm, bool silu, Tensor? scaleShift = null, Tensor? residual = null,
        bool overwriteInput = false, float dropout = 0)
    {
        var y = AllocateOutput(p, x);
        using var stats = Kernels.GroupNorm.Statistics(x);
        if (p.Plan.FusesNorms && !(p.Training && dropout > 0))
        {
            using var coefficients = Kernels.GroupNorm.Coefficients(x, stats, norm.Weight.T, norm.Bias.T, scaleShift);
            Conv2d.ForwardNormalized(x, coefficients, silu, Weight.ConvWeights, Bias.T, y, Stride, residual, p.Plan.UNetMatmul);
        }
        else
        {
            bool inPlace = overwriteInput && !p.Saves;
            var normed = inPlace ? x : p.Device.Allocate(x.Shape);
            try
            {
                norm.Apply(p, x, stats, silu, scaleShift, dropout, normed);
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
        p.Save(this, new Saved(x, stats, scaleShift, norm, silu, dropout));
        return y;
    }

    /// <summary>
    /// The backward of the forward this pass ran: adds d/dW and d/db to the gradients and returns d loss / d x (null when
    /// <paramref name="inputGradient"/> is false: the network's input needs none). After a normalized forward the norm's
    /// parameter gradients are added too, and d scale-shift is returned in <paramref name="dScaleShift"/> when it had one.
    /// </summary>
    public Tensor? Backward(Pass p, Tensor dy, out Tensor? dScaleShift, bool inputGradient = true)
    {
        using var saved = p.Take<Saved>(this);
        var x = saved.Tensors[0];
        var kernel = p.Plan.UNetMatmul;
        dScaleShift = null;
        if (saved.Norm is null)
        {
            Conv2d.BackwardWeights(x, dy, Weight.G, Bias.G, Stride, kernel);
            if (!inputGradient)
            {
                return null;
            }
            var dx = p.Device.Allocate(x.Shape);
            Conv2d.BackwardInput(dy, Weight.ConvWeights, dx, Stride, kernel);
            return dx;
        }
        var stats = saved.Tensors[1];
        var scaleShift = saved.Tensors.Optional(2);
        using var da = p.Device.Allocate(x.Shape);
        // The normalized input was never kept: recomputed from x and the statistics (cheaper than holding it) — as the
        // weight gradient reads x where the plan fuses that, else into a temporary.
        if (p.Plan.FusesNormsIntoWeightGradients && !(p.Training && saved.Dropout > 0))
        {
            using var coefficients = Kernels.GroupNorm.Coefficients(x, stats, saved.Norm.Weight.T, saved.Norm.Bias.T, scaleShift);
            Conv2d.BackwardWeightsNormalized(x, coefficients, saved.Silu, dy, Weight.G, Bias.G, Stride, kernel);
        }
        else
        {
            using var a = p.Device.Allocate(x.Shape);
            saved.Norm.Apply(p, x, stats, saved.Silu, scaleShift, saved.Dropout, a);
            Conv2d.BackwardWeights(a, dy, Weight.G, Bias.G, Stride, kernel);
        }
        Conv2d.BackwardInput(dy, Weight.ConvWeights, da, Stride, kernel);
        var dxNorm = p.Device.Allocate(x.Shape);
        dScaleShift = scaleShift is null ? null : p.Device.Allocate(scaleShift.Shape);
        saved.Norm.Backward(p, x, stats, saved.Silu, scaleShift, saved.Dropout, da, dxNorm, dScaleShift);
        return dxNorm;
    }

    /// <summary>The backward of a forward without scale-shift.</summary>
    public Tensor? Backward(Pass p, Tensor dy, bool inputGradient = true)
    {
        var dx = Backward(p, dy, out var dScaleShift, inputGradient);
        dScaleShift?.Dispose();
        return dx;
    }

    Tensor IBlockLayer.Forward(Pass p, Tensor x, Tensor embSilu) => Forward(p, x);

    Tensor IBlockLayer.Backward(Pass p, Tensor dy, Tensor dEmbSilu) => Backward(p, dy)!;

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

    /// <summary>The weight gradient seen as the 2-d convolution's (Cout, Cin, 1, 1).</summary>
    Tensor PlaneGradient => Weight.G.Alias(Weight.Shape[0], Weight.Shape[1], 1, 1);

    /// <summary>x: (N, Cin, H, W) → (N, Cout, H, W), treating H·W as the 1-d length T; [+ residual].</summary>
    public Tensor Forward(Pass p, Tensor x, Tensor? residual = null)
    {
        var y = p.Device.Allocate(x[0], OutChannels, x[2], x[3]);
        Conv2d.Forward(x, PlaneWeights, Bias.T, y, 1, residual, p.Plan.UNetMatmul);
        p.Save(this, new SavedTensors(x, null));
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
            norm.Apply(p, x, stats, silu: false, scaleShift: null, dropout: 0, normed);
            Conv2d.Forward(normed, PlaneWeights, Bias.T, y, 1, null, p.Plan.UNetMatmul);
        }
        p.Save(this, new SavedTensors(x, stats));
        return y;
    }

    /// <summary>
    /// The backward of the forward this pass ran (plain or after <paramref name="norm"/>, which must be the norm the
    /// forward took): adds the weight, bias (and norm) gradients and returns d loss / d x.
    /// </summary>
    public Tensor Backward(Pass p, Tensor dy, GroupNormLayer? norm = null)
    {
        using var saved = p.Take<SavedTensors>(this);
        var x = saved[0];
        var stats = saved.Optional(1);
        var kernel = p.Plan.UNetMatmul;
        var dx = p.Device.Allocate(x.Shape);
        if (stats is null || norm is null)
        {
            Conv2d.BackwardWeights(x, dy, PlaneGradient, Bias.G, 1, kernel);
            Conv2d.BackwardInput(dy, PlaneWeights, dx, 1, kernel);
            return dx;
        }
        if (p.Plan.FusesNormsIntoWeightGradients)
        {
            using var coefficients = Kernels.GroupNorm.Coefficients(x, stats, norm.Weight.T, norm.Bias.T, null);
            Conv2d.BackwardWeightsNormalized(x, coefficients, false, dy, PlaneGradient, Bias.G, 1, kernel);
        }
        else
        {
            using var a = p.Device.Allocate(x.Shape);
            norm.Apply(p, x, stats, silu: false, scaleShift: null, dropout: 0, a);
            Conv2d.BackwardWeights(a, dy, PlaneGradient, Bias.G, 1, kernel);
        }
        using var da = p.Device.Allocate(x.Shape);
        Conv2d.BackwardInput(dy, PlaneWeights, da, 1, kernel);
        norm.Backward(p, x, stats, silu: false, scaleShift: null, dropout: 0, da, dx, null);
        return dx;
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

    /// <summary>Adds d/dW and d/db; returns d loss / d x unless <paramref name="inputGradient"/> is false.</summary>
    public Tensor? Backward(Pass p, Tensor dy, bool inputGradient = true)
    {
        using var saved = p.Take<SavedTensors>(this);
        var x = saved[0];
        var dx = inputGradient ? p.Device.Allocate(x.Shape) : null;
        Linear.Backward(x, Weight.T, dy, dx, Weight.G, Bias.G, p.Plan.Fp32Matmul);
        return dx;
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

    sealed class Saved(long[] labels) : IDisposable
    {
        public readonly long[] Labels = labels;

        public void Dispose()
        {
        }
    }

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
        p.Save(this, new Saved(labels.ToArray()));
        return y;
    }

    /// <summary>Adds dy's rows to the gradient rows of their labels.</summary>
    public void Backward(Pass p, Tensor dy)
    {
        using var saved = p.Take<Saved>(this);
        Embedding.Backward(saved.Labels, dy, Weight.G);
    }
}
