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

    /// <summary>
    /// --precision fp16 on the CPU's simd backend: eps within the fp16 bound of AdmTinyFp16Tests (5e-3) and not equal
    /// to the fp32 result; with the ilgpu backend, which has no fp16 path, a one-line error and no output.
    /// </summary>
    [Fact]
    public void Fp16PrecisionRunsOnTheSimdBackendAndIsRefusedWithoutOne()
    {
        using var tmp = new TempDir();
        string model = tmp.File("tiny.safetensors");
        Assert.Equal(0, CliRunner.Run("convert", Fixtures.AdmTiny("model.pt"), "--flags", Fixtures.AdmTiny("flags.json"), "-o", model).ExitCode);
        var u = CliRunner.Run("unet", "--model", model, "--x", Fixtures.AdmTiny("x0.npy"), "--t", Fixtures.AdmTiny("t.npy"),
            "-o", tmp.File("eps.npy"), "--device", "cpu", "--precision", "fp16");
        Assert.True(u.ExitCode == 0, u.Error);
        Assert.Contains("fp16", u.Error);
        var want = Npy.ReadFloat32(Fixtures.AdmTiny("eps.npy"), out _);
        var got = Npy.ReadFloat32(tmp.File("eps.npy"), out _);
        TensorAssert.RelativeMaxBelow(want, got, 5e-3, "fp16 eps via CLI");
        Assert.True(TensorAssert.RelativeMaxError(want, got) > 1e-6, "fp16 operands should differ from fp32");
        var refused = CliRunner.Run("unet", "--model", model, "--x", Fixtures.AdmTiny("x0.npy"), "--t", Fixtures.AdmTiny("t.npy"),
            "-o", tmp.File("eps2.npy"), "--device", "cpu", "--cpu-backend", "ilgpu", "--precision", "fp16");
        CliRunner.AssertOneLineError(refused, "--precision fp16");
        Assert.False(File.Exists(tmp.File("eps2.npy")));
    }
}

[Collection("console")]
public sealed class FeaturesCommandTests
{
    /// <summary>
    /// `diffseg features` on x0[0] with the shared noise reproduces the official features.npy.
    /// Tolerance: max |diff| ≤ 1e-4 · max |official|, as the library-level test.
    /// </summary>
    [Fact]
    public void ReproducesOfficialFeaturesThroughTheCommand()
    {
        using var tmp = new TempDir();
        string model = tmp.File("tiny.safetensors");
        Assert.Equal(0, CliRunner.Run("convert", Fixtures.AdmTiny("model.pt"), "--flags", Fixtures.AdmTiny("flags.json"), "-o", model).ExitCode);
        var x0 = Npy.ReadFloat32(Fixtures.AdmTiny("x0.npy"), out _);
        Npy.Write(tmp.File("image.npy"), x0.AsSpan(0, 3 * 32 * 32), [3, 32, 32]);
        var r = CliRunner.Run("features", "--model", model, "--image", tmp.File("image.npy"), "--noise", Fixtures.AdmTiny("noise.npy"),
            "--steps", "50,150,250", "--blocks", "7,2,3,4,5", "-o", tmp.File("f.npy"), "--device", "cpu");
        Assert.True(r.ExitCode == 0, r.Error);
        var got = Npy.ReadFloat32(tmp.File("f.npy"), out var shape);
        var want = Npy.ReadFloat32(Fixtures.AdmTiny("features.npy"), out var wantShape);
        Assert.Equal(wantShape, shape);
        TensorAssert.RelativeMaxBelow(want, got, 1e-4, "features via CLI");
        var bad = CliRunner.Run("features", "--model", model, "--image", tmp.File("image.npy"), "--noise", Fixtures.AdmTiny("t.npy"),
            "-o", tmp.File("g.npy"), "--device", "cpu");
        CliRunner.AssertOneLineError(bad, "t.npy", "noise shape");
        Assert.False(File.Exists(tmp.File("g.npy")));
    }
}
