using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using CsCheck;
using IlgpuDiffSeg.Fuzz;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Model;
using IlgpuDiffSeg.Pipeline;

namespace IlgpuDiffSeg.Tests.IO;

/// <summary>
/// Property tests of every reader (CsCheck): whatever bytes it is given, a reader accepts them or refuses them with a
/// <see cref="DiffSegException"/> naming the file, and what it accepts is consistent (a shape that accounts for exactly
/// the data, tensors that tile their file). Two kinds of input: the corpus's valid files mutated byte-wise as a fuzzer
/// would, and structured inputs whose every size field is drawn from the values that broke the readers before (−1, 2³¹,
/// 2³², 2⁴⁰, 2⁶² …). CsCheck shrinks a failure to a small input and prints the seed that reproduces it; a file it finds
/// belongs in tests/fixtures/hostile as crash_*.
/// Each property runs for DIFFSEG_FUZZ_SECONDS seconds (default 1; CI keeps the default, a long local run sets e.g. 600).
/// </summary>
public sealed class ReaderPropertyTests : IDisposable
{
    readonly TempDir tmp = new();

    public void Dispose() => tmp.Dispose();

    static int Seconds => int.TryParse(Environment.GetEnvironmentVariable("DIFFSEG_FUZZ_SECONDS"), out int s) && s > 0 ? s : 1;

    static readonly long[] Interesting =
        [
            0, 1, 2, 3, 7, 8, 255, 256, 65535, 65536, int.MaxValue, 1L << 31, uint.MaxValue, 1L << 32, 1L << 40, 1L << 62, long.MaxValue,
            -1, -2, int.MinValue,
        ];

    static readonly string[] Tokens =
        ["-1", "0", "99999999999", "2147483648", "1e400", "NaN", "null", "[", "]", "{", "}", "\"", ",", "(", ")", "'", "\0"];

    /// <summary>One byte-level edit: (kind, position as a fraction of the length, value).</summary>
    static readonly Gen<(int Kind, uint Where, int Value)> Edit = Gen.Select(Gen.Int[0, 8], Gen.UInt, Gen.Int[0, 1 << 20]);

    static byte[] Mutate(byte[] seed, (int Kind, uint Where, int Value)[] edits)
    {
        var b = new List<byte>(seed);
        foreach (var (kind, where, value) in edits)
        {
            int at = b.Count == 0 ? 0 : (int)(where % (uint)b.Count);
            long v = Interesting[value % Interesting.Length];
            switch (kind)
            {
                case 0 when b.Count > 0: b[at] ^= (byte)(1 << (value % 8)); break;
                case 1 when b.Count > 0: b[at] = (byte)v; break;
                case 2 when at + 4 <= b.Count:
                {
                    var w = new byte[4];
                    if (value % 2 == 0) BinaryPrimitives.WriteInt32LittleEndian(w, (int)v);
                    else BinaryPrimitives.WriteInt32BigEndian(w, (int)v);
                    for (int i = 0; i < 4; i++) b[at + i] = w[i];
                    break;
                }
                case 3 when at + 8 <= b.Count:
                {
                    var w = new byte[8];
                    if (value % 2 == 0) BinaryPrimitives.WriteInt64LittleEndian(w, v); else BinaryPrimitives.WriteInt64BigEndian(w, v);
                    for (int i = 0; i < 8; i++) b[at + i] = w[i];
                    break;
                }
                case 4: b.RemoveRange(at, Math.Min(b.Count - at, 1 + value % 64)); break;
                case 5: b.InsertRange(at, b.Skip(at).Take(1 + value % 256).ToArray()); break;
                case 6: b.InsertRange(at, Encoding.Latin1.GetBytes(Tokens[value % Tokens.Length])); break;
                case 7: b.RemoveRange(at, b.Count - at); break;
                default: b.Insert(at, (byte)value); break;
            }
        }
        return b.ToArray();
    }

    public static TheoryData<string> TargetNames() => new(Target.All.Select(t => t.Name));

