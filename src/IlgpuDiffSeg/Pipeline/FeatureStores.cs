using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;
using Half = ILGPU.Half;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>Pixel features of the training images, kept on the device, from which training batches are gathered.</summary>
public interface ITrainingFeatures : IDisposable
{
    int Channels { get; }

    /// <summary>Device bytes held for features (not counting labels).</summary>
    long DeviceBytes { get; }

    /// <summary>Extracts and keeps the features of training image <paramref name="index"/>.</summary>
    void Add(int index, Tensor image, Tensor noise);

    /// <summary>x (rows, D) and y (rows) for the pixel ids ids[0..rows): id = image·H·W + pixel.</summary>
    void Gather(ArrayView<int> ids, int rows, ArrayView<byte> labels, ArrayView<float> x, ArrayView<int> y);
}

/// <summary>Pixel features of one image for prediction.</summary>
public interface IImageFeatures : IDisposable
{
    /// <summary>Every member's logits for pixels [start, start + count): (M, count, C).</summary>
    void Logits(PixelEnsemble ensemble, int start, int count, ArrayView<float> logits);
}

/// <summary>
/// The original's way, kept as the reference path: every training pixel's full D-dim feature materialised
/// (images × D × H·W floats, on the device here rather than in host RAM).
/// </summary>
public sealed class MaterializedTrainingFeatures : ITrainingFeatures
{
    readonly FeatureExtractor extractor;
    readonly DeviceBuffer<float> store;
    readonly int pixels;

    public MaterializedTrainingFeatures(ComputeDevice dev, FeatureExtractor extractor, int images, int size)
    {
        this.extractor = extractor;
        pixels = size * size;
        Channels = extractor.Channels;
        long count = (long)images * Channels * pixels;
        if (dev.IsCuda && count * 4 > dev.Accelerator.MemorySize * 0.8)
        {
            throw new DiffSegException($"materialised features need {count * 4 / 1e9:F1} GB of device memory " +
                                       $"({images} images × {Channels} × {size}²); use \"feature_path\": \"lean\"");
        }
        store = dev.Buffer<float>(count);
        Device = dev;
    }

    ComputeDevice Device { get; }

    public int Channels { get; }

    public long DeviceBytes => store.Length * sizeof(float);

    public void Add(int index, Tensor image, Tensor noise)
    {
        using var features = extractor.Extract(image, noise);
        ((ArrayView<float>)features.View).CopyTo(store.From((long)index * Channels * pixels).SubView(0, features.Length));
    }

    public void Gather(ArrayView<int> ids, int rows, ArrayView<byte> labels, ArrayView<float> x, ArrayView<int> y) =>
        GatherPixels.Forward(Device, rows, Channels, pixels, ids, store.View, labels, x, y);

    public void Dispose() => store.Dispose();
}

/// <summary>One image's materialised features (D, H, W): the ensemble reads them in place as a (pixels, D) matrix.</summary>
public sealed class MaterializedImageFeatures(Tensor features) : IImageFeatures
{
    public void Logits(PixelEnsemble ensemble, int start, int count, ArrayView<float> logits)
    {
        int pixels = features[1] * features[2];
        ensemble.Logits(((ArrayView<float>)features.View).SubView(start), 1, pixels, count, logits);
    }

    public void Dispose() => features.Dispose();
}

/// <summary>
/// Where each (step, block) of the captured activations sits: its first feature channel, its size at native resolution,
/// and its offset in an image's record. Entries are in feature order (step-major, blocks ascending).
/// </summary>
public sealed class BlockTable
{
    public int[] Rows { get; }
    public int[] ChannelEntry { get; }
    public int Entries => Rows.Length / LeanFeatures.TableWidth;
    public long RecordSize { get; }
    public int Channels { get; }
    public IReadOnlyList<(int Step, int Block)> Order { get; }

    public BlockTable(FeatureExtractor extractor, int height, int width, int hidden = 1)
    {
        var rows = new List<int>();
        var order = new List<(int, int)>();
        long offset = 0;
        int first = 0;
        for (int s = 0; s < extractor.Steps.Count; s++)
        {
            foreach (var b in extractor.Blocks)
            {
                var info = extractor.Model.OutputBlocks[b];
                int h = height / info.Downsample, w = width / info.Downsample;
                rows.AddRange([first, info.Channels, h, w, checked((int)offset)]);
                order.Add((s, b));
                offset += (long)(hidden == 1 ? info.Channels : hidden) * h * w;
                first += info.Channels;
            }
        }
        Rows = rows.ToArray();
        Order = order;
        RecordSize = offset;
        Channels = first;
        ChannelEntry = new int[first];
        for (int e = 0; e < Entries; e++)
        {
            Array.Fill(ChannelEntry, e, Rows[e * LeanFeatures.TableWidth], Rows[e * LeanFeatures.TableWidth + 1]);
        }
    }

    public int Field(int entry, int field) => Rows[entry * LeanFeatures.TableWidth + field];
}

/// <summary>
/// The lean path (issue 4): each training image keeps its captured blocks at native resolution — for LSUN-256 with
/// blocks 5,6,7,8,12 at 3 steps, 25.2M values (101 MB fp32, 50 MB fp16) instead of 8448 × 256² (2.2 GB) — and a
/// training batch's features are gathered from them with the upsampling's own taps.
/// </summary>
public sealed class LeanTrainingFeatures : ITrainingFeatures
{
    readonly ExecutionPlan plan;
    readonly ComputeDevice dev;
    readonly FeatureExtractor extractor;
    readonly BlockTable table;
    readonly DeviceBuffer<int> deviceTable, channelEntry;
    readonly DeviceBuffer<float>? store32;
    readonly DeviceBuffer<Half>? store16;
    readonly int size;

