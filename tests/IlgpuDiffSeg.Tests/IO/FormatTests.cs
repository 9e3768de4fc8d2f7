using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.IO;

public sealed class FormatTests
{
    [Fact]
    public void NpyRoundTripsEveryWrittenType()
    {
        using var tmp = new TempDir();
        Npy.Write(tmp.File("f.npy"), new[] { 1.5f, -2f, 3f, 4f, 5f, 6f }, [2, 3]);
        Npy.Write(tmp.File("d.npy"), new[] { 1.25, 2.5 }, [2]);
        Npy.Write(tmp.File("l.npy"), new long[] { -7, 8 }, [1, 2]);
        Npy.Write(tmp.File("b.npy"), new byte[] { 0, 255, 3 }, [3]);
        var f = Npy.Read(tmp.File("f.npy"));
        Assert.Equal([2, 3], f.Shape);
        Assert.Equal(new[] { 1.5f, -2f, 3f, 4f, 5f, 6f }, f.ToFloat32("f"));
        Assert.Equal(new[] { 1.25f, 2.5f }, Npy.Read(tmp.File("d.npy")).ToFloat32("d"));
        Assert.Equal(new long[] { -7, 8 }, Npy.Read(tmp.File("l.npy")).ToInt64("l"));
        Assert.Equal(new long[] { 0, 255, 3 }, Npy.Read(tmp.File("b.npy")).ToInt64("b"));
        // NumPy requires the header to end on a 64-byte boundary.
        Assert.Equal(0, (File.ReadAllBytes(tmp.File("f.npy")).Length - 6 * 4) % 64);
    }

    [Fact]
    public void NpyReadsNumpyWrittenFiles()
    {
        var t = Npy.Read(Fixtures.AdmTiny("t.npy"));
        Assert.Equal(NpyType.Int64, t.Type);
        Assert.Equal(new long[] { 37, 74 }, t.ToInt64("t"));
        var x = Npy.Read(Fixtures.AdmTiny("x0.npy"));
        Assert.Equal([2, 3, 32, 32], x.Shape);
    }

    [Fact]
    public void NpyRejectsGarbage()
    {
        var e = Assert.Throws<DiffSegException>(() => Npy.Parse("hello world!"u8.ToArray(), "h.npy"));
        Assert.Contains("h.npy", e.Message);
        Assert.Contains("not a NumPy .npy file", e.Message);
    }

    [Fact]
    public void SafetensorsRoundTripWithMetadata()
    {
        using var tmp = new TempDir();
        var sources = new[]
        {
            new SafetensorSource("a", [2, 2], s => new[] { 1f, 2f, 3f, 4f }.CopyTo(s)),
            new SafetensorSource("b", [3], s => new[] { 5f, 6f, 7f }.CopyTo(s)),
        };
        SafetensorsFile.Write(tmp.File("t.safetensors"), sources, new Dictionary<string, string> { ["k"] = "v" });
        using var f = SafetensorsFile.Open(tmp.File("t.safetensors"));
        Assert.Equal("v", f.Metadata["k"]);
        Assert.True(f.TryGet("b", out var b));
        Assert.Equal(new[] { 5f, 6f, 7f }, f.ReadFloat32(b));
        Assert.Equal([2, 2], f.Entries[0].Shape);
    }

    [Fact]
    public void TorchCheckpointListsTheFixtureStateDict()
    {
        using var ckpt = TorchCheckpoint.Open(Fixtures.AdmTiny("model.pt"));
        Assert.Equal(306, ckpt.Tensors.Count);
        var first = ckpt.Tensors[0];
        Assert.Equal("time_embed.0.weight", first.Name);
        Assert.Equal([128, 32], first.Shape);
        Assert.True(first.IsContiguous);
        var values = new float[first.Count];
        ckpt.ReadFloat32(first, values);
        Assert.Contains(values, v => v != 0);
    }

    [Fact]
    public void FlagsAcceptShellStyleValues()
    {
        var f = AdmFlags.Parse("""{"image_size": "256", "learn_sigma": "True", "attention_resolutions": [32, 16, 8], "dropout": 0}""", "f");
        Assert.Equal(256, f.ImageSize);
        Assert.True(f.LearnSigma);
        Assert.Equal("32,16,8", f.AttentionResolutions);
        Assert.Equal([8, 16, 32], f.AttentionDownsampleRates().Order());
        Assert.Equal([1.0, 1, 2, 2, 4, 4], f.ChannelMultipliers());
        Assert.Equal(f.ImageSize, AdmFlags.Parse(f.ToJson(), "round trip").ImageSize);
    }
}
