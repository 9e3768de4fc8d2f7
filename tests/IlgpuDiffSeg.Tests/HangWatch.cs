using System.Collections.Concurrent;
using System.Diagnostics;
using System.Reflection;
using Xunit.v3;

[assembly: IlgpuDiffSeg.Tests.HangWatch]

namespace IlgpuDiffSeg.Tests;

/// <summary>
/// Ends a run in which nothing has started or finished for $DIFFSEG_TEST_HANG_MINUTES (default 15; the slowest test takes
/// about a minute on 2 cores): it names the tests still running, prints every thread's managed stack when dotnet-stack
/// is found ($DIFFSEG_DOTNET_STACK, or on PATH; .ci/run installs it), and fails fast. A kernel that never returns would
/// otherwise hold CI for its whole 90 minutes and print nothing but the runner's first line.
/// </summary>
[AttributeUsage(AttributeTargets.Assembly)]
public sealed class HangWatchAttribute : BeforeAfterTestAttribute
{
    static readonly ConcurrentDictionary<string, string> Running = new();
    static readonly Stopwatch SinceLastEvent = Stopwatch.StartNew();
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(
        double.TryParse(Environment.GetEnvironmentVariable("DIFFSEG_TEST_HANG_MINUTES"), System.Globalization.CultureInfo.InvariantCulture,
            out var minutes) && minutes > 0 ? minutes : 15);
    static readonly Timer Watch = new(_ => Check(), null, TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(10));
    static string lastFinished = "none";

    /// <summary>Starts the watch with the process, so a hang before the first test (a fixture's device) counts too.</summary>
    [System.Runtime.CompilerServices.ModuleInitializer]
    internal static void StartWithTheProcess() => SinceLastEvent.Restart();

    public override void Before(MethodInfo methodUnderTest, IXunitTest test)
    {
        Running[test.UniqueID] = test.TestDisplayName;
        SinceLastEvent.Restart();
    }

    public override void After(MethodInfo methodUnderTest, IXunitTest test)
    {
        Running.TryRemove(test.UniqueID, out _);
        lastFinished = test.TestDisplayName;
        SinceLastEvent.Restart();
    }

    static void Check()
    {
        if (SinceLastEvent.Elapsed < Limit)
        {
            return;
        }
        Watch.Dispose();
        var what = Running.IsEmpty
            ? $"no test has started for {Limit.TotalMinutes:0.#} min (the last to finish: {lastFinished})"
            : $"still running after {Limit.TotalMinutes:0.#} min: {string.Join("; ", Running.Values)}";
        var message = $"test run hung: {what}";
        // The process's own stderr: the CLI tests redirect Console.Error while they run.
        using (var stderr = new StreamWriter(Console.OpenStandardError()))
        {
            stderr.WriteLine(message);
            stderr.WriteLine(ThreadStacks());
        }
        Environment.FailFast(message);
    }

    /// <summary>Each distinct managed stack of this process once, with how many threads share it.</summary>
    static string ThreadStacks()
    {
        var tool = Environment.GetEnvironmentVariable("DIFFSEG_DOTNET_STACK") ?? "dotnet-stack";
        try
        {
            using var p = Process.Start(new ProcessStartInfo(tool, $"report -p {Environment.ProcessId}")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            })!;
            var report = p.StandardOutput.ReadToEndAsync();
            if (!p.WaitForExit(120_000))
            {
                p.Kill();
                return "dotnet-stack did not answer within 2 min";
            }
            var threads = report.Result.Replace("\r", "").Split("\n\n", StringSplitOptions.RemoveEmptyEntries)
                .Select(block => string.Join("\n", block.Split('\n').Skip(1)))
                .GroupBy(stack => stack)
                .OrderByDescending(g => g.Key.Contains("!IlgpuDiffSeg."))
                .Select(g => $"{g.Count()} thread(s):\n{g.Key}");
            return "managed stacks:\n" + string.Join("\n\n", threads);
        }
        catch (Exception e)
        {
            return $"no thread stacks ({tool}: {e.Message})";
        }
    }
}
