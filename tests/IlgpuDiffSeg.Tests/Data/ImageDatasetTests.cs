using System.Diagnostics;
using IlgpuDiffSeg.Data;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace IlgpuDiffSeg.Tests.Data;

/// <summary>
/// ImageDataset as load_data: the listing and class labels of image_datasets.py, the seeded endless stream of shuffled
/// full batches with flips, resuming, sharding, bounded prefetch, and every bad input as a DiffSegException naming the
/// file. Pixel parity with PIL is ImageDatasetPilParityTests'.
/// </summary>
public sealed class ImageDatasetTests : IDisposable
{
    readonly TempDir tmp = new();

    public void Dispose() => tmp.Dispose();

    /// <summary>A 20×12 PNG whose red channel is <paramref name="tag"/> and green a left-to-right ramp (so a flip shows).</summary>
    static void WritePng(string path, int tag)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var img = new Image<Rgb24>(20, 12);
        for (int y = 0; y < 12; y++)
        for (int x = 0; x < 20; x++)
        {
            img[x, y] = new Rgb24((byte)tag, (byte)(x * 12), (byte)(y * 20));
        }
        img.SaveAsPng(path);
    }

    string Folder(int count, string prefix = "img")
    {
        string dir = tmp.File("data");
        for (int i = 0; i < count; i++)
        {
            WritePng(Path.Combine(dir, $"{prefix}_{i:D2}.png"), 10 + 20 * i);
        }
        return dir;
    }

    static ImageDatasetOptions Options(int batch = 3, int seed = 5) => new() { ImageSize = 8, BatchSize = batch, Seed = seed };

    static List<ImageBatch> Take(ImageDataset d, int n) => Enumerable.Range(0, n).Select(_ => d.NextBatch()).ToList();

    [Fact]
    public void ListingFollowsTheOriginalWalk()
    {
        // Python sorts each folder's entries by code point and searches folders in place: "a/…" before "a.png"
        // ("a" < "a.png"), and U+FF01 before U+1F600 (UTF-16 ordinal order would put the surrogate pair first).
        string[] names = ["b.png", "a.png", "a/x.png", "a/y.JPG", "A.gif", "_f.png", "c.jpeg.txt", "noext", "d.Jpeg",
                          "sub/deep/e.gif", "z.webp", "é.png", "\uFF01.png", "\U0001F600.png", "png"];
        foreach (var n in names)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(tmp.File("l/" + n))!);
            File.WriteAllBytes(tmp.File("l/" + n), []);
        }
        var listed = ImageDataset.ListImageFiles(tmp.File("l")).Select(p => Path.GetRelativePath(tmp.File("l"), p)).ToArray();
        Assert.Equal(["A.gif", "_f.png", "a/x.png", "a/y.JPG", "a.png", "b.png", "d.Jpeg", "sub/deep/e.gif", "é.png",
                      "\uFF01.png", "\U0001F600.png"], listed);
    }

    [Fact]
    public void ClassesAreFileNamePrefixesInSortedOrder()
    {
        var (names, ids) = ImageDataset.ClassesOf(["d/cat_1.png", "d/dog_x_2.png", "d/cat_3.png", "d/ant.png", "d/e/dog_4.png"]);
        Assert.Equal(["ant.png", "cat", "dog"], names);
        Assert.Equal([1, 2, 1, 0, 2], ids);
    }

    [Fact]
    public void StreamIsShuffledFullBatchesOfTheCroppedImages()
    {
        string dir = Folder(7);
        using var d = new ImageDataset(dir, Options());
        Assert.Equal(2, d.BatchesPerEpoch); // 7 images, batches of 3: the last image of each shuffle is dropped
        var batches = Take(d, 8);
        for (int e = 0; e < 4; e++)
        {
            var epoch = batches[2 * e].Indices.Concat(batches[2 * e + 1].Indices).ToArray();
            Assert.Equal(6, epoch.Distinct().Count());
            Assert.All(batches.GetRange(2 * e, 2), b => Assert.Equal(e, b.Epoch));
        }
        Assert.Equal(Enumerable.Range(0, 8).Select(i => (long)i), batches.Select(b => b.Number));
        Assert.NotEqual(batches[0].Indices.Concat(batches[1].Indices), batches[2].Indices.Concat(batches[3].Indices));
        int flips = batches.Sum(b => b.Flipped.Count(f => f));
        Assert.InRange(flips, 4, 20); // 24 fair coins
        foreach (var b in batches)
        {
            Assert.Equal(3 * 3 * 8 * 8, b.Images.Length);
            Assert.Null(b.Labels);
            for (int i = 0; i < 3; i++)
            {
                var expected = ImageDataset.LoadImage(d.Files[b.Indices[i]], 8, b.Flipped[i]);
                Assert.Equal(expected, b.Images.AsSpan(i * 192, 192).ToArray());
            }
        }
        // A flip mirrors the row: the green ramp runs the other way.
        var plain = ImageDataset.LoadImage(d.Files[0], 8);
        var mirrored = ImageDataset.LoadImage(d.Files[0], 8, flip: true);
        Assert.Equal(plain[64 + 0], mirrored[64 + 7]);
        Assert.True(plain[64 + 0] < plain[64 + 7]);
    }

    [Fact]
    public void TheSeedAloneDecidesTheStreamAndAResumedStreamContinuesIt()
    {
        string dir = Folder(7);
        using var a = new ImageDataset(dir, Options());
        using var b = new ImageDataset(dir, Options() with { Workers = 1, PrefetchBatches = 1 });
        using var resumed = new ImageDataset(dir, Options() with { FirstBatch = 5 });
        using var other = new ImageDataset(dir, Options(seed: 6));
        var first = Take(a, 8);
        var second = Take(b, 8);
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal(first[i].Indices, second[i].Indices);
            Assert.Equal(first[i].Flipped, second[i].Flipped);
            Assert.Equal(first[i].Images, second[i].Images);
        }
        var later = Take(resumed, 3);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(5 + i, later[i].Number);
            Assert.Equal(first[5 + i].Indices, later[i].Indices);
            Assert.Equal(first[5 + i].Flipped, later[i].Flipped);
        }
        Assert.NotEqual(first.SelectMany(x => x.Indices), Take(other, 8).SelectMany(x => x.Indices));
    }

    [Fact]
    public void DeterministicWithoutFlipServesTheListingInOrder()
    {
        string dir = Folder(7);
        using var d = new ImageDataset(dir, Options() with { Deterministic = true, RandomFlip = false });
        var batches = Take(d, 5);
        Assert.Equal([[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5], [0, 1, 2]], batches.Select(b => b.Indices));
        Assert.All(batches, b => Assert.DoesNotContain(true, b.Flipped));
    }

    [Fact]
    public void ClassCondLabelsAndShards()
    {
        string dir = tmp.File("data");
        string[] names = ["cat_a.png", "cat_b.png", "dog_a.png", "dog_b.png", "eel_a.png"];
        for (int i = 0; i < names.Length; i++)
        {
            WritePng(Path.Combine(dir, names[i]), i);
        }
        var o = Options(batch: 2) with { ClassCond = true, Deterministic = true, RandomFlip = false };
        using (var d = new ImageDataset(dir, o))
        {
            Assert.Equal(["cat", "dog", "eel"], d.ClassNames);
            Assert.Equal([0, 0, 1, 1, 2], d.Classes!);
            Assert.Equal([0L, 0L], d.NextBatch().Labels!);
            Assert.Equal([1L, 1L], d.NextBatch().Labels!);
        }
        // Shard 1 of 2 serves files 1 and 3 (the original's image_paths[shard:][::num_shards]), numbered over all files.
        using var shard = new ImageDataset(dir, o with { Shard = 1, NumShards = 2 });
        Assert.Equal(["cat_b.png", "dog_b.png"], shard.Files.Select(Path.GetFileName));
        Assert.Equal([0L, 1L], shard.NextBatch().Labels!);
    }

    [Fact]
    public void PrefetchIsBoundedAndDisposeStopsIt()
    {
        string dir = Folder(7);
        var d = new ImageDataset(dir, Options(batch: 1) with { PrefetchBatches = 2 });
        var clock = Stopwatch.StartNew();
        while (d.BatchesAssembled < 3 && clock.Elapsed < TimeSpan.FromSeconds(20))
        {
            Thread.Sleep(10);
        }
        Thread.Sleep(200);
        // Two waiting in the queue and one blocked handing itself over: nothing more is decoded until one is taken.
        Assert.Equal(3, d.BatchesAssembled);
        d.NextBatch();
        while (d.BatchesAssembled < 4 && clock.Elapsed < TimeSpan.FromSeconds(20))
        {
            Thread.Sleep(10);
        }
        Thread.Sleep(200);
        Assert.Equal(4, d.BatchesAssembled);
        clock.Restart();
        d.Dispose();
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"Dispose took {clock.Elapsed}");
        Assert.Throws<ObjectDisposedException>(() => d.NextBatch());
    }

    [Fact]
    public void BadFoldersAreReportedByName()
    {
        var missing = Assert.Throws<DiffSegException>(() => new ImageDataset(tmp.File("nowhere"), Options()));
        Assert.Contains("nowhere: folder not found", missing.Message);
        Directory.CreateDirectory(tmp.File("empty/sub"));
        File.WriteAllText(tmp.File("empty/notes.txt"), "x");
        var empty = Assert.Throws<DiffSegException>(() => new ImageDataset(tmp.File("empty"), Options()));
        Assert.Contains("empty: no images", empty.Message);
        string dir = Folder(2);
        var few = Assert.Throws<DiffSegException>(() => new ImageDataset(dir, Options(batch: 3)));
        Assert.Contains("2 images, fewer than one batch of 3", few.Message);
        Assert.Throws<DiffSegException>(() => new ImageDataset(dir, Options() with { ImageSize = 0 }));
        Assert.Throws<DiffSegException>(() => new ImageDataset(dir, Options() with { Shard = 2, NumShards = 2 }));
    }

    [Fact]
    public void BadImagesEndTheStreamWithTheirName()
    {
        string dir = tmp.File("data");
        string WriteBytes(string name, byte[] bytes)
        {
            File.WriteAllBytes(tmp.File(name), bytes);
            return tmp.File(name);
        }
        WritePng(Path.Combine(dir, "a.png"), 1);
        using (var ms = new MemoryStream())
        {
            using var img = new Image<Rgb24>(40, 40);
            img.SaveAsPng(ms);
            File.WriteAllBytes(Path.Combine(dir, "b_truncated.png"), ms.ToArray()[..(int)(ms.Length / 2)]);
        }
        // Files that are no image at all are refused before the stream starts (their first bytes are read up front).
        string other = tmp.File("other");
        Directory.CreateDirectory(other);
        File.WriteAllText(Path.Combine(other, "c_text.jpg"), "not an image at all");
        File.WriteAllBytes(Path.Combine(other, "e_empty.png"), []);
        WritePng(Path.Combine(other, "a.png"), 1);
        string Refusal() => Assert.Throws<DiffSegException>(() => new ImageDataset(other, Options(batch: 1))).Message;
        Assert.Contains("c_text.jpg: not a PNG, JPEG or GIF", Refusal());
        File.Delete(Path.Combine(other, "c_text.jpg"));
        Assert.Contains("e_empty.png: empty file", Refusal());
        File.WriteAllText(Path.Combine(other, "c_text.jpg"), "not an image at all");
        File.WriteAllBytes(Path.Combine(dir, "d_noise.gif"), [.. "GIF89a"u8, .. Enumerable.Range(0, 64).Select(i => (byte)(i * 37))]);
        var jpeg = File.ReadAllBytes(Path.Combine(Fixtures.Root, "images", "inputs", "photo_64x48.jpg"));
        File.WriteAllBytes(Path.Combine(dir, "f_cut.jpg"), jpeg[..(jpeg.Length / 2)]);
        var png = File.ReadAllBytes(Path.Combine(Fixtures.Root, "images", "inputs", "rgb_67x35.png"));
        File.WriteAllBytes(Path.Combine(dir, "g_cut.png"), png[..(png.Length * 9 / 10)]);
        // As in PIL, a PNG without its IEND chunk is whole, a JPEG without its end-of-image marker is not; data after
        // the marker does not matter.
        Assert.Equal(ImageDataset.LoadImage(Path.Combine(Fixtures.Root, "images", "inputs", "rgb_67x35.png"), 8),
                     ImageDataset.LoadImage(WriteBytes("h_no_iend.png", png[..^12]), 8));
        Assert.Equal(ImageDataset.LoadImage(Path.Combine(Fixtures.Root, "images", "inputs", "photo_64x48.jpg"), 8),
                     ImageDataset.LoadImage(WriteBytes("i_trailing.jpg", [.. jpeg, 0xFF, 0xDA, 0x6A, 0x75, 0x6E, 0x6B]), 8));
        Assert.Throws<DiffSegException>(() => ImageDataset.LoadImage(WriteBytes("j_no_eoi.jpg", jpeg[..^2]), 8));
        using var d = new ImageDataset(dir, Options(batch: 1) with { Deterministic = true, Workers = 1, PrefetchBatches = 1 });
        Assert.Equal(0, d.NextBatch().Indices[0]); // the good image before the bad ones is served
        var e = Assert.Throws<DiffSegException>(() => d.NextBatch());
        Assert.Contains("b_truncated.png: ", e.Message);
        Assert.Contains("b_truncated.png", Assert.Throws<DiffSegException>(() => d.NextBatch()).Message); // and stays ended
        (string File, string Problem)[] cases =
        [
            ("c_text.jpg", "not a PNG, JPEG or GIF"), ("d_noise.gif", "corrupt image"), ("e_empty.png", "not a PNG, JPEG or GIF"),
            ("gone.png", "file not found"), ("g_cut.png", "corrupt image"), ("f_cut.jpg", "truncated JPEG"),
        ];
        foreach (var (file, problem) in cases)
        {
            string path = Path.Combine(File.Exists(Path.Combine(other, file)) ? other : dir, file);
            var bad = Assert.Throws<DiffSegException>(() => ImageDataset.LoadImage(path, 8));
            Assert.Contains($"{file}: {problem}", bad.Message);
        }
    }
}
