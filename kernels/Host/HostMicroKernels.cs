// HostMicroKernels — the register-blocked inner loops of the CPU backend's convolutions (HostConv), one per vector width:
// AVX-512 (Vector512, 32 registers) where the CPU has it, else AVX2 (Vector256, 16 registers).
//   Gemm  C[MR × NR] += A[MR rows, any row stride][kc] · B[kc × NR] (B packed, rows of NR floats): each k broadcasts MR
//         values of A and loads NR/lanes vectors of B.
//           AVX-512  8 × 32: 16 accumulators, 2 B loads + 8 broadcasts per 16 FMAs. A row block of 8 divides every
//                    channel count of the ADM (multiples of 32, and 3·C for qkv), so weights need no padding.
//           AVX2     6 × 16: 12 accumulators, 2 B loads + 6 broadcasts per 12 FMAs (15 of the 16 registers).
//         A is read in place (row stride lda): the weights are never packed; eight rows of one k are eight L1 hits.
//   Dot   C[i, j] += Σ_v A_i[v]·B_j[v] over a run of L values (a multiple of the lane count): rows of A and B both
//         contiguous — the convolution's weight gradient, whose sum runs over pixels. AVX-512 4 × 4 (16 accumulators,
//         8 loads per 16 FMAs), AVX2 3 × 3 (9 accumulators). A lone row of either side runs the same per-element
//         arithmetic (FMA per lane in order, then Vector.Sum), so where a block boundary falls never changes a bit.
// Zen 4 (this machine's AVX-512) runs a 512-bit FMA as two 256-bit halves: both widths have the same 32 flops a cycle
// per core; the wider one halves the instructions and, with 32 registers, keeps more sums in flight.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace IlgpuDiffSeg.Kernels;

static unsafe class HostMicroKernels
{
    /// <summary>AVX-512 kernels (8 × 32, 4 × 4 dot) rather than AVX2 (6 × 16, 3 × 3 dot).</summary>
    public static readonly bool Wide = Vector512.IsHardwareAccelerated;

    /// <summary>Rows of C per Gemm call.</summary>
    public static readonly int MR = Wide ? 8 : 6;

    /// <summary>Columns of C per Gemm call: the width of a packed B panel.</summary>
    public static readonly int NR = Wide ? 32 : 16;

    /// <summary>Lanes of the dot kernels: run lengths are multiples of this.</summary>
    public static readonly int DotLanes = Wide ? 16 : 8;

    /// <summary>Rows of A (and of B) per dot block.</summary>
    public static readonly int DotRows = Wide ? 4 : 3;

