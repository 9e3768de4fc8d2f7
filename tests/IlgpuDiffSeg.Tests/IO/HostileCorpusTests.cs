using System.Diagnostics;
using IlgpuDiffSeg.Fuzz;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Tests.IO;

/// <summary>
/// Issue #13's failure classes, one file each, through every reader: tests/fixtures/hostile (written by
/// tests/hostile/make_corpus.py, crash_* files added by fuzzing). ok_* must be accepted, bad_* and crash_bad_* refused
/// with a <see cref="DiffSegException"/> naming the file (and the phrase expect.tsv gives), any_* and other crash_* either;
/// nothing else may escape,
/// no file may take more than a few seconds, and no pickle gadget may run.
/// </summary>
public sealed class HostileCorpusTests
{
    const string GadgetMarker = "/tmp/diffseg_pickle_gadget_ran";

    static string Root => Path.Combine(Fixtures.Root, "hostile");

    static readonly Dictionary<string, string> Phrases = File.ReadAllLines(Path.Combine(Root, "expect.tsv"))
        .Where(l => l.Length > 0 && !l.StartsWith('#'))
        .Select(l => l.Split('\t'))
        .ToDictionary(p => p[0], p => p[1]);

    public static TheoryData<string> Files()
    {
        var data = new TheoryData<string>();
        foreach (var target in Target.All)
        {
            foreach (var f in Directory.GetFiles(Path.Combine(Root, target.Corpus)).Order(StringComparer.Ordinal))
            {
                data.Add($"{target.Corpus}/{Path.GetFileName(f)}");
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Files))]
    public void ReaderKeepsTheContract(string file)
    {
        var target = Target.All.First(t => file.StartsWith(t.Corpus + "/", StringComparison.Ordinal));
        string path = Path.Combine(Root, file);
        string name = Path.GetFileName(file);
        var sw = Stopwatch.StartNew();
        DiffSegException? refused = null;
        try
        {
            target.Read(path);
        }
        catch (DiffSegException e)
        {
            refused = e;
        }
        Assert.True(sw.Elapsed.TotalSeconds < 10, $"{file} took {sw.Elapsed.TotalSeconds:F1} s");
        Assert.False(File.Exists(GadgetMarker), "a pickle gadget ran");
        if (name.StartsWith("ok_", StringComparison.Ordinal))
        {
            Assert.True(refused is null, $"{file} was refused: {refused?.Message}");
            return;
        }
        if (name.StartsWith("bad_", StringComparison.Ordinal) || name.StartsWith("crash_bad_", StringComparison.Ordinal))
        {
            Assert.True(refused is not null, $"{file} was accepted");
        }
        if (refused is not null)
        {
            Assert.Contains(path, refused.Message);
            Assert.DoesNotContain('\n', refused.Message);
            if (Phrases.TryGetValue(file, out var phrase))
            {
                Assert.Contains(phrase, refused.Message);
            }
        }
    }

    [Fact]
    public void ExpectedPhrasesNameExistingFiles()
    {
        foreach (var file in Phrases.Keys)
        {
            Assert.True(File.Exists(Path.Combine(Root, file)), $"expect.tsv names {file}, which is not in the corpus");
        }
    }

    /// <summary>Class 2 without a big file in the repository: inputs past the readers' size limits, and endless devices.</summary>
    [Fact]
    public void OversizedAndEndlessInputsAreRefusedWithoutReadingThemWhole()
    {
        using var tmp = new TempDir();
        string flags = tmp.File("flags.json");
        File.WriteAllText(flags, new string(' ', 2 << 20) + "{}");
        Assert.Contains("larger than", Assert.Throws<DiffSegException>(() => AdmFlags.Load(flags)).Message);
        string config = tmp.File("exp.json");
        File.WriteAllText(config, "{\"category\": \"" + new string('a', 2 << 20) + "\"}");
        Assert.Contains("larger than", Assert.Throws<DiffSegException>(() => ExperimentConfig.Load(config)).Message);
        if (File.Exists("/dev/zero"))
        {
            Assert.Contains("larger than", Assert.Throws<DiffSegException>(() => ExperimentConfig.Load("/dev/zero")).Message);
            Assert.Contains("/dev/zero", Assert.Throws<DiffSegException>(() => Npy.Read("/dev/zero")).Message);
            Assert.Contains("/dev/zero", Assert.Throws<DiffSegException>(() => TorchCheckpoint.Open("/dev/zero")).Message);
            Assert.Contains("/dev/zero", Assert.Throws<DiffSegException>(() => SafetensorsFile.Open("/dev/zero")).Message);
        }
        Assert.Contains("is a folder", Assert.Throws<DiffSegException>(() => Npy.Read(tmp.Path)).Message);
        Assert.Contains("is a folder", Assert.Throws<DiffSegException>(() => TorchCheckpoint.Open(tmp.Path)).Message);
    }

    /// <summary>A folder whose links lead back to itself or to the whole file system is refused, not walked for ever.</summary>
    [Fact]
    public void ImageFolderWalkIsBounded()
    {
        using var tmp = new TempDir();
        Directory.CreateDirectory(tmp.File("data/sub"));
        File.WriteAllBytes(tmp.File("data/sub/a.png"), [1]);
        File.CreateSymbolicLink(tmp.File("data/sub/loop"), tmp.File("data"));
        var found = IlgpuDiffSeg.Data.ImageData.ListImages(tmp.File("data"));
        Assert.Equal([tmp.File("data/sub/a.png")], found);
        if (Directory.Exists("/proc/self/root"))
        {
            var e = Assert.Throws<DiffSegException>(() => IlgpuDiffSeg.Data.ImageData.ListImages("/proc/self"));
            Assert.StartsWith("/proc/self: ", e.Message);
        }
    }
}
