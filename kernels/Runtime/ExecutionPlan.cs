namespace IlgpuDiffSeg.Kernels;

/// <summary>The kernel behind a matrix product or a convolution. One dispatcher per product kind chooses on it (Gemm.Run,
/// Conv2d.Forward); nothing else decides which implementation runs.</summary>
public enum MatmulKernel
{
    /// <summary>v1: one output per thread step; the shape of the reference.</summary>
    Direct,

    /// <summary>v2: a 4×4 register tile per thread step; fp32.</summary>
    Registers,

    /// <summary>v3: 128×128 shared-memory tiles, 8×8 per thread (TiledGemm); fp32. Norms fuse into its convolutions and
    /// attention runs as the flash kernel.</summary>
    Tiled,

    /// <summary>v4: v3's tiling on tensor cores, fp16 operands summed in fp32 (TensorCoreGemm); the original's use_fp16.</summary>
    TensorCoreFp16,

    /// <summary>The CPU backend: the host's SIMD units on the CPU accelerator's memory (HostGemm); fp32.</summary>
    HostSimd,

    /// <summary>The CPU backend with both operands rounded to fp16 first: v4's numbers at host speed, without a GPU.</summary>
    HostSimdFp16,
}

public static class MatmulKernels
{
    /// <summary>Runs on the host's SIMD units, not as an ILGPU kernel.</summary>
    public static bool IsHost(this MatmulKernel k) => k is MatmulKernel.HostSimd or MatmulKernel.HostSimdFp16;

    /// <summary>One of the shared-memory tiled kernels (v3, v4), which read operands through TileOperands.</summary>
    public static bool IsTiled(this MatmulKernel k) => k is MatmulKernel.Tiled or MatmulKernel.TensorCoreFp16;

    /// <summary>Rounds both operands to fp16 (the products of the original's use_fp16).</summary>
    public static bool RoundsOperandsToHalf(this MatmulKernel k) => k is MatmulKernel.TensorCoreFp16 or MatmulKernel.HostSimdFp16;

    /// <summary>The name the benchmarks and logs print (v1 … v4, host).</summary>
    public static string Label(this MatmulKernel k) => k switch
    {
        MatmulKernel.Direct => "v1",
        MatmulKernel.Registers => "v2",
        MatmulKernel.Tiled => "v3",
        MatmulKernel.TensorCoreFp16 => "v4",
        MatmulKernel.HostSimd => "host SIMD",
        _ => "host SIMD, fp16 operands",
    };
}

/// <summary>How a row-wise reduction (Softmax's rows, GroupNorm's groups) spreads over threads.</summary>
public enum Reduction
{
    /// <summary>The device's choice: ThreadPerRow on the CPU accelerator, Parallel on CUDA.</summary>
    Auto,

    /// <summary>v1: one thread per row or group — what the CPU accelerator's simulated threads run fastest.</summary>
    ThreadPerRow,

    /// <summary>v2: a warp per row (Softmax) or blocks per chunk of a group (GroupNorm) — coalesced, for GPUs.</summary>
    Parallel,
}

public static class Reductions
{
    public static Reduction For(this Reduction r, ComputeDevice dev) =>
        r != Reduction.Auto ? r : dev.PrefersThreadPerRow ? Reduction.ThreadPerRow : Reduction.Parallel;
}

/// <summary>The arithmetic of the UNet's matrix products, as the command line names it.</summary>
public enum Precision
{
    Fp32,

    /// <summary>fp16 operands, fp32 sums: tensor cores on CUDA, rounded operands on the CPU backend.</summary>
    Fp16,
}

