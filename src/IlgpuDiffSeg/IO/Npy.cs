// Npy: the .npy element types and header record, and the reader: header checks, streamed values, shape and finiteness checks.

using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace IlgpuDiffSeg.IO;

/// <summary>NumPy element types this project reads and writes.</summary>
public enum NpyType
{
    Float32,
    Float64,
    Int64,
    Int32,
    UInt8,
    Int8,
    Bool,
    Float16,
}

/// <summary>What an .npy header says, checked against the file: the data section holds exactly Count elements.</summary>
public sealed record NpyHeader(NpyType Type, int[] Shape, long DataOffset)
{
    public long Count => Npy.CountOf(Shape);
    public long ByteCount => Count * Npy.ElementSize(Type);
    public string ShapeString => Npy.ShapeString(Shape);
}

/// <summary>
/// Reader and writer for NumPy's .npy format (versions 1–3). The reader trusts nothing in the header: it is parsed as the
/// strict literal NumPy writes, its length must end the header on its newline, and the shape must account for exactly the
/// bytes that follow it in the file, before anything the size of the data is allocated. Both directions stream: values go
/// between the file and their typed array in 1 MiB chunks, so files past 2 GB are read and written.
/// </summary>
public static partial class Npy
{
    static readonly byte[] Magic = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    /// <summary>Headers longer than this are refused (NumPy writes under 200 bytes; its own reader stops at 10,000).</summary>
    public const int MaxHeaderLength = 1 << 16;

    const int ChunkBytes = 1 << 20;

    public static string Descr(NpyType t) => t switch
    {
        NpyType.Float32 => "<f4",
        NpyType.Float64 => "<f8",
        NpyType.Int64 => "<i8",
        NpyType.Int32 => "<i4",
        NpyType.UInt8 => "|u1",
        NpyType.Int8 => "|i1",
        NpyType.Bool => "|b1",
        NpyType.Float16 => "<f2",
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    public static int ElementSize(NpyType t) => t switch
    {
        NpyType.Float64 or NpyType.Int64 => 8,
        NpyType.Float32 or NpyType.Int32 => 4,
        NpyType.Float16 => 2,
        _ => 1,
    };

    internal static long CountOf(int[] shape) => shape.Aggregate(1L, (a, d) => a * d);

    internal static string ShapeString(int[] shape) => "(" + string.Join(", ", shape) + (shape.Length == 1 ? ",)" : ")");

    /// <summary>The multi-index of flat index <paramref name="flat"/> in C order, as "(i, j, k)".</summary>
    public static string IndexString(IReadOnlyList<int> shape, long flat)
    {
        var index = new long[shape.Count];
        for (int d = shape.Count - 1; d >= 0; d--)
        {
            int n = Math.Max(1, shape[d]);
            index[d] = flat % n;
            flat /= n;
        }
        return "(" + string.Join(", ", index) + (index.Length == 1 ? ",)" : ")");
    }

    public static NpyArray Read(string path)
    {
        using var stream = InputFile.OpenRead(path);
        return Read(stream, path);
    }

    /// <summary>Parses an .npy file held in memory (for tests and fuzzing); <paramref name="path"/> names it in errors.</summary>
    public static NpyArray Parse(byte[] bytes, string path)
    {
        using var stream = new MemoryStream(bytes, writable: false);
        return Read(stream, path);
    }

    /// <summary>The header alone, checked against the file's length: the shape without reading the data.</summary>
    public static NpyHeader ReadHeader(string path)
    {
        using var stream = InputFile.OpenRead(path);
        return ReadHeader(stream, path);
    }

    static NpyArray Read(Stream stream, string path)
    {
        var h = ReadHeader(stream, path);
        long count = h.Count;
        if (count > Array.MaxLength)
        {
            throw DiffSegException.For(path, $"holds {count:N0} values, more than one array can hold ({Array.MaxLength:N0})");
        }
        Array values = h.Type switch
        {
            NpyType.Float32 => ReadValues<float>(stream, path, count),
            NpyType.Float64 => ReadValues<double>(stream, path, count),
            NpyType.Float16 => ReadValues<Half>(stream, path, count),
            NpyType.Int64 => ReadValues<long>(stream, path, count),
            NpyType.Int32 => ReadValues<int>(stream, path, count),
            NpyType.Int8 => ReadValues<sbyte>(stream, path, count),
            NpyType.UInt8 or NpyType.Bool => ReadValues<byte>(stream, path, count),
            _ => throw new InvalidOperationException(),
        };
        if (h.Type == NpyType.Bool && ((byte[])values).FirstOrDefault(v => v > 1) is var bad && bad > 1)
        {
            throw DiffSegException.For(path, $"bool array holds the byte {bad}, not 0 or 1");
        }
        return new NpyArray(h.Type, h.Shape, values);
    }

    static T[] ReadValues<T>(Stream stream, string path, long count) where T : unmanaged
    {
        var values = new T[count];
        int perChunk = ChunkBytes / Marshal.SizeOf<T>();
        try
        {
            for (long start = 0; start < count; start += perChunk)
            {
                int n = (int)Math.Min(perChunk, count - start);
                stream.ReadExactly(MemoryMarshal.AsBytes(values.AsSpan((int)start, n)));
            }
        }
        catch (EndOfStreamException)
        {
            throw DiffSegException.For(path, "truncated: the file ended inside its data");
        }
        catch (IOException e)
        {
            throw DiffSegException.For(path, $"cannot read: {e.Message}");
        }
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("big-endian hosts are not supported");
        }
        return values;
    }

