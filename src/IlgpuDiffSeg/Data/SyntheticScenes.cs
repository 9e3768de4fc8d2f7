using IlgpuDiffSeg.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace IlgpuDiffSeg.Data;

/// <summary>
/// A procedural labelled data set in ddpm-segmentation's layout (image + same-stem .npy mask) where the class is told
/// by shape alone: 2–4 objects — 1 disc, 2 square, 3 triangle, 4 ring (0 is the background) — over a background, every
/// surface (background included) painted with a random pair of colours in a random texture (flat, stripes at any angle,
/// checkerboard, dots, noise, gradient) drawn independently of the class. Squares and triangles are turned at random,
/// sizes and ring widths vary, later objects hide earlier ones. No colour or texture statistic separates the classes,
/// so a pixel's class can only be read from the outline around it.
///
/// <see cref="UnlabelledStream"/> serves unlabelled scenes of the same distribution as float (3, S, S) images for a DDPM trainer.
/// </summary>
public static class SyntheticScenes
{
    public const int Classes = 5;
    public static readonly string[] ClassNames = ["background", "disc", "square", "triangle", "ring"];

    /// <summary>
    /// The smallest area a class may cover in a scene: ddpm-segmentation relabels classes under 20 pixels as ignored,
    /// so scenes with such slivers are drawn again (each scene's masks keep every label they show).
    /// </summary>
    public const int MinClassPixels = 20;

    /// <summary>Writes scene_000.png + scene_000.npy (uint8 class ids), … into <paramref name="folder"/>.</summary>
    public static void Write(string folder, int count, int size, int seed, Action<string>? log = null)
    {
        Directory.CreateDirectory(folder);
        for (int i = 0; i < count; i++)
        {
            var (rgb, mask) = Render(size, unchecked(seed * 7919 + i));
            string stem = Path.Combine(folder, $"scene_{i:D3}");
            using var img = Image.LoadPixelData<Rgb24>(rgb, size, size);
            AtomicFile.Write(stem + ".png", s => img.SaveAsPng(s));
            Npy.Write(stem + ".npy", mask, [size, size]);
        }
        log?.Invoke($"wrote {count} scenes of {size}×{size} to {folder}");
    }

    /// <summary>
    /// Unlabelled scenes for a diffusion trainer: scene i of the stream is <see cref="Render"/>(size, seed derived from
    /// (<paramref name="seed"/>, i)), as (3, size, size) float32 x / 127.5 − 1 — the values ImageDataset gives for the
    /// same scene written as a PNG. Endless, nothing touches the disk, and a batch depends only on the seed and its
    /// position, so a resumed trainer continues the same stream.
    /// </summary>
    public sealed class UnlabelledStream(int size, int seed)
    {
        /// <summary>The index of the next scene served.</summary>
        public long Position { get; set; }

        public int Size => size;

        /// <summary>The next <paramref name="count"/> scenes, (count, 3, size, size), rendered in parallel.</summary>
        public float[] NextBatch(int count)
        {
            int plane = 3 * size * size;
            var batch = new float[count * plane];
            long first = Position;
            Parallel.For(0, count, i =>
            {
                var (rgb, _) = Render(size, SeedOf(seed, first + i));
                ImageDataset.ToTensor(rgb, size, flip: false, batch.AsSpan(i * plane, plane));
            });
            Position += count;
            return batch;
        }
    }

    /// <summary>The <see cref="Render"/> seed of scene <paramref name="index"/> of the stream seeded <paramref name="seed"/>.</summary>
    public static int SeedOf(int seed, long index)
    {
        ulong z = unchecked(((ulong)(uint)seed << 40) ^ (ulong)index) + 0xD1B54A32D192ED03UL;
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return (int)((z ^ (z >> 31)) & int.MaxValue);
    }

    /// <summary>One scene: RGB bytes (H, W, 3) and the class mask (H, W).</summary>
    public static (byte[] Rgb, byte[] Mask) Render(int size, int seed)
    {
        var rng = new Random(seed);
        for (int attempt = 0; ; attempt++)
        {
            var scene = TryRender(size, rng);
            var counts = new int[Classes];
            foreach (var c in scene.Mask)
            {
                counts[c]++;
            }
            // (Images too small to show every class on 20 pixels take the first draw.)
            if (counts.All(n => n == 0 || n >= MinClassPixels) || attempt == 100)
            {
                return scene;
            }
        }
    }

