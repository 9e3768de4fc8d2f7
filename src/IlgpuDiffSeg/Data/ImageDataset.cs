using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace IlgpuDiffSeg.Data;

/// <summary>How <see cref="ImageDataset"/> serves a folder: guided-diffusion's load_data arguments, plus the seed.</summary>
public sealed record ImageDatasetOptions
{
    /// <summary>The side of the square images served (image_size).</summary>
    public required int ImageSize { get; init; }

    public required int BatchSize { get; init; }

    /// <summary>Labels from file names: the prefix before the first '_', numbered in sorted order of the names.</summary>
    public bool ClassCond { get; init; }

    /// <summary>Horizontal flip with probability ½ (the original's default).</summary>
    public bool RandomFlip { get; init; } = true;

    /// <summary>Files in listing order every epoch instead of a new shuffle per epoch.</summary>
    public bool Deterministic { get; init; }

    /// <summary>Seeds the shuffles and flips: the stream of batches is a function of the seed alone.</summary>
    public int Seed { get; init; }

    /// <summary>This process serves files Shard, Shard + NumShards, … of the listing (the original's MPI sharding).</summary>
    public int Shard { get; init; }

    public int NumShards { get; init; } = 1;

    /// <summary>Where the stream starts, in batches: a resumed trainer gets the batches it would have got next.</summary>
    public long FirstBatch { get; init; }

    /// <summary>Batches decoded ahead of the consumer; host memory holds at most this many plus the one being decoded.</summary>
    public int PrefetchBatches { get; init; } = 2;

    /// <summary>Images decoded at once.</summary>
    public int Workers { get; init; } = Environment.ProcessorCount;
}

/// <summary>A batch as load_data yields it: images (N, 3, S, S) float32 in [−1, 1] and, with class_cond, labels (N,).</summary>
public sealed class ImageBatch
{
    public required float[] Images { get; init; }
    public long[]? Labels { get; init; }

    /// <summary>Indices of the images in <see cref="ImageDataset.Files"/>.</summary>
    public required int[] Indices { get; init; }

    public required bool[] Flipped { get; init; }

    /// <summary>The batch's number in the stream (0 for the first batch of epoch 0) and its epoch.</summary>
    public required long Number { get; init; }

    public required long Epoch { get; init; }
}

/// <summary>
/// The training images of a diffusion model as guided-diffusion's image_datasets.py gives them (docs/method.md, Data): every
/// jpg/jpeg/png/gif found recursively, decoded as PIL decodes it, converted to RGB, reduced by
/// <see cref="CenterCrop"/> to image_size², flipped horizontally with p = ½, scaled to x / 127.5 − 1 and served as
/// endless shuffled epochs of full batches (drop_last, as its DataLoader). Unlike the original, the shuffles and flips
/// come from one seed, so a run is reproducible and can resume its data stream (<see cref="ImageDatasetOptions.FirstBatch"/>).
///
/// Batches are assembled ahead of the consumer on a background thread, their images decoded in parallel on the thread
/// pool, into a bounded queue: beyond the batches the consumer holds, host memory keeps PrefetchBatches + 1 batches and
/// the file list, whatever the folder size.
/// A file that cannot be read or decoded ends the stream: <see cref="NextBatch"/> throws a
/// <see cref="DiffSegException"/> naming it, after the batches decoded before it.
/// </summary>
public sealed partial class ImageDataset : IDisposable
{
    static readonly string[] Extensions = ["jpg", "jpeg", "png", "gif"];

    readonly ImageDatasetOptions options;
    readonly BlockingCollection<ImageBatch> queue;
    readonly CancellationTokenSource cancel = new();
    readonly Thread producer;
    ExceptionDispatchInfo? failure;
    long assembled;
    bool disposed;

    /// <summary>This shard's files, in listing order.</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>With class_cond, the class of each of <see cref="Files"/>; else null.</summary>
    public IReadOnlyList<int>? Classes { get; }

    /// <summary>With class_cond, the class names in id order (over all shards' files, as the original numbers them).</summary>
    public IReadOnlyList<string> ClassNames { get; }

    public int BatchesPerEpoch => Files.Count / options.BatchSize;

    /// <summary>Batches decoded so far, handed out or waiting: at most PrefetchBatches + 1 ahead of the consumer.</summary>
    public long BatchesAssembled => Interlocked.Read(ref assembled);

    public ImageDataset(string folder, ImageDatasetOptions options)
    {
        this.options = options;
        Check(options.ImageSize >= 1, $"image_size must be at least 1, not {options.ImageSize}");
        Check(options.BatchSize >= 1, $"batch_size must be at least 1, not {options.BatchSize}");
        Check(options.NumShards >= 1 && options.Shard >= 0 && options.Shard < options.NumShards,
              $"shard {options.Shard} of {options.NumShards} does not exist");
        Check(options.PrefetchBatches >= 1 && options.Workers >= 1, "prefetch and workers must be at least 1");
        Check(options.FirstBatch >= 0, $"the first batch cannot be {options.FirstBatch}");
        var all = ListImageFiles(folder);
        if (all.Count == 0)
        {
            throw DiffSegException.For(folder, "no images (jpg, jpeg, png, gif) found in it or its sub-folders");
        }
        Files = all.Where((_, i) => i % options.NumShards == options.Shard).ToList();
        ProbeSignatures(Files);
        if (options.ClassCond)
        {
            var (names, ids) = ClassesOf(all);
            ClassNames = names;
            Classes = ids.Where((_, i) => i % options.NumShards == options.Shard).ToList();
        }
        else
        {
            ClassNames = [];
        }
        if (Files.Count < options.BatchSize)
        {
            throw DiffSegException.For(folder, $"{Files.Count} images{(options.NumShards > 1 ? " in this shard" : "")}, fewer " +
                                               $"than one batch of {options.BatchSize} (only full batches are served)");
        }
        queue = new BlockingCollection<ImageBatch>(options.PrefetchBatches);
        producer = new Thread(Produce) { IsBackground = true, Name = "ImageDataset producer" };
        producer.Start();

        static void Check(bool ok, string problem)
        {
            if (!ok)
            {
                throw new DiffSegException(problem);
            }
        }
    }

