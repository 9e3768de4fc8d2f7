using System.IO.Compression;
using System.Runtime.InteropServices;

namespace IlgpuDiffSeg.IO;

/// <summary>Element types of PyTorch storages this reader converts to float32.</summary>
public enum TorchDType
{
    Float32,
    Float16,
    BFloat16,
    Float64,
}

/// <summary>One tensor of a checkpoint: where its values are, not the values.</summary>
public sealed record TorchTensor(string Name, TorchDType DType, int[] Shape, long[] Stride, string StorageKey, long StorageOffset,
    long StorageNumel)
{
    public long Count => Shape.Aggregate(1L, (a, d) => a * d);
    public string ShapeString => "(" + string.Join(", ", Shape) + ")";

    public bool IsContiguous
    {
        get
        {
            long expected = 1;
            for (int d = Shape.Length - 1; d >= 0; d--)
            {
                if (Shape[d] != 1 && Stride[d] != expected)
                {
                    return false;
                }
                expected *= Shape[d];
            }
            return true;
        }
    }
}

/// <summary>
/// Reads a checkpoint written by torch.save (the zip format, PyTorch ≥ 1.6): data.pkl is unpickled without running
/// any code, and each tensor's values are streamed from its storage entry on demand, so a 2.2 GB checkpoint is
/// never held in memory whole.
/// </summary>
public sealed class TorchCheckpoint : IDisposable
{
    readonly ZipArchive zip;
    readonly string prefix;
    readonly Dictionary<string, ZipArchiveEntry> entries;

    public string Path { get; }
    public IReadOnlyList<TorchTensor> Tensors { get; }

    TorchCheckpoint(string path, ZipArchive zip, string prefix, IReadOnlyList<TorchTensor> tensors)
    {
        Path = path;
        this.zip = zip;
        this.prefix = prefix;
        Tensors = tensors;
        entries = zip.Entries.ToDictionary(e => e.FullName, e => e);
    }

    public static TorchCheckpoint Open(string path)
    {
        if (!File.Exists(path))
        {
            throw DiffSegException.For(path, "file not found");
        }
        var stream = File.OpenRead(path);
        try
        {
            var head = new byte[4];
            int got = stream.Read(head);
            stream.Position = 0;
            if (got >= 1 && head[0] == 0x80)
            {
                throw DiffSegException.For(path, "legacy (non-zip) PyTorch checkpoint, written by torch < 1.6 or with " +
                                                 "_use_new_zipfile_serialization=False; re-save it with a current torch: " +
                                                 "torch.save(torch.load(f), g)");
            }
            if (got < 4 || head[0] != (byte)'P' || head[1] != (byte)'K')
            {
                throw DiffSegException.For(path, got == 0 ? "empty file" : "not a PyTorch checkpoint (not a zip archive)");
            }
            ZipArchive zip;
            try
            {
                zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: false);
            }
            catch (InvalidDataException e)
            {
                throw DiffSegException.For(path, $"truncated or corrupt zip archive ({e.Message.TrimEnd('.')})");
            }
            try
            {
                return Parse(path, zip);
            }
            catch
            {
                zip.Dispose();
                throw;
            }
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    static TorchCheckpoint Parse(string path, ZipArchive zip)
    {
        var pkl = zip.Entries.FirstOrDefault(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal) &&
                                                  e.FullName.Count(c => c == '/') == 1)
                  ?? zip.Entries.FirstOrDefault(e => e.FullName == "data.pkl");
        if (pkl is null)
        {
            throw DiffSegException.For(path, "zip archive without data.pkl: not a PyTorch checkpoint");
        }
        string prefix = pkl.FullName[..^"data.pkl".Length];
        object? root;
        try
        {
            using var s = pkl.Open();
            var reader = new PickleReader(s)
            {
                PersistentLoad = LoadStorage,
                Reduce = RebuildTensor,
            };
            root = reader.Load();
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or InvalidCastException)
        {
            throw DiffSegException.For(path, $"corrupt data.pkl ({e.Message.TrimEnd('.')})");
        }
        var state = FindStateDict(root) ?? throw DiffSegException.For(path, "holds no state_dict (a dict of tensors)");
        var tensors = new List<TorchTensor>();
        foreach (var (key, value) in state)
        {
            if (key is not string name)
            {
                throw DiffSegException.For(path, "state_dict has a key that is not a string");
            }
            if (value is not TorchTensor t)
            {
                throw DiffSegException.For(path, $"state_dict entry '{name}' is not a tensor");
            }
            tensors.Add(t with { Name = name });
        }
        // Checkpoints saved through nn.DataParallel prefix every key.
        if (tensors.Count > 0 && tensors.All(t => t.Name.StartsWith("module.", StringComparison.Ordinal)))
        {
            tensors = tensors.Select(t => t with { Name = t.Name["module.".Length..] }).ToList();
        }
        return new TorchCheckpoint(path, zip, prefix, tensors);
    }

