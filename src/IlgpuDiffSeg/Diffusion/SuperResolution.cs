using IlgpuDiffSeg.Kernels;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Diffusion;

/// <summary>
/// guided-diffusion's SuperResModel around a UNet with 6 input channels (docs/method.md, Classifier guidance and
/// super-resolution): the low-resolution image is upsampled bilinearly (align_corners false) to the model's size and
/// concatenated after x; in training it is made from the batch by area downsampling (super_res_train.py).
/// </summary>
public static class SuperResolution
{
    /// <summary>F.interpolate(lowRes, (size, size), mode="bilinear"): (N, 3, h, w) → (N, 3, size, size), owned by the caller.</summary>
    public static Tensor Upsample(Tensor lowRes, int size)
    {
        var up = lowRes.Device.Allocate(lowRes[0], lowRes[1], size, size);
        for (int i = 0; i < lowRes[0]; i++)
        {
            using var source = lowRes.Slice0(i);
            using var target = up.Slice0(i);
            UpsampleBilinear.Forward(source, target);
        }
        return up;
    }

    /// <summary>F.interpolate(x0, small, mode="area"): the low-resolution input of a training batch.</summary>
    public static Tensor LowResolution(Tensor x0, int small)
    {
        var low = x0.Device.Allocate(x0[0], x0[1], small, small);
        AreaResize.Forward(x0, low);
        return low;
    }

    /// <summary>The model on [x, upsampled] (the upsampled low-resolution image, (N, 3, H, W)).</summary>
    public static UNetOutputs Forward(UNetModel model, Pass pass, Tensor x, Tensor upsampled, Tensor t, IReadOnlyList<long>? labels)
    {
        if (!model.Flags.IsSuperResolution)
        {
            throw new DiffSegException("a low-resolution input was given to a model that is not a super-resolution model");
        }
        using var input = ConcatChannels.Forward(x, upsampled);
        return model.Forward(pass, input, t, labels);
    }
}