/// <summary>
/// How models run on one device, chosen once when a model (UNet, pixel-classifier ensemble) is built and never changed:
/// the kernel of the UNet's products, whether GroupNorm fuses into the convolution that reads it, whether convolution
/// weights are held in fp16, and whether the small per-item kernels run on the host. Ops take the choices from here as
/// arguments; nothing reads a mutable setting per call, so a model's result cannot change after it is loaded.
/// </summary>
public sealed record ExecutionPlan
{
    ExecutionPlan(ComputeDevice device, MatmulKernel unetMatmul, bool fuseNorms)
    {
        if (unetMatmul.IsHost() && !device.IsCpu)
        {
            throw new ArgumentException($"the {unetMatmul.Label()} kernel runs on the CPU accelerator's memory, not on " +
                                        device.Describe());
        }
        Device = device;
        UNetMatmul = unetMatmul;
        FusesNorms = fuseNorms && (unetMatmul.IsTiled() || unetMatmul.IsHost());
    }

    public ComputeDevice Device { get; }

    /// <summary>The kernel of the UNet's convolutions and attention products.</summary>
    public MatmulKernel UNetMatmul { get; }

    /// <summary>
    /// The products that stay fp32 at any precision — the UNet's linear layers (the original's convert_to_fp16 leaves them
    /// fp32) and the pixel classifier: on the host's SIMD units with the CPU backend, else v2.
    /// </summary>
    public MatmulKernel Fp32Matmul => OnHost ? MatmulKernel.HostSimd : MatmulKernel.Registers;

    /// <summary>GroupNorm (+scale-shift, +SiLU) applied while the convolution reads its input (v3, v4, host).</summary>
    public bool FusesNorms { get; }

    /// <summary>The backward's weight gradient recomputes the normalized input as it reads x (the host kernels), rather than
    /// from a normalized copy.</summary>
    public bool FusesNormsIntoWeightGradients => FusesNorms && OnHost;

    /// <summary>The CPU backend: the products and the classifier's small per-item kernels run on the host.</summary>
    public bool OnHost => UNetMatmul.IsHost();

    /// <summary>Convolution weights are held as fp16 rows only (HalfWeights): the tensor-core kernel rounds them anyway.</summary>
    public bool HoldsConvWeightsInHalf => UNetMatmul == MatmulKernel.TensorCoreFp16;

    /// <summary>The attention of the tiled kernels is the flash kernel where it applies (Attention.FlashSupported).</summary>
    public bool UsesFlashAttention => UNetMatmul == MatmulKernel.Tiled;

    /// <summary>A plan with the given UNet kernel (norms fused where the kernel allows it unless told otherwise).</summary>
    public static ExecutionPlan With(ComputeDevice device, MatmulKernel unetMatmul, bool fuseNorms = true) =>
        new(device, unetMatmul, fuseNorms);

    /// <summary>
    /// What the command line's --precision gives on this device: on CUDA v2 (fp32) or v4 (fp16); on the CPU backend
    /// (ComputeDevice.RunsKernelsOnHost) the host SIMD products (rounding operands for fp16); on the CPU accelerator's
    /// simulated threads every op as an ILGPU kernel (fp32 only).
    /// </summary>
    public static ExecutionPlan For(ComputeDevice device, Precision precision = Precision.Fp32)
    {
        if (!device.IsCpu)
        {
            return new(device, precision == Precision.Fp16 ? MatmulKernel.TensorCoreFp16 : MatmulKernel.Registers, fuseNorms: true);
        }
        if (!device.RunsKernelsOnHost)
        {
            return precision == Precision.Fp32
                ? new(device, MatmulKernel.Registers, fuseNorms: true)
                : throw new ArgumentException("fp16 precision needs tensor cores (CUDA) or, on the CPU, the SIMD backend, which " +
                                              "rounds the same operands to fp16");
        }
        return new(device, precision == Precision.Fp16 ? MatmulKernel.HostSimdFp16 : MatmulKernel.HostSimd, fuseNorms: true);
    }

    /// <summary>One line for logs: the device and how the UNet runs on it.</summary>
    public string Describe() => $"{Device.Describe()}; UNet products {UNetMatmul.Label()}" + (FusesNorms ? ", norms fused" : "");
}
