// ImageData: checking and loading label masks, resizing them, and removing small annotations.

using IlgpuDiffSeg.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.PixelFormats;

namespace IlgpuDiffSeg.Data;

public static partial class ImageData
{
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
