using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Model;

/// <summary>What a decoder block produces: channels and the factor by which it is smaller than the image.</summary>
public sealed record BlockInfo(int Index, int Channels, int Downsample);

/// <summary>The result of a forward pass: the model output (unless skipped) and the captured decoder blocks.</summary>
public sealed class UNetOutputs : IDisposable
{
    public Tensor? Output { get; internal set; }
    public SortedDictionary<int, Tensor> Blocks { get; } = new();

    public void Dispose()
    {
        Output?.Dispose();
        foreach (var b in Blocks.Values)
        {
            b.Dispose();
        }
        Blocks.Clear();
    }
}

/// <summary>
/// The ADM UNet (guided-diffusion unet.UNetModel), built from <see cref="AdmFlags"/> as script_util.create_model
/// builds it; every weight has its state_dict name.
/// </summary>
public sealed class UNetModel : Module, IDisposable
{
    readonly LinearLayer timeEmbed0;
    readonly LinearLayer timeEmbed2;
    readonly EmbeddingLayer? labelEmb;
    readonly List<TimestepEmbedSequential> inputBlocks = new();
    readonly TimestepEmbedSequential middleBlock;
    readonly List<TimestepEmbedSequential> outputBlocks = new();
    readonly GroupNormLayer outNorm;
    readonly Conv2dLayer outConv;
    readonly List<BlockInfo> outputInfo = new();
    readonly int levels;

    public AdmFlags Flags { get; }
    public int ModelChannels { get; }

    /// <summary>Channels and scale of each decoder block (output_blocks[i]).</summary>
    public IReadOnlyList<BlockInfo> OutputBlocks => outputInfo;

