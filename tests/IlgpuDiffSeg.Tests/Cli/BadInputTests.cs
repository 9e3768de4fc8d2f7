using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Tests.Cli;

/// <summary>
/// Bad input ends with one line naming the file and the problem, a non-zero exit code, and no output file.
/// </summary>
[Collection("console")]
public sealed class BadInputTests : IDisposable
{
    readonly TempDir tmp = new();
    readonly string modelPt = Fixtures.AdmTiny("model.pt");
    readonly string flags = Fixtures.AdmTiny("flags.json");

    public void Dispose() => tmp.Dispose();

    string Output => tmp.File("out.safetensors");

    CliRunner.Result Convert(string pt, string flagsPath) => CliRunner.Run("convert", pt, "--flags", flagsPath, "-o", Output);

    string FlagsWith(string key, string jsonValue)
    {
        var text = File.ReadAllText(flags);
        var edited = System.Text.RegularExpressions.Regex.Replace(text, $"\"{key}\"\\s*:\\s*(\"[^\"]*\"|[^,\\n}}]+)", $"\"{key}\": {jsonValue}");
        string path = tmp.File($"flags-{key}.json");
        File.WriteAllText(path, edited);
        return path;
    }

    void AssertNoOutput()
    {
        Assert.False(File.Exists(Output), "an output file was left behind");
        Assert.Empty(Directory.GetFiles(tmp.Path, "*.tmp"));
    }

    [Fact]
    public void NotAZip()
    {
        string pt = tmp.File("text.pt");
        File.WriteAllText(pt, "this is not a checkpoint");
        CliRunner.AssertOneLineError(Convert(pt, flags), "text.pt", "not a zip archive");
        AssertNoOutput();
    }

