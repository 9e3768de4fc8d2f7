using IlgpuDiffSeg.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.Memory;
using SixLabors.ImageSharp.Metadata;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace IlgpuDiffSeg.Data;

/// <summary>Images and label masks as ddpm-segmentation reads them (docs/method.md, Data).</summary>
public static class ImageData
{
    static readonly string[] ImageExtensions = ["jpg", "jpeg", "png", "gif"];

    /// <summary>
    /// guided-diffusion's _list_image_files_recursively, then sorted: files with an image extension (any case), found
    /// in sorted order through sub-folders. PNG masks (<c>*_mask.png</c>) are not images.
    /// </summary>
    public static List<string> ListImages(string folder)
    {
        if (string.IsNullOrEmpty(folder) || !Directory.Exists(folder))
        {
            throw DiffSegException.For(folder, File.Exists(folder) ? "is a file, expected a folder of images" : "folder not found");
        }
        var found = new List<string>();
        var visited = new HashSet<string>(StringComparer.Ordinal);
        long entries = 0;
        Walk(folder, RealPath(folder, null), 0);
        found.Sort(StringComparer.Ordinal);
        return found;

        // Symbolic links to folders are followed, as the original's walk does, but each real folder is walked once (no
        // cycles), and the walk stops past MaxWalkEntries entries or MaxWalkDepth levels: a path such as /proc/self, whose
        // links lead to the whole file system, is refused instead of walked.
        void Walk(string dir, string real, int depth)
        {
            if (!visited.Add(real))
            {
                return;
            }
            if (depth > MaxWalkDepth)
            {
                throw DiffSegException.For(folder, $"has folders nested deeper than {MaxWalkDepth} levels ('{Shorten(dir)}'); point it at the image folder");
            }
            // Counted as they are listed, so a folder of millions of entries is refused before it is held.
            var children = new List<FileSystemInfo>();
            try
            {
                foreach (var child in new DirectoryInfo(dir).EnumerateFileSystemInfos())
                {
                    if (++entries > MaxWalkEntries)
                    {
                        throw DiffSegException.For(folder, $"holds more than {MaxWalkEntries:N0} files and folders; point it at the image folder");
                    }
                    children.Add(child);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw DiffSegException.For(folder, $"cannot list its folder '{Shorten(dir)}': {e.Message}");
            }
            children.Sort((a, b) => StringComparer.Ordinal.Compare(a.Name, b.Name));
            foreach (var child in children)
            {
                string name = child.Name;
                string entry = Path.Combine(dir, name);
                if (child is DirectoryInfo)
                {
                    string unlinked = real.TrimEnd('/') + "/" + name;
                    Walk(entry, child.LinkTarget is null ? unlinked : RealPath(entry, unlinked), depth + 1);
                    continue;
                }
                string ext = name.Contains('.') ? name[(name.LastIndexOf('.') + 1)..].ToLowerInvariant() : "";
                if (name.Contains('.') && ImageExtensions.Contains(ext) && !IsMaskName(name) && File.Exists(entry))
                {
                    found.Add(entry);
                }
            }
        }
    }

    static string Shorten(string s) => s.Length > 80 ? s[..40] + "…" + s[^39..] : s;

    [System.Runtime.InteropServices.DllImport("libc", CharSet = System.Runtime.InteropServices.CharSet.Ansi)]
    static extern IntPtr realpath(string path, IntPtr resolved);

    [System.Runtime.InteropServices.DllImport("libc")]
    static extern void free(IntPtr pointer);

    /// <summary>Folder walks stop past this many entries (ddpm-segmentation's data sets hold a few thousand).</summary>
    public const int MaxWalkEntries = 100_000;

    /// <summary>… and past this depth of sub-folders.</summary>
    public const int MaxWalkDepth = 32;

    /// <summary>
    /// A folder's identity for cycle detection: its canonical path (realpath(3), every link resolved) on Unix; elsewhere its
    /// link target when it is a link, else its parent's identity and its name.
    /// </summary>
    static string RealPath(string dir, string? unlinked)
    {
        if (!OperatingSystem.IsWindows())
        {
            IntPtr resolved = IntPtr.Zero;
            try
            {
                resolved = realpath(dir, IntPtr.Zero);
                if (resolved != IntPtr.Zero)
                {
                    return System.Runtime.InteropServices.Marshal.PtrToStringUTF8(resolved)!;
                }
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
            {
            }
            finally
            {
                if (resolved != IntPtr.Zero)
                {
                    free(resolved);
                }
            }
        }
        try
        {
            var info = new DirectoryInfo(dir);
            return (info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? unlinked ?? info.FullName).TrimEnd('/');
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Path.GetFullPath(dir);
        }
    }

    static bool IsMaskName(string name) => name.EndsWith("_mask.png", StringComparison.OrdinalIgnoreCase);

    /// <summary>The mask beside an image: <c>stem.npy</c> (the original's layout), else <c>stem_mask.png</c>; null if none.</summary>
    public static string? MaskPathFor(string imagePath)
    {
        string stem = Path.Combine(Path.GetDirectoryName(imagePath) ?? ".", Path.GetFileNameWithoutExtension(imagePath));
        foreach (var candidate in new[] { stem + ".npy", stem + "_mask.png" })
        {
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        return null;
    }

    /// <summary>
    /// An RGB image as (3, size, size) float32 in [-1, 1]: 2·ToTensor(x) − 1. Square images only, as the original
    /// asserts; other sizes are resized (bilinear) to <paramref name="size"/>. A .npy of shape (3, H, W) is taken as is.
    /// </summary>
    public static float[] LoadImage(string path, int size, out int[] originalSize) => Load(path, size, requireSquare: true, out originalSize);

    /// <summary>An image at its own size (H, W), for single-image commands: (3, H, W) floats in [-1, 1].</summary>
    public static float[] LoadImageAsIs(string path, out int[] size) => Load(path, null, requireSquare: false, out size);

    /// <summary>Images with more pixels than this are refused before decoding (8192², 64 Mpx: 192 MB as RGB).</summary>
    public const long MaxPixels = 1L << 26;

    /// <summary>
    /// ImageSharp as the readers use it: PNG, JPEG and GIF only (the formats the data layout names; TGA, which has no
    /// signature, would otherwise take any 16 bytes as a 2817×14014 picture), no single buffer past 1 GB, and only a GIF's
    /// first frame decoded (the original reads the first frame too).
    /// </summary>
    static readonly Configuration Decoding = CreateDecoding();

    static Configuration CreateDecoding()
    {
        var c = new Configuration(new PngConfigurationModule(), new SixLabors.ImageSharp.Formats.Jpeg.JpegConfigurationModule(),
            new GifConfigurationModule());
        c.MemoryAllocator = MemoryAllocator.Create(new MemoryAllocatorOptions { AllocationLimitMegabytes = 1024 });
        c.ImageFormatsManager.SetDecoder(GifFormat.Instance, new GifDecoder { DecodingMode = FrameDecodingMode.First });
        return c;
    }

    /// <summary>What an image file's header says, checked before its pixels are decoded.</summary>
    sealed record Probe(int Width, int Height, IImageFormat Format, ImageMetadata Metadata);

    static Probe ProbeImage(string path, string what)
    {
        using var stream = InputFile.OpenRead(path);
        var head = new byte[8];
        int got = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        if (got == 0)
        {
            throw DiffSegException.For(path, $"empty file, not an {what}");
        }
        stream.Position = 0;
        if (PngStructure.IsPng(head.AsSpan(0, got)))
        {
            PngStructure.Check(path, stream, MaxPixels);
            stream.Position = 0;
        }
        IImageInfo? info;
        IImageFormat? format;
        try
        {
            info = Image.Identify(Decoding, stream, out format);
        }
        catch (Exception e) when (e is not DiffSegException)
        {
            throw DiffSegException.For(path, $"unreadable {what} ({Describe(e)})");
        }
        if (info is null || format is null)
        {
            throw DiffSegException.For(path, $"unreadable {what} (not a PNG, JPEG or GIF)");
        }
        if (info.Width <= 0 || info.Height <= 0)
        {
            throw DiffSegException.For(path, $"{what} header says {info.Width}×{info.Height} pixels");
        }
        if ((long)info.Width * info.Height > MaxPixels)
        {
            throw DiffSegException.For(path, $"is {info.Width}×{info.Height}, {(long)info.Width * info.Height:N0} pixels: more than the " +
                                             $"{MaxPixels:N0} this reader decodes; resize it first");
        }
        return new Probe(info.Width, info.Height, format, info.Metadata);
    }

    static Image<TPixel> Decode<TPixel>(string path, string what) where TPixel : unmanaged, IPixel<TPixel>
    {
        using var stream = InputFile.OpenRead(path);
        try
        {
            return Image.Load<TPixel>(Decoding, stream);
        }
        catch (Exception e) when (e is not DiffSegException)
        {
            throw DiffSegException.For(path, $"unreadable {what} ({Describe(e)})");
        }
    }

    static string Describe(Exception e) => e is ImageFormatException or NotSupportedException or InvalidDataException
        ? e.Message.Split('\n')[0].TrimEnd('.')
        : $"{e.GetType().Name}: {e.Message.Split('\n')[0].TrimEnd('.')}";

    static float[] Load(string path, int? targetSize, bool requireSquare, out int[] originalSize)
    {
        if (path.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            var a = Npy.Read(path);
            Npy.CheckShape(path, a, [3, -1, -1]);
            if (a.Shape[1] == 0 || a.Shape[2] == 0)
            {
                throw DiffSegException.For(path, $"shape is {a.ShapeString}: an image needs at least one pixel");
            }
            if (requireSquare && a.Shape[1] != a.Shape[2])
            {
                throw DiffSegException.For(path, $"is {a.Shape[2]}×{a.Shape[1]}; only square images are supported");
            }
            if (targetSize is { } s && (a.Shape[1] != s || a.Shape[2] != s))
            {
                throw DiffSegException.For(path, $"shape is {a.ShapeString}, expected (3, {s}, {s})");
            }
            originalSize = [a.Shape[1], a.Shape[2]];
            var values = a.ToFloat32(path);
            Npy.RequireFinite(path, values, a.Shape);
            return values;
        }
        var probe = ProbeImage(path, "image");
        if (requireSquare && probe.Width != probe.Height)
        {
            throw DiffSegException.For(path, $"is {probe.Width}×{probe.Height}; only square images are supported");
        }
        using var image = Decode<Rgb24>(path, "image");
        if (image.Width != probe.Width || image.Height != probe.Height)
        {
            throw DiffSegException.For(path, $"decodes to {image.Width}×{image.Height} though its header says {probe.Width}×{probe.Height}");
        }
        originalSize = [image.Height, image.Width];
        if (targetSize is { } t && image.Width != t)
        {
            image.Mutate(c => c.Resize(t, t, KnownResamplers.Triangle));
        }
        int h = image.Height, w = image.Width, plane = h * w;
        var x = new float[3 * plane];
        image.ProcessPixelRows(rows =>
        {
            for (int y = 0; y < h; y++)
            {
                var row = rows.GetRowSpan(y);
                for (int i = 0; i < w; i++)
                {
                    // ToTensor then 2x − 1, rounded as PyTorch rounds it.
                    x[y * w + i] = 2f * (row[i].R / 255f) - 1f;
                    x[plane + y * w + i] = 2f * (row[i].G / 255f) - 1f;
                    x[2 * plane + y * w + i] = 2f * (row[i].B / 255f) - 1f;
                }
            }
        });
        return x;
    }

    /// <summary>Height and width of an image file without decoding it (the shape for a .npy), checked against the pixel limit.</summary>
    public static int[] ImageSize(string path)
    {
        if (path.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            var h = Npy.ReadHeader(path);
            Npy.CheckShape(path, h.Shape, [3, -1, -1]);
            if (h.Shape[1] == 0 || h.Shape[2] == 0)
            {
                throw DiffSegException.For(path, $"shape is {h.ShapeString}: an image needs at least one pixel");
            }
            return [h.Shape[1], h.Shape[2]];
        }
        var probe = ProbeImage(path, "image");
        return [probe.Height, probe.Width];
    }

    /// <summary>
    /// Checks an image and its mask before any long work starts: the image is readable and square, the mask as large
    /// and holding only class ids or the ignore label.
    /// </summary>
    public static void Validate(string imagePath, string maskPath, int classes, int ignoreLabel)
    {
        var size = ImageSize(imagePath);
        if (size[0] != size[1])
        {
            throw DiffSegException.For(imagePath, $"is {size[1]}×{size[0]}; only square images are supported");
        }
        LoadMask(maskPath, size, size[0], classes, ignoreLabel);
    }

    /// <summary>
    /// A label mask (.npy of integers, or a grayscale PNG — 8-bit, or 16-bit read at full depth — whose values are class
    /// ids) as (size·size) bytes, resized by nearest neighbour like cv2.INTER_NEAREST. Values must be class ids below
    /// <paramref name="classes"/> or the ignore label; the mask must be as large as its image.
    /// </summary>
    public static byte[] LoadMask(string path, int[] imageSize, int size, int classes, int ignoreLabel)
    {
        int h, w;
        long[] values;
        if (path.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            var a = Npy.Read(path);
            if (a.Shape.Length != 2)
            {
                throw DiffSegException.For(path, $"mask shape is {a.ShapeString}, expected (H, W)");
            }
            (h, w) = (a.Shape[0], a.Shape[1]);
            if (a.Type == NpyType.Bool)
            {
                throw DiffSegException.For(path, "mask is a bool array; store class ids as integers");
            }
            if (h != imageSize[0] || w != imageSize[1])
            {
                throw DiffSegException.For(path, $"mask is {w}×{h} but its image is {imageSize[1]}×{imageSize[0]}");
            }
            values = a.ToInt64(path);
        }
        else
        {
            var probe = ProbeImage(path, "mask");
            var png = probe.Format == PngFormat.Instance ? probe.Metadata.GetPngMetadata() : null;
            if (png is null)
            {
                throw DiffSegException.For(path, $"mask is a {probe.Format.Name} file; store class ids as an 8-bit grayscale PNG or .npy");
            }
            if (png.ColorType == PngColorType.Palette)
            {
                throw DiffSegException.For(path, "palette (indexed) PNG masks are not read; store class ids as 8-bit grayscale or .npy");
            }
            (h, w) = (probe.Height, probe.Width);
            if (h != imageSize[0] || w != imageSize[1])
            {
                throw DiffSegException.For(path, $"mask is {w}×{h} but its image is {imageSize[1]}×{imageSize[0]}");
            }
            values = new long[(long)h * w];
            if (png.BitDepth == PngBitDepth.Bit16)
            {
                // Read at full depth: ImageSharp would otherwise scale 16-bit values to 8 bits (258 → 1).
                if (png.ColorType is not (PngColorType.Grayscale or PngColorType.GrayscaleWithAlpha))
                {
                    throw DiffSegException.For(path, "16-bit colour PNG masks are not supported: store class ids as grayscale or .npy");
                }
                using var image = Decode<L16>(path, "mask");
                CheckDecodedSize(path, image, w, h);
                image.ProcessPixelRows(rows =>
                {
                    for (int y = 0; y < h; y++)
                    {
                        var row = rows.GetRowSpan(y);
                        for (int x = 0; x < w; x++)
                        {
                            values[y * w + x] = row[x].PackedValue;
                        }
                    }
                });
            }
            else
            {
                using var image = Decode<Rgb24>(path, "mask");
                CheckDecodedSize(path, image, w, h);
                bool gray = true;
                image.ProcessPixelRows(rows =>
                {
                    for (int y = 0; y < h; y++)
                    {
                        var row = rows.GetRowSpan(y);
                        for (int x = 0; x < w; x++)
                        {
                            gray &= row[x].R == row[x].G && row[x].G == row[x].B;
                            values[y * w + x] = row[x].R;
                        }
                    }
                });
                if (!gray)
                {
                    throw DiffSegException.For(path, "colour PNG masks are not supported: store class ids as 8-bit grayscale or .npy");
                }
            }
        }
        var bytes = new byte[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            long v = values[i];
            if ((v < 0 || v >= classes) && v != ignoreLabel)
            {
                throw DiffSegException.For(path, $"mask value {v} at pixel ({i % w}, {i / w}) is not a class id below " +
                                                 $"number_class {classes} nor the ignore_label {ignoreLabel}");
            }
            bytes[i] = (byte)v;
        }
        return h == size && w == size ? bytes : ResizeNearest(bytes, h, w, size);
    }

    static void CheckDecodedSize(string path, Image image, int w, int h)
    {
        if (image.Width != w || image.Height != h)
        {
            throw DiffSegException.For(path, $"decodes to {image.Width}×{image.Height} though its header says {w}×{h}");
        }
    }

    /// <summary>cv2.resize(..., INTER_NEAREST): source index floor(dst · in/out).</summary>
    static byte[] ResizeNearest(byte[] src, int h, int w, int size)
    {
        var dst = new byte[size * size];
        double sy = (double)h / size, sx = (double)w / size;
        for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++)
        {
            int yy = Math.Min((int)Math.Floor(y * sy), h - 1), xx = Math.Min((int)Math.Floor(x * sx), w - 1);
            dst[y * size + x] = src[yy * w + xx];
        }
        return dst;
    }

    /// <summary>
    /// The original's prepare_data clean-up: a class (other than the ignore label) covering 1–19 pixels of an image is
    /// relabelled as ignored. Returns how many classes were removed.
    /// </summary>
    public static int RemoveSmallAnnotations(byte[] mask, int classes, int ignoreLabel, int minPixels = 20)
    {
        var counts = new int[256];
        foreach (var v in mask)
        {
            counts[v]++;
        }
        int removed = 0;
        for (int c = 0; c < 256; c++)
        {
            if (c != ignoreLabel && counts[c] > 0 && counts[c] < minPixels)
            {
                for (int i = 0; i < mask.Length; i++)
                {
                    if (mask[i] == c)
                    {
                        mask[i] = (byte)ignoreLabel;
                    }
                }
                removed++;
            }
        }
        return removed;
    }
}
