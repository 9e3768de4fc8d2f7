using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Model;

/// <summary>
/// Something a TimestepEmbedSequential runs: given x and SiLU(emb), returns a new tensor (the caller owns it); in a
/// pass that saves, its backward takes d loss / d output and returns d loss / d x (the caller owns it), adding to
/// d loss / d SiLU(emb).
/// </summary>
public interface IBlockLayer
{
    Tensor Forward(Pass p, Tensor x, Tensor embSilu);

    Tensor Backward(Pass p, Tensor dy, Tensor dEmbSilu);
}

/// <summary>guided-diffusion Upsample: nearest ×2, then a 3×3 conv (key "conv") when use_conv.</summary>
public sealed class Upsample : Module, IBlockLayer
{
    readonly Conv2dLayer? conv;

    public Upsample(string prefix, int channels, bool useConv, int? outChannels = null) : base(prefix)
    {
        OutChannels = outChannels ?? channels;
        if (useConv)
        {
            conv = Add(new Conv2dLayer(prefix + "conv.", channels, OutChannels, 3));
        }
        else if (OutChannels != channels)
        {
            throw new DiffSegException($"{prefix.TrimEnd('.')}: an Upsample without conv cannot change {channels} channels to {OutChannels}");
        }
    }

    public int OutChannels { get; }

    public Tensor Forward(Pass p, Tensor x, Tensor embSilu)
    {
        var up = p.Device.Allocate(x[0], x[1], 2 * x[2], 2 * x[3]);
        UpsampleNearest2x.Forward(x, up);
        if (conv is null)
        {
            return up;
        }
        using (up)
        {
            return conv.Forward(p, up);
        }
    }

    public Tensor Backward(Pass p, Tensor dy, Tensor dEmbSilu)
    {
        using var dUp = conv is null ? dy.Retain() : conv.Backward(p, dy)!;
        var dx = p.Device.Allocate(dUp[0], dUp[1], dUp[2] / 2, dUp[3] / 2);
        UpsampleNearest2x.Backward(dUp, dx);
        return dx;
    }
}

/// <summary>guided-diffusion Downsample: a stride-2 3×3 conv (key "op") when use_conv, else 2×2 average pooling.</summary>
public sealed class Downsample : Module, IBlockLayer
{
    readonly Conv2dLayer? op;

    public Downsample(string prefix, int channels, bool useConv, int? outChannels = null) : base(prefix)
    {
        OutChannels = outChannels ?? channels;
        if (useConv)
        {
            op = Add(new Conv2dLayer(prefix + "op.", channels, OutChannels, 3, stride: 2));
        }
        else if (OutChannels != channels)
        {
            throw new DiffSegException($"{prefix.TrimEnd('.')}: a Downsample without conv cannot change {channels} channels to {OutChannels}");
        }
    }

    public int OutChannels { get; }

    sealed class Saved(int[] inputShape) : IDisposable
    {
        public readonly int[] InputShape = inputShape;

        public void Dispose()
        {
        }
    }

    public Tensor Forward(Pass p, Tensor x, Tensor embSilu)
    {
        p.Save(this, new Saved(x.Shape));
        if (op is not null)
        {
            return op.Forward(p, x);
        }
        var y = p.Device.Allocate(x[0], x[1], x[2] / 2, x[3] / 2);
        AvgPool2x2.Forward(x, y);
        return y;
    }

    public Tensor Backward(Pass p, Tensor dy, Tensor dEmbSilu)
    {
        using var saved = p.Take<Saved>(this);
        if (op is not null)
        {
            return op.Backward(p, dy)!;
        }
        var dx = p.Device.Allocate(saved.InputShape);
        AvgPool2x2.Backward(dy, dx);
        return dx;
    }
}

/// <summary>
/// guided-diffusion ResBlock:
///   h = in_conv([resample](SiLU(GN(x))));  x = [resample](x)
///   e = Linear(SiLU(emb));  h = conv(Dropout(SiLU(GN(h)·(1+scale)+shift)))  (or GN(h + e) without scale-shift)
///   return skip(x) + h
/// With use_checkpoint a training forward keeps only x (and SiLU(emb)) and the backward runs the forward again.
/// </summary>
public sealed class ResBlock : Module, IBlockLayer
{
    readonly GroupNormLayer inNorm;
    readonly Conv2dLayer inConv;
    readonly LinearLayer embLinear;
    readonly GroupNormLayer outNorm;
    readonly Conv2dLayer outConv;
    readonly Conv2dLayer? skip;
    readonly bool useScaleShift, up, down, checkpoint;
    readonly float dropout;

