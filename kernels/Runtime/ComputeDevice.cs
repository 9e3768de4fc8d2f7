using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace IlgpuDiffSeg.Kernels;

/// <summary>Which accelerator to run on. Auto takes CUDA when a device is present, else ILGPU's CPU accelerator.</summary>
public enum DeviceChoice
{
    Auto,
    Cpu,
    Cuda,
}

/// <summary>
/// One ILGPU context and accelerator, the kernels loaded on it, and a pool of device buffers.
/// Every op's launcher takes a ComputeDevice; all work goes to its default stream, in order,
/// so a pooled buffer may be reused by a later launch without waiting for the earlier ones.
/// </summary>
public sealed class ComputeDevice : IDisposable
{
    static int resolverInstalled;

    readonly Dictionary<(System.Reflection.MethodInfo, Type), object> kernelCache = new();
    readonly BufferPool pool;

    public Context Context { get; }
    public Accelerator Accelerator { get; }
    public bool IsCuda => Accelerator.AcceleratorType == AcceleratorType.Cuda;
    public bool IsCpu => Accelerator.AcceleratorType == AcceleratorType.CPU;

    long trackedBytes, peakBytes;

    /// <summary>Device bytes held now by this program (tensor pool and every DeviceBuffer), and the peak since creation.</summary>
    public long DeviceBytes => Interlocked.Read(ref trackedBytes);
    public long PeakDeviceBytes => Interlocked.Read(ref peakBytes);

    /// <summary>Counts an allocation (positive) or a release (negative) in the device's memory figures.</summary>
    internal void Track(long bytes)
    {
        long now = Interlocked.Add(ref trackedBytes, bytes);
        long peak;
        while (now > (peak = Interlocked.Read(ref peakBytes)) && Interlocked.CompareExchange(ref peakBytes, now, peak) != peak)
        {
        }
    }

    /// <summary>Forgets the peak so far (for measuring one phase).</summary>
    public void ResetPeak() => Interlocked.Exchange(ref peakBytes, DeviceBytes);

    /// <summary>A tracked device allocation of <paramref name="length"/> elements; the caller disposes it.</summary>
    public DeviceBuffer<T> Buffer<T>(long length) where T : unmanaged => new(this, length);

    /// <summary>A tracked device allocation holding <paramref name="values"/>.</summary>
    public DeviceBuffer<T> Buffer<T>(ReadOnlySpan<T> values) where T : unmanaged
    {
        var b = new DeviceBuffer<T>(this, values.Length);
        b.CopyFrom(values);
        return b;
    }

    ComputeDevice(Context context, Accelerator accelerator, bool hostKernels)
    {
        Context = context;
        Accelerator = accelerator;
        RunsKernelsOnHost = hostKernels && accelerator.AcceleratorType == AcceleratorType.CPU;
        pool = new BufferPool(accelerator, Track);
    }

    /// <summary>
    /// The CPU accelerator's simulated shape. Every launch wakes each simulated thread's OS thread, so the Nvidia-like
    /// shape (warp 32, 1024 threads a group) costs ~6 ms a launch here against ~0.1 ms for this lean one; the kernels
    /// launched on the CPU use no warp intrinsics and accept any warp size.
    /// </summary>
    public static CPUDevice LeanCpu => new(numThreadsPerWarp: 2, numWarpsPerMultiprocessor: 2,
        numMultiprocessors: Math.Max(1, Environment.ProcessorCount));

    /// <summary>
    /// The CPU backend: on the CPU accelerator, implicitly grouped kernels run as host code over the thread pool (HostLaunch:
    /// the same kernel methods, so the same bits, at JIT speed), and models run their products on the host's SIMD units
    /// (ExecutionPlan.For). Chosen when the device is created; false on CUDA.
    /// </summary>
    public bool RunsKernelsOnHost { get; }