    [Fact]
    public void LegacyNonZipCheckpoint()
    {
        string pt = tmp.File("legacy.pt");
        // torch < 1.6 wrote a bare pickle starting with the magic number 0x1950a86a20f9469cfc6c.
        File.WriteAllBytes(pt, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
        CliRunner.AssertOneLineError(Convert(pt, flags), "legacy.pt", "legacy (non-zip)");
        AssertNoOutput();
    }

    [Fact]
    public void TruncatedCheckpoint()
    {
        string pt = tmp.File("cut.pt");
        var bytes = File.ReadAllBytes(modelPt);
        File.WriteAllBytes(pt, bytes[..(bytes.Length / 2)]);
        CliRunner.AssertOneLineError(Convert(pt, flags), "cut.pt", "truncated");
        AssertNoOutput();
    }

    [Fact]
    public void MissingKey()
    {
        CliRunner.AssertOneLineError(Convert(modelPt, FlagsWith("num_res_blocks", "3")), "model.pt", "missing key");
        AssertNoOutput();
    }

    [Fact]
    public void FlagsThatMoveKeys()
    {
        // Without attention at 8×8 the up-ResBlock of output block 2 moves from .2 to .1.
        CliRunner.AssertOneLineError(Convert(modelPt, FlagsWith("attention_resolutions", "\"16\"")), "model.pt", "missing key",
            "unexpected", "attention_resolutions");
        AssertNoOutput();
    }

    [Fact]
    public void UnexpectedKey()
    {
        Assert.Equal(0, Convert(modelPt, flags).ExitCode);
        string extra = tmp.File("extra.safetensors");
        using (var file = SafetensorsFile.Open(Output))
        {
            var sources = file.Entries.Select(e => new SafetensorSource(e.Name, e.Shape, span => file.ReadFloat32(e).CopyTo(span)))
                .Append(new SafetensorSource("extra.weight", [2], span => span.Clear())).ToList();
            SafetensorsFile.Write(extra, sources, file.Metadata);
        }
        var r = CliRunner.Run("unet", "--model", extra, "--x", Fixtures.AdmTiny("x0.npy"), "--t", Fixtures.AdmTiny("t.npy"),
            "-o", tmp.File("eps.npy"), "--device", "cpu");
        CliRunner.AssertOneLineError(r, "extra.safetensors", "unexpected key 'extra.weight'");
        Assert.False(File.Exists(tmp.File("eps.npy")));
    }

    [Fact]
    public void ShapeContradictsFlags()
    {
        CliRunner.AssertOneLineError(Convert(modelPt, FlagsWith("learn_sigma", "false")), "model.pt", "'out.2.weight' has shape (6, 32, 3, 3)",
            "(3, 32, 3, 3)", "learn_sigma");
        AssertNoOutput();
    }

    [Fact]
    public void UnknownFlagAndWrongType()
    {
        string typo = tmp.File("typo.json");
        File.WriteAllText(typo, """{"image_size": 32, "num_channel": 32}""");
        CliRunner.AssertOneLineError(Convert(modelPt, typo), "typo.json", "unknown flag 'num_channel'", "num_channels");
        CliRunner.AssertOneLineError(Convert(modelPt, FlagsWith("num_channels", "\"thirty-two\"")), "flags-num_channels.json",
            "'num_channels'", "expected an integer");
        AssertNoOutput();
    }

    [Fact]
    public void TruncatedSafetensors()
    {
        Assert.Equal(0, Convert(modelPt, flags).ExitCode);
        string cut = tmp.File("cut.safetensors");
        var bytes = File.ReadAllBytes(Output);
        File.WriteAllBytes(cut, bytes[..(bytes.Length - 1000)]);
        var r = CliRunner.Run("unet", "--model", cut, "--x", Fixtures.AdmTiny("x0.npy"), "--t", Fixtures.AdmTiny("t.npy"),
            "-o", tmp.File("eps.npy"), "--device", "cpu");
        CliRunner.AssertOneLineError(r, "cut.safetensors", "truncated");
        Assert.False(File.Exists(tmp.File("eps.npy")));
    }

    [Fact]
    public void NpyOfWrongShapeOrDtype()
    {
        Assert.Equal(0, Convert(modelPt, flags).ExitCode);
        string eps = tmp.File("eps.npy");
        string x4 = tmp.File("x4.npy");
        Npy.Write(x4, new float[2 * 4 * 32 * 32], [2, 4, 32, 32]);
        CliRunner.AssertOneLineError(UNet(x4, Fixtures.AdmTiny("t.npy")), "x4.npy", "shape is (2, 4, 32, 32)", "(*, 3, *, *)");
        string xInt = tmp.File("xint.npy");
        Npy.Write(xInt, new long[2 * 3 * 32 * 32], [2, 3, 32, 32]);
        CliRunner.AssertOneLineError(UNet(xInt, Fixtures.AdmTiny("t.npy")), "xint.npy", "dtype is <i8", "float");
        string t3 = tmp.File("t3.npy");
        Npy.Write(t3, new long[] { 1, 2, 3 }, [3]);
        CliRunner.AssertOneLineError(UNet(Fixtures.AdmTiny("x0.npy"), t3), "t3.npy", "shape is (3,)", "expected (2)");
        string cut = tmp.File("cut.npy");
        File.WriteAllBytes(cut, File.ReadAllBytes(Fixtures.AdmTiny("x0.npy"))[..5000]);
        CliRunner.AssertOneLineError(UNet(cut, Fixtures.AdmTiny("t.npy")), "cut.npy", "truncated");
        string y = tmp.File("y.npy");
        Npy.Write(y, new long[] { 1, 2 }, [2]);
        CliRunner.AssertOneLineError(UNet(Fixtures.AdmTiny("x0.npy"), Fixtures.AdmTiny("t.npy"), "--y", y), "not class-conditional");
        CliRunner.AssertOneLineError(UNet(tmp.File("absent.npy"), Fixtures.AdmTiny("t.npy")), "absent.npy", "not found");
        Assert.False(File.Exists(eps));

        CliRunner.Result UNet(string x, string t, params string[] extra) =>
            CliRunner.Run(["unet", "--model", Output, "--x", x, "--t", t, "-o", eps, "--device", "cpu", .. extra]);
    }

    [Fact]
    public void OutputFolderMissing()
    {
        var r = CliRunner.Run("convert", modelPt, "--flags", flags, "-o", tmp.File("no/such/dir/m.safetensors"));
        CliRunner.AssertOneLineError(r, "m.safetensors", "folder does not exist");
    }
}
