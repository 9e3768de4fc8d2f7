using System.Text;
using System.Text.Json.Nodes;
using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.IO;

namespace IlgpuDiffSeg.Tests.Data;

/// <summary>
/// ImageDataset and PilResample against Pillow 9.4, the library image_datasets.py runs on. Golden files:
/// tests/fixtures/images, written by tests/generators/make_image_fixtures.py, e.g. for a crop:
/// <code>
///     with open(path, "rb") as f:
///         pil_image = Image.open(f); pil_image.load()
///     arr = center_crop_arr(pil_image.convert("RGB"), size).astype(np.float32) / 127.5 - 1
///     np.save(..., np.transpose(arr, [2, 0, 1]))
/// </code>
/// Tolerance: exact (0) for resizing and for every PNG and GIF — the resampling is integer arithmetic on identical
/// weights, PNG/GIF decoding is lossless. JPEG: libjpeg (PIL) and ImageSharp use different IDCTs and chroma upsampling,
/// so decoded pixels differ; measured on three fixture JPEGs (4:2:0, 4:4:4, grayscale) in <see cref="JpegIsCloseToLibjpeg"/>.
/// </summary>
public sealed class ImageDatasetPilParityTests(ITestOutputHelper log)
{
    static string Dir(params string[] parts) => Path.Combine([Fixtures.Root, "images", .. parts]);

    static JsonObject Manifest => JsonNode.Parse(File.ReadAllText(Dir("manifest.json")))!.AsObject();

    /// <summary>make_image_fixtures.py's pattern: high-frequency RGB noise over 0..255, (h, w, 3).</summary>
    public static byte[] Pattern(int w, int h, int salt)
    {
        var p = new byte[w * h * 3];
        for (long y = 0; y < h; y++)
        for (long x = 0; x < w; x++)
        for (int c = 0; c < 3; c++)
        {
            p[(y * w + x) * 3 + c] = (byte)(((x * 73 + y * 151 + c * 37 + salt * 11) ^ (x * y * 11)) & 255);
        }
        return p;
    }

    public static TheoryData<string> ResizeCases() => [.. Manifest["resize"]!.AsArray().Select(c => c!["file"]!.GetValue<string>())];

    public static TheoryData<string> LosslessFiles() =>
        [.. Manifest["crop"]!.AsArray().Select(c => c!["file"]!.GetValue<string>()).Where(f => !f.EndsWith(".jpg"))];

    [Theory]
    [MemberData(nameof(ResizeCases))]
    public void ResizeEqualsPil(string file)
    {
        var c = Manifest["resize"]!.AsArray().Single(c => c!["file"]!.GetValue<string>() == file)!;
        int w = (int)c["w"]!, h = (int)c["h"]!, ow = (int)c["out_w"]!, oh = (int)c["out_h"]!;
        var filter = (string)c["filter"]! == "box" ? PilFilter.Box : PilFilter.Bicubic;
        var expected = Npy.Read(Dir("resize", file));
        Assert.Equal([oh, ow, 3], expected.Shape);
        var actual = PilResample.Resize(Pattern(w, h, (int)c["salt"]!), w, h, ow, oh, filter);
        AssertBytesEqual(expected.Data, actual, file);
    }

    /// <summary>
    /// PNG (RGB, RGBA, LA, L, 1-bit, palette with tRNS, interlaced, 16-bit gray — which PIL clips — and 16-bit RGB —
    /// whose high bytes PIL keeps) and GIF (with a transparent index, with a frame smaller than the screen) decode to
    /// PIL's pixels.
    /// </summary>
    [Theory]
    [MemberData(nameof(LosslessFiles))]
    public void LosslessDecodeEqualsPil(string file)
    {
        var expected = Npy.Read(Dir("decoded", Path.ChangeExtension(file, ".npy")));
        var actual = ImageDataset.DecodeRgb(Dir("inputs", file), out int w, out int h);
        Assert.Equal([h, w, 3], expected.Shape);
        AssertBytesEqual(expected.Data, actual, file);
    }