    [Theory]
    [MemberData(nameof(TargetNames))]
    public void MutatedValidFilesAreAcceptedOrRefusedCleanly(string name)
    {
        var target = Target.Get(name);
        // Each seed keeps its extension: the mask reader takes .npy and .png by name.
        var seeds = Directory.GetFiles(Path.Combine(Fixtures.Root, "hostile", target.Corpus), "ok_*").Order(StringComparer.Ordinal)
            .Select(f => (Bytes: File.ReadAllBytes(f), Extension: Path.GetExtension(f))).ToArray();
        Assert.NotEmpty(seeds);
        Gen.Select(Gen.Int[0, seeds.Length - 1], Edit.Array[1, 6]).Sample((seed, edits) =>
        {
            string path = tmp.File($"{Guid.NewGuid():N}{seeds[seed].Extension}");
            File.WriteAllBytes(path, Mutate(seeds[seed].Bytes, edits));
            try
            {
                Assert.Null(target.Check(path));
            }
            finally
            {
                File.Delete(path);
            }
        }, iter: 100_000_000, time: Seconds);
    }

    [Fact]
    public void NpyHeadersAreCheckedAgainstTheData()
    {
        var gen = Gen.Select(Gen.Int[1, 3], Gen.OneOf("<f4", "<f8", "<i8", "|u1", "|b1", ">f4", "|O", "<c8"),
            Gen.Int[0, Interesting.Length - 1].Array[0, 5], Gen.OneOf(-20, -1, 0, 0, 0, 1, 20, 1 << 20), Gen.OneOf(0, 0, 0, -1, 1, 64, -64),
            Gen.Bool);
        gen.Sample((version, descr, dims, headerDelta, dataDelta, fortran) =>
        {
            var shape = dims.Select(i => Interesting[i]).ToArray();
            long count = shape.All(d => d is >= 0 and < 64) ? shape.Aggregate(1L, (a, d) => a * d) : 16;
            int elem = descr.Length == 3 && char.IsAsciiDigit(descr[2]) ? descr[2] - '0' : 4;
            var data = new byte[Math.Max(0, count * elem + dataDelta)];
            string dict = $"{{'descr': '{descr}', 'fortran_order': {(fortran ? "True" : "False")}, " +
                          $"'shape': ({string.Join(", ", shape)}{(shape.Length == 1 ? "," : "")}), }}";
            int pre = version == 1 ? 10 : 12;
            string header = dict + new string(' ', (64 - (pre + dict.Length + 1) % 64) % 64) + "\n";
            var bytes = new List<byte>(Encoding.ASCII.GetBytes("\u0093NUMPY").Select((c, i) => i == 0 ? (byte)0x93 : c))
            {
                (byte)version, 0,
            };
            long length = header.Length + headerDelta;
            if (version == 1) bytes.AddRange(BitConverter.GetBytes((ushort)length));
            else bytes.AddRange(BitConverter.GetBytes((uint)length));
            bytes.AddRange(Encoding.Latin1.GetBytes(header));
            bytes.AddRange(data);
            try
            {
                var a = Npy.Parse(bytes.ToArray(), "gen.npy");
                // Accepted: the shape accounts for exactly the bytes after the header.
                Assert.Equal((long)header.Length, version == 1 ? (ushort)length : (uint)length);
                Assert.Equal(a.Count * Npy.ElementSize(a.Type), data.Length);
            }
            catch (DiffSegException e)
            {
                Assert.StartsWith("gen.npy: ", e.Message);
            }
        }, iter: 100_000_000, time: Seconds);
    }

    [Fact]
    public void SafetensorsHeadersMustTileTheData()
    {
        var entry = Gen.Select(Gen.OneOf("a", "b", "c", "a"), Gen.OneOf("F32", "F16", "I64", "U8", "Q7"),
            Gen.Int[0, Interesting.Length - 1].Array[0, 3], Gen.Int[0, Interesting.Length - 1], Gen.Int[0, Interesting.Length - 1],
            Gen.Bool);
        var headers = Gen.Select(entry.Array[0, 4], Gen.OneOf(0, 0, 8, 40, 4096), Gen.OneOf("none", "object", "list", "number-value"));
        headers.Sample((entries, dataLength, meta) =>
        {
            var header = new JsonObject();
            if (meta != "none")
            {
                header["__metadata__"] = meta switch
                {
                    "object" => new JsonObject { ["k"] = "v" },
                    "list" => new JsonArray(1, 2),
                    _ => new JsonObject { ["k"] = 3 },
                };
            }
            foreach (var (name, dtype, dims, begin, end, small) in entries)
            {
                // Half the entries get small, plausible sizes so that some headers are valid.
                long b = small ? Math.Abs(Interesting[begin]) % 64 : Interesting[begin];
                long e = small ? b + Math.Abs(Interesting[end]) % 64 : Interesting[end];
                header[name] = new JsonObject
                {
                    ["dtype"] = dtype,
                    ["shape"] = new JsonArray(
                        dims.Select(d => (JsonNode)(small ? Math.Abs(Interesting[d]) % 9 : Interesting[d])).ToArray()),
                    ["data_offsets"] = new JsonArray(b, e),
                };
            }
            try
            {
                var (_, parsed) = SafetensorsFile.ParseHeader(Encoding.UTF8.GetBytes(header.ToJsonString()), dataLength, "gen.safetensors");
                long next = 0;
                // An empty tensor may share its offset with the tensor after it, so ties are ordered by end.
                foreach (var t in parsed.OrderBy(t => t.Begin).ThenBy(t => t.End))
                {
                    Assert.Equal(next, t.Begin);
                    Assert.True(t.End >= t.Begin);
                    next = t.End;
                }
                Assert.Equal(dataLength, next);
            }
            catch (DiffSegException e)
            {
                Assert.StartsWith("gen.safetensors: ", e.Message);
            }
        }, iter: 100_000_000, time: Seconds);
    }

