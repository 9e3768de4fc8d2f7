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

public static unsafe partial class HostBackend
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

    /// <summary>Floats of the backward passes' column buffer (4 MB): blocks of output rows are sized to it.</summary>
    const int GradColumnFloats = 1 << 20;

    /// <summary>Output rows per block of a backward pass: whole rows, so im2col and col2im walk (oy, ox) without division.</summary>
    static int GradBlockRows(ConvShape s, int columnRows) => Math.Clamp(GradColumnFloats / Math.Max(1, columnRows * s.Wo), 1, s.Ho);

    /// <summary>
    /// dx (+)= conv_transpose(dy, w) on the host: per image and block of dy rows, the column buffer cols = wᵀ·dy (HostGemm,
    /// (Cin·k²) × pixels), then col2im adds it into dx, one task per input channel — each plane written by one task, taps
    /// in order: deterministic. A 1×1 convolution at stride 1 is the product itself.
    /// </summary>
    public static void Conv2dBackwardInput(ComputeDevice dev, ConvShape s, ArrayView<float> dy, ArrayView<float> w, ArrayView<float> dx,
        bool accumulate, bool roundToHalf)
    {
        dev.Synchronize();
        using var hdy = new HostOperand(dy, roundToHalf);
        using var hw = new HostOperand(w, roundToHalf);
        float* pdx = Pointer(dx);
        int kk = s.K * s.K, rows = s.Cin * kk, pixels = s.Ho * s.Wo, plane = s.H * s.W;
        // wᵀ (Cin·k² × Cout), row-major: HostGemm packs its rows with unit stride.
        var transposed = GC.AllocateUninitializedArray<float>(rows * s.Cout, pinned: true);
        for (int co = 0; co < s.Cout; co++)
        {
            for (int r = 0; r < rows; r++)
            {
                transposed[r * s.Cout + co] = hw.Pointer[(long)co * rows + r];
            }
        }
        fixed (float* pt = transposed)
        {
            if (s.K == 1 && s.Stride == 1)
            {
                var direct = new GemmShape
                {
                    M = s.Cin, N = pixels, K = s.Cout, Batch0 = s.N, Batch1 = 1, Alpha = 1f, ARow = s.Cout, ACol = 1,
                    BRow = pixels, BCol = 1, BBatch0 = s.Cout * pixels, CRow = pixels, CCol = 1, CBatch0 = s.Cin * pixels,
                };
                HostGemm.Run(direct, pt, hdy.Pointer, pdx, null, accumulate ? pdx : null);
                return;
            }
            if (!accumulate)
            {
                new Span<float>(pdx, s.N * s.Cin * plane).Clear();
            }
            int blockRows = GradBlockRows(s, rows);
            var cols = GC.AllocateUninitializedArray<float>(rows * blockRows * s.Wo, pinned: true);
            fixed (float* pc = cols)
            {
                nint colPtr = (nint)pc, dxPtr = (nint)pdx;
                for (int n = 0; n < s.N; n++)
                {
                    for (int oy0 = 0; oy0 < s.Ho; oy0 += blockRows)
                    {
                        int count = Math.Min(blockRows, s.Ho - oy0) * s.Wo;
                        var g = new GemmShape
                        {
                            M = rows, N = count, K = s.Cout, Batch0 = 1, Batch1 = 1, Alpha = 1f, ARow = s.Cout, ACol = 1,
                            BOffset = n * s.Cout * pixels + oy0 * s.Wo, BRow = pixels, BCol = 1, CRow = count, CCol = 1,
                        };
                        HostGemm.Run(g, pt, hdy.Pointer, pc, null, null);
                        int nn = n, first = oy0;
                        Parallel.For(0, s.Cin, ci => Col2ImChannel(s, (float*)colPtr, count, first, ci,
                            (float*)dxPtr + ((long)nn * s.Cin + ci) * plane));
                    }
                }
            }
        }
    }

    /// <summary>Adds channel ci's rows of the column buffer (its k² taps × the block's dy pixels from row oy0) into its dx plane.</summary>
    static void Col2ImChannel(ConvShape s, float* cols, int count, int oy0, int ci, float* plane)
    {
        int blockRows = count / s.Wo;
        for (int ky = 0; ky < s.K; ky++)
        {
            for (int kx = 0; kx < s.K; kx++)
            {
                float* tap = cols + (long)((ci * s.K + ky) * s.K + kx) * count;
                var (oxLo, oxHi) = InsideColumns(s, kx);
                for (int r = 0; r < blockRows; r++)
                {
                    int iy = (oy0 + r) * s.Stride - s.Pad + ky;
                    if (iy < 0 || iy >= s.H)
                    {
                        continue;
                    }
                    float* src = tap + r * s.Wo;
                    float* dst = plane + iy * s.W - s.Pad + kx;
                    for (int ox = oxLo; ox < oxHi; ox++)
                    {
                        dst[ox * s.Stride] += src[ox];
                    }
                }
            }
        }
    }

    /// <summary>The output columns [lo, hi) whose tap kx lands inside the input row: 0 ≤ ox·stride − pad + kx &lt; W.</summary>
    static (int Lo, int Hi) InsideColumns(ConvShape s, int kx) =>
        (Math.Max(0, -(int)Math.Floor((kx - s.Pad) / (double)s.Stride)),
            Math.Min(s.Wo, (int)Math.Floor((s.W - 1 + s.Pad - kx) / (double)s.Stride) + 1));

    /// <summary>
    /// dw += Σ dy ⊗ im2col(x) on the host: per image and block of output rows, the transposed column buffer (pixels ×
    /// Cin·k²), then HostGemm dy·cols with residual = dw — the blocks add in order: deterministic. db += Σ dy (double sums,
    /// from fp32 dy), one task per channel.
    /// </summary>
    public static void Conv2dBackwardWeights(ComputeDevice dev, ConvShape s, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dw,
        ArrayView<float>? db, bool roundToHalf)
    {
        dev.Synchronize();
        int kk = s.K * s.K, rows = s.Cin * kk, pixels = s.Ho * s.Wo;
        if (db is { } dbv)
        {
            nint dyRaw = (nint)Pointer(dy), dbPtr = (nint)Pointer(dbv);
            Parallel.For(0, s.Cout, co =>
            {
                double sum = 0;
                for (int n = 0; n < s.N; n++)
                {
                    float* plane = (float*)dyRaw + ((long)n * s.Cout + co) * pixels;
                    for (int p = 0; p < pixels; p++)
                    {
                        sum += plane[p];
                    }
                }
                ((float*)dbPtr)[co] += (float)sum;
            });
        }
        using var hx = new HostOperand(x, roundToHalf);
        using var hdy = new HostOperand(dy, roundToHalf);
        float* pdw = Pointer(dw);
        int blockRows = GradBlockRows(s, rows);
        var cols = GC.AllocateUninitializedArray<float>(blockRows * s.Wo * rows, pinned: true);
        fixed (float* pc = cols)
        {
            nint colPtr = (nint)pc, xPtr = (nint)hx.Pointer;
            for (int n = 0; n < s.N; n++)
            {
                for (int oy0 = 0; oy0 < s.Ho; oy0 += blockRows)
                {
                    int blockRowCount = Math.Min(blockRows, s.Ho - oy0), count = blockRowCount * s.Wo;
                    int nn = n, first = oy0;
                    Parallel.For(0, blockRowCount, r => Im2ColTransposedRow(s, (float*)xPtr + (long)nn * s.Cin * s.H * s.W, first + r,
                        (float*)colPtr + (long)r * s.Wo * rows));
                    var g = new GemmShape
                    {
                        M = s.Cout, N = rows, K = count, Batch0 = 1, Batch1 = 1, Alpha = 1f,
                        AOffset = n * s.Cout * pixels + oy0 * s.Wo, ARow = pixels, ACol = 1,
                        BRow = rows, BCol = 1, CRow = rows, CCol = 1, HasResidual = 1,
                    };
                    HostGemm.Run(g, hdy.Pointer, pc, pdw, null, pdw);
                }
            }
        }
    }

    /// <summary>Output row oy of the transposed im2col matrix: for each ox the Cin·k² values (ci, ky, kx) it reads, 0 in padding.</summary>
    static void Im2ColTransposedRow(ConvShape s, float* x, int oy, float* dst)
    {
        int rows = s.Cin * s.K * s.K;
        for (int ox = 0; ox < s.Wo; ox++)
        {
            float* d = dst + (long)ox * rows;
            for (int ci = 0; ci < s.Cin; ci++)
            {
                float* plane = x + (long)ci * s.H * s.W;
                for (int ky = 0; ky < s.K; ky++)
                {
                    int iy = oy * s.Stride - s.Pad + ky;
                    for (int kx = 0; kx < s.K; kx++)
                    {
                        int ix = ox * s.Stride - s.Pad + kx;
                        *d++ = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W ? plane[iy * s.W + ix] : 0f;
                    }
                }
            }
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
