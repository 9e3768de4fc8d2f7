// TensorCoreGemm, the warp-level product: v4's m16n8k16 fragments and the instruction that multiplies them (the
// kernel, its staging and its launcher are in TensorCoreGemm.cs).
//   One mma.sync.m16n8k16 is D(16×8, fp32) = A(16×16, fp16, row-major)·B(16×8, fp16, column-major) + C across the 32
//   lanes of a warp, 2·16·8·16 = 4,096 FLOP. Lane 4g + t holds 4 words of A (rows g and g+8, k pairs t and t+4), 2 words
//   of B (column g, k pairs t and t+4) and 4 floats of C/D (rows g and g+8, columns 2t and 2t+1): MmaFragmentA,
//   MmaFragmentB, MmaAccumulator.
//   A warp's 64×32 sub-tile per k-step of 16 is 4 A and 4 B fragments read from shared memory and 16 mma
//   (MultiplyStep); a slice of 32 is two k-steps, 32 mma per warp.
//   Packing: two fp32 to an fp16 pair, round to nearest-even — cvt.rn.f16x2.f32 on CUDA, HalfBits elsewhere (bit-exact
//   with System.Half, tested in TensorCoreGemmTests).
// On CUDA the product is one inline-PTX mma.sync per tile. Elsewhere (the CPU accelerator, warp-32 shape) EmulatedMma
// exchanges the same fragments through shared memory (6 words a thread: 6 KB for 256 threads) and sums in fp32: every
// index of the fragment layout — packing, shared-memory addressing, which lane owns which output — is exercised on the
// CPU, and the GPU adds only the instruction itself (PTX ISA 8.x, "Matrix Fragments for mma.m16n8k16 with floating
// point type").
using ILGPU;
using ILGPU.Runtime.Cuda;

namespace IlgpuDiffSeg.Kernels;

/// <summary>Four fp32 accumulators of one lane in a 16×8 mma tile: (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).</summary>
public struct MmaAccumulator
{
    public float C0, C1, C2, C3;
}

/// <summary>One lane's A fragment of m16n8k16: fp16 pairs (g, 2t..), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..).</summary>
public struct MmaFragmentA
{
    public uint R0, R1, R2, R3;
}

/// <summary>One lane's B fragment of m16n8k16: fp16 pairs (k = 2t.., n = g) and (k = 2t+8.., n = g).</summary>
public struct MmaFragmentB
{
    public uint R0, R1;
}

public static partial class TensorCoreGemm
{
    /// <summary>Words a thread publishes per emulated mma: its A fragment (4) and B fragment (2).</summary>
    const int ExchangeWords = 6;

    // ---- the fragments and the product

    /// <summary>Two floats as an fp16 pair, lo in the low half, each rounded to nearest-even.</summary>
    internal static uint Pack(float lo, float hi)
    {
        if (CudaAsm.IsSupported)
        {
            // cvt.f16x2 puts its first source in the upper half.
            CudaAsm.Emit("cvt.rn.f16x2.f32 %0, %1, %2;", out uint pair, hi, lo);
            return pair;
        }
        return HalfBits(lo) | (HalfBits(hi) << 16);
    }

    /// <summary>
    /// fp16 bits of x, rounded to nearest-even like cvt.rn — not ILGPU.Half's software conversion, which truncates on the
    /// CPU accelerator (measured: 50% of uniform(−1, 1) values differ from System.Half).
    /// </summary>
    public static uint HalfBits(float x)
    {
        uint bits = Interop.FloatAsInt(x);
        uint sign = (bits >> 16) & 0x8000u;
        uint magnitude = bits & 0x7FFFFFFFu;
        if (magnitude >= 0x47800000u)
        {
            // ≥ 65536 (all of which round to infinity), infinity or NaN.
            return sign | (magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u);
        }
        if (magnitude < 0x38800000u)
        {
            // Below fp16's smallest normal 2^-14: adding 0.5 (2^-1) leaves the subnormal's 10 bits at the bottom of the
            // mantissa, rounded to nearest-even by the fp32 addition itself.
            float aligned = Interop.IntAsFloat(magnitude) + 0.5f;
            return sign | (Interop.FloatAsInt(aligned) - 0x3F000000u);
        }
        // Rebias the exponent (127 → 15) and round the 13 dropped mantissa bits to nearest-even.
        uint odd = (magnitude >> 13) & 1u;
        return sign | ((magnitude - 0x38000000u + 0x0FFFu + odd) >> 13);
    }

    static float Lo(uint pair) => (float)Interop.IntAsFloat((ushort)(pair & 0xFFFF));

    static float Hi(uint pair) => (float)Interop.IntAsFloat((ushort)(pair >> 16));

    static float Dot2(uint x, uint y) => Lo(x) * Lo(y) + Hi(x) * Hi(y);

    /// <summary>
    /// D = A·B + C for one 16×8×16 tile, A row-major and B column-major, across the 32 lanes of a warp. exchange: six
    /// words a thread of shared memory, used only where there is no tensor core.
    /// </summary>
    internal static MmaAccumulator Mma(MmaAccumulator c, MmaFragmentA a, MmaFragmentB b, ArrayView<uint> exchange)
    {
        if (CudaAsm.IsSupported)
        {
            Ref<float> d0 = c.C0, d1 = c.C1, d2 = c.C2, d3 = c.C3;
            Ref<uint> a0 = a.R0, a1 = a.R1, a2 = a.R2, a3 = a.R3, b0 = b.R0, b1 = b.R1;
            CudaAsm.EmitRef("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};",
                ref d0, ref d1, ref d2, ref d3, ref a0, ref a1, ref a2, ref a3, ref b0, ref b1);
            return new MmaAccumulator { C0 = d0.Value, C1 = d1.Value, C2 = d2.Value, C3 = d3.Value };
        }
        return EmulatedMma(c, a, b, exchange);
    }