    /// <summary>Random opcode streams: the pickle reader returns a value or throws a PickleException, within its limits.</summary>
    [Fact]
    public void PickleReaderOnlyEverThrowsPickleException()
    {
        var op = Gen.Select(Gen.Byte, Gen.Int[0, Interesting.Length - 1], Gen.Byte.Array[0, 12]);
        op.Array[0, 64].Sample(ops =>
        {
            var bytes = new List<byte> { 0x80, 2 };
            foreach (var (code, value, tail) in ops)
            {
                bytes.Add(code);
                if (value % 3 == 0)
                {
                    bytes.AddRange(BitConverter.GetBytes((int)Interesting[value]));
                }
                bytes.AddRange(tail);
            }
            bytes.Add((byte)'.');
            var reader = new PickleReader(new MemoryStream(bytes.ToArray())) { MaxBytes = 1 << 12, MaxObjects = 1 << 10 };
            try
            {
                reader.Load();
            }
            catch (PickleException)
            {
            }
        }, iter: 100_000_000, time: Seconds);
    }

    /// <summary>Flags and experiment files with every key given hostile JSON values.</summary>
    [Fact]
    public void JsonFilesWithHostileValuesAreAcceptedOrRefusedCleanly()
    {
        string[] values =
        [
            "-1", "0", "1", "2", "32", "99999999999", "2147483648", "1e300", "1.5", "\"\"", "\"x\"", "\"1,2,x\"", "\"-8\"",
            "[]", "[1]", "[-1]", "[99999999999]", "[32, 32, 320]", "[0, 0, 0]", "{}", "null", "true", "\"True\"", "\"/proc/self\"",
            "\"cubic\"",
        ];
        var flagKeys = AdmFlags.Names.ToArray();
        string[] configKeys =
        [
            "exp_dir", "model_path", "training_path", "testing_path", "dim", "steps", "blocks", "number_class", "ignore_label",
            "model_num", "batch_size", "max_epochs", "training_number", "seed", "share_noise", "noise_path", "feature_path",
            "upsample_mode",
        ];
        var pair = Gen.Select(Gen.Int[0, 63], Gen.Int[0, values.Length - 1]);
        pair.Array[0, 12].Sample(edits =>
        {
            var flags = new JsonObject { ["image_size"] = 32, ["num_channels"] = 32, ["channel_mult"] = "1,2" };
            var config = JsonNode.Parse("""
                {"exp_dir": "e", "model_path": "m", "training_path": "t", "testing_path": "s", "dim": [32, 32, 64],
                 "steps": [1], "blocks": [1], "number_class": 3, "ignore_label": 0}
                """)!.AsObject();
            foreach (var (key, value) in edits)
            {
                flags[flagKeys[key % flagKeys.Length]] = JsonNode.Parse(values[value]);
                config[configKeys[key % configKeys.Length]] = JsonNode.Parse(values[value]);
            }
            string f = tmp.File($"{Guid.NewGuid():N}.json");
            string c = tmp.File($"{Guid.NewGuid():N}.json");
            File.WriteAllText(f, flags.ToJsonString());
            File.WriteAllText(c, config.ToJsonString());
            try
            {
                Assert.Null(Target.Get("flags").Check(f));
                Assert.Null(Target.Get("config").Check(c));
            }
            finally
            {
                File.Delete(f);
                File.Delete(c);
            }
        }, iter: 100_000_000, time: Seconds);
    }
}
