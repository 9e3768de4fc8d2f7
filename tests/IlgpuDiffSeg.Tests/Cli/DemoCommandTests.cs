using System.Globalization;

namespace IlgpuDiffSeg.Tests.Cli;

[Collection("console")]
public sealed class DemoCommandTests
{
    /// <summary>
    /// The README's main command at a reduced size (2 training images, 2 members): it must run end to end, say what
    /// its UNet weights are, print the per-class table ending in "mIoU: value" and write the contact sheet.
    /// The full-size demo (16 images, 10 members) measures mIoU 0.31 on its shape-only scenes (0.81 on the earlier
    /// colour-coded ones) in 2–5 minutes on 2 cores; nothing here depends on that value.
    /// </summary>
    [Fact]
    public void SmallDemoRunsEndToEnd()
    {
        using var tmp = new TempDir();
        var r = CliRunner.Run("demo", "-o", tmp.File("demo"), "--train", "2", "--test", "1", "--members", "2", "--device", "cpu");
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.Contains("RANDOM weights", r.Error);
        var last = r.Out.TrimEnd().Split('\n')[^1];
        Assert.StartsWith("mIoU: ", last);
        Assert.InRange(double.Parse(last[6..], CultureInfo.InvariantCulture), 0.0, 1.0);
        Assert.True(File.Exists(Path.Combine(tmp.File("demo"), "summary.png")));
        Assert.True(File.Exists(Path.Combine(tmp.File("demo"), "experiment.json")));
    }
}
