// TiledGemm — v3 of Gemm and Conv2d for GPUs: one explicitly grouped kernel, generic over how its operands are read.
//   C(i, j) = act(α·Σ_k A(i, k)·B(k, j) + bias + R) per batch, with A and B given as struct operands:
//     StridedOperand  a strided (batched) matrix — every Gemm;
//     Im2ColOperand   a convolution's input read as its im2col matrix on the fly (implicit GEMM: K = Cin·k², N = N·Ho·Wo).
//   Block tile 128×128, K slices of 8 staged through shared memory (2 × 4 KB), 256 threads each accumulating an 8×8
//   sub-tile in registers (rows ty·4+{0..3} and 64+ty·4+{0..3}, columns likewise, which keeps the shared-memory reads of
//   a warp on distinct banks). Loads into shared memory follow the operand's contiguous dimension, so a warp's global
//   reads coalesce. 64 FMAs per 16 shared loads per thread per k.
// Not yet the CUDA default: it waits for a GPU to measure it against v2 (see benchmarks/IlgpuDiffSeg.Benchmarks gpu).
// Tested against the references on the CPU accelerator with a warp-32 shape (256-thread groups).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>An operand of the tiled kernel: element (row, col) of batch item b.</summary>
public interface ITileOperand
{
    /// <summary>True when consecutive columns are adjacent in memory (then loads run along columns).</summary>
    bool ColumnsContiguous { get; }

    float Load(int batch, int row, int col);
}

/// <summary>A strided, batched matrix: base + b0·batch0 + b1·batch1 + row·rowStride + col·colStride.</summary>
public readonly struct StridedOperand(ArrayView<float> data, int offset, int batch1Count, int batch0Stride, int batch1Stride, int rowStride,
    int colStride) : ITileOperand
{
    public bool ColumnsContiguous => colStride == 1;

    public float Load(int batch, int row, int col) =>
        data[offset + batch / batch1Count * batch0Stride + batch % batch1Count * batch1Stride + row * rowStride + col * colStride];
}

/// <summary>
/// A convolution's input as the (Cin·k², N·Ho·Wo) im2col matrix, computed while loading: row r = (ci, ky, kx), column
/// q = (image, oy, ox). Zero padding outside the image.
/// </summary>
public readonly struct Im2ColOperand(ArrayView<float> x, ConvShape s) : ITileOperand
{
    public bool ColumnsContiguous => true;

    public float Load(int batch, int row, int col)
    {
        int offset = Offset(s, row, col, out _);
        return offset >= 0 ? x[offset] : 0f;
    }

    /// <summary>Where im2col element (row, col) sits in x, or −1 in the zero padding; imageChannel = image·Cin + ci.</summary>
    public static int Offset(ConvShape s, int row, int col, out int imageChannel)
    {
        int kx = row % s.K, ky = row / s.K % s.K, ci = row / (s.K * s.K);
        int pixels = s.Ho * s.Wo;
        int img = col / pixels, p = col % pixels;
        int iy = p / s.Wo * s.Stride - s.Pad + ky, ix = p % s.Wo * s.Stride - s.Pad + kx;
        imageChannel = img * s.Cin + ci;
        return iy >= 0 && iy < s.H && ix >= 0 && ix < s.W ? (imageChannel * s.H + iy) * s.W + ix : -1;
    }
}

/// <summary>
/// Im2ColOperand of the normalized input: each value is GroupNorm's (x − mean)·a + b from GroupNorm.Coefficients, then
/// SiLU when silu ≠ 0, computed while loading — the norm costs no pass of its own. The padding stays zero: PyTorch pads
/// the normalized tensor, not x.
/// </summary>
public readonly struct NormalizedIm2ColOperand(ArrayView<float> x, ArrayView<float> coefficients, ConvShape s, int silu) : ITileOperand
{
    public bool ColumnsContiguous => true;

    public float Load(int batch, int row, int col)
    {
        int offset = Im2ColOperand.Offset(s, row, col, out int imageChannel);
        if (offset < 0)
        {
            return 0f;
        }
        float v = (x[offset] - coefficients[3 * imageChannel]) * coefficients[3 * imageChannel + 1] + coefficients[3 * imageChannel + 2];
        return silu != 0 ? v / (1f + XMath.Exp(-v)) : v;
    }
}

/// <summary>Where C(i, j) of batch item b goes, and which bias applies.</summary>
public interface ITileOutput
{
    int Offset(int batch, int i, int j);

    int BiasIndex(int batch, int i, int j);
}

public readonly struct StridedOutput(GemmShape s) : ITileOutput
{
    public int Offset(int batch, int i, int j) =>
        s.COffset + batch / s.Batch1 * s.CBatch0 + batch % s.Batch1 * s.CBatch1 + i * s.CRow + j * s.CCol;

    public int BiasIndex(int batch, int i, int j) =>
        batch / s.Batch1 * s.BiasBatch0 + batch % s.Batch1 * s.BiasBatch1 + i * s.BiasRow + j * s.BiasCol;
}

