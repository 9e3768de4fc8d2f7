// LeanFeatures — pixel features without the D × H × W tensor. Each captured block stays at its native resolution;
// since bilinear upsampling is a fixed 4-tap convex combination and the classifier's first layer is linear per pixel,
//   W·Up(a) = Up(W·a)   (up to rounding),
// so the full feature of a pixel is needed only for the pixels of a training batch, and never for prediction.
//   gather (training)  X[b, c] for the batch's pixels, computed from the native maps with the exact taps and expression
//                      of UpsampleBilinear, so the gathered rows equal the materialised features bit for bit. fp32 or fp16 store.
//   accumulate (prediction)  z1[m, p, j] = b1[m, j] + Σ_e Up(Y_e[m, j])(p), then ReLU, where Y_e = W1[m][:, e's channels] · a_e
//                      was computed at native resolution (a batched Gemm per block); 22× fewer first-layer FLOPs for LSUN.
//                      Y is stored hidden-unit-contiguous, (member, entry, native pixel, j): coalesced on the GPU, SIMD on the host.
//   host               the CPU backend of both: taps computed once per (pixel, entry), channels / hidden units looped.
// Block table, one row of 5 ints per (step, block) entry e in feature order (step-major, blocks ascending):
//   [first feature channel, channels, height, width, offset of the entry in an image's record (gather) or a member's Y]
// store: (images, record) where an image's record is its entries' (C_e, H_e, W_e) maps back to back.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using System.Runtime.Intrinsics;
using Half = ILGPU.Half;

namespace IlgpuDiffSeg.Kernels;

public struct LeanShape
{
    /// <summary>Batch rows (gather) or pixels in the chunk (accumulate), feature channels, image height and width.</summary>
    public int Rows, Channels, Height, Width, Entries;

    /// <summary>Floats in one image's record (gather) or one member's Y (accumulate).</summary>
    public long RecordSize;

    /// <summary>Accumulate only: first pixel of the chunk, members, hidden units, parameter stride, b1 offset.</summary>
    public int Start, Members, Hidden, MemberStride, BiasOffset;
}

public static class LeanFeatures
{
    public const int TableWidth = 5;

    // ---- CPU reference

    /// <summary>The features of pixel (oy, ox) from native maps: Σ over entries of UpsampleBilinear's value.</summary>
    public static float[] GatherReference(float[] record, int[] table, int channels, int height, int width, int oy, int ox)
    {
        var x = new float[channels];
        for (int e = 0; e < table.Length / TableWidth; e++)
        {
            int first = table[e * TableWidth], count = table[e * TableWidth + 1], h = table[e * TableWidth + 2], w = table[e * TableWidth + 3];
            int offset = table[e * TableWidth + 4];
            var map = record.AsSpan(offset, count * h * w).ToArray();
            var up = UpsampleBilinear.Reference(map, count, h, w, height, width);
            for (int c = 0; c < count; c++)
            {
                x[first + c] = up[(c * height + oy) * width + ox];
            }
        }
        return x;
    }

    // ---- GPU kernels

    static void Taps(int oy, int ox, int h, int w, LeanShape s, out int i00, out int i01, out int i10, out int i11, out float wx, out float wy)
    {
        UpsampleBilinear.Taps(oy, h, s.Height, out int y0, out int y1, out wy);
        UpsampleBilinear.Taps(ox, w, s.Width, out int x0, out int x1, out wx);
        i00 = y0 * w + x0;
        i01 = y0 * w + x1;
        i10 = y1 * w + x0;
        i11 = y1 * w + x1;
    }

    static float Blend(float a00, float a01, float a10, float a11, float wx, float wy)
    {
        float top = (1f - wx) * a00 + wx * a01;
        float bottom = (1f - wx) * a10 + wx * a11;
        return (1f - wy) * top + wy * bottom;
    }

    /// <summary>A store of native maps read as floats: fp32 as is, fp16 widened (the one kernel serves both).</summary>
    public interface INativeStore
    {
        float this[long index] { get; }
    }

    public readonly struct Float32Store(ArrayView<float> view) : INativeStore
    {
        public float this[long index] => view[index];
    }

    public readonly struct Float16Store(ArrayView<Half> view) : INativeStore
    {
        public float this[long index] => (float)view[index];
    }

    static void GatherKernel<TStore>(Index1D index, int stride, LeanShape s, ArrayView<int> ids, ArrayView<int> table,
        ArrayView<int> channelEntry, TStore store, ArrayView<byte> labels, ArrayView<float> x, ArrayView<int> y)
        where TStore : struct, INativeStore
    {
        int pixels = s.Height * s.Width;
        for (int i = index; i < s.Rows * s.Channels; i += stride)
        {
            int b = i / s.Channels, c = i % s.Channels;
            int g = ids[b], img = g / pixels, p = g % pixels;
            int e = channelEntry[c];
            int h = table[e * TableWidth + 2], w = table[e * TableWidth + 3];
            Taps(p / s.Width, p % s.Width, h, w, s, out int i00, out int i01, out int i10, out int i11, out float wx, out float wy);
            long baseIndex = img * s.RecordSize + table[e * TableWidth + 4] + (long)(c - table[e * TableWidth]) * h * w;
            x[i] = Blend(store[baseIndex + i00], store[baseIndex + i01], store[baseIndex + i10], store[baseIndex + i11], wx, wy);
            if (c == 0)
            {
                y[b] = labels[g];
            }
        }
    }