    public ResBlock(string prefix, int channels, int embChannels, int outChannels, bool useScaleShiftNorm, bool up = false,
        bool down = false, float dropout = 0, bool useCheckpoint = false) : base(prefix)
    {
        OutChannels = outChannels;
        useScaleShift = useScaleShiftNorm;
        this.up = up;
        this.down = down;
        this.dropout = dropout;
        checkpoint = useCheckpoint;
        inNorm = Add(new GroupNormLayer(prefix + "in_layers.0.", channels));
        inConv = Add(new Conv2dLayer(prefix + "in_layers.2.", channels, outChannels, 3));
        embLinear = Add(new LinearLayer(prefix + "emb_layers.1.", embChannels, useScaleShiftNorm ? 2 * outChannels : outChannels));
        outNorm = Add(new GroupNormLayer(prefix + "out_layers.0.", outChannels));
        outConv = Add(new Conv2dLayer(prefix + "out_layers.3.", outChannels, outChannels, 3));
        if (outChannels != channels)
        {
            skip = Add(new Conv2dLayer(prefix + "skip_connection.", channels, outChannels, 1));
        }
    }

    public int OutChannels { get; }

    public Tensor Forward(Pass p, Tensor x, Tensor embSilu) => Checkpointing.Forward(p, this, checkpoint, x, embSilu, ForwardCore);

    public Tensor Backward(Pass p, Tensor dy, Tensor dEmbSilu) =>
        Checkpointing.Backward(p, this, checkpoint, dy, dEmbSilu, ForwardCore, BackwardCore);

    Tensor ForwardCore(Pass p, Tensor x, Tensor embSilu)
    {
        using var h = InLayers(p, x);
        using var xs = up || down ? Resample(p, x) : x.Retain();
        using var e = embLinear.Forward(p, embSilu);
        if (!useScaleShift)
        {
            Kernels.Add.ChannelBias(h, e, h);
        }
        using var s = skip?.Forward(p, xs) ?? xs.Retain();
        return outConv.ForwardNormalized(p, h, outNorm, silu: true, useScaleShift ? e : null, residual: s, overwriteInput: true,
            dropout: dropout);
    }

    Tensor BackwardCore(Pass p, Tensor dy, Tensor dEmbSilu)
    {
        // out_layers: d h (after the emb add) and d scale-shift; the residual passes dy to the skip branch unchanged.
        using var dh = outConv.Backward(p, dy, out var dScaleShift)!;
        using (dScaleShift)
        using (var de = dScaleShift?.Retain() ?? ChannelSums(p, dh))
        using (var dEmb = embLinear.Backward(p, de)!)
        {
            Kernels.Add.Accumulate(dEmbSilu, dEmb);
        }
        var dx = InLayersBackward(p, dh);
        using var dxs = skip?.Backward(p, dy) ?? dy.Retain();
        if (up || down)
        {
            using var dResampled = ResampleBackward(p, dxs, dx.Shape);
            Kernels.Add.Accumulate(dx, dResampled);
        }
        else
        {
            Kernels.Add.Accumulate(dx, dxs);
        }
        return dx;
    }

    /// <summary>d e = Σ over positions of d h, for a ResBlock without scale-shift (h + e[:, :, None, None]).</summary>
    static Tensor ChannelSums(Pass p, Tensor dh)
    {
        var de = p.Device.Allocate(dh[0], dh[1]);
        Kernels.Add.ChannelBiasBackward(dh, de);
        return de;
    }

    sealed class InSaved(Tensor x, Tensor stats) : IDisposable
    {
        public readonly SavedTensors Tensors = new(x, stats);

        public void Dispose() => Tensors.Dispose();
    }

