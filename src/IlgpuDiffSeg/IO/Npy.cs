using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;

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

/// <summary>An .npy array held in memory: C order, little-endian.</summary>
public sealed class NpyArray(NpyType type, int[] shape, byte[] data)
{
    public NpyType Type { get; } = type;
    public int[] Shape { get; } = shape;
    public byte[] Data { get; } = data;
    public long Count => Shape.Aggregate(1L, (a, d) => a * d);
    public string ShapeString => "(" + string.Join(", ", Shape) + (Shape.Length == 1 ? ",)" : ")");

    /// <summary>The values as float32, converting from any float type. Integer arrays are refused.</summary>
    public float[] ToFloat32(string path)
    {
        return Type switch
        {
            NpyType.Float32 => MemoryMarshal.Cast<byte, float>(Data).ToArray(),
            NpyType.Float64 => MemoryMarshal.Cast<byte, double>(Data).ToArray().Select(v => (float)v).ToArray(),
            NpyType.Float16 => MemoryMarshal.Cast<byte, Half>(Data).ToArray().Select(v => (float)v).ToArray(),
            _ => throw DiffSegException.For(path, $"dtype is {Npy.Descr(Type)}, expected a float array"),
        };
    }

    /// <summary>The values as int64 from any integer type (or floats that hold whole numbers).</summary>
    public long[] ToInt64(string path)
    {
        long[] values = Type switch
        {
            NpyType.Int64 => MemoryMarshal.Cast<byte, long>(Data).ToArray(),
            NpyType.Int32 => MemoryMarshal.Cast<byte, int>(Data).ToArray().Select(v => (long)v).ToArray(),
            NpyType.UInt8 or NpyType.Bool => Data.Select(v => (long)v).ToArray(),
            NpyType.Int8 => Data.Select(v => (long)(sbyte)v).ToArray(),
            _ => ToFloat32(path).Select(v => v == Math.Floor(v) && Math.Abs(v) < 1e15
                ? (long)v
                : throw DiffSegException.For(path, $"holds the non-integer value {v}, expected integers")).ToArray(),
        };
        return values;
    }
}

/// <summary>Reader and writer for NumPy's .npy format (versions 1–3).</summary>
public static class Npy
{
    static readonly byte[] Magic = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

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

    static int ElementSize(NpyType t) => t switch
    {
        NpyType.Float64 or NpyType.Int64 => 8,
        NpyType.Float32 or NpyType.Int32 => 4,
        NpyType.Float16 => 2,
        _ => 1,
    };

