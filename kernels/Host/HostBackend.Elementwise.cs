// HostBackend, element-wise — the CPU backend's side of the UNet's memory-bound ops (Add, Silu, Dropout, UpsampleNearest2x,
// AvgPool2x2, ConcatChannels) and the EMA of the weights: SIMD lanes (Vector<T>) over contiguous chunks, a few per core
// (HostMath.For). The ILGPU kernels they replace are grid-stride loops whose 64 launch indices each walk the whole tensor
// with a stride of 64, so run as host code every core touched every cache line; here each chunk streams its range once.
// Results equal the kernels' to the bit except the channel-bias sums (fp32 lanes, then double, as the reference) and
// SiLU and its derivative, whose exp is HostMath.Exp (≤ 7.8e-8 relative against double, the kernels' MathF.Exp ≤ 6e-8):
// within every element-wise test's tolerance.
// Napkin math (demo ADM, batch 16, 32 channels at 64²: 8.4 MB a tensor): at ~10 GB/s per core a read + write pass is
// ~1.7 ms on one core, against 10–25 ms measured for the grid-stride kernels run as host code.
using System.Numerics;
using System.Runtime.Intrinsics;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static unsafe partial class HostBackend
{
    /// <summary>Items per chunk for the element-wise loops: 64 KB of floats, large enough to amortise a task.</summary>
    const int ElementGrain = 16384;

    static int Lanes => Vector<float>.Count;

    /// <summary>y = a + b; y may alias a or b.</summary>
    public static void Add(ComputeDevice dev, ArrayView<float> a, ArrayView<float> b, ArrayView<float> y)
    {
        dev.Synchronize();
        nint pa = (nint)Pointer(a), pb = (nint)Pointer(b), py = (nint)Pointer(y);
        HostMath.For(a.Length, ElementGrain, (start, end) =>
        {
            float* x0 = (float*)pa, x1 = (float*)pb, o = (float*)py;
            long i = start;
            for (; i + Lanes <= end; i += Lanes)
            {
                Vector.Store(Vector.Load(x0 + i) + Vector.Load(x1 + i), o + i);
            }
            for (; i < end; i++)
            {
                o[i] = x0[i] + x1[i];
            }
        });
    }

    /// <summary>y[p, :] = x[p, :] + bias[p] over planes p of <paramref name="spatial"/> values; y may alias x.</summary>
    public static void ChannelBias(ComputeDevice dev, ArrayView<float> x, ArrayView<float> bias, ArrayView<float> y, int spatial)
    {
        dev.Synchronize();
        nint px = (nint)Pointer(x), pb = (nint)Pointer(bias), py = (nint)Pointer(y);
        int planes = (int)(x.Length / spatial);
        HostMath.For(planes, Math.Max(1, ElementGrain / spatial), (first, last) =>
        {
            for (long p = first; p < last; p++)
            {
                float* src = (float*)px + p * spatial, dst = (float*)py + p * spatial;
                float b = ((float*)pb)[p];
                var bv = new Vector<float>(b);
                int i = 0;
                for (; i + Lanes <= spatial; i += Lanes)
                {
                    Vector.Store(Vector.Load(src + i) + bv, dst + i);
                }
                for (; i < spatial; i++)
                {
                    dst[i] = src[i] + b;
                }
            }
        });
    }

    /// <summary>dbias[p] = Σ dy[p, :] (written): lanes summed in fp32 over at most 1,024 values, then in double.</summary>
    public static void ChannelBiasBackward(ComputeDevice dev, ArrayView<float> dy, ArrayView<float> dbias, int spatial)
    {
        dev.Synchronize();
        nint pdy = (nint)Pointer(dy), pdb = (nint)Pointer(dbias);
        int planes = (int)(dy.Length / spatial);
        HostMath.For(planes, Math.Max(1, ElementGrain / spatial), (first, last) =>
        {
            for (long p = first; p < last; p++)
            {
                ((float*)pdb)[p] = (float)Sum((float*)pdy + p * spatial, spatial);
            }
        });
    }

    /// <summary>Σ x[0..n): fp32 lanes in blocks of 1,024 values, the blocks and the tail added in double.</summary>
    static double Sum(float* x, int n)
    {
        double total = 0;
        int i = 0;
        for (; i + Lanes <= n;)
        {
            var acc = Vector<float>.Zero;
            int end = Math.Min(n - Lanes, i + 1024 - Lanes);
            for (; i <= end; i += Lanes)
            {
                acc += Vector.Load(x + i);
            }
            Vector.Widen(acc, out var low, out var high);
            total += Vector.Sum(low + high);
        }
        for (; i < n; i++)
        {
            total += x[i];
        }
        return total;
    }

    /// <summary>y = SiLU(x); y may alias x.</summary>
    public static void Silu(ComputeDevice dev, ArrayView<float> x, ArrayView<float> y)
    {
        dev.Synchronize();
        nint px = (nint)Pointer(x), py = (nint)Pointer(y);
        HostMath.For(x.Length, ElementGrain, (start, end) =>
        {
            float* src = (float*)px, dst = (float*)py;
            long i = start;
            for (; i + Lanes <= end; i += Lanes)
            {
                Vector.Store(HostMath.Silu(Vector.Load(src + i)), dst + i);
            }
            for (; i < end; i++)
            {
                dst[i] = HostMath.Silu(src[i]);
            }
        });
    }

    /// <summary>dx = dy·SiLU'(x); dx may alias dy.</summary>
    public static void SiluBackward(ComputeDevice dev, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dx)
    {
        dev.Synchronize();
        nint px = (nint)Pointer(x), pdy = (nint)Pointer(dy), pdx = (nint)Pointer(dx);
        HostMath.For(x.Length, ElementGrain, (start, end) =>
        {
            float* xs = (float*)px, g = (float*)pdy, o = (float*)pdx;
            long i = start;
            for (; i + Lanes <= end; i += Lanes)
            {
                Vector.Store(Vector.Load(g + i) * HostMath.SiluDerivative(Vector.Load(xs + i)), o + i);
            }
            for (; i < end; i++)
            {
                o[i] = g[i] * HostMath.SiluDerivative(xs[i]);
            }
        });
    }

    /// <summary>y = x·(Dropout.Bits(seed, i) ≥ threshold ? scale : 0), the kernel's expression per element; y may alias x.</summary>
    public static void Dropout(ComputeDevice dev, ArrayView<float> x, ArrayView<float> y, ulong seed, uint threshold, float scale)
    {
        dev.Synchronize();
        nint px = (nint)Pointer(x), py = (nint)Pointer(y);
        HostMath.For(x.Length, ElementGrain, (start, end) =>
        {
            float* src = (float*)px, dst = (float*)py;
            for (long i = start; i < end; i++)
            {
                dst[i] = src[i] * (Kernels.Dropout.Bits(seed, (int)i) >= threshold ? scale : 0f);
            }
        });
    }

    /// <summary>y (planes, 2h, 2w) = x (planes, h, w) repeated 2×2: each input row widened once, stored twice.</summary>
    public static void UpsampleNearest2x(ComputeDevice dev, ArrayView<float> x, ArrayView<float> y, int planes, int h, int w)
    {
        dev.Synchronize();
        nint px = (nint)Pointer(x), py = (nint)Pointer(y);
        HostMath.For((long)planes * h, Math.Max(1, ElementGrain / (4 * w)), (first, last) =>
        {
            for (long row = first; row < last; row++)
            {
                float* src = (float*)px + row * w;
                float* dst = (float*)py + row * 4 * w;
                int i = 0;
                if (Vector256.IsHardwareAccelerated)
                {
                    var low = Vector256.Create(0, 0, 1, 1, 2, 2, 3, 3);
                    var high = Vector256.Create(4, 4, 5, 5, 6, 6, 7, 7);
                    for (; i + 8 <= w; i += 8)
                    {
                        var v = Vector256.Load(src + i);
                        var lo = Vector256.Shuffle(v, low);
                        var hi = Vector256.Shuffle(v, high);
                        lo.Store(dst + 2 * i);
                        hi.Store(dst + 2 * i + 8);
                        lo.Store(dst + 2 * w + 2 * i);
                        hi.Store(dst + 2 * w + 2 * i + 8);
                    }
                }
                for (; i < w; i++)
                {
                    dst[2 * i] = dst[2 * i + 1] = dst[2 * w + 2 * i] = dst[2 * w + 2 * i + 1] = src[i];
                }
            }
        });
    }

    /// <summary>dx (planes, h, w) = the sum of dy's 2×2 blocks, in the kernel's order ((top-left + top-right) + bottom-left) +
    /// bottom-right.</summary>
    public static void UpsampleNearest2xBackward(ComputeDevice dev, ArrayView<float> dy, ArrayView<float> dx, int planes, int h, int w)
    {
        dev.Synchronize();
        nint pdy = (nint)Pointer(dy), pdx = (nint)Pointer(dx);
        HostMath.For((long)planes * h, Math.Max(1, ElementGrain / (4 * w)), (first, last) =>
        {
            for (long row = first; row < last; row++)
            {
                float* top = (float*)pdy + row * 4 * w, bottom = top + 2 * w;
                float* dst = (float*)pdx + row * w;
                for (int i = 0; i < w; i++)
                {
                    dst[i] = top[2 * i] + top[2 * i + 1] + bottom[2 * i] + bottom[2 * i + 1];
                }
            }
        });
    }

    /// <summary>y (planes, h/2, w/2) = the mean of x's 2×2 blocks, ((a + b) + c + d) / 4 as the kernel sums them.</summary>
    public static void AvgPool2x2(ComputeDevice dev, ArrayView<float> x, ArrayView<float> y, int planes, int h, int w)
    {
        dev.Synchronize();
        nint px = (nint)Pointer(x), py = (nint)Pointer(y);
        int ho = h / 2, wo = w / 2;
        HostMath.For((long)planes * ho, Math.Max(1, ElementGrain / (2 * w)), (first, last) =>
        {
            for (long row = first; row < last; row++)
            {
                long p = row / ho, oy = row % ho;
                float* top = (float*)px + (p * h + 2 * oy) * w, bottom = top + w;
                float* dst = (float*)py + row * wo;
                for (int i = 0; i < wo; i++)
                {
                    dst[i] = (top[2 * i] + top[2 * i + 1] + bottom[2 * i] + bottom[2 * i + 1]) / 4f;
                }
            }
        });
    }

    /// <summary>dx (planes, h, w): dy/4 on each output's four inputs, 0 on a dropped odd row or column.</summary>
    public static void AvgPool2x2Backward(ComputeDevice dev, ArrayView<float> dy, ArrayView<float> dx, int planes, int h, int w)
    {
        dev.Synchronize();
        nint pdy = (nint)Pointer(dy), pdx = (nint)Pointer(dx);
        int ho = h / 2, wo = w / 2;
        HostMath.For((long)planes * h, Math.Max(1, ElementGrain / w), (first, last) =>
        {
            for (long row = first; row < last; row++)
            {
                long p = row / h, iy = row % h;
                float* dst = (float*)pdx + row * w;
                if (iy >= 2 * ho)
                {
                    new Span<float>(dst, w).Clear();
                    continue;
                }
                float* src = (float*)pdy + (p * ho + iy / 2) * wo;
                for (int i = 0; i < 2 * wo; i++)
                {
                    dst[i] = src[i / 2] / 4f;
                }
                for (int i = 2 * wo; i < w; i++)
                {
                    dst[i] = 0f;
                }
            }
        });
    }

    /// <summary>
    /// y (n, ca + cb, spatial) = [a, b] along channels (forward), or the split of dy into da and db (backward, forward =
    /// false): per image two contiguous copies.
    /// </summary>
    public static void Concat(ComputeDevice dev, ArrayView<float> a, ArrayView<float> b, ArrayView<float> y, int n, int ca, int cb,
        int spatial, bool forward)
    {
        dev.Synchronize();
        nint pa = (nint)Pointer(a), pb = (nint)Pointer(b), py = (nint)Pointer(y);
        long aLen = (long)ca * spatial, bLen = (long)cb * spatial;
        HostMath.ForEach(2 * n, 1, item =>
        {
            int i = item / 2;
            bool first = item % 2 == 0;
            float* part = first ? (float*)pa + i * aLen : (float*)pb + i * bLen;
            float* whole = (float*)py + i * (aLen + bLen) + (first ? 0 : aLen);
            long bytes = (first ? aLen : bLen) * sizeof(float);
            if (forward)
            {
                Buffer.MemoryCopy(part, whole, bytes, bytes);
            }
            else
            {
                Buffer.MemoryCopy(whole, part, bytes, bytes);
            }
        });
    }

    /// <summary>
    /// ema ← fma(p, alpha, ema·rate) (Ema's update): the same two roundings as the kernel's RoundedMath, so the same bits.
    /// </summary>
    public static void Ema(ComputeDevice dev, ArrayView<float> ema, ArrayView<float> p, float rate, float alpha)
    {
        dev.Synchronize();
        nint pe = (nint)Pointer(ema), pp = (nint)Pointer(p);
        HostMath.For(ema.Length, ElementGrain, (start, end) =>
        {
            float* e = (float*)pe, x = (float*)pp;
            var r = new Vector<float>(rate);
            var a = new Vector<float>(alpha);
            long i = start;
            for (; i + Lanes <= end; i += Lanes)
            {
                Vector.Store(Vector.FusedMultiplyAdd(Vector.Load(x + i), a, Vector.Load(e + i) * r), e + i);
            }
            for (; i < end; i++)
            {
                e[i] = MathF.FusedMultiplyAdd(x[i], alpha, e[i] * rate);
            }
        });
    }
}
