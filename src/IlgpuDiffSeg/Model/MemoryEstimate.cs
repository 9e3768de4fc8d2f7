using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Model;

/// <summary>
/// A deliberately rough upper bound of what a batch of UNet passes holds, checked before anything is allocated so that an
/// absurd --batch-size (100000, 2³¹ − 1) is refused with a message naming the option instead of running the process out
/// of memory. It counts the activations a pass keeps per image (a few tensors per residual block and level, the attention
/// weights), the weights with their gradients, Adam moments and EMA copies, and the batch's host arrays, and compares the
/// sum with the memory of the device (the host's for the CPU accelerator). It only refuses what could never fit; a batch
/// it lets through may still be too large for a fragmented device.
/// </summary>
public static class MemoryEstimate
{
    /// <summary>
    /// Bytes one image's pass keeps: with <paramref name="training"/>, what the backward pass needs too; an image of
    /// <paramref name="pixels"/> pixels instead of the flags' size (the UNet runs on any multiple of its size step).
    /// </summary>
    public static double ActivationBytesPerImage(AdmFlags flags, bool training, double? pixels = null)
    {
        var mult = flags.ChannelMultipliers();
        var attention = flags.AttentionDownsampleRates();
        double size = pixels is { } p ? Math.Sqrt(p) : flags.IsSuperResolution ? flags.LargeSize : flags.ImageSize, values = 0;
        int heads = Math.Max(1, flags.NumHeads);
        for (int level = 0; level < mult.Length; level++)
        {
            double side = size / (1 << level), plane = side * side, channels = flags.NumChannels * mult[level];
            // Encoder and decoder blocks of the level: a training pass keeps a few tensors each (input, norm, activation, conv
            // outputs; measured: 11 MB per 32² image of the tiny model, this counts 20), sampling the skips and the live ones.
            values += (training ? 8 : 2) * (2 * flags.NumResBlocks + 1) * channels * plane;
            if (attention.Contains(1 << level))
            {
                int h = flags.NumHeadChannels > 0 ? Math.Max(1, (int)(channels / flags.NumHeadChannels)) : heads;
                values += (training ? 2 : 1) * (2 * flags.NumResBlocks + 1) * h * plane * plane;
            }
        }
        return 4 * values;
    }

    /// <summary>The memory a plan's device offers: the GPU's, or the host's for the CPU accelerator.</summary>
    public static double Budget(ExecutionPlan plan) =>
        plan.Device.IsCpu ? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes : plan.Device.Accelerator.MemorySize;

    /// <summary>
    /// Refuses, naming <paramref name="option"/>, a pass of <paramref name="images"/> images at once (plus
    /// <paramref name="fixedBytes"/>) that needs more than the device has (the host, without a plan).
    /// </summary>
    public static void Check(string option, double images, double bytesPerImage, double fixedBytes, ExecutionPlan? plan)
    {
        double need = images * bytesPerImage + fixedBytes;
        double have = plan is null ? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes : Budget(plan);
        if (need > have)
        {
            throw new DiffSegException($"{option}: {images:0} images at once need about {Gib(need)} of memory, more than the " +
                                       $"{Gib(have)} this device has; lower it");
        }
    }

    /// <summary>Refuses, naming <paramref name="option"/>, outputs of <paramref name="count"/> items too many for one array.</summary>
    public static void CheckArray(string option, double count, double valuesPerItem)
    {
        if (count * valuesPerItem > Array.MaxLength)
        {
            throw new DiffSegException($"{option}: {count:0} of {valuesPerItem:0} values each are more than one array holds " +
                                       $"({Array.MaxLength:N0} values)");
        }
    }

    static string Gib(double bytes) => bytes >= 1L << 40
        ? $"{bytes / (1L << 40):0.#} TiB"
        : $"{bytes / (1L << 30):0.##} GiB";
}
