// HostBackend — the CPU backend's side of every op that has one: the host runs them straight on the CPU accelerator's
// memory (no copies), after the queued ILGPU kernels have finished. ILGPU's CPU accelerator runs one simulated GPU thread
// per OS thread and cannot vectorise, so without a GPU the products (HostConv: the convolutions, GroupNorm applied as
// they read their input; HostGemm: linear layers, attention, the pixel classifier), the UNet's element-wise ops and
// norms (HostBackend.Elementwise.cs, HostBackend.GroupNorm.cs) and the classifier's small per-item kernels go here; the
// remaining implicitly grouped kernels run as host code (HostLaunch). A launcher asks once — the device's
// RunsKernelsOnHost, its kernel choice IsHost(), or the plan's OnHost — and hands the whole op to one method here.
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

    /// <summary>
    /// y = conv(act(norm(x)), w) + b (+ residual) on the host (HostConv.Forward); <paramref name="norm"/>: GroupNorm's
    /// coefficients (N, Cin, 4) and SiLU, or none.
    /// </summary>
    public static void Conv2d(ComputeDevice dev, ConvShape s, ArrayView<float> x, ArrayView<float> w, ArrayView<float>? bias,
        ArrayView<float>? residual, ArrayView<float> y, bool roundToHalf, ArrayView<float>? norm = null, bool silu = false)
    {
        dev.Synchronize();
        using var hw = new HostOperand(w, roundToHalf);
        HostConv.Forward(s, Pointer(x), hw.Pointer, bias is { } bv ? Pointer(bv) : null, residual is { } rv ? Pointer(rv) : null,
            Pointer(y), new HostNorm(norm is { } nv ? Pointer(nv) : null, silu), roundToHalf);
    }

    /// <summary>Floats of the backward passes' column buffer (4 MB): blocks of output rows are sized to it.</summary>
    const int GradColumnFloats = 1 << 20;

    /// <summary>Output rows per block of a backward pass: whole rows, so im2col and col2im walk (oy, ox) without division.</summary>
    static int GradBlockRows(ConvShape s, int columnRows) => Math.Clamp(GradColumnFloats / Math.Max(1, columnRows * s.Wo), 1, s.Ho);

    /// <summary>
    /// dx (+)= conv_transpose(dy, w) on the host. Stride 1: the forward of dy with the flipped, transposed weights
    /// (HostConv.BackwardInput). Stride 2: per image and block of dy rows, the column buffer cols = wᵀ·dy (HostGemm, (Cin·k²)
    /// × pixels), then col2im adds it into dx, one task per input channel — each plane written by one task, taps in order:
    /// deterministic.
    /// </summary>
    public static void Conv2dBackwardInput(ComputeDevice dev, ConvShape s, ArrayView<float> dy, ArrayView<float> w, ArrayView<float> dx,
        bool accumulate, bool roundToHalf)
    {
        dev.Synchronize();
        if (s.Stride == 1)
        {
            using var rounded = new HostOperand(w, roundToHalf);
            HostConv.BackwardInput(s, Pointer(dy), rounded.Pointer, Pointer(dx), accumulate, roundToHalf);
            return;
        }
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
    /// dw += Σ dy ⊗ im2col(act(norm(x))) on the host (HostConv.BackwardWeights), the norm as in <see cref="Conv2d"/>; db += Σ dy
    /// per channel (fp32 lanes, then double, images in order).
    /// </summary>
    public static void Conv2dBackwardWeights(ComputeDevice dev, ConvShape s, ArrayView<float> x, ArrayView<float> dy, ArrayView<float> dw,
        ArrayView<float>? db, bool roundToHalf, ArrayView<float>? norm = null, bool silu = false)
    {
        dev.Synchronize();
        int pixels = s.Ho * s.Wo;
        if (db is { } dbv)
        {
            nint dyRaw = (nint)Pointer(dy), dbPtr = (nint)Pointer(dbv);
            HostMath.ForEach(s.Cout, 1, co =>
            {
                double sum = 0;
                for (int n = 0; n < s.N; n++)
                {
                    sum += Sum((float*)dyRaw + ((long)n * s.Cout + co) * pixels, pixels);
                }
                ((float*)dbPtr)[co] += (float)sum;
            });
        }
        HostConv.BackwardWeights(s, Pointer(x), new HostNorm(norm is { } nv ? Pointer(nv) : null, silu), Pointer(dy), Pointer(dw),
            roundToHalf);
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
