namespace IlgpuDiffSeg.Tests.Cli;

// The CLI tests redirect Console, so they run alone.
[CollectionDefinition("console", DisableParallelization = true)]
public sealed class ConsoleCollection;

/// <summary>Runs the diffseg entry point in-process and captures what it prints.</summary>
public static class CliRunner
{
    public sealed record Result(int ExitCode, string Out, string Error)
    {
        public string[] ErrorLines => Error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    public static Result Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        Console.SetOut(stdout);
        Console.SetError(stderr);
        try
        {
            int code = IlgpuDiffSeg.Cli.Program.Main(args);
            return new Result(code, stdout.ToString(), stderr.ToString());
        }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetError(oldErr);
        }
    }

    /// <summary>
    /// The contract for a command that fails after it began (progress lines first): exit code 1, and the last stderr line
    /// the only "error: …" one, mentioning <paramref name="mentions"/>.
    /// </summary>
    public static void AssertErrorLast(Result r, params string[] mentions)
    {
        Assert.Equal(1, r.ExitCode);
        Assert.True(r.ErrorLines.Count(l => l.StartsWith("error: ", StringComparison.Ordinal)) == 1 &&
                    r.ErrorLines[^1].StartsWith("error: ", StringComparison.Ordinal), $"expected one last error line, got:\n{r.Error}");
        foreach (var m in mentions)
        {
            Assert.Contains(m, r.ErrorLines[^1]);
        }
    }

    /// <summary>Exit code non-zero, exactly one stderr line "error: …" mentioning <paramref name="mentions"/>.</summary>
    public static void AssertOneLineError(Result r, params string[] mentions)
    {
        Assert.NotEqual(0, r.ExitCode);
        var lines = r.ErrorLines.Where(l => !l.StartsWith("device:", StringComparison.Ordinal)).ToArray();
        Assert.True(lines.Length == 1, $"expected one error line, got:\n{r.Error}");
        Assert.StartsWith("error: ", lines[0]);
        foreach (var m in mentions)
        {
            Assert.Contains(m, lines[0]);
        }
    }
}
