// TorchCheckpoint: reading a tensor's values from its storage entry, contiguous or strided, converted to float32.

using System.Runtime.InteropServices;

namespace IlgpuDiffSeg.IO;

public sealed partial class TorchCheckpoint
{
    /// <summary>
    /// A strided tensor is gathered through a buffer of the storage span it touches, at most this large (or twice the tensor).
    /// </summary>
    const long MaxStridedSpanBytes = 64L << 20;

    /// <summary>Copies one tensor's values, converted to float32, into <paramref name="destination"/> (C order).</summary>
    public void ReadFloat32(TorchTensor t, Span<float> destination)
    {
        if (destination.Length != t.Count)
        {
            throw new ArgumentException($"destination holds {destination.Length} values, tensor {t.Name} has {t.Count}");
        }
        if (t.Count == 0)
        {
            return;
        }
        int elem = ElementSize(t.DType);
        if (t.IsContiguous)
        {
            using var s = OpenStorage(t, (long)t.StorageOffset * elem);
            const int chunk = 1 << 18;
            var raw = new byte[Math.Min(destination.Length, chunk) * elem];
            for (int start = 0; start < destination.Length; start += chunk)
            {
                int n = Math.Min(chunk, destination.Length - start);
                ReadStorage(t, s, raw.AsSpan(0, n * elem));
                ConvertToFloat32(raw.AsSpan(0, n * elem), t.DType, destination.Slice(start, n));
            }
            return;
        }
        // A strided view: gather from the span of storage it touches, [offset, offset + max index + 1).
        long extent = 1;
        for (int d = 0; d < t.Shape.Length; d++)
        {
            extent += (t.Shape[d] - 1) * t.Stride[d];
        }
        if (extent * elem > Math.Max(MaxStridedSpanBytes, 2 * t.Count * elem))
        {
            throw DiffSegException.For(Path, $"tensor '{t.Name}' is a strided view spanning {extent:N0} values of its storage for " +
                                             $"{t.Count:N0} values; re-save the checkpoint with contiguous tensors (t.contiguous())");
        }
        var span = new byte[extent * elem];
        using (var s = OpenStorage(t, (long)t.StorageOffset * elem))
        {
            ReadStorage(t, s, span);
        }
        var one = new float[1];
        var index = new int[t.Shape.Length];
        for (long i = 0; i < t.Count; i++)
        {
            long src = 0;
            for (int d = 0; d < index.Length; d++)
            {
                src += index[d] * t.Stride[d];
            }
            ConvertToFloat32(span.AsSpan((int)(src * elem), elem), t.DType, one);
            destination[(int)i] = one[0];
            for (int d = index.Length - 1; d >= 0; d--)
            {
                if (++index[d] < t.Shape[d])
                {
                    break;
                }
                index[d] = 0;
            }
        }
    }

    Stream OpenStorage(TorchTensor t, long byteOffset)
    {
        if (!entries.TryGetValue($"{prefix}data/{t.StorageKey}", out var entry))
        {
            throw DiffSegException.For(Path, $"storage '{t.StorageKey}' of tensor '{t.Name}' is missing from the archive");
        }
        Stream? s = null;
        try
        {
            s = entry.Open();
            Skip(s, byteOffset);
            return s;
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or IOException or NotSupportedException)
        {
            s?.Dispose();
            throw DiffSegException.For(Path, $"storage of tensor '{t.Name}' is truncated or corrupt ({e.Message.TrimEnd('.')})");
        }
    }

    void ReadStorage(TorchTensor t, Stream s, Span<byte> buffer)
    {
        try
        {
            s.ReadExactly(buffer);
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or IOException)
        {
            throw DiffSegException.For(Path, $"storage of tensor '{t.Name}' is truncated or corrupt ({e.Message.TrimEnd('.')})");
        }
    }

    static void Skip(Stream s, long count)
    {
        if (count == 0)
        {
            return;
        }
        if (s.CanSeek)
        {
            if (count > s.Length - s.Position)
            {
                throw new EndOfStreamException();
            }
            s.Seek(count, SeekOrigin.Current);
            return;
        }
        var scratch = new byte[Math.Min(count, 1 << 20)];
        while (count > 0)
        {
            int n = s.Read(scratch, 0, (int)Math.Min(count, scratch.Length));
            if (n == 0)
            {
                throw new EndOfStreamException();
            }
            count -= n;
        }
    }

    static void ConvertToFloat32(ReadOnlySpan<byte> raw, TorchDType type, Span<float> dst)
    {
        switch (type)
        {
            case TorchDType.Float32:
                MemoryMarshal.Cast<byte, float>(raw)[..dst.Length].CopyTo(dst);
                break;
            case TorchDType.Float64:
            {
                var src = MemoryMarshal.Cast<byte, double>(raw);
                for (int i = 0; i < dst.Length; i++)
                {
                    dst[i] = (float)src[i];
                }
                break;
            }
            case TorchDType.Float16:
            {
                var src = MemoryMarshal.Cast<byte, Half>(raw);
                for (int i = 0; i < dst.Length; i++)
                {
                    dst[i] = (float)src[i];
                }
                break;
            }
            case TorchDType.BFloat16:
            {
                var src = MemoryMarshal.Cast<byte, ushort>(raw);
                for (int i = 0; i < dst.Length; i++)
                {
                    dst[i] = BitConverter.Int32BitsToSingle(src[i] << 16);
                }
                break;
            }
        }
    }
}
