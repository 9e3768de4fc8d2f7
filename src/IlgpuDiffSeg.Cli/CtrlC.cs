namespace IlgpuDiffSeg.Cli;

/// <summary>
/// Ctrl+C as a request to stop at the next safe point (a saved step, a finished batch) instead of killing the process
/// mid-write; the handler is removed when the scope ends.
/// </summary>
sealed class CtrlC : IDisposable
{
    volatile bool requested;

    public CtrlC() => Console.CancelKeyPress += OnCancel;

    public bool Requested => requested;

    void OnCancel(object? sender, ConsoleCancelEventArgs e)
    {
        e.Cancel = true;
        requested = true;
    }

    public void Dispose() => Console.CancelKeyPress -= OnCancel;
}
