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
                storageClasses[t.StorageClass] =
                    p.GlobalOnce("torch", t.StorageClass, storageClasses.GetValueOrDefault(t.StorageClass, -1));
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

}
