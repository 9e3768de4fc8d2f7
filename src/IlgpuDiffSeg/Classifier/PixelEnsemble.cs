using System.Globalization;
using ILGPU;
using ILGPU.Runtime;
using IlgpuDiffSeg.IO;
using IlgpuDiffSeg.Kernels;
using MathNet.Numerics.Distributions;
using MathNet.Numerics.Random;

namespace IlgpuDiffSeg.Classifier;

/// <summary>
/// Where each weight of one member lives in the packed parameter vector. The member is ddpm-segmentation's
/// pixel_classifier: Linear(D, H1) → ReLU → BatchNorm1d(H1) → Linear(H1, H2) → ReLU → BatchNorm1d(H2) → Linear(H2, C).
/// </summary>
public sealed record MlpLayout(int Members, int In, int Hidden1, int Hidden2, int Classes)
{
    public int W1 => 0;
    public int B1 => W1 + Hidden1 * In;
    public int Gamma1 => B1 + Hidden1;
    public int Beta1 => Gamma1 + Hidden1;
    public int W2 => Beta1 + Hidden1;
    public int B2 => W2 + Hidden2 * Hidden1;
    public int Gamma2 => B2 + Hidden2;
    public int Beta2 => Gamma2 + Hidden2;
    public int W3 => Beta2 + Hidden2;
    public int B3 => W3 + Classes * Hidden2;

    /// <summary>Parameters per member (the packed stride).</summary>
    public int Size => B3 + Classes;

    /// <summary>The original's sizes: 128/32 hidden units below 30 classes, 256/128 from 30 on.</summary>
    public static MlpLayout ForClasses(int members, int inFeatures, int classes) =>
        classes < 30 ? new(members, inFeatures, 128, 32, classes) : new(members, inFeatures, 256, 128, classes);

    /// <summary>(state_dict name within a member, offset, shape) of every parameter, in the original's key names.</summary>
    public IEnumerable<(string Name, int Offset, int[] Shape)> Parameters()
    {
        yield return ("layers.0.weight", W1, [Hidden1, In]);
        yield return ("layers.0.bias", B1, [Hidden1]);
        yield return ("layers.2.weight", Gamma1, [Hidden1]);
        yield return ("layers.2.bias", Beta1, [Hidden1]);
        yield return ("layers.3.weight", W2, [Hidden2, Hidden1]);
        yield return ("layers.3.bias", B2, [Hidden2]);
        yield return ("layers.5.weight", Gamma2, [Hidden2]);
        yield return ("layers.5.bias", Beta2, [Hidden2]);
        yield return ("layers.6.weight", W3, [Classes, Hidden2]);
        yield return ("layers.6.bias", B3, [Classes]);
    }
}

/// <summary>
/// The ensemble's weights and BatchNorm running statistics on the device, all members packed in one buffer so that
/// each layer of every member is one batched GEMM launch.
/// </summary>
public sealed class PixelEnsemble : IDisposable
{
    /// <summary>How the ensemble runs: the device, and whether its products and small kernels run on the host.</summary>
    public ExecutionPlan Plan { get; }

    public ComputeDevice Device => Plan.Device;
    public MlpLayout Layout { get; }
    public DeviceBuffer<float> Parameters { get; }
    public DeviceBuffer<float> RunningMean1 { get; }
    public DeviceBuffer<float> RunningVar1 { get; }
    public DeviceBuffer<float> RunningMean2 { get; }
    public DeviceBuffer<float> RunningVar2 { get; }
    public long BatchesTracked { get; set; }

    /// <summary>Free-form description stored with the weights (steps, blocks, config).</summary>
    public Dictionary<string, string> Metadata { get; } = new();

    PixelEnsemble(ExecutionPlan plan, MlpLayout layout)
    {
        Plan = plan;
        var device = plan.Device;
        Layout = layout;
        Parameters = device.Buffer<float>((long)layout.Members * layout.Size);
        RunningMean1 = device.Buffer<float>(layout.Members * layout.Hidden1);
        RunningVar1 = device.Buffer<float>(layout.Members * layout.Hidden1);
        RunningMean2 = device.Buffer<float>(layout.Members * layout.Hidden2);
        RunningVar2 = device.Buffer<float>(layout.Members * layout.Hidden2);
    }

