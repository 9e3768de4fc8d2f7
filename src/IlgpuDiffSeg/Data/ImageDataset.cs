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
/// The training images of a diffusion model as guided-diffusion's image_datasets.py gives them (REFERENCE §D5): every
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
public sealed class ImageDataset : IDisposable
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

    /// <summary>
    /// _list_image_files_recursively: the entries of each folder in Python's sorted() order (code points); a name with a
    /// '.' whose last part is jpg, jpeg, png or gif (any case) is an image, a folder is searched in place. The order is
    /// therefore the walk's, not a sort of whole paths ("a/x.png" comes before "a.png", because "a" &lt; "a.png").
    /// A folder named like an image is searched, where the original would list it and fail to open it.
    /// </summary>
    public static List<string> ListImageFiles(string folder)
    {
        if (!Directory.Exists(folder))
        {
            throw DiffSegException.For(folder, File.Exists(folder) ? "is a file, not a folder of images" : "folder not found");
        }
        var found = new List<string>();
        Walk(folder);
        return found;

        void Walk(string dir)
        {
            string[] entries;
            try
            {
                entries = Directory.GetFileSystemEntries(dir).Select(e => Path.GetFileName(e)).ToArray();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw DiffSegException.For(dir, $"cannot list the folder ({e.Message.TrimEnd('.')})");
            }
            Array.Sort(entries, PythonOrder.Instance);
            foreach (var name in entries)
            {
                string path = Path.Combine(dir, name);
                if (Directory.Exists(path))
                {
                    Walk(path);
                }
                else if (name.Contains('.') && Extensions.Contains(name[(name.LastIndexOf('.') + 1)..].ToLowerInvariant()))
                {
                    found.Add(path);
                }
            }
        }
    }

    /// <summary>
    /// load_data's class_cond labels: a file's class is its name up to the first '_' (the whole name, extension
    /// included, when it has none); classes are numbered in sorted order of their names.
    /// </summary>
    public static (string[] Names, int[] Ids) ClassesOf(IReadOnlyList<string> files)
    {
        var names = files.Select(f => Path.GetFileName(f).Split('_')[0]).ToArray();
        var sorted = names.Distinct().Order(PythonOrder.Instance).ToArray();
        var id = sorted.Select((n, i) => (n, i)).ToDictionary(p => p.n, p => p.i, StringComparer.Ordinal);
        return (sorted, names.Select(n => id[n]).ToArray());
    }

    /// <summary>
    /// <c>Image.open(f).convert("RGB")</c>: the file's pixels as (height, width, 3) bytes. PNG and GIF pixels equal
    /// PIL's (ImageDatasetPilParityTests, every PNG colour type and depth); JPEG pixels differ (another IDCT and
    /// chroma upsampling than libjpeg's, measured there). A missing, unreadable or corrupt file is a
    /// <see cref="DiffSegException"/> naming it.
    /// </summary>
    public static byte[] DecodeRgb(string path, out int width, out int height)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw DiffSegException.For(path, e is FileNotFoundException ? "file not found" : $"cannot read ({e.Message.TrimEnd('.')})");
        }
        try
        {
            if (bytes.Length > 2 && bytes[0] == 0xFF && bytes[1] == 0xD8 && !JpegIsComplete(bytes))
            {
                // ImageSharp decodes what there is and leaves the rest grey; PIL refuses ("image file is truncated").
                throw DiffSegException.For(path, "truncated JPEG (the data ends before its end-of-image marker)");
            }
            return PngDepth(bytes) == 16 ? DecodePng16(bytes, out width, out height)
                : IsGif(bytes) ? DecodeGif(bytes, out width, out height)
                : Decode8(bytes, out width, out height);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // ImageSharp reports unknown formats and bad content with its own exceptions, but a damaged file can make a
            // decoder (or GifFirstFrame) fail in other ways too; all of them are the file's problem.
            throw DiffSegException.For(path, e is UnknownImageFormatException
                ? "not a PNG, JPEG or GIF image"
                : $"corrupt image ({e.Message.TrimEnd('.')})");
        }
    }

    /// <summary>
    /// Whether the JPEG's markers run to its end-of-image marker: segments after SOI carry their length, each scan's
    /// entropy-coded data ends at the first 0xFF not followed by 0x00 (a stuffed byte) or a restart marker.
    /// </summary>
    static bool JpegIsComplete(byte[] b)
    {
        int at = 2;
        while (at + 1 < b.Length)
        {
            if (b[at] != 0xFF)
            {
                return false;
            }
            int marker = b[at + 1];
            if (marker == 0xFF)
            {
                at++; // fill byte
                continue;
            }
            if (marker == 0xD9)
            {
                return true;
            }
            if (at + 3 >= b.Length)
            {
                return false;
            }
            at += 2 + (b[at + 2] << 8 | b[at + 3]);
            if (marker == 0xDA)
            {
                while (at + 1 < b.Length && !(b[at] == 0xFF && b[at + 1] != 0 && (b[at + 1] < 0xD0 || b[at + 1] > 0xD7)))
                {
                    at++;
                }
            }
        }
        return false;
    }

    static byte[] Decode8(byte[] bytes, out int width, out int height)
    {
        // 8-bit PNG of any colour type: PIL's convert("RGB") replicates gray, drops alpha (no compositing) and looks
        // palette entries up, as ImageSharp's conversion to Rgb24 does.
        using var image = Image.Load<Rgb24>(bytes);
        (width, height) = (image.Width, image.Height);
        var rgb = new byte[width * height * 3];
        image.CopyPixelDataTo(rgb);
        return rgb;
    }

    /// <summary>The PNG's bit depth from its IHDR chunk, 0 if the bytes are not a PNG.</summary>
    static int PngDepth(byte[] b) => b.Length > 25 && b[0] == 0x89 && b[1] == (byte)'P' && b[12] == (byte)'I' ? b[24] : 0;

    /// <summary>
    /// 16-bit PNGs as PIL 9.4 reads them: grayscale (colour type 0) opens as mode "I" holding the 16-bit value, which
    /// convert("RGB") clips to 0..255; every other colour type keeps the high byte of each sample. ImageSharp would
    /// scale 16 bits to 8 by rounding instead, so the pixels are read at 16 bits and mapped here.
    /// </summary>
    static byte[] DecodePng16(byte[] bytes, out int width, out int height)
    {
        bool clip = bytes[25] == 0;
        using var image = Image.Load<Rgba64>(bytes);
        (width, height) = (image.Width, image.Height);
        var wide = new Rgba64[width * height];
        image.CopyPixelDataTo(wide);
        var rgb = new byte[width * height * 3];
        for (int i = 0; i < wide.Length; i++)
        {
            rgb[3 * i] = clip ? (byte)Math.Min(wide[i].R, (ushort)255) : (byte)(wide[i].R >> 8);
            rgb[3 * i + 1] = clip ? (byte)Math.Min(wide[i].G, (ushort)255) : (byte)(wide[i].G >> 8);
            rgb[3 * i + 2] = clip ? (byte)Math.Min(wide[i].B, (ushort)255) : (byte)(wide[i].B >> 8);
        }
        return rgb;
    }

    static bool IsGif(byte[] b) => b.Length > 13 && b[0] == (byte)'G' && b[1] == (byte)'I' && b[2] == (byte)'F';

    /// <summary>
    /// The first frame of a GIF as PIL 9.4 reads it: palette colours, and where ImageSharp leaves pixels transparent
    /// (the frame's transparent index) or black (the screen outside a frame smaller than it), the colour PIL fills them
    /// with: the palette entry of the transparent index, or of index 0 when there is none.
    /// </summary>
    static byte[] DecodeGif(byte[] bytes, out int width, out int height)
    {
        using var image = Image.Load<Rgba32>(bytes);
        (width, height) = (image.Width, image.Height);
        var (fill, frame) = GifFirstFrame(bytes);
        var rgba = new Rgba32[width * height];
        image.CopyPixelDataTo(rgba);
        var rgb = new byte[width * height * 3];
        for (int i = 0; i < rgba.Length; i++)
        {
            int x = i % width, y = i / width;
            bool inFrame = x >= frame.X && x < frame.Right && y >= frame.Y && y < frame.Bottom;
            var p = !inFrame || rgba[i].A == 0 ? fill : rgba[i];
            (rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]) = (p.R, p.G, p.B);
        }
        return rgb;
    }

    /// <summary>
    /// Reads the GIF's blocks up to its first image: the logical screen's global colour table, the graphic control
    /// extension's transparent index, the image's place on the screen and local colour table (which replaces the global
    /// one for the frame). Returns the fill colour and the frame.
    /// </summary>
    static (Rgba32 Fill, Rectangle Frame) GifFirstFrame(byte[] b)
    {
        int at = 13;
        int? transparent = null;
        int globalTable = (b[10] & 0x80) != 0 ? at : -1, globalSize = 2 << (b[10] & 7);
        at += globalTable >= 0 ? 3 * globalSize : 0;
        while (b[at] == 0x21)
        {
            if (b[at + 1] == 0xF9 && (b[at + 3] & 1) != 0)
            {
                transparent = b[at + 6];
            }
            at += 2;
            while (b[at] != 0)
            {
                at += b[at] + 1;
            }
            at++;
        }
        if (b[at] != 0x2C)
        {
            throw new InvalidDataException("no image descriptor after the GIF's extensions");
        }
        var frame = new Rectangle(b[at + 1] | b[at + 2] << 8, b[at + 3] | b[at + 4] << 8, b[at + 5] | b[at + 6] << 8,
                                  b[at + 7] | b[at + 8] << 8);
        int packed = b[at + 9];
        (int table, int size) = (packed & 0x80) != 0 ? (at + 10, 2 << (packed & 7)) : (globalTable, globalSize);
        int index = transparent ?? 0;
        var fill = table >= 0 && index < size ? new Rgba32(b[table + 3 * index], b[table + 3 * index + 1], b[table + 3 * index + 2])
                                              : new Rgba32(0, 0, 0);
        return (fill, frame);
    }

    /// <summary>
    /// center_crop_arr: while the short side is at least 2·size, halve both sides (floor) with PIL's BOX filter; then
    /// scale by size / short side (each side rounded half to even, as Python's round) with PIL's BICUBIC; then crop the
    /// centre size² (offsets floored). Input and output are (height, width, 3) bytes.
    /// </summary>
    public static byte[] CenterCrop(byte[] rgb, int width, int height, int size)
    {
        while (Math.Min(width, height) >= 2 * size)
        {
            rgb = PilResample.Resize(rgb, width, height, width / 2, height / 2, PilFilter.Box);
            (width, height) = (width / 2, height / 2);
        }
        double scale = (double)size / Math.Min(width, height);
        int w = (int)Math.Round(width * scale, MidpointRounding.ToEven), h = (int)Math.Round(height * scale, MidpointRounding.ToEven);
        if (w != width || h != height)
        {
            rgb = PilResample.Resize(rgb, width, height, w, h, PilFilter.Bicubic);
        }
        int top = (h - size) / 2, left = (w - size) / 2;
        var crop = new byte[size * size * 3];
        for (int y = 0; y < size; y++)
        {
            rgb.AsSpan(((top + y) * w + left) * 3, size * 3).CopyTo(crop.AsSpan(y * size * 3));
        }
        return crop;
    }

    /// <summary>
    /// (size, size, 3) bytes → (3, size, size) float32 x / 127.5 − 1 (numpy's float32 arithmetic: the same floats),
    /// mirrored left–right when <paramref name="flip"/>.
    /// </summary>
    public static void ToTensor(ReadOnlySpan<byte> hwc, int size, bool flip, Span<float> chw)
    {
        int plane = size * size;
        for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++)
        {
            int src = (y * size + (flip ? size - 1 - x : x)) * 3, dst = y * size + x;
            for (int c = 0; c < 3; c++)
            {
                chw[c * plane + dst] = hwc[src + c] / 127.5f - 1f;
            }
        }
    }

    /// <summary>One file as a training image: (3, size, size) float32 in [−1, 1].</summary>
    public static float[] LoadImage(string path, int size, bool flip = false)
    {
        var crop = CenterCrop(DecodeRgb(path, out int w, out int h), w, h, size);
        var x = new float[3 * size * size];
        ToTensor(crop, size, flip, x);
        return x;
    }
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
