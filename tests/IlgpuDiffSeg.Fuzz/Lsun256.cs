using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Fuzz;

/// <summary>
/// The LSUN-256 model of ddpm-segmentation (guided-diffusion's lsun_bedroom flags, 552M parameters) with random weights,
/// written as a converted checkpoint (2.2 GB): what `diffseg features` needs to write the 2.2 GB features of issue #13
/// class 5 (StreamingAndRollbackTests.FeaturesCommandAtLsun256, opt-in).
/// </summary>
public static class Lsun256
{
    public const string Flags = """
        {"attention_resolutions": "32,16,8", "class_cond": false, "diffusion_steps": 1000, "dropout": 0.1,
         "image_size": 256, "learn_sigma": true, "noise_schedule": "linear", "num_channels": 256,
         "num_head_channels": 64, "num_res_blocks": 2, "resblock_updown": true, "use_fp16": true,
         "use_scale_shift_norm": true}
        """;

    public static int WriteModel(string path)
    {
        using var dev = ComputeDevice.Create(DeviceChoice.Cpu);
        using var model = new UNetModel(AdmFlags.Parse(Flags, "lsun256"));
        ModelWeights.InitializeRandom(model, ExecutionPlan.For(dev, Precision.Fp32), 1, keepFp32: true);
        ModelWeights.Save(model, path);
        Console.WriteLine($"wrote {path}: {model.ParameterCount:N0} parameters, {new FileInfo(path).Length:N0} bytes");
        return 0;
    }
}
