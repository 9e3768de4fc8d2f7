using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Tests.Cli;

/// <summary>
/// diffseg export through the entry point: the round trip official .pt → convert → export → convert, and bad input
/// (one line "error: FILE: problem", exit 1, no output left).
/// </summary>
[Collection("console")]
public sealed class ExportCommandTests : IDisposable
{
    readonly TempDir tmp = new();

    public void Dispose() => tmp.Dispose();

    string Converted()
    {
        string path = tmp.File("model.safetensors");
        var r = CliRunner.Run("convert", Fixtures.AdmTiny("model.pt"), "--flags", Fixtures.AdmTiny("flags.json"), "-o", path);
        Assert.True(r.ExitCode == 0, r.Error);
        return path;
    }

    [Fact]
    public void ConvertExportConvertGivesTheSameTensors()
    {
        string first = Converted(), pt = tmp.File("exported.pt"), flags = tmp.File("exported-flags.json");
        var export = CliRunner.Run("export", first, "-o", pt, "--flags-out", flags);
        Assert.True(export.ExitCode == 0, export.Error);
        Assert.Contains($"wrote {pt}", export.Out);
        Assert.Contains($"writing {pt}: 100%", export.Error);
        // The flags written beside the checkpoint are what convert reads back.
        string second = tmp.File("again.safetensors");
        var again = CliRunner.Run("convert", pt, "--flags", flags, "-o", second);
        Assert.True(again.ExitCode == 0, again.Error);

        using var a = SafetensorsFile.Open(first);
        using var b = SafetensorsFile.Open(second);
        Assert.Equal(306, a.Entries.Count);
        Assert.Equal(a.Entries.Select(e => e.Name), b.Entries.Select(e => e.Name));
        Assert.Equal(a.Metadata["flags"], b.Metadata["flags"]);
        foreach (var (ea, eb) in a.Entries.Zip(b.Entries))
        {
            Assert.Equal(ea.Shape, eb.Shape);
            Assert.True(a.ReadFloat32(ea).AsSpan().SequenceEqual(b.ReadFloat32(eb)), $"'{ea.Name}' differs");
        }
    }

    /// <summary>
    /// --half stores the weights as F16 and --source notes their origin: the file is about half the size, every weight
    /// loads as its fp32 value rounded to fp16, the flags are kept, and a .pt output refuses both options.
    /// </summary>
    [Fact]
    public void HalfSafetensorsLoadAsTheRoundedWeights()
    {
        string model = Converted(), half = tmp.File("half.safetensors");
        var r = CliRunner.Run("export", model, "-o", half, "--half", "--source", "a test");
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.InRange(new FileInfo(half).Length, new FileInfo(model).Length * 0.45, new FileInfo(model).Length * 0.55);
        using (var a = SafetensorsFile.Open(model))
        using (var b = SafetensorsFile.Open(half))
        {
            Assert.Equal("a test", b.Metadata["source"]);
            Assert.Equal(a.Metadata["flags"], b.Metadata["flags"]);
            foreach (var (ea, eb) in a.Entries.Zip(b.Entries))
            {
                Assert.Equal("F16", eb.DType);
                var rounded = a.ReadFloat32(ea).Select(v => (float)(Half)v).ToArray();
                Assert.True(rounded.AsSpan().SequenceEqual(b.ReadFloat32(eb)), $"'{ea.Name}' differs");
            }
        }
        using (var dev = IlgpuDiffSeg.Kernels.ComputeDevice.Create(IlgpuDiffSeg.Kernels.DeviceChoice.Cpu))
        using (var loaded = IlgpuDiffSeg.Model.ModelWeights.Load(half, IlgpuDiffSeg.Kernels.ExecutionPlan.For(dev)))
        {
            Assert.Equal(2_007_462, loaded.ParameterCount);
        }
        CliRunner.AssertOneLineError(CliRunner.Run("export", model, "-o", tmp.File("m.pt"), "--half"), "m.pt", "*.safetensors");
        AssertNothingWritten(tmp.File("m.pt"));
    }

    void AssertNothingWritten(params string[] paths)
    {
        foreach (var p in paths)
        {
            Assert.False(File.Exists(p), $"{p} was left behind");
        }
        Assert.Empty(Directory.GetFiles(tmp.Path, "*.tmp"));
    }

    [Fact]
    public void MissingModel()
    {
        string pt = tmp.File("m.pt");
        CliRunner.AssertOneLineError(CliRunner.Run("export", tmp.File("absent.safetensors"), "-o", pt), "absent.safetensors",
            "file not found");
        AssertNothingWritten(pt);
    }

    [Fact]
    public void SafetensorsWithoutFlags()
    {
        string bare = tmp.File("bare.safetensors"), pt = tmp.File("m.pt");
        SafetensorsFile.Write(bare, [new SafetensorSource("w", [2], s => s.Fill(1))], new Dictionary<string, string>());
        CliRunner.AssertOneLineError(CliRunner.Run("export", bare, "-o", pt), "bare.safetensors", "no model flags");
        AssertNothingWritten(pt);
    }

    [Fact]
    public void TensorsThatContradictTheFlags()
    {
        string model = Converted(), cut = tmp.File("cut.safetensors"), pt = tmp.File("m.pt");
        using (var file = SafetensorsFile.Open(model))
        {
            var sources = file.Entries.Skip(1)
                .Select(e => new SafetensorSource(e.Name, e.Shape, s => file.ReadFloat32(e).CopyTo(s))).ToList();
            SafetensorsFile.Write(cut, sources, file.Metadata);
        }
        CliRunner.AssertOneLineError(CliRunner.Run("export", cut, "-o", pt), "cut.safetensors", "missing key 'time_embed.0.weight'");
        AssertNothingWritten(pt);
    }

    [Fact]
    public void OutputNotWritable()
    {
        string model = Converted();
        CliRunner.AssertOneLineError(CliRunner.Run("export", model, "-o", tmp.File("no/such/dir/m.pt")), "m.pt", "folder does not exist");
        Directory.CreateDirectory(tmp.File("a-folder"));
        CliRunner.AssertOneLineError(CliRunner.Run("export", model, "-o", tmp.File("a-folder")), "a-folder", "is a folder");
        CliRunner.AssertOneLineError(CliRunner.Run("export", model, "-o", model), "model.safetensors", "is the input model");
        string pt = tmp.File("m.pt");
        CliRunner.AssertOneLineError(CliRunner.Run("export", model, "-o", pt, "--flags-out", tmp.File("no/dir/f.json")), "f.json",
            "folder does not exist");
        CliRunner.AssertOneLineError(CliRunner.Run("export", model, "-o", pt, "--flags-out", pt), "m.pt", "also the output");
        AssertNothingWritten(pt);
        Assert.True(File.Exists(model));
    }
}
