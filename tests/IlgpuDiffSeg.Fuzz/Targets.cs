using IlgpuDiffSeg.Data;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Fuzz;

/// <summary>
/// One fuzzing target per reader: it reads a file the way the commands do, all the way to the values. Any input may be
/// refused with a <see cref="DiffSegException"/> that names the file; any other exception, a message that does not name the
/// file, or an allocation past the process's limit is a finding. The folder of tests/fixtures/hostile each target's seeds
/// and regression files live in is <see cref="Target.Corpus"/>.
/// </summary>
public sealed record Target(string Name, string Corpus, string Extension, Action<string> Read)
{
    /// <summary>Mask files are read as the 8×8 masks of an 8×8 image with classes 0–4 and ignore label 255.</summary>
    public static readonly IReadOnlyList<Target> All =
    [
        new("npy", "npy", ".npy", path =>
        {
            var a = Npy.Read(path);
            _ = a.Type is NpyType.Float32 or NpyType.Float64 or NpyType.Float16 ? a.ToFloat32(path).Length : a.ToInt64(path).Length;
        }),
        new("pt", "pt", ".pt", path =>
        {
            using var c = TorchCheckpoint.Open(path);
            foreach (var t in c.Tensors)
            {
                c.ReadFloat32(t, new float[t.Count]);
            }
        }),
        new("safetensors", "safetensors", ".safetensors", path =>
        {
            using var f = SafetensorsFile.Open(path);
            foreach (var e in f.Entries.Where(e => e.DType == "F32"))
            {
                _ = f.ReadFloat32(e);
            }
        }),
        new("image", "image", ".png", path => ImageData.LoadImageAsIs(path, out _)),
        new("mask", "mask", ".png", path => ImageData.LoadMask(path, [8, 8], 8, 5, 255)),
        new("flags", "flags", ".json", path => AdmFlags.Load(path)),
        new("config", "config", ".json", path => ExperimentConfig.Load(path)),
    ];

    public static Target Get(string name) =>
        All.FirstOrDefault(t => t.Name == name) ??
        throw new ArgumentException($"no target '{name}' (targets: {string.Join(", ", All.Select(t => t.Name))})");

    /// <summary>
    /// Reads <paramref name="path"/> and returns null when the reader accepted it or refused it cleanly, else what broke
    /// the contract. Exceptions other than DiffSegException are rethrown (the fuzzer's crash signal).
    /// </summary>
    public string? Check(string path)
    {
        try
        {
            Read(path);
            return null;
        }
        catch (DiffSegException e)
        {
            return e.Message.Contains(path, StringComparison.Ordinal) ? null : $"refusal does not name the file: {e.Message}";
        }
    }
}
