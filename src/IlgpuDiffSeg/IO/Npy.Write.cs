// Npy: the writer: headers, streamed values written atomically, and .npz entry bytes.

using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace IlgpuDiffSeg.IO;

public static partial class Npy
{
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
}