    public UNetModel(AdmFlags flags) : base("")
    {
        Flags = flags;
        if (flags.ImageSize <= 0 || flags.NumChannels <= 0 || flags.NumResBlocks < 0)
        {
            throw new DiffSegException($"image_size {flags.ImageSize}, num_channels {flags.NumChannels} and num_res_blocks " +
                                       $"{flags.NumResBlocks} must be positive");
        }
        var mult = flags.ChannelMultipliers();
        var attentionDs = flags.AttentionDownsampleRates();
        int mc = ModelChannels = flags.NumChannels;
        int embDim = flags.TimeEmbedDim;
        int headsUp = flags.NumHeadsUpsample == -1 ? flags.NumHeads : flags.NumHeadsUpsample;
        bool ss = flags.UseScaleShiftNorm, ckpt = flags.UseCheckpoint;
        float drop = (float)flags.Dropout;
        levels = mult.Length;

        timeEmbed0 = Add(new LinearLayer("time_embed.0.", mc, embDim));
        timeEmbed2 = Add(new LinearLayer("time_embed.2.", embDim, embDim));
        if (flags.ClassCond)
        {
            labelEmb = Add(new EmbeddingLayer("label_emb.", flags.NumClasses, embDim));
        }

        int ch = (int)(mult[0] * mc);
        int inputCh = ch;
        NewInput().Then(p => new Conv2dLayer(p, flags.ModelInChannels, ch, 3), ch);
        var skipChannels = new Stack<int>();
        skipChannels.Push(ch);
        int ds = 1;
        for (int level = 0; level < mult.Length; level++)
        {
            for (int r = 0; r < flags.NumResBlocks; r++)
            {
                int outCh = (int)(mult[level] * mc);
                int inCh = ch;
                var block = NewInput().Then(p => new ResBlock(p, inCh, embDim, outCh, ss, dropout: drop, useCheckpoint: ckpt), outCh);
                ch = outCh;
                if (attentionDs.Contains(ds))
                {
                    int c = ch;
                    block.Then(p => new AttentionBlock(p, c, flags.NumHeads, flags.NumHeadChannels, flags.UseNewAttentionOrder, ckpt), c);
                }
                skipChannels.Push(ch);
            }
            if (level != mult.Length - 1)
            {
                int c = ch;
                if (flags.ResblockUpdown)
                {
                    NewInput().Then(p => new ResBlock(p, c, embDim, c, ss, down: true, dropout: drop, useCheckpoint: ckpt), c);
                }
                else
                {
                    NewInput().Then(p => new Downsample(p, c, useConv: true, c), c);
                }
                skipChannels.Push(ch);
                ds *= 2;
            }
        }

        int midCh = ch;
        middleBlock = Add(new TimestepEmbedSequential("middle_block."))
            .Then(p => new ResBlock(p, midCh, embDim, midCh, ss, dropout: drop, useCheckpoint: ckpt), midCh)
            .Then(p => new AttentionBlock(p, midCh, flags.NumHeads, flags.NumHeadChannels, flags.UseNewAttentionOrder, ckpt), midCh)
            .Then(p => new ResBlock(p, midCh, embDim, midCh, ss, dropout: drop, useCheckpoint: ckpt), midCh);

        for (int level = mult.Length - 1; level >= 0; level--)
        {
            for (int i = 0; i <= flags.NumResBlocks; i++)
            {
                int inCh = ch + skipChannels.Pop();
                int outCh = (int)(mc * mult[level]);
                var block = Add(new TimestepEmbedSequential($"output_blocks.{outputBlocks.Count}."))
                    .Then(p => new ResBlock(p, inCh, embDim, outCh, ss, dropout: drop, useCheckpoint: ckpt), outCh);
                outputBlocks.Add(block);
                ch = outCh;
                if (attentionDs.Contains(ds))
                {
                    int c = ch;
                    block.Then(p => new AttentionBlock(p, c, headsUp, flags.NumHeadChannels, flags.UseNewAttentionOrder, ckpt), c);
                }
                if (level > 0 && i == flags.NumResBlocks)
                {
                    int c = ch;
                    if (flags.ResblockUpdown)
                    {
                        block.Then(p => new ResBlock(p, c, embDim, c, ss, up: true, dropout: drop, useCheckpoint: ckpt), c);
                    }
                    else
                    {
                        block.Then(p => new Upsample(p, c, useConv: true, c), c);
                    }
                    ds /= 2;
                }
                outputInfo.Add(new BlockInfo(outputBlocks.Count - 1, ch, ds));
            }
        }

        outNorm = Add(new GroupNormLayer("out.0.", ch));
        outConv = Add(new Conv2dLayer("out.2.", inputCh, flags.OutChannels, 3));
    }

    TimestepEmbedSequential NewInput()
    {
        var block = Add(new TimestepEmbedSequential($"input_blocks.{inputBlocks.Count}."));
        inputBlocks.Add(block);
        return block;
    }

    /// <summary>Input height and width must be multiples of this (one halving per level below the first).</summary>
    public int SizeMultiple => 1 << (levels - 1);

    /// <summary>Total number of weights.</summary>
    public long ParameterCount => Parameters().Sum(p => p.Count);

    /// <summary>How this model's ops run, set once by the weight loader (ModelWeights.Load, InitializeRandom).</summary>
    public ExecutionPlan Plan
    {
        get => plan ?? throw new InvalidOperationException("the model's weights are not loaded");
        internal set => plan = plan is null || ReferenceEquals(plan, value)
            ? value
            : throw new InvalidOperationException("a model's execution plan is chosen once, when its weights are loaded");
    }

    ExecutionPlan? plan;

    /// <summary>
    /// Runs the UNet on x (N, 3, H, W) at timesteps t (N floats, on the device) in an inference pass. Decoder blocks named
    /// in <paramref name="capture"/> are returned; with <paramref name="computeOutput"/> false the pass stops after the last
    /// captured block (feature extraction never needs the remaining decoder or the output head).
    /// </summary>
    public UNetOutputs Forward(Tensor x, Tensor t, IReadOnlyList<long>? classLabels = null, IReadOnlyCollection<int>? capture = null,
        bool computeOutput = true)
    {
        using var pass = new Pass(Plan);
        return Forward(pass, x, t, classLabels, capture, computeOutput);
    }

