// Norms — the training loop's whole-tensor reductions, each written to one slot of a small device tensor so that a step
// reads every parameter's result with one copy: SumOfSquares (grad_norm and param_norm: the host sums the slots in
// double and takes the square root, as guided-diffusion's _compute_norms sums th.norm(p)² in Python) and AllFinite
// (1 when every value is finite, else 0: the fp16 loss scaling skips the step and lowers the scale otherwise).
// Deterministic: fixed chunks summed in a fixed order, no atomics; the chunking is the variant's, not the device's.
//   v1  a thread per chunk of 65,536 consecutive values, summed in order in double (Reduction.ThreadPerRow: the CPU
//       accelerator; an fp32 running sum over 65,536 squares erred by 9e-6 relative, measured).
//   v2  a block of 256 threads per chunk of 8,192 values, each thread a strided run, tree-summed in shared memory
//       (Reduction.Parallel: GPUs; coalesced).
//   Both: the chunks' partial sums (fp32) added in order in double by one thread, then rounded to fp32 into the slot.
// x: any shape, n values; into: any tensor with more than slot values. 1 read per value.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>The per-value term a norm reduction sums.</summary>
public interface INormTerm
{
    float Of(float x);
}

/// <summary>x²: the sum of squares.</summary>
public readonly struct SquareTerm : INormTerm
{
    public float Of(float x) => x * x;
}

/// <summary>1 for ±inf and NaN (all exponent bits set), else 0: the count of non-finite values.</summary>
public readonly struct NonFiniteTerm : INormTerm
{
    public float Of(float x) => (Interop.FloatAsInt(x) & 0x7F800000u) == 0x7F800000u ? 1f : 0f;
}

public static class Norms
{
    const int ThreadChunk = 65536;
    const int BlockThreads = 256;
    const int BlockChunk = 8192;

    // ---- CPU reference

    public static double SumOfSquaresReference(float[] x)
    {
        double acc = 0;
        foreach (float v in x)
        {
            acc += (double)v * v;
        }
        return acc;
    }

    public static bool AllFiniteReference(float[] x) => x.All(float.IsFinite);

    // ---- GPU kernels

    /// <summary>v1: partials[c] = Σ term over values [c·chunk, (c + 1)·chunk), in order, in double.</summary>
    static void ChunkSumsKernel<T>(Index1D index, int stride, int n, ArrayView<float> x, ArrayView<float> partials)
        where T : struct, INormTerm
    {
        int chunks = (n + ThreadChunk - 1) / ThreadChunk;
        var term = default(T);
        for (int c = index; c < chunks; c += stride)
        {
            int lo = c * ThreadChunk, hi = lo + ThreadChunk < n ? lo + ThreadChunk : n;
            double acc = 0;
            for (int i = lo; i < hi; i++)
            {
                acc += term.Of(x[i]);
            }
            partials[c] = (float)acc;
        }
    }

    /// <summary>v2: grid (chunks), 256 threads: block c sums chunk c of 8,192 values.</summary>
    static void BlockChunkSumsKernel<T>(int n, ArrayView<float> x, ArrayView<float> partials) where T : struct, INormTerm
    {
        var shared = SharedMemory.Allocate<float>(BlockThreads);
        int c = Grid.IdxX, tid = Group.IdxX;
        int lo = c * BlockChunk, hi = lo + BlockChunk < n ? lo + BlockChunk : n;
        var term = default(T);
        float acc = 0f;
        for (int i = lo + tid; i < hi; i += BlockThreads)
        {
            acc += term.Of(x[i]);
        }
        shared[tid] = acc;
        Group.Barrier();
        for (int half = BlockThreads / 2; half > 0; half /= 2)
        {
            if (tid < half)
            {
                shared[tid] += shared[tid + half];
            }
            Group.Barrier();
        }
        if (tid == 0)
        {
            partials[c] = shared[0];
        }
    }

    /// <summary>One thread: the partials summed in order in double; into[slot] = the sum, or (finite ≠ 0) 1 when it is 0, else 0.</summary>
    static void FinishKernel(Index1D index, int count, int finite, int slot, ArrayView<float> partials, ArrayView<float> into)
    {
        double acc = 0;
        for (int c = 0; c < count; c++)
        {
            acc += partials[c];
        }
        into[slot] = finite != 0 ? (acc == 0 ? 1f : 0f) : (float)acc;
    }

    // ---- launcher

    /// <summary>into[slot] = Σ x² (fp32 partial sums over fixed chunks, added in double), with the device's variant.</summary>
    public static void SumOfSquares(Tensor x, Tensor into, int slot) => SumOfSquares(x, into, slot, Reduction.Auto);

    /// <summary>SumOfSquares with the variant chosen: ThreadPerRow (v1) or Parallel (v2).</summary>
    public static void SumOfSquares(Tensor x, Tensor into, int slot, Reduction reduction) =>
        Reduce<SquareTerm>("sum of squares", x, into, slot, finite: false, reduction);

    /// <summary>into[slot] = 1 when every value of x is finite, else 0, with the device's variant.</summary>
    public static void AllFinite(Tensor x, Tensor into, int slot) => AllFinite(x, into, slot, Reduction.Auto);

    /// <summary>AllFinite with the variant chosen: ThreadPerRow (v1) or Parallel (v2).</summary>
    public static void AllFinite(Tensor x, Tensor into, int slot, Reduction reduction) =>
        Reduce<NonFiniteTerm>("all finite", x, into, slot, finite: true, reduction);

    static void Reduce<T>(string what, Tensor x, Tensor into, int slot, bool finite, Reduction reduction) where T : struct, INormTerm
    {
        if (slot < 0 || slot >= into.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(slot), slot, $"{what}: slot outside {into.ShapeString}");
        }
        var dev = x.Device;
        int n = x.Length;
        bool parallel = reduction.For(dev) == Reduction.Parallel;
        int chunks = parallel ? (n + BlockChunk - 1) / BlockChunk : (n + ThreadChunk - 1) / ThreadChunk;
        using var partials = dev.Allocate(Math.Max(1, chunks));
        if (chunks > 0 && parallel)
        {
            var k = dev.Kernel(BlockChunkSumsKernel<T>, a => a.LoadStreamKernel<int, ArrayView<float>, ArrayView<float>>(
                BlockChunkSumsKernel<T>));
            k(new KernelConfig(chunks, BlockThreads), n, x.View, partials.View);
        }
        else if (chunks > 0)
        {
            var k = dev.Kernel(ChunkSumsKernel<T>, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, ArrayView<float>,
                ArrayView<float>>(ChunkSumsKernel<T>));
            int threads = dev.StrideThreads(chunks);
            k(threads, threads, n, x.View, partials.View);
        }
        var finish = dev.Kernel(FinishKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>>(FinishKernel));
        finish(1, chunks, finite ? 1 : 0, slot, partials.View, into.View);
    }
}
