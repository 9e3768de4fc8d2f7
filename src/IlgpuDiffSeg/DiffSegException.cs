namespace IlgpuDiffSeg;

/// <summary>
/// A problem with the user's input (a file, a flag, a config value). The command line prints its message as
/// one line and exits non-zero; the message names the file and what is wrong with it.
/// </summary>
public sealed class DiffSegException : Exception
{
    public DiffSegException(string message) : base(message)
    {
    }

    public DiffSegException(string message, Exception inner) : base(message, inner)
    {
    }

    /// <summary>"file: problem", with the file shown as the user gave it.</summary>
    public static DiffSegException For(string path, string problem) => new($"{path}: {problem}");
}
