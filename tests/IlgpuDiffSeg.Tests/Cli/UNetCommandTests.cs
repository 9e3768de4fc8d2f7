using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Tests.Cli;

[Collection("console")]
public sealed class UNetCommandTests
{
    [Fact]
    public void ConvertThenUNetWritesOutputAndEveryBlock()
    {
        // Tolerance: as the parity tests, max |diff| ≤ 1e-4 · max |official|.
        using var tmp = new TempDir();
        string model = tmp.File("tiny.safetensors");
        var c = CliRunner.Run("convert", Fixtures.AdmTiny("model.pt"), "--flags", Fixtures.AdmTiny("flags.json"), "-o", model);
        Assert.True(c.ExitCode == 0, c.Error);
        var u = CliRunner.Run("unet", "--model", model, "--x", Fixtures.AdmTiny("x0.npy"), "--t", Fixtures.AdmTiny("t.npy"),
            "-o", tmp.File("eps.npy"), "--blocks-dir", tmp.File("blocks"), "--device", "cpu");
        Assert.True(u.ExitCode == 0, u.Error);
        TensorAssert.RelativeMaxBelow(Npy.ReadFloat32(Fixtures.AdmTiny("eps.npy"), out _), Npy.ReadFloat32(tmp.File("eps.npy"), out _),
            1e-4, "eps via CLI");
        for (int b = 0; b < 9; b++)
        {
            var got = Npy.ReadFloat32(Path.Combine(tmp.File("blocks"), $"out_block_{b}.npy"), out var shape);
            var want = Npy.ReadFloat32(Fixtures.AdmTiny($"out_block_{b}.npy"), out var wantShape);
            Assert.Equal(wantShape, shape);
            TensorAssert.RelativeMaxBelow(want, got, 1e-4, $"out_block_{b} via CLI");
        }
    }
}
