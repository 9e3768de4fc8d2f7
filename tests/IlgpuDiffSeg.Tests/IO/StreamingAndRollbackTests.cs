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
        Assert.Equal(["old.txt", "state.bin"], Directory.GetFileSystemEntries(tmp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Null(OutputScope.Current);

        using (var scope = OutputScope.Begin())
        {
            AtomicFile.Write(tmp.File("old.txt"), s => s.WriteByte(5));
            scope.Commit();
        }
        Assert.Equal([5], File.ReadAllBytes(tmp.File("old.txt")));
        Assert.Equal(["old.txt", "state.bin"], Directory.GetFileSystemEntries(tmp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
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
        Assert.SkipUnless(Environment.GetEnvironmentVariable("DIFFSEG_LARGE_TESTS") == "1", "set DIFFSEG_LARGE_TESTS=1 to write a 2.2 GB .npy");
        string fuzz = typeof(IlgpuDiffSeg.Fuzz.Target).Assembly.Location;
        var start = new ProcessStartInfo("dotnet", [fuzz, "big-npy", tmp.Path]) { RedirectStandardOutput = true, RedirectStandardError = true };
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
}
