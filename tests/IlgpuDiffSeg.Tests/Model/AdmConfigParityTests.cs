using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.Model;

/// <summary>
/// Flag combinations the official fixture does not take (tests/fixtures/adm-configs, golden outputs from the PyTorch
/// model in tests/generators, which reproduces the official adm-tiny bit for bit):
///   plain               — no scale-shift, conv Downsample/Upsample, num_heads / num_heads_upsample, 3 outputs;
///   neworder-classcond  — new attention order, class labels, fp16 storages under {"state_dict": ...}.
/// Tolerance: max |diff| ≤ 1e-4 · max |reference| per tensor, as for adm-tiny.
/// </summary>
public abstract class AdmConfigParityTests(ExecutionPlan? plan, ITestOutputHelper log)
{
    readonly ComputeDevice? device = plan?.Device;

    const double Bound = 1e-4;

    [Theory]
    [InlineData("plain")]
    [InlineData("neworder-classcond")]
    public void ReproducesReference(string config)
    {
        Assert.SkipWhen(device is null, "no CUDA device");
        string dir = Path.Combine(Fixtures.RepoRoot, "tests", "fixtures", "adm-configs", config);
        using var tmp = new TempDir();
        ModelWeights.Convert(Path.Combine(dir, "model.pt"), Path.Combine(dir, "flags.json"), tmp.File("m.safetensors"));
        using var model = ModelWeights.Load(tmp.File("m.safetensors"), plan!);
        var x0 = Npy.ReadFloat32(Path.Combine(dir, "x0.npy"), out var xShape);
        var t = Npy.Read(Path.Combine(dir, "t.npy")).ToInt64("t").Select(v => (float)v).ToArray();
        var yPath = Path.Combine(dir, "y.npy");
        long[]? y = File.Exists(yPath) ? Npy.Read(yPath).ToInt64("y") : null;
        using var dx = device!.Upload(x0, xShape);
        using var dt = device.Upload(t, t.Length);
        var blocks = Enumerable.Range(0, model.OutputBlocks.Count).ToArray();
        using var outputs = model.Forward(dx, dt, y, blocks);

        var eps = Npy.ReadFloat32(Path.Combine(dir, "eps.npy"), out var epsShape);
        Assert.Equal(epsShape, outputs.Output!.Shape);
        log.WriteLine($"eps: {TensorAssert.RelativeMaxError(eps, outputs.Output.ToArray()):E2}");
        TensorAssert.RelativeMaxBelow(eps, outputs.Output.ToArray(), Bound, $"{config} eps");
        foreach (var b in blocks)
        {
            var expected = Npy.ReadFloat32(Path.Combine(dir, $"out_block_{b}.npy"), out var shape);
            Assert.Equal(shape, outputs.Blocks[b].Shape);
            log.WriteLine($"out_block_{b}: {TensorAssert.RelativeMaxError(expected, outputs.Blocks[b].ToArray()):E2}");
            TensorAssert.RelativeMaxBelow(expected, outputs.Blocks[b].ToArray(), Bound, $"{config} out_block_{b}");
        }
    }
}

[Collection("cpu")]
public sealed class AdmConfigParityTestsCpu(CpuDeviceFixture f, ITestOutputHelper log) : AdmConfigParityTests(f.Plan, log);

[Collection("cuda")]
public sealed class AdmConfigParityTestsCuda(CudaDeviceFixture f, ITestOutputHelper log) : AdmConfigParityTests(f.Plan, log);
