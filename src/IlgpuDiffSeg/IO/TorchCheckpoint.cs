// TorchCheckpoint: opening a torch.save zip archive and unpickling its state_dict into tensor records.

using System.IO.Compression;

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
/// never held in memory whole. Nothing the archive says is trusted: entries must be unique, data.pkl is read within the
/// pickle reader's limits, and every tensor's shape, strides and offset must lie inside its storage, whose record must
/// match the bytes the archive holds for it, before any tensor is read.
/// </summary>
public sealed partial class TorchCheckpoint : IDisposable
{
    readonly ZipArchive zip;
    readonly string prefix;
    readonly Dictionary<string, ZipArchiveEntry> entries;

    public string Path { get; }
    public IReadOnlyList<TorchTensor> Tensors { get; }

    TorchCheckpoint(string path, ZipArchive zip, string prefix, Dictionary<string, ZipArchiveEntry> entries,
        IReadOnlyList<TorchTensor> tensors)
    {
        Path = path;
        this.zip = zip;
        this.prefix = prefix;
        this.entries = entries;
        Tensors = tensors;
    }

    public static TorchCheckpoint Open(string path)
    {
        var stream = InputFile.OpenRead(path);
        try
        {
            var head = new byte[4];
            int got = stream.ReadAtLeast(head, 4, throwOnEndOfStream: false);
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
            Dictionary<string, ZipArchiveEntry> entries;
            try
            {
                zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: false);
                entries = new Dictionary<string, ZipArchiveEntry>(StringComparer.Ordinal);
                foreach (var e in zip.Entries)
                {
                    if (!entries.TryAdd(e.FullName, e))
                    {
                        throw DiffSegException.For(path, $"zip archive holds the entry '{e.FullName}' twice");
                    }
                }
            }
            catch (Exception e) when (e is InvalidDataException or IOException or ArgumentException or NotSupportedException)
            {
                throw DiffSegException.For(path, $"truncated or corrupt zip archive ({e.Message.TrimEnd('.')})");
            }
            try
            {
                return Parse(path, zip, entries, stream.Length);
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

    static TorchCheckpoint Parse(string path, ZipArchive zip, Dictionary<string, ZipArchiveEntry> entries, long fileLength)
    {
        var pkls = entries.Values.Where(e => e.FullName == "data.pkl" ||
                                             (e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal) &&
                                              e.FullName.Count(c => c == '/') == 1))
            .ToList();
        if (pkls.Count == 0)
        {
            throw DiffSegException.For(path, "zip archive without data.pkl: not a PyTorch checkpoint");
        }
        if (pkls.Count > 1)
        {
            throw DiffSegException.For(path, $"zip archive holds {pkls.Count} data.pkl ('{pkls[0].FullName}', '{pkls[1].FullName}'): " +
                                             "not one PyTorch checkpoint");
        }
        var pkl = pkls[0];
        string prefix = pkl.FullName[..^"data.pkl".Length];
        var storages = new Dictionary<string, StorageRef>(StringComparer.Ordinal);
        object? root;
        try
        {
            using var s = pkl.Open();
            var reader = new PickleReader(s)
            {
                PersistentLoad = pid => LoadStorage(pid, storages),
                Reduce = RebuildTensor,
            };
            root = reader.Load();
        }
        catch (Exception e) when (e is PickleException or InvalidDataException or IOException or NotSupportedException)
        {
            throw DiffSegException.For(path, $"corrupt data.pkl ({e.Message.TrimEnd('.')})");
        }
        var state = FindStateDict(root) ?? throw DiffSegException.For(path, "holds no state_dict (a dict of tensors)");
        var tensors = new List<TorchTensor>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
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
            if (!seen.Add(name))
            {
                throw DiffSegException.For(path, $"state_dict holds '{name}' twice");
            }
            tensors.Add(t with { Name = name });
        }
        // Checkpoints saved through nn.DataParallel prefix every key.
        if (tensors.Count > 0 && tensors.All(t => t.Name.StartsWith("module.", StringComparison.Ordinal)))
        {
            tensors = tensors.Select(t => t with { Name = t.Name["module.".Length..] }).ToList();
        }
        foreach (var storage in storages.Values)
        {
            CheckStorage(path, storage, entries.GetValueOrDefault($"{prefix}data/{storage.Key}"), fileLength);
        }
        foreach (var t in tensors)
        {
            CheckTensor(path, t);
        }
        return new TorchCheckpoint(path, zip, prefix, entries, tensors);
    }

