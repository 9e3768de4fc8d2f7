using IlgpuDiffSeg.Fuzz;
using SharpFuzz;

// IlgpuDiffSeg.Fuzz afl TARGET          under afl-fuzz, the assembly instrumented by SharpFuzz (see fuzz.sh)
// IlgpuDiffSeg.Fuzz libfuzzer TARGET    under libfuzzer-dotnet
// IlgpuDiffSeg.Fuzz replay TARGET FILE… read each file once; prints every finding, exit 1 if any
// IlgpuDiffSeg.Fuzz show TARGET FILE…   what the reader says about each file
// IlgpuDiffSeg.Fuzz big-npy DIR          writes and reads a 2.2 GB .npy (run with a heap limit: see BigNpy.cs)
// IlgpuDiffSeg.Fuzz lsun256-model PATH   writes the LSUN-256 UNet with random weights (2.2 GB)
// Targets: npy, pt, safetensors, image, mask, flags, config (Targets.cs).
if (args.Length == 2 && args[0] == "big-npy")
{
    return BigNpy.Run(args[1]);
}
if (args.Length == 2 && args[0] == "lsun256-model")
{
    return Lsun256.WriteModel(args[1]);
}
if (args.Length < 2)
{
    Console.Error.WriteLine("usage: IlgpuDiffSeg.Fuzz afl|libfuzzer|replay TARGET [FILE…]; targets: " +
                            string.Join(", ", Target.All.Select(t => t.Name)));
    return 2;
}
var target = Target.Get(args[1]);
// The readers take paths: each input is written to this process's own scratch file first.
string scratch = Path.Combine(Path.GetTempPath(), $"diffseg-fuzz-{Environment.ProcessId}{target.Extension}");
void RunOne(ReadOnlySpan<byte> data)
{
    File.WriteAllBytes(scratch, data.ToArray());
    if (target.Check(scratch) is { } finding)
    {
        throw new InvalidOperationException(finding);
    }
}
switch (args[0])
{
    case "afl":
        Fuzzer.OutOfProcess.Run(stream =>
        {
            using var copy = new MemoryStream();
            stream.CopyTo(copy);
            RunOne(copy.ToArray());
        });
        return 0;
    case "libfuzzer":
        Fuzzer.LibFuzzer.Run(span => RunOne(span));
        return 0;
    case "replay":
        int findings = 0;
        foreach (var file in args.Skip(2))
        {
            try
            {
                RunOne(File.ReadAllBytes(file));
            }
            catch (Exception e)
            {
                findings++;
                Console.WriteLine($"{file}: {e.GetType().Name}: {e.Message.Split('\n')[0]}");
            }
        }
        File.Delete(scratch);
        Console.WriteLine($"{args.Length - 2} files, {findings} findings");
        return findings == 0 ? 0 : 1;
    case "show":
        foreach (var file in args.Skip(2))
        {
            try
            {
                target.Read(file);
                Console.WriteLine($"accepted: {file}");
            }
            catch (Exception e)
            {
                Console.WriteLine($"{e.GetType().Name}: {e.Message.Split('\n')[0]}");
            }
        }
        return 0;
    default:
        Console.Error.WriteLine($"unknown mode '{args[0]}'");
        return 2;
}
