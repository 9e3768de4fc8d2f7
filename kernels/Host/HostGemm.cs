// HostGemm — the CPU backend of Gemm: the same strided, batched C = act(α·A·B + bias + R), computed by the host's
// SIMD units straight on the CPU accelerator's memory (no copies). ILGPU's CPU accelerator runs one simulated GPU
// thread per OS thread and cannot vectorise, so on a machine without a GPU the heavy products (convolutions through
// im2col, linear layers, attention, the pixel classifier) go here; everything else stays on the ILGPU kernels.
//   Blocking as in BLIS: B packed in NR-wide column panels (KC deep), A in MR rows of KC each, the convolutions'
//   micro-kernel (HostMicroKernels: 8×32 on AVX-512, 6×16 on AVX2), a per-task MC×NC tile accumulating over K blocks,
//   and the epilogue applied once per tile. Tasks are (batch, row block, column block), run in parallel.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace IlgpuDiffSeg.Kernels;

public static unsafe class HostGemm
{
    const int KC = 256, MC = 72, NC = 256;

    static int MR => HostMicroKernels.MR;

    static int NR => HostMicroKernels.NR;

    [ThreadStatic] static float[]? packA;
    [ThreadStatic] static float[]? packB;
    [ThreadStatic] static float[]? tile;

    /// <summary>Runs <paramref name="s"/> on host pointers; bias and residual may be null.</summary>
    public static void Run(GemmShape s, float* a, float* b, float* c, float* bias, float* residual)
    {
        if (s.M <= 0 || s.N <= 0 || s.Batches <= 0)
        {
            return;
        }
        int mBlocks = (s.M + MC - 1) / MC, nBlocks = (s.N + NC - 1) / NC;
        long tasks = s.Batches * mBlocks * nBlocks;
        // Pointers cannot be captured by a lambda; pass them as integers.
        nint pa = (nint)a, pb = (nint)b, pc = (nint)c, pbias = (nint)bias, pres = (nint)residual;
        if (tasks == 1 || (long)s.M * s.N * Math.Max(s.K, 1) * s.Batches < 32_768)
        {
            for (long t = 0; t < tasks; t++)
            {
                Task(s, t, mBlocks, nBlocks, pa, pb, pc, pbias, pres);
            }
            return;
        }
        Parallel.For(0L, tasks, t => Task(s, t, mBlocks, nBlocks, pa, pb, pc, pbias, pres));
    }

    static void Task(GemmShape s, long t, int mBlocks, int nBlocks, nint pa, nint pb, nint pc, nint pbias, nint pres)
    {
        int jBlock = (int)(t % nBlocks);
        int iBlock = (int)(t / nBlocks % mBlocks);
        long batch = t / ((long)nBlocks * mBlocks);
        int b1 = (int)(batch % s.Batch1), b0 = (int)(batch / s.Batch1);
        float* a = (float*)pa + s.AOffset + (long)b0 * s.ABatch0 + (long)b1 * s.ABatch1;
        float* b = (float*)pb + s.BOffset + (long)b0 * s.BBatch0 + (long)b1 * s.BBatch1;
        float* c = (float*)pc + s.COffset + (long)b0 * s.CBatch0 + (long)b1 * s.CBatch1;
        float* bias = pbias == 0 ? null : (float*)pbias + (long)b0 * s.BiasBatch0 + (long)b1 * s.BiasBatch1;
        float* residual = pres == 0 ? null : (float*)pres + s.COffset + (long)b0 * s.CBatch0 + (long)b1 * s.CBatch1;
        int i0 = iBlock * MC, j0 = jBlock * NC;
        int mc = Math.Min(MC, s.M - i0), nc = Math.Min(NC, s.N - j0);
        packA ??= GC.AllocateUninitializedArray<float>((MC + 8) * KC, pinned: true);
        packB ??= GC.AllocateUninitializedArray<float>(NC * KC, pinned: true);
        tile ??= GC.AllocateUninitializedArray<float>(MC * NC, pinned: true);
        fixed (float* ap = packA, bp = packB, tp = tile)
        {
            new Span<float>(tp, MC * NC).Clear();
            for (int k0 = 0; k0 < s.K; k0 += KC)
            {
                int kc = Math.Min(KC, s.K - k0);
                PackA(s, a, i0, mc, k0, kc, ap);
                PackB(s, b, j0, nc, k0, kc, bp);
                for (int jr = 0; jr < nc; jr += NR)
                {
                    for (int ir = 0; ir < mc; ir += MR)
                    {
                        HostMicroKernels.Gemm(kc, ap + ir * kc, kc, bp + jr * kc, tp + ir * NC + jr, NC);
                    }
                }
            }
            Epilogue(s, tp, c, bias, residual, i0, mc, j0, nc);
        }
    }

    /// <summary>A[i0.., k0..] into MR-row panels: panel p holds rows p·MR..p·MR+MR−1, kc values each (zero past M).</summary>
    static void PackA(GemmShape s, float* a, int i0, int mc, int k0, int kc, float* dst)
    {
        for (int ir = 0; ir < mc; ir += MR)
        {
            float* panel = dst + ir * kc;
            for (int r = 0; r < MR; r++)
            {
                int i = i0 + ir + r;
                if (ir + r >= mc)
                {
                    new Span<float>(panel + r * kc, kc).Clear();
                    continue;
                }
                float* row = a + (long)i * s.ARow + (long)k0 * s.ACol;
                for (int k = 0; k < kc; k++)
                {
                    panel[r * kc + k] = row[(long)k * s.ACol];
                }
            }
        }
    }

    /// <summary>B[k0.., j0..] into NR-column panels: panel p holds, for each k, columns p·NR..p·NR+NR−1 (zero past N).</summary>
    static void PackB(GemmShape s, float* b, int j0, int nc, int k0, int kc, float* dst)
    {
        for (int jr = 0; jr < nc; jr += NR)
        {
            float* panel = dst + jr * kc;
            int width = Math.Min(NR, nc - jr);
            for (int k = 0; k < kc; k++)
            {
                float* src = b + (long)(k0 + k) * s.BRow + (long)(j0 + jr) * s.BCol;
                float* d = panel + k * NR;
                if (s.BCol == 1 && width == NR)
                {
                    for (int j = 0; j < NR; j += 8)
                    {
                        Vector256.Store(Vector256.Load(src + j), d + j);
                    }
                    continue;
                }
                for (int j = 0; j < width; j++)
                {
                    d[j] = src[(long)j * s.BCol];
                }
                for (int j = width; j < NR; j++)
                {
                    d[j] = 0f;
                }
            }
        }
    }

    static void Epilogue(GemmShape s, float* t, float* c, float* bias, float* residual, int i0, int mc, int j0, int nc)
    {
        for (int r = 0; r < mc; r++)
        {
            int i = i0 + r;
            for (int q = 0; q < nc; q++)
            {
                int j = j0 + q;
                long o = (long)i * s.CRow + (long)j * s.CCol;
                float v = s.Alpha * t[r * NC + q];
                if (bias != null)
                {
                    v += bias[(long)i * s.BiasRow + (long)j * s.BiasCol];
                }
                if (residual != null)
                {
                    v += residual[o];
                }
                c[o] = s.Act == (int)Activation.Relu ? MathF.Max(v, 0f) : v;
            }
        }
    }
}
