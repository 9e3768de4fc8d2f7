namespace IlgpuDiffSeg.Data;

/// <summary>The two PIL resampling filters image_datasets.py uses (docs/method.md, Data).</summary>
public enum PilFilter
{
    /// <summary>Mean of the source pixels under each destination pixel (support ½, scaled by the downscale factor).</summary>
    Box,

    /// <summary>Keys' cubic convolution with a = −0.5 (support 2, scaled by the downscale factor).</summary>
    Bicubic,
}

/// <summary>
/// PIL's <c>Image.resize</c> of an 8-bit RGB image, reproduced bit for bit (checked against Pillow 9.4 in
/// tests/IlgpuDiffSeg.Tests/Data/PilResampleTests.cs, fixtures from tests/generators/make_image_fixtures.py).
///
/// The resize is separable: a horizontal pass over the source rows the vertical pass will read, then a vertical pass;
/// an axis whose size does not change is not resampled at all. Per axis, destination pixel i is centred at
/// c = (i + ½)·scale in source coordinates, scale = in / out. When shrinking, the filter is stretched by the factor
/// (filterscale = max(scale, 1)), so its support covers every source pixel the destination pixel spans. The taps are
/// source pixels [round(c − support), round(c + support)) clamped to the image, weighted by
/// filter((j − c + ½) / filterscale) and normalised to sum 1 — in double precision, evaluated in the same order as
/// Pillow so that the doubles are the same. The weights are then turned into 22-bit fixed point (rounded half away from
/// zero), each output is 2²¹ + Σ pixel·weight in a 32-bit integer (at most 255·2²²·Σ|w| &lt; 2³¹), shifted right by 22
/// and clamped to 0..255: a rounding of the exact sum, identical to Pillow's because every step is integer.
/// </summary>
public static class PilResample
{
    const int PrecisionBits = 32 - 8 - 2;

