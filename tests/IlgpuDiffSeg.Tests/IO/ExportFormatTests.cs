using System.Buffers.Binary;
using System.IO.Compression;
using System.Runtime.InteropServices;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Model;

namespace IlgpuDiffSeg.Tests.IO;

/// <summary>
/// The .pt the writer produces, read back by our own readers: the tensors bit for bit, the pickle's structure, the zip's
/// layout (stored entries, data on 64-byte boundaries, zip64). torch.load's side is tests/generators/check_export.py.
/// </summary>
public sealed class ExportFormatTests : IDisposable
{
    readonly TempDir tmp = new();

    public void Dispose() => tmp.Dispose();

    static float[] Ramp(int n, float scale) => Enumerable.Range(0, n).Select(i => (i - n / 3) * scale).ToArray();

    sealed record Tensor(string Name, int[] Shape, float[] Values)
    {
        public TorchTensorSource Source => TorchTensorSource.Float32(Name, Shape, s => Values.CopyTo(s));
    }

    /// <summary>Shapes the pickle spells differently: a scalar, 1 to 4 dimensions, an empty tensor, a count past 65535.</summary>
    static List<Tensor> Assorted() =>
    [
        new("scalar", [], [-2.5f]),
        new("vector", [5], Ramp(5, 0.5f)),
        new("conv.weight", [4, 3, 3, 3], Ramp(108, 1e-3f)),
        new("empty", [0, 3], []),
        new("wide", [3, 70000], Ramp(210000, 1e-5f)),
        new("matrix", [2, 3], Ramp(6, 1f)),
    ];

    static List<TorchTensorSource> Sources(List<Tensor> tensors) => tensors.Select(t => t.Source).ToList();

    [Fact]
    public void AdmTinyRoundTripsBitForBit()
    {
        // official .pt → safetensors → .pt → safetensors: the two safetensors and the two .pt agree bit for bit, in order.
        string first = tmp.File("first.safetensors"), pt = tmp.File("model.pt"), second = tmp.File("second.safetensors");
        ModelWeights.Convert(Fixtures.AdmTiny("model.pt"), Fixtures.AdmTiny("flags.json"), first);
        ModelWeights.Export(first, pt);
        ModelWeights.Convert(pt, Fixtures.AdmTiny("flags.json"), second);

        using (var a = SafetensorsFile.Open(first))
        using (var b = SafetensorsFile.Open(second))
        {
            Assert.Equal(a.Entries.Select(e => e.Name), b.Entries.Select(e => e.Name));
            foreach (var (ea, eb) in a.Entries.Zip(b.Entries))
            {
                Assert.Equal(ea.Shape, eb.Shape);
                AssertBitwiseEqual(a.ReadFloat32(ea), b.ReadFloat32(eb), ea.Name);
            }
        }
        using var official = TorchCheckpoint.Open(Fixtures.AdmTiny("model.pt"));
        using var ours = TorchCheckpoint.Open(pt);
        Assert.Equal(official.Tensors.Select(t => t.Name), ours.Tensors.Select(t => t.Name));
        foreach (var (o, e) in official.Tensors.Zip(ours.Tensors))
        {
            Assert.Equal(o.Shape, e.Shape);
            Assert.Equal(o.Stride, e.Stride);
            Assert.Equal(0, e.StorageOffset);
            Assert.Equal(e.Count, e.StorageNumel);
            var (vo, ve) = (new float[o.Count], new float[e.Count]);
            official.ReadFloat32(o, vo);
            ours.ReadFloat32(e, ve);
            AssertBitwiseEqual(vo, ve, o.Name);
        }
    }

    static void AssertBitwiseEqual(float[] expected, float[] actual, string name)
    {
        Assert.True(MemoryMarshal.AsBytes(expected.AsSpan()).SequenceEqual(MemoryMarshal.AsBytes(actual.AsSpan())), $"'{name}' differs");
    }

    [Fact]
    public void AssortedShapesReadBack()
    {
        string pt = tmp.File("assorted.pt");
        var tensors = Assorted();
        TorchCheckpointWriter.Write(pt, Sources(tensors));
        AssertReadsBack(pt, tensors);
    }

    static void AssertReadsBack(string pt, List<Tensor> tensors)
    {
        using var ckpt = TorchCheckpoint.Open(pt);
        Assert.Equal(tensors.Select(s => s.Name), ckpt.Tensors.Select(t => t.Name));
        foreach (var (s, t) in tensors.Zip(ckpt.Tensors))
        {
            Assert.Equal(s.Shape, t.Shape);
            Assert.True(t.IsContiguous, t.Name);
            var actual = new float[t.Count];
            ckpt.ReadFloat32(t, actual);
            AssertBitwiseEqual(s.Values, actual, t.Name);
        }
    }

