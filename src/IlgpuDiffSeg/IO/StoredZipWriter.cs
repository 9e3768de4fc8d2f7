using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace IlgpuDiffSeg.IO;

/// <summary>
/// A zip writer for stored entries whose bytes are known when added (sizes and CRC go into the local header; no data
/// descriptors). Every entry's data is aligned to <see cref="TorchCheckpointWriter.Alignment"/> by an extra field of id "FB" filled with
/// 'Z', as torch writes it; sizes and offsets at or above the zip64 threshold go into zip64 extra fields, and the
/// zip64 end records are written when any central-directory value needs them.
/// </summary>
internal sealed class StoredZipWriter(Stream stream, long zip64Threshold)
{
    const uint LocalHeaderSignature = 0x04034b50;
    const uint CentralHeaderSignature = 0x02014b50;
    const uint EndSignature = 0x06054b50;
    const uint Zip64EndSignature = 0x06064b50;
    const uint Zip64LocatorSignature = 0x07064b50;
    const ushort Zip64ExtraId = 0x0001;
    const ushort PaddingExtraId = 'F' | ('B' << 8);
    const ushort VersionPlain = 20;
    const ushort VersionZip64 = 45;
    // 1980-01-01 00:00: a fixed MS-DOS date, so the same tensors give the same bytes.
    const ushort DosTime = 0;
    const ushort DosDate = (0 << 9) | (1 << 5) | 1;

    sealed record Entry(byte[] Name, uint Crc, long Size, long Offset);

    readonly List<Entry> entries = new();
    long position;

    bool Big(long value) => value >= zip64Threshold || value >= uint.MaxValue;

