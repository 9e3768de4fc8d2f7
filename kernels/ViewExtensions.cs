using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class ViewExtensions
{
    /// <summary>The buffer from <paramref name="offset"/> to its end, as the flat view kernels take.</summary>
    public static ArrayView<T> From<T>(this MemoryBuffer1D<T, Stride1D.Dense> buffer, long offset) where T : unmanaged =>
        ((ArrayView<T>)buffer.View).SubView(offset);

    /// <summary>Copies the first host.Length elements of the view to the host (synchronous).</summary>
    public static void CopyToHost<T>(this ArrayView<T> view, Span<T> host) where T : unmanaged =>
        view.SubView(0, host.Length).AsDense().CopyToCPU(ref MemoryMarshal.GetReference(host), host.Length);

    /// <summary>Copies host values into the start of the view (synchronous).</summary>
    public static void CopyFromHost<T>(this ArrayView<T> view, ReadOnlySpan<T> host) where T : unmanaged =>
        view.SubView(0, host.Length).AsDense().CopyFromCPU(ref MemoryMarshal.GetReference(host), host.Length);
}
