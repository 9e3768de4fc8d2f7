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
/// An .npy array held in memory: C order, little-endian, its values in an array of their own type (float[], long[], …),
/// so an array past 2 GB is held without one byte array the size of the file.
/// </summary>
public sealed class NpyArray
{
    readonly Array values;

    internal NpyArray(NpyType type, int[] shape, Array values)
    {
        Type = type;
        Shape = shape;
        this.values = values;
    }

    /// <summary>An array from raw little-endian bytes (kept for callers of the earlier byte-array form).</summary>
    public NpyArray(NpyType type, int[] shape, byte[] data)
        : this(type, shape, type switch
        {
            NpyType.Float32 => MemoryMarshal.Cast<byte, float>(data).ToArray(),
            NpyType.Float64 => MemoryMarshal.Cast<byte, double>(data).ToArray(),
            NpyType.Float16 => MemoryMarshal.Cast<byte, Half>(data).ToArray(),
            NpyType.Int64 => MemoryMarshal.Cast<byte, long>(data).ToArray(),
            NpyType.Int32 => MemoryMarshal.Cast<byte, int>(data).ToArray(),
            NpyType.Int8 => MemoryMarshal.Cast<byte, sbyte>(data).ToArray(),
            _ => (byte[])data.Clone(),
        })
    {
    }

    /// <summary>A copy of the raw little-endian bytes (at most 2 GB: larger arrays are read through ToFloat32/ToInt64).</summary>
    public byte[] Data => values switch
    {
        float[] a => MemoryMarshal.AsBytes(a.AsSpan()).ToArray(),
        double[] a => MemoryMarshal.AsBytes(a.AsSpan()).ToArray(),
        Half[] a => MemoryMarshal.AsBytes(a.AsSpan()).ToArray(),
        long[] a => MemoryMarshal.AsBytes(a.AsSpan()).ToArray(),
        int[] a => MemoryMarshal.AsBytes(a.AsSpan()).ToArray(),
        sbyte[] a => MemoryMarshal.AsBytes(a.AsSpan()).ToArray(),
        byte[] a => (byte[])a.Clone(),
        _ => throw new InvalidOperationException(),
    };

    public NpyType Type { get; }
    public int[] Shape { get; }
    public long Count => Npy.CountOf(Shape);
    public string ShapeString => Npy.ShapeString(Shape);

    /// <summary>The values as float32, converting from any float type (float32 arrays are returned as held, not copied).</summary>
    public float[] ToFloat32(string path)
    {
        return values switch
        {
            float[] f => f,
            double[] d => Array.ConvertAll(d, v => (float)v),
            Half[] h => Array.ConvertAll(h, v => (float)v),
            _ => throw DiffSegException.For(path, $"dtype is {Npy.Descr(Type)}, expected a float array"),
        };
    }

    /// <summary>The values as int64 from any integer type (or floats that hold whole numbers).</summary>
    public long[] ToInt64(string path)
    {
        return values switch
        {
            long[] l => l,
            int[] i => Array.ConvertAll(i, v => (long)v),
            byte[] b => Array.ConvertAll(b, v => (long)v),
            sbyte[] s => Array.ConvertAll(s, v => (long)v),
            _ => FloatsAsIntegers(path),
        };
    }

    long[] FloatsAsIntegers(string path)
    {
        var f = values switch
        {
            float[] a => Array.ConvertAll(a, v => (double)v),
            double[] a => a,
            Half[] a => Array.ConvertAll(a, v => (double)v),
            _ => throw DiffSegException.For(path, $"dtype {Npy.Descr(Type)} is not numeric"),
        };
        var result = new long[f.Length];
        for (int i = 0; i < f.Length; i++)
        {
            double v = f[i];
            if (!(v == Math.Floor(v) && Math.Abs(v) < 1e15))
            {
                throw DiffSegException.For(path, $"holds the non-integer value {v.ToString(CultureInfo.InvariantCulture)} at index " +
                                                 $"{Npy.IndexString(Shape, i)}, expected integers");
            }
            result[i] = (long)v;
        }
        return result;
    }
}

