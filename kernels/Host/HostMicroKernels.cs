// HostMicroKernels — the register-blocked inner loops of the CPU backend's convolutions (HostConv), one per vector width:
// AVX-512 (Vector512, 32 registers) where the CPU has it, else AVX2 (Vector256, 16 registers).
//   Gemm  C[MR × NR] += A[MR rows][kc] · B[kc × NR] (B packed, rows of NR floats): each k broadcasts MR values of A and
//         loads NR/lanes vectors of B. A's rows are given by pointers, so they may lie anywhere: rows of the weights read
//         in place (the forward), or shifted rows of an input for each tap (the weight gradient).
//           AVX-512  8 × 32: 16 accumulators, 2 B loads + 8 broadcasts per 16 FMAs. A row block of 8 divides every
//                    channel count of the ADM (multiples of 32, and 3·C for qkv), so weights need no padding.
//           AVX2     6 × 16: 12 accumulators, 2 B loads + 6 broadcasts per 12 FMAs (15 of the 16 registers).
//         Both compile to a loop of loads, broadcasts and FMAs with every accumulator in a register (checked with
//         DOTNET_JitDisasm). Each C element is a chain of FMAs in k order, whatever its place in the block.
// Zen 4 (this machine's AVX-512) runs a 512-bit FMA as two 256-bit halves: both widths have the same 32 flops a cycle
// per core; the wider one halves the instructions and, with 32 registers, keeps more sums in flight.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace IlgpuDiffSeg.Kernels;

static unsafe class HostMicroKernels
{
    /// <summary>The AVX-512 kernel (8 × 32) rather than AVX2 (6 × 16).</summary>
    public static readonly bool Wide = Vector512.IsHardwareAccelerated;

    /// <summary>Rows of C per Gemm call.</summary>
    public static readonly int MR = Wide ? 8 : 6;

    /// <summary>Columns of C per Gemm call: the width of a packed B panel.</summary>
    public static readonly int NR = Wide ? 32 : 16;

    /// <summary>C[MR × NR] (row stride ldc) += A (MR rows of stride lda) · B (kc × NR, packed).</summary>
    public static void Gemm(int kc, float* a, long lda, float* b, float* c, long ldc)
    {
        float** rows = stackalloc float*[8];
        for (int i = 0; i < MR; i++)
        {
            rows[i] = a + i * lda;
        }
        Gemm(kc, rows, b, c, ldc);
    }

    /// <summary>C[MR × NR] (row stride ldc) += A (the MR rows <paramref name="rows"/> points to) · B (kc × NR, packed).</summary>
    public static void Gemm(int kc, float** rows, float* b, float* c, long ldc)
    {
        if (Wide)
        {
            Gemm8x32(kc, rows, b, c, ldc);
        }
        else
        {
            Gemm6x16(kc, rows, b, c, ldc);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Gemm8x32(int kc, float** rows, float* b, float* c, long ldc)
    {
        float* a0 = rows[0], a1 = rows[1], a2 = rows[2], a3 = rows[3], a4 = rows[4], a5 = rows[5], a6 = rows[6], a7 = rows[7];
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
    static void Gemm6x16(int kc, float** rows, float* b, float* c, long ldc)
    {
        float* a0 = rows[0], a1 = rows[1], a2 = rows[2], a3 = rows[3], a4 = rows[4], a5 = rows[5];
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
}
