using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace IlgpuDiffSeg.IO;

/// <summary>One tensor of a safetensors file: its type, shape and byte range in the data section.</summary>
public sealed record SafetensorEntry(string Name, string DType, int[] Shape, long Begin, long End)
{
    public long Count => Shape.Aggregate(1L, (a, d) => a * d);
    public string ShapeString => "(" + string.Join(", ", Shape) + ")";
}

/// <summary>A tensor to be written: name, shape and a callback that writes its float32 values.</summary>
public sealed record SafetensorSource(string Name, int[] Shape, Action<Span<float>> Fill)
{
    public long Count => Shape.Aggregate(1L, (a, d) => a * d);
}

/// <summary>One tensor's bytes mapped into memory; valid until disposed, which unmaps them.</summary>
public sealed unsafe class MappedTensor : IDisposable
{
    readonly MemoryMappedViewAccessor view;
    readonly byte* pointer;
    readonly int count;

    internal MappedTensor(MemoryMappedViewAccessor view, int count)
    {
        this.view = view;
        this.count = count;
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        pointer = p + view.PointerOffset;
    }

    public ReadOnlySpan<float> Span => new(pointer, count);

    public void Dispose()
    {
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
    }
}

/// <summary>
/// The safetensors format (8-byte header length, JSON header, raw little-endian data). Tensors are read through memory
/// maps of one tensor at a time: their bytes go from the page cache straight to the device, never into a managed array,
/// and the process never holds more than one tensor's pages mapped (a 2.2 GB checkpoint loads in ~40 MB of RSS).
/// </summary>
public sealed class SafetensorsFile : IDisposable
{
    readonly MemoryMappedFile map;
    readonly long dataStart;
    readonly Dictionary<string, SafetensorEntry> byName;

    public string Path { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public IReadOnlyList<SafetensorEntry> Entries { get; }

    SafetensorsFile(string path, MemoryMappedFile map, long dataStart, Dictionary<string, string> metadata, List<SafetensorEntry> entries)
    {
        Path = path;
        this.map = map;
        this.dataStart = dataStart;
        Metadata = metadata;
        Entries = entries;
        byName = entries.ToDictionary(e => e.Name);
    }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path))
        {
            throw DiffSegException.For(path, "file not found");
        }
        long length = new FileInfo(path).Length;
        if (length < 8)
        {
            throw DiffSegException.For(path, "not a safetensors file (shorter than its 8-byte header length)");
        }
        long headerLength;
        byte[] headerBytes;
        using (var f = File.OpenRead(path))
        {
            var lenBytes = new byte[8];
            f.ReadExactly(lenBytes);
            headerLength = BinaryPrimitives.ReadInt64LittleEndian(lenBytes);
            if (headerLength <= 1 || headerLength > 100_000_000 || 8 + headerLength > length)
            {
                throw DiffSegException.For(path, "not a safetensors file (bad header length)");
            }
            headerBytes = new byte[headerLength];
            f.ReadExactly(headerBytes);
        }
        JsonObject header;
        try
        {
            header = JsonNode.Parse(Encoding.UTF8.GetString(headerBytes).TrimEnd(' ', '\0'))?.AsObject()
                     ?? throw new JsonException("empty header");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw DiffSegException.For(path, $"not a safetensors file (header is not JSON: {e.Message})");
        }
        var metadata = new Dictionary<string, string>();
        var entries = new List<SafetensorEntry>();
        long dataLength = length - 8 - headerLength;
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                foreach (var (k, v) in node?.AsObject() ?? new JsonObject())
                {
                    metadata[k] = v?.GetValue<string>() ?? "";
                }
                continue;
            }
            try
            {
                var o = node!.AsObject();
                string dtype = o["dtype"]!.GetValue<string>();
                int[] shape = o["shape"]!.AsArray().Select(d => d!.GetValue<int>()).ToArray();
                long[] offsets = o["data_offsets"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                var entry = new SafetensorEntry(name, dtype, shape, offsets[0], offsets[1]);
                long elem = dtype switch { "F32" or "I32" => 4, "F16" or "BF16" or "I16" => 2, "F64" or "I64" => 8, _ => 1 };
                if (offsets.Length != 2 || entry.Begin < 0 || entry.End > dataLength || entry.End - entry.Begin != entry.Count * elem)
                {
                    throw DiffSegException.For(path, $"tensor '{name}' has data offsets outside the file or not matching its shape " +
                                                     "(truncated file?)");
                }
                entries.Add(entry);
            }
            catch (Exception e) when (e is NullReferenceException or InvalidOperationException or FormatException or IndexOutOfRangeException)
            {
                throw DiffSegException.For(path, $"malformed header entry for '{name}'");
            }
        }
        var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        return new SafetensorsFile(path, map, 8 + headerLength, metadata, entries);
    }

    public bool TryGet(string name, out SafetensorEntry entry) => byName.TryGetValue(name, out entry!);

    /// <summary>Maps one float32 tensor; dispose the result to unmap it.</summary>
    public MappedTensor Map(SafetensorEntry e)
    {
        if (e.DType != "F32")
        {
            throw DiffSegException.For(Path, $"tensor '{e.Name}' is {e.DType}; only F32 is loaded");
        }
        if (e.Count == 0)
        {
            return new MappedTensor(map.CreateViewAccessor(0, 1, MemoryMappedFileAccess.Read), 0);
        }
        return new MappedTensor(map.CreateViewAccessor(dataStart + e.Begin, e.End - e.Begin, MemoryMappedFileAccess.Read), checked((int)e.Count));
    }

    /// <summary>A copy of one float32 tensor's values.</summary>
    public float[] ReadFloat32(SafetensorEntry e)
    {
        using var m = Map(e);
        return m.Span.ToArray();
    }

    public void Dispose() => map.Dispose();

    /// <summary>
    /// Writes float32 tensors in the given order with string metadata; the file appears only when complete.
    /// <paramref name="progress"/> receives (tensors written, total).
    /// </summary>
    public static void Write(string path, IReadOnlyList<SafetensorSource> tensors, IReadOnlyDictionary<string, string> metadata,
        Action<int, int>? progress = null)
    {
        var header = new JsonObject();
        var meta = new JsonObject();
        foreach (var (k, v) in metadata)
        {
            meta[k] = v;
        }
        header["__metadata__"] = meta;
        long offset = 0;
        foreach (var t in tensors)
        {
            long bytes = t.Count * 4;
            header[t.Name] = new JsonObject
            {
                ["dtype"] = "F32",
                ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;
        AtomicFile.Write(path, stream =>
        {
            var len = new byte[8];
            BinaryPrimitives.WriteInt64LittleEndian(len, padded);
            stream.Write(len);
            stream.Write(json);
            for (int i = json.Length; i < padded; i++)
            {
                stream.WriteByte((byte)' ');
            }
            for (int i = 0; i < tensors.Count; i++)
            {
                var values = new float[tensors[i].Count];
                tensors[i].Fill(values);
                stream.Write(MemoryMarshal.AsBytes(values.AsSpan()));
                progress?.Invoke(i + 1, tensors.Count);
            }
        });
    }
}
