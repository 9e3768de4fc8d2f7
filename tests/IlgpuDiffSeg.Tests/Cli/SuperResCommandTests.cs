using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Tests.Cli;

/// <summary>
/// Super-resolution through the command line: 'sample --base-samples' as super_res_sample.py, 'train-ddpm --super-res' as
/// super_res_train.py (two steps on generated scenes, then sampled), and bad input.
/// </summary>
[Collection("console")]
public sealed class SuperResCommandTests : IDisposable
{
    readonly TempDir tmp = new();

    static string Dir => Path.Combine(Fixtures.Root, "superres", "sr8to16");

    public void Dispose() => tmp.Dispose();

    string Convert()
    {
        string path = tmp.File("sr.safetensors");
        var c = CliRunner.Run("convert", Path.Combine(Dir, "model.pt"), "--flags", Path.Combine(Dir, "flags.json"), "-o", path);
        Assert.True(c.ExitCode == 0, c.Error);
        return path;
    }

    [Fact]
    public void SampleFromBaseSamplesReproducesSuperResSample()
    {
        string model = Convert();
        var r = CliRunner.Run("sample", "--model", model, "--base_samples", Path.Combine(Dir, "base.npz"), "-o", tmp.File("sr.npz"),
            "--num-samples", "3", "--batch-size", "2", "--timestep-respacing", "ddim5", "--noise", Path.Combine(Dir, "noise.npy"),
            "--raw", tmp.File("sr.npy"), "--device", "cpu");
        Assert.True(r.ExitCode == 0, r.Error);
        // Tolerance: 1e-4 of max|ref|, as SuperResParityTests.
        TensorAssert.RelativeMaxBelow(Npy.ReadFloat32(Path.Combine(Dir, "ancestral_out.npy"), out _),
            Npy.ReadFloat32(tmp.File("sr.npy"), out _), 1e-4, "super-resolution samples");
        Assert.Equal([3, 16, 16, 3], Npz.Read(tmp.File("sr.npz"))["arr_0"].Shape);

        string tiny = tmp.File("tiny.safetensors");
        Assert.Equal(0, CliRunner.Run("convert", Fixtures.AdmTiny("model.pt"), "--flags", Fixtures.AdmTiny("flags.json"), "-o", tiny)
            .ExitCode);
        string output = tmp.File("bad.npz");
        CliRunner.AssertOneLineError(CliRunner.Run("sample", "--model", model, "-o", output, "--device", "cpu"), "sr.safetensors",
            "--base-samples");
        CliRunner.AssertOneLineError(CliRunner.Run("sample", "--model", tiny, "--base-samples", Path.Combine(Dir, "base.npz"),
            "-o", output, "--device", "cpu"), "not a super-resolution model");
        CliRunner.AssertOneLineError(CliRunner.Run("sample", "--model", model, "--base-samples", tmp.File("sr.npz"), "-o", output,
            "--device", "cpu"), "sr.npz", "expected uint8 (M, 8, 8, 3)");
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void TrainDdpmSuperResTrainsAModelThatSamples()
    {
        string run = tmp.File("run");
        var bad = CliRunner.Run("train-ddpm", "--flags", Path.Combine(Dir, "flags.json"), "--synthetic-scenes", "-o", run,
            "--device", "cpu");
        CliRunner.AssertOneLineError(bad, "add --super-res");
        var t = CliRunner.Run("train-ddpm", "--flags", Path.Combine(Dir, "flags.json"), "--super-res", "--synthetic-scenes", "-o", run,
            "--batch-size", "2", "--max-steps", "2", "--save-interval", "2", "--device", "cpu");
        Assert.True(t.ExitCode == 0, t.Error);
        string model = Path.Combine(run, "model000002.safetensors");
        Assert.True(File.Exists(model), t.Out + t.Error);
        var s = CliRunner.Run("sample", "--model", model, "--base-samples", Path.Combine(Dir, "base.npz"), "-o", tmp.File("s.npz"),
            "--num-samples", "2", "--timestep-respacing", "3", "--device", "cpu");
        Assert.True(s.ExitCode == 0, s.Error);
        Assert.Equal([2, 16, 16, 3], Npz.Read(tmp.File("s.npz"))["arr_0"].Shape);
    }
}
