namespace IlgpuDiffSeg.Tests;

/// <summary>Locates ../shared/fixtures (beside the checkout), shared/fixtures (inside it) or $DIFFSEG_FIXTURES.</summary>
public static class Fixtures
{
    public static string RepoRoot { get; } = FindRepoRoot();

    static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "IlgpuDiffSeg.sln")))
        {
            dir = dir.Parent;
        }
        return dir?.FullName ?? throw new DirectoryNotFoundException("IlgpuDiffSeg.sln not found above the test binaries");
    }

    public static string Root
    {
        get
        {
            var env = Environment.GetEnvironmentVariable("DIFFSEG_FIXTURES");
            var candidates = new[]
            {
                env ?? "",
                Path.Combine(RepoRoot, "shared", "fixtures"),
                Path.Combine(RepoRoot, "..", "shared", "fixtures"),
            };
            return candidates.FirstOrDefault(c => c != "" && Directory.Exists(c))
                   ?? throw new DirectoryNotFoundException("fixtures not found: expected ../shared/fixtures beside the checkout");
        }
    }

    public static string AdmTiny(string file) => Path.Combine(Root, "adm-tiny", file);
}

/// <summary>A temporary folder removed at dispose.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("diffseg-test-").FullName;

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
