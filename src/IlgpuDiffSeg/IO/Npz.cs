using System.IO.Compression;

namespace IlgpuDiffSeg.IO;

/// <summary>numpy's .npz: a zip of .npy entries (stored or deflated), keyed by entry name without ".npy".</summary>
public static class Npz
{
    /// <summary>Every array of the archive; throws, naming the file, on a broken archive or entry.</summary>
    public static Dictionary<string, NpyArray> Read(string path)
    {
        try
        {
            using var zip = ZipFile.OpenRead(path);
            var arrays = new Dictionary<string, NpyArray>();
            foreach (var entry in zip.Entries)
            {
                if (!entry.FullName.EndsWith(".npy", StringComparison.Ordinal))
                {
                    throw DiffSegException.For(path, $"entry '{entry.FullName}' is not an .npy array");
                }
                using var stream = entry.Open();
                using var buffer = new MemoryStream();
                stream.CopyTo(buffer);
                string name = entry.FullName[..^4];
                if (!arrays.TryAdd(name, Npy.Parse(buffer.ToArray(), $"{path}:{entry.FullName}")))
                {
                    throw DiffSegException.For(path, $"holds '{name}' twice");
                }
            }
            return arrays;
        }
        catch (InvalidDataException e)
        {
            throw DiffSegException.For(path, $"is not a readable .npz archive ({e.Message})");
        }
    }
}
