// Gemm — batched, arbitrarily strided matrix product with a fused epilogue:
//   C(i,j) = act(alpha · Σ_k A(i,k)·B(k,j) + bias(i,j) + R(i,j))
// Every operand is addressed as base + b0·sBatch0 + b1·sBatch1 + row·sRow + col·sCol, so transposes, the
// (batch, head) split of attention and "linear over a batch of rows" are all strides, with no copies.
//   v1  one C element per grid-stride step.
//   v2  4×4 register tile of C per step: 8 loads feed 16 FMAs. Default on CUDA.
//   v3  the shared-memory tiled kernel of TiledGemm (128×128 tiles, 8×8 per thread), for GPUs; opt-in until measured.
//   v4  TensorCoreGemm: v3's tiling with fp16 operands on tensor cores (mma.sync), fp32 accumulation; opt-in (precision fp16).
// Split K (v1, v2 on CUDA): a product with few outputs and a long K — the pixel classifier's first layer, 10 × 64 × 128
// outputs over K = 8448 — gives v2 only 5,120 threads that each walk all of K. Run instead as K/S-long products into
// S partial buffers (S more threads, S times shorter) and a kernel that sums the partials in a fixed order and applies
// the epilogue.
// Host: the CPU backend (HostBackend.Gemm, HostGemm), the same shape on the host's SIMD units.
// FLOPs = 2·batches·M·N·K.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>Element-wise activation applied in a kernel epilogue.</summary>
public enum Activation
{
    None = 0,
    Relu = 1,
}

/// <summary>Sizes and strides of one batched GEMM. Build with the helpers, not by hand.</summary>
public struct GemmShape
{
    public int M, N, K, Batch0, Batch1;
    public int AOffset, ABatch0, ABatch1, ARow, ACol;
    public int BOffset, BBatch0, BBatch1, BRow, BCol;
    public int COffset, CBatch0, CBatch1, CRow, CCol;
    public int BiasBatch0, BiasBatch1, BiasRow, BiasCol, HasBias, HasResidual, Act;
    public float Alpha;

    /// <summary>Plain row-major C[M,N] = A[M,K]·B[K,N], optionally transposed operands, one batch.</summary>
    public static GemmShape RowMajor(int m, int n, int k, bool transA = false, bool transB = false) => new()
    {
        M = m, N = n, K = k, Batch0 = 1, Batch1 = 1, Alpha = 1f,
        ARow = transA ? 1 : k, ACol = transA ? m : 1,
        BRow = transB ? 1 : n, BCol = transB ? k : 1,
        CRow = n, CCol = 1,
    };

    public readonly long Batches => (long)Batch0 * Batch1;
}

public static class Gemm
{
    // ---- CPU reference

    public static float[] Reference(float[] a, float[] b, float[]? bias, float[]? residual, GemmShape s, int cLength)
    {
        var c = new float[cLength];
        if (residual is not null)
        {
            Array.Copy(residual, c, cLength);
        }
        for (int b0 = 0; b0 < s.Batch0; b0++)
        for (int b1 = 0; b1 < s.Batch1; b1++)
        for (int i = 0; i < s.M; i++)
        for (int j = 0; j < s.N; j++)
        {
            double acc = 0;
            for (int k = 0; k < s.K; k++)
            {
                acc += (double)a[s.AOffset + b0 * s.ABatch0 + b1 * s.ABatch1 + i * s.ARow + k * s.ACol] *
                       b[s.BOffset + b0 * s.BBatch0 + b1 * s.BBatch1 + k * s.BRow + j * s.BCol];
            }
            int o = s.COffset + b0 * s.CBatch0 + b1 * s.CBatch1 + i * s.CRow + j * s.CCol;
            double v = s.Alpha * acc + (bias is null ? 0 : bias[b0 * s.BiasBatch0 + b1 * s.BiasBatch1 + i * s.BiasRow + j * s.BiasCol]) + (residual is null ? 0 : residual[o]);
            c[o] = (float)(s.Act == (int)Activation.Relu ? Math.Max(v, 0) : v);
        }
        return c;
    }

    // ---- GPU kernels

