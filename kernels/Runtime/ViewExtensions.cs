using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class ViewExtensions
{
    /// <summary>The buffer from <paramref name="offset"/> to its end, as the flat view kernels take.</summary>
    public static ArrayView<T> From<T>(this MemoryBuffer1D<T, Stride1D.Dense> buffer, long offset) where T : unmanaged =>
        ((ArrayView<T>)buffer.View).SubView(offset);

    // ILGPU's copies that take a `ref T` turn it into a raw pointer and do not pin: the host memory is pinned here for the
    // whole copy. Unpinned, a garbage collection on another thread that moves the array mid-copy (the native memmove or
    // cuMemcpy runs in preemptive mode) leaves the data at the array's old address: an all-zero result, or an access
    // violation once that memory is gone, or a corrupted GC heap.

    /// <summary>Copies the first host.Length elements of the view to the host (synchronous).</summary>
    public static unsafe void CopyToHost<T>(this ArrayView<T> view, Span<T> host) where T : unmanaged
    {
        fixed (T* pinned = host)
        {
            view.SubView(0, host.Length).AsDense().CopyToCPU(ref *pinned, host.Length);
        }
    }

    /// <summary>Copies host values into the start of the view (synchronous).</summary>
    public static unsafe void CopyFromHost<T>(this ArrayView<T> view, ReadOnlySpan<T> host) where T : unmanaged
    {
        fixed (T* pinned = host)
        {
            view.SubView(0, host.Length).AsDense().CopyFromCPU(ref *pinned, host.Length);
        }
    }
}
