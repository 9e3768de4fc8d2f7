// HalfWeights — a convolution's weights held as fp16 for the tensor-core kernel (v4), in place of fp32.
//   v4 rounds its A operand to fp16 anyway (TensorCoreGemm), so rounding the weights once at load gives the same bits and
//   saves, in every slice of every launch, one of two global loads and the conversion per staged pair — and it halves the
//   weights' memory: the LSUN-256 UNet's 552.8M parameters take 1.1 GB instead of 2.2 GB, what the original holds with
//   use_fp16.
//   Layout: row r (output channel) holds columns 0..C−1 (C = Cin·k²) as fp16 pairs, column 2p in the low half of word p,
//   each row padded to ⌈C/2⌉ words — an odd C (the input convolution's 3·3² = 27) ends in a zero half, so a pair never
//   straddles two rows. Rounded to nearest-even like cvt.rn.f16x2.f32.
//   v1  one word per grid-stride step.
// Reference: Reference (System.Half); the test compares bits.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>A weight tensor as fp16 pairs per output channel (layout above). Owns its device memory.</summary>
public sealed class HalfWeights : IDisposable
{
    readonly DeviceBuffer<uint> words;

    HalfWeights(ComputeDevice device, int[] shape)
    {
        Shape = (int[])shape.Clone();
        Rows = shape[0];
        Columns = checked((int)(Tensor.Count(shape) / Math.Max(1, shape[0])));
        RowWords = (Columns + 1) / 2;
        words = device.Buffer<uint>((long)Rows * RowWords);
    }

    public int[] Shape { get; }

    /// <summary>Output channels: the weight's first dimension.</summary>
    public int Rows { get; }

    /// <summary>Values per row: the product of the other dimensions.</summary>
    public int Columns { get; }

    /// <summary>Words per row, ⌈Columns / 2⌉.</summary>
    public int RowWords { get; }

    public ArrayView<uint> View => words.View;

    public long Bytes => 4L * Rows * RowWords;

    // ---- CPU reference

    /// <summary>The words of a (rows × columns) row-major fp32 matrix, rounded with System.Half.</summary>
    public static uint[] Reference(float[] w, int rows, int columns)
    {
        int rowWords = (columns + 1) / 2;
        var packed = new uint[rows * rowWords];
        for (int r = 0; r < rows; r++)
        for (int p = 0; p < rowWords; p++)
        {
            float lo = w[r * columns + 2 * p], hi = 2 * p + 1 < columns ? w[r * columns + 2 * p + 1] : 0f;
            packed[r * rowWords + p] = BitConverter.HalfToUInt16Bits((System.Half)lo) | (uint)BitConverter.HalfToUInt16Bits((System.Half)hi) << 16;
        }
        return packed;
    }

    // ---- GPU kernel

    static void Kernel(Index1D index, int stride, int columns, int rowWords, int total, ArrayView<float> w, ArrayView<uint> packed)
    {
        for (int i = index; i < total; i += stride)
        {
            int row = i / rowWords, p = i - row * rowWords;
            int at = row * columns + 2 * p;
            bool hasHigh = 2 * p + 1 < columns;
            packed[i] = TensorCoreGemm.Pack(w[at], hasHigh ? w[at + 1] : 0f);
        }
    }

    // ---- launcher

    /// <summary>fp16 rows of <paramref name="w"/> (rank ≥ 2: output channels first), on w's device.</summary>
    public static HalfWeights From(Tensor w)
    {
        if (w.Rank < 2)
        {
            throw new ArgumentException($"half weights: {w.ShapeString} is not a weight matrix (rank ≥ 2)");
        }
        var dev = w.Device;
        var half = new HalfWeights(dev, w.Shape);
        int total = half.Rows * half.RowWords;
        var k = dev.Kernel("half_weights", a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, ArrayView<float>, ArrayView<uint>>(Kernel));
        int threads = dev.StrideThreads(total);
        k(threads, threads, half.Columns, half.RowWords, total, w.View, half.View);
        return half;
    }

    public void Dispose() => words.Dispose();
}
