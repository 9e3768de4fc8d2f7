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

/// <summary>
/// A tensor to be written: name, shape and a callback that writes its float32 values, stored as F32 or, with
/// <paramref name="Half"/>, rounded to F16 (half the bytes; values past fp16's range are refused when written).
/// </summary>
public sealed record SafetensorSource(string Name, int[] Shape, Action<Span<float>> Fill, bool Half = false)
{
    public long Count => Shape.Aggregate(1L, (a, d) => a * d);

    public string DType => Half ? "F16" : "F32";

    public long Bytes => Count * (Half ? 2 : 4);
}

/// <summary>
/// One tensor's values as float32: an F32 tensor's bytes mapped into memory (valid until disposed, which unmaps them), an
/// F16 tensor's widened into an array of its own.
/// </summary>
public sealed unsafe class MappedTensor : IDisposable
{
    readonly MemoryMappedViewAccessor view;
    readonly byte* pointer;
    readonly int count;
    readonly float[]? widened;

    internal MappedTensor(MemoryMappedViewAccessor view, int count, bool half = false)
    {
        this.view = view;
        this.count = count;
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        pointer = p + view.PointerOffset;
        if (half)
        {
            var halves = new ReadOnlySpan<Half>(pointer, count);
            widened = GC.AllocateUninitializedArray<float>(count);
            for (int i = 0; i < count; i++)
            {
                widened[i] = (float)halves[i];
            }
        }
    }

    public ReadOnlySpan<float> Span => widened ?? new ReadOnlySpan<float>(pointer, count);

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

    /// <summary>Headers longer than this are refused (a 550M-parameter UNet's is ~60 KB).</summary>
    public const long MaxHeaderLength = 100_000_000;

    /// <summary>
    /// Opens a file and checks its header against it before anything else: a JSON object whose <c>__metadata__</c> is an
    /// object of strings and whose tensors each have a known dtype, non-negative dimensions and data offsets that tile the
    /// data section exactly (in order, no gap, no overlap, nothing after the last), as the format requires.
    /// </summary>
    public static SafetensorsFile Open(string path)
    {
        long length;
        long headerLength;
        byte[] headerBytes;
        using (var f = InputFile.OpenRead(path))
        {
            length = f.Length;
            if (length < 8)
            {
                throw DiffSegException.For(path, length == 0 ? "empty file, not a safetensors file"
                    : "not a safetensors file (shorter than its 8-byte header length)");
            }
            var lenBytes = new byte[8];
            f.ReadExactly(lenBytes);
            headerLength = BinaryPrimitives.ReadInt64LittleEndian(lenBytes);
            if (headerLength < 2 || headerLength > MaxHeaderLength || headerLength > length - 8)
            {
                throw DiffSegException.For(path, $"not a safetensors file, or truncated (its header length {headerLength} " +
                                                 (headerLength > length - 8 ? $"is past the file's {length} bytes)" : "is implausible)"));
            }
            headerBytes = new byte[headerLength];
            try
            {
                f.ReadExactly(headerBytes);
            }
            catch (Exception e) when (e is EndOfStreamException or IOException)
            {
                throw DiffSegException.For(path, $"cannot read its header: {e.Message}");
            }
        }
        var (metadata, entries) = ParseHeader(headerBytes, length - 8 - headerLength, path);
        MemoryMappedFile map;
        try
        {
            map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw DiffSegException.For(path, $"cannot map: {e.Message}");
        }
        return new SafetensorsFile(path, map, 8 + headerLength, metadata, entries);
    }