    [Fact]
    public void PickleParsesWithOurReader()
    {
        var sources = Sources(Assorted()).Append(TorchTensorSource.Int64Scalar("step", 1L << 40)).ToList();
        string pt = tmp.File("p.pt");
        TorchCheckpointWriter.Write(pt, sources);
        using var zip = ZipFile.OpenRead(pt);
        object? root;
        using (var s = zip.GetEntry("archive/data.pkl")!.Open())
        {
            root = new PickleReader(s).Load(); // no hooks: every call stays a PyObject
        }
        var dict = Assert.IsType<PyObject>(root);
        Assert.Equal("collections.OrderedDict", dict.Type.FullName);
        var items = Assert.IsType<PyDict>(dict.State);
        Assert.Equal(sources.Select(s => (object)s.Name), items.Select(kv => kv.Key));
        for (int i = 0; i < sources.Count; i++)
        {
            var tensor = Assert.IsType<PyObject>(items[i].Value);
            Assert.Equal("torch._utils._rebuild_tensor_v2", tensor.Type.FullName);
            var args = tensor.Args;
            Assert.Equal(6, args.Length);
            var pid = Assert.IsType<object?[]>(args[0]);
            Assert.Equal("storage", pid[0]);
            Assert.Equal(i == sources.Count - 1 ? "torch.LongStorage" : "torch.FloatStorage", Assert.IsType<PyGlobal>(pid[1]).FullName);
            Assert.Equal(i.ToString(System.Globalization.CultureInfo.InvariantCulture), pid[2]);
            Assert.Equal("cpu", pid[3]);
            Assert.Equal((object)sources[i].Count, pid[4]);
            Assert.Equal((object)0L, args[1]);
            Assert.Equal(sources[i].Shape.Select(d => (object?)(long)d), Assert.IsType<object?[]>(args[2]));
            Assert.Equal(sources[i].Shape.Length, Assert.IsType<object?[]>(args[3]).Length);
            Assert.Equal((object)false, args[4]);
            Assert.Equal("collections.OrderedDict", Assert.IsType<PyObject>(args[5]).Type.FullName);
        }
        var step = new byte[8];
        using (var s = zip.GetEntry($"archive/data/{sources.Count - 1}")!.Open())
        {
            s.ReadExactly(step);
        }
        Assert.Equal(1L << 40, BinaryPrimitives.ReadInt64LittleEndian(step));
    }

    [Fact]
    public void StridesAreContiguousAsTorchComputesThem()
    {
        string pt = tmp.File("s.pt");
        TorchCheckpointWriter.Write(pt, Sources(Assorted()));
        using var ckpt = TorchCheckpoint.Open(pt);
        var strides = ckpt.Tensors.ToDictionary(t => t.Name, t => t.Stride);
        Assert.Empty(strides["scalar"]);
        Assert.Equal([27L, 9, 3, 1], strides["conv.weight"]);
        Assert.Equal([3L, 1], strides["empty"]); // a size-0 dimension counts as 1
        Assert.Equal([70000L, 1], strides["wide"]);
    }

    [Fact]
    public void EntriesAreStoredAlignedAndInTorchOrder()
    {
        string pt = tmp.File("a.pt");
        var sources = Sources(Assorted());
        TorchCheckpointWriter.Write(pt, sources);
        var entries = LocalEntries(File.ReadAllBytes(pt));
        Assert.Equal(["archive/data.pkl", "archive/byteorder", .. sources.Select((_, i) => $"archive/data/{i}"), "archive/version"],
            entries.Select(e => e.Name));
        Assert.All(entries, e => Assert.Equal(0, e.Method));
        Assert.All(entries, e => Assert.True(e.DataStart % TorchCheckpointWriter.Alignment == 0, $"{e.Name} starts at {e.DataStart}"));
        using var zip = ZipFile.OpenRead(pt);
        Assert.Equal("little", ReadText(zip, "archive/byteorder"));
        Assert.Equal("3\n", ReadText(zip, "archive/version"));
        Assert.Equal(entries.Select(e => e.Name), zip.Entries.Select(e => e.FullName));
    }

    [Fact]
    public void SameTensorsSameBytes()
    {
        TorchCheckpointWriter.Write(tmp.File("1.pt"), Sources(Assorted()));
        TorchCheckpointWriter.Write(tmp.File("2.pt"), Sources(Assorted()));
        Assert.Equal(File.ReadAllBytes(tmp.File("1.pt")), File.ReadAllBytes(tmp.File("2.pt")));
    }