    /// <summary>
    /// Creates the context and accelerator (CUDA device <paramref name="cudaIndex"/> where CUDA is used). Throws
    /// DeviceUnavailableException when CUDA is forced but absent. <paramref name="hostKernels"/>: where the CPU accelerator
    /// is chosen, run it as the CPU backend (RunsKernelsOnHost).
    /// </summary>
    public static ComputeDevice Create(DeviceChoice choice = DeviceChoice.Auto, bool profiling = false, CPUDevice? cpuShape = null,
        bool hostKernels = false, int cudaIndex = 0)
    {
        InstallLibCudaResolver();
        var context = Context.Create(builder =>
        {
            builder.Optimize(OptimizationLevel.O2).EnableAlgorithms();
            if (choice != DeviceChoice.Cpu)
            {
                builder.Cuda();
            }
            builder.CPU(cpuShape ?? LeanCpu);
            if (profiling)
            {
                builder.Profiling();
            }
        });
        try
        {
            var cudaDevices = context.GetCudaDevices();
            var cpuDevices = context.GetCPUDevices();
            Device? cuda = cudaDevices.Count > cudaIndex ? cudaDevices[cudaIndex] : null;
            Device? cpu = cpuDevices.Count > 0 ? cpuDevices[0] : null;
            Device? device = choice switch
            {
                DeviceChoice.Cpu => cpu,
                DeviceChoice.Cuda => cuda,
                _ => cuda ?? cpu,
            };
            if (device is null)
            {
                throw new DeviceUnavailableException(choice == DeviceChoice.Cuda
                    ? "no CUDA device found (is the NVIDIA driver's libcuda.so.1 installed?)"
                    : "no ILGPU device found");
            }
            return new ComputeDevice(context, device.CreateAccelerator(context), hostKernels);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>True when a CUDA device can be opened on this machine.</summary>
    public static bool CudaAvailable() => CudaDeviceCount() > 0;

    /// <summary>How many CUDA devices this machine has (0 without a driver).</summary>
    public static int CudaDeviceCount()
    {
        InstallLibCudaResolver();
        try
        {
            using var context = Context.Create(b => b.Cuda());
            return context.GetCudaDevices().Count;
        }
        catch (Exception)
        {
            return 0;
        }
    }

    /// <summary>One line naming the device, for logs and benchmark results.</summary>
    public string Describe()
    {
        if (Accelerator is CudaAccelerator cuda)
        {
            return $"{cuda.Name} (CUDA, compute {cuda.Architecture.Major}.{cuda.Architecture.Minor}, " +
                   $"{cuda.MemorySize / (1024.0 * 1024 * 1024):F1} GiB, driver {cuda.DriverVersion.Major}.{cuda.DriverVersion.Minor})";
        }
        return RunsKernelsOnHost
            ? $"CPU ({Environment.ProcessorCount} cores): host SIMD products, ILGPU kernels run as host code"
            : $"ILGPU CPU accelerator ({Environment.ProcessorCount} cores, warp {Accelerator.WarpSize}, simulated GPU threads)";
    }

    // ILGPU imports "cuda"; .NET probes libcuda.so but not the driver's libcuda.so.1, so without this a
    // driver-only machine silently shows no CUDA device. ILGPU installs its own resolver on WSL.
    static void InstallLibCudaResolver()
    {
        if (Interlocked.Exchange(ref resolverInstalled, 1) == 1 || !OperatingSystem.IsLinux() || IsWsl())
        {
            return;
        }
        try
        {
            NativeLibrary.SetDllImportResolver(typeof(Context).Assembly, (name, _, _) =>
            {
                if (name != "cuda")
                {
                    return IntPtr.Zero;
                }
                foreach (var candidate in new[] { "libcuda.so.1", "libcuda.so" })
                {
                    if (NativeLibrary.TryLoad(candidate, out var handle))
                    {
                        return handle;
                    }
                }
                return IntPtr.Zero;
            });
        }
        catch (InvalidOperationException)
        {
            // A resolver was already set for ILGPU's assembly by the host; keep it.
        }
    }

    static bool IsWsl()
    {
        try
        {
            return File.Exists("/proc/version") &&
                   File.ReadAllText("/proc/version").Contains("microsoft", StringComparison.OrdinalIgnoreCase);
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>
    /// Loads <paramref name="kernel"/> once per device with <paramref name="load"/>; later calls return the cached launcher.
    /// The cache is keyed by the kernel's method (a generic kernel's instance is a method of its own) and the launcher's
    /// type, so two kernels can never share an entry.
    /// </summary>
    public T Kernel<T>(Delegate kernel, Func<Accelerator, T> load) where T : Delegate
    {
        var key = (kernel.Method, typeof(T));
        lock (kernelCache)
        {
            if (!kernelCache.TryGetValue(key, out var cached))
            {
                cached = (RunsKernelsOnHost ? HostLaunch.Create<T>(this, kernel) : null) ?? load(Accelerator);
                kernelCache[key] = cached;
            }
            return (T)cached;
        }
    }

    /// <summary>
    /// Thread count for a grid-stride kernel over <paramref name="items"/> work items. On a GPU enough threads
    /// to fill every SM; on the CPU accelerator few, because each simulated thread costs about a microsecond
    /// to schedule while its loop body runs at JIT speed.
    /// </summary>
    public int StrideThreads(long items)
    {
        long cap = IsCpu ? CpuStrideThreads : (long)Accelerator.NumMultiprocessors * Accelerator.MaxNumThreadsPerMultiprocessor;
        return (int)Math.Max(1, Math.Min(items, cap));
    }

    /// <summary>Threads a grid-stride launch gets on the CPU accelerator.</summary>
    public int CpuStrideThreads { get; set; } = 64;

    /// <summary>A pooled, uninitialised tensor. Dispose it to hand the buffer back to the pool.</summary>
    public Tensor Allocate(params int[] shape) => new(this, shape, pool.Rent(Tensor.Count(shape)), pooled: true);

    /// <summary>A pooled tensor filled with zeros.</summary>
    public Tensor Zeros(params int[] shape)
    {
        var t = Allocate(shape);
        t.View.MemSetToZero();
        return t;
    }

    /// <summary>A device tensor holding <paramref name="data"/> (copied now, synchronously).</summary>
    public Tensor Upload(ReadOnlySpan<float> data, params int[] shape)
    {
        var t = Allocate(shape);
        if (data.Length != t.Length)
        {
            t.Dispose();
            throw new ArgumentException($"data has {data.Length} values but shape ({string.Join(", ", shape)}) needs {t.Length}");
        }
        t.CopyFrom(data);
        return t;
    }

    /// <summary>Hands a tensor's buffer back to the pool (Tensor.Dispose of its last reference).</summary>
    internal void ReturnToPool(MemoryBuffer1D<float, Stride1D.Dense> buffer) => pool.Return(buffer);

    /// <summary>Frees every cached (not in use) buffer, after the queued work that may still use them.</summary>
    public void TrimPool()
    {
        Synchronize();
        pool.Trim();
    }

    public void Synchronize() => Accelerator.Synchronize();

    /// <summary>
    /// Which of two variants a reduction runs when the caller leaves it to the device (GroupNorm statistics, Softmax):
    /// on the CPU accelerator one simulated thread per row or group, which it runs fastest; on CUDA the variant that
    /// spreads each row over a warp or block.
    /// </summary>
    public bool PrefersThreadPerRow => IsCpu;

    public void Dispose()
    {
        // Queued kernels may still use pooled buffers: free nothing under them (on the CPU accelerator freed memory is
        // reused at once by other devices in the process).
        Synchronize();
        pool.Dispose();
        Accelerator.Dispose();
        Context.Dispose();
    }
}

/// <summary>Thrown when the requested accelerator cannot be opened.</summary>
public sealed class DeviceUnavailableException(string message) : Exception(message);
