using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Model;

/// <summary>
/// guided-diffusion's AttentionPool2d (the classifier's head, after GroupNorm and SiLU): tokens = [mean, pixels] + the
/// positional embedding, qkv_proj, multi-head attention in the new order (QKVAttention), c_proj; the output of token 0.
/// </summary>
public sealed class AttentionPoolLayer : Module
{
    readonly Conv1x1Layer qkvProj;
    readonly Conv1x1Layer cProj;

    public AttentionPoolLayer(string prefix, int spacialDim, int embedDim, int numHeadChannels, int outDim) : base(prefix)
    {
        if (numHeadChannels <= 0 || embedDim % numHeadChannels != 0)
        {
            throw new DiffSegException($"{prefix.TrimEnd('.')}: {embedDim} channels cannot be split into heads of {numHeadChannels}");
        }
        PositionalEmbedding = Param("positional_embedding", embedDim, spacialDim * spacialDim + 1);
        qkvProj = Add(new Conv1x1Layer(prefix + "qkv_proj.", embedDim, 3 * embedDim));
        cProj = Add(new Conv1x1Layer(prefix + "c_proj.", embedDim, outDim));
        Heads = embedDim / numHeadChannels;
        SpacialDim = spacialDim;
    }

    public Parameter PositionalEmbedding { get; }
    public int Heads { get; }
    public int SpacialDim { get; }

    /// <summary>a (N, C, S, S) → (N, out, 1, 1).</summary>
    public Tensor Forward(Pass p, Tensor a)
    {
        if (a[2] != SpacialDim || a[3] != SpacialDim)
        {
            throw new DiffSegException($"{Prefix.TrimEnd('.')}: the pool is {SpacialDim}×{SpacialDim}, its input {a[2]}×{a[3]}");
        }
        var dev = p.Device;
        int tokens = SpacialDim * SpacialDim + 1;
        using var t = dev.Allocate(a[0], a[1], 1, tokens);
        AttentionPool.Tokens(a, PositionalEmbedding.T, t);
        var qkv = qkvProj.Forward(p, t);
        using var attended = dev.Allocate(t.Shape);
        using (qkv)
        {
            Attention.Forward(qkv, attended, Heads, legacyOrder: false, p.Plan.UNetMatmul);
            p.Save(this, new SavedTensors(qkv));
        }
        using var first = dev.Allocate(a[0], a[1], 1, 1);
        AttentionPool.First(attended, first);
        return cProj.Forward(p, first);
    }

    /// <summary>d output (N, out, 1, 1) → d a (N, C, S, S).</summary>
    public Tensor Backward(Pass p, Tensor dy)
    {
        var dev = p.Device;
        using var saved = p.Take<SavedTensors>(this);
        var qkv = saved[0];
        using var dFirst = cProj.Backward(p, dy);
        using var dAttended = dev.Allocate(qkv[0], qkv[1] / 3, 1, qkv[3]);
        AttentionPool.FirstBackward(dFirst, dAttended);
        using var dQkv = dev.Allocate(qkv.Shape);
        Attention.Backward(qkv, dAttended, dQkv, Heads, legacyOrder: false, p.Plan.UNetMatmul);
        using var dTokens = qkvProj.Backward(p, dQkv);
        var da = dev.Allocate(qkv[0], qkv[1] / 3, SpacialDim, SpacialDim);
        AttentionPool.TokensBackward(dTokens, da);
        return da;
    }
}

/// <summary>
/// guided-diffusion's EncoderUNetModel as create_classifier builds it: the UNet's encoder half (time embedding, input
/// blocks, middle block) and a head — GroupNorm, SiLU, then AttentionPool2d ("attention") or a spatial mean and a 1×1
/// convolution ("adaptive") — giving (N, 1000) logits of the noisy image. Weights carry its state_dict names.
/// </summary>
public sealed class EncoderUNetModel : Module, IDisposable
{
    readonly LinearLayer timeEmbed0;
    readonly LinearLayer timeEmbed2;
    readonly List<TimestepEmbedSequential> inputBlocks = new();
    readonly TimestepEmbedSequential middleBlock;
    readonly GroupNormLayer outNorm;
    readonly AttentionPoolLayer? pool;
    readonly Conv2dLayer? adaptive;
    ExecutionPlan? plan;

    public ClassifierFlags Flags { get; }

    public EncoderUNetModel(ClassifierFlags flags) : base("")
    {
        Flags = flags;
        var torso = flags.Torso();
        var mult = torso.ChannelMultipliers();
        var attentionDs = torso.AttentionDownsampleRates();
        int mc = flags.ClassifierWidth, embDim = flags.TimeEmbedDim, heads = flags.ClassifierNumHeadChannels;
        bool ss = flags.ClassifierUseScaleShiftNorm;
        timeEmbed0 = Add(new LinearLayer("time_embed.0.", mc, embDim));
        timeEmbed2 = Add(new LinearLayer("time_embed.2.", embDim, embDim));
        int ch = (int)(mult[0] * mc);
        NewInput().Then(p => new Conv2dLayer(p, AdmFlags.InChannels, ch, 3), ch);
        int ds = 1;
        for (int level = 0; level < mult.Length; level++)
        {
            for (int r = 0; r < flags.ClassifierDepth; r++)
            {
                int inCh = ch, outCh = (int)(mult[level] * mc);
                var block = NewInput().Then(p => new ResBlock(p, inCh, embDim, outCh, ss), outCh);
                ch = outCh;
                if (attentionDs.Contains(ds))
                {
                    int c = ch;
                    block.Then(p => new AttentionBlock(p, c, 1, heads, useNewAttentionOrder: false), c);
                }
            }
            if (level != mult.Length - 1)
            {
                int c = ch;
                if (flags.ClassifierResblockUpdown)
                {
                    NewInput().Then(p => new ResBlock(p, c, embDim, c, ss, down: true), c);
                }
                else
                {
                    NewInput().Then(p => new Downsample(p, c, useConv: true, c), c);
                }
                ds *= 2;
            }
        }
        int mid = ch;
        middleBlock = Add(new TimestepEmbedSequential("middle_block."))
            .Then(p => new ResBlock(p, mid, embDim, mid, ss), mid)
            .Then(p => new AttentionBlock(p, mid, 1, heads, useNewAttentionOrder: false), mid)
            .Then(p => new ResBlock(p, mid, embDim, mid, ss), mid);
        outNorm = Add(new GroupNormLayer("out.0.", ch));
        if (flags.ClassifierPool == "attention")
        {
            pool = Add(new AttentionPoolLayer("out.2.", flags.ImageSize / ds, ch, heads, flags.OutChannels));
        }
        else
        {
            adaptive = Add(new Conv2dLayer("out.3.", ch, flags.OutChannels, 1));
        }
        SizeMultiple = ds;
    }