    sealed record StorageRef(TorchDType DType, string Key, long Numel);

    static int ElementSize(TorchDType t) => t switch { TorchDType.Float64 => 8, TorchDType.Float32 => 4, _ => 2 };

    static string DTypeName(TorchDType t) => t.ToString().ToLowerInvariant();

    static object? LoadStorage(object? pid, Dictionary<string, StorageRef> storages)
    {
        // ('storage', torch.FloatStorage, key, location, numel)
        if (pid is not object?[] { Length: 5 } t || t[0] is not "storage" || t[1] is not PyGlobal type)
        {
            throw new PickleException("unrecognised persistent id (not a torch storage record)");
        }
        var dtype = type.Name switch
        {
            "FloatStorage" => TorchDType.Float32,
            "HalfStorage" => TorchDType.Float16,
            "BFloat16Storage" => TorchDType.BFloat16,
            "DoubleStorage" => TorchDType.Float64,
            _ => throw new PickleException($"storage type torch.{type.Name} is not a float type this reader converts"),
        };
        string key = t[2] switch
        {
            string k when k.Length is > 0 and <= 64 && k.All(c => char.IsAsciiLetterOrDigit(c) || c == '_') => k,
            long k when k >= 0 => k.ToString(System.Globalization.CultureInfo.InvariantCulture),
            _ => throw new PickleException("storage key is not a plain name"),
        };
        if (t[4] is not long numel || numel < 0)
        {
            throw new PickleException($"storage '{key}' has a size that is not a non-negative integer");
        }
        var storage = new StorageRef(dtype, key, numel);
        if (storages.TryGetValue(key, out var earlier) && earlier != storage)
        {
            throw new PickleException($"storage '{key}' is referenced as {DTypeName(earlier.DType)} × {earlier.Numel} and as " +
                                      $"{DTypeName(dtype)} × {numel}");
        }
        storages[key] = storage;
        return storage;
    }

    static object? RebuildTensor(PyGlobal fn, object?[] args)
    {
        switch (fn.FullName)
        {
            case "torch._utils._rebuild_tensor_v2":
            case "torch._utils._rebuild_tensor":
            {
                if (args.Length < 4 || args[0] is not StorageRef storage)
                {
                    throw new PickleException($"{fn.Name} without a storage");
                }
                if (args[1] is not long offset || offset < 0)
                {
                    throw new PickleException("a tensor's storage offset is not a non-negative integer");
                }
                if (args[2] is not object?[] shapeTuple || shapeTuple.Length > 16 ||
                    shapeTuple.Any(d => d is not long v || v < 0 || v > int.MaxValue))
                {
                    throw new PickleException("a tensor's shape is not a tuple of sizes in [0, 2^31)");
                }
                if (args[3] is not object?[] strideTuple || strideTuple.Length != shapeTuple.Length ||
                    strideTuple.Any(d => d is not long v || v < 0))
                {
                    throw new PickleException("a tensor's strides are not non-negative integers, one per dimension");
                }
                var shape = shapeTuple.Select(d => (int)(long)d!).ToArray();
                var stride = strideTuple.Select(d => (long)d!).ToArray();
                return new TorchTensor("", storage.DType, shape, stride, storage.Key, offset, storage.Numel);
            }
            case "torch._utils._rebuild_parameter":
            case "torch._utils._rebuild_parameter_with_state":
                return args.Length >= 1 && args[0] is TorchTensor t
                    ? t
                    : throw new PickleException($"{fn.Name} of something that is not a tensor");
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

    public void Dispose() => zip.Dispose();
}
