using System.CommandLine;
using ILGPU;
using ILGPU.Runtime.Cuda;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Cli;

/// <summary>diffseg info: the accelerators this machine offers and which one a run would use.</summary>
public static class InfoCommand
{
    public static Command Create()
    {
        var cmd = new Command("info", "List the accelerators ILGPU sees (device, compute capability, memory, driver)");
        cmd.SetAction(r => Program.Run(() =>
        {
            Console.WriteLine($"IlgpuDiffSeg {typeof(InfoCommand).Assembly.GetName().Version} on .NET {Environment.Version}, " +
                              $"{Environment.ProcessorCount} CPU cores");
            if (ComputeDevice.CudaAvailable())
            {
                using var context = Context.Create(b => b.Cuda());
                foreach (var d in context.GetCudaDevices())
                {
                    Console.WriteLine($"cuda[{d.DeviceId}]: {d.Name}, compute {d.Architecture?.Major}.{d.Architecture?.Minor}, " +
                                      $"{d.MemorySize / (1024.0 * 1024 * 1024):F1} GiB, {d.NumMultiprocessors} SMs, " +
                                      $"driver {d.DriverVersion.Major}.{d.DriverVersion.Minor}");
                }
            }
            else
            {
                Console.WriteLine("cuda: none (no NVIDIA driver / libcuda.so.1, or no device)");
            }
            Console.WriteLine($"cpu: ILGPU CPU accelerator (simulated warp 32), always available");
            using var dev = ComputeDevice.Create(CommonOptions.DeviceChoiceOf(r));
            Console.WriteLine($"selected (--device {r.GetValue(CommonOptions.Device)}): {dev.Describe()}");
        }));
        return cmd;
    }
}
