using System.Globalization;
using IlgpuDiffSeg.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>
/// The outputs of DatasetDDPM once every batch is present: generate_dataset.py's samples_HxWx3.npz, every sample in order,
/// and a dataset folder in ddpm-segmentation's layout (&lt;index&gt;.png with a same-stem .npy uint8 mask) holding the
/// samples train_deeplab.py keeps — the folder 'diffseg train' reads as training_path.
/// </summary>
public static class SyntheticDataset
{
    public const string DatasetFolder = "dataset";

    public static string NpzName(int size) => $"samples_{size}x{size}x3.npz";

    /// <summary>
    /// train_deeplab.py's filter of N samples by uncertainty: sorted from most to least certain, the slice [30, N − f + 30)
    /// with f = int(N·portion) — the 30 most certain and the f − 30 least certain dropped. Below f = 30 the original's
    /// slice is empty or wrong (its end index turns positive); there the f least certain are dropped. Ties keep index order.
    /// </summary>
    public static int[] KeptIndices(IReadOnlyList<float> uncertainty, double portion)
    {
        int n = uncertainty.Count, f = (int)(n * portion);
        var order = Enumerable.Range(0, n).OrderBy(i => uncertainty[i]).ThenBy(i => i).ToArray();
        return f >= 30 ? order[30..(n - f + 30)] : order[..(n - f)];
    }

    /// <summary>Concatenates the batches into the npz and writes the filtered dataset folder; returns both paths and the count.</summary>
    public static (string Npz, string Folder, int Kept) Assemble(SynthesizeOptions o, ExperimentConfig cfg, int batches,
        Action<string>? log)
    {
        int size = cfg.ImageSize, pixels = size * size, n = o.NumSamples;
        var images = new byte[(long)n * pixels * 3];
        var masks = new byte[(long)n * pixels];
        var uncertainty = new float[n];
        for (int b = 0; b < batches; b++)
        {
            string path = SynthesizeRun.BatchPath(o.OutputDir, b);
            var (im, ms, un) = ReadBatch(o, cfg, b);
            int first = b * o.BatchSize;
            im.Data.CopyTo(images.AsSpan(first * pixels * 3));
            ms.Data.CopyTo(masks.AsSpan(first * pixels));
            un.ToFloat32(path).CopyTo(uncertainty.AsSpan(first));
        }
        string npz = Path.Combine(o.OutputDir, NpzName(size));
        Npz.Write(npz,
        [
            NpzEntry.Of("arr_0", images, n, size, size, 3),
            NpzEntry.Of("arr_1", masks, n, size, size),
            NpzEntry.Of("arr_2", uncertainty, n),
        ]);
        var kept = KeptIndices(uncertainty, o.UncertaintyPortion);
        string folder = Path.Combine(o.OutputDir, DatasetFolder);
        Directory.CreateDirectory(folder);
        var keep = kept.ToHashSet();
        foreach (var stale in Directory.GetFiles(folder).Where(f => !keep.Contains(IndexOf(f))))
        {
            File.Delete(stale);
        }
        foreach (int i in kept.Order())
        {
            string stem = Path.Combine(folder, i.ToString("D6", CultureInfo.InvariantCulture));
            SavePng(stem + ".png", images.AsSpan(i * pixels * 3, pixels * 3), size);
            Npy.Write(stem + ".npy", masks.AsSpan(i * pixels, pixels), [size, size]);
        }
        int dropped = n - kept.Length;
        string how = dropped >= 30 ? $"the 30 most and the {dropped - 30} least certain dropped" : $"the {dropped} least certain dropped";
        log?.Invoke($"wrote {npz} ({n} samples) and {folder} ({kept.Length} kept: {how}, uncertainty portion " +
                    $"{o.UncertaintyPortion.ToString(CultureInfo.InvariantCulture)})");
        return (npz, folder, kept.Length);
    }

    /// <summary>Batch <paramref name="b"/> as RunBatch wrote it (images, masks, uncertainty), refused naming the file if not.</summary>
    public static (NpyArray Images, NpyArray Masks, NpyArray Uncertainty) ReadBatch(SynthesizeOptions o, ExperimentConfig cfg, int b)
    {
        string path = SynthesizeRun.BatchPath(o.OutputDir, b);
        int size = cfg.ImageSize, count = Math.Min(o.BatchSize, o.NumSamples - b * o.BatchSize);
        var arrays = Npz.Read(path);
        if (!arrays.TryGetValue("arr_0", out var im) || !arrays.TryGetValue("arr_1", out var ms) ||
            !arrays.TryGetValue("arr_2", out var un) || un.Count != count ||
            !im.Shape.SequenceEqual([count, size, size, 3]) || !ms.Shape.SequenceEqual([count, size, size]) ||
            im.Type != NpyType.UInt8 || ms.Type != NpyType.UInt8)
        {
            throw DiffSegException.For(path, $"is not a batch of {count} {size}×{size} samples with masks; delete it to redo it");
        }
        return (im, ms, un);
    }

    static int IndexOf(string file) =>
        int.TryParse(Path.GetFileNameWithoutExtension(file), NumberStyles.None, CultureInfo.InvariantCulture, out int i) ? i : -1;

    static void SavePng(string path, ReadOnlySpan<byte> hwc, int size)
    {
        using var img = Image.LoadPixelData<Rgb24>(hwc, size, size);
        AtomicFile.Write(path, s => img.SaveAsPng(s));
    }
}