    static NpyHeader ReadHeader(Stream stream, string path)
    {
        long fileLength;
        try
        {
            fileLength = stream.Length;
        }
        catch (NotSupportedException)
        {
            throw DiffSegException.For(path, "is not a regular file");
        }
        var pre = new byte[12];
        int got = ReadUpTo(stream, pre.AsSpan(0, 10), path);
        if (got < 10 || !pre.AsSpan(0, 6).SequenceEqual(Magic))
        {
            throw DiffSegException.For(path, got == 0 ? "empty file, not a NumPy .npy file" : "not a NumPy .npy file (bad magic)");
        }
        int major = pre[6];
        long headerLength;
        int headerStart;
        if (major == 1)
        {
            headerLength = BinaryPrimitives.ReadUInt16LittleEndian(pre.AsSpan(8));
            headerStart = 10;
        }
        else if (major is 2 or 3)
        {
            if (ReadUpTo(stream, pre.AsSpan(10, 2), path) < 2)
            {
                throw DiffSegException.For(path, "truncated .npy header");
            }
            headerLength = BinaryPrimitives.ReadUInt32LittleEndian(pre.AsSpan(8));
            headerStart = 12;
        }
        else
        {
            throw DiffSegException.For(path, $"unsupported .npy version {major}.{pre[7]} (NumPy writes 1.0, 2.0 and 3.0)");
        }
        if (headerLength > MaxHeaderLength)
        {
            throw DiffSegException.For(path, $"header length {headerLength:N0} is past the {MaxHeaderLength:N0}-byte limit: " +
                                             "not a NumPy header");
        }
        if (headerStart + headerLength > fileLength)
        {
            throw DiffSegException.For(path, $"truncated .npy header: it claims {headerLength} bytes, " +
                                             $"the file has {fileLength - headerStart}");
        }
        var headerBytes = new byte[headerLength];
        if (ReadUpTo(stream, headerBytes, path) < headerLength)
        {
            throw DiffSegException.For(path, "truncated .npy header");
        }
        // Version 3 is UTF-8, versions 1 and 2 Latin-1; the literal itself is ASCII either way.
        string header = Encoding.Latin1.GetString(headerBytes);
        if (header.Length == 0 || header[^1] != '\n')
        {
            throw DiffSegException.For(path, "malformed .npy header: it does not end with a newline where its length says " +
                                             "(a wrong header length would read data from inside the header)");
        }
        var (descr, fortran, shape) = HeaderLiteral.Parse(header, path);
        if (fortran)
        {
            throw DiffSegException.For(path, "Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
        }
        var type = descr switch
        {
            "<f4" or "=f4" => NpyType.Float32,
            "<f8" or "=f8" => NpyType.Float64,
            "<f2" or "=f2" => NpyType.Float16,
            "<i8" or "=i8" => NpyType.Int64,
            "<i4" or "=i4" => NpyType.Int32,
            "|u1" or "<u1" or "=u1" => NpyType.UInt8,
            "|i1" or "<i1" or "=i1" => NpyType.Int8,
            "|b1" or "<b1" or "=b1" => NpyType.Bool,
            var d => throw DiffSegException.For(path, $"unsupported dtype '{d}' (supported: little-endian float32/64/16, int64/32/8, " +
                                                      "uint8, bool)"),
        };
        long dataOffset = headerStart + headerLength;
        long available = fileLength - dataOffset;
        int elem = ElementSize(type);
        // Each dimension is checked against what the file can hold before the product is formed, so no shape overflows.
        string dimsText = string.Join(", ", shape);
        if (shape.FirstOrDefault(d => d < 0 || d > int.MaxValue) is var bad && bad != 0)
        {
            throw DiffSegException.For(path, $"shape ({dimsText}) has the dimension {bad}: " +
                                             (bad < 0 ? "negative" : $"past {int.MaxValue}"));
        }
        long count = shape.Contains(0) ? 0 : 1;
        foreach (var d in shape)
        {
            if (count != 0 && d > available / elem / count)
            {
                throw DiffSegException.For(path, $"truncated: shape ({dimsText}) of {descr} needs more than the {available:N0} bytes of " +
                                                 "data the file holds");
            }
            count *= count == 0 ? 1 : d;
        }
        long expected = count * elem;
        if (available != expected)
        {
            throw DiffSegException.For(path, available < expected
                ? $"truncated: shape ({dimsText}) of {descr} needs {expected:N0} bytes of data, found {available:N0}"
                : $"has {available - expected:N0} bytes after the {expected:N0} bytes of data its shape ({dimsText}) " +
                  "accounts for (a wrong header length or a damaged file)");
        }
        return new NpyHeader(type, shape.Select(d => (int)d).ToArray(), dataOffset);
    }

    static int ReadUpTo(Stream s, Span<byte> buffer, string path)
    {
        try
        {
            return s.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
        }
        catch (IOException e)
        {
            throw DiffSegException.For(path, $"cannot read: {e.Message}");
        }
    }

    /// <summary>Reads a float array and checks its shape; -1 in <paramref name="expected"/> matches any size.</summary>
    public static float[] ReadFloat32(string path, out int[] shape, params int[] expected)
    {
        var a = Read(path);
        CheckShape(path, a, expected);
        shape = a.Shape;
        return a.ToFloat32(path);
    }

    public static void CheckShape(string path, NpyArray a, int[] expected) => CheckShape(path, a.Shape, expected);

    public static void CheckShape(string path, int[] shape, int[] expected)
    {
        if (expected.Length == 0)
        {
            return;
        }
        bool ok = shape.Length == expected.Length && shape.Zip(expected).All(p => p.Second < 0 || p.First == p.Second);
        if (!ok)
        {
            string want = "(" + string.Join(", ", expected.Select(d => d < 0 ? "*" : d.ToString(CultureInfo.InvariantCulture))) + ")";
            throw DiffSegException.For(path, $"shape is {ShapeString(shape)}, expected {want}");
        }
    }

    /// <summary>Refuses NaN and ±Inf, naming the file, the first such value and its index.</summary>
    public static void RequireFinite(string path, ReadOnlySpan<float> values, IReadOnlyList<int> shape, string what = "holds")
    {
        int i = Finite.IndexOfNonFinite(values);
        if (i >= 0)
        {
            throw DiffSegException.For(path, $"{what} {Finite.Name(values[i])} at index {IndexString(shape, i)}; inputs must be finite");
        }
    }
}
