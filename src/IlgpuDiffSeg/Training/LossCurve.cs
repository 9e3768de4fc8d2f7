using IlgpuDiffSeg.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace IlgpuDiffSeg.Training;

/// <summary>
/// RUN_DIR/loss.png: the logged loss (dark) and mse (light) against the step, log-scaled, with a grid line per decade — a
/// glance at whether a run learns, without a plotting library.
/// </summary>
static class LossCurve
{
    const int Width = 800, Height = 400, Margin = 40;

    public static void Write(string path, IReadOnlyList<ProgressRow> rows)
    {
        var points = rows.Where(r => r.Values["loss"] > 0 && double.IsFinite(r.Values["loss"])).ToList();
        if (points.Count < 2)
        {
            return;
        }
        using var image = new Image<Rgba32>(Width, Height, new Rgba32(255, 255, 255));
        double x0 = points[0].Step, x1 = points[^1].Step;
        var all = points.SelectMany(r => new[] { r.Values["loss"], r.Values["mse"] }).Where(v => v > 0 && double.IsFinite(v)).ToList();
        double lo = Math.Floor(Math.Log10(all.Min())), hi = Math.Ceiling(Math.Log10(all.Max()));
        hi = Math.Max(hi, lo + 1);
        int X(double step) => Margin + (int)Math.Round((step - x0) / Math.Max(x1 - x0, 1) * (Width - 2 * Margin));
        int Y(double v) => Height - Margin - (int)Math.Round((Math.Log10(v) - lo) / (hi - lo) * (Height - 2 * Margin));
        var grid = new Rgba32(220, 220, 220);
        for (double d = lo; d <= hi; d++)
        {
            Line(image, Margin, Y(Math.Pow(10, d)), Width - Margin, Y(Math.Pow(10, d)), grid);
        }
        Line(image, Margin, Height - Margin, Width - Margin, Height - Margin, new Rgba32(0, 0, 0));
        Line(image, Margin, Margin, Margin, Height - Margin, new Rgba32(0, 0, 0));
        foreach (var (key, color) in new[] { ("mse", new Rgba32(120, 170, 230)), ("loss", new Rgba32(20, 60, 140)) })
        {
            var series = points.Where(r => r.Values[key] > 0 && double.IsFinite(r.Values[key])).ToList();
            for (int i = 1; i < series.Count; i++)
            {
                Line(image, X(series[i - 1].Step), Y(series[i - 1].Values[key]), X(series[i].Step), Y(series[i].Values[key]), color);
            }
        }
        AtomicFile.Write(path, s => image.SaveAsPng(s));
    }

    /// <summary>Bresenham's line, clipped to the image.</summary>
    static void Line(Image<Rgba32> image, int xa, int ya, int xb, int yb, Rgba32 color)
    {
        int dx = Math.Abs(xb - xa), dy = -Math.Abs(yb - ya), sx = xa < xb ? 1 : -1, sy = ya < yb ? 1 : -1, err = dx + dy;
        while (true)
        {
            if (xa >= 0 && xa < image.Width && ya >= 0 && ya < image.Height)
            {
                image[xa, ya] = color;
            }
            if (xa == xb && ya == yb)
            {
                return;
            }
            int e2 = 2 * err;
            if (e2 >= dy)
            {
                err += dy;
                xa += sx;
            }
            if (e2 <= dx)
            {
                err += dx;
                ya += sy;
            }
        }
    }
}
