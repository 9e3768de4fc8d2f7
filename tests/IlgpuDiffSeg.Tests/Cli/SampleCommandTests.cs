using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Tests.Cli;

/// <summary>
/// 'diffseg sample' end to end: image_sample.py's npz (arr_0 uint8 NHWC, arr_1 labels), the PNG grid, --noise and --raw,
/// guided-diffusion's spellings, and bad input — one line, exit 1, nothing left behind.
/// </summary>
[Collection("console")]
public sealed class SampleCommandTests : IDisposable
{
    readonly TempDir tmp = new();

    public void Dispose() => tmp.Dispose();

    static string Config(string name) => Path.Combine(Fixtures.Root, "sample-configs", name);

    /// <summary>The folder's model.pt converted into the temporary folder.</summary>
    string Convert(string folder)
    {
        string path = tmp.File(Path.GetFileName(folder) + ".safetensors");
        var c = CliRunner.Run("convert", Path.Combine(folder, "model.pt"), "--flags", Path.Combine(folder, "flags.json"), "-o", path);
        Assert.True(c.ExitCode == 0, c.Error);
        return path;
    }

    [Fact]
    public void AncestralWithRecordedNoiseWritesTheOfficialSamples()
    {
        // Tolerance: raw samples as SampleParityTests (1e-4 of max|ref|); arr_0 is the same conversion of nearly the same
        // floats, so a value may differ by one level where the reference sits within rounding of an integer.
        string model = Convert(Fixtures.AdmTiny(""));
        string npz = tmp.File("samples.npz"), raw = tmp.File("raw.npy");
        var r = CliRunner.Run("sample", "--model_path", model, "-o", npz, "--num_samples", "3", "--batch_size", "2",
            "--timestep_respacing", "10", "--noise", Fixtures.AdmTiny("sample/ancestral_noise.npy"), "--raw", raw, "--device", "cpu");
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.Contains("steps/s", r.Error);
        var want = Npy.ReadFloat32(Fixtures.AdmTiny("sample/ancestral_out.npy"), out _);
        TensorAssert.RelativeMaxBelow(want, Npy.ReadFloat32(raw, out var rawShape), 1e-4, "raw samples");
        Assert.Equal([3, 3, 32, 32], rawShape);
        var arrays = Npz.Read(npz);
        Assert.Equal(["arr_0"], arrays.Keys);
        Assert.Equal(NpyType.UInt8, arrays["arr_0"].Type);
        Assert.Equal([3, 32, 32, 3], arrays["arr_0"].Shape);
        var expected = IlgpuDiffSeg.Pipeline.SampleImages.ToUint8Nhwc(want, 3, 32, 32);
        var got = arrays["arr_0"].Data;
        Assert.True(expected.Zip(got).All(p => Math.Abs(p.First - p.Second) <= 1), "arr_0 differs by more than one level");
        Assert.True(File.Exists(tmp.File("samples.png")), "no PNG grid beside the npz");
    }

    [Fact]
    public void ClassLabelsAreWrittenAsArr1AndRandomLabelsFollowTheSeed()
    {
        string folder = Config("classcond-sections");
        string model = Convert(folder);
        string npz = tmp.File("cc.npz");
        var r = CliRunner.Run("sample", "--model", model, "-o", npz, "--num-samples", "3", "--class-labels", Path.Combine(folder, "y.npy"),
            "--noise", Path.Combine(folder, "noise.npy"), "--raw", tmp.File("cc.npy"), "--device", "cpu");
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.Equal(Npy.Read(Path.Combine(folder, "y.npy")).ToInt64("y"), Npz.Read(npz)["arr_1"].ToInt64("arr_1"));
        TensorAssert.RelativeMaxBelow(Npy.ReadFloat32(Path.Combine(folder, "ancestral_out.npy"), out _),
            Npy.ReadFloat32(tmp.File("cc.npy"), out _), 1e-4, "class-conditional samples");
        // Without labels: random ones in [0, 1000), the same for the same seed whatever the batch size.
        var a = CliRunner.Run("sample", "--model", model, "-o", tmp.File("a.npz"), "--num-samples", "3", "--seed", "5",
            "--timestep-respacing", "2", "--raw", tmp.File("a.npy"), "--device", "cpu");
        var b = CliRunner.Run("sample", "--model", model, "-o", tmp.File("b.npz"), "--num-samples", "3", "--batch-size", "2",
            "--seed", "5", "--timestep-respacing", "2", "--raw", tmp.File("b.npy"), "--device", "cpu");
        Assert.True(a.ExitCode == 0 && b.ExitCode == 0, a.Error + b.Error);
        var labels = Npz.Read(tmp.File("a.npz"))["arr_1"].ToInt64("arr_1");
        Assert.All(labels, l => Assert.InRange(l, 0, 999));
        Assert.Equal(labels, Npz.Read(tmp.File("b.npz"))["arr_1"].ToInt64("arr_1"));
        // Tolerance: exact — a sample's noise depends on the seed and its index only.
        TensorAssert.Close(Npy.ReadFloat32(tmp.File("a.npy"), out _), Npy.ReadFloat32(tmp.File("b.npy"), out _), 0, 0, "batch size");
    }

