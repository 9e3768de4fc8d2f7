using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Tests.Data;

/// <summary>
/// The demo's scenes: the class is the shape, never the colour or the texture; the unlabelled stream is the same
/// distribution as the written scenes, reproducible from its seed and position.
/// </summary>
public sealed class SyntheticScenesTests(ITestOutputHelper log)
{
    [Fact]
    public void WrittenScenesAreDdpmSegmentationPairs()
    {
        using var tmp = new TempDir();
        SyntheticScenes.Write(tmp.File("s"), 3, 32, seed: 4);
        Assert.Equal(["scene_000.png", "scene_001.png", "scene_002.png"],
                     ImageData.ListImages(tmp.File("s")).Select(Path.GetFileName));
        for (int i = 0; i < 3; i++)
        {
            var (rgb, mask) = SyntheticScenes.Render(32, 4 * 7919 + i);
            var stem = tmp.File($"s/scene_{i:D3}");
            Assert.Equal(mask, Npy.Read(stem + ".npy").Data);
            var x = new float[3 * 32 * 32];
            ImageDataset.ToTensor(rgb, 32, false, x);
            Assert.Equal(x, ImageDataset.LoadImage(stem + ".png", 32)); // the PNG holds exactly the rendered pixels
        }
    }

    [Fact]
    public void EveryClassShownCoversAtLeastTwentyPixels()
    {
        // ddpm-segmentation would relabel smaller classes as ignored; the scenes never need it, so the labelled pixel
        // count (and iterations per epoch) of a set of scenes is size² × count.
        var seen = new int[SyntheticScenes.Classes];
        for (int seed = 0; seed < 200; seed++)
        {
            var (_, mask) = SyntheticScenes.Render(32, seed);
            var counts = new int[SyntheticScenes.Classes];
            foreach (var c in mask)
            {
                counts[c]++;
            }
            Assert.All(counts, n => Assert.True(n == 0 || n >= SyntheticScenes.MinClassPixels, $"seed {seed}: {string.Join(",", counts)}"));
            for (int c = 0; c < counts.Length; c++)
            {
                seen[c] += counts[c] > 0 ? 1 : 0;
            }
        }
        Assert.All(seen, n => Assert.True(n > 50, $"scenes showing each class: {string.Join(", ", seen)}"));
    }

    /// <summary>
    /// Colour gives the class away no more: over 1,200 scenes (~900 objects a class), the mean colour and the mean local
    /// contrast (|difference to the right-hand neighbour|, a texture statistic) of each object class are within 0.05 of
    /// each other in 0..1 units (sampling spread: each object's colour is one draw, the means' standard error is
    /// ~0.01; the old scenes' class colours were 0.3–0.6 apart), and the background's within 0.05 of theirs.
    /// </summary>
    [Fact]
    public void ColourAndTextureAreIndependentOfTheClass()
    {
        const int size = 24, classes = SyntheticScenes.Classes;
        var sum = new double[classes, 4];
        var n = new long[classes];
        for (int seed = 0; seed < 1200; seed++)
        {
            var (rgb, mask) = SyntheticScenes.Render(size, 1000 + seed);
            for (int y = 0; y < size; y++)
            for (int x = 0; x + 1 < size; x++)
            {
                int i = y * size + x, c = mask[i];
                if (mask[i + 1] != c)
                {
                    continue;
                }
                n[c]++;
                for (int ch = 0; ch < 3; ch++)
                {
                    sum[c, ch] += rgb[3 * i + ch] / 255.0;
                    sum[c, 3] += Math.Abs(rgb[3 * i + ch] - rgb[3 * i + 3 + ch]) / 255.0 / 3;
                }
            }
        }
        var stats = Enumerable.Range(0, classes).Select(c => Enumerable.Range(0, 4).Select(k => sum[c, k] / n[c]).ToArray()).ToArray();
        for (int c = 0; c < classes; c++)
        {
            log.WriteLine($"{SyntheticScenes.ClassNames[c],-10} mean RGB {stats[c][0]:F3} {stats[c][1]:F3} {stats[c][2]:F3}, " +
                          $"local contrast {stats[c][3]:F3}");
        }
        for (int k = 0; k < 4; k++)
        {
            var objects = Enumerable.Range(1, classes - 1).Select(c => stats[c][k]).ToArray();
            Assert.InRange(objects.Max() - objects.Min(), 0, 0.05);
            Assert.InRange(Math.Abs(stats[0][k] - objects.Average()), 0, 0.05);
        }
    }

    [Fact]
    public void UnlabelledStreamIsTheSameScenesReproducibly()
    {
        var a = new SyntheticScenes.UnlabelledStream(24, seed: 3);
        var batch = a.NextBatch(4).Concat(a.NextBatch(2)).ToArray();
        Assert.Equal(6 * 3 * 24 * 24, batch.Length);
        Assert.All(batch, v => Assert.InRange(v, -1f, 1f));
        for (int i = 0; i < 6; i++)
        {
            var (rgb, _) = SyntheticScenes.Render(24, SyntheticScenes.SeedOf(3, i));
            var x = new float[3 * 24 * 24];
            ImageDataset.ToTensor(rgb, 24, false, x);
            Assert.Equal(x, batch.AsSpan(i * x.Length, x.Length).ToArray());
        }
        var resumed = new SyntheticScenes.UnlabelledStream(24, seed: 3) { Position = 4 };
        Assert.Equal(batch.AsSpan(4 * 3 * 24 * 24).ToArray(), resumed.NextBatch(2));
        Assert.NotEqual(batch.AsSpan(0, 1728).ToArray(), new SyntheticScenes.UnlabelledStream(24, seed: 4).NextBatch(1));
        Assert.Equal(6, a.Position);
    }
}
