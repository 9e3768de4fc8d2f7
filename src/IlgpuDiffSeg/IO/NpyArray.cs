// NpyArray: an .npy array held in memory as a typed array, with its float32 and int64 views.

using System.Globalization;
using System.Runtime.InteropServices;

namespace IlgpuDiffSeg.IO;

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