    /// <summary>The forward of unet.py's UNetModel in <paramref name="p"/> (a training pass saves what the backward needs).</summary>
    public UNetOutputs Forward(Pass p, Tensor x, Tensor t, IReadOnlyList<long>? classLabels = null,
        IReadOnlyCollection<int>? capture = null, bool computeOutput = true)
    {
        int lastBlock = CheckInputs(x, t, classLabels, capture, computeOutput);
        var result = new UNetOutputs();
        var hs = new Stack<Tensor>();
        try
        {
            using var emb = Embed(p, t, classLabels);
            var h = x;
            foreach (var block in inputBlocks)
            {
                h = block.Forward(p, h, emb);
                hs.Push(h);
            }
            h = middleBlock.Forward(p, h, emb);
            for (int i = 0; i <= lastBlock; i++)
            {
                Tensor cat;
                using (var previous = h)
                using (var skip = hs.Pop())
                {
                    cat = ConcatChannels.Forward(previous, skip);
                }
                using (cat)
                {
                    h = outputBlocks[i].Forward(p, cat, emb);
                }
                if (capture?.Contains(i) == true)
                {
                    result.Blocks[i] = h.Retain();
                }
            }
            using (h)
            {
                if (computeOutput)
                {
                    result.Output = outConv.ForwardNormalized(p, h, outNorm, silu: true);
                }
            }
            return result;
        }
        catch
        {
            result.Dispose();
            throw;
        }
        finally
        {
            while (hs.Count > 0)
            {
                hs.Pop().Dispose();
            }
        }
    }

    /// <summary>
    /// The backward of a training <see cref="Forward(Pass, Tensor, Tensor, IReadOnlyList{long}?, IReadOnlyCollection{int}?, bool)"/>
    /// that computed the output: adds d loss / d every parameter to its gradient, given <paramref name="dOutput"/> =
    /// d loss / d output. The input image needs no gradient.
    /// </summary>
    public void Backward(Pass p, Tensor dOutput)
    {
        var dev = p.Device;
        using var saved = p.Take<EmbedSaved>(this);
        using var dEmbSilu = dev.Zeros(saved.Tensors[1].Shape);
        var dh = outConv.Backward(p, dOutput)!;
        // The decoder took input block L−1−i's output as the skip of output block i: its gradient waits there.
        var skipGradients = new Tensor?[inputBlocks.Count];
        try
        {
            for (int i = outputBlocks.Count - 1; i >= 0; i--)
            {
                using var dCat = outputBlocks[i].Backward(p, dh, dEmbSilu);
                dh.Dispose();
                int skip = inputBlocks.Count - 1 - i;
                int hChannels = dCat[1] - SkipChannels(skip);
                dh = dev.Allocate(dCat[0], hChannels, dCat[2], dCat[3]);
                skipGradients[skip] = dev.Allocate(dCat[0], dCat[1] - hChannels, dCat[2], dCat[3]);
                ConcatChannels.Backward(dCat, dh, skipGradients[skip]!);
            }
            using (var dMiddle = dh)
            {
                dh = middleBlock.Backward(p, dMiddle, dEmbSilu);
            }
            for (int i = inputBlocks.Count - 1; i >= 0; i--)
            {
                Kernels.Add.Accumulate(dh, skipGradients[i]!);
                if (i == 0)
                {
                    inputBlocks[0].BackwardWithoutInputGradient(p, dh);
                    break;
                }
                using var upstream = dh;
                dh = inputBlocks[i].Backward(p, upstream, dEmbSilu);
            }
        }
        finally
        {
            dh.Dispose();
            foreach (var g in skipGradients)
            {
                g?.Dispose();
            }
        }
        EmbedBackward(p, saved, dEmbSilu);
    }

    int SkipChannels(int inputBlock) => inputBlocks[inputBlock].OutChannels;

