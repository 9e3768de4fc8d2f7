using System.Globalization;
using System.Text;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>
/// ddpm-segmentation's compute_iou (docs/method.md, mIoU): intersections and unions summed over the whole test set per class;
/// the ignore label's class is skipped; pixels whose ground truth is the ignore label still count on the prediction side;
/// a class absent from both counts as IoU 0; mIoU is the mean over every class but the ignored one.
/// </summary>
public sealed class IoUAccumulator(int classes, int ignoreLabel)
{
    readonly long[] intersection = new long[classes];
    readonly long[] union = new long[classes];

    public void Add(ReadOnlySpan<int> prediction, ReadOnlySpan<byte> truth)
    {
        if (prediction.Length != truth.Length)
        {
            throw new ArgumentException("prediction and ground truth differ in size");
        }
        for (int c = 0; c < classes; c++)
        {
            if (c == ignoreLabel)
            {
                continue;
            }
            long i = 0, u = 0;
            for (int p = 0; p < prediction.Length; p++)
            {
                bool pc = prediction[p] == c, tc = truth[p] == c;
                i += pc && tc ? 1 : 0;
                u += pc || tc ? 1 : 0;
            }
            intersection[c] += i;
            union[c] += u;
        }
    }

    public double IoU(int c) => intersection[c] / (1e-8 + union[c]);

    public IEnumerable<int> Classes => Enumerable.Range(0, classes).Where(c => c != ignoreLabel);

    public double MeanIoU => Classes.Average(IoU);

    /// <summary>The per-class table, then the last line "mIoU: value".</summary>
    public string Report(Func<int, string>? name = null)
    {
        var sb = new StringBuilder();
        sb.AppendLine("class                     IoU    intersection         union");
        foreach (int c in Classes)
        {
            string label = name?.Invoke(c) ?? $"{c}";
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"{label,-20} {IoU(c),8:F4} {intersection[c],15} {union[c],13}"));
        }
        sb.Append(string.Create(CultureInfo.InvariantCulture, $"mIoU: {MeanIoU:F6}"));
        return sb.ToString();
    }
}