    /// <summary>in_conv([resample](SiLU(GN(x)))): the norm comes before the resampling there, so it cannot fuse into the conv.</summary>
    Tensor InLayers(Pass p, Tensor x)
    {
        if (!up && !down)
        {
            return inConv.ForwardNormalized(p, x, inNorm, silu: true);
        }
        using var stats = Kernels.GroupNorm.Statistics(x);
        using var normed = p.Device.Allocate(x.Shape);
        inNorm.Apply(p, x, stats, silu: true, scaleShift: null, dropout: 0, normed);
        using var resampled = Resample(p, normed);
        p.Save(inNorm, new InSaved(x, stats));
        return inConv.Forward(p, resampled);
    }

    Tensor InLayersBackward(Pass p, Tensor dh)
    {
        if (!up && !down)
        {
            return inConv.Backward(p, dh)!;
        }
        using var saved = p.Take<InSaved>(inNorm);
        var x = saved.Tensors[0];
        using var dResampled = inConv.Backward(p, dh)!;
        using var dNormed = ResampleBackward(p, dResampled, x.Shape);
        var dx = p.Device.Allocate(x.Shape);
        inNorm.Backward(p, x, saved.Tensors[1], silu: true, scaleShift: null, dropout: 0, dNormed, dx, null);
        return dx;
    }

    Tensor Resample(Pass p, Tensor t)
    {
        if (up)
        {
            var y = p.Device.Allocate(t[0], t[1], 2 * t[2], 2 * t[3]);
            UpsampleNearest2x.Forward(t, y);
            return y;
        }
        var d = p.Device.Allocate(t[0], t[1], t[2] / 2, t[3] / 2);
        AvgPool2x2.Forward(t, d);
        return d;
    }

    Tensor ResampleBackward(Pass p, Tensor dy, int[] inputShape)
    {
        var dx = p.Device.Allocate(inputShape);
        if (up)
        {
            UpsampleNearest2x.Backward(dy, dx);
        }
        else
        {
            AvgPool2x2.Backward(dy, dx);
        }
        return dx;
    }
}

/// <summary>guided-diffusion AttentionBlock: x + proj_out(attention(qkv(GN(x)))) over the H·W positions.</summary>
public sealed class AttentionBlock : Module, IBlockLayer
{
    readonly GroupNormLayer norm;
    readonly Conv1x1Layer qkv;
    readonly Conv1x1Layer projOut;
    readonly bool checkpoint;

    public AttentionBlock(string prefix, int channels, int numHeads, int numHeadChannels, bool useNewAttentionOrder,
        bool useCheckpoint = false) : base(prefix)
    {
        if (numHeadChannels == -1)
        {
            Heads = numHeads;
        }
        else
        {
            if (numHeadChannels <= 0 || channels % numHeadChannels != 0)
            {
                throw new DiffSegException($"{prefix.TrimEnd('.')}: q,k,v channels {channels} is not divisible by num_head_channels {numHeadChannels}");
            }
            Heads = channels / numHeadChannels;
        }
        if (Heads <= 0 || channels % Heads != 0)
        {
            throw new DiffSegException($"{prefix.TrimEnd('.')}: {channels} channels cannot be split into {Heads} heads");
        }
        LegacyOrder = !useNewAttentionOrder;
        checkpoint = useCheckpoint;
        norm = Add(new GroupNormLayer(prefix + "norm.", channels));
        qkv = Add(new Conv1x1Layer(prefix + "qkv.", channels, 3 * channels));
        projOut = Add(new Conv1x1Layer(prefix + "proj_out.", channels, channels));
    }

    public int Heads { get; }
    public bool LegacyOrder { get; }

    public Tensor Forward(Pass p, Tensor x, Tensor embSilu) => Checkpointing.Forward(p, this, checkpoint, x, embSilu, ForwardCore);

    public Tensor Backward(Pass p, Tensor dy, Tensor dEmbSilu) =>
        Checkpointing.Backward(p, this, checkpoint, dy, dEmbSilu, ForwardCore, BackwardCore);

    Tensor ForwardCore(Pass p, Tensor x, Tensor embSilu)
    {
        using var q = qkv.ForwardNormalized(p, x, norm);
        using var a = p.Device.Allocate(x.Shape);
        Attention.Forward(q, a, Heads, LegacyOrder, p.Plan.UNetMatmul);
        p.Save(this, new SavedTensors(q));
        return projOut.Forward(p, a, residual: x);
    }