    static float Epilogue(GemmShape s, ArrayView<float> bias, int biasBase, ArrayView<float> residual, int i, int j, int o, float acc)
    {
        float v = s.Alpha * acc;
        if (s.HasBias != 0)
        {
            v += bias[biasBase + i * s.BiasRow + j * s.BiasCol];
        }
        if (s.HasResidual != 0)
        {
            v += residual[o];
        }
        return s.Act == (int)Activation.Relu ? XMath.Max(v, 0f) : v;
    }

    static void KernelV1(Index1D index, int stride, GemmShape s, ArrayView<float> a, ArrayView<float> b, ArrayView<float> bias,
        ArrayView<float> residual, ArrayView<float> c)
    {
        int total = s.Batch0 * s.Batch1 * s.M * s.N;
        for (int e = index; e < total; e += stride)
        {
            int j = e % s.N;
            int i = e / s.N % s.M;
            int b1 = e / (s.N * s.M) % s.Batch1;
            int b0 = e / (s.N * s.M * s.Batch1);
            int aBase = s.AOffset + b0 * s.ABatch0 + b1 * s.ABatch1 + i * s.ARow;
            int bBase = s.BOffset + b0 * s.BBatch0 + b1 * s.BBatch1 + j * s.BCol;
            float acc = 0f;
            for (int k = 0; k < s.K; k++)
            {
                acc += a[aBase + k * s.ACol] * b[bBase + k * s.BRow];
            }
            int o = s.COffset + b0 * s.CBatch0 + b1 * s.CBatch1 + i * s.CRow + j * s.CCol;
            c[o] = Epilogue(s, bias, b0 * s.BiasBatch0 + b1 * s.BiasBatch1, residual, i, j, o, acc);
        }
    }

    static void KernelV2(Index1D index, int stride, GemmShape s, ArrayView<float> a, ArrayView<float> b, ArrayView<float> bias,
        ArrayView<float> residual, ArrayView<float> c)
    {
        int m4 = (s.M + 3) / 4, n4 = (s.N + 3) / 4;
        int total = s.Batch0 * s.Batch1 * m4 * n4;
        for (int item = index; item < total; item += stride)
        {
            int j0 = item % n4 * 4;
            int i0 = item / n4 % m4 * 4;
            int b1 = item / (n4 * m4) % s.Batch1;
            int b0 = item / (n4 * m4 * s.Batch1);
            // Rows/columns past the edge re-read the last valid one and are never stored.
            int aBase = s.AOffset + b0 * s.ABatch0 + b1 * s.ABatch1;
            int bBase = s.BOffset + b0 * s.BBatch0 + b1 * s.BBatch1;
            int ar0 = aBase + i0 * s.ARow;
            int ar1 = aBase + Math.Min(i0 + 1, s.M - 1) * s.ARow;
            int ar2 = aBase + Math.Min(i0 + 2, s.M - 1) * s.ARow;
            int ar3 = aBase + Math.Min(i0 + 3, s.M - 1) * s.ARow;
            int bc0 = bBase + j0 * s.BCol;
            int bc1 = bBase + Math.Min(j0 + 1, s.N - 1) * s.BCol;
            int bc2 = bBase + Math.Min(j0 + 2, s.N - 1) * s.BCol;
            int bc3 = bBase + Math.Min(j0 + 3, s.N - 1) * s.BCol;
            float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
            float c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
            for (int k = 0; k < s.K; k++)
            {
                int ak = k * s.ACol, bk = k * s.BRow;
                float x0 = a[ar0 + ak], x1 = a[ar1 + ak], x2 = a[ar2 + ak], x3 = a[ar3 + ak];
                float y0 = b[bc0 + bk], y1 = b[bc1 + bk], y2 = b[bc2 + bk], y3 = b[bc3 + bk];
                c00 += x0 * y0; c01 += x0 * y1; c02 += x0 * y2; c03 += x0 * y3;
                c10 += x1 * y0; c11 += x1 * y1; c12 += x1 * y2; c13 += x1 * y3;
                c20 += x2 * y0; c21 += x2 * y1; c22 += x2 * y2; c23 += x2 * y3;
                c30 += x3 * y0; c31 += x3 * y1; c32 += x3 * y2; c33 += x3 * y3;
            }
            int cBase = s.COffset + b0 * s.CBatch0 + b1 * s.CBatch1;
            int biasBase = b0 * s.BiasBatch0 + b1 * s.BiasBatch1;
            StoreRow(s, bias, biasBase, residual, c, cBase, i0, j0, c00, c01, c02, c03);
            StoreRow(s, bias, biasBase, residual, c, cBase, i0 + 1, j0, c10, c11, c12, c13);
            StoreRow(s, bias, biasBase, residual, c, cBase, i0 + 2, j0, c20, c21, c22, c23);
            StoreRow(s, bias, biasBase, residual, c, cBase, i0 + 3, j0, c30, c31, c32, c33);
        }
    }

