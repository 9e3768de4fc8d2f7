namespace IlgpuDiffSeg.Tests;

/// <summary>
/// The test executable's entry point (in place of xunit's generated one, which it otherwise repeats): `bench ARGS` runs the
/// benchmarks' command line, so a GPU machine without the .NET SDK gets the tests and the benchmarks in one self-contained
/// publish and one runtime (benchmarks/device/pack.sh); anything else runs the tests.
/// </summary>
public static class EntryPoint
{
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "bench")
        {
            return Benchmarks.Program.Main(args[1..]);
        }
        if (args.Any(arg => arg == "--server" || arg == "--internal-msbuild-node"))
        {
            return Xunit.MicrosoftTestingPlatform.TestPlatformTestFramework
                .RunAsync(args, SelfRegisteredExtensions.AddSelfRegisteredExtensions).GetAwaiter().GetResult();
        }
        return Xunit.Runner.InProc.SystemConsole.ConsoleRunner.Run(args).GetAwaiter().GetResult();
    }
}