/// <summary>
/// Reader and writer for NumPy's .npy format (versions 1–3). The reader trusts nothing in the header: it is parsed as the
/// strict literal NumPy writes, its length must end the header on its newline, and the shape must account for exactly the
/// bytes that follow it in the file, before anything the size of the data is allocated. Both directions stream: values go
/// between the file and their typed array in 1 MiB chunks, so files past 2 GB are read and written.
/// </summary>
public static class Npy
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
            throw DiffSegException.For(path, $"header length {headerLength:N0} is past the {MaxHeaderLength:N0}-byte limit: not a NumPy header");
        }
        if (headerStart + headerLength > fileLength)
        {
            throw DiffSegException.For(path, $"truncated .npy header: it claims {headerLength} bytes, the file has {fileLength - headerStart}");
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
            throw DiffSegException.For(path, $"shape ({dimsText}) has the dimension {bad}: " + (bad < 0 ? "negative" : $"past {int.MaxValue}"));
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

    /// <summary>The header's dict literal: {'descr': str, 'fortran_order': bool, 'shape': tuple of ints}, each key once.</summary>
    static class HeaderLiteral
    {
        public static (string Descr, bool Fortran, long[] Shape) Parse(string s, string path)
        {
            int i = 0;
            string? descr = null;
            bool? fortran = null;
            long[]? shape = null;
            Skip(s, ref i);
            Expect(s, ref i, '{', path);
            while (true)
            {
                Skip(s, ref i);
                if (Peek(s, i) == '}')
                {
                    i++;
                    break;
                }
                string key = ReadString(s, ref i, path);
                Skip(s, ref i);
                Expect(s, ref i, ':', path);
                Skip(s, ref i);
                switch (key)
                {
                    case "descr" when descr is null:
                        descr = Peek(s, i) is '\'' or '"' ? ReadString(s, ref i, path)
                            : throw Malformed(path, "'descr' is not a string (structured dtypes are not supported)");
                        break;
                    case "fortran_order" when fortran is null:
                        fortran = ReadWord(s, ref i) switch
                        {
                            "True" => true,
                            "False" => false,
                            var w => throw Malformed(path, $"'fortran_order' is '{w}', expected True or False"),
                        };
                        break;
                    case "shape" when shape is null:
                        shape = ReadShape(s, ref i, path);
                        break;
                    case "descr" or "fortran_order" or "shape":
                        throw Malformed(path, $"the key '{key}' appears twice");
                    default:
                        throw Malformed(path, $"unexpected key '{key}'");
                }
                Skip(s, ref i);
                if (Peek(s, i) == ',')
                {
                    i++;
                    continue;
                }
                Skip(s, ref i);
                Expect(s, ref i, '}', path);
                break;
            }
            if (s.AsSpan(i).Trim(" \n\0").Length != 0)
            {
                throw Malformed(path, "text after the header's dict");
            }
            if (descr is null || fortran is null || shape is null)
            {
                throw Malformed(path, "the header lacks 'descr', 'fortran_order' or 'shape'");
            }
            return (descr, fortran.Value, shape);
        }

        static long[] ReadShape(string s, ref int i, string path)
        {
            Expect(s, ref i, '(', path);
            var dims = new List<long>();
            while (true)
            {
                Skip(s, ref i);
                if (Peek(s, i) == ')')
                {
                    i++;
                    return dims.ToArray();
                }
                int start = i;
                while (i < s.Length && char.IsAsciiDigit(s[i]))
                {
                    i++;
                }
                if (i == start || i - start > 18)
                {
                    throw Malformed(path, i == start ? "'shape' is not a tuple of non-negative integers"
                        : "'shape' has a dimension with more than 18 digits");
                }
                dims.Add(long.Parse(s.AsSpan(start, i - start), CultureInfo.InvariantCulture));
                if (Peek(s, i) == 'L')
                {
                    i++; // Python 2 longs
                }
                if (dims.Count > 32)
                {
                    throw Malformed(path, "'shape' has more than 32 dimensions");
                }
                Skip(s, ref i);
                if (Peek(s, i) == ',')
                {
                    i++;
                }
                else if (Peek(s, i) != ')')
                {
                    throw Malformed(path, "'shape' is not a tuple of non-negative integers");
                }
            }
        }

        static string ReadString(string s, ref int i, string path)
        {
            char q = Peek(s, i);
            if (q is not ('\'' or '"'))
            {
                throw Malformed(path, "expected a quoted key");
            }
            int end = s.IndexOf(q, i + 1);
            if (end < 0 || end - i > 64)
            {
                throw Malformed(path, "unterminated string");
            }
            string value = s[(i + 1)..end];
            i = end + 1;
            return value;
        }

        static string ReadWord(string s, ref int i)
        {
            int start = i;
            while (i < s.Length && char.IsAsciiLetter(s[i]))
            {
                i++;
            }
            return s[start..i];
        }

        static char Peek(string s, int i) => i < s.Length ? s[i] : '\0';

        static void Skip(string s, ref int i)
        {
            while (i < s.Length && s[i] is ' ' or '\t')
            {
                i++;
            }
        }

        static void Expect(string s, ref int i, char c, string path)
        {
            if (Peek(s, i) != c)
            {
                throw Malformed(path, $"expected '{c}' at header byte {i}");
            }
            i++;
        }

        static DiffSegException Malformed(string path, string what) => DiffSegException.For(path, $"malformed .npy header: {what}");
    }

    /// <summary>
    /// Writes an array as .npy, streaming its values in chunks (no copy of the whole file is made, so a 2.2 GB feature
    /// array is written like a small one). The file appears only when complete.
    /// </summary>
    public static void Write<T>(string path, NpyType type, ReadOnlySpan<T> data, IReadOnlyList<int> shape) where T : unmanaged
    {
        if (Marshal.SizeOf<T>() != ElementSize(type))
        {
            throw new ArgumentException($"{typeof(T).Name} values cannot be written as {Descr(type)}");
        }
        long count = shape.Aggregate(1L, (a, d) => a * d);
        if (shape.Any(d => d < 0) || count != data.Length)
        {
            throw new ArgumentException($"shape ({string.Join(", ", shape)}) does not hold {data.Length} values");
        }
        using var writer = AtomicFile.Create(path);
        writer.Stream.Write(HeaderBytes(type, shape));
        int perChunk = ChunkBytes / Marshal.SizeOf<T>();
        try
        {
            for (int start = 0; start < data.Length; start += perChunk)
            {
                writer.Stream.Write(MemoryMarshal.AsBytes(data.Slice(start, Math.Min(perChunk, data.Length - start))));
            }
        }
        catch (IOException e)
        {
            throw DiffSegException.For(path, $"cannot write: {e.Message}");
        }
        writer.Commit();
    }

    /// <summary>Version 1.0 header (2.0 when the dict is past 65,535 bytes), padded so the data starts on a 64-byte boundary.</summary>
    public static byte[] HeaderBytes(NpyType type, IReadOnlyList<int> shape)
    {
        string dims = shape.Count == 1 ? $"{shape[0]}," : string.Join(", ", shape);
        string dict = $"{{'descr': '{Descr(type)}', 'fortran_order': False, 'shape': ({dims}), }}";
        bool v2 = dict.Length + 11 > ushort.MaxValue;
        int pre = v2 ? 12 : 10;
        int pad = (64 - (pre + dict.Length + 1) % 64) % 64;
        string header = dict + new string(' ', pad) + "\n";
        var buffer = new byte[pre + header.Length];
        Magic.CopyTo(buffer, 0);
        buffer[6] = (byte)(v2 ? 2 : 1);
        if (v2)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(buffer.AsSpan(8), (uint)header.Length);
        }
        else
        {
            BinaryPrimitives.WriteUInt16LittleEndian(buffer.AsSpan(8), (ushort)header.Length);
        }
        Encoding.Latin1.GetBytes(header, buffer.AsSpan(pre));
        return buffer;
    }

    public static void Write(string path, NpyType type, ReadOnlySpan<byte> data, IReadOnlyList<int> shape)
    {
        CheckByteCount(type, data, shape);
        using var writer = AtomicFile.Create(path);
        writer.Stream.Write(HeaderBytes(type, shape));
        writer.Stream.Write(data);
        writer.Commit();
    }

    /// <summary>The bytes of an .npy file holding <paramref name="data"/>, for an .npz entry.</summary>
    public static byte[] Encode(NpyType type, ReadOnlySpan<byte> data, IReadOnlyList<int> shape)
    {
        CheckByteCount(type, data, shape);
        var header = HeaderBytes(type, shape);
        var buffer = new byte[header.Length + data.Length];
        header.CopyTo(buffer, 0);
        data.CopyTo(buffer.AsSpan(header.Length));
        return buffer;
    }

    static void CheckByteCount(NpyType type, ReadOnlySpan<byte> data, IReadOnlyList<int> shape)
    {
        long count = shape.Aggregate(1L, (a, d) => a * d);
        if (count * ElementSize(type) != data.Length)
        {
            throw new ArgumentException($"shape ({string.Join(", ", shape)}) of {Descr(type)} does not hold {data.Length} bytes");
        }
    }

    public static void Write(string path, ReadOnlySpan<float> data, IReadOnlyList<int> shape) => Write(path, NpyType.Float32, data, shape);

    public static void Write(string path, ReadOnlySpan<long> data, IReadOnlyList<int> shape) => Write(path, NpyType.Int64, data, shape);

    public static void Write(string path, ReadOnlySpan<byte> data, IReadOnlyList<int> shape) => Write(path, NpyType.UInt8, data, shape);

    public static void Write(string path, ReadOnlySpan<double> data, IReadOnlyList<int> shape) => Write(path, NpyType.Float64, data, shape);

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

/// <summary>Finding NaN and ±Inf fast: x − x is 0 for every finite x and NaN otherwise.</summary>
public static class Finite
{
    public static int IndexOfNonFinite(ReadOnlySpan<float> values)
    {
        int i = 0;
        if (System.Numerics.Vector.IsHardwareAccelerated)
        {
            var v = MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(values);
            for (int k = 0; k < v.Length; k++)
            {
                if (!System.Numerics.Vector.EqualsAll(v[k] - v[k], System.Numerics.Vector<float>.Zero))
                {
                    break;
                }
                i += System.Numerics.Vector<float>.Count;
            }
        }
        for (; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                return i;
            }
        }
        return -1;
    }

    public static string Name(float v) => float.IsNaN(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf";
}
