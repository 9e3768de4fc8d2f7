// TorchCheckpoint: the checks made on open, that storages match their archive entries and tensors lie inside them.

using System.IO.Compression;

namespace IlgpuDiffSeg.IO;

public sealed partial class TorchCheckpoint
{
    /// <summary>
    /// The storage's record (numel of its dtype) must be the bytes its entry holds; a deflated entry may not claim more than
    /// deflate can give.
    /// </summary>
    static void CheckStorage(string path, StorageRef s, ZipArchiveEntry? entry, long fileLength)
    {
        if (entry is null)
        {
            throw DiffSegException.For(path, $"storage '{s.Key}' is missing from the archive");
        }
        long bytes = s.Numel * ElementSize(s.DType);
        if (s.Numel > long.MaxValue / 8 || entry.Length != bytes)
        {
            throw DiffSegException.For(path, $"storage '{s.Key}' holds {entry.Length:N0} bytes but its record says {s.Numel:N0} " +
                                             $"{DTypeName(s.DType)} values " +
                                             $"({(s.Numel > long.MaxValue / 8 ? "too many" : $"{bytes:N0} bytes")})");
        }
        if (entry.CompressedLength > fileLength || entry.Length > entry.CompressedLength * 1100 + 1024)
        {
            throw DiffSegException.For(path, $"storage '{s.Key}' claims {entry.Length:N0} bytes from " +
                                             $"{entry.CompressedLength:N0} compressed bytes, more than the archive can hold");
        }
    }

    /// <summary>Every element the tensor addresses, offset + Σ (shape−1)·stride, lies inside its storage.</summary>
    static void CheckTensor(string path, TorchTensor t)
    {
        if (t.Count == 0)
        {
            return;
        }
        long last = t.StorageOffset;
        for (int d = 0; d < t.Shape.Length; d++)
        {
            long step = t.Shape[d] - 1;
            if (t.Stride[d] != 0 && step > (t.StorageNumel - last) / t.Stride[d])
            {
                last = long.MaxValue;
                break;
            }
            last += step * t.Stride[d];
        }
        if (last >= t.StorageNumel)
        {
            throw DiffSegException.For(path, $"tensor '{t.Name}' of shape {t.ShapeString}, strides ({string.Join(", ", t.Stride)}) at " +
                                             $"offset {t.StorageOffset} reaches past the end of its storage '{t.StorageKey}' " +
                                             $"({t.StorageNumel:N0} values)");
        }
    }
}
