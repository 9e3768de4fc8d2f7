using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.Classifier;
using IlgpuDiffSeg.Diffusion;
using IlgpuDiffSeg.Kernels;

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
    readonly MemoryBuffer1D<float, Stride1D.Dense> store;
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
        store = dev.Accelerator.Allocate1D<float>(count);
        Device = dev;
    }

    ComputeDevice Device { get; }

    public int Channels { get; }

    public long DeviceBytes => store.LengthInBytes;

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