/// <summary>Output channel i, column q = (image, pixel) → y[image, i, pixel]; bias per output channel.</summary>
public readonly struct ConvOutput(ConvShape s) : ITileOutput
{
    public int Offset(int batch, int i, int j)
    {
        int pixels = s.Ho * s.Wo;
        return (j / pixels * s.Cout + i) * pixels + j % pixels;
    }

    public int BiasIndex(int batch, int i, int j) => i;
}

/// <summary>Sizes and epilogue of one tiled launch.</summary>
public struct TileShape
{
    public int M, N, K, HasBias, HasResidual, Act;
    public float Alpha;
}

public static class TiledGemm
{
    public const int Tile = 128, Slice = 8, Threads = 256;

    static void Kernel<TA, TB, TC>(TileShape s, TA a, TB b, TC c, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y)
        where TA : struct, ITileOperand
        where TB : struct, ITileOperand
        where TC : struct, ITileOutput
    {
        var sa = SharedMemory.Allocate<float>(Slice * Tile);
        var sb = SharedMemory.Allocate<float>(Slice * Tile);
        int tid = Group.IdxX;
        int batch = Grid.IdxZ;
        int m0 = Grid.IdxY * Tile, n0 = Grid.IdxX * Tile;
        int tx = tid % 16, ty = tid / 16;
        float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c04 = 0, c05 = 0, c06 = 0, c07 = 0;
        float c10 = 0, c11 = 0, c12 = 0, c13 = 0, c14 = 0, c15 = 0, c16 = 0, c17 = 0;
        float c20 = 0, c21 = 0, c22 = 0, c23 = 0, c24 = 0, c25 = 0, c26 = 0, c27 = 0;
        float c30 = 0, c31 = 0, c32 = 0, c33 = 0, c34 = 0, c35 = 0, c36 = 0, c37 = 0;
        float c40 = 0, c41 = 0, c42 = 0, c43 = 0, c44 = 0, c45 = 0, c46 = 0, c47 = 0;
        float c50 = 0, c51 = 0, c52 = 0, c53 = 0, c54 = 0, c55 = 0, c56 = 0, c57 = 0;
        float c60 = 0, c61 = 0, c62 = 0, c63 = 0, c64 = 0, c65 = 0, c66 = 0, c67 = 0;
        float c70 = 0, c71 = 0, c72 = 0, c73 = 0, c74 = 0, c75 = 0, c76 = 0, c77 = 0;
        for (int k0 = 0; k0 < s.K; k0 += Slice)
        {
            for (int r = 0; r < Tile * Slice / Threads; r++)
            {
                int e = tid + r * Threads;
                // A slice (Tile rows × Slice k): along k when k is contiguous, else along rows.
                int am = a.ColumnsContiguous ? e / Slice : e % Tile;
                int ak = a.ColumnsContiguous ? e % Slice : e / Tile;
                int gi = m0 + am, gk = k0 + ak;
                sa[ak * Tile + am] = gi < s.M && gk < s.K ? a.Load(batch, gi, gk) : 0f;
                // B slice (Slice k × Tile columns): along columns when they are contiguous, else along k.
                int bn = b.ColumnsContiguous ? e % Tile : e / Slice;
                int bk = b.ColumnsContiguous ? e / Tile : e % Slice;
                int gj = n0 + bn, gk2 = k0 + bk;
                sb[bk * Tile + bn] = gj < s.N && gk2 < s.K ? b.Load(batch, gk2, gj) : 0f;
            }
            Group.Barrier();
            for (int k = 0; k < Slice; k++)
            {
                int ra = k * Tile + ty * 4, rb = k * Tile + tx * 4;
                float a0 = sa[ra], a1 = sa[ra + 1], a2 = sa[ra + 2], a3 = sa[ra + 3];
                float a4 = sa[ra + 64], a5 = sa[ra + 65], a6 = sa[ra + 66], a7 = sa[ra + 67];
                float b0 = sb[rb], b1 = sb[rb + 1], b2 = sb[rb + 2], b3 = sb[rb + 3];
                float b4 = sb[rb + 64], b5 = sb[rb + 65], b6 = sb[rb + 66], b7 = sb[rb + 67];
                c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3; c04 += a0 * b4; c05 += a0 * b5; c06 += a0 * b6; c07 += a0 * b7;
                c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3; c14 += a1 * b4; c15 += a1 * b5; c16 += a1 * b6; c17 += a1 * b7;
                c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3; c24 += a2 * b4; c25 += a2 * b5; c26 += a2 * b6; c27 += a2 * b7;
                c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3; c34 += a3 * b4; c35 += a3 * b5; c36 += a3 * b6; c37 += a3 * b7;
                c40 += a4 * b0; c41 += a4 * b1; c42 += a4 * b2; c43 += a4 * b3; c44 += a4 * b4; c45 += a4 * b5; c46 += a4 * b6; c47 += a4 * b7;
                c50 += a5 * b0; c51 += a5 * b1; c52 += a5 * b2; c53 += a5 * b3; c54 += a5 * b4; c55 += a5 * b5; c56 += a5 * b6; c57 += a5 * b7;
                c60 += a6 * b0; c61 += a6 * b1; c62 += a6 * b2; c63 += a6 * b3; c64 += a6 * b4; c65 += a6 * b5; c66 += a6 * b6; c67 += a6 * b7;
                c70 += a7 * b0; c71 += a7 * b1; c72 += a7 * b2; c73 += a7 * b3; c74 += a7 * b4; c75 += a7 * b5; c76 += a7 * b6; c77 += a7 * b7;
            }
            Group.Barrier();
        }
        int i0 = m0 + ty * 4, i1 = m0 + 64 + ty * 4, j0 = n0 + tx * 4, j1 = n0 + 64 + tx * 4;
        Row(s, c, batch, bias, residual, y, i0, j0, j1, c00, c01, c02, c03, c04, c05, c06, c07);
        Row(s, c, batch, bias, residual, y, i0 + 1, j0, j1, c10, c11, c12, c13, c14, c15, c16, c17);
        Row(s, c, batch, bias, residual, y, i0 + 2, j0, j1, c20, c21, c22, c23, c24, c25, c26, c27);
        Row(s, c, batch, bias, residual, y, i0 + 3, j0, j1, c30, c31, c32, c33, c34, c35, c36, c37);
        Row(s, c, batch, bias, residual, y, i1, j0, j1, c40, c41, c42, c43, c44, c45, c46, c47);
        Row(s, c, batch, bias, residual, y, i1 + 1, j0, j1, c50, c51, c52, c53, c54, c55, c56, c57);
        Row(s, c, batch, bias, residual, y, i1 + 2, j0, j1, c60, c61, c62, c63, c64, c65, c66, c67);
        Row(s, c, batch, bias, residual, y, i1 + 3, j0, j1, c70, c71, c72, c73, c74, c75, c76, c77);
    }

