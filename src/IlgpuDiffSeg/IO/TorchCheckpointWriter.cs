using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace IlgpuDiffSeg.IO;

/// <summary>A tensor to be written into a .pt: its name, shape, element type, and a callback writing its values (C order).</summary>
public sealed class TorchTensorSource
{
    public string Name { get; }
    public int[] Shape { get; }

    /// <summary>The storage class the pickle names: torch.FloatStorage (float32) or torch.LongStorage (int64).</summary>
    internal string StorageClass { get; }

    internal int ElementSize { get; }
    internal Action<Span<byte>> Fill { get; }

    TorchTensorSource(string name, int[] shape, string storageClass, int elementSize, Action<Span<byte>> fill)
    {
        if (shape.Any(d => d < 0))
        {
            throw new ArgumentException($"tensor '{name}' has a negative dimension");
        }
        Name = name;
        Shape = shape;
        StorageClass = storageClass;
        ElementSize = elementSize;
        Fill = fill;
    }

    public long Count => Shape.Aggregate(1L, (a, d) => a * d);
    public long ByteCount => Count * ElementSize;

    public static TorchTensorSource Float32(string name, int[] shape, Action<Span<float>> fill) =>
        new(name, shape, "FloatStorage", 4, bytes => fill(MemoryMarshal.Cast<byte, float>(bytes)));

    public static TorchTensorSource Int64(string name, int[] shape, Action<Span<long>> fill) =>
        new(name, shape, "LongStorage", 8, bytes => fill(MemoryMarshal.Cast<byte, long>(bytes)));

    /// <summary>A 0-dimensional int64 tensor (a step counter, say).</summary>
    public static TorchTensorSource Int64Scalar(string name, long value) => Int64(name, [], s => s[0] = value);
}

/// <summary>
/// Writes a state_dict the way torch.save writes one (the zip format of PyTorch ≥ 1.6), so that
/// <c>torch.load(path, weights_only=True)</c> and <see cref="TorchCheckpoint.Open"/> both read it:
/// <list type="bullet">
/// <item><c>archive/data.pkl</c>: pickle protocol 2 of an OrderedDict name → tensor, each tensor
/// <c>torch._utils._rebuild_tensor_v2(storage, 0, size, contiguous stride, False, OrderedDict())</c> with the storage a
/// persistent id <c>('storage', torch.FloatStorage, key, 'cpu', numel)</c>; only opcodes torch's weights-only unpickler
/// accepts;</item>
/// <item><c>archive/byteorder</c> ("little"), <c>archive/data/&lt;key&gt;</c> (one storage per tensor, raw
/// little-endian values), <c>archive/version</c> ("3\n");</item>
/// <item>entries stored uncompressed, each entry's data starting on a 64-byte boundary (the local header's extra field
/// is padded as torch.save pads it, e.g. in tests/fixtures/adm-tiny/model.pt, so readers can map storages in place);
/// zip64 records once offsets pass 4 GiB.</item>
/// </list>
/// Tensors are filled and written one at a time: the process holds one tensor's bytes, whatever the model's size.
/// The file appears only when complete (<see cref="AtomicFile"/>).
/// </summary>
public static class TorchCheckpointWriter
{
    /// <summary>Where each entry's data starts: a multiple of this, from the start of the file.</summary>
    public const int Alignment = 64;

    /// <summary>The folder every entry sits in (torch.load takes whatever name the first entry has).</summary>
    public const string ArchiveName = "archive";