    TimestepEmbedSequential NewInput()
    {
        var block = Add(new TimestepEmbedSequential($"input_blocks.{inputBlocks.Count}."));
        inputBlocks.Add(block);
        return block;
    }

    /// <summary>Input height and width must be multiples of this.</summary>
    public int SizeMultiple { get; }

    public long ParameterCount => Parameters().Sum(p => p.Count);

    /// <summary>How this model's ops run, set once by the weight loader.</summary>
    public ExecutionPlan Plan
    {
        get => plan ?? throw new InvalidOperationException("the classifier's weights are not loaded");
        internal set => plan = value;
    }

    /// <summary>Logits (N, 1000, 1, 1) of x (N, 3, H, W) at timesteps t (N floats, on the device), in <paramref name="p"/>.</summary>
    public Tensor Forward(Pass p, Tensor x, Tensor t)
    {
        if (x.Rank != 4 || x[1] != AdmFlags.InChannels || x[2] != Flags.ImageSize || x[3] != Flags.ImageSize || t.Length != x[0])
        {
            throw new DiffSegException($"classifier input {x.ShapeString} with {t.Length} timesteps: it takes (N, 3, {Flags.ImageSize}, " +
                                       $"{Flags.ImageSize}) and N timesteps");
        }
        var dev = p.Device;
        using var emb = Embed(p, t);
        var h = x.Retain();
        foreach (var block in inputBlocks)
        {
            using var input = h;
            h = block.Forward(p, input, emb);
        }
        using (var input = h)
        {
            h = middleBlock.Forward(p, input, emb);
        }
        using (h)
        {
            using var stats = Kernels.GroupNorm.Statistics(h);
            using var a = dev.Allocate(h.Shape);
            outNorm.Apply(p, h, stats, silu: true, scaleShift: null, dropout: 0, a);
            p.Save(outNorm, new SavedTensors(h, stats));
            if (pool is not null)
            {
                return pool.Forward(p, a);
            }
            using var mean = dev.Allocate(h[0], h[1], 1, 1);
            AttentionPool.Mean(a, mean);
            return adaptive!.Forward(p, mean);
        }
    }

    /// <summary>
    /// d loss / d x (N, 3, H, W) from d loss / d logits, after a <see cref="Forward"/> in a pass that saves. Parameter
    /// gradients are summed into their buffers too (the layers' backward computes them); callers that only want d/dx
    /// clear them.
    /// </summary>
    public Tensor InputGradient(Pass p, Tensor dLogits)
    {
        var dev = p.Device;
        using var dEmbSilu = dev.Zeros(dLogits[0], Flags.TimeEmbedDim);
        Tensor da;
        if (pool is not null)
        {
            da = pool.Backward(p, dLogits);
        }
        else
        {
            using var dMean = adaptive!.Backward(p, dLogits)!;
            using var saved = p.Take<SavedTensors>(outNorm);
            da = dev.Allocate(saved[0].Shape);
            AttentionPool.MeanBackward(dMean, da);
            p.Save(outNorm, new SavedTensors(saved[0], saved[1]));
        }
        Tensor dh;
        using (da)
        using (var saved = p.Take<SavedTensors>(outNorm))
        {
            dh = dev.Allocate(saved[0].Shape);
            outNorm.Backward(p, saved[0], saved[1], silu: true, scaleShift: null, dropout: 0, da, dh, null);
        }
        using (var upstream = dh)
        {
            dh = middleBlock.Backward(p, upstream, dEmbSilu);
        }
        for (int i = inputBlocks.Count - 1; i >= 0; i--)
        {
            using var upstream = dh;
            dh = inputBlocks[i].Backward(p, upstream, dEmbSilu);
        }
        return dh;
    }

    /// <summary>SiLU(time_embed(timestep_embedding(t))), what every ResBlock's emb_layers starts from.</summary>
    Tensor Embed(Pass p, Tensor t)
    {
        var dev = p.Device;
        using var sinusoid = dev.Allocate(t.Length, Flags.ClassifierWidth);
        TimestepEmbedding.Forward(t, sinusoid);
        using var hidden = timeEmbed0.Forward(p, sinusoid);
        using var hiddenSilu = dev.Allocate(hidden.Shape);
        Silu.Forward(hidden, hiddenSilu);
        using var emb = timeEmbed2.Forward(p, hiddenSilu);
        var embSilu = dev.Allocate(emb.Shape);
        Silu.Forward(emb, embSilu);
        return embSilu;
    }

    public void Dispose()
    {
        foreach (var p in Parameters())
        {
            p.Release();
        }
    }
}
