// Add — y = a + b, element-wise (residual connections that are not fused into a conv or GEMM epilogue), and
// its broadcast form y[n,c,:] = x[n,c,:] + b[n,c] (a ResBlock without scale-shift adds emb_out that way).
//   v1  grid-stride element-wise. 2 reads + 1 write per element.
//   host  the CPU backend (HostBackend.Elementwise.cs): contiguous chunks, a few per core, in SIMD lanes where they apply.
// Accumulate: into += from (gradients meeting at a fork, summed over microbatches), the same kernel with y = a.
// ChannelBiasBackward: dbias[n, c] = Σ_spatial dy[n, c, :] (written), deterministic:
//   v1  a thread per (n, c) plane, in order (Reduction.ThreadPerRow: the CPU accelerator).
//   v2  a block of 256 threads per plane, each thread a strided run, tree-summed in shared memory (Reduction.Parallel:
//       GPUs; coalesced). 1 read per element.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class Add
{
    // ---- CPU reference

    public static float[] Reference(float[] a, float[] b) => a.Zip(b, (p, q) => p + q).ToArray();

    public static float[] ChannelBiasReference(float[] x, float[] bias, int spatial) =>
        x.Select((v, i) => v + bias[i / spatial]).ToArray();

    public static float[] ChannelBiasBackwardReference(float[] dy, int planes, int spatial)
    {
        var dbias = new float[planes];
        for (int p = 0; p < planes; p++)
        {
            double acc = 0;
            for (int e = 0; e < spatial; e++)
            {
                acc += dy[p * spatial + e];
            }
            dbias[p] = (float)acc;
        }
        return dbias;
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int n, ArrayView<float> a, ArrayView<float> b, ArrayView<float> y)
    {
        for (int i = index; i < n; i += stride)
        {
            y[i] = a[i] + b[i];
        }
    }

    static void ChannelBiasKernel(Index1D index, int stride, int n, int spatial, ArrayView<float> x, ArrayView<float> bias,
        ArrayView<float> y)
    {
        for (int i = index; i < n; i += stride)
        {
            y[i] = x[i] + bias[i / spatial];
        }
    }

    static void PlaneSumKernel(Index1D index, int stride, int planes, int spatial, ArrayView<float> dy, ArrayView<float> dbias)
    {
        for (int p = index; p < planes; p += stride)
        {
            float acc = 0f;
            for (int e = 0; e < spatial; e++)
            {
                acc += dy[p * spatial + e];
            }
            dbias[p] = acc;
        }
    }

    const int PlaneThreads = 256;

    /// <summary>v2: grid (planes), 256 threads: block p sums plane p.</summary>
    static void BlockPlaneSumKernel(int spatial, ArrayView<float> dy, ArrayView<float> dbias)
    {
        var partial = SharedMemory.Allocate<float>(PlaneThreads);
        int p = Grid.IdxX, tid = Group.IdxX;
        int start = p * spatial;
        float acc = 0f;
        for (int e = tid; e < spatial; e += PlaneThreads)
        {
            acc += dy[start + e];
        }
        partial[tid] = acc;
        Group.Barrier();
        for (int half = PlaneThreads / 2; half > 0; half /= 2)
        {
            if (tid < half)
            {
                partial[tid] += partial[tid + half];
            }
            Group.Barrier();
        }
        if (tid == 0)
        {
            dbias[p] = partial[0];
        }
    }

    // ---- launcher

    public static void Forward(Tensor a, Tensor b, Tensor y)
    {
        if (a.Length != b.Length || a.Length != y.Length)
        {
            throw new ArgumentException($"add: shapes {a.ShapeString} + {b.ShapeString} → {y.ShapeString} differ");
        }
        var dev = a.Device;
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.Add(dev, a.View, b.View, y.View);
            return;
        }
        var k = dev.Kernel(Kernel, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, int, ArrayView<float>, ArrayView<float>,
            ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(a.Length);
        k(threads, threads, a.Length, a.View, b.View, y.View);
    }

    /// <summary>y[n, c, ...] = x[n, c, ...] + bias[n, c]; y may alias x.</summary>
    public static void ChannelBias(Tensor x, Tensor bias, Tensor y)
    {
        int nc = x[0] * x[1];
        if (bias.Length != nc || y.Length != x.Length)
        {
            throw new ArgumentException($"add channel bias: {x.ShapeString} + {bias.ShapeString} → {y.ShapeString}");
        }
        var dev = x.Device;
        if (dev.RunsKernelsOnHost)
        {
            HostBackend.ChannelBias(dev, x.View, bias.View, y.View, x.Length / nc);
            return;
        }
        var k = dev.Kernel(ChannelBiasKernel, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>, ArrayView<float>>(ChannelBiasKernel));
        int threads = dev.StrideThreads(x.Length);
        k(threads, threads, x.Length, x.Length / nc, x.View, bias.View, y.View);
    }

    /// <summary>into += from, element-wise.</summary>
    public static void Accumulate(Tensor into, Tensor from) => Forward(into, from, into);

    /// <summary>dbias[n, c] = Σ_spatial dy[n, c, ...] (written): the backward of ChannelBias against its bias.</summary>
    public static void ChannelBiasBackward(Tensor dy, Tensor dbias) => ChannelBiasBackward(dy, dbias, Reduction.Auto);

    /// <summary>ChannelBiasBackward with the reduction chosen: ThreadPerRow (v1) or Parallel (v2).</summary>
    public static void ChannelBiasBackward(Tensor dy, Tensor dbias, Reduction reduction)
    {
        int planes = dy[0] * dy[1];
        if (dbias.Length != planes)
        {
            throw new ArgumentException($"add channel bias backward: dy {dy.ShapeString} → dbias {dbias.ShapeString}");
        }
        var dev = dy.Device;
        int spatial = dy.Length / planes;
        if (dev.RunsKernelsOnHost && reduction == Reduction.Auto)
        {
            HostBackend.ChannelBiasBackward(dev, dy.View, dbias.View, spatial);
            return;
        }
        if (reduction.For(dev) == Reduction.Parallel)
        {
            var k = dev.Kernel(BlockPlaneSumKernel, acc => acc.LoadStreamKernel<int, ArrayView<float>, ArrayView<float>>(
                BlockPlaneSumKernel));
            k(new KernelConfig(planes, PlaneThreads), spatial, dy.View, dbias.View);
            return;
        }
        var k1 = dev.Kernel(PlaneSumKernel, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>>(PlaneSumKernel));
        int threads = dev.StrideThreads(planes);
        k1(threads, threads, planes, spatial, dy.View, dbias.View);
    }
}
