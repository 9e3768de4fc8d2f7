using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Model;

/// <summary>
/// Something a TimestepEmbedSequential runs: given x and SiLU(emb), returns a new tensor (the caller owns it); in a
/// training pass its backward takes d loss / d output and returns d loss / d x, adding to d loss / d SiLU(emb).
/// </summary>
public interface IBlockLayer
{
    Tensor Forward(Pass p, Tensor x, Tensor embSilu);
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

    public Tensor Forward(Pass p, Tensor x, Tensor embSilu)
    {
        if (op is not null)
        {
            return op.Forward(p, x);
        }
        var y = p.Device.Allocate(x[0], x[1], x[2] / 2, x[3] / 2);
        AvgPool2x2.Forward(x, y);
        return y;
    }
}

/// <summary>
/// guided-diffusion ResBlock:
///   h = in_conv([resample](SiLU(GN(x))));  x = [resample](x)
///   e = Linear(SiLU(emb));  h = conv(Dropout(SiLU(GN(h)·(1+scale)+shift)))  (or GN(h + e) without scale-shift)
///   return skip(x) + h
/// </summary>
public sealed class ResBlock : Module, IBlockLayer
{
    readonly GroupNormLayer inNorm;
    readonly Conv2dLayer inConv;
    readonly LinearLayer embLinear;
    readonly GroupNormLayer outNorm;
    readonly Conv2dLayer outConv;
    readonly Conv2dLayer? skip;
    readonly bool useScaleShift, up, down;

    public ResBlock(string prefix, int channels, int embChannels, int outChannels, bool useScaleShiftNorm, bool up = false,
        bool down = false) : base(prefix)
    {
        OutChannels = outChannels;
        useScaleShift = useScaleShiftNorm;
        this.up = up;
        this.down = down;
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

    public Tensor Forward(Pass p, Tensor x, Tensor embSilu)
    {
        using var h = InLayers(p, x);
        using var xs = up || down ? Resample(p, x) : x.Retain();
        using var e = embLinear.Forward(p, embSilu);
        if (!useScaleShift)
        {
            Kernels.Add.ChannelBias(h, e, h);
        }
        using var s = skip?.Forward(p, xs) ?? xs.Retain();
        return outConv.ForwardNormalized(p, h, outNorm, silu: true, useScaleShift ? e : null, residual: s, overwriteInput: true);
    }

    /// <summary>in_conv([resample](SiLU(GN(x)))): the norm comes before the resampling there, so it cannot fuse into the conv.</summary>
    Tensor InLayers(Pass p, Tensor x)
    {
        if (!up && !down)
        {
            return inConv.ForwardNormalized(p, x, inNorm, silu: true);
        }
        using var normed = p.Device.Allocate(x.Shape);
        Kernels.GroupNorm.Forward(x, inNorm.Weight.T, inNorm.Bias.T, normed, silu: true);
        using var resampled = Resample(p, normed);
        return inConv.Forward(p, resampled);
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
}

/// <summary>guided-diffusion AttentionBlock: x + proj_out(attention(qkv(GN(x)))) over the H·W positions.</summary>
public sealed class AttentionBlock : Module, IBlockLayer
{
    readonly GroupNormLayer norm;
    readonly Conv1x1Layer qkv;
    readonly Conv1x1Layer projOut;

    public AttentionBlock(string prefix, int channels, int numHeads, int numHeadChannels, bool useNewAttentionOrder) : base(prefix)
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
        norm = Add(new GroupNormLayer(prefix + "norm.", channels));
        qkv = Add(new Conv1x1Layer(prefix + "qkv.", channels, 3 * channels));
        projOut = Add(new Conv1x1Layer(prefix + "proj_out.", channels, channels));
    }

    public int Heads { get; }
    public bool LegacyOrder { get; }

    public Tensor Forward(Pass p, Tensor x, Tensor embSilu)
    {
        using var q = qkv.ForwardNormalized(p, x, norm);
        using var a = p.Device.Allocate(x.Shape);
        Attention.Forward(q, a, Heads, LegacyOrder, p.Plan.UNetMatmul);
        p.Save(this, new SavedTensors(q));
        return projOut.Forward(p, a, residual: x);
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
}
