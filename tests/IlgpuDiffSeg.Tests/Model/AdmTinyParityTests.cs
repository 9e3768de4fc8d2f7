using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.Model;

/// <summary>
/// Parity with the official guided-diffusion UNet on tests/fixtures/adm-tiny (fp32, CPU, PyTorch 1.13):
/// model.pt goes through `convert`, the converted file is loaded and run on x0.npy at t.npy.
/// Tolerance: max |ours − official| ≤ 1e-4 · max |official| for eps and every out_block_i (the bound; a correct
/// fp32 port lands near 1e-6, a real bug near 1e-2).
/// </summary>
public abstract class AdmTinyParityTests(ExecutionPlan? plan, ITestOutputHelper log)
{
    readonly ComputeDevice? device = plan?.Device;

    const double Bound = 1e-4;

    [Fact]
    public void ConvertedCheckpointReproducesEpsAndEveryDecoderBlock()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        CheckAgainstOfficial(plan!, log, Bound);
    }

    /// <summary>Converts model.pt, runs x0.npy at t.npy under <paramref name="plan"/>, and bounds every output's error.</summary>
    public static void CheckAgainstOfficial(ExecutionPlan plan, ITestOutputHelper log, double bound)
    {
        var device = plan.Device;
        using var tmp = new TempDir();
        string converted = tmp.File("adm-tiny.safetensors");
        ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), converted);
        using var model = ModelWeights.Load(converted, plan);
        var x0 = Npy.ReadFloat32(Fixtures.AdmTiny("x0.npy"), out var xShape);
        var t = Npy.Read(Fixtures.AdmTiny("t.npy")).ToInt64("t.npy").Select(v => (float)v).ToArray();
        using var dx = device.Upload(x0, xShape);
        using var dt = device.Upload(t, t.Length);
        var blocks = Enumerable.Range(0, model.OutputBlocks.Count).ToArray();
        using var outputs = model.Forward(dx, dt, capture: blocks);

        var eps = Npy.ReadFloat32(Fixtures.AdmTiny("eps.npy"), out var epsShape);
        Assert.Equal(epsShape, outputs.Output!.Shape);
        var got = outputs.Output.ToArray();
        log.WriteLine($"eps: rel max err {TensorAssert.RelativeMaxError(eps, got):E2}");
        TensorAssert.RelativeMaxBelow(eps, got, bound, "eps");
        foreach (var b in blocks)
        {
            var expected = Npy.ReadFloat32(Fixtures.AdmTiny($"out_block_{b}.npy"), out var shape);
            Assert.Equal(shape, outputs.Blocks[b].Shape);
            var actual = outputs.Blocks[b].ToArray();
            log.WriteLine($"out_block_{b} {outputs.Blocks[b].ShapeString}: rel max err {TensorAssert.RelativeMaxError(expected, actual):E2}");
            TensorAssert.RelativeMaxBelow(expected, actual, bound, $"out_block_{b}");
        }
    }
}

/// <summary>
/// The tensor-core path (precision fp16) against the same official fp32 outputs. Only the operands of convolutions and
/// attention products are rounded to fp16, so the error is that of fp16 inputs to fp32 sums: bound 5e-3 of max |official|
/// (measured: eps 4.7e-4, decoder blocks ≤ 1.8e-3; the original's use_fp16, with fp16 activations too, sits near 1e-3). On the CPU the SIMD backend computes exactly
/// these operands (TensorCoreGemmTests shows the v4 kernel equals them to NMSE 1e-10), as fast as fp32; the warp-32
/// emulation of the kernel itself would take minutes here.
/// </summary>
public abstract class AdmTinyFp16Tests(ExecutionPlan? plan, ITestOutputHelper log)
{
    readonly ComputeDevice? device = plan?.Device;

    const double Bound = 5e-3;

    [Fact]
    public void TensorCorePathStaysWithinHalfPrecisionOfTheOfficialFp32()
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        var fp16 = plan!.OnHost ? MatmulKernel.HostSimdFp16 : MatmulKernel.TensorCoreFp16;
        AdmTinyParityTests.CheckAgainstOfficial(plan.With(fp16), log, Bound);
    }
}

[Collection("cpu")]
public sealed class AdmTinyParityTestsCpu(CpuDeviceFixture f, ITestOutputHelper log) : AdmTinyParityTests(f.Plan, log);

[Collection("cuda")]
public sealed class AdmTinyParityTestsCuda(CudaDeviceFixture f, ITestOutputHelper log) : AdmTinyParityTests(f.Plan, log);

[Collection("cpu")]
public sealed class AdmTinyFp16TestsCpuSimd(CpuSimdDeviceFixture f, ITestOutputHelper log) : AdmTinyFp16Tests(f.Plan, log);

[Collection("cuda")]
public sealed class AdmTinyFp16TestsCuda(CudaDeviceFixture f, ITestOutputHelper log) : AdmTinyFp16Tests(f.Plan, log);
