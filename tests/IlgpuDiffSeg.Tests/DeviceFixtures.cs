using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests;

/// <summary>One CPU-accelerator device for the whole run: contexts cost ~150 ms and kernels compile once per device.</summary>
public sealed class CpuDeviceFixture : IDisposable
{
    public ComputeDevice Device { get; } = ComputeDevice.Create(DeviceChoice.Cpu);

    public void Dispose() => Device.Dispose();
}

/// <summary>The CPU accelerator with the host SIMD backend for Gemm and Conv2d (what `--device cpu` uses).</summary>
public sealed class CpuSimdDeviceFixture : IDisposable
{
    public ComputeDevice Device { get; } = CreateDevice();

    static ComputeDevice CreateDevice()
    {
        var d = ComputeDevice.Create(DeviceChoice.Cpu);
        d.HostKernels = true;
        return d;
    }

    public void Dispose() => Device.Dispose();
}

/// <summary>The CPU accelerator with a warp-32, 1024-thread-group shape: for kernels that need GPU-sized groups (TiledGemm).</summary>
public sealed class CpuWarp32DeviceFixture : IDisposable
{
    public ComputeDevice Device { get; } = ComputeDevice.Create(DeviceChoice.Cpu, cpuShape: ILGPU.Runtime.CPU.CPUDevice.Nvidia);

    public void Dispose() => Device.Dispose();
}

/// <summary>The CUDA device when this machine has one; null otherwise, and the CUDA test classes skip.</summary>
public sealed class CudaDeviceFixture : IDisposable
{
    public ComputeDevice? Device { get; } = ComputeDevice.CudaAvailable() ? ComputeDevice.Create(DeviceChoice.Cuda) : null;

    public void Dispose() => Device?.Dispose();
}

// No two test collections run at once either (xunit.runner.json): the CLI tests open ILGPU devices of their own, and with
// contexts created, used and disposed concurrently in one process the warp-32 CPU accelerator returned an all-zero result
// once in four full runs (a tensor-core Gemm test that passes alone every time).
// Device tests run one class at a time: the ILGPU accelerators are not meant for concurrent launches from
// several test threads, and the CPU accelerator already uses every core.
[CollectionDefinition("cpu")]
public sealed class CpuCollection : ICollectionFixture<CpuDeviceFixture>, ICollectionFixture<CpuSimdDeviceFixture>,
    ICollectionFixture<CpuWarp32DeviceFixture>;

[CollectionDefinition("cuda")]
public sealed class CudaCollection : ICollectionFixture<CudaDeviceFixture>;

/// <summary>A device's UNet kernel set for one scope and restored after it: the fixtures' devices are shared by classes.</summary>
public readonly struct MatmulScope : IDisposable
{
    readonly ComputeDevice device;
    readonly MatmulKernel before;

    public MatmulScope(ComputeDevice device, MatmulKernel kernel)
    {
        this.device = device;
        before = device.UNetMatmul;
        device.UNetMatmul = kernel;
    }

    public void Dispose() => device.UNetMatmul = before;
}
