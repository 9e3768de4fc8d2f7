using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>
/// Device buffers kept by exact length: a UNet forward asks for the same shapes every time, so after the first
/// forward no allocation (cuMemAlloc) happens in the hot path. Buffers are owned here and freed by Trim/Dispose.
/// </summary>
internal sealed class BufferPool(Accelerator accelerator, Action<long> track) : IDisposable
{
    readonly Dictionary<long, Stack<MemoryBuffer1D<float, Stride1D.Dense>>> free = new();
    // A buffer handed back twice would be rented to two owners at once, who then overwrite each other's data: refused.
    readonly HashSet<MemoryBuffer1D<float, Stride1D.Dense>> held = new(ReferenceEqualityComparer.Instance);

    public MemoryBuffer1D<float, Stride1D.Dense> Rent(long length)
    {
        // ILGPU rejects zero-length allocations; an empty tensor still gets a one-element buffer.
        long size = Math.Max(1, length);
        lock (free)
        {
            if (free.TryGetValue(size, out var stack) && stack.Count > 0)
            {
                var reused = stack.Pop();
                held.Remove(reused);
                return reused;
            }
        }
        var buffer = accelerator.Allocate1D<float>(size);
        track(size * sizeof(float));
        return buffer;
    }

    public void Return(MemoryBuffer1D<float, Stride1D.Dense> buffer)
    {
        lock (free)
        {
            if (!held.Add(buffer))
            {
                throw new InvalidOperationException($"a device buffer of {buffer.Length} floats was returned to the pool twice");
            }
            if (!free.TryGetValue(buffer.Length, out var stack))
            {
                free[buffer.Length] = stack = new Stack<MemoryBuffer1D<float, Stride1D.Dense>>();
            }
            stack.Push(buffer);
        }
    }

    public void Trim()
    {
        lock (free)
        {
            foreach (var stack in free.Values)
            {
                while (stack.Count > 0)
                {
                    var b = stack.Pop();
                    track(-b.Length * sizeof(float));
                    b.Dispose();
                }
            }
            free.Clear();
            held.Clear();
        }
    }

    public void Dispose() => Trim();
}