    static (byte[] Rgb, byte[] Mask) TryRender(int size, Random rng)
    {
        var rgb = new byte[size * size * 3];
        var mask = new byte[size * size];
        var background = Surface.Draw(rng, size, avoid: null);
        for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++)
        {
            background.Paint(rgb, size, x, y, rng);
        }
        int objects = 2 + rng.Next(3);
        for (int o = 0; o < objects; o++)
        {
            int cls = 1 + rng.Next(Classes - 1);
            double cx = rng.NextDouble() * size, cy = rng.NextDouble() * size;
            double r = size * (0.12 + rng.NextDouble() * 0.14);
            double angle = rng.NextDouble() * 2 * Math.PI, cos = Math.Cos(angle), sin = Math.Sin(angle);
            double hole = 0.45 + rng.NextDouble() * 0.25;
            var surface = Surface.Draw(rng, size, avoid: background);
            for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
            {
                // Pixel centre in the object's frame: turned by the object's angle (discs and rings do not care).
                double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
                double u = cos * dx + sin * dy, v = -sin * dx + cos * dy;
                if (Inside(cls, u, v, r, hole))
                {
                    mask[y * size + x] = (byte)cls;
                    surface.Paint(rgb, size, x, y, rng);
                }
            }
        }
        return (rgb, mask);
    }

    /// <summary>
    /// The shapes, in the object's frame, sized so that each covers a comparable area for the same r: disc of radius
    /// r (area 3.1·r²), square of half-side 0.85·r (2.9·r²), equilateral triangle of inradius 0.7·r (2.5·r²), ring
    /// between hole·r and r (hole 0.45–0.7: 2.6–1.6·r²).
    /// </summary>
    static bool Inside(int cls, double u, double v, double r, double hole)
    {
        double d2 = u * u + v * v;
        switch (cls)
        {
            case 1:
                return d2 < r * r;
            case 2:
                return Math.Abs(u) < 0.85 * r && Math.Abs(v) < 0.85 * r;
            case 3:
                // Inside the three half-planes whose edges lie at the inradius, their normals 120° apart.
                double inradius = 0.7 * r;
                for (int k = 0; k < 3; k++)
                {
                    double a = k * 2 * Math.PI / 3;
                    if (u * Math.Cos(a) + v * Math.Sin(a) > inradius)
                    {
                        return false;
                    }
                }
                return true;
            default:
                return d2 < r * r && d2 > hole * hole * r * r;
        }
    }

    /// <summary>A painted surface: two colours mixed by a texture t(x, y) ∈ [0, 1], plus per-pixel grain.</summary>
    sealed class Surface
    {
        readonly double[] a = new double[3], b = new double[3];
        int texture;
        double period, phase, cos, sin, grain;

        public double[] Mean => [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2, (a[2] + b[2]) / 2];

        /// <summary>A random surface; with <paramref name="avoid"/>, its mean colour is kept visibly apart from that one's.</summary>
        public static Surface Draw(Random rng, int size, Surface? avoid)
        {
            var s = new Surface();
            for (int attempt = 0; ; attempt++)
            {
                RandomColour(rng, s.a);
                // The second colour: a random step from the first, from barely visible to strong contrast.
                double contrast = 0.1 + 0.5 * rng.NextDouble();
                for (int c = 0; c < 3; c++)
                {
                    s.b[c] = Math.Clamp(s.a[c] + contrast * (rng.NextDouble() * 2 - 1), 0, 1);
                }
                if (avoid is null || Distance(s.Mean, avoid.Mean) > 0.25 || attempt == 20)
                {
                    break;
                }
            }
            s.texture = rng.Next(6);
            s.period = 2.5 + rng.NextDouble() * Math.Max(2, size / 8.0);
            s.phase = rng.NextDouble() * 2 * Math.PI;
            double angle = rng.NextDouble() * Math.PI;
            (s.cos, s.sin) = (Math.Cos(angle), Math.Sin(angle));
            s.grain = rng.NextDouble() * 0.08;
            return s;
        }

        static void RandomColour(Random rng, double[] rgb)
        {
            // HSV with any hue, any saturation, value away from black: every colour is as likely on every class.
            double h = rng.NextDouble() * 6, sat = rng.NextDouble() * 0.9, val = 0.25 + rng.NextDouble() * 0.7;
            int i = (int)h;
            double f = h - i, p = val * (1 - sat), q = val * (1 - sat * f), t = val * (1 - sat * (1 - f));
            (rgb[0], rgb[1], rgb[2]) = i switch
            {
                0 => (val, t, p),
                1 => (q, val, p),
                2 => (p, val, t),
                3 => (p, q, val),
                4 => (t, p, val),
                _ => (val, p, q),
            };
        }

        static double Distance(double[] x, double[] y) =>
            Math.Sqrt((x[0] - y[0]) * (x[0] - y[0]) + (x[1] - y[1]) * (x[1] - y[1]) + (x[2] - y[2]) * (x[2] - y[2]));

        public void Paint(byte[] rgb, int size, int x, int y, Random rng)
        {
            double u = cos * x + sin * y, v = -sin * x + cos * y;
            double t = texture switch
            {
                0 => 0.5,                                                                     // flat
                1 => 0.5 + 0.5 * Math.Sin(2 * Math.PI * u / period + phase),                  // stripes
                2 => (Math.Floor(u / period * 2) + Math.Floor(v / period * 2)) % 2 == 0 ? 0 : 1, // checkerboard
                3 => Math.Sin(2 * Math.PI * u / period + phase) * Math.Sin(2 * Math.PI * v / period) > 0.4 ? 1 : 0, // dots
                4 => rng.NextDouble(),                                                        // noise
                _ => Math.Clamp(0.5 + (u - size / 2.0) / size, 0, 1),                         // gradient
            };
            double n = (rng.NextDouble() * 2 - 1) * grain;
            int p = (y * size + x) * 3;
            for (int c = 0; c < 3; c++)
            {
                rgb[p + c] = (byte)Math.Clamp(Math.Round(((1 - t) * a[c] + t * b[c] + n) * 255), 0, 255);
            }
        }
    }
}
