namespace IlgpuDiffSeg.IO;

/// <summary>
/// Writes a file under a temporary name beside it and renames it into place only when the writer finished,
/// so a failure never leaves a half-written output behind.
/// </summary>
public static class AtomicFile
{
    /// <summary>Fails early, before any long work, when <paramref name="path"/> could not be written.</summary>
    public static void CheckWritable(string path)
    {
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null && !Directory.Exists(dir))
        {
            throw DiffSegException.For(path, "the folder does not exist");
        }
        if (Directory.Exists(path))
        {
            throw DiffSegException.For(path, "is a folder, expected a file name");
        }
    }

    public static void Write(string path, Action<Stream> write)
    {
        CheckWritable(path);
        string full = Path.GetFullPath(path);
        string? dir = Path.GetDirectoryName(full);
        string temp = Path.Combine(dir ?? ".", $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                write(stream);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch (UnauthorizedAccessException e)
        {
            throw DiffSegException.For(path, $"cannot write: {e.Message}");
        }
        finally
        {
            if (File.Exists(temp))
            {
                File.Delete(temp);
            }
        }
    }
}
