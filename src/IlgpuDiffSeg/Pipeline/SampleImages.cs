using IlgpuDiffSeg.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>Samples as guided-diffusion's scripts save them, and as a picture.</summary>
public static class SampleImages
{
    /// <summary>
    /// image_sample.py's conversion: ((x + 1)·127.5).clamp(0, 255) in fp32, truncated to uint8, channels last. x is
    /// (N, 3, H, W); the result (N, H, W, 3). NaN becomes 0.
    /// </summary>
    public static byte[] ToUint8Nhwc(ReadOnlySpan<float> x, int n, int height, int width)
    {
        int plane = height * width;
        var bytes = new byte[n * plane * 3];
        for (int b = 0; b < n; b++)
        for (int c = 0; c < 3; c++)
        for (int p = 0; p < plane; p++)
        {
            float v = (x[(b * 3 + c) * plane + p] + 1f) * 127.5f;
            v = float.IsNaN(v) ? 0f : Math.Clamp(v, 0f, 255f);
            bytes[(b * plane + p) * 3 + c] = (byte)v;
        }
        return bytes;
    }

    /// <summary>Up to <paramref name="max"/> images of an (N, H, W, 3) uint8 array in a near-square grid, 2-pixel gaps.</summary>
    public static void SaveGrid(string path, byte[] nhwc, int n, int height, int width, int max = 64)
    {
        int shown = Math.Min(n, max), columns = (int)Math.Ceiling(Math.Sqrt(shown)), rows = (shown + columns - 1) / columns;
        const int Gap = 2;
        using var img = new Image<Rgb24>(columns * (width + Gap) + Gap, rows * (height + Gap) + Gap, new Rgb24(255, 255, 255));
        for (int i = 0; i < shown; i++)
        {
            int x0 = Gap + i % columns * (width + Gap), y0 = Gap + i / columns * (height + Gap);
            for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                int o = ((i * height + y) * width + x) * 3;
                img[x0 + x, y0 + y] = new Rgb24(nhwc[o], nhwc[o + 1], nhwc[o + 2]);
            }
        }
        AtomicFile.Write(path, s => img.SaveAsPng(s));
    }

    /// <summary>The PNG written beside an .npz: same folder and stem.</summary>
    public static string GridPathFor(string npzPath) => Path.ChangeExtension(npzPath, ".png");

    /// <summary>Random class labels in [0, <paramref name="classes"/>): label i depends only on the seed and i (SplitMix64).</summary>
    public static long[] RandomLabels(int seed, int first, int n, int classes)
    {
        var labels = new long[n];
        for (int i = 0; i < n; i++)
        {
            ulong z = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL + (ulong)(first + i) + 0x632BE59BD9B4E019UL);
            z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
            z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
            z ^= z >> 31;
            labels[i] = (long)(z % (ulong)classes);
        }
        return labels;
    }
}
