using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>
/// A dense fp32 tensor on a device (row-major, NCHW for images): how every activation, gradient and scratch buffer is
/// held. Its memory comes from the device's pool and goes back when the last reference is disposed: the one who
/// allocates owns one reference, and whoever must keep the tensor beyond that owner (a module saving its input for the
/// backward pass, a caller capturing a decoder block) takes another with <see cref="Retain"/> and disposes it in turn.
/// <see cref="Alias"/> and the slices are views: they hold no reference and live as long as the tensor they view.
/// </summary>
public sealed class Tensor : IDisposable
{
    readonly ComputeDevice device;
    MemoryBuffer1D<float, Stride1D.Dense>? buffer;
    readonly bool owner;
    readonly ArrayView<float> view;
    int references;

    internal Tensor(ComputeDevice device, int[] shape, MemoryBuffer1D<float, Stride1D.Dense> buffer, bool pooled)
    {
        this.device = device;
        Shape = (int[])shape.Clone();
        Length = checked((int)Count(shape));
        this.buffer = buffer;
        owner = pooled;
        references = 1;
        view = buffer.View.SubView(0, Length);
    }

    Tensor(ComputeDevice device, int[] shape, ArrayView<float> view)
    {
        this.device = device;
        Shape = shape;
        Length = (int)view.Length;
        this.view = view;
        owner = false;
    }

    public ComputeDevice Device => device;
    public int[] Shape { get; }
    public int Length { get; }
    public int Rank => Shape.Length;
    public int this[int dim] => Shape[dim < 0 ? Shape.Length + dim : dim];

    public ArrayView<float> View
    {
        get
        {
            if (owner && buffer is null)
            {
                throw new ObjectDisposedException(nameof(Tensor));
            }
            return view;
        }
    }

    public static long Count(IReadOnlyList<int> shape)
    {
        long n = 1;
        foreach (var d in shape)
        {
            if (d < 0)
            {
                throw new ArgumentException($"negative dimension in shape ({string.Join(", ", shape)})");
            }
            n *= d;
        }
        return n;
    }

    /// <summary>Another reference to this tensor, disposed separately: the memory stays until every reference is disposed.</summary>
    public Tensor Retain()
    {
        if (!owner)
        {
            throw new InvalidOperationException($"a view {ShapeString} holds no memory of its own: retain the tensor it views");
        }
        if (Interlocked.Increment(ref references) <= 1)
        {
            throw new ObjectDisposedException(nameof(Tensor));
        }
        return this;
    }

    /// <summary>The same memory seen with another shape of equal element count. Does not own the memory.</summary>
    public Tensor Alias(params int[] shape)
    {
        if (Count(shape) != Length)
        {
            throw new ArgumentException($"cannot view {ShapeString} as ({string.Join(", ", shape)})");
        }
        return new Tensor(device, (int[])shape.Clone(), View);
    }

    /// <summary>A contiguous slice along dimension 0, e.g. one image of a batch. Does not own the memory.</summary>
    public Tensor Slice0(int index)
    {
        int inner = Length / Shape[0];
        return new Tensor(device, Shape[1..], View.SubView((long)index * inner, inner));
    }

    /// <summary>Rows [first, first + count) along dimension 0. Does not own the memory.</summary>
    public Tensor Slice0Range(int first, int count)
    {
        int inner = Length / Shape[0];
        return new Tensor(device, [count, .. Shape[1..]], View.SubView((long)first * inner, (long)count * inner));
    }

    public string ShapeString => "(" + string.Join(", ", Shape) + ")";

    public void CopyFrom(ReadOnlySpan<float> data)
    {
        if (data.Length != Length)
        {
            throw new ArgumentException($"copying {data.Length} values into a tensor of {Length}");
        }
        View.CopyFromHost(data);
    }

    /// <summary>Copies to the host; waits for queued work on the device first.</summary>
    public float[] ToArray()
    {
        var host = new float[Length];
        CopyTo(host);
        return host;
    }

    public void CopyTo(Span<float> host)
    {
        if (host.Length != Length)
        {
            throw new ArgumentException($"copying a tensor of {Length} values into {host.Length}");
        }
        device.Synchronize();
        View.CopyToHost(host);
    }

    /// <summary>Drops this reference; the last one hands the buffer back to the pool.</summary>
    public void Dispose()
    {
        if (!owner || buffer is null || Interlocked.Decrement(ref references) > 0)
        {
            return;
        }
        device.ReturnToPool(buffer);
        buffer = null;
    }
}
