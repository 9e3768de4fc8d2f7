// HostBackend — the CPU backend's side of every op that has one: the host runs them straight on the CPU accelerator's
// memory (no copies), after the queued ILGPU kernels have finished. ILGPU's CPU accelerator runs one simulated GPU thread
// per OS thread and cannot vectorise, so without a GPU the products (HostGemm: convolutions through im2col, linear
// layers, attention, the pixel classifier) and the classifier's small per-item kernels (one simulated thread each costs
// more than its work) go here, while every other op stays an ILGPU kernel. A launcher asks once — its kernel choice
// IsHost(), or the plan's OnHost — and hands the whole op to one method here.
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static unsafe class HostBackend
{
    /// <summary>Runs a kernel's per-item body for items [0, <paramref name="items"/>) over the cores: the kernel's code, so its
    /// bits.</summary>
    public static void ForEach(ComputeDevice dev, int items, Action<int> body)
    {
        dev.Synchronize();
        Parallel.For(0, items, body);
    }

    /// <summary>The address of a CPU-accelerator view, for host code.</summary>
    public static float* Pointer(ArrayView<float> view) => (float*)view.LoadEffectiveAddressAsPtr();

    public static T* Pointer<T>(ArrayView<T> view) where T : unmanaged => (T*)view.LoadEffectiveAddressAsPtr();

    /// <summary>C = act(α·A·B + bias + R) on the host; <paramref name="roundToHalf"/>: A and B rounded to fp16 first (v4's
    /// operands).</summary>
    public static void Gemm(ComputeDevice dev, GemmShape s, ArrayView<float> a, ArrayView<float> b, ArrayView<float> c,
        ArrayView<float>? bias, ArrayView<float>? residual, bool roundToHalf)
    {
        dev.Synchronize();
        using var ha = new HostOperand(a, roundToHalf);
        using var hb = new HostOperand(b, roundToHalf);
        HostGemm.Run(s, ha.Pointer, hb.Pointer, Pointer(c), bias is { } bv ? Pointer(bv) : null, residual is { } rv ? Pointer(rv) : null);
    }

    /// <summary>Output pixels per im2col block: the column matrix stays a few MB whatever the image.</summary>
    const int ConvColumns = 4096;

    /// <summary>y = conv(x, w) + b (+ residual) as im2col + HostGemm, one image and one block of output pixels at a time.</summary>
    public static void Conv2d(ComputeDevice dev, ConvShape s, ArrayView<float> x, ArrayView<float> w, ArrayView<float>? bias,
        ArrayView<float>? residual, ArrayView<float> y, bool roundToHalf)
    {
        dev.Synchronize();
        using var hx = new HostOperand(x, roundToHalf);
        using var hw = new HostOperand(w, roundToHalf);
        float* pb = bias is { } bv ? Pointer(bv) : null;
        float* pr = residual is { } rv ? Pointer(rv) : null;
        float* py = Pointer(y);
        int rows = s.Cin * s.K * s.K, pixels = s.Ho * s.Wo;
        bool direct = s.K == 1 && s.Stride == 1 && s.Pad == 0;
        int columns = Math.Min(pixels, ConvColumns);
        var cols = direct ? [] : GC.AllocateUninitializedArray<float>(rows * columns, pinned: true);
        fixed (float* pc = cols)
        {
            nint colPtr = (nint)pc, xPtr = (nint)hx.Pointer;
            for (int n = 0; n < s.N; n++)
            {
                for (int p0 = 0; p0 < pixels; p0 += columns)
                {
                    int count = Math.Min(columns, pixels - p0);
                    float* xn = hx.Pointer + (long)n * s.Cin * s.H * s.W;
                    var g = new GemmShape
                    {
                        M = s.Cout, N = count, K = rows, Batch0 = 1, Batch1 = 1, Alpha = 1f,
                        ARow = rows, ACol = 1,
                        BRow = direct ? pixels : count, BCol = 1,
                        CRow = pixels, CCol = 1, COffset = n * s.Cout * pixels + p0,
                        BiasRow = 1, HasBias = s.HasBias, HasResidual = s.HasResidual,
                    };
                    if (!direct)
                    {
                        int nn = n, start = p0;
                        Parallel.For(0, rows, r => Im2ColRow(s, (float*)xPtr + (long)nn * s.Cin * s.H * s.W, r, start, count,
                            (float*)colPtr + (long)r * count));
                    }
                    HostGemm.Run(g, hw.Pointer, direct ? xn + p0 : pc, py, pb, pr);
                }
            }
        }
    }

    /// <summary>Row r = (ci, ky, kx) of the column matrix for output pixels [p0, p0 + count).</summary>
    static void Im2ColRow(ConvShape s, float* x, int r, int p0, int count, float* dst)
    {
        int kx = r % s.K, ky = r / s.K % s.K, ci = r / (s.K * s.K);
        float* plane = x + (long)ci * s.H * s.W;
        for (int q = 0; q < count; q++)
        {
            int p = p0 + q, oy = p / s.Wo, ox = p % s.Wo;
            int iy = oy * s.Stride - s.Pad + ky, ix = ox * s.Stride - s.Pad + kx;
            dst[q] = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W ? plane[iy * s.W + ix] : 0f;
        }
    }

    /// <summary>
    /// An operand as host code reads it: the view's own memory, or — for fp16 operands — a pinned copy with every value
    /// rounded to fp16 (nearest-even), which stays at its address until disposed.
    /// </summary>
    readonly struct HostOperand : IDisposable
    {
        readonly GCHandle handle;

        public HostOperand(ArrayView<float> view, bool roundToHalf)
        {
            Pointer = HostBackend.Pointer(view);
            if (!roundToHalf)
            {
                return;
            }
            var copy = GC.AllocateUninitializedArray<float>(checked((int)view.Length), pinned: true);
            nint source = (nint)Pointer;
            Parallel.For(0, (copy.Length + 65535) / 65536, chunk =>
            {
                int start = chunk * 65536, end = Math.Min(copy.Length, start + 65536);
                for (int i = start; i < end; i++)
                {
                    copy[i] = (float)(System.Half)((float*)source)[i];
                }
            });
            // Pinned-heap arrays never move; the handle only keeps the copy alive until Dispose.
            handle = GCHandle.Alloc(copy);
            Pointer = (float*)Marshal.UnsafeAddrOfPinnedArrayElement(copy, 0);
        }

        public float* Pointer { get; }

        public void Dispose()
        {
            if (handle.IsAllocated)
            {
                handle.Free();
            }
        }
    }
}