    /// <summary>
    /// Writes <paramref name="tensors"/> in the given order as a state_dict. <paramref name="progress"/> receives (bytes
    /// of tensor data written, total) after each tensor. <paramref name="zip64Threshold"/> is for tests: sizes and
    /// offsets at or above it are written in zip64 form (the format requires it from 0xFFFFFFFF on).
    /// </summary>
    public static void Write(string path, IReadOnlyList<TorchTensorSource> tensors, Action<long, long>? progress = null,
        long zip64Threshold = uint.MaxValue)
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("torch checkpoints are written on little-endian hosts only");
        }
        var duplicate = tensors.GroupBy(t => t.Name).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
        {
            throw new ArgumentException($"tensor name '{duplicate.Key}' appears twice");
        }
        var pickle = PickleStateDict(tensors);
        long total = tensors.Sum(t => t.ByteCount);
        AtomicFile.Write(path, stream =>
        {
            var zip = new StoredZipWriter(stream, zip64Threshold);
            zip.Add($"{ArchiveName}/data.pkl", pickle);
            zip.Add($"{ArchiveName}/byteorder", "little"u8);
            long done = 0;
            byte[] buffer = [];
            for (int i = 0; i < tensors.Count; i++)
            {
                var t = tensors[i];
                if (t.ByteCount > Array.MaxLength)
                {
                    throw new ArgumentException($"tensor '{t.Name}' has {t.ByteCount} bytes, more than one write takes");
                }
                if (buffer.Length < t.ByteCount)
                {
                    buffer = new byte[t.ByteCount];
                }
                var bytes = buffer.AsSpan(0, (int)t.ByteCount);
                bytes.Clear();
                t.Fill(bytes);
                zip.Add($"{ArchiveName}/data/{i}", bytes);
                done += t.ByteCount;
                progress?.Invoke(done, total);
            }
            zip.Add($"{ArchiveName}/version", "3\n"u8);
            zip.Finish();
        });
    }

    // ---- data.pkl

    /// <summary>
    /// The pickle of the state_dict: storage i is tensor i's, named "i". Protocol 2 opcodes only, the subset torch 1.13's
    /// weights-only unpickler accepts (GLOBAL, BINUNICODE, BININT*, LONG1, tuples, BINPERSID, REDUCE, SETITEMS, memo).
    /// </summary>
    internal static byte[] PickleStateDict(IReadOnlyList<TorchTensorSource> tensors)
    {
        var p = new PickleWriter();
        p.Proto(2);
        int orderedDict = p.Global("collections", "OrderedDict");
        p.EmptyTuple();
        p.Reduce();
        p.Put();
        int rebuild = -1, storageWord = -1, cpu = -1;
        var storageClasses = new Dictionary<string, int>();
        // pickle batches SETITEMS by 1000 pairs, as Python's own pickler does.
        const int batch = 1000;
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            if (i % batch == 0)
            {
                p.Mark();
            }
            p.Unicode(t.Name);
            rebuild = p.GlobalOnce("torch._utils", "_rebuild_tensor_v2", rebuild);
            p.Mark();
            {
                // persistent id ('storage', torch.FloatStorage, key, 'cpu', numel)
                p.Mark();
                storageWord = p.UnicodeOnce("storage", storageWord);
                storageClasses[t.StorageClass] = p.GlobalOnce("torch", t.StorageClass, storageClasses.GetValueOrDefault(t.StorageClass, -1));
                p.Unicode(i.ToString(System.Globalization.CultureInfo.InvariantCulture));
                cpu = p.UnicodeOnce("cpu", cpu);
                p.Int(t.Count);
                p.Tuple();
                p.BinPersId();
                p.Int(0); // storage offset
                p.IntTuple(t.Shape.Select(d => (long)d).ToArray());
                p.IntTuple(ContiguousStride(t.Shape));
                p.False(); // requires_grad
                p.Get(orderedDict); // backward hooks: OrderedDict()
                p.EmptyTuple();
                p.Reduce();
            }
            p.Tuple();
            p.Reduce();
            if (i % batch == batch - 1 || i == tensors.Count - 1)
            {
                p.SetItems();
            }
        }
        p.Stop();
        return p.ToArray();
    }

    /// <summary>C-order strides; a dimension of size 0 counts as 1, as torch computes them.</summary>
    static long[] ContiguousStride(int[] shape)
    {
        var stride = new long[shape.Length];
        long s = 1;
        for (int d = shape.Length - 1; d >= 0; d--)
        {
            stride[d] = s;
            s *= Math.Max(shape[d], 1);
        }
        return stride;
    }

    /// <summary>Emits pickle opcodes (protocol 2) and numbers memo slots.</summary>
    sealed class PickleWriter
    {
        readonly MemoryStream s = new();
        int nextMemo;

        public byte[] ToArray() => s.ToArray();

        void Op(byte op) => s.WriteByte(op);

        void Bytes(ReadOnlySpan<byte> b) => s.Write(b);

        void UInt32(uint v)
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(b, v);
            s.Write(b);
        }

        public void Proto(byte version)
        {
            Op(0x80);
            Op(version);
        }

        public void Stop() => Op((byte)'.');
        public void Mark() => Op((byte)'(');
        public void EmptyTuple() => Op((byte)')');
        public void Tuple() => Op((byte)'t');
        public void Reduce() => Op((byte)'R');
        public void SetItems() => Op((byte)'u');
        public void BinPersId() => Op((byte)'Q');
        public void False() => Op(0x89);

        /// <summary>Memoizes the top of the stack; returns its slot (BINPUT, LONG_BINPUT past 255).</summary>
        public int Put()
        {
            int slot = nextMemo++;
            if (slot < 256)
            {
                Op((byte)'q');
                Op((byte)slot);
            }
            else
            {
                Op((byte)'r');
                UInt32((uint)slot);
            }
            return slot;
        }

        public void Get(int slot)
        {
            if (slot < 256)
            {
                Op((byte)'h');
                Op((byte)slot);
            }
            else
            {
                Op((byte)'j');
                UInt32((uint)slot);
            }
        }

        /// <summary>GLOBAL "module\nname\n", memoized; returns its slot.</summary>
        public int Global(string module, string name)
        {
            Op((byte)'c');
            Bytes(Encoding.ASCII.GetBytes($"{module}\n{name}\n"));
            return Put();
        }

        /// <summary>The global at <paramref name="slot"/> if it was pushed before (slot ≥ 0), else pushed and memoized.</summary>
        public int GlobalOnce(string module, string name, int slot)
        {
            if (slot >= 0)
            {
                Get(slot);
                return slot;
            }
            return Global(module, name);
        }

        /// <summary>BINUNICODE: a uint32 length and UTF-8 bytes.</summary>
        public void Unicode(string value)
        {
            var b = Encoding.UTF8.GetBytes(value);
            Op((byte)'X');
            UInt32((uint)b.Length);
            Bytes(b);
        }

        public int UnicodeOnce(string value, int slot)
        {
            if (slot >= 0)
            {
                Get(slot);
                return slot;
            }
            Unicode(value);
            return Put();
        }

        /// <summary>The shortest of BININT1, BININT2, BININT (signed 32-bit), LONG1 (little-endian two's complement).</summary>
        public void Int(long v)
        {
            if (v is >= 0 and < 256)
            {
                Op((byte)'K');
                Op((byte)v);
            }
            else if (v is >= 0 and < 65536)
            {
                Op((byte)'M');
                Span<byte> b = stackalloc byte[2];
                BinaryPrimitives.WriteUInt16LittleEndian(b, (ushort)v);
                s.Write(b);
            }
            else if (v is >= int.MinValue and <= int.MaxValue)
            {
                Op((byte)'J');
                UInt32((uint)(int)v);
            }
            else
            {
                Span<byte> b = stackalloc byte[8];
                BinaryPrimitives.WriteInt64LittleEndian(b, v);
                int n = 8;
                // Drop bytes that only repeat the sign of the byte below them.
                while (n > 1 && ((b[n - 1] == 0 && b[n - 2] < 0x80) || (b[n - 1] == 0xff && b[n - 2] >= 0x80)))
                {
                    n--;
                }
                Op(0x8a);
                Op((byte)n);
                s.Write(b[..n]);
            }
        }

        /// <summary>A tuple of integers: EMPTY_TUPLE, TUPLE1..3, or MARK … TUPLE.</summary>
        public void IntTuple(long[] values)
        {
            if (values.Length == 0)
            {
                EmptyTuple();
                return;
            }
            if (values.Length > 3)
            {
                Mark();
            }
            foreach (var v in values)
            {
                Int(v);
            }
            Op(values.Length switch { 1 => 0x85, 2 => 0x86, 3 => 0x87, _ => (byte)'t' });
        }
    }

    // ---- zip container

    /// <summary>
    /// A zip writer for stored entries whose bytes are known when added (sizes and CRC go into the local header; no data
    /// descriptors). Every entry's data is aligned to <see cref="Alignment"/> by an extra field of id "FB" filled with
    /// 'Z', as torch writes it; sizes and offsets at or above the zip64 threshold go into zip64 extra fields, and the
    /// zip64 end records are written when any central-directory value needs them.
    /// </summary>
    sealed class StoredZipWriter(Stream stream, long zip64Threshold)
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
            int pad = (int)((Alignment - dataStart % Alignment) % Alignment);
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
