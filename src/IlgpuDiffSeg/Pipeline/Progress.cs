using System.Diagnostics;

namespace IlgpuDiffSeg.Pipeline;

/// <summary>Progress lines for long work: at most one a second (plus the last), with rate and time left.</summary>
public sealed class Progress(Action<string>? sink, string what, long total)
{
    readonly Stopwatch clock = Stopwatch.StartNew();
    TimeSpan lastShown = TimeSpan.FromSeconds(-10);

    public TimeSpan Elapsed => clock.Elapsed;

    public void Report(long done, string detail = "")
    {
        if (sink is null || (clock.Elapsed - lastShown < TimeSpan.FromSeconds(1) && done < total))
        {
            return;
        }
        lastShown = clock.Elapsed;
        double seconds = clock.Elapsed.TotalSeconds;
        string eta = done > 0 && done < total ? $", {Format(seconds / done * (total - done))} left" : "";
        string of = total > 0 ? $"/{total}" : "";
        sink($"{what} {done}{of}{(detail.Length > 0 ? " · " + detail : "")} · {Format(seconds)} elapsed{eta}");
    }

    public static string Format(double seconds) => seconds switch
    {
        < 90 => $"{seconds:F0} s",
        < 5400 => $"{seconds / 60:F1} min",
        _ => $"{seconds / 3600:F1} h",
    };
}