    sealed record StorageRef(TorchDType DType, string Key, long Numel);

    static object? LoadStorage(object? pid)
    {
        // ('storage', torch.FloatStorage, key, location, numel)
        if (pid is not object?[] { Length: >= 5 } t || t[0] is not "storage" || t[1] is not PyGlobal type)
        {
            throw new InvalidDataException("unrecognised persistent id");
        }
        var dtype = type.Name switch
        {
            "FloatStorage" => TorchDType.Float32,
            "HalfStorage" => TorchDType.Float16,
            "BFloat16Storage" => TorchDType.BFloat16,
            "DoubleStorage" => TorchDType.Float64,
            _ => throw new InvalidDataException($"storage type torch.{type.Name} is not a float type this reader converts"),
        };
        return new StorageRef(dtype, Convert.ToString(t[2], System.Globalization.CultureInfo.InvariantCulture)!, Convert.ToInt64(t[4]));
    }

    static object? RebuildTensor(PyGlobal fn, object?[] args)
    {
        switch (fn.FullName)
        {
            case "torch._utils._rebuild_tensor_v2":
            case "torch._utils._rebuild_tensor":
            {
                var storage = args[0] as StorageRef ?? throw new InvalidDataException("tensor without storage");
                var shape = ((object?[])args[2]!).Select(d => checked((int)Convert.ToInt64(d))).ToArray();
                var stride = ((object?[])args[3]!).Select(Convert.ToInt64).ToArray();
                return new TorchTensor("", storage.DType, shape, stride, storage.Key, Convert.ToInt64(args[1]), storage.Numel);
            }
            case "torch._utils._rebuild_parameter":
            case "torch._utils._rebuild_parameter_with_state":
                return args[0];
            case "collections.OrderedDict":
                return new PyDict();
            default:
                return null;
        }
    }

    static PyDict? FindStateDict(object? root)
    {
        if (root is PyObject { State: PyDict stateOfObject })
        {
            root = stateOfObject;
        }
        if (root is not PyDict dict)
        {
            return null;
        }
        if (dict.Count > 0 && dict.All(kv => kv.Value is TorchTensor))
        {
            return dict;
        }
        foreach (var key in new[] { "state_dict", "model_state_dict", "model", "ema" })
        {
            if (dict[key] is PyDict inner && inner.Count > 0 && inner.All(kv => kv.Value is TorchTensor))
            {
                return inner;
            }
        }
        return null;
    }

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
        int elem = t.DType switch { TorchDType.Float64 => 8, TorchDType.Float32 => 4, _ => 2 };
        // The span of storage this tensor touches: [offset, offset + max index + 1).
        long extent = 1;
        for (int d = 0; d < t.Shape.Length; d++)
        {
            extent += (t.Shape[d] - 1) * t.Stride[d];
        }
        if (t.StorageOffset + extent > t.StorageNumel)
        {
            throw DiffSegException.For(Path, $"tensor '{t.Name}' reaches past the end of its storage");
        }
        var raw = ReadStorage(t, t.StorageOffset * elem, extent * elem);
        if (t.IsContiguous)
        {
            ConvertToFloat32(raw, t.DType, destination);
            return;
        }
        var all = new float[extent];
        ConvertToFloat32(raw, t.DType, all);
        var index = new int[t.Shape.Length];
        for (long i = 0; i < t.Count; i++)
        {
            long src = 0;
            for (int d = 0; d < index.Length; d++)
            {
                src += index[d] * t.Stride[d];
            }
            destination[(int)i] = all[src];
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

    byte[] ReadStorage(TorchTensor t, long byteOffset, long byteCount)
    {
        if (!entries.TryGetValue($"{prefix}data/{t.StorageKey}", out var entry))
        {
            throw DiffSegException.For(Path, $"storage '{t.StorageKey}' of tensor '{t.Name}' is missing from the archive");
        }
        var buffer = new byte[byteCount];
        try
        {
            using var s = entry.Open();
            Skip(s, byteOffset);
            s.ReadExactly(buffer);
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or IOException)
        {
            throw DiffSegException.For(Path, $"storage of tensor '{t.Name}' is truncated or corrupt ({e.Message.TrimEnd('.')})");
        }
        return buffer;
    }

    static void Skip(Stream s, long count)
    {
        if (count == 0)
        {
            return;
        }
        if (s.CanSeek)
        {
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

    public void Dispose() => zip.Dispose();
}
