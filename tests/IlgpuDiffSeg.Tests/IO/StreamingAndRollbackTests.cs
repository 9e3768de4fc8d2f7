using System.Diagnostics;
using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Tests.IO;

/// <summary>
/// Writers that stream (issue #13 class 5) and the rule that a failing command leaves nothing it wrote (class 3), at the
/// level of the pieces: <see cref="Npy"/>'s header and chunked data, <see cref="OutputScope"/>'s rollback.
/// </summary>
public sealed class StreamingAndRollbackTests : IDisposable
{
    readonly TempDir tmp = new();

    public void Dispose() => tmp.Dispose();

    [Fact]
    public void NpyWritesInChunksWhatNumpyReads()
    {
        // Several 1 MiB chunks and a partial one; the header ends on a 64-byte boundary, as NumPy requires.
        var values = Enumerable.Range(0, 700_001).Select(i => i * 0.5f).ToArray();
        Npy.Write(tmp.File("a.npy"), values, [700_001]);
        var bytes = File.ReadAllBytes(tmp.File("a.npy"));
        Assert.Equal(0, (bytes.Length - values.Length * 4) % 64);
        Assert.Equal(values, Npy.Read(tmp.File("a.npy")).ToFloat32("a"));
        var header = Npy.ReadHeader(tmp.File("a.npy"));
        Assert.Equal(bytes.Length - values.Length * 4, header.DataOffset);
        Assert.Throws<ArgumentException>(() => Npy.Write(tmp.File("b.npy"), values, [3]));
        Assert.False(File.Exists(tmp.File("b.npy")));
    }