    static void StoreRow(GemmShape s, ArrayView<float> bias, int biasBase, ArrayView<float> residual, ArrayView<float> c, int cBase,
        int i, int j0, float v0, float v1, float v2, float v3)
    {
        if (i >= s.M)
        {
            return;
        }
        int row = cBase + i * s.CRow;
        Store(s, bias, biasBase, residual, c, row, i, j0, v0);
        Store(s, bias, biasBase, residual, c, row, i, j0 + 1, v1);
        Store(s, bias, biasBase, residual, c, row, i, j0 + 2, v2);
        Store(s, bias, biasBase, residual, c, row, i, j0 + 3, v3);
    }

    static void Store(GemmShape s, ArrayView<float> bias, int biasBase, ArrayView<float> residual, ArrayView<float> c, int row, int i,
        int j, float v)
    {
        if (j < s.N)
        {
            int o = row + j * s.CCol;
            c[o] = Epilogue(s, bias, biasBase, residual, i, j, o, v);
        }
    }

    /// <summary>Split K: C(b0, i, j) = epilogue(Σ over the splits of partials[b0, split, i, j]), summed in split order.</summary>
    static void SumSplitsKernel(Index1D index, int stride, GemmShape s, int splits, ArrayView<float> partials, ArrayView<float> bias,
        ArrayView<float> residual, ArrayView<float> c)
    {
        int outputs = s.M * s.N, total = s.Batch0 * outputs;
        for (int e = index; e < total; e += stride)
        {
            int b0 = e / outputs, ij = e - b0 * outputs;
            int i = ij / s.N, j = ij - i * s.N;
            float acc = 0f;
            for (int split = 0; split < splits; split++)
            {
                acc += partials[(b0 * splits + split) * outputs + ij];
            }
            int o = s.COffset + b0 * s.CBatch0 + i * s.CRow + j * s.CCol;
            c[o] = Epilogue(s, bias, b0 * s.BiasBatch0, residual, i, j, o, acc);
        }
    }

    // ---- launcher

    /// <summary>
    /// How many K splits a product should run as: on CUDA, for v1/v2, when it has few outputs (under 2¹⁸) over a long K
    /// (≥ 1,024), the most of 32, 16, …, 2 that divide K into runs of at least 128; else 1.
    /// </summary>
    public static int AutoSplitK(ComputeDevice dev, GemmShape s, MatmulKernel kernel)
    {
        if (dev.IsCpu || kernel is not (MatmulKernel.Direct or MatmulKernel.Registers) || s.Batch1 != 1 || s.Batches * s.M * s.N >= 1 << 18 || s.K < 1024)
        {
            return 1;
        }
        for (int splits = 32; splits > 1; splits /= 2)
        {
            if (s.K % splits == 0 && s.K / splits >= 128)
            {
                return splits;
            }
        }
        return 1;
    }

