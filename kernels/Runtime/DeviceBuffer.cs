using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>
/// A device allocation owned by its creator and counted in its device's memory figures (current and peak bytes).
/// Dispose frees it.
/// </summary>
public sealed class DeviceBuffer<T> : IDisposable where T : unmanaged
{
    readonly ComputeDevice device;
    MemoryBuffer1D<T, Stride1D.Dense>? buffer;

    internal DeviceBuffer(ComputeDevice device, long length)
    {
        this.device = device;
        buffer = device.Accelerator.Allocate1D<T>(Math.Max(1, length));
        Length = length;
        device.Track(buffer.LengthInBytes);
    }

    public long Length { get; }

    public MemoryBuffer1D<T, Stride1D.Dense> Buffer => buffer ?? throw new ObjectDisposedException(nameof(DeviceBuffer<T>));

    /// <summary>The whole allocation as the flat view kernels take.</summary>
    public ArrayView<T> View => ((ArrayView<T>)Buffer.View).SubView(0, Length);

    /// <summary>The allocation from <paramref name="offset"/> to its end.</summary>
    public ArrayView<T> From(long offset) => View.SubView(offset);

    public void CopyFrom(ReadOnlySpan<T> host) => View.CopyFromHost(host);

    /// <summary>Copies to the host after the device's queued work.</summary>
    public T[] ToArray()
    {
        device.Synchronize();
        var host = new T[Length];
        View.CopyToHost(host);
        return host;
    }

    public void Clear() => View.MemSetToZero();

    public void Dispose()
    {
        if (buffer is not null)
        {
            // cuMemFree waits for the device; the CPU accelerator frees at once, so wait for queued kernels first.
            if (device.IsCpu)
            {
                device.Synchronize();
            }
            device.Track(-buffer.LengthInBytes);
            buffer.Dispose();
            buffer = null;
        }
    }
}