    /// <summary>The whole of __getitem__ but the flip: decode, center_crop_arr, x / 127.5 − 1, CHW — the same floats.</summary>
    [Theory]
    [MemberData(nameof(LosslessFiles))]
    public void CenterCropEqualsPil(string file)
    {
        var c = Manifest["crop"]!.AsArray().Single(c => c!["file"]!.GetValue<string>() == file)!;
        int size = (int)c["size"]!;
        var expected = Npy.Read(Dir("crop", Path.ChangeExtension(file, ".npy")));
        Assert.Equal([3, size, size], expected.Shape);
        var actual = ImageDataset.LoadImage(Dir("inputs", file), size);
        TensorAssert.Close(expected.ToFloat32(file), actual, 0, 0, file);
    }

    /// <summary>
    /// JPEG: ImageSharp 2.1's decoder against libjpeg-turbo's (PIL 9.4: islow IDCT, fancy upsampling). Measured, in
    /// levels of 0..255 (max |diff|, mean |diff|, share of values that differ):
    /// <code>
    ///                          decoded                    after center_crop_arr
    ///   photo_64x48.jpg 4:2:0  59, 3.93, 82.5%            27, 1.52
    ///   photo_45x61_444.jpg    3,  0.043, 3.6%            2,  0.050
    ///   gray_40x40.jpg         1,  0.027, 2.7%            1,  0.051
    /// </code>
    /// Without chroma subsampling the decoders agree to IDCT rounding (≤ 3 levels). With 4:2:0 (the encoders' default,
    /// and LSUN's) the two upsample the half-resolution chroma differently: the pixels differ by a few levels wherever
    /// colour varies and by up to 59 at the sharp edge of the saturated disc in this fixture — a worst case; a trainer
    /// fed JPEGs sees the same pictures as guided-diffusion, not the same bytes. Bounds sit just above the measurements.
    /// </summary>
    [Theory]
    [InlineData("photo_64x48.jpg", 64, 4.5, 32, 2.0)]
    [InlineData("photo_45x61_444.jpg", 4, 0.1, 4, 0.1)]
    [InlineData("gray_40x40.jpg", 4, 0.1, 4, 0.1)]
    public void JpegIsCloseToLibjpeg(string file, int maxDecoded, double meanDecoded, double maxCrop, double meanCrop)
    {
        int size = (int)Manifest["crop"]!.AsArray().Single(c => c!["file"]!.GetValue<string>() == file)!["size"]!;
        var pil = Npy.Read(Dir("decoded", Path.ChangeExtension(file, ".npy"))).Data;
        var ours = ImageDataset.DecodeRgb(Dir("inputs", file), out _, out _);
        Assert.Equal(pil.Length, ours.Length);
        var decoded = pil.Zip(ours).Select(p => (double)Math.Abs(p.First - p.Second)).ToArray();
        var pilCrop = Npy.Read(Dir("crop", Path.ChangeExtension(file, ".npy"))).ToFloat32(file);
        var cropped = pilCrop.Zip(ImageDataset.LoadImage(Dir("inputs", file), size)).Select(p => Math.Abs(p.First - p.Second) * 127.5)
                             .ToArray();
        log.WriteLine($"{file}: decoded max |diff| {decoded.Max()} levels, mean {decoded.Average():F3}, " +
                      $"{decoded.Count(d => d > 0) / (double)decoded.Length:P1} differ; center_crop_arr max {cropped.Max():F2}, " +
                      $"mean {cropped.Average():F3}");
        Assert.InRange(decoded.Max(), 0, maxDecoded);
        Assert.InRange(decoded.Average(), 0, meanDecoded);
        Assert.InRange(cropped.Max(), 0, maxCrop);
        Assert.InRange(cropped.Average(), 0, meanCrop);
    }

    static void AssertBytesEqual(byte[] expected, byte[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        int bad = 0, worst = 0;
        var sb = new StringBuilder();
        for (int i = 0; i < expected.Length; i++)
        {
            int d = Math.Abs(expected[i] - actual[i]);
            worst = Math.Max(worst, d);
            if (d != 0 && bad++ < 5)
            {
                sb.AppendLine($"  [pixel {i / 3}, channel {i % 3}] PIL {expected[i]}, ours {actual[i]}");
            }
        }
        Assert.True(bad == 0, $"{what}: {bad} of {expected.Length} values differ from PIL's, max |diff| {worst}\n{sb}");
    }
}