    /// <summary>
    /// mma.sync's result from the fragment layout alone: every lane publishes its fragments, then lane (g, t) reads rows g
    /// and g+8 of A from lanes 4g..4g+3 and columns 2t, 2t+1 of B from lanes 8t..8t+3 and 8t+4..8t+7, four k-pairs at a
    /// time. Two warp barriers instead of 32 shuffles: on the CPU simulator each is a barrier of 32 OS threads.
    /// </summary>
    static MmaAccumulator EmulatedMma(MmaAccumulator c, MmaFragmentA a, MmaFragmentB b, ArrayView<uint> exchange)
    {
        int lane = Warp.LaneIdx, g = lane / 4, t = lane % 4;
        int warpBase = Warp.WarpIdx * 32 * ExchangeWords;
        int own = warpBase + lane * ExchangeWords;
        exchange[own] = a.R0;
        exchange[own + 1] = a.R1;
        exchange[own + 2] = a.R2;
        exchange[own + 3] = a.R3;
        exchange[own + 4] = b.R0;
        exchange[own + 5] = b.R1;
        Warp.Barrier();
        for (int s = 0; s < 4; s++)
        {
            int aLane = warpBase + (4 * g + s) * ExchangeWords;
            int col0Lane = warpBase + (8 * t + s) * ExchangeWords, col1Lane = warpBase + (8 * t + 4 + s) * ExchangeWords;
            uint rowLo = exchange[aLane], row8Lo = exchange[aLane + 1], rowHi = exchange[aLane + 2], row8Hi = exchange[aLane + 3];
            uint col0Lo = exchange[col0Lane + 4], col0Hi = exchange[col0Lane + 5];
            uint col1Lo = exchange[col1Lane + 4], col1Hi = exchange[col1Lane + 5];
            c.C0 += Dot2(rowLo, col0Lo) + Dot2(rowHi, col0Hi);
            c.C1 += Dot2(rowLo, col1Lo) + Dot2(rowHi, col1Hi);
            c.C2 += Dot2(row8Lo, col0Lo) + Dot2(row8Hi, col0Hi);
            c.C3 += Dot2(row8Lo, col1Lo) + Dot2(row8Hi, col1Hi);
        }
        Warp.Barrier();
        return c;
    }

    /// <summary>
    /// The A fragment of 16 rows: <paramref name="lane"/> is the view at the lane's word (row g, word t) of the tile's
    /// first row, <paramref name="rows"/> the offset of the 16-row block, <paramref name="word"/> the k-step's first word.
    /// </summary>
    static MmaFragmentA FragmentA(ArrayView<uint> lane, int rows, int word) => new()
    {
        R0 = lane[rows + word],
        R1 = lane[rows + 8 * RowWords + word],
        R2 = lane[rows + word + 4],
        R3 = lane[rows + 8 * RowWords + word + 4],
    };

    /// <summary>The B fragment of 8 columns, addressed like <see cref="FragmentA"/>.</summary>
    static MmaFragmentB FragmentB(ArrayView<uint> lane, int cols, int word) => new()
    {
        R0 = lane[cols + word],
        R1 = lane[cols + word + 4],
    };

    /// <summary>One k-step (16 k) of a warp's 64×32 sub-tile: 4 A and 4 B fragments, 16 mma.</summary>
    static void MultiplyStep(ArrayView<uint> aLane, ArrayView<uint> bLane, int word, ArrayView<uint> exchange,
        ref MmaAccumulator c00, ref MmaAccumulator c01, ref MmaAccumulator c02, ref MmaAccumulator c03,
        ref MmaAccumulator c10, ref MmaAccumulator c11, ref MmaAccumulator c12, ref MmaAccumulator c13,
        ref MmaAccumulator c20, ref MmaAccumulator c21, ref MmaAccumulator c22, ref MmaAccumulator c23,
        ref MmaAccumulator c30, ref MmaAccumulator c31, ref MmaAccumulator c32, ref MmaAccumulator c33)
    {
        var a0 = FragmentA(aLane, 0, word);
        var a1 = FragmentA(aLane, 16 * RowWords, word);
        var a2 = FragmentA(aLane, 32 * RowWords, word);
        var a3 = FragmentA(aLane, 48 * RowWords, word);
        var b0 = FragmentB(bLane, 0, word);
        var b1 = FragmentB(bLane, 8 * RowWords, word);
        var b2 = FragmentB(bLane, 16 * RowWords, word);
        var b3 = FragmentB(bLane, 24 * RowWords, word);
        c00 = Mma(c00, a0, b0, exchange);
        c01 = Mma(c01, a0, b1, exchange);
        c02 = Mma(c02, a0, b2, exchange);
        c03 = Mma(c03, a0, b3, exchange);
        c10 = Mma(c10, a1, b0, exchange);
        c11 = Mma(c11, a1, b1, exchange);
        c12 = Mma(c12, a1, b2, exchange);
        c13 = Mma(c13, a1, b3, exchange);
        c20 = Mma(c20, a2, b0, exchange);
        c21 = Mma(c21, a2, b1, exchange);
        c22 = Mma(c22, a2, b2, exchange);
        c23 = Mma(c23, a2, b3, exchange);
        c30 = Mma(c30, a3, b0, exchange);
        c31 = Mma(c31, a3, b1, exchange);
        c32 = Mma(c32, a3, b2, exchange);
        c33 = Mma(c33, a3, b3, exchange);
    }
}
