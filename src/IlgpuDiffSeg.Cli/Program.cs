using System.CommandLine;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("IlgpuDiffSeg: label-efficient semantic segmentation with diffusion models (DDPM-seg), on ILGPU.");
        root.Options.Add(CommonOptions.Device);
        root.Options.Add(CommonOptions.CpuBackend);
        root.Options.Add(CommonOptions.Precision);
        root.Subcommands.Add(InfoCommand.Create());
        root.Subcommands.Add(ConvertCommand.Create());
        root.Subcommands.Add(ExportCommand.Create());
        root.Subcommands.Add(UNetCommand.Create());
        root.Subcommands.Add(LossCommand.Create());
        root.Subcommands.Add(TrainDdpmCommand.Create());
        root.Subcommands.Add(SampleCommand.Create());
        root.Subcommands.Add(SynthesizeCommand.Create());
        root.Subcommands.Add(PipelineCommands.Features());
        root.Subcommands.Add(PipelineCommands.Train());
        root.Subcommands.Add(PipelineCommands.Evaluate());
        root.Subcommands.Add(PipelineCommands.Predict());
        root.Subcommands.Add(DemoCommand.Create());
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            // One line, not the whole help: which argument is wrong, and where the help is.
            string command = parsed.CommandResult.Command == root ? "" : " " + parsed.CommandResult.Command.Name;
            var messages = parsed.Errors
                .Select(e => System.Text.RegularExpressions.Regex.Replace(e.Message, @"\s+", " ").Trim().TrimEnd('.'))
                .Select(m => AfterOption(m, args));
            Console.Error.WriteLine($"error: {string.Join("; ", messages)} (see 'diffseg{command} --help')");
            // Exit 1 like every other bad input; 2 is kept for internal errors, so scripts can tell the two apart.
            return 1;
        }
        return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
    }

    /// <summary>
    /// "Unrecognized command or argument 'maybe'" right after an option (a flag's value it cannot parse, as in
    /// --clip-denoised maybe) also names that option.
    /// </summary>
    static string AfterOption(string message, string[] args)
    {
        var m = System.Text.RegularExpressions.Regex.Match(message, "^Unrecognized command or argument '(.*)'$");
        int i = m.Success ? Array.IndexOf(args, m.Groups[1].Value) : -1;
        return i > 0 && args[i - 1].StartsWith('-') ? $"{args[i - 1]} '{m.Groups[1].Value}': not a value it takes ({message})" : message;
    }

    /// <summary>
    /// Runs a command body and turns every failure into one line on stderr and exit code 1: a user's mistake is
    /// reported as "error: FILE: problem", never as a stack trace (DIFFSEG_DEBUG=1 shows one for bugs). Whatever the
    /// body wrote is removed again when it fails (an <see cref="IlgpuDiffSeg.IO.OutputScope"/>), so no command leaves
    /// part of its output behind.
    /// </summary>
    public static int Run(Action body)
    {
        using var outputs = IlgpuDiffSeg.IO.OutputScope.Begin();
        try
        {
            body();
            outputs.Commit();
            return 0;
        }
        catch (DiffSegException e)
        {
            Console.Error.WriteLine($"error: {OneLine(e.Message)}");
        }
        catch (DeviceUnavailableException e)
        {
            Console.Error.WriteLine($"error: {OneLine(e.Message)}");
        }
        catch (IlgpuDiffSeg.Pipeline.TrainingInterruptedException e)
        {
            outputs.Commit();
            Console.Error.WriteLine(e.Message);
            return 130;
        }
        catch (IlgpuDiffSeg.Training.TrainingStoppedException e)
        {
            // A stop request (Ctrl+C) ends at a safe point: what was written is complete, and the same command resumes from it.
            outputs.Commit();
            Console.Error.WriteLine(e.Message);
            return 130;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"error: {OneLine(e.Message)}");
        }
        catch (Exception e) when (Environment.GetEnvironmentVariable("DIFFSEG_DEBUG") != "1")
        {
            Console.Error.WriteLine($"internal error: {e.GetType().Name}: {e.Message.Split('\n')[0]} (set DIFFSEG_DEBUG=1 for details)");
            return 2;
        }
        return 1;
    }

    /// <summary>The contract is one line: a message from a library that spans several keeps its first.</summary>
    static string OneLine(string message) => message.Split('\n')[0].TrimEnd('\r', ' ', ':');
}

/// <summary>Options shared by several commands.</summary>
public static class CommonOptions
{
    public static readonly Option<string> Device = new("--device")
    {
        Description = "Accelerator: auto (CUDA if present, else CPU), cpu (ILGPU's CPU accelerator) or cuda",
        DefaultValueFactory = _ => "auto",
        Recursive = true,
    };

    public static readonly Option<string> CpuBackend = new("--cpu-backend")
    {
        Description = "Without a GPU: simd runs convolutions and matrix products on the host's SIMD units (fast); ilgpu runs " +
                      "every op as an ILGPU kernel on the CPU accelerator",
        DefaultValueFactory = _ => "simd",
        Recursive = true,
    };

    public static readonly Option<string> Precision = new("--precision")
    {
        Description = "UNet matrix products: fp32, or fp16 operands with fp32 sums on tensor cores (the original's use_fp16); " +
                      "on the CPU the SIMD backend rounds the same operands",
        DefaultValueFactory = _ => "fp32",
        Recursive = true,
    };

    static CommonOptions()
    {
        OneOf(Device, "auto", "cpu", "cuda");
        OneOf(CpuBackend, "simd", "ilgpu");
        OneOf(Precision, "fp32", "fp16");
    }

    /// <summary>Accepts only <paramref name="values"/>, refusing anything else with a message that names the option.</summary>
    public static void OneOf(Option<string> option, params string[] values)
    {
        option.Validators.Add(result =>
        {
            string? value = result.Tokens.Count > 0 ? result.Tokens[^1].Value : null;
            if (value is not null && !values.Contains(value, StringComparer.Ordinal))
            {
                result.AddError($"{option.Name} '{value}': expected {string.Join(", ", values.SkipLast(1))} or {values[^1]}");
            }
        });
        option.CompletionSources.Add(values);
    }

    public static DeviceChoice DeviceChoiceOf(ParseResult r) => r.GetValue(Device) switch
    {
        "cpu" => DeviceChoice.Cpu,
        "cuda" => DeviceChoice.Cuda,
        _ => DeviceChoice.Auto,
    };

    /// <summary>
    /// Opens the device --device names and chooses, once, how models run on it (--precision, --cpu-backend); prints both.
    /// </summary>
    public static ComputeDevice OpenDevice(ParseResult r, out ExecutionPlan plan)
    {
        var dev = ComputeDevice.Create(DeviceChoiceOf(r), hostKernels: r.GetValue(CpuBackend) == "simd");
        try
        {
            var precision = r.GetValue(Precision) == "fp16" ? Kernels.Precision.Fp16 : Kernels.Precision.Fp32;
            plan = ExecutionPlan.For(dev, precision);
        }
        catch (ArgumentException e)
        {
            dev.Dispose();
            throw new DiffSegException($"--precision {r.GetValue(Precision)} with --cpu-backend {r.GetValue(CpuBackend)}: {e.Message}");
        }
        Console.Error.WriteLine($"device: {plan.Describe()}");
        return dev;
    }

    public static Option<string> Required(string name, string description) => new(name) { Description = description, Required = true };
}
