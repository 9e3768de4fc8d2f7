using System.Globalization;

namespace IlgpuDiffSeg.Tests.Cli;

[Collection("console")]
public sealed class DemoCommandTests
{
    /// <summary>
    /// The README's main command at a reduced size (2 training images, 2 members): it must run end to end with the
    /// shipped DDPM (trained here, stored as F16), say so, print the per-class table ending in "mIoU: value" and write
    /// the contact sheet. The full-size demo's mIoU (trained against random weights) is in the README; nothing here
    /// depends on it.
    /// </summary>
    [Fact]
    public void SmallDemoRunsEndToEnd()
    {
        using var tmp = new TempDir();
        var r = CliRunner.Run("demo", "-o", tmp.File("demo"), "--train", "2", "--test", "1", "--members", "2", "--device", "cpu");
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.Contains("is a DDPM trained on unlabelled scenes", r.Error);
        var last = r.Out.TrimEnd().Split('\n')[^1];
        Assert.StartsWith("mIoU: ", last);
        Assert.InRange(double.Parse(last[6..], CultureInfo.InvariantCulture), 0.0, 1.0);
        Assert.True(File.Exists(Path.Combine(tmp.File("demo"), "summary.png")));
        Assert.True(File.Exists(Path.Combine(tmp.File("demo"), "experiment.json")));
    }

    /// <summary>The baseline the README compares against: --write-model's random UNet, then --model, says it is random.</summary>
    [Fact]
    public void RandomBaselineSaysItIsRandom()
    {
        using var tmp = new TempDir();
        var w = CliRunner.Run("demo", "--write-model", tmp.File("random.safetensors"), "--device", "cpu");
        Assert.True(w.ExitCode == 0, w.Error);
        var r = CliRunner.Run("demo", "-o", tmp.File("demo"), "--model", tmp.File("random.safetensors"), "--train", "2",
            "--test", "1", "--members", "2", "--device", "cpu");
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.Contains("RANDOM weights", r.Error);
        Assert.StartsWith("mIoU: ", r.Out.TrimEnd().Split('\n')[^1]);
    }
}