    public LeanTrainingFeatures(ExecutionPlan plan, FeatureExtractor extractor, int images, int size, bool half)
    {
        this.plan = plan;
        dev = plan.Device;
        this.extractor = extractor;
        this.size = size;
        table = new BlockTable(extractor, size, size);
        long count = images * table.RecordSize;
        long bytes = count * (half ? 2 : 4);
        if (dev.IsCuda && bytes > dev.Accelerator.MemorySize * 0.8)
        {
            throw new DiffSegException($"the native-resolution features of {images} images need {bytes / 1e9:F1} GB of device memory " +
                                       (half ? "" : "; \"feature_storage\": \"fp16\" halves that"));
        }
        deviceTable = dev.Buffer<int>(table.Rows);
        channelEntry = dev.Buffer<int>(table.ChannelEntry);
        if (half)
        {
            store16 = dev.Buffer<Half>(count);
        }
        else
        {
            store32 = dev.Buffer<float>(count);
        }
    }

    public int Channels => table.Channels;

    public long DeviceBytes => store32 is not null ? store32.Length * 4 : store16!.Length * 2;

    public void Add(int index, Tensor image, Tensor noise)
    {
        using var acts = extractor.Activations(image, noise);
        long record = index * table.RecordSize;
        for (int e = 0; e < table.Entries; e++)
        {
            var (step, block) = table.Order[e];
            using var map = acts.Blocks[block].Slice0(step);
            long at = record + table.Field(e, 4);
            if (store32 is not null)
            {
                map.View.CopyTo(store32.View.SubView(at, map.Length));
            }
            else
            {
                LeanFeatures.ToHalf(dev, map.View, store16!.View.SubView(at, map.Length), map.Length);
            }
        }
    }

    public void Gather(ArrayView<int> ids, int rows, ArrayView<byte> labels, ArrayView<float> x, ArrayView<int> y)
    {
        var s = new LeanShape
        {
            Rows = rows, Channels = table.Channels, Height = size, Width = size, RecordSize = table.RecordSize, Entries = table.Entries,
        };
        if (store32 is not null)
        {
            LeanFeatures.Gather(plan, s, ids, deviceTable.View, channelEntry.View, store32.View, labels, x, y);
        }
        else
        {
            LeanFeatures.Gather(plan, s, ids, deviceTable.View, channelEntry.View, store16!.View, labels, x, y);
        }
    }

    public void Dispose()
    {
        store32?.Dispose();
        store16?.Dispose();
        deviceTable.Dispose();
        channelEntry.Dispose();
    }
}

/// <summary>
/// One image on the lean path: the captured blocks at native resolution. The classifier's first layer is applied to each
/// block there (Y_e = W1_e · a_e, one batched Gemm per block for all members), and each pixel's first-layer output is the
/// sum of the upsampled Y_e — the D-dim features of the image are never formed.
/// </summary>
public sealed class LeanImageFeatures(ComputeDevice dev, FeatureExtractor extractor, UNetOutputs activations, int size) : IImageFeatures
{
    DeviceBuffer<float>? native;
    DeviceBuffer<int>? deviceTable;
    BlockTable? table;

    public void Logits(PixelEnsemble ensemble, int start, int count, ArrayView<float> logits)
    {
        var L = ensemble.Layout;
        if (native is null)
        {
            FirstLayerAtNativeResolution(ensemble);
        }
        using var a1 = dev.Allocate(L.Members * count * L.Hidden1);
        using var a2 = dev.Allocate(L.Members * count * L.Hidden2);
        var s = new LeanShape
        {
            Rows = count, Height = size, Width = size, Entries = table!.Entries, RecordSize = table.RecordSize, Start = start,
            Members = L.Members, Hidden = L.Hidden1, MemberStride = L.Size, BiasOffset = L.B1,
        };
        LeanFeatures.Accumulate(ensemble.Plan, s, deviceTable!.View, native!.View, ensemble.Parameters.View, a1.View);
        ensemble.HiddenLayers(a1.View, count, a2.View, logits);
    }

    void FirstLayerAtNativeResolution(PixelEnsemble ensemble)
    {
        var L = ensemble.Layout;
        table = new BlockTable(extractor, size, size, L.Hidden1);
        deviceTable = dev.Buffer<int>(table.Rows);
        native = dev.Buffer<float>(L.Members * table.RecordSize);
        for (int e = 0; e < table.Entries; e++)
        {
            var (step, block) = table.Order[e];
            using var map = activations.Blocks[block].Slice0(step);
            int pixels = table.Field(e, 2) * table.Field(e, 3);
            var g = new GemmShape
            {
                M = L.Hidden1, N = pixels, K = table.Field(e, 1), Batch0 = L.Members, Batch1 = 1, Alpha = 1f,
                AOffset = L.W1 + table.Field(e, 0), ARow = L.In, ACol = 1, ABatch0 = L.Size,
                BRow = pixels, BCol = 1,
                COffset = table.Field(e, 4), CRow = 1, CCol = L.Hidden1, CBatch0 = checked((int)table.RecordSize),
            };
            Gemm.Run(dev, g, ensemble.Parameters.View, map.View, native.View, kernel: ensemble.Plan.Fp32Matmul);
        }
    }

    public void Dispose()
    {
        native?.Dispose();
        deviceTable?.Dispose();
        activations.Dispose();
    }
}