    static void AccumulateKernel(Index1D index, int stride, LeanShape s, ArrayView<int> table, ArrayView<float> native,
        ArrayView<float> parameters, ArrayView<float> a1)
    {
        int total = s.Members * s.Rows * s.Hidden;
        for (int i = index; i < total; i += stride)
        {
            int j = i % s.Hidden;
            int q = i / s.Hidden % s.Rows;
            int m = i / (s.Hidden * s.Rows);
            int p = s.Start + q;
            float z = parameters[m * s.MemberStride + s.BiasOffset + j];
            for (int e = 0; e < s.Entries; e++)
            {
                int h = table[e * TableWidth + 2], w = table[e * TableWidth + 3];
                Taps(p / s.Width, p % s.Width, h, w, s, out int i00, out int i01, out int i10, out int i11, out float wx, out float wy);
                long baseIndex = m * s.RecordSize + table[e * TableWidth + 4] + j;
                z += Blend(native[baseIndex + (long)i00 * s.Hidden], native[baseIndex + (long)i01 * s.Hidden],
                    native[baseIndex + (long)i10 * s.Hidden], native[baseIndex + (long)i11 * s.Hidden], wx, wy);
            }
            a1[i] = XMath.Max(z, 0f);
        }
    }

    static void ToHalfKernel(Index1D index, int stride, int n, ArrayView<float> source, ArrayView<Half> destination)
    {
        for (int i = index; i < n; i += stride)
        {
            destination[i] = (Half)source[i];
        }
    }

    // ---- CPU backend

    static unsafe void GatherHost(LeanShape s, int* ids, int* table, float* store32, ushort* store16, byte* labels, float* x, int* y)
    {
        int pixels = s.Height * s.Width, entries = s.Entries;
        Parallel.For(0, s.Rows, b =>
        {
            int g = ids[b], img = g / pixels, p = g % pixels;
            y[b] = labels[g];
            for (int e = 0; e < entries; e++)
            {
                int* row = table + e * TableWidth;
                int first = row[0], count = row[1], h = row[2], w = row[3], hw = h * w;
                Taps(p / s.Width, p % s.Width, h, w, s, out int i00, out int i01, out int i10, out int i11, out float wx, out float wy);
                long baseIndex = img * s.RecordSize + row[4];
                float* xr = x + (long)b * s.Channels + first;
                for (int c = 0; c < count; c++, baseIndex += hw)
                {
                    xr[c] = store32 != null
                        ? Blend(store32[baseIndex + i00], store32[baseIndex + i01], store32[baseIndex + i10], store32[baseIndex + i11], wx, wy)
                        : Blend(FromHalf(store16[baseIndex + i00]), FromHalf(store16[baseIndex + i01]), FromHalf(store16[baseIndex + i10]),
                            FromHalf(store16[baseIndex + i11]), wx, wy);
                }
            }
        });
    }

