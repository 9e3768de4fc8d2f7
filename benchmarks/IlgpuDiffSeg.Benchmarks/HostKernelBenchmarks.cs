using BenchmarkDotNet.Attributes;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Benchmarks;

/// <summary>
/// The CPU backend's products at the shapes that dominate a CPU run: the pixel classifier's first layer (forward and
/// weight gradient, 10 members, D = 864) and a 64-channel 3×3 convolution at 64² (as im2col + GEMM), forward and backward.
/// Reports time per call; GFLOP/s = FLOPs / time with the FLOPs given in each description.
/// </summary>
[MemoryDiagnoser]
public class HostKernelBenchmarks
{
    ComputeDevice dev = null!;
    Tensor x = null!, w = null!, b = null!, y = null!, features = null!, weights = null!, hidden = null!, grads = null!;
    Tensor dy = null!, dx = null!, dw = null!, db = null!;

    [GlobalSetup]
    public void Setup()
    {
        dev = ComputeDevice.Create(DeviceChoice.Cpu, hostKernels: true);
        var rng = new Random(1);
        float[] R(int n) => Enumerable.Range(0, n).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        x = dev.Upload(R(3 * 64 * 64 * 64), 3, 64, 64, 64);
        w = dev.Upload(R(64 * 64 * 9), 64, 64, 3, 3);
        b = dev.Upload(R(64), 64);
        y = dev.Allocate(3, 64, 64, 64);
        dy = dev.Upload(R(3 * 64 * 64 * 64), 3, 64, 64, 64);
        dx = dev.Allocate(3, 64, 64, 64);
        dw = dev.Zeros(64, 64, 3, 3);
        db = dev.Zeros(64);
        features = dev.Upload(R(64 * 864), 64, 864);
        weights = dev.Upload(R(10 * 128 * 864), 10 * 128 * 864);
        hidden = dev.Allocate(10 * 64 * 128);
        grads = dev.Allocate(10 * 128 * 864);
    }

    /// <summary>3 × 64 × 64² outputs × 64·9 MACs = 1.36 GFLOP.</summary>
    [Benchmark(Description = "conv3x3 64→64 @64², batch 3 (1.36 GFLOP)")]
    public void Conv3x3()
    {
        Conv2d.Forward(x, w, b, y, kernel: MatmulKernel.HostSimd);
        dev.Synchronize();
    }

    /// <summary>The input gradient of Conv3x3: wᵀ·dy into column blocks, then col2im; the same 1.36 GFLOP.</summary>
    [Benchmark(Description = "conv3x3 64→64 @64², batch 3, input gradient (1.36 GFLOP)")]
    public void Conv3x3BackwardInput()
    {
        Conv2d.BackwardInput(dy, w, dx, 1, MatmulKernel.HostSimd);
        dev.Synchronize();
    }

    /// <summary>The weight and bias gradients of Conv3x3 (accumulating): dy·im2col(x)ᵀ per block of rows; 1.36 GFLOP.</summary>
    [Benchmark(Description = "conv3x3 64→64 @64², batch 3, weight + bias gradient (1.36 GFLOP)")]
    public void Conv3x3BackwardWeights()
    {
        Conv2d.BackwardWeights(x, dy, dw, db, 1, MatmulKernel.HostSimd);
        dev.Synchronize();
    }

    /// <summary>10 members × 64 rows × 128 outputs × 864 inputs = 0.14 GFLOP.</summary>
    [Benchmark(Description = "ensemble first layer forward (0.14 GFLOP)")]
    public void FirstLayerForward()
    {
        var s = new GemmShape
        {
            M = 64, N = 128, K = 864, Batch0 = 10, Batch1 = 1, Alpha = 1f, ARow = 864, ACol = 1,
            BRow = 1, BCol = 864, BBatch0 = 128 * 864, CRow = 128, CCol = 1, CBatch0 = 64 * 128,
        };
        Gemm.Run(dev, s, features.View, weights.View, hidden.View, kernel: MatmulKernel.HostSimd);
        dev.Synchronize();
    }

    /// <summary>10 × 128 × 864 × 64 = 0.14 GFLOP.</summary>
    [Benchmark(Description = "ensemble first layer weight gradient (0.14 GFLOP)")]
    public void FirstLayerWeightGradient()
    {
        var s = new GemmShape
        {
            M = 128, N = 864, K = 64, Batch0 = 10, Batch1 = 1, Alpha = 1f, ARow = 1, ACol = 128, ABatch0 = 64 * 128,
            BRow = 864, BCol = 1, CRow = 864, CCol = 1, CBatch0 = 128 * 864,
        };
        Gemm.Run(dev, s, hidden.View, features.View, grads.View, kernel: MatmulKernel.HostSimd);
        dev.Synchronize();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var t in new[] { x, w, b, y, features, weights, hidden, grads, dy, dx, dw, db })
        {
            t.Dispose();
        }
        dev.Dispose();
    }
}
