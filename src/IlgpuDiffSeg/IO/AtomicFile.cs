using System.Diagnostics.CodeAnalysis;

namespace IlgpuDiffSeg.IO;

/// <summary>
/// Writes a file under a temporary name beside it and renames it into place only when the writer finished,
/// so a failure never leaves a half-written output behind. Inside an <see cref="OutputScope"/> (every command runs in
/// one) the finished file is also recorded, so that a command failing later removes it again.
/// </summary>
public static class AtomicFile
{
    static long counter;

    /// <summary>Fails early, before any long work, when <paramref name="path"/> could not be written.</summary>
    public static void CheckWritable(string path)
    {
        if (string.IsNullOrWhiteSpace(path))
        {
            throw new DiffSegException("an empty output path was given");
        }
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null && !Directory.Exists(dir))
        {
            throw DiffSegException.For(path, File.Exists(dir) ? $"'{dir}' is a file, not a folder" : "the folder does not exist");
        }
        if (Directory.Exists(path))
        {
            throw DiffSegException.For(path, "is a folder, expected a file name");
        }
        // Writing beside and renaming over would replace a device or kernel file (/dev/full, /proc/…) with a plain file.
        string full = Path.GetFullPath(path);
        if (!OperatingSystem.IsWindows() && SystemFolders.Any(f => full.StartsWith(f, StringComparison.Ordinal)) &&
            !full.StartsWith("/dev/shm/", StringComparison.Ordinal))
        {
            throw DiffSegException.For(path, "is in a device or kernel folder, not a place for an output file");
        }
    }

    static readonly string[] SystemFolders = ["/dev/", "/proc/", "/sys/"];

    /// <summary>Whether two paths name the same file (after resolving them against the working directory); null names none.
    /// Commands use it to refuse an output that would overwrite one of their inputs, or another of their outputs.</summary>
    public static bool SamePath([NotNullWhen(true)] string? a, [NotNullWhen(true)] string? b) =>
        a is not null && b is not null && Path.GetFullPath(a) == Path.GetFullPath(b);

    public static void Write(string path, Action<Stream> write)
    {
        using var writer = Create(path);
        write(writer.Stream);
        writer.Commit();
    }

    /// <summary>
    /// A temporary file beside <paramref name="path"/>: write to <see cref="AtomicWriter.Stream"/>, then
    /// <see cref="AtomicWriter.Commit"/>; disposing it uncommitted deletes it.
    /// </summary>
    public static AtomicWriter Create(string path)
    {
        CheckWritable(path);
        string full = Path.GetFullPath(path);
        string temp = Path.Combine(Path.GetDirectoryName(full) ?? ".",
            $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Interlocked.Increment(ref counter)}.tmp");
        try
        {
            return new AtomicWriter(path, full, temp, new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20));
        }
        catch (UnauthorizedAccessException)
        {
            throw DiffSegException.For(path, "cannot write: permission denied");
        }
        catch (IOException e)
        {
            throw DiffSegException.For(path, $"cannot write: {e.Message}");
        }
    }
}

/// <summary>One file being written by <see cref="AtomicFile.Create"/>.</summary>
public sealed class AtomicWriter : IDisposable
{
    readonly string path;
    readonly string full;
    readonly string temp;
    bool committed;

    internal AtomicWriter(string path, string full, string temp, FileStream stream)
    {
        this.path = path;
        this.full = full;
        this.temp = temp;
        Stream = stream;
    }

    public Stream Stream { get; }

    /// <summary>Flushes the file and moves it into place (recorded by the current <see cref="OutputScope"/>).</summary>
    public void Commit()
    {
        try
        {
            Stream.Dispose();
            if (OutputScope.Current is { } scope)
            {
                scope.Place(temp, full);
            }
            else
            {
                File.Move(temp, full, overwrite: true);
            }
            committed = true;
        }
        catch (UnauthorizedAccessException)
        {
            throw DiffSegException.For(path, "cannot write: permission denied");
        }
        catch (IOException e)
        {
            throw DiffSegException.For(path, $"cannot write: {e.Message}");
        }
    }

