using System.IO.Compression;

namespace IlgpuDiffSeg.IO;

/// <summary>One array of an .npz archive to write.</summary>
public sealed record NpzEntry(string Name, NpyType Type, byte[] Data, int[] Shape)
{
    public static NpzEntry Of(string name, ReadOnlySpan<byte> values, params int[] shape) =>
        new(name, NpyType.UInt8, values.ToArray(), shape);

    public static NpzEntry Of(string name, ReadOnlySpan<long> values, params int[] shape) =>
        new(name, NpyType.Int64, System.Runtime.InteropServices.MemoryMarshal.AsBytes(values).ToArray(), shape);

    public static NpzEntry Of(string name, ReadOnlySpan<float> values, params int[] shape) =>
        new(name, NpyType.Float32, System.Runtime.InteropServices.MemoryMarshal.AsBytes(values).ToArray(), shape);
}

/// <summary>numpy's .npz: a zip of .npy entries (stored or deflated), keyed by entry name without ".npy".</summary>
public static class Npz
{
    /// <summary>
    /// Writes the arrays as np.savez does (stored entries "NAME.npy"), under a temporary name renamed when complete.
    /// </summary>
    public static void Write(string path, IEnumerable<NpzEntry> entries)
    {
        AtomicFile.Write(path, stream =>
        {
            var zip = new StoredZipWriter(stream, uint.MaxValue);
            foreach (var e in entries)
            {
                zip.Add(e.Name + ".npy", Npy.Encode(e.Type, e.Data, e.Shape));
            }
            zip.Finish();
        });
    }

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
