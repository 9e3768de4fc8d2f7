// ImageData: loading images (PNG, JPEG, GIF or .npy) as float tensors, with the header checks made before decoding.

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

public static partial class ImageData
{
    /// <summary>
    /// An RGB image as (3, size, size) float32 in [-1, 1]: 2·ToTensor(x) − 1. Square images only, as the original
    /// asserts; other sizes are resized (bilinear) to <paramref name="size"/>. A .npy of shape (3, H, W) is taken as is.
    /// </summary>
    public static float[] LoadImage(string path, int size, out int[] originalSize) =>
        Load(path, size, requireSquare: true, out originalSize);

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
            throw DiffSegException.For(path, $"decodes to {image.Width}×{image.Height} though its header says " +
                                             $"{probe.Width}×{probe.Height}");
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
}