    public void Dispose()
    {
        Stream.Dispose();
        if (!committed)
        {
            try
            {
                File.Delete(temp);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }
    }
}

/// <summary>
/// What one command writes, undone as a whole when it fails: every file placed through <see cref="AtomicFile"/> and every
/// folder made through <see cref="CreateDirectory"/> is removed again, and a file it replaced is put back, so that a command
/// failing on its fourth image leaves neither the first three images' outputs nor a half-made folder. Files become visible
/// as they are written (later steps of the same command may read them), and <see cref="Commit"/> keeps them.
/// </summary>
public sealed class OutputScope : IDisposable
{
    static readonly AsyncLocal<OutputScope?> CurrentScope = new();
    readonly OutputScope? outer;
    readonly object gate = new();
    readonly List<(string Final, string? Backup)> placed = new();
    readonly List<string> createdDirectories = new();
    readonly HashSet<string> kept = new();
    bool finished;

    OutputScope(OutputScope? outer) => this.outer = outer;

    public static OutputScope? Current => CurrentScope.Value;

    public static OutputScope Begin()
    {
        var scope = new OutputScope(CurrentScope.Value);
        CurrentScope.Value = scope;
        return scope;
    }

    /// <summary>Keeps <paramref name="path"/> even if the command fails (a resumable training state, written whole).</summary>
    public static void Keep(string path)
    {
        if (Current is { } scope)
        {
            lock (scope.gate)
            {
                scope.kept.Add(Path.GetFullPath(path));
            }
        }
    }

    /// <summary>Creates a folder and the missing ones above it, recording each so that a failed command removes it again.</summary>
    public static string CreateDirectory(string path)
    {
        string full = Path.GetFullPath(path);
        if (File.Exists(full))
        {
            throw DiffSegException.For(path, "exists and is a file, expected a folder");
        }
        var missing = new Stack<string>();
        for (string? d = full; d is not null && !Directory.Exists(d); d = Path.GetDirectoryName(d))
        {
            if (File.Exists(d))
            {
                throw DiffSegException.For(path, $"cannot create the folder: '{d}' is a file");
            }
            missing.Push(d);
        }
        while (missing.Count > 0)
        {
            string d = missing.Pop();
            try
            {
                Directory.CreateDirectory(d);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw DiffSegException.For(path, $"cannot create the folder: {e.Message}");
            }
            if (Current is { } scope)
            {
                lock (scope.gate)
                {
                    scope.createdDirectories.Add(d);
                }
            }
        }
        return full;
    }

    internal void Place(string temp, string final)
    {
        lock (gate)
        {
            string? backup = null;
            bool ours = placed.Any(p => p.Final == final);
            if (!ours && File.Exists(final))
            {
                backup = temp[..^".tmp".Length] + ".bak";
                File.Move(final, backup);
            }
            File.Move(temp, final, overwrite: true);
            if (!ours)
            {
                placed.Add((final, backup));
            }
        }
    }

    /// <summary>The command succeeded: keep what it wrote.</summary>
    public void Commit()
    {
        lock (gate)
        {
            foreach (var (_, backup) in placed)
            {
                TryDelete(backup);
            }
            finished = true;
        }
    }

    /// <summary>Without <see cref="Commit"/>, removes what the command wrote and puts back what it replaced.</summary>
    public void Dispose()
    {
        lock (gate)
        {
            if (!finished)
            {
                for (int i = placed.Count - 1; i >= 0; i--)
                {
                    var (final, backup) = placed[i];
                    if (kept.Contains(final))
                    {
                        TryDelete(backup);
                        continue;
                    }
                    TryDelete(final);
                    if (backup is not null)
                    {
                        try
                        {
                            File.Move(backup, final, overwrite: true);
                        }
                        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                        {
                        }
                    }
                }
                for (int i = createdDirectories.Count - 1; i >= 0; i--)
                {
                    try
                    {
                        if (Directory.Exists(createdDirectories[i]) && !Directory.EnumerateFileSystemEntries(createdDirectories[i]).Any())
                        {
                            Directory.Delete(createdDirectories[i]);
                        }
                    }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                    {
                    }
                }
                finished = true;
            }
        }
        if (CurrentScope.Value == this)
        {
            CurrentScope.Value = outer;
        }
    }

    static void TryDelete(string? path)
    {
        if (path is null)
        {
            return;
        }
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}