    Tensor BackwardCore(Pass p, Tensor dy, Tensor dEmbSilu)
    {
        using var saved = p.Take<SavedTensors>(this);
        var q = saved[0];
        using var da = projOut.Backward(p, dy);
        using var dq = p.Device.Allocate(q.Shape);
        Attention.Backward(q, da, dq, Heads, LegacyOrder, p.Plan.UNetMatmul);
        var dx = qkv.Backward(p, dq, norm);
        Kernels.Add.Accumulate(dx, dy);
        return dx;
    }
}

/// <summary>
/// guided-diffusion's checkpoint (use_checkpoint): a block's training forward runs in a pass that trains but saves
/// nothing and keeps only the block's inputs; its backward runs the forward again, saving, and then its own backward —
/// the activations of one block at a time instead of all of them, for one more forward of compute.
/// </summary>
static class Checkpointing
{
    sealed class Inputs(Tensor x, Tensor embSilu) : IDisposable
    {
        public readonly SavedTensors Tensors = new(x, embSilu);

        public void Dispose() => Tensors.Dispose();
    }

    public static Tensor Forward(Pass p, object owner, bool enabled, Tensor x, Tensor embSilu, Func<Pass, Tensor, Tensor, Tensor> forward)
    {
        if (!enabled || !p.Saves)
        {
            return forward(p, x, embSilu);
        }
        using var inner = new Pass(p.Plan, p.Training, p.DropoutSeed, saves: false);
        var y = forward(inner, x, embSilu);
        p.Save(owner, new Inputs(x, embSilu));
        return y;
    }

    public static Tensor Backward(Pass p, object owner, bool enabled, Tensor dy, Tensor dEmbSilu, Func<Pass, Tensor, Tensor, Tensor> forward,
        Func<Pass, Tensor, Tensor, Tensor> backward)
    {
        if (!enabled)
        {
            return backward(p, dy, dEmbSilu);
        }
        using var inputs = p.Take<Inputs>(owner);
        using var inner = new Pass(p.Plan, p.Training, p.DropoutSeed, saves: true);
        using (forward(inner, inputs.Tensors[0], inputs.Tensors[1]))
        {
        }
        return backward(inner, dy, dEmbSilu);
    }
}

/// <summary>guided-diffusion TimestepEmbedSequential: runs its layers in order, passing emb to ResBlocks.</summary>
public sealed class TimestepEmbedSequential : Module
{
    readonly List<IBlockLayer> layers = new();

    public TimestepEmbedSequential(string prefix) : base(prefix)
    {
    }

    public int OutChannels { get; private set; }

    /// <summary>Adds layer j; <paramref name="make"/> receives the layer's prefix ("…{j}.").</summary>
    public TimestepEmbedSequential Then<T>(Func<string, T> make, int outChannels) where T : Module, IBlockLayer
    {
        layers.Add(Add(make($"{Prefix}{layers.Count}.")));
        OutChannels = outChannels;
        return this;
    }

    /// <summary>Runs the block. The input stays the caller's; the result is the caller's to dispose.</summary>
    public Tensor Forward(Pass p, Tensor x, Tensor embSilu)
    {
        var h = x.Retain();
        foreach (var layer in layers)
        {
            using var input = h;
            h = layer.Forward(p, input, embSilu);
        }
        return h;
    }

    /// <summary>The layers' backwards in reverse order; returns d loss / d x (the caller owns it).</summary>
    public Tensor Backward(Pass p, Tensor dy, Tensor dEmbSilu)
    {
        var d = dy.Retain();
        for (int i = layers.Count - 1; i >= 0; i--)
        {
            using var upstream = d;
            d = layers[i].Backward(p, upstream, dEmbSilu);
        }
        return d;
    }

    /// <summary>The first layer alone, without an input gradient: input block 0, the convolution of the image itself.</summary>
    public void BackwardWithoutInputGradient(Pass p, Tensor dy)
    {
        if (layers is not [Conv2dLayer conv])
        {
            throw new InvalidOperationException($"{Prefix}: only a lone convolution skips its input gradient");
        }
        conv.Backward(p, dy, inputGradient: false);
    }
}