    public void Add(string name, ReadOnlySpan<byte> data)
    {
        var nameBytes = Encoding.UTF8.GetBytes(name);
        uint crc = Crc32.Compute(data);
        long offset = position;
        bool zip64 = Big(data.Length);
        int zip64Extra = zip64 ? 20 : 0; // id, length, uncompressed and compressed sizes
        long dataStart = offset + 30 + nameBytes.Length + zip64Extra + 4;
        int pad = (int)((TorchCheckpointWriter.Alignment - dataStart % TorchCheckpointWriter.Alignment) % TorchCheckpointWriter.Alignment);
        var header = new byte[30 + nameBytes.Length + zip64Extra + 4 + pad];
        var h = header.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(h[0..], LocalHeaderSignature);
        BinaryPrimitives.WriteUInt16LittleEndian(h[4..], zip64 ? VersionZip64 : VersionPlain);
        BinaryPrimitives.WriteUInt16LittleEndian(h[6..], 0); // flags
        BinaryPrimitives.WriteUInt16LittleEndian(h[8..], 0); // stored
        BinaryPrimitives.WriteUInt16LittleEndian(h[10..], DosTime);
        BinaryPrimitives.WriteUInt16LittleEndian(h[12..], DosDate);
        BinaryPrimitives.WriteUInt32LittleEndian(h[14..], crc);
        BinaryPrimitives.WriteUInt32LittleEndian(h[18..], zip64 ? uint.MaxValue : (uint)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(h[22..], zip64 ? uint.MaxValue : (uint)data.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(h[26..], (ushort)nameBytes.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(h[28..], (ushort)(zip64Extra + 4 + pad));
        nameBytes.CopyTo(h[30..]);
        var extra = h[(30 + nameBytes.Length)..];
        if (zip64)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(extra[0..], Zip64ExtraId);
            BinaryPrimitives.WriteUInt16LittleEndian(extra[2..], 16);
            BinaryPrimitives.WriteInt64LittleEndian(extra[4..], data.Length);
            BinaryPrimitives.WriteInt64LittleEndian(extra[12..], data.Length);
            extra = extra[20..];
        }
        BinaryPrimitives.WriteUInt16LittleEndian(extra[0..], PaddingExtraId);
        BinaryPrimitives.WriteUInt16LittleEndian(extra[2..], (ushort)pad);
        extra[4..].Fill((byte)'Z');
        stream.Write(header);
        stream.Write(data);
        position += header.Length + data.Length;
        entries.Add(new Entry(nameBytes, crc, data.Length, offset));
    }

    /// <summary>The central directory and end records.</summary>
    public void Finish()
    {
        long cdStart = position;
        using var cd = new MemoryStream();
        foreach (var e in entries)
        {
            bool bigSize = Big(e.Size), bigOffset = Big(e.Offset);
            int extraLength = bigSize || bigOffset ? 4 + (bigSize ? 16 : 0) + (bigOffset ? 8 : 0) : 0;
            var r = new byte[46 + e.Name.Length + extraLength];
            var s = r.AsSpan();
            ushort version = extraLength > 0 ? VersionZip64 : VersionPlain;
            BinaryPrimitives.WriteUInt32LittleEndian(s[0..], CentralHeaderSignature);
            BinaryPrimitives.WriteUInt16LittleEndian(s[4..], version); // made by (MS-DOS attributes)
            BinaryPrimitives.WriteUInt16LittleEndian(s[6..], version); // needed
            BinaryPrimitives.WriteUInt16LittleEndian(s[8..], 0);
            BinaryPrimitives.WriteUInt16LittleEndian(s[10..], 0);
            BinaryPrimitives.WriteUInt16LittleEndian(s[12..], DosTime);
            BinaryPrimitives.WriteUInt16LittleEndian(s[14..], DosDate);
            BinaryPrimitives.WriteUInt32LittleEndian(s[16..], e.Crc);
            BinaryPrimitives.WriteUInt32LittleEndian(s[20..], bigSize ? uint.MaxValue : (uint)e.Size);
            BinaryPrimitives.WriteUInt32LittleEndian(s[24..], bigSize ? uint.MaxValue : (uint)e.Size);
            BinaryPrimitives.WriteUInt16LittleEndian(s[28..], (ushort)e.Name.Length);
            BinaryPrimitives.WriteUInt16LittleEndian(s[30..], (ushort)extraLength);
            // comment length, disk number, internal and external attributes: 0
            BinaryPrimitives.WriteUInt32LittleEndian(s[42..], bigOffset ? uint.MaxValue : (uint)e.Offset);
            e.Name.CopyTo(s[46..]);
            if (extraLength > 0)
            {
                // The zip64 extra holds, in this order, only the fields whose 32-bit slot reads 0xFFFFFFFF.
                var x = s[(46 + e.Name.Length)..];
                BinaryPrimitives.WriteUInt16LittleEndian(x[0..], Zip64ExtraId);
                BinaryPrimitives.WriteUInt16LittleEndian(x[2..], (ushort)(extraLength - 4));
                int at = 4;
                if (bigSize)
                {
                    BinaryPrimitives.WriteInt64LittleEndian(x[at..], e.Size);
                    BinaryPrimitives.WriteInt64LittleEndian(x[(at + 8)..], e.Size);
                    at += 16;
                }
                if (bigOffset)
                {
                    BinaryPrimitives.WriteInt64LittleEndian(x[at..], e.Offset);
                }
            }
            cd.Write(r);
        }
        stream.Write(cd.GetBuffer().AsSpan(0, (int)cd.Length));
        long cdSize = cd.Length;
        position += cdSize;
        bool zip64End = entries.Count >= ushort.MaxValue || Big(cdStart) || Big(cdSize);
        if (zip64End)
        {
            long zip64EndOffset = position;
            var z = new byte[56 + 20];
            var s = z.AsSpan();
            BinaryPrimitives.WriteUInt32LittleEndian(s[0..], Zip64EndSignature);
            BinaryPrimitives.WriteInt64LittleEndian(s[4..], 56 - 12); // size of the rest of this record
            BinaryPrimitives.WriteUInt16LittleEndian(s[12..], VersionZip64);
            BinaryPrimitives.WriteUInt16LittleEndian(s[14..], VersionZip64);
            // this disk, the disk where the central directory starts: 0
            BinaryPrimitives.WriteInt64LittleEndian(s[24..], entries.Count);
            BinaryPrimitives.WriteInt64LittleEndian(s[32..], entries.Count);
            BinaryPrimitives.WriteInt64LittleEndian(s[40..], cdSize);
            BinaryPrimitives.WriteInt64LittleEndian(s[48..], cdStart);
            BinaryPrimitives.WriteUInt32LittleEndian(s[56..], Zip64LocatorSignature);
            BinaryPrimitives.WriteUInt32LittleEndian(s[60..], 0);
            BinaryPrimitives.WriteInt64LittleEndian(s[64..], zip64EndOffset);
            BinaryPrimitives.WriteUInt32LittleEndian(s[72..], 1); // disks in all
            stream.Write(z);
            position += z.Length;
        }
        var end = new byte[22];
        var en = end.AsSpan();
        ushort count = zip64End ? ushort.MaxValue : (ushort)entries.Count;
        BinaryPrimitives.WriteUInt32LittleEndian(en[0..], EndSignature);
        BinaryPrimitives.WriteUInt16LittleEndian(en[8..], count);
        BinaryPrimitives.WriteUInt16LittleEndian(en[10..], count);
        BinaryPrimitives.WriteUInt32LittleEndian(en[12..], zip64End ? uint.MaxValue : (uint)cdSize);
        BinaryPrimitives.WriteUInt32LittleEndian(en[16..], zip64End ? uint.MaxValue : (uint)cdStart);
        stream.Write(end);
        position += end.Length;
    }
}

/// <summary>The CRC-32 of zip (polynomial 0xEDB88320, reflected), eight bytes per step (slicing-by-8).</summary>
public static class Crc32
{
    static readonly uint[] Table = BuildTable();

    static uint[] BuildTable()
    {
        var t = new uint[8 * 256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++)
            {
                c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            }
            t[i] = c;
        }
        // Table k gives the CRC of a byte followed by k zero bytes.
        for (int k = 1; k < 8; k++)
        {
            for (int i = 0; i < 256; i++)
            {
                uint prev = t[(k - 1) * 256 + i];
                t[k * 256 + i] = (prev >> 8) ^ t[prev & 0xff];
            }
        }
        return t;
    }

    public static uint Compute(ReadOnlySpan<byte> data) => Append(0, data);

    /// <summary>The CRC of the bytes before (<paramref name="crc"/>) followed by <paramref name="data"/>.</summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        var t = Table;
        uint c = ~crc;
        while (data.Length >= 8)
        {
            uint lo = c ^ BinaryPrimitives.ReadUInt32LittleEndian(data);
            uint hi = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
            c = t[7 * 256 + (lo & 0xff)] ^ t[6 * 256 + ((lo >> 8) & 0xff)] ^ t[5 * 256 + ((lo >> 16) & 0xff)] ^ t[4 * 256 + (lo >> 24)] ^
                t[3 * 256 + (hi & 0xff)] ^ t[2 * 256 + ((hi >> 8) & 0xff)] ^ t[1 * 256 + ((hi >> 16) & 0xff)] ^ t[hi >> 24];
            data = data[8..];
        }
        foreach (byte b in data)
        {
            c = t[(c ^ b) & 0xff] ^ (c >> 8);
        }
        return ~c;
    }
}