    /// <summary>
    /// Runs one batched GEMM with <paramref name="kernel"/>. <paramref name="residual"/> may be <paramref name="c"/> itself
    /// (C += A·B). <paramref name="splitK"/>: 0 lets AutoSplitK choose; n &gt; 1 forces n splits (v1/v2, Batch1 = 1, n dividing K).
    /// </summary>
    public static void Run(ComputeDevice dev, GemmShape s, ArrayView<float> a, ArrayView<float> b, ArrayView<float> c,
        ArrayView<float>? bias = null, ArrayView<float>? residual = null, MatmulKernel kernel = MatmulKernel.Registers, int splitK = 0)
    {
        if (s.M <= 0 || s.N <= 0 || s.Batches <= 0)
        {
            return;
        }
        s.HasBias = bias.HasValue ? 1 : 0;
        s.HasResidual = residual.HasValue ? 1 : 0;
        var empty = c.SubView(0, 0);
        int splits = splitK == 0 ? AutoSplitK(dev, s, kernel) : splitK;
        if (splits > 1)
        {
            RunSplitK(dev, s, splits, a, b, c, bias ?? empty, residual ?? empty, kernel);
            return;
        }
        var tile = new TileShape { M = s.M, N = s.N, K = s.K, HasBias = s.HasBias, HasResidual = s.HasResidual, Act = s.Act, Alpha = s.Alpha };
        var aOperand = new StridedOperand(a, s.AOffset, s.Batch1, s.ABatch0, s.ABatch1, s.ARow, s.ACol);
        var bOperand = new StridedOperand(b, s.BOffset, s.Batch1, s.BBatch0, s.BBatch1, s.BRow, s.BCol);
        int batches = checked((int)s.Batches);
        switch (kernel)
        {
            case MatmulKernel.HostSimd or MatmulKernel.HostSimdFp16:
                HostBackend.Gemm(dev, s, a, b, c, bias, residual, roundToHalf: kernel.RoundsOperandsToHalf());
                break;
            case MatmulKernel.TensorCoreFp16:
                TensorCoreGemm.Run(dev, tile, batches, aOperand, bOperand, new StridedOutput(s), bias ?? empty, residual ?? empty, c);
                break;
            case MatmulKernel.Tiled:
                TiledGemm.Run(dev, tile, batches, aOperand, bOperand, new StridedOutput(s), bias ?? empty, residual ?? empty, c);
                break;
            case MatmulKernel.Direct:
            {
                var k = dev.Kernel(KernelV1, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, GemmShape, ArrayView<float>,
                    ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(KernelV1));
                int threads = dev.StrideThreads(s.Batches * s.M * s.N);
                k(threads, threads, s, a, b, bias ?? empty, residual ?? empty, c);
                break;
            }
            default:
            {
                var k = dev.Kernel(KernelV2, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, GemmShape, ArrayView<float>,
                    ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(KernelV2));
                int threads = dev.StrideThreads(s.Batches * ((s.M + 3) / 4) * ((s.N + 3) / 4));
                k(threads, threads, s, a, b, bias ?? empty, residual ?? empty, c);
                break;
            }
        }
    }

    static void RunSplitK(ComputeDevice dev, GemmShape s, int splits, ArrayView<float> a, ArrayView<float> b, ArrayView<float> c,
        ArrayView<float> bias, ArrayView<float> residual, MatmulKernel kernel)
    {
        if (kernel is not (MatmulKernel.Direct or MatmulKernel.Registers) || s.Batch1 != 1 || s.K % splits != 0)
        {
            throw new ArgumentException($"gemm: {splits} K splits need v1/v2, one inner batch and K ({s.K}) a multiple of them");
        }
        int run = s.K / splits, outputs = s.M * s.N;
        // The partial products: the split is the inner batch, each a K/S-long run of A's columns and B's rows.
        var partial = s;
        partial.K = run;
        partial.Batch1 = splits;
        partial.ABatch1 = run * s.ACol;
        partial.BBatch1 = run * s.BRow;
        partial.COffset = 0;
        partial.CBatch0 = splits * outputs;
        partial.CBatch1 = outputs;
        partial.CRow = s.N;
        partial.CCol = 1;
        partial.Alpha = 1f;
        partial.Act = (int)Activation.None;
        using var partials = dev.Allocate(checked(s.Batch0 * splits * outputs));
        Run(dev, partial, a, b, partials.View, kernel: kernel, splitK: 1);
        var k = dev.Kernel(SumSplitsKernel, acc => acc.LoadAutoGroupedStreamKernel<Index1D, int, GemmShape, int, ArrayView<float>,
            ArrayView<float>, ArrayView<float>, ArrayView<float>>(SumSplitsKernel));
        int threads = dev.StrideThreads((long)s.Batch0 * outputs);
        k(threads, threads, s, splits, partials.View, bias, residual, c);
    }
}
