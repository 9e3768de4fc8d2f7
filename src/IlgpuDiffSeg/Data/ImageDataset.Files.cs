using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace IlgpuDiffSeg.Data;

/// <summary>The files and pixels of <see cref="ImageDataset"/>: listing as image_datasets.py lists, decoding as PIL decodes,
/// center_crop_arr, and the float tensor.</summary>
public sealed partial class ImageDataset
{
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
    /// <summary>
    /// Reads the first bytes of every file before the stream starts, so that a file that is no image at all (empty, text,
    /// an error page saved as .jpg, a dangling link) is refused at once, naming it, and not when the stream reaches it
    /// after hours of training. Damage past the signature is found when the file is decoded.
    /// </summary>
    static void ProbeSignatures(IReadOnlyList<string> files)
    {
        Span<byte> head = stackalloc byte[8];
        foreach (var path in files)
        {
            int n;
            try
            {
                using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1);
                n = s.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw DiffSegException.For(path, e is FileNotFoundException ? "file not found (a dangling link?)"
                    : $"cannot read ({e.Message.TrimEnd('.')})");
            }
            bool png = n == 8 && head.SequenceEqual((ReadOnlySpan<byte>)[0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
            bool jpeg = n >= 2 && head[0] == 0xFF && head[1] == 0xD8;
            bool gif = n >= 6 && head[..6].SequenceEqual("GIF87a"u8) || n >= 6 && head[..6].SequenceEqual("GIF89a"u8);
            if (!png && !jpeg && !gif)
            {
                throw DiffSegException.For(path, n == 0 ? "empty file, not an image" : "not a PNG, JPEG or GIF image");
            }
        }
    }

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
