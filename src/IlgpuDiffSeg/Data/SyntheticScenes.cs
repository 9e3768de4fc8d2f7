using IlgpuDiffSeg.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace IlgpuDiffSeg.Data;

/// <summary>
/// A procedural labelled data set in ddpm-segmentation's layout (image + same-stem .npy mask): scenes of textured shapes
/// over a textured background. Classes: 0 background (noisy diagonal stripes), 1 disc (warm, horizontal stripes),
/// 2 square (cool, checkerboard), 3 triangle (green, dots), 4 ring (purple, smooth). Hue, brightness and texture phase are
/// jittered per object, so colour alone does not separate the classes and texture and shape must help.
/// </summary>
public static class SyntheticScenes
{
    public const int Classes = 5;
    public static readonly string[] ClassNames = ["background", "disc", "square", "triangle", "ring"];

    public static void Write(string folder, int count, int size, int seed, Action<string>? log = null)
    {
        Directory.CreateDirectory(folder);
        for (int i = 0; i < count; i++)
        {
            var (rgb, mask) = Render(size, unchecked(seed * 7919 + i));
            string stem = Path.Combine(folder, $"scene_{i:D3}");
            using var img = new Image<Rgb24>(size, size);
            for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
            {
                int p = (y * size + x) * 3;
                img[x, y] = new Rgb24(rgb[p], rgb[p + 1], rgb[p + 2]);
            }
            AtomicFile.Write(stem + ".png", s => img.SaveAsPng(s));
            Npy.Write(stem + ".npy", mask, [size, size]);
        }
        log?.Invoke($"wrote {count} scenes of {size}×{size} to {folder}");
    }

    /// <summary>One scene: RGB bytes (H, W, 3) and the class mask (H, W).</summary>
    public static (byte[] Rgb, byte[] Mask) Render(int size, int seed)
    {
        var rng = new Random(seed);
        var rgb = new byte[size * size * 3];
        var mask = new byte[size * size];
        double phase = rng.NextDouble() * 6.28;
        for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++)
        {
            double stripe = 0.5 + 0.5 * Math.Sin((x + y) * 0.9 + phase);
            double n = rng.NextDouble() * 0.25;
            Put(rgb, size, x, y, 0.45 + 0.2 * stripe + n, 0.42 + 0.15 * stripe + n, 0.38 + 0.1 * stripe + n);
        }
        int objects = 2 + rng.Next(3);
        for (int o = 0; o < objects; o++)
        {
            int cls = 1 + rng.Next(Classes - 1);
            double cx = rng.NextDouble() * size, cy = rng.NextDouble() * size;
            double r = size * (0.12 + rng.NextDouble() * 0.14);
            double hue = rng.NextDouble() * 0.15 - 0.075, gain = 0.8 + rng.NextDouble() * 0.4, tp = rng.NextDouble() * 6.28;
            for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
            {
                double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
                bool inside = cls switch
                {
                    1 => dx * dx + dy * dy < r * r,
                    2 => Math.Abs(dx) < r * 0.85 && Math.Abs(dy) < r * 0.85,
                    3 => dy < r * 0.7 && dy > -r && Math.Abs(dx) < (dy + r) * 0.6,
                    _ => dx * dx + dy * dy < r * r && dx * dx + dy * dy > r * r * 0.36,
                };
                if (!inside)
                {
                    continue;
                }
                mask[y * size + x] = (byte)cls;
                double t = cls switch
                {
                    1 => 0.5 + 0.5 * Math.Sin(y * 1.6 + tp),
                    2 => ((x / 3) + (y / 3)) % 2,
                    3 => Math.Sin(x * 1.3 + tp) * Math.Sin(y * 1.3) > 0.3 ? 1 : 0,
                    _ => 0.5,
                };
                var (cr, cg, cb) = cls switch
                {
                    1 => (0.85, 0.35, 0.25),
                    2 => (0.25, 0.45, 0.85),
                    3 => (0.3, 0.75, 0.3),
                    _ => (0.6, 0.3, 0.7),
                };
                double shade = gain * (0.75 + 0.35 * t);
                Put(rgb, size, x, y, (cr + hue) * shade, cg * shade, (cb - hue) * shade);
            }
        }
        return (rgb, mask);
    }

    static void Put(byte[] rgb, int size, int x, int y, double r, double g, double b)
    {
        int p = (y * size + x) * 3;
        rgb[p] = (byte)Math.Clamp(r * 255, 0, 255);
        rgb[p + 1] = (byte)Math.Clamp(g * 255, 0, 255);
        rgb[p + 2] = (byte)Math.Clamp(b * 255, 0, 255);
    }
}