    /// <summary>The next batch of the endless stream; blocks until it is decoded.</summary>
    public ImageBatch NextBatch()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (queue.TryTake(out var batch, Timeout.Infinite))
        {
            return batch;
        }
        failure?.Throw();
        throw new InvalidOperationException("the image stream ended without an error");
    }

    /// <summary>The endless stream of batches.</summary>
    public IEnumerable<ImageBatch> Batches()
    {
        while (true)
        {
            yield return NextBatch();
        }
    }

    public void Dispose()
    {
        if (disposed)
        {
            return;
        }
        disposed = true;
        cancel.Cancel();
        producer.Join();
        queue.Dispose();
        cancel.Dispose();
    }

    void Produce()
    {
        try
        {
            long epoch = -1;
            int[] order = [];
            bool[] flips = [];
            for (long number = options.FirstBatch; ; number++)
            {
                if (number / BatchesPerEpoch != epoch)
                {
                    epoch = number / BatchesPerEpoch;
                    (order, flips) = EpochPlan(epoch);
                }
                int first = (int)(number % BatchesPerEpoch) * options.BatchSize;
                var batch = Assemble(number, epoch, order.AsSpan(first, options.BatchSize), flips.AsSpan(first, options.BatchSize));
                Interlocked.Increment(ref assembled);
                queue.Add(batch, cancel.Token);
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            failure = ExceptionDispatchInfo.Capture(e is DiffSegException ? e : new DiffSegException($"reading images: {e.Message}", e));
        }
        finally
        {
            queue.CompleteAdding();
        }
    }

    /// <summary>An epoch's order and flips, from a generator seeded by (seed, epoch) alone.</summary>
    (int[] Order, bool[] Flips) EpochPlan(long epoch)
    {
        var rng = new Random(EpochSeed(options.Seed, epoch));
        int n = Files.Count;
        var order = Enumerable.Range(0, n).ToArray();
        if (!options.Deterministic)
        {
            for (int i = n - 1; i > 0; i--)
            {
                int j = rng.Next(i + 1);
                (order[i], order[j]) = (order[j], order[i]);
            }
        }
        var flips = new bool[n];
        for (int i = 0; i < n && options.RandomFlip; i++)
        {
            flips[i] = rng.NextDouble() < 0.5;
        }
        return (order, flips);
    }

    static int EpochSeed(int seed, long epoch)
    {
        // SplitMix64 of (seed, epoch): neighbouring epochs and seeds get unrelated generators.
        ulong z = unchecked(((ulong)(uint)seed << 32) ^ (ulong)epoch) + 0x9E3779B97F4A7C15UL;
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return (int)((z ^ (z >> 31)) & int.MaxValue);
    }

    ImageBatch Assemble(long number, long epoch, ReadOnlySpan<int> indices, ReadOnlySpan<bool> flips)
    {
        int s = options.ImageSize, b = indices.Length, plane = 3 * s * s;
        var images = new float[b * plane];
        var ids = indices.ToArray();
        var flipped = flips.ToArray();
        var errors = new Exception?[b];
        Parallel.For(0, b, new ParallelOptions { MaxDegreeOfParallelism = options.Workers, CancellationToken = cancel.Token }, i =>
        {
            try
            {
                var crop = CenterCrop(DecodeRgb(Files[ids[i]], out int w, out int h), w, h, s);
                ToTensor(crop, s, flipped[i], images.AsSpan(i * plane, plane));
            }
            catch (Exception e)
            {
                errors[i] = e;
            }
        });
        // The first failure in batch order, so the error does not depend on thread timing.
        if (errors.FirstOrDefault(e => e is not null) is { } error)
        {
            ExceptionDispatchInfo.Throw(error);
        }
        return new ImageBatch
        {
            Images = images,
            Labels = Classes is null ? null : ids.Select(i => (long)Classes[i]).ToArray(),
            Indices = ids,
            Flipped = flipped,
            Number = number,
            Epoch = epoch,
        };
    }

    // ---- the steps of ImageDataset.__getitem__
}

/// <summary>Python's str ordering: by Unicode code point (UTF-16 ordinal order differs above U+FFFF).</summary>
public sealed class PythonOrder : IComparer<string>
{
    public static readonly PythonOrder Instance = new();

    public int Compare(string? a, string? b)
    {
        if (a is null || b is null)
        {
            return a is null ? (b is null ? 0 : -1) : 1;
        }
        var ra = a.EnumerateRunes();
        var rb = b.EnumerateRunes();
        while (true)
        {
            bool moreA = ra.MoveNext(), moreB = rb.MoveNext();
            if (!moreA || !moreB)
            {
                return moreA ? 1 : moreB ? -1 : 0;
            }
            int d = ra.Current.Value.CompareTo(rb.Current.Value);
            if (d != 0)
            {
                return d;
            }
        }
    }
}
