using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class ViewExtensions
{
    /// <summary>The buffer from <paramref name="offset"/> to its end, as the flat view kernels take.</summary>
    public static ArrayView<T> From<T>(this MemoryBuffer1D<T, Stride1D.Dense> buffer, long offset) where T : unmanaged =>
        ((ArrayView<T>)buffer.View).SubView(offset);
}
