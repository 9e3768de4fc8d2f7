// HalfWeights — a convolution's weights held as fp16 for the tensor-core kernel (v4), in place of fp32.
//   v4 rounds its A operand to fp16 anyway (TensorCoreGemm), so rounding the weights once at load gives it the same
//   products and saves, in every slice of every launch, one of two global loads and the conversion per staged pair — and
//   it halves the convolutions' memory: the LSUN-256 model holds 1.215 GB instead of 2.211 GB (measured,
//   benchmarks/results/weights-memory-lsun256-cpu.md), what the original holds with use_fp16.
//   Layout: row r (output channel) holds columns 0..C−1 (C = Cin·k²) as fp16 pairs, column 2p in the low half of word p,
//   each row padded to ⌈C/2⌉ words — an odd C (the input convolution's 3·3² = 27) ends in a zero half, so a pair never
//   straddles two rows. Rounded to nearest-even like cvt.rn.f16x2.f32.
//   Column order: tap-major, c = (ky·k + kx)·Cin + ci, wherever Cin is a multiple of the tensor-core kernel's slice (every
//   UNet convolution but the input's) — then a slice of the im2col matrix has one tap (TapMajorIm2ColOperand) and its
//   padding test and addresses are shared across the slice; else PyTorch's channel-major c = (ci·k + ky)·k + kx.
//   Channel-major rows give v4 the bits of fp32 weights; tap-major ones sum the same products in another order.
//   v1  one word per grid-stride step.
// Reference: Reference (System.Half); the test compares bits.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>A weight tensor as fp16 pairs per output channel (layout above). Owns its device memory.</summary>
public sealed class HalfWeights : IDisposable
{
    readonly DeviceBuffer<uint> words;

    HalfWeights(ComputeDevice device, int[] shape, bool tapMajor)
    {
        Shape = (int[])shape.Clone();
        Rows = shape[0];
        Columns = checked((int)(Tensor.Count(shape) / Math.Max(1, shape[0])));
        RowWords = (Columns + 1) / 2;
        TapMajor = tapMajor;
        words = device.Buffer<uint>((long)Rows * RowWords);
    }

    public int[] Shape { get; }

    /// <summary>Whether the columns are in tap-major order (see the layout above).</summary>
    public bool TapMajor { get; }

    /// <summary>Whether weights of this shape (Cout, Cin, k…) are packed tap-major: Cin a multiple of v4's slice.</summary>
    public static bool PacksTapMajor(int[] shape) => shape.Length >= 3 && shape[1] % TensorCoreGemm.Slice == 0;

    /// <summary>Output channels: the weight's first dimension.</summary>
    public int Rows { get; }

    /// <summary>Values per row: the product of the other dimensions.</summary>
    public int Columns { get; }

    /// <summary>Words per row, ⌈Columns / 2⌉.</summary>
    public int RowWords { get; }

    public ArrayView<uint> View => words.View;

    public long Bytes => 4L * Rows * RowWords;

    // ---- CPU reference

    /// <summary>
    /// The words of a (rows × columns) row-major fp32 matrix, rounded with System.Half; tap-major over
    /// <paramref name="tapMajorChannels"/> input channels when it is not 0.
    /// </summary>
    public static uint[] Reference(float[] w, int rows, int columns, int tapMajorChannels = 0)
    {
        int rowWords = (columns + 1) / 2;
        var packed = new uint[rows * rowWords];
        float At(int r, int c) => c < columns ? w[r * columns + Source(c, columns, tapMajorChannels)] : 0f;
        for (int r = 0; r < rows; r++)
        for (int p = 0; p < rowWords; p++)
        {
            packed[r * rowWords + p] = BitConverter.HalfToUInt16Bits((System.Half)At(r, 2 * p)) |
                                       (uint)BitConverter.HalfToUInt16Bits((System.Half)At(r, 2 * p + 1)) << 16;
        }
        return packed;
    }

    // ---- GPU kernel

    /// <summary>channels: Cin for a tap-major packing, 0 for channel-major.</summary>
    static void Kernel(Index1D index, int stride, int columns, int rowWords, int channels, int total, ArrayView<float> w,
        ArrayView<uint> packed)
    {
        for (int i = index; i < total; i += stride)
        {
            int row = i / rowWords, p = i - row * rowWords;
            bool hasHigh = 2 * p + 1 < columns;
            packed[i] = TensorCoreGemm.Pack(w[row * columns + Source(2 * p, columns, channels)],
                hasHigh ? w[row * columns + Source(2 * p + 1, columns, channels)] : 0f);
        }
    }

    /// <summary>The channel-major column that packed column c holds.</summary>
    static int Source(int c, int columns, int channels) => channels == 0 ? c : c % channels * (columns / channels) + c / channels;

    // ---- launcher

    /// <summary>
    /// fp16 rows of <paramref name="w"/> (rank ≥ 2: output channels first), on w's device; tap-major where
    /// <see cref="PacksTapMajor"/> unless <paramref name="tapMajor"/> says otherwise.
    /// </summary>
    public static HalfWeights From(Tensor w, bool? tapMajor = null) => Pack(w.Device, w.View, w.Shape, tapMajor);

    /// <summary>
    /// fp16 rows of host values, through an fp32 staging buffer of their own that is freed at once: loading a model this
    /// way never holds more fp32 weights than the largest one (a pooled tensor would stay cached in the device's pool).
    /// </summary>
    public static HalfWeights Upload(ComputeDevice dev, ReadOnlySpan<float> values, int[] shape)
    {
        // Disposing the staging buffer waits for the packing kernel (DeviceBuffer.Dispose).
        using var staging = dev.Buffer<float>(values);
        return Pack(dev, staging.View, shape, null);
    }

    static HalfWeights Pack(ComputeDevice dev, ArrayView<float> w, int[] shape, bool? tapMajor)
    {
        string shapeString = "(" + string.Join(", ", shape) + ")";
        if (shape.Length < 2 || w.Length != Tensor.Count(shape))
        {
            throw new ArgumentException($"half weights: {shapeString} is not a weight matrix (rank ≥ 2) of {w.Length} values");
        }
        bool byTap = tapMajor ?? PacksTapMajor(shape);
        if (byTap && !PacksTapMajor(shape))
        {
            // The tap-major operands take a whole K slice to share one tap.
            throw new ArgumentException(
                $"half weights: {shapeString} cannot be tap-major: it needs taps and Cin a multiple of {TensorCoreGemm.Slice}");
        }
        var half = new HalfWeights(dev, shape, byTap);
        int total = half.Rows * half.RowWords;
        var k = dev.Kernel(Kernel,
            a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, int, ArrayView<float>, ArrayView<uint>>(Kernel));
        int threads = dev.StrideThreads(total);
        k(threads, threads, half.Columns, half.RowWords, byTap ? shape[1] : 0, total, w, half.View);
        return half;
    }

    public void Dispose() => words.Dispose();
}
