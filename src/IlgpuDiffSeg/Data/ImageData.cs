using IlgpuDiffSeg.IO;
using SixLabors.ImageSharp;
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
        if (!Directory.Exists(folder))
        {
            throw DiffSegException.For(folder, "folder not found");
        }
        var found = new List<string>();
        Walk(folder, found);
        found.Sort(StringComparer.Ordinal);
        return found;

        static void Walk(string dir, List<string> into)
        {
            foreach (var entry in Directory.EnumerateFileSystemEntries(dir).OrderBy(e => e, StringComparer.Ordinal))
            {
                string name = Path.GetFileName(entry);
                string ext = name.Contains('.') ? name[(name.LastIndexOf('.') + 1)..].ToLowerInvariant() : "";
                if (name.Contains('.') && ImageExtensions.Contains(ext) && !IsMaskName(name) && File.Exists(entry))
                {
                    into.Add(entry);
                }
                else if (Directory.Exists(entry))
                {
                    Walk(entry, into);
                }
            }
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

    static float[] Load(string path, int? targetSize, bool requireSquare, out int[] originalSize)
    {
        if (path.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            var a = Npy.Read(path);
            Npy.CheckShape(path, a, [3, -1, -1]);
            if (targetSize is { } s && (a.Shape[1] != s || a.Shape[2] != s))
            {
                throw DiffSegException.For(path, $"shape is {a.ShapeString}, expected (3, {s}, {s})");
            }
            originalSize = [a.Shape[1], a.Shape[2]];
            return a.ToFloat32(path);
        }
        Image<Rgb24> image;
        try
        {
            image = Image.Load<Rgb24>(path);
        }
        catch (Exception e) when (e is UnknownImageFormatException or InvalidImageContentException or NotSupportedException)
        {
            throw DiffSegException.For(path, $"unreadable image ({e.Message.TrimEnd('.')})");
        }
        catch (FileNotFoundException)
        {
            throw DiffSegException.For(path, "file not found");
        }
        using (image)
        {
            if (requireSquare && image.Width != image.Height)
            {
                throw DiffSegException.For(path, $"is {image.Width}×{image.Height}; only square images are supported");
            }
            originalSize = [image.Height, image.Width];
            if (targetSize is { } s && image.Width != s)
            {
                image.Mutate(c => c.Resize(s, s, KnownResamplers.Triangle));
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
    }

    /// <summary>Height and width of an image file without decoding it (the shape for a .npy).</summary>
    public static int[] ImageSize(string path)
    {
        if (path.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            var a = Npy.Read(path);
            Npy.CheckShape(path, a, [3, -1, -1]);
            return [a.Shape[1], a.Shape[2]];
        }
        IImageInfo? info;
        try
        {
            info = Image.Identify(path);
        }
        catch (Exception e) when (e is InvalidImageContentException or NotSupportedException or UnknownImageFormatException)
        {
            info = null;
        }
        if (info is null)
        {
            throw DiffSegException.For(path, "unreadable image (not a PNG, JPEG or GIF)");
        }
        return [info.Height, info.Width];
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
    /// A label mask (.npy of integers, or an 8-bit grayscale PNG whose values are class ids) as (size·size) bytes,
    /// resized by nearest neighbour like cv2.INTER_NEAREST. Values must be class ids below
    /// <paramref name="classes"/> or the ignore label; the mask must be as large as its image.
    /// </summary>
    public static byte[] LoadMask(string path, int[] imageSize, int size, int classes, int ignoreLabel)
    {
        int h, w;
        byte[] values;
        if (path.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            var a = Npy.Read(path);
            if (a.Shape.Length != 2)
            {
                throw DiffSegException.For(path, $"mask shape is {a.ShapeString}, expected (H, W)");
            }
            (h, w) = (a.Shape[0], a.Shape[1]);
            var ints = a.ToInt64(path);
            values = new byte[ints.Length];
            for (int i = 0; i < ints.Length; i++)
            {
                if (ints[i] < 0 || ints[i] > 255)
                {
                    throw DiffSegException.For(path, $"mask value {ints[i]} does not fit in uint8");
                }
                values[i] = (byte)ints[i];
            }
        }
        else
        {
            try
            {
                using var image = Image.Load<Rgb24>(path);
                (h, w) = (image.Height, image.Width);
                values = new byte[h * w];
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
            catch (Exception e) when (e is UnknownImageFormatException or InvalidImageContentException)
            {
                throw DiffSegException.For(path, $"unreadable mask ({e.Message.TrimEnd('.')})");
            }
        }
        if (h != imageSize[0] || w != imageSize[1])
        {
            throw DiffSegException.For(path, $"mask is {w}×{h} but its image is {imageSize[1]}×{imageSize[0]}");
        }
        for (int i = 0; i < values.Length; i++)
        {
            if (values[i] >= classes && values[i] != ignoreLabel)
            {
                throw DiffSegException.For(path, $"mask value {values[i]} at pixel ({i % w}, {i / w}) is not a class id below " +
                                                 $"number_class {classes} nor the ignore_label {ignoreLabel}");
            }
        }
        return h == size && w == size ? values : ResizeNearest(values, h, w, size);
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