    [Fact]
    public void AWriterThatFailsLeavesNoFile()
    {
        Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(tmp.File("x.bin"), s =>
        {
            s.Write(new byte[100]);
            throw new InvalidOperationException("the writer failed");
        }));
        Assert.Empty(Directory.GetFileSystemEntries(tmp.Path));
    }

    [Fact]
    public void AFailedScopeRemovesWhatItWroteAndRestoresWhatItReplaced()
    {
        File.WriteAllText(tmp.File("old.txt"), "before");
        using (var scope = OutputScope.Begin())
        {
            string dir = OutputScope.CreateDirectory(tmp.File("made/deeper"));
            AtomicFile.Write(Path.Combine(dir, "new.txt"), s => s.WriteByte(1));
            AtomicFile.Write(tmp.File("old.txt"), s => s.WriteByte(2));
            AtomicFile.Write(tmp.File("old.txt"), s => s.WriteByte(3));
            AtomicFile.Write(tmp.File("state.bin"), s => s.WriteByte(4));
            OutputScope.Keep(tmp.File("state.bin"));
            Assert.Equal([3], File.ReadAllBytes(tmp.File("old.txt")));
            // Disposed without Commit: the command failed.
        }
        Assert.Equal("before", File.ReadAllText(tmp.File("old.txt")));
        Assert.False(Directory.Exists(tmp.File("made")));
        Assert.True(File.Exists(tmp.File("state.bin")));
        Assert.Equal(["old.txt", "state.bin"],
            Directory.GetFileSystemEntries(tmp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Null(OutputScope.Current);

        using (var scope = OutputScope.Begin())
        {
            AtomicFile.Write(tmp.File("old.txt"), s => s.WriteByte(5));
            scope.Commit();
        }
        Assert.Equal([5], File.ReadAllBytes(tmp.File("old.txt")));
        Assert.Equal(["old.txt", "state.bin"],
            Directory.GetFileSystemEntries(tmp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void OutputFolderThatIsAFileIsRefused()
    {
        File.WriteAllText(tmp.File("f"), "x");
        Assert.Contains("is a file", Assert.Throws<DiffSegException>(() => OutputScope.CreateDirectory(tmp.File("f"))).Message);
        Assert.Contains("is a file", Assert.Throws<DiffSegException>(() => OutputScope.CreateDirectory(tmp.File("f/sub"))).Message);
        Assert.Contains("is a file", Assert.Throws<DiffSegException>(() => AtomicFile.CheckWritable(tmp.File("f/out.npy"))).Message);
    }

    /// <summary>
    /// Opt-in (DIFFSEG_LARGE_TESTS=1; 2.2 GB of disk, ~20 s): the (8448, 256, 256) features of one LSUN-256 image, past
    /// 2³¹ bytes, written and read back in a child process whose managed heap is capped at 3 GiB, so a whole-file copy
    /// fails instead of taking the machine's memory.
    /// </summary>
    [Fact]
    [Trait("Category", "Large")]
    public async Task FeaturesPast2GiBAreWrittenAndReadBack()
    {
        Assert.SkipUnless(Environment.GetEnvironmentVariable("DIFFSEG_LARGE_TESTS") == "1",
            "set DIFFSEG_LARGE_TESTS=1 to write a 2.2 GB .npy");
        string fuzz = typeof(IlgpuDiffSeg.Fuzz.Target).Assembly.Location;
        var start = new ProcessStartInfo("dotnet", [fuzz, "big-npy", tmp.Path])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        start.Environment["DOTNET_GCHeapHardLimit"] = "0xC0000000";
        using var p = Process.Start(start)!;
        var ct = TestContext.Current.CancellationToken;
        var stdout = p.StandardOutput.ReadToEndAsync(ct);
        var stderr = p.StandardError.ReadToEndAsync(ct);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(TimeSpan.FromMinutes(5));
        try
        {
            await p.WaitForExitAsync(limit.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("big-npy ran past 5 minutes");
        }
        string output = await stdout;
        Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}\n{output}\n{await stderr}");
        Assert.Contains("× 2^31", output);
    }

    /// <summary>
    /// Opt-in (DIFFSEG_LARGE_TESTS=1; 4.4 GB of disk, minutes of CPU, ~10 GB of memory): issue #13 class 5 end to end.
    /// `diffseg features` on the LSUN-256 UNet (random weights) with the README's blocks 5,6,7,8,12 at steps 50,150,250 —
    /// 8448 × 256 × 256 floats — writes its 2.2 GB .npy; it died in Npy.Write with an OverflowException. Both steps run as
    /// child processes, the second under a resident-memory watchdog (16 GiB) and a time limit.
    /// </summary>
    [Fact]
    [Trait("Category", "Large")]
    public async Task FeaturesCommandAtLsun256WritesItsNpy()
    {
        Assert.SkipUnless(Environment.GetEnvironmentVariable("DIFFSEG_LARGE_TESTS") == "1",
            "set DIFFSEG_LARGE_TESTS=1 to run the LSUN-256 features");
        string model = tmp.File("lsun256.safetensors");
        string fuzz = typeof(IlgpuDiffSeg.Fuzz.Target).Assembly.Location;
        var (code, output) = await RunGuarded(["dotnet", fuzz, "lsun256-model", model], TimeSpan.FromMinutes(15), 8L << 30);
        Assert.True(code == 0, output);
        var rng = new Random(0);
        Npy.Write(tmp.File("image.npy"), Enumerable.Range(0, 3 * 256 * 256).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(),
            [3, 256, 256]);
        string diffseg = typeof(IlgpuDiffSeg.Cli.Program).Assembly.Location;
        string features = tmp.File("features.npy");
        (code, output) = await RunGuarded(["dotnet", diffseg, "features", "--model", model, "--image", tmp.File("image.npy"),
            "--steps", "50,150,250", "--blocks", "5,6,7,8,12", "-o", features, "--device", "cpu"], TimeSpan.FromMinutes(60), 16L << 30);
        Assert.True(code == 0, output);
        var header = Npy.ReadHeader(features);
        Assert.Equal([8448, 256, 256], header.Shape);
        Assert.True(new FileInfo(features).Length > int.MaxValue);
    }

    /// <summary>
    /// Runs a command, killing it past <paramref name="limit"/> or past <paramref name="maxResidentBytes"/> of resident memory.
    /// </summary>
    static async Task<(int Code, string Output)> RunGuarded(string[] command, TimeSpan limit, long maxResidentBytes)
    {
        var start = new ProcessStartInfo(command[0], command[1..]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(start)!;
        var ct = TestContext.Current.CancellationToken;
        var stdout = p.StandardOutput.ReadToEndAsync(ct);
        var stderr = p.StandardError.ReadToEndAsync(ct);
        var clock = Stopwatch.StartNew();
        long peak = 0;
        string? killed = null;
        while (!p.HasExited)
        {
            try
            {
                p.Refresh();
                peak = Math.Max(peak, p.WorkingSet64);
            }
            catch (InvalidOperationException)
            {
                break;
            }
            if (peak > maxResidentBytes || clock.Elapsed > limit)
            {
                killed = peak > maxResidentBytes ? $"killed past {maxResidentBytes >> 30} GiB resident" : $"killed past {limit}";
                p.Kill(entireProcessTree: true);
                break;
            }
            await Task.Delay(200, ct);
        }
        await p.WaitForExitAsync(ct);
        string output = $"{string.Join(' ', command)}: {killed ?? $"exit {p.ExitCode}"}, peak {peak / (double)(1L << 30):F1} GiB, " +
                        $"{clock.Elapsed.TotalSeconds:F0} s\n{await stdout}\n{await stderr}";
        Console.WriteLine(output);
        return (killed is null ? p.ExitCode : -1, output);
    }
}
