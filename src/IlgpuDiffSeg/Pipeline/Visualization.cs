using IlgpuDiffSeg.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>Label maps as pictures: a fixed palette per class id, and the same blended over the image.</summary>
public static class Visualization
{
    /// <summary>The PASCAL VOC colour map (bits of the class id spread over R, G, B), so class 0 is black.</summary>
    public static Rgb24 Colour(int c)
    {
        int r = 0, g = 0, b = 0;
        for (int shift = 7; shift >= 0; shift--, c >>= 3)
        {
            r |= (c & 1) << shift;
            g |= ((c >> 1) & 1) << shift;
            b |= ((c >> 2) & 1) << shift;
        }
        return new Rgb24((byte)r, (byte)g, (byte)b);
    }

    public static void SaveLabels(string path, int[] labels, int size) =>
        Save(path, size, (x, y) => Colour(labels[y * size + x]));

    /// <summary>Half image, half class colour; <paramref name="image"/> is (3, S, S) in [-1, 1].</summary>
    public static void SaveOverlay(string path, float[] image, int[] labels, int size)
    {
        int plane = size * size;
        byte Channel(int ch, int i) => (byte)Math.Clamp((image[ch * plane + i] + 1f) * 127.5f + 0.5f, 0, 255);
        Save(path, size, (x, y) =>
        {
            int i = y * size + x;
            var c = Colour(labels[i]);
            return new Rgb24((byte)((Channel(0, i) + c.R) / 2), (byte)((Channel(1, i) + c.G) / 2), (byte)((Channel(2, i) + c.B) / 2));
        });
    }

    static void Save(string path, int size, Func<int, int, Rgb24> pixel)
    {
        using var img = new Image<Rgb24>(size, size);
        for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++)
        {
            img[x, y] = pixel(x, y);
        }
        AtomicFile.Write(path, s => img.SaveAsPng(s));
    }
}