    /// <summary>
    /// The original's init_weights('normal', 0.02): Linear weights N(0, 0.02²), biases 0; BatchNorm1d keeps PyTorch's
    /// defaults (γ 1, β 0, running mean 0, running variance 1). Member m draws from its own stream of <paramref name="seed"/>.
    /// </summary>
    public static PixelEnsemble CreateRandom(ExecutionPlan plan, MlpLayout layout, int seed)
    {
        var e = new PixelEnsemble(plan, layout);
        var host = new float[(long)layout.Members * layout.Size];
        for (int m = 0; m < layout.Members; m++)
        {
            var normal = new Normal(0, 0.02, new MersenneTwister(unchecked(seed * 1000003 + m)));
            var member = host.AsSpan(m * layout.Size, layout.Size);
            FillNormal(member.Slice(layout.W1, layout.Hidden1 * layout.In), normal);
            FillNormal(member.Slice(layout.W2, layout.Hidden2 * layout.Hidden1), normal);
            FillNormal(member.Slice(layout.W3, layout.Classes * layout.Hidden2), normal);
            member.Slice(layout.Gamma1, layout.Hidden1).Fill(1f);
            member.Slice(layout.Gamma2, layout.Hidden2).Fill(1f);
        }
        e.Parameters.CopyFrom(host);
        e.RunningMean1.Clear();
        e.RunningMean2.Clear();
        e.RunningVar1.CopyFrom(Enumerable.Repeat(1f, layout.Members * layout.Hidden1).ToArray());
        e.RunningVar2.CopyFrom(Enumerable.Repeat(1f, layout.Members * layout.Hidden2).ToArray());
        return e;
    }

    static void FillNormal(Span<float> span, Normal normal)
    {
        for (int i = 0; i < span.Length; i++)
        {
            span[i] = (float)normal.Sample();
        }
    }

    public BatchNormShape Norm1(int rows) => new()
    {
        Members = Layout.Members, Rows = rows, Features = Layout.Hidden1, MemberStride = Layout.Size,
        GammaOffset = Layout.Gamma1, BetaOffset = Layout.Beta1, LinearBiasOffset = Layout.B1,
        Eps = BatchNorm1d.DefaultEps, Momentum = BatchNorm1d.DefaultMomentum,
    };

    public BatchNormShape Norm2(int rows) => new()
    {
        Members = Layout.Members, Rows = rows, Features = Layout.Hidden2, MemberStride = Layout.Size,
        GammaOffset = Layout.Gamma2, BetaOffset = Layout.Beta2, LinearBiasOffset = Layout.B2,
        Eps = BatchNorm1d.DefaultEps, Momentum = BatchNorm1d.DefaultMomentum,
    };

    /// <summary>
    /// Every member's linear layer on a batch of rows: y[m] = act(x[m]·W[m]ᵀ + b[m]). <paramref name="xBatchStride"/>
    /// is 0 when all members read the same input. y: (M, rows, out).
    /// </summary>
    public void Linear(ArrayView<float> x, int xRowStride, int xColStride, int xBatchStride, int rows, int inFeatures, int outFeatures,
        int weightOffset, int biasOffset, ArrayView<float> y, Activation act)
    {
        var s = new GemmShape
        {
            M = rows, N = outFeatures, K = inFeatures, Batch0 = Layout.Members, Batch1 = 1, Alpha = 1f, Act = (int)act,
            ARow = xRowStride, ACol = xColStride, ABatch0 = xBatchStride,
            BRow = 1, BCol = inFeatures, BBatch0 = Layout.Size,
            CRow = outFeatures, CCol = 1, CBatch0 = rows * outFeatures,
            BiasCol = 1, BiasBatch0 = Layout.Size,
        };
        Gemm.Run(Device, s, x, Parameters.From(weightOffset), y, Parameters.From(biasOffset), kernel: Plan.Fp32Matmul);
    }

    /// <summary>
    /// Logits of every member for <paramref name="rows"/> pixels in eval mode. The input is addressed as
    /// x[r·rowStride + c·colStride] — (pixels, D) rows, or a (D, H·W) feature map with rowStride 1, colStride H·W.
    /// </summary>
    public void Logits(ArrayView<float> x, int rowStride, int colStride, int rows, ArrayView<float> logits)
    {
        var L = Layout;
        using var a1 = Device.Allocate(L.Members * rows * L.Hidden1);
        using var a2 = Device.Allocate(L.Members * rows * L.Hidden2);
        Linear(x, rowStride, colStride, 0, rows, L.In, L.Hidden1, L.W1, L.B1, a1.View, Activation.Relu);
        HiddenLayers(a1.View, rows, a2.View, logits);
    }