    /// <summary>Checks the inputs of Forward; returns the last decoder block the pass must run.</summary>
    int CheckInputs(Tensor x, Tensor t, IReadOnlyList<long>? classLabels, IReadOnlyCollection<int>? capture, bool computeOutput)
    {
        int n = x[0];
        if (x.Rank != 4 || x[1] != Flags.ModelInChannels || x[2] % SizeMultiple != 0 || x[3] % SizeMultiple != 0)
        {
            throw new DiffSegException($"input {x.ShapeString} must be (N, {Flags.ModelInChannels}, H, W) with H and W divisible by " +
                                       $"{SizeMultiple}");
        }
        if (t.Length != n)
        {
            throw new DiffSegException($"{t.Length} timesteps for a batch of {n}");
        }
        if (Flags.ClassCond != (classLabels is not null))
        {
            throw new DiffSegException(Flags.ClassCond ? "this model is class-conditional: class labels (y) are required"
                : "this model is not class-conditional: class labels (y) must not be given");
        }
        if (classLabels is not null && classLabels.Count != n)
        {
            throw new DiffSegException($"{classLabels.Count} class labels for a batch of {n}");
        }
        foreach (var b in capture ?? [])
        {
            if (b < 0 || b >= outputBlocks.Count)
            {
                throw new DiffSegException($"decoder block {b} does not exist: this model has output blocks 0..{outputBlocks.Count - 1}");
            }
        }
        return computeOutput || capture is null || capture.Count == 0 ? outputBlocks.Count - 1 : capture.Max();
    }

    /// <summary>What the embedding's backward needs: time_embed.0's output (before its SiLU) and emb (before the SiLU every
    /// ResBlock applies).</summary>
    sealed class EmbedSaved(Tensor hidden, Tensor emb) : IDisposable
    {
        public readonly SavedTensors Tensors = new(hidden, emb);

        public void Dispose() => Tensors.Dispose();
    }

    /// <summary>SiLU(time_embed(timestep_embedding(t)) [+ label_emb(y)]): every ResBlock's emb_layers starts with SiLU.</summary>
    Tensor Embed(Pass p, Tensor t, IReadOnlyList<long>? classLabels)
    {
        var dev = p.Device;
        int n = t.Length;
        using var sinusoid = dev.Allocate(n, ModelChannels);
        TimestepEmbedding.Forward(t, sinusoid);
        using var hidden = timeEmbed0.Forward(p, sinusoid);
        using var hiddenSilu = dev.Allocate(hidden.Shape);
        Silu.Forward(hidden, hiddenSilu);
        using var emb = timeEmbed2.Forward(p, hiddenSilu);
        if (labelEmb is not null && classLabels is not null)
        {
            using var label = labelEmb.Forward(p, classLabels);
            Kernels.Add.Forward(emb, label, emb);
        }
        var embSilu = dev.Allocate(n, Flags.TimeEmbedDim);
        Silu.Forward(emb, embSilu);
        p.Save(this, new EmbedSaved(hidden, emb));
        return embSilu;
    }

    /// <summary>The embedding's backward from d loss / d SiLU(emb), summed over every ResBlock.</summary>
    void EmbedBackward(Pass p, EmbedSaved saved, Tensor dEmbSilu)
    {
        var dev = p.Device;
        using var dEmb = dev.Allocate(dEmbSilu.Shape);
        Silu.Backward(saved.Tensors[1], dEmbSilu, dEmb);
        labelEmb?.Backward(p, dEmb);
        using var dHiddenSilu = timeEmbed2.Backward(p, dEmb)!;
        using var dHidden = dev.Allocate(dHiddenSilu.Shape);
        Silu.Backward(saved.Tensors[0], dHiddenSilu, dHidden);
        timeEmbed0.Backward(p, dHidden, inputGradient: false);
    }

    public void Dispose()
    {
        foreach (var p in Parameters())
        {
            p.Release();
        }
    }
}