    public static NpyArray Read(string path)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (FileNotFoundException)
        {
            throw DiffSegException.For(path, "file not found");
        }
        catch (DirectoryNotFoundException)
        {
            throw DiffSegException.For(path, "file not found");
        }
        catch (IOException e)
        {
            throw DiffSegException.For(path, $"cannot read: {e.Message}");
        }
        return Parse(bytes, path);
    }

    public static NpyArray Parse(byte[] bytes, string path)
    {
        if (bytes.Length < 10 || !bytes.AsSpan(0, 6).SequenceEqual(Magic))
        {
            throw DiffSegException.For(path, "not a NumPy .npy file (bad magic)");
        }
        int major = bytes[6];
        int headerLength, headerStart;
        if (major == 1)
        {
            headerLength = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(8));
            headerStart = 10;
        }
        else if (major is 2 or 3)
        {
            if (bytes.Length < 12)
            {
                throw DiffSegException.For(path, "truncated .npy header");
            }
            headerLength = (int)BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(8));
            headerStart = 12;
        }
        else
        {
            throw DiffSegException.For(path, $"unsupported .npy version {major}");
        }
        if (headerStart + headerLength > bytes.Length)
        {
            throw DiffSegException.For(path, "truncated .npy header");
        }
        string header = Encoding.Latin1.GetString(bytes, headerStart, headerLength);
        var descr = Regex.Match(header, @"'descr'\s*:\s*'([^']*)'");
        var fortran = Regex.Match(header, @"'fortran_order'\s*:\s*(True|False)");
        var shape = Regex.Match(header, @"'shape'\s*:\s*\(([^)]*)\)");
        if (!descr.Success || !fortran.Success || !shape.Success)
        {
            throw DiffSegException.For(path, "malformed .npy header");
        }
        if (fortran.Groups[1].Value == "True")
        {
            throw DiffSegException.For(path, "Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
        }
        var type = descr.Groups[1].Value switch
        {
            "<f4" => NpyType.Float32,
            "<f8" => NpyType.Float64,
            "<f2" => NpyType.Float16,
            "<i8" => NpyType.Int64,
            "<i4" => NpyType.Int32,
            "|u1" or "<u1" => NpyType.UInt8,
            "|i1" or "<i1" => NpyType.Int8,
            "|b1" => NpyType.Bool,
            var d => throw DiffSegException.For(path, $"unsupported dtype '{d}' (supported: float32/64/16, int64/32/8, uint8, bool)"),
        };
        int[] dims;
        try
        {
            dims = shape.Groups[1].Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        }
        catch (FormatException)
        {
            throw DiffSegException.For(path, "malformed shape in .npy header");
        }
        long count = dims.Aggregate(1L, (a, d) => a * d);
        long dataStart = headerStart + headerLength;
        long expected = count * ElementSize(type);
        if (bytes.Length - dataStart < expected)
        {
            throw DiffSegException.For(path, $"truncated: shape ({string.Join(", ", dims)}) needs {expected} bytes of data, " +
                                             $"found {bytes.Length - dataStart}");
        }
        var data = bytes.AsSpan((int)dataStart, (int)expected).ToArray();
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("big-endian hosts are not supported");
        }
        return new NpyArray(type, dims, data);
    }

    public static void Write(string path, NpyType type, ReadOnlySpan<byte> data, IReadOnlyList<int> shape)
    {
        var buffer = Encode(type, data, shape);
        AtomicFile.Write(path, s => s.Write(buffer));
    }

    /// <summary>The bytes of a version-1.0 .npy file holding <paramref name="data"/> (also an .npz entry).</summary>
    public static byte[] Encode(NpyType type, ReadOnlySpan<byte> data, IReadOnlyList<int> shape)
    {
        string dims = shape.Count == 1 ? $"{shape[0]}," : string.Join(", ", shape);
        string dict = $"{{'descr': '{Descr(type)}', 'fortran_order': False, 'shape': ({dims}), }}";
        int total = 10 + dict.Length + 1;
        int pad = (64 - total % 64) % 64;
        string header = dict + new string(' ', pad) + "\n";
        var buffer = new byte[10 + header.Length + data.Length];
        Magic.CopyTo(buffer, 0);
        buffer[6] = 1;
        buffer[7] = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(buffer.AsSpan(8), (ushort)header.Length);
        Encoding.Latin1.GetBytes(header, buffer.AsSpan(10));
        data.CopyTo(buffer.AsSpan(10 + header.Length));
        return buffer;
    }

    public static void Write(string path, ReadOnlySpan<float> data, IReadOnlyList<int> shape) =>
        Write(path, NpyType.Float32, MemoryMarshal.AsBytes(data), shape);

    public static void Write(string path, ReadOnlySpan<long> data, IReadOnlyList<int> shape) =>
        Write(path, NpyType.Int64, MemoryMarshal.AsBytes(data), shape);

    public static void Write(string path, ReadOnlySpan<byte> data, IReadOnlyList<int> shape) =>
        Write(path, NpyType.UInt8, data, shape);

    public static void Write(string path, ReadOnlySpan<double> data, IReadOnlyList<int> shape) =>
        Write(path, NpyType.Float64, MemoryMarshal.AsBytes(data), shape);

    /// <summary>Reads a float array and checks its shape; -1 in <paramref name="expected"/> matches any size.</summary>
    public static float[] ReadFloat32(string path, out int[] shape, params int[] expected)
    {
        var a = Read(path);
        CheckShape(path, a, expected);
        shape = a.Shape;
        return a.ToFloat32(path);
    }

    public static void CheckShape(string path, NpyArray a, int[] expected)
    {
        if (expected.Length == 0)
        {
            return;
        }
        bool ok = a.Shape.Length == expected.Length && a.Shape.Zip(expected).All(p => p.Second < 0 || p.First == p.Second);
        if (!ok)
        {
            string want = "(" + string.Join(", ", expected.Select(d => d < 0 ? "*" : d.ToString(CultureInfo.InvariantCulture))) + ")";
            throw DiffSegException.For(path, $"shape is {a.ShapeString}, expected {want}");
        }
    }
}
