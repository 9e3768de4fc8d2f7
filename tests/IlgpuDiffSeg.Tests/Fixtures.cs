namespace IlgpuDiffSeg.Tests;

/// <summary>The golden files the tests compare against: tests/fixtures, kept in the repository.</summary>
public static class Fixtures
{
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary>The checkout: $DIFFSEG_REPO, or above the test binaries, or above the working directory.</summary>
    static string FindRepoRoot()
    {
        foreach (var start in new[] { Environment.GetEnvironmentVariable("DIFFSEG_REPO"), AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
        {
            if (string.IsNullOrEmpty(start) || !Directory.Exists(start))
            {
                continue;
            }
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "IlgpuDiffSeg.sln")))
                {
                    return dir.FullName;
                }
            }
        }
        throw new DirectoryNotFoundException("IlgpuDiffSeg.sln not found above the test binaries or the working directory");
    }

    /// <summary>tests/fixtures in the checkout, or $DIFFSEG_FIXTURES (a copy elsewhere, e.g. beside a published test binary).</summary>
    public static string Root
    {
        get
        {
            var env = Environment.GetEnvironmentVariable("DIFFSEG_FIXTURES");
            string dir = string.IsNullOrEmpty(env) ? Path.Combine(RepoRoot, "tests", "fixtures") : env;
            return Directory.Exists(dir) ? dir : throw new DirectoryNotFoundException($"fixtures not found: {dir}");
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