    /// <summary>C[MR × NR] (row stride ldc) += A (MR rows of stride lda) · B (kc × NR, packed).</summary>
    public static void Gemm(int kc, float* a, long lda, float* b, float* c, long ldc)
    {
        if (Wide)
        {
            Gemm8x32(kc, a, lda, b, c, ldc);
        }
        else
        {
            Gemm6x16(kc, a, lda, b, c, ldc);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Gemm8x32(int kc, float* a, long lda, float* b, float* c, long ldc)
    {
        float* a0 = a, a1 = a + lda, a2 = a + 2 * lda, a3 = a + 3 * lda;
        float* a4 = a + 4 * lda, a5 = a + 5 * lda, a6 = a + 6 * lda, a7 = a + 7 * lda;
        var c00 = Vector512.Load(c);
        var c01 = Vector512.Load(c + 16);
        var c10 = Vector512.Load(c + ldc);
        var c11 = Vector512.Load(c + ldc + 16);
        var c20 = Vector512.Load(c + 2 * ldc);
        var c21 = Vector512.Load(c + 2 * ldc + 16);
        var c30 = Vector512.Load(c + 3 * ldc);
        var c31 = Vector512.Load(c + 3 * ldc + 16);
        var c40 = Vector512.Load(c + 4 * ldc);
        var c41 = Vector512.Load(c + 4 * ldc + 16);
        var c50 = Vector512.Load(c + 5 * ldc);
        var c51 = Vector512.Load(c + 5 * ldc + 16);
        var c60 = Vector512.Load(c + 6 * ldc);
        var c61 = Vector512.Load(c + 6 * ldc + 16);
        var c70 = Vector512.Load(c + 7 * ldc);
        var c71 = Vector512.Load(c + 7 * ldc + 16);
        for (int k = 0; k < kc; k++, b += 32)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var x = Vector512.Create(a0[k]);
            c00 = Vector512.FusedMultiplyAdd(x, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a1[k]);
            c10 = Vector512.FusedMultiplyAdd(x, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a2[k]);
            c20 = Vector512.FusedMultiplyAdd(x, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a3[k]);
            c30 = Vector512.FusedMultiplyAdd(x, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(a4[k]);
            c40 = Vector512.FusedMultiplyAdd(x, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(a5[k]);
            c50 = Vector512.FusedMultiplyAdd(x, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(x, b1, c51);
            x = Vector512.Create(a6[k]);
            c60 = Vector512.FusedMultiplyAdd(x, b0, c60);
            c61 = Vector512.FusedMultiplyAdd(x, b1, c61);
            x = Vector512.Create(a7[k]);
            c70 = Vector512.FusedMultiplyAdd(x, b0, c70);
            c71 = Vector512.FusedMultiplyAdd(x, b1, c71);
        }
        c00.Store(c);
        c01.Store(c + 16);
        c10.Store(c + ldc);
        c11.Store(c + ldc + 16);
        c20.Store(c + 2 * ldc);
        c21.Store(c + 2 * ldc + 16);
        c30.Store(c + 3 * ldc);
        c31.Store(c + 3 * ldc + 16);
        c40.Store(c + 4 * ldc);
        c41.Store(c + 4 * ldc + 16);
        c50.Store(c + 5 * ldc);
        c51.Store(c + 5 * ldc + 16);
        c60.Store(c + 6 * ldc);
        c61.Store(c + 6 * ldc + 16);
        c70.Store(c + 7 * ldc);
        c71.Store(c + 7 * ldc + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Gemm6x16(int kc, float* a, long lda, float* b, float* c, long ldc)
    {
        float* a0 = a, a1 = a + lda, a2 = a + 2 * lda, a3 = a + 3 * lda, a4 = a + 4 * lda, a5 = a + 5 * lda;
        var c00 = Vector256.Load(c);
        var c01 = Vector256.Load(c + 8);
        var c10 = Vector256.Load(c + ldc);
        var c11 = Vector256.Load(c + ldc + 8);
        var c20 = Vector256.Load(c + 2 * ldc);
        var c21 = Vector256.Load(c + 2 * ldc + 8);
        var c30 = Vector256.Load(c + 3 * ldc);
        var c31 = Vector256.Load(c + 3 * ldc + 8);
        var c40 = Vector256.Load(c + 4 * ldc);
        var c41 = Vector256.Load(c + 4 * ldc + 8);
        var c50 = Vector256.Load(c + 5 * ldc);
        var c51 = Vector256.Load(c + 5 * ldc + 8);
        for (int k = 0; k < kc; k++, b += 16)
        {
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            var x = Vector256.Create(a0[k]);
            c00 = Vector256.FusedMultiplyAdd(x, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(x, b1, c01);
            x = Vector256.Create(a1[k]);
            c10 = Vector256.FusedMultiplyAdd(x, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(x, b1, c11);
            x = Vector256.Create(a2[k]);
            c20 = Vector256.FusedMultiplyAdd(x, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(x, b1, c21);
            x = Vector256.Create(a3[k]);
            c30 = Vector256.FusedMultiplyAdd(x, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(x, b1, c31);
            x = Vector256.Create(a4[k]);
            c40 = Vector256.FusedMultiplyAdd(x, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(x, b1, c41);
            x = Vector256.Create(a5[k]);
            c50 = Vector256.FusedMultiplyAdd(x, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(x, b1, c51);
        }
        c00.Store(c);
        c01.Store(c + 8);
        c10.Store(c + ldc);
        c11.Store(c + ldc + 8);
        c20.Store(c + 2 * ldc);
        c21.Store(c + 2 * ldc + 8);
        c30.Store(c + 3 * ldc);
        c31.Store(c + 3 * ldc + 8);
        c40.Store(c + 4 * ldc);
        c41.Store(c + 4 * ldc + 8);
        c50.Store(c + 5 * ldc);
        c51.Store(c + 5 * ldc + 8);
    }

    /// <summary>
    /// c[i·ldc + j] += Σ_v a[i][v]·b[j][v] for i &lt; ma, j &lt; mb (each at most DotRows), v over [0, len), len a multiple
    /// of DotLanes.
    /// </summary>
    public static void Dot(int len, float** a, int ma, float** b, int mb, float* c, long ldc)
    {
        if (Wide)
        {
            if (ma == 4 && mb == 4)
            {
                Dot4x4(len, a, b, c, ldc);
                return;
            }
            for (int i = 0; i < ma; i++)
            {
                for (int j = 0; j < mb; j++)
                {
                    c[i * ldc + j] += Dot512(len, a[i], b[j]);
                }
            }
            return;
        }
        if (ma == 3 && mb == 3)
        {
            Dot3x3(len, a, b, c, ldc);
            return;
        }
        for (int i = 0; i < ma; i++)
        {
            for (int j = 0; j < mb; j++)
            {
                c[i * ldc + j] += Dot256(len, a[i], b[j]);
            }
        }
    }

    static float Dot512(int len, float* a, float* b)
    {
        var acc = Vector512<float>.Zero;
        for (int v = 0; v < len; v += 16)
        {
            acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + v), Vector512.Load(b + v), acc);
        }
        return Vector512.Sum(acc);
    }

    static float Dot256(int len, float* a, float* b)
    {
        var acc = Vector256<float>.Zero;
        for (int v = 0; v < len; v += 8)
        {
            acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + v), Vector256.Load(b + v), acc);
        }
        return Vector256.Sum(acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Dot4x4(int len, float** a, float** b, float* c, long ldc)
    {
        float* a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
        Vector512<float> s00 = default, s01 = default, s02 = default, s03 = default, s10 = default, s11 = default, s12 = default;
        Vector512<float> s13 = default, s20 = default, s21 = default, s22 = default, s23 = default, s30 = default, s31 = default;
        Vector512<float> s32 = default, s33 = default;
        for (int v = 0; v < len; v += 16)
        {
            var y0 = Vector512.Load(b0 + v);
            var y1 = Vector512.Load(b1 + v);
            var y2 = Vector512.Load(b2 + v);
            var y3 = Vector512.Load(b3 + v);
            var x = Vector512.Load(a0 + v);
            s00 = Vector512.FusedMultiplyAdd(x, y0, s00);
            s01 = Vector512.FusedMultiplyAdd(x, y1, s01);
            s02 = Vector512.FusedMultiplyAdd(x, y2, s02);
            s03 = Vector512.FusedMultiplyAdd(x, y3, s03);
            x = Vector512.Load(a1 + v);
            s10 = Vector512.FusedMultiplyAdd(x, y0, s10);
            s11 = Vector512.FusedMultiplyAdd(x, y1, s11);
            s12 = Vector512.FusedMultiplyAdd(x, y2, s12);
            s13 = Vector512.FusedMultiplyAdd(x, y3, s13);
            x = Vector512.Load(a2 + v);
            s20 = Vector512.FusedMultiplyAdd(x, y0, s20);
            s21 = Vector512.FusedMultiplyAdd(x, y1, s21);
            s22 = Vector512.FusedMultiplyAdd(x, y2, s22);
            s23 = Vector512.FusedMultiplyAdd(x, y3, s23);
            x = Vector512.Load(a3 + v);
            s30 = Vector512.FusedMultiplyAdd(x, y0, s30);
            s31 = Vector512.FusedMultiplyAdd(x, y1, s31);
            s32 = Vector512.FusedMultiplyAdd(x, y2, s32);
            s33 = Vector512.FusedMultiplyAdd(x, y3, s33);
        }
        c[0] += Vector512.Sum(s00);
        c[1] += Vector512.Sum(s01);
        c[2] += Vector512.Sum(s02);
        c[3] += Vector512.Sum(s03);
        c[ldc] += Vector512.Sum(s10);
        c[ldc + 1] += Vector512.Sum(s11);
        c[ldc + 2] += Vector512.Sum(s12);
        c[ldc + 3] += Vector512.Sum(s13);
        c[2 * ldc] += Vector512.Sum(s20);
        c[2 * ldc + 1] += Vector512.Sum(s21);
        c[2 * ldc + 2] += Vector512.Sum(s22);
        c[2 * ldc + 3] += Vector512.Sum(s23);
        c[3 * ldc] += Vector512.Sum(s30);
        c[3 * ldc + 1] += Vector512.Sum(s31);
        c[3 * ldc + 2] += Vector512.Sum(s32);
        c[3 * ldc + 3] += Vector512.Sum(s33);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Dot3x3(int len, float** a, float** b, float* c, long ldc)
    {
        float* a0 = a[0], a1 = a[1], a2 = a[2], b0 = b[0], b1 = b[1], b2 = b[2];
        Vector256<float> s00 = default, s01 = default, s02 = default, s10 = default, s11 = default, s12 = default;
        Vector256<float> s20 = default, s21 = default, s22 = default;
        for (int v = 0; v < len; v += 8)
        {
            var y0 = Vector256.Load(b0 + v);
            var y1 = Vector256.Load(b1 + v);
            var y2 = Vector256.Load(b2 + v);
            var x = Vector256.Load(a0 + v);
            s00 = Vector256.FusedMultiplyAdd(x, y0, s00);
            s01 = Vector256.FusedMultiplyAdd(x, y1, s01);
            s02 = Vector256.FusedMultiplyAdd(x, y2, s02);
            x = Vector256.Load(a1 + v);
            s10 = Vector256.FusedMultiplyAdd(x, y0, s10);
            s11 = Vector256.FusedMultiplyAdd(x, y1, s11);
            s12 = Vector256.FusedMultiplyAdd(x, y2, s12);
            x = Vector256.Load(a2 + v);
            s20 = Vector256.FusedMultiplyAdd(x, y0, s20);
            s21 = Vector256.FusedMultiplyAdd(x, y1, s21);
            s22 = Vector256.FusedMultiplyAdd(x, y2, s22);
        }
        c[0] += Vector256.Sum(s00);
        c[1] += Vector256.Sum(s01);
        c[2] += Vector256.Sum(s02);
        c[ldc] += Vector256.Sum(s10);
        c[ldc + 1] += Vector256.Sum(s11);
        c[ldc + 2] += Vector256.Sum(s12);
        c[2 * ldc] += Vector256.Sum(s20);
        c[2 * ldc + 1] += Vector256.Sum(s21);
        c[2 * ldc + 2] += Vector256.Sum(s22);
    }
}
