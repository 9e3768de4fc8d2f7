// ConvShape and ConvWeights — what every convolution kernel (Conv2d's own, the tiled engine's im2col operands, the host
// backend) is given: the geometry as one struct, and the weights as fp32, fp16 rows or both.
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Util;

namespace IlgpuDiffSeg.Kernels;

/// <summary>Geometry of one convolution, passed to the kernels as a single struct.</summary>
public struct ConvShape
{
    public int N, Cin, H, W, Cout, K, Stride, Pad, Ho, Wo;
    public int HasBias, HasResidual;

    /// <summary>Reciprocal(k²), Reciprocal(k) and Reciprocal(Cin): Divide(n, them) is n / k², n / k and n / Cin.</summary>
    public uint TapReciprocal, KernelReciprocal, ChannelReciprocal;

    public static ConvShape Create(int n, int cin, int h, int w, int cout, int k, int stride, int pad) => new()
    {
        N = n, Cin = cin, H = h, W = w, Cout = cout, K = k, Stride = stride, Pad = pad,
        Ho = (h + 2 * pad - k) / stride + 1,
        Wo = (w + 2 * pad - k) / stride + 1,
        TapReciprocal = Reciprocal(k * k),
        KernelReciprocal = Reciprocal(k),
        ChannelReciprocal = Reciprocal(cin),
    };

    /// <summary>
    /// m = ⌊2³¹/d⌋ + 1, which fits 32 bits for every d ≥ 1. With m·d = 2³¹ + e, 1 ≤ e ≤ d:
    /// 2n·m / 2³² = n/d + n·e/(d·2³¹), whose floor is ⌊n/d⌋ whenever n·e &lt; 2³¹ — for every n &lt; 2³¹/d, and im2col rows
    /// (Cin·k²) are far below that.
    /// </summary>
    public static uint Reciprocal(int d) => (uint)((1UL << 31) / (uint)d + 1);

    /// <summary>n / d for 0 ≤ n &lt; 2³¹/d, given Reciprocal(d): a shift and one 32×32→64 multiply instead of a division.</summary>
    public static int Divide(int n, uint reciprocal) => (int)((ulong)((uint)n << 1) * reciprocal >> 32);
}

/// <summary>
/// A convolution's weights (Cout, Cin, k, k) as its kernels take them: fp32, fp16 rows (HalfWeights, read only by the
/// tensor-core kernel v4), or both — then v4 reads the fp16 rows and every other kernel the fp32 tensor.
/// </summary>
public readonly struct ConvWeights
{
    public ConvWeights(Tensor? fp32, HalfWeights? half, int[] shape)
    {
        if (fp32 is null && half is null)
        {
            throw new ArgumentException("conv2d: weights need an fp32 tensor or fp16 rows");
        }
        // Tap-major rows are ordered by their own Cin, which another view must keep.
        if (Tensor.Count(shape) != (fp32?.Length ?? (long)half!.Rows * half.Columns) || (half is not null && shape[0] != half.Rows) ||
            (half is { TapMajor: true } && (shape.Length < 2 || shape[1] != half.Shape[1])))
        {
            throw new ArgumentException($"conv2d: weights cannot be seen as ({string.Join(", ", shape)})");
        }
        Fp32 = fp32;
        Half = half;
        Shape = shape;
    }

    public Tensor? Fp32 { get; }
    public HalfWeights? Half { get; }
    public int[] Shape { get; }
    public int Rank => Shape.Length;
    public int this[int dim] => Shape[dim];
    public string ShapeString => "(" + string.Join(", ", Shape) + ")";

    /// <summary>The same weights seen with another shape of the same output channels and count (a 1-d conv's (Cout, Cin, 1)).</summary>
    public ConvWeights Reshaped(params int[] shape) => new(Fp32, Half, shape);

    /// <summary>The fp32 tensor, which every kernel but v4 needs.</summary>
    public Tensor Float32For(MatmulKernel kernel) => Fp32 ?? throw new NotSupportedException(
        $"conv2d: these weights are held in fp16 only, which only the tensor-core kernel (v4) reads, not {kernel.Label()}");

    public static implicit operator ConvWeights(Tensor fp32) => new(fp32, null, fp32.Shape);
}