    [Fact]
    public void DdimWithEtaReproducesTheReference()
    {
        string folder = Config("fixedsmall-ddim-eta");
        string model = Convert(folder);
        var r = CliRunner.Run("sample", "--model", model, "-o", tmp.File("d.npz"), "--num-samples", "3", "--use-ddim", "--eta", "0.5",
            "--clip-denoised", "false", "--timestep-respacing", "ddim5", "--noise", Path.Combine(folder, "noise.npy"),
            "--raw", tmp.File("d.npy"), "--device", "cpu");
        Assert.True(r.ExitCode == 0, r.Error);
        TensorAssert.RelativeMaxBelow(Npy.ReadFloat32(Path.Combine(folder, "ddim_eta_out.npy"), out _),
            Npy.ReadFloat32(tmp.File("d.npy"), out _), 1e-4, "DDIM η = 0.5");
    }

    [Fact]
    public void ClassifierGuidanceReproducesClassifierSample()
    {
        string folder = Path.Combine(Fixtures.Root, "guidance", "attention-pool");
        string model = Convert(folder);
        string classifier = tmp.File("classifier.safetensors");
        var c = CliRunner.Run("convert", Path.Combine(folder, "classifier.pt"), "--flags", Path.Combine(folder, "classifier_flags.json"),
            "-o", classifier);
        Assert.True(c.ExitCode == 0, c.Error);
        string npz = tmp.File("g.npz");
        var r = CliRunner.Run("sample", "--model", model, "--classifier_path", classifier, "--classifier_scale", "8", "-o", npz,
            "--num-samples", "3", "--use-ddim", "--clip-denoised", "false", "--class-labels", Path.Combine(folder, "y.npy"),
            "--noise", Path.Combine(folder, "noise.npy"), "--raw", tmp.File("g.npy"), "--device", "cpu");
        Assert.True(r.ExitCode == 0, r.Error);
        // Tolerance: as GuidanceParityTests, 1e-4 of max|ref|.
        TensorAssert.RelativeMaxBelow(Npy.ReadFloat32(Path.Combine(folder, "ddim_out.npy"), out _),
            Npy.ReadFloat32(tmp.File("g.npy"), out _), 1e-4, "guided DDIM");
        // classifier_sample.py saves the labels even for an unconditional model.
        Assert.Equal(Npy.Read(Path.Combine(folder, "y.npy")).ToInt64("y"), Npz.Read(npz)["arr_1"].ToInt64("arr_1"));

        // A classifier for 16×16 images cannot guide a 32×32 model; a diffusion model is not a classifier.
        string tiny = Convert(Fixtures.AdmTiny(""));
        File.Delete(npz);
        CliRunner.AssertOneLineError(CliRunner.Run("sample", "--model", tiny, "--classifier", classifier, "-o", npz, "--device", "cpu"),
            "classifier.safetensors", "does not fit the model");
        CliRunner.AssertOneLineError(CliRunner.Run("sample", "--model", tiny, "--classifier", tiny, "-o", npz, "--device", "cpu"),
            "is a diffusion model, not a classifier");
        Assert.False(File.Exists(npz));
    }

    void AssertNothingWritten()
    {
        var left = Directory.GetFiles(tmp.Path).Where(f => !f.EndsWith(".safetensors", StringComparison.Ordinal) &&
                                                           !f.EndsWith(".in.npy", StringComparison.Ordinal)).ToArray();
        Assert.True(left.Length == 0, "left behind: " + string.Join(", ", left));
    }

    [Fact]
    public void BadInputIsOneLineAndLeavesNothing()
    {
        string tiny = Convert(Fixtures.AdmTiny(""));
        string cc = Convert(Config("classcond-sections"));
        string[] Args(string model, params string[] more) =>
            ["sample", "--model", model, "-o", tmp.File("out.npz"), "--raw", tmp.File("out.npy"), "--device", "cpu", .. more];

        // No integer stride takes 49 of 1000 steps.
        CliRunner.AssertOneLineError(CliRunner.Run(Args(tiny, "--timestep-respacing", "ddim49")), "ddim49", "no integer stride");
        AssertNothingWritten();
        // Two sections of 500 steps: the second cannot keep 600.
        CliRunner.AssertOneLineError(CliRunner.Run(Args(tiny, "--timestep-respacing", "10,600")), "a section of 500 steps cannot keep 600");
        AssertNothingWritten();
        // A noise stack for 10 steps given to a 5-step respacing.
        CliRunner.AssertOneLineError(CliRunner.Run(Args(tiny, "--num-samples", "3", "--timestep-respacing", "5", "--noise",
            Fixtures.AdmTiny("sample/ancestral_noise.npy"))), "ancestral_noise.npy",
            "shape is (11, 3, 3, 32, 32), expected (6, 3, 3, 32, 32)");
        AssertNothingWritten();
        // Labels out of range, and labels for a model without classes.
        string labels = tmp.File("labels.in.npy");
        Npy.Write(labels, new long[] { 3, 1000 }, [2]);
        CliRunner.AssertOneLineError(CliRunner.Run(Args(cc, "--num-samples", "2", "--class-labels", labels)), "labels.in.npy",
            "label 1000 at index 1 is outside [0, 1000)");
        AssertNothingWritten();
        CliRunner.AssertOneLineError(CliRunner.Run(Args(tiny, "--num-samples", "2", "--class-labels", labels)), "not class-conditional");
        AssertNothingWritten();
        CliRunner.AssertOneLineError(CliRunner.Run(Args(tiny, "--eta", "0.5")), "--eta");
        CliRunner.AssertOneLineError(CliRunner.Run(Args(tmp.File("missing.safetensors"))), "missing.safetensors", "file not found");
        AssertNothingWritten();
    }
}
