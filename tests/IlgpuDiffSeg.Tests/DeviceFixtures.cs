using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests;

/// <summary>One CPU-accelerator device for the whole run: contexts cost ~150 ms and kernels compile once per device.</summary>
public sealed class CpuDeviceFixture : IDisposable
{
    public CpuDeviceFixture() => Plan = ExecutionPlan.With(Device, MatmulKernel.Registers);

    public ComputeDevice Device { get; } = ComputeDevice.Create(DeviceChoice.Cpu);

    /// <summary>Every op an ILGPU kernel on the CPU accelerator (--cpu-backend ilgpu).</summary>
    public ExecutionPlan Plan { get; }

    public void Dispose() => Device.Dispose();
}

/// <summary>The CPU accelerator with the host SIMD backend for the products (what `--device cpu` uses).</summary>
public sealed class CpuSimdDeviceFixture : IDisposable
{
    public CpuSimdDeviceFixture() => Plan = ExecutionPlan.For(Device);

    /// <summary>The CPU backend: kernels run as host code, products on the host's SIMD units.</summary>
    public ComputeDevice Device { get; } = ComputeDevice.Create(DeviceChoice.Cpu, hostKernels: true);

    public ExecutionPlan Plan { get; }

    public void Dispose() => Device.Dispose();
}

/// <summary>The CPU accelerator with a warp-32, 1024-thread-group shape: for kernels that need GPU-sized groups (TiledGemm).</summary>
public sealed class CpuWarp32DeviceFixture : IDisposable
{
    public CpuWarp32DeviceFixture() => Plan = ExecutionPlan.With(Device, MatmulKernel.Registers);

    public ComputeDevice Device { get; } = ComputeDevice.Create(DeviceChoice.Cpu, cpuShape: ILGPU.Runtime.CPU.CPUDevice.Nvidia);

    public ExecutionPlan Plan { get; }

    public void Dispose() => Device.Dispose();
}

/// <summary>The CUDA device when this machine has one; null otherwise, and the CUDA test classes skip.</summary>
public sealed class CudaDeviceFixture : IDisposable
{
    public CudaDeviceFixture() => Plan = Device is null ? null : ExecutionPlan.For(Device);

    public ComputeDevice? Device { get; } = ComputeDevice.CudaAvailable() ? ComputeDevice.Create(DeviceChoice.Cuda) : null;

    public ExecutionPlan? Plan { get; }

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

public static class TestPlans
{
    /// <summary>
    /// The kernel a test of version <paramref name="version"/> (1–4: v1 … v4) runs under <paramref name="plan"/>: that
    /// ILGPU kernel, or on the host SIMD backend its host counterpart (fp16-rounded operands for v4).
    /// </summary>
    public static MatmulKernel Kernel(this ExecutionPlan plan, int version)
    {
        if (plan.OnHost)
        {
            return version == 4 ? MatmulKernel.HostSimdFp16 : MatmulKernel.HostSimd;
        }
        return version switch
        {
            1 => MatmulKernel.Direct,
            2 => MatmulKernel.Registers,
            3 => MatmulKernel.Tiled,
            4 => MatmulKernel.TensorCoreFp16,
            _ => throw new ArgumentOutOfRangeException(nameof(version)),
        };
    }

    /// <summary>The same device with the UNet products on <paramref name="kernel"/> (norms fused where the kernel allows).</summary>
    public static ExecutionPlan With(this ExecutionPlan plan, MatmulKernel kernel, bool fuseNorms = true) =>
        ExecutionPlan.With(plan.Device, kernel, fuseNorms);
}