    /// <summary>Everything after the first Linear+ReLU (eval mode): BN1 → Linear → ReLU → BN2 → Linear. a1 is overwritten.</summary>
    public void HiddenLayers(ArrayView<float> a1, int rows, ArrayView<float> a2, ArrayView<float> logits)
    {
        var L = Layout;
        BatchNorm1d.EvalForward(Plan, Norm1(rows), a1, Parameters.View, RunningMean1.View, RunningVar1.View, a1);
        Linear(a1, L.Hidden1, 1, rows * L.Hidden1, rows, L.Hidden1, L.Hidden2, L.W2, L.B2, a2, Activation.Relu);
        BatchNorm1d.EvalForward(Plan, Norm2(rows), a2, Parameters.View, RunningMean2.View, RunningVar2.View, a2);
        Linear(a2, L.Hidden2, 1, rows * L.Hidden2, rows, L.Hidden2, L.Classes, L.W3, L.B3, logits, Activation.None);
    }

    public void Save(string path)
    {
        var L = Layout;
        var host = Parameters.ToArray();
        var stats = new[] { RunningMean1, RunningVar1, RunningMean2, RunningVar2 }.Select(b => b.ToArray()).ToArray();
        var sources = new List<SafetensorSource>();
        for (int m = 0; m < L.Members; m++)
        {
            int member = m;
            foreach (var (name, offset, shape) in L.Parameters())
            {
                sources.Add(new($"member.{m}.{name}", shape,
                    span => host.AsSpan(member * L.Size + offset, span.Length).CopyTo(span)));
            }
            sources.Add(new($"member.{m}.layers.2.running_mean", [L.Hidden1], s => stats[0].AsSpan(member * L.Hidden1, L.Hidden1).CopyTo(s)));
            sources.Add(new($"member.{m}.layers.2.running_var", [L.Hidden1], s => stats[1].AsSpan(member * L.Hidden1, L.Hidden1).CopyTo(s)));
            sources.Add(new($"member.{m}.layers.5.running_mean", [L.Hidden2], s => stats[2].AsSpan(member * L.Hidden2, L.Hidden2).CopyTo(s)));
            sources.Add(new($"member.{m}.layers.5.running_var", [L.Hidden2], s => stats[3].AsSpan(member * L.Hidden2, L.Hidden2).CopyTo(s)));
        }
        var meta = new Dictionary<string, string>(Metadata)
        {
            ["format"] = "ilgpudiffseg-ensemble-v1",
            ["members"] = L.Members.ToString(CultureInfo.InvariantCulture),
            ["in_features"] = L.In.ToString(CultureInfo.InvariantCulture),
            ["hidden"] = $"{L.Hidden1},{L.Hidden2}",
            ["classes"] = L.Classes.ToString(CultureInfo.InvariantCulture),
            ["num_batches_tracked"] = BatchesTracked.ToString(CultureInfo.InvariantCulture),
        };
        SafetensorsFile.Write(path, sources, meta);
    }

    /// <summary>
    /// Loads an ensemble written by <see cref="Save"/>. Its metadata is checked before anything is allocated (sizes in
    /// range, and every tensor they imply present with its shape), and its values as they are read: weights finite,
    /// running variances finite and non-negative.
    /// </summary>
    public static PixelEnsemble Load(string path, ExecutionPlan plan)
    {
        using var file = SafetensorsFile.Open(path);
        var layout = LayoutOf(file, path);
        var host = new float[(long)layout.Members * layout.Size];
        var stats = new[]
        {
            new float[layout.Members * layout.Hidden1], new float[layout.Members * layout.Hidden1],
            new float[layout.Members * layout.Hidden2], new float[layout.Members * layout.Hidden2],
        };
        for (int m = 0; m < layout.Members; m++)
        {
            foreach (var (name, offset, shape) in layout.Parameters())
            {
                Read($"member.{m}.{name}", shape, host.AsSpan(m * layout.Size + offset), variance: false);
            }
            Read($"member.{m}.layers.2.running_mean", [layout.Hidden1], stats[0].AsSpan(m * layout.Hidden1), variance: false);
            Read($"member.{m}.layers.2.running_var", [layout.Hidden1], stats[1].AsSpan(m * layout.Hidden1), variance: true);
            Read($"member.{m}.layers.5.running_mean", [layout.Hidden2], stats[2].AsSpan(m * layout.Hidden2), variance: false);
            Read($"member.{m}.layers.5.running_var", [layout.Hidden2], stats[3].AsSpan(m * layout.Hidden2), variance: true);
        }
        long tracked = 0;
        if (file.Metadata.TryGetValue("num_batches_tracked", out var t) &&
            !long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out tracked))
        {
            throw DiffSegException.For(path, $"metadata 'num_batches_tracked' is \"{Shorten(t)}\", expected a count");
        }
        var e = new PixelEnsemble(plan, layout);
        try
        {
            e.Parameters.CopyFrom(host);
            e.RunningMean1.View.CopyFromCPU(stats[0]);
            e.RunningVar1.View.CopyFromCPU(stats[1]);
            e.RunningMean2.View.CopyFromCPU(stats[2]);
            e.RunningVar2.View.CopyFromCPU(stats[3]);
            e.BatchesTracked = tracked;
            foreach (var (k, v) in file.Metadata)
            {
                e.Metadata[k] = v;
            }
            return e;
        }
        catch
        {
            e.Dispose();
            throw;
        }