    static void Row<TC>(TileShape s, TC c, int batch, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y, int i, int j0,
        int j1, float v0, float v1, float v2, float v3, float v4, float v5, float v6, float v7) where TC : struct, ITileOutput
    {
        if (i >= s.M)
        {
            return;
        }
        Store(s, c, batch, bias, residual, y, i, j0, v0);
        Store(s, c, batch, bias, residual, y, i, j0 + 1, v1);
        Store(s, c, batch, bias, residual, y, i, j0 + 2, v2);
        Store(s, c, batch, bias, residual, y, i, j0 + 3, v3);
        Store(s, c, batch, bias, residual, y, i, j1, v4);
        Store(s, c, batch, bias, residual, y, i, j1 + 1, v5);
        Store(s, c, batch, bias, residual, y, i, j1 + 2, v6);
        Store(s, c, batch, bias, residual, y, i, j1 + 3, v7);
    }

    internal static void Store<TC>(TileShape s, TC c, int batch, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y, int i, int j,
        float acc) where TC : struct, ITileOutput
    {
        if (j >= s.N)
        {
            return;
        }
        int o = c.Offset(batch, i, j);
        float v = s.Alpha * acc;
        if (s.HasBias != 0)
        {
            v += bias[c.BiasIndex(batch, i, j)];
        }
        if (s.HasResidual != 0)
        {
            v += residual[o];
        }
        y[o] = s.Act == (int)Activation.Relu ? XMath.Max(v, 0f) : v;
    }

    /// <summary>Launches the tiled kernel over ceil(N/128) × ceil(M/128) × batches groups of 256 threads.</summary>
    public static void Run<TA, TB, TC>(ComputeDevice dev, string key, TileShape s, int batches, TA a, TB b, TC c, ArrayView<float> bias,
        ArrayView<float> residual, ArrayView<float> y)
        where TA : struct, ITileOperand
        where TB : struct, ITileOperand
        where TC : struct, ITileOutput
    {
        if (dev.Accelerator.MaxNumThreadsPerGroup < Threads)
        {
            throw new NotSupportedException($"the tiled kernel needs {Threads}-thread groups; this accelerator allows " +
                                            $"{dev.Accelerator.MaxNumThreadsPerGroup}");
        }
        Launch(dev, key, Kernel<TA, TB, TC>, s, batches, a, b, c, bias, residual, y);
    }

    /// <summary>One tiled kernel over ceil(N/128) × ceil(M/128) × batches groups of 256 threads (shared with TensorCoreGemm).</summary>
    internal static void Launch<TA, TB, TC>(ComputeDevice dev, string key,
        Action<TileShape, TA, TB, TC, ArrayView<float>, ArrayView<float>, ArrayView<float>> kernel, TileShape s, int batches, TA a, TB b,
        TC c, ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> y)
        where TA : struct, ITileOperand
        where TB : struct, ITileOperand
        where TC : struct, ITileOutput
    {
        var k = dev.Kernel(key, acc => acc.LoadStreamKernel(kernel));
        var grid = new Index3D((s.N + Tile - 1) / Tile, (s.M + Tile - 1) / Tile, batches);
        k(new KernelConfig(grid, new Index3D(Threads, 1, 1)), s, a, b, c, bias, residual, y);
    }
}
