using System.Text;

namespace IlgpuDiffSeg.IO;

/// <summary>
/// Opening the user's files for reading. Every failure (missing, a folder, unreadable, larger than the reader allows) is a
/// <see cref="DiffSegException"/> naming the file as the user gave it, and nothing is read past a size limit, so a reader
/// pointed at /dev/zero or a 10 GB file by mistake refuses it instead of filling memory.
/// </summary>
public static class InputFile
{
    public static FileStream OpenRead(string path, int bufferSize = 1 << 16)
    {
        if (string.IsNullOrEmpty(path))
        {
            throw new DiffSegException("an empty path was given where a file is expected");
        }
        if (Directory.Exists(path))
        {
            throw DiffSegException.For(path, "is a folder, expected a file");
        }
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw DiffSegException.For(path, "file not found");
        }
        catch (UnauthorizedAccessException)
        {
            throw DiffSegException.For(path, "cannot read: permission denied");
        }
        catch (Exception e) when (e is IOException or ArgumentException or NotSupportedException)
        {
            throw DiffSegException.For(path, $"cannot read: {e.Message}");
        }
    }

    /// <summary>
    /// The whole file, refused when longer than <paramref name="maxBytes"/> (read to that limit, not trusting its length).
    /// </summary>
    public static byte[] ReadAllBytes(string path, long maxBytes, string what)
    {
        using var s = OpenRead(path);
        var buffer = new MemoryStream();
        var chunk = new byte[1 << 16];
        try
        {
            int n;
            while ((n = s.Read(chunk, 0, chunk.Length)) > 0)
            {
                if (buffer.Length + n > maxBytes)
                {
                    throw DiffSegException.For(path, $"is larger than {Describe(maxBytes)}, too large for {what}");
                }
                buffer.Write(chunk, 0, n);
            }
        }
        catch (IOException e)
        {
            throw DiffSegException.For(path, $"cannot read: {e.Message}");
        }
        return buffer.ToArray();
    }

    /// <summary>A UTF-8 text file (a leading byte-order mark is dropped), at most <paramref name="maxBytes"/> long.</summary>
    public static ReadOnlyMemory<byte> ReadUtf8(string path, long maxBytes, string what)
    {
        var bytes = ReadAllBytes(path, maxBytes, what);
        var text = bytes.AsMemory(bytes.AsSpan().StartsWith(Encoding.UTF8.Preamble) ? 3 : 0);
        if (!System.Text.Unicode.Utf8.IsValid(text.Span))
        {
            throw DiffSegException.For(path, $"is not UTF-8 text, so not {what}");
        }
        return text;
    }

    public static string Describe(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):0.#} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):0.#} MiB",
        >= 1L << 10 => $"{bytes / (double)(1L << 10):0.#} KiB",
        _ => $"{bytes} bytes",
    };
}
