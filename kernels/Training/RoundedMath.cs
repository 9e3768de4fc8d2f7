// RoundedMath — fp32 products and fused multiply-adds with one IEEE rounding each, the same on every backend: what lets
// the optimizer kernels give PyTorch's bits (AdamW, Ema). ptxas contracts a plain mul.f32 feeding an add.f32 into an FFMA
// (docs/ilgpu.md), which would round once where PyTorch rounds twice; on CUDA the product is therefore written as
// mul.rn.f32 (never contracted) and the fused operation as fma.rn.f32. The CPU accelerator, which runs the other branch,
// cannot call MathF.FusedMultiplyAdd there: ILGPU keeps the branch in the PTX behind a constant predicate, and the call
// would become an unresolved .extern (measured; PtxCompileTests checks it stays out). Its fused multiply-add is exact
// arithmetic instead: the product of two floats is exact in double, the sum is rounded to odd (round to nearest, then
// the neighbour with an odd last bit when inexact — the error from TwoSum says which side), and rounding that to fp32 is
// the correctly rounded a·b + c (Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
// rounding to odd", IEEE TC 2008: rounding to odd with ≥ 2 extra bits, then to nearest, rounds correctly) — the bits of
// MathF.FusedMultiplyAdd, which the host paths use (RoundedMathTests compares the two).
using ILGPU;
using ILGPU.Runtime.Cuda;

namespace IlgpuDiffSeg.Kernels;

public static class RoundedMath
{
    /// <summary>a·b rounded to fp32, never fused with a later addition.</summary>
    public static float Mul(float a, float b)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("mul.rn.f32 %0, %1, %2;", out float r, a, b);
            return r;
        }
        return a * b;
    }

    /// <summary>a·b + c with one rounding.</summary>
    public static float Fma(float a, float b, float c)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("fma.rn.f32 %0, %1, %2, %3;", out float r, a, b, c);
            return r;
        }
        return FmaByRoundingToOdd(a, b, c);
    }

    /// <summary>The correctly rounded a·b + c from double arithmetic (see the header).</summary>
    public static float FmaByRoundingToOdd(float a, float b, float c)
    {
        double p = (double)a * b, q = c;
        double s = p + q;
        // TwoSum: s + e = p + q exactly (no overflow: |p| < 2^256).
        double bq = s - p, bp = s - bq;
        double e = (p - bp) + (q - bq);
        ulong bits = Interop.FloatAsInt(s);
        if (e != 0 && (bits & 1) == 0 && s - s == 0)
        {
            // The other neighbour of the exact sum has the odd last bit: one step of the magnitude towards e.
            bits = (e > 0) == (s > 0) ? bits + 1 : bits - 1;
            s = Interop.IntAsFloat(bits);
        }
        return (float)s;
    }
}