        void Read(string name, int[] shape, Span<float> destination, bool variance)
        {
            var entry = file.TryGet(name, out var found) && found.Shape.SequenceEqual(shape) && found.DType == "F32" ? found
                : throw DiffSegException.For(path, $"tensor '{name}' is missing or not F32 of shape ({string.Join(", ", shape)})");
            using var mapped = file.Map(entry);
            var values = mapped.Span;
            int bad = Finite.IndexOfNonFinite(values);
            if (bad >= 0)
            {
                throw DiffSegException.For(path, $"tensor '{name}' holds {Finite.Name(values[bad])} at index {Npy.IndexString(shape, bad)}");
            }
            if (variance && values.IndexOfAnyInRange(float.NegativeInfinity, -float.Epsilon) is var neg && neg >= 0)
            {
                throw DiffSegException.For(path, $"tensor '{name}' holds the negative variance {values[neg]} at index {neg}");
            }
            values.CopyTo(destination);
        }
    }

    /// <summary>The layout the metadata describes, checked: sizes in range and one member's tensors for each member, no more.</summary>
    static MlpLayout LayoutOf(SafetensorsFile file, string path)
    {
        if (!file.Metadata.TryGetValue("format", out var format) || format != "ilgpudiffseg-ensemble-v1")
        {
            throw DiffSegException.For(path, "is not a pixel-classifier ensemble written by 'diffseg train'");
        }
        int Meta(string key, int min, int max)
        {
            if (!file.Metadata.TryGetValue(key, out var text))
            {
                throw DiffSegException.For(path, $"metadata lacks '{key}'");
            }
            if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int v) || v < min || v > max)
            {
                throw DiffSegException.For(path, $"metadata '{key}' is \"{Shorten(text)}\", expected an integer in {min}..{max}");
            }
            return v;
        }
        int members = Meta("members", 1, MaxMembers);
        int inFeatures = Meta("in_features", 1, 1 << 20);
        int classes = Meta("classes", 2, 255);
        var hidden = file.Metadata.GetValueOrDefault("hidden", "").Split(',');
        if (hidden.Length != 2 || !hidden.All(h => int.TryParse(h, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v is >= 1 and <= 1 << 16))
        {
            throw DiffSegException.For(path, $"metadata 'hidden' is \"{Shorten(file.Metadata.GetValueOrDefault("hidden", ""))}\", expected two sizes " +
                                             "such as \"128,32\"");
        }
        var layout = new MlpLayout(members, inFeatures, int.Parse(hidden[0], CultureInfo.InvariantCulture),
            int.Parse(hidden[1], CultureInfo.InvariantCulture), classes);
        if ((long)members * (layout.Hidden1 * (long)inFeatures + layout.Hidden2 * (long)layout.Hidden1) > int.MaxValue / 2)
        {
            throw DiffSegException.For(path, $"metadata describes {members} members of {inFeatures}→{layout.Hidden1}→{layout.Hidden2}, too large");
        }
        int expected = members * 14;
        if (file.Entries.Count != expected)
        {
            throw DiffSegException.For(path, $"holds {file.Entries.Count} tensors, but its metadata ({members} members) implies {expected}");
        }
        return layout;
    }

    /// <summary>Ensembles with more members than this are refused.</summary>
    public const int MaxMembers = 1000;

    static string Shorten(string s) => s.Length > 40 ? s[..40] + "…" : s;

    public void Dispose()
    {
        Parameters.Dispose();
        RunningMean1.Dispose();
        RunningVar1.Dispose();
        RunningMean2.Dispose();
        RunningVar2.Dispose();
    }
}