    static long ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" or "U64" => 8,
        "F32" or "I32" or "U32" => 4,
        "F16" or "BF16" or "I16" or "U16" => 2,
        "I8" or "U8" or "BOOL" or "F8_E4M3" or "F8_E5M2" => 1,
        _ => 0,
    };

    /// <summary>Parses and checks a header (for tests and fuzzing, too); <paramref name="dataLength"/> is the bytes after it.</summary>
    public static (Dictionary<string, string> Metadata, List<SafetensorEntry> Entries) ParseHeader(byte[] headerBytes, long dataLength, string path)
    {
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var entries = new List<SafetensorEntry>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            var reader = new Utf8JsonReader(headerBytes.AsSpan().TrimEnd((byte)' ').TrimEnd((byte)0),
                new JsonReaderOptions { MaxDepth = 8 });
            Read(ref reader);
            Expect(reader.TokenType == JsonTokenType.StartObject, "the header is not a JSON object");
            while (Read(ref reader) != JsonTokenType.EndObject)
            {
                string name = reader.GetString()!;
                if (!names.Add(name))
                {
                    throw DiffSegException.For(path, $"the header names '{name}' twice");
                }
                Read(ref reader);
                if (name == "__metadata__")
                {
                    Expect(reader.TokenType == JsonTokenType.StartObject, "'__metadata__' is not an object of strings");
                    while (Read(ref reader) != JsonTokenType.EndObject)
                    {
                        string key = reader.GetString()!;
                        Read(ref reader);
                        Expect(reader.TokenType == JsonTokenType.String, $"'__metadata__' value '{key}' is not a string");
                        if (!metadata.TryAdd(key, reader.GetString()!))
                        {
                            throw DiffSegException.For(path, $"'__metadata__' holds '{key}' twice");
                        }
                    }
                    continue;
                }
                entries.Add(ReadEntry(ref reader, name, path));
            }
            Expect(Read(ref reader, allowEnd: true) == JsonTokenType.None, "text after the header's JSON object");
        }
        catch (JsonException e)
        {
            throw DiffSegException.For(path, $"not a safetensors file (header is not valid JSON: {e.Message.Split(" LineNumber")[0].TrimEnd('.')})");
        }
        catch (InvalidOperationException e)
        {
            throw DiffSegException.For(path, $"not a safetensors file (malformed header: {e.Message.TrimEnd('.')})");
        }
        // The tensors tile the data section: sorted by offset, each begins where the previous ended, the last ends the file.
        long expectedBegin = 0;
        foreach (var e in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (e.Begin != expectedBegin)
            {
                throw DiffSegException.For(path, e.Begin < expectedBegin
                    ? $"tensor '{e.Name}' overlaps the tensor before it (data offsets [{e.Begin}, {e.End}])"
                    : $"the data section has a gap before tensor '{e.Name}' (data offsets [{e.Begin}, {e.End}])");
            }
            expectedBegin = e.End;
        }
        if (expectedBegin != dataLength)
        {
            throw DiffSegException.For(path, expectedBegin > dataLength
                ? $"truncated: the tensors need {expectedBegin:N0} bytes of data, the file holds {dataLength:N0}"
                : $"has {dataLength - expectedBegin:N0} bytes after its last tensor (a damaged file, or a wrong header length)");
        }
        return (metadata, entries);

        void Expect(bool ok, string what)
        {
            if (!ok)
            {
                throw DiffSegException.For(path, $"malformed header: {what}");
            }
        }
    }

    static JsonTokenType Read(ref Utf8JsonReader reader, bool allowEnd = false)
    {
        if (!reader.Read())
        {
            if (allowEnd)
            {
                return JsonTokenType.None;
            }
            throw new JsonException("the header ends early");
        }
        return reader.TokenType;
    }

    static SafetensorEntry ReadEntry(ref Utf8JsonReader reader, string name, string path)
    {
        DiffSegException Bad(string what) => DiffSegException.For(path, $"tensor '{name}': {what}");
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw Bad("its header entry is not an object");
        }
        string? dtype = null;
        int[]? shape = null;
        long[]? offsets = null;
        while (Read(ref reader) != JsonTokenType.EndObject)
        {
            string key = reader.GetString()!;
            Read(ref reader);
            switch (key)
            {
                case "dtype" when dtype is null:
                    dtype = reader.TokenType == JsonTokenType.String ? reader.GetString()! : throw Bad("dtype is not a string");
                    break;
                case "shape" when shape is null:
                    shape = ReadIntegers(ref reader, int.MaxValue, 16) is { } s ? s.Select(d => (int)d).ToArray()
                        : throw Bad("shape is not a list of at most 16 sizes in [0, 2^31)");
                    break;
                case "data_offsets" when offsets is null:
                    offsets = ReadIntegers(ref reader, long.MaxValue, 2) is { Length: 2 } o ? o
                        : throw Bad("data_offsets is not a pair of non-negative integers");
                    break;
                case "dtype" or "shape" or "data_offsets":
                    throw Bad($"'{key}' appears twice");
                default:
                    throw Bad($"unexpected field '{key}'");
            }
        }
        if (dtype is null || shape is null || offsets is null)
        {
            throw Bad("its header entry lacks dtype, shape or data_offsets");
        }
        long elem = ElementSize(dtype);
        if (elem == 0)
        {
            throw Bad($"unknown dtype '{dtype}'");
        }
        if (offsets[1] < offsets[0])
        {
            throw Bad($"data offsets [{offsets[0]}, {offsets[1]}] end before they begin");
        }
        // The shape must account for exactly the bytes its offsets give it; checked dimension by dimension, no overflow.
        long bytes = offsets[1] - offsets[0];
        long count = shape.Contains(0) ? 0 : 1;
        foreach (var d in shape)
        {
            if (count != 0 && d > bytes / elem / count)
            {
                count = -1;
                break;
            }
            count *= count == 0 ? 1 : d;
        }
        if (count < 0 || count * elem != bytes)
        {
            throw Bad($"shape ({string.Join(", ", shape)}) of {dtype} does not match its {bytes:N0} bytes of data (offsets [{offsets[0]}, {offsets[1]}])");
        }
        return new SafetensorEntry(name, dtype, shape, offsets[0], offsets[1]);
    }

    /// <summary>A JSON list of at most <paramref name="maxCount"/> integers in [0, max]; null when it is anything else.</summary>
    static long[]? ReadIntegers(ref Utf8JsonReader reader, long max, int maxCount)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
        {
            reader.Skip();
            return null;
        }
        var values = new List<long>();
        bool ok = true;
        while (Read(ref reader) != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out long v) || v < 0 || v > max || values.Count >= maxCount)
            {
                ok = false;
                reader.Skip();
                continue;
            }
            values.Add(v);
        }
        return ok ? values.ToArray() : null;
    }

    public bool TryGet(string name, out SafetensorEntry entry) => byName.TryGetValue(name, out entry!);

    /// <summary>Maps one F32 tensor, or widens one F16 tensor; dispose the result to unmap it.</summary>
    public MappedTensor Map(SafetensorEntry e)
    {
        if (e.DType is not ("F32" or "F16"))
        {
            throw DiffSegException.For(Path, $"tensor '{e.Name}' is {e.DType}; only F32 and F16 are loaded");
        }
        if (e.Count == 0)
        {
            return new MappedTensor(map.CreateViewAccessor(0, 1, MemoryMappedFileAccess.Read), 0);
        }
        var view = map.CreateViewAccessor(dataStart + e.Begin, e.End - e.Begin, MemoryMappedFileAccess.Read);
        return new MappedTensor(view, checked((int)e.Count), half: e.DType == "F16");
    }

    /// <summary>A copy of one float32 tensor's values.</summary>
    public float[] ReadFloat32(SafetensorEntry e)
    {
        using var m = Map(e);
        return m.Span.ToArray();
    }

    public void Dispose() => map.Dispose();

    static Half[] ToHalf(string path, string name, float[] values)
    {
        var halves = new Half[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            halves[i] = (Half)values[i];
            if (Half.IsInfinity(halves[i]) && float.IsFinite(values[i]))
            {
                throw DiffSegException.For(path, $"cannot store tensor '{name}' in F16: {values[i]} at index {i} is past fp16's range");
            }
        }
        return halves;
    }

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
            long bytes = t.Bytes;
            header[t.Name] = new JsonObject
            {
                ["dtype"] = t.DType,
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
                if (tensors[i].Half)
                {
                    stream.Write(MemoryMarshal.AsBytes(ToHalf(path, tensors[i].Name, values).AsSpan()));
                }
                else
                {
                    stream.Write(MemoryMarshal.AsBytes(values.AsSpan()));
                }
                progress?.Invoke(i + 1, tensors.Count);
            }
        });
    }
}