    /// <summary>
    /// Resizes <paramref name="rgb"/> (height, width, 3) bytes to (<paramref name="outHeight"/>, <paramref name="outWidth"/>, 3).
    /// The same size returns a copy, as PIL does.
    /// </summary>
    public static byte[] Resize(ReadOnlySpan<byte> rgb, int width, int height, int outWidth, int outHeight, PilFilter filter)
    {
        if (width < 1 || height < 1 || outWidth < 1 || outHeight < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(width), $"sizes must be positive: {width}×{height} → {outWidth}×{outHeight}");
        }
        if (rgb.Length != width * height * 3)
        {
            throw new ArgumentException($"expected {width}×{height}×3 bytes, got {rgb.Length}", nameof(rgb));
        }
        var vertical = Coefficients.For(height, outHeight, filter);
        // Only the source rows the vertical pass reads go through the horizontal pass (rows are independent).
        int firstRow = vertical.Start[0], endRow = vertical.Start[outHeight - 1] + vertical.Count[outHeight - 1];
        byte[] rows;
        int rowsWidth;
        if (outWidth != width)
        {
            var horizontal = Coefficients.For(width, outWidth, filter);
            rows = new byte[(endRow - firstRow) * outWidth * 3];
            rowsWidth = outWidth;
            for (int y = firstRow; y < endRow; y++)
            {
                var src = rgb.Slice(y * width * 3, width * 3);
                var dst = rows.AsSpan((y - firstRow) * outWidth * 3, outWidth * 3);
                for (int x = 0; x < outWidth; x++)
                {
                    horizontal.Apply(x, src, 3, dst.Slice(x * 3, 3));
                }
            }
        }
        else
        {
            rows = rgb.Slice(firstRow * width * 3, (endRow - firstRow) * width * 3).ToArray();
            rowsWidth = width;
        }
        if (outHeight == height)
        {
            return rows;
        }
        var output = new byte[outHeight * rowsWidth * 3];
        int stride = rowsWidth * 3;
        for (int y = 0; y < outHeight; y++)
        {
            for (int x = 0; x < rowsWidth; x++)
            {
                // Column x of the kept rows, from row vertical.Start[y] − firstRow: stride apart.
                var column = rows.AsSpan((vertical.Start[y] - firstRow) * stride + x * 3);
                vertical.Apply(y, column, stride, output.AsSpan((y * rowsWidth + x) * 3, 3), relativeStart: true);
            }
        }
        return output;
    }

    /// <summary>PIL's filter functions, evaluated in double precision in Pillow's operation order.</summary>
    public static double Filter(PilFilter filter, double x) => filter switch
    {
        PilFilter.Box => x > -0.5 && x <= 0.5 ? 1.0 : 0.0,
        _ => Bicubic(x),
    };

    static double Bicubic(double x)
    {
        const double a = -0.5;
        if (x < 0.0)
        {
            x = -x;
        }
        if (x < 1.0)
        {
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        }
        if (x < 2.0)
        {
            return (((x - 5) * x + 8) * x - 4) * a;
        }
        return 0.0;
    }

    static double Support(PilFilter filter) => filter == PilFilter.Box ? 0.5 : 2.0;

    /// <summary>
    /// One axis' taps: destination pixel i reads Count[i] source pixels from Start[i] with the fixed-point weights
    /// Weights[i·KernelSize ..].
    /// </summary>
    public sealed class Coefficients
    {
        public required int[] Start { get; init; }
        public required int[] Count { get; init; }
        public required int[] Weights { get; init; }
        public required int KernelSize { get; init; }

        public static Coefficients For(int inSize, int outSize, PilFilter filter)
        {
            // The box is (0, inSize) as single-precision floats, exact for any image size below 2²⁴.
            double scale = (double)(float)inSize / outSize;
            double filterScale = Math.Max(scale, 1.0);
            double support = Support(filter) * filterScale;
            int kernelSize = (int)Math.Ceiling(support) * 2 + 1;
            var start = new int[outSize];
            var count = new int[outSize];
            var weights = new int[outSize * kernelSize];
            var w = new double[kernelSize];
            for (int i = 0; i < outSize; i++)
            {
                double center = (i + 0.5) * scale;
                double inverse = 1.0 / filterScale;
                // (int) truncates toward zero, as C's cast does; a negative start is then clamped.
                int min = Math.Max((int)(center - support + 0.5), 0);
                int max = Math.Min((int)(center + support + 0.5), inSize) - min;
                double sum = 0.0;
                for (int j = 0; j < max; j++)
                {
                    w[j] = Filter(filter, (j + min - center + 0.5) * inverse);
                    sum += w[j];
                }
                for (int j = 0; j < max; j++)
                {
                    double normalised = sum != 0.0 ? w[j] / sum : w[j];
                    weights[i * kernelSize + j] = normalised < 0
                        ? (int)(-0.5 + normalised * (1 << PrecisionBits))
                        : (int)(0.5 + normalised * (1 << PrecisionBits));
                }
                start[i] = min;
                count[i] = max;
            }
            return new Coefficients { Start = start, Count = count, Weights = weights, KernelSize = kernelSize };
        }

        /// <summary>
        /// Destination pixel <paramref name="i"/>'s three channels from <paramref name="src"/>, whose pixels are
        /// <paramref name="step"/> bytes apart: from pixel Start[i] of it, or from its first pixel when
        /// <paramref name="relativeStart"/> (the caller has already moved to Start[i]).
        /// </summary>
        public void Apply(int i, ReadOnlySpan<byte> src, int step, Span<byte> dst, bool relativeStart = false)
        {
            int first = relativeStart ? 0 : Start[i] * step;
            var k = Weights.AsSpan(i * KernelSize, Count[i]);
            int s0 = 1 << (PrecisionBits - 1), s1 = s0, s2 = s0;
            for (int j = 0; j < k.Length; j++)
            {
                int p = first + j * step;
                s0 += src[p] * k[j];
                s1 += src[p + 1] * k[j];
                s2 += src[p + 2] * k[j];
            }
            dst[0] = Clip8(s0);
            dst[1] = Clip8(s1);
            dst[2] = Clip8(s2);
        }

        static byte Clip8(int sum) => (byte)Math.Clamp(sum >> PrecisionBits, 0, 255);
    }
}