    static float FromHalf(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    static unsafe void AccumulateHost(LeanShape s, int* table, float* native, float* parameters, float* a1)
    {
        int hidden = s.Hidden;
        Parallel.For(0, s.Members * s.Rows, item =>
        {
            int m = item / s.Rows, q = item % s.Rows, p = s.Start + q;
            float* z = a1 + (long)item * hidden;
            float* bias = parameters + (long)m * s.MemberStride + s.BiasOffset;
            for (int j = 0; j < hidden; j++)
            {
                z[j] = bias[j];
            }
            for (int e = 0; e < s.Entries; e++)
            {
                int* row = table + e * TableWidth;
                Taps(p / s.Width, p % s.Width, row[2], row[3], s, out int i00, out int i01, out int i10, out int i11, out float wx, out float wy);
                float* y = native + m * s.RecordSize + row[4];
                float* r00 = y + (long)i00 * hidden, r01 = y + (long)i01 * hidden, r10 = y + (long)i10 * hidden, r11 = y + (long)i11 * hidden;
                int j = 0;
                var vx0 = Vector256.Create(1f - wx);
                var vx1 = Vector256.Create(wx);
                var vy0 = Vector256.Create(1f - wy);
                var vy1 = Vector256.Create(wy);
                for (; j + 8 <= hidden; j += 8)
                {
                    var top = vx0 * Vector256.Load(r00 + j) + vx1 * Vector256.Load(r01 + j);
                    var bottom = vx0 * Vector256.Load(r10 + j) + vx1 * Vector256.Load(r11 + j);
                    Vector256.Store(Vector256.Load(z + j) + (vy0 * top + vy1 * bottom), z + j);
                }
                for (; j < hidden; j++)
                {
                    z[j] += Blend(r00[j], r01[j], r10[j], r11[j], wx, wy);
                }
            }
            for (int j = 0; j < hidden; j++)
            {
                z[j] = MathF.Max(z[j], 0f);
            }
        });
    }

    // ---- launchers

    /// <summary>x (rows, D) and y (rows) for pixel ids from an fp32 store of native maps.</summary>
    public static unsafe void Gather(ExecutionPlan plan, LeanShape s, ArrayView<int> ids, ArrayView<int> table, ArrayView<int> channelEntry,
        ArrayView<float> store, ArrayView<byte> labels, ArrayView<float> x, ArrayView<int> y)
    {
        var dev = plan.Device;
        if (plan.OnHost)
        {
            dev.Synchronize();
            GatherHost(s, (int*)ids.LoadEffectiveAddressAsPtr(), (int*)table.LoadEffectiveAddressAsPtr(), (float*)store.LoadEffectiveAddressAsPtr(),
                null, (byte*)labels.LoadEffectiveAddressAsPtr(), (float*)x.LoadEffectiveAddressAsPtr(), (int*)y.LoadEffectiveAddressAsPtr());
            return;
        }
        LaunchGather(dev, s, ids, table, channelEntry, new Float32Store(store), labels, x, y);
    }

    /// <summary>The same from an fp16 store.</summary>
    public static unsafe void Gather(ExecutionPlan plan, LeanShape s, ArrayView<int> ids, ArrayView<int> table, ArrayView<int> channelEntry,
        ArrayView<Half> store, ArrayView<byte> labels, ArrayView<float> x, ArrayView<int> y)
    {
        var dev = plan.Device;
        if (plan.OnHost)
        {
            dev.Synchronize();
            GatherHost(s, (int*)ids.LoadEffectiveAddressAsPtr(), (int*)table.LoadEffectiveAddressAsPtr(), null,
                (ushort*)store.LoadEffectiveAddressAsPtr(), (byte*)labels.LoadEffectiveAddressAsPtr(), (float*)x.LoadEffectiveAddressAsPtr(),
                (int*)y.LoadEffectiveAddressAsPtr());
            return;
        }
        LaunchGather(dev, s, ids, table, channelEntry, new Float16Store(store), labels, x, y);
    }

    static void LaunchGather<TStore>(ComputeDevice dev, LeanShape s, ArrayView<int> ids, ArrayView<int> table,
        ArrayView<int> channelEntry, TStore store, ArrayView<byte> labels, ArrayView<float> x, ArrayView<int> y)
        where TStore : struct, INativeStore
    {
        var k = dev.Kernel(GatherKernel<TStore>, a => a.LoadAutoGroupedStreamKernel<Index1D, int, LeanShape, ArrayView<int>, ArrayView<int>,
            ArrayView<int>, TStore, ArrayView<byte>, ArrayView<float>, ArrayView<int>>(GatherKernel));
        int threads = dev.StrideThreads((long)s.Rows * s.Channels);
        k(threads, threads, s, ids, table, channelEntry, store, labels, x, y);
    }

    /// <summary>a1 (M, rows, H1) = ReLU(b1 + Σ_e Up(Y_e)) for pixels [Start, Start + Rows); native: (M, RecordSize).</summary>
    public static unsafe void Accumulate(ExecutionPlan plan, LeanShape s, ArrayView<int> table, ArrayView<float> native, ArrayView<float> parameters,
        ArrayView<float> a1)
    {
        var dev = plan.Device;
        if (plan.OnHost)
        {
            dev.Synchronize();
            AccumulateHost(s, (int*)table.LoadEffectiveAddressAsPtr(), (float*)native.LoadEffectiveAddressAsPtr(),
                (float*)parameters.LoadEffectiveAddressAsPtr(), (float*)a1.LoadEffectiveAddressAsPtr());
            return;
        }
        var k = dev.Kernel(AccumulateKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, LeanShape, ArrayView<int>, ArrayView<float>,
            ArrayView<float>, ArrayView<float>>(AccumulateKernel));
        int threads = dev.StrideThreads((long)s.Members * s.Rows * s.Hidden);
        k(threads, threads, s, table, native, parameters, a1);
    }

    /// <summary>destination[i] = (fp16) source[i] for the first n values.</summary>
    public static void ToHalf(ComputeDevice dev, ArrayView<float> source, ArrayView<Half> destination, int n)
    {
        var k = dev.Kernel(ToHalfKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, ArrayView<float>, ArrayView<Half>>(ToHalfKernel));
        int threads = dev.StrideThreads(n);
        k(threads, threads, n, source, destination);
    }
}