    [Fact]
    public void Zip64RecordsReadBack()
    {
        // Threshold 0 writes every size and offset in zip64 form: the layout of a checkpoint past 4 GiB, in kilobytes.
        string pt = tmp.File("z64.pt");
        var tensors = Assorted();
        TorchCheckpointWriter.Write(pt, Sources(tensors), zip64Threshold: 0);
        var bytes = File.ReadAllBytes(pt);
        Assert.Equal(0x06064b50u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(bytes.Length - 22 - 20 - 56)));
        Assert.All(LocalEntries(bytes), e => Assert.True(e.DataStart % TorchCheckpointWriter.Alignment == 0, e.Name));
        AssertReadsBack(pt, tensors);
    }

    [Fact]
    public void Crc32MatchesTheStandardCheckValue()
    {
        Assert.Equal(0xCBF43926u, Crc32.Compute("123456789"u8));
        Assert.Equal(0u, Crc32.Compute([]));
        var data = Enumerable.Range(0, 1000).Select(i => (byte)(i * 7)).ToArray();
        Assert.Equal(Crc32.Compute(data), Crc32.Append(Crc32.Compute(data.AsSpan(0, 13)), data.AsSpan(13)));
    }

    [Fact]
    public void FailureLeavesNothing()
    {
        string pt = tmp.File("fail.pt");
        var sources = Sources(Assorted()).Append(TorchTensorSource.Float32("bad", [2], _ => throw new IOException("disk gone"))).ToList();
        Assert.Throws<IOException>(() => TorchCheckpointWriter.Write(pt, sources));
        Assert.Empty(Directory.GetFiles(tmp.Path));
    }

    /// <summary>
    /// A real checkpoint past 4 GiB (5 GiB of storages): writes and reads back the last tensor. Explicit: it takes
    /// disk and about a minute (dotnet test ... -- --filter-method "*PastFourGiB" --explicit on).
    /// </summary>
    [Fact(Explicit = true)]
    public void CheckpointPastFourGiB()
    {
        const int n = 1 << 28; // 1 GiB of float32 each
        var sources = Enumerable.Range(0, 5)
            .Select(i => TorchTensorSource.Float32($"t{i}", [n / 1024, 1024], s => s.Fill(i + 0.5f)))
            .Append(TorchTensorSource.Float32("last", [3], s => new[] { 1f, 2f, 3f }.CopyTo(s))).ToList();
        string pt = Environment.GetEnvironmentVariable("DIFFSEG_BIG_PT") is { Length: > 0 } keep ? keep : tmp.File("big.pt");
        TorchCheckpointWriter.Write(pt, sources);
        Assert.True(new FileInfo(pt).Length > 5L << 30);
        using var ckpt = TorchCheckpoint.Open(pt);
        var last = new float[3];
        ckpt.ReadFloat32(ckpt.Tensors[^1], last);
        Assert.Equal([1f, 2f, 3f], last);
    }

    static string ReadText(ZipArchive zip, string name)
    {
        using var r = new StreamReader(zip.GetEntry(name)!.Open());
        return r.ReadToEnd();
    }

    sealed record LocalEntry(string Name, int Method, long DataStart);

    /// <summary>Walks the local headers from the start of the file, as a streaming reader would.</summary>
    static List<LocalEntry> LocalEntries(byte[] bytes)
    {
        var list = new List<LocalEntry>();
        long at = 0;
        while (BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan((int)at)) == 0x04034b50)
        {
            var h = bytes.AsSpan((int)at);
            int method = BinaryPrimitives.ReadUInt16LittleEndian(h[8..]);
            long size = BinaryPrimitives.ReadUInt32LittleEndian(h[18..]);
            int nameLength = BinaryPrimitives.ReadUInt16LittleEndian(h[26..]);
            int extraLength = BinaryPrimitives.ReadUInt16LittleEndian(h[28..]);
            string name = System.Text.Encoding.UTF8.GetString(h.Slice(30, nameLength));
            var extra = h.Slice(30 + nameLength, extraLength);
            while (extra.Length >= 4)
            {
                int id = BinaryPrimitives.ReadUInt16LittleEndian(extra), length = BinaryPrimitives.ReadUInt16LittleEndian(extra[2..]);
                if (id == 1)
                {
                    size = BinaryPrimitives.ReadInt64LittleEndian(extra[4..]);
                }
                extra = extra[(4 + length)..];
            }
            long dataStart = at + 30 + nameLength + extraLength;
            list.Add(new LocalEntry(name, method, dataStart));
            at = dataStart + size;
        }
        return list;
    }
}
