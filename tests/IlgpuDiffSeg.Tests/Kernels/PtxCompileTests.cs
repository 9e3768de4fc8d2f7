using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime.Cuda;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Tests.Ops;

/// <summary>
/// Every ILGPU kernel of the project compiles to PTX for an H100 (sm_90) — checked offline, without a GPU, so that a
/// construct that runs on the CPU accelerator but not on CUDA (an intrinsic without a PTX lowering, an exception path)
/// fails in CI rather than on the first GPU. A kernel is any static method whose first parameter is an ILGPU index;
/// a generic kernel is compiled once for each struct of the assembly that meets its constraints.
/// </summary>
public sealed class PtxCompileTests(ITestOutputHelper log)
{
    public static TheoryData<string> Kernels()
    {
        var data = new TheoryData<string>();
        foreach (var m in KernelMethods())
        {
            data.Add(Name(m));
        }
        return data;
    }

    static IEnumerable<MethodInfo> KernelMethods()
    {
        var types = typeof(ComputeDevice).Assembly.GetTypes();
        return types
            .SelectMany(t => t.GetMethods(BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public | BindingFlags.DeclaredOnly))
            .Where(m => m.GetParameters() is { Length: > 1 } p && (p[0].ParameterType == typeof(Index1D)))
            .SelectMany(m => m.IsGenericMethodDefinition ? Close(m, types) : [m])
            .OrderBy(m => m.DeclaringType!.Name).ThenBy(Name);
    }

    static IEnumerable<MethodInfo> Close(MethodInfo generic, Type[] types)
    {
        var parameter = generic.GetGenericArguments().Single();
        var constraints = parameter.GetGenericParameterConstraints().Where(c => c != typeof(ValueType)).ToArray();
        return types.Where(t => t.IsValueType && !t.IsGenericTypeDefinition && constraints.All(c => c.IsAssignableFrom(t)))
            .Select(t => generic.MakeGenericMethod(t));
    }

    static string Name(MethodInfo m) =>
        $"{m.DeclaringType!.Name}.{m.Name}" + (m.IsGenericMethod ? $"<{string.Join(",", m.GetGenericArguments().Select(a => a.Name))}>" : "");

    [Theory]
    [MemberData(nameof(Kernels))]
    public void CompilesForSm90(string name)
    {
        var method = KernelMethods().Single(m => Name(m) == name);
        // A fresh context per kernel: a failed compile can leave a backend unusable (docs/ilgpu.md, Offline PTX).
        using var context = Context.Create(b => b.Optimize(OptimizationLevel.O2).EnableAlgorithms());
        using var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90,
            CudaInstructionSet.ISA_85, null);
        var compiled = (PTXCompiledKernel)backend.Compile(EntryPointDescription.FromImplicitlyGroupedKernel(method), default);
        string ptx = compiled.PTXAssembly;
        Assert.Contains(".entry", ptx);
        Assert.DoesNotContain(".extern .func", ptx);
        log.WriteLine($"{name}: {ptx.Split('\n').Length} lines of PTX");
    }

    /// <summary>
    /// The (A, B, output, edges) instances Gemm and Conv2d launch of the tiled kernels (v3 and v4): Conv2d's backward adds
    /// the stride-2 input gradient (ConvTransposeOperand) and the weight gradient (PixelRowsOperand × PixelIm2ColOperand);
    /// its stride-1 input gradient is the forward's instance.
    /// </summary>
    public static TheoryData<Type, Type, Type, Type> TiledInstances()
    {
        var data = new TheoryData<Type, Type, Type, Type>();
        foreach (var edges in new[] { typeof(CheckedEdges), typeof(ExactTiles) })
        {
            data.Add(typeof(StridedOperand), typeof(StridedOperand), typeof(StridedOutput), edges);
            data.Add(typeof(DenseRowsOperand), typeof(Im2ColOperand), typeof(ConvOutput), edges);
            data.Add(typeof(DenseRowsOperand), typeof(NormalizedIm2ColOperand), typeof(ConvOutput), edges);
            data.Add(typeof(DenseRowsOperand), typeof(ConvTransposeOperand), typeof(ConvOutput), edges);
            data.Add(typeof(PixelRowsOperand), typeof(PixelIm2ColOperand), typeof(StridedOutput), edges);
        }
        return data;
    }

    /// <summary>
    /// The instances of the tensor-core kernel: each of TiledInstances with A read through RoundedPairs (fp32 weights), and
    /// the convolutions with their weights held in fp16 (HalfRowsOperand), channel-major and tap-major — the backward's
    /// input gradient reads its transposed weights so, the weight gradient dy through RoundedPairs.
    /// </summary>
    public static TheoryData<Type, Type, Type, Type> TensorCoreInstances()
    {
        var data = new TheoryData<Type, Type, Type, Type>();
        foreach (var edges in new[] { typeof(CheckedEdges), typeof(ExactTiles) })
        {
            data.Add(typeof(RoundedPairs<StridedOperand>), typeof(StridedOperand), typeof(StridedOutput), edges);
            data.Add(typeof(RoundedPairs<DenseRowsOperand>), typeof(Im2ColOperand), typeof(ConvOutput), edges);
            data.Add(typeof(RoundedPairs<DenseRowsOperand>), typeof(NormalizedIm2ColOperand), typeof(ConvOutput), edges);
            data.Add(typeof(HalfRowsOperand), typeof(Im2ColOperand), typeof(ConvOutput), edges);
            data.Add(typeof(HalfRowsOperand), typeof(NormalizedIm2ColOperand), typeof(ConvOutput), edges);
            data.Add(typeof(HalfRowsOperand), typeof(TapMajorIm2ColOperand), typeof(ConvOutput), edges);
            data.Add(typeof(HalfRowsOperand), typeof(TapMajorNormalizedIm2ColOperand), typeof(ConvOutput), edges);
            data.Add(typeof(HalfRowsOperand), typeof(ConvTransposeOperand), typeof(ConvOutput), edges);
            data.Add(typeof(RoundedPairs<PixelRowsOperand>), typeof(PixelIm2ColOperand), typeof(StridedOutput), edges);
        }
        return data;
    }

    /// <summary>
    /// The explicitly grouped tiled kernel, as Gemm and Conv2d instantiate it, for tiles that cross edges and exact ones;
    /// its accumulators must stay in registers.
    /// </summary>
    [Theory]
    [MemberData(nameof(TiledInstances))]
    public void TiledKernelCompilesForSm90(Type a, Type b, Type c, Type edges)
    {
        string ptx = CompileExplicitlyGrouped(typeof(TiledGemm), "Kernel", $"tiled-{b.Name}-{edges.Name}", a, b, c, edges);
        Assert.Contains(".shared", ptx);
        // The compute loop reads its operands as float4 from 16-byte aligned shared rows.
        Assert.Contains("ld.shared.v4", ptx);
        Assert.DoesNotContain(".shared .align 4 .b8", ptx);
        Assert.Contains("bar.sync", ptx);
        AssertOnlyInlineAsmLocals(ptx);
        Assert.DoesNotContain(".extern .func", ptx);
        log.WriteLine($"tiled {b.Name}: {ptx.Split('\n').Length} lines, {ptx.Split("fma.rn.f32").Length - 1 + ptx.Split("mul.f32").Length - 1} mul/fma");
    }

    /// <summary>
    /// The tensor-core kernel: one mma.sync per 16×8×16 tile (16 per k-step of a warp, 32 per slice), fp16 packing by cvt, accumulators
    /// in registers, shared memory within the default 48 KB.
    /// </summary>
    [Theory]
    [MemberData(nameof(TensorCoreInstances))]
    public void TensorCoreKernelCompilesToMmaSync(Type a, Type b, Type c, Type edges)
    {
        string aName = a.IsGenericType ? a.GetGenericArguments()[0].Name : a.Name;
        string ptx = CompileExplicitlyGrouped(typeof(TensorCoreGemm), "Kernel", $"tensorcore-{aName}-{b.Name}-{edges.Name}", a, b, c, edges);
        // 16 per k-step of a warp, and the slice's two k-steps are written out.
        Assert.Equal(32, ptx.Split("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32").Length - 1);
        Assert.Contains("cvt.rn.f16x2.f32", ptx);
        AssertOnlyInlineAsmLocals(ptx);
        Assert.DoesNotContain(".extern .func", ptx);
        var shared = System.Text.RegularExpressions.Regex.Matches(ptx, @"\.shared\s[^\n]*\[(\d+)\]").Select(m => int.Parse(m.Groups[1].Value)).ToList();
        log.WriteLine($"tensor-core {aName} × {b.Name}: {ptx.Split('\n').Length} lines, shared {string.Join(" + ", shared)} bytes");
        // Two operands × two stages of 10 KB, plus the emulation's exchange buffer: ILGPU leaves the CPU branch behind a
        // constant predicate (mov.pred %p, 1) for ptxas to drop, so its buffer may stay declared. All within the default 48 KB.
        Assert.Equal(2, shared.Count(size => size == 2 * TensorCoreGemm.Tile * 20 * 4));
        Assert.True(shared.Sum() <= 48 * 1024, $"{shared.Sum()} bytes of shared memory");
    }

    /// <summary>The flash attention kernel: shared tiles, warp shuffles for the row statistics, 16 outputs in registers.</summary>
    [Fact]
    public void FlashAttentionCompilesForSm90()
    {
        string ptx = CompileExplicitlyGrouped(typeof(Attention), "FlashKernel", "flash-attention");
        Assert.Contains("shfl.sync.bfly", ptx);
        Assert.Contains("bar.sync", ptx);
        Assert.DoesNotContain(".local", ptx);
        Assert.DoesNotContain(".extern .func", ptx);
        log.WriteLine($"flash attention: {ptx.Split('\n').Length} lines of PTX");
    }

    /// <summary>
    /// Attention backward v2: the keys kernel (dK, dV: 16 accumulators) and the queries kernel (dQ: 8) keep their sums and
    /// scores in registers (no local memory) and their tiles within the default 48 KB of shared memory.
    /// </summary>
    [Theory]
    [InlineData("FlashBackwardKeysKernel")]
    [InlineData("FlashBackwardQueriesKernel")]
    public void FlashAttentionBackwardCompilesForSm90(string kernel)
    {
        string ptx = CompileExplicitlyGrouped(typeof(Attention), kernel, "flash-attention-" + kernel);
        Assert.Contains("bar.sync", ptx);
        Assert.Contains("ex2.approx", ptx);
        Assert.DoesNotContain(".local", ptx);
        Assert.DoesNotContain(".extern .func", ptx);
        var shared = System.Text.RegularExpressions.Regex.Matches(ptx, @"\.shared\s[^\n]*\[(\d+)\]")
            .Select(m => int.Parse(m.Groups[1].Value)).ToList();
        log.WriteLine($"{kernel}: {ptx.Split('\n').Length} lines of PTX, shared {string.Join(" + ", shared)} = {shared.Sum()} bytes");
        Assert.True(shared.Sum() <= 48 * 1024, $"{shared.Sum()} bytes of shared memory");
    }

    /// <summary>
    /// The explicitly grouped reductions: GroupNorm's chunk moments (shared-memory tree), Softmax v2 and its backward (warp
    /// shuffles).
    /// </summary>
    [Fact]
    public void ReductionKernelsCompileForSm90()
    {
        string moments = CompileExplicitlyGrouped(typeof(GroupNorm), "ChunkMomentsKernel", "group-norm-moments");
        Assert.Contains("bar.sync", moments);
        Assert.DoesNotContain(".local", moments);
        string softmax = CompileExplicitlyGrouped(typeof(Softmax), "WarpRowsKernel", "softmax-v2");
        Assert.Contains("shfl.sync.bfly", softmax);
        Assert.DoesNotContain(".local", softmax);
        string softmaxBackward = CompileExplicitlyGrouped(typeof(Softmax), "BackwardWarpRowsKernel", "softmax-backward-v2");
        Assert.Contains("shfl.sync.bfly", softmaxBackward);
        Assert.DoesNotContain(".local", softmaxBackward);
        Assert.DoesNotContain(".extern .func", moments + softmax + softmaxBackward);
    }

    /// <summary>
    /// The training pass's explicitly grouped reductions: GroupNorm's backward plane sums, the channel bias's gradient and
    /// the norms' block sums (shared-memory trees).
    /// </summary>
    [Fact]
    public void BackwardReductionKernelsCompileForSm90()
    {
        string planes = CompileExplicitlyGrouped(typeof(GroupNorm), "PlaneChunkSumsKernel", "group-norm-backward-sums");
        string bias = CompileExplicitlyGrouped(typeof(Add), "BlockPlaneSumKernel", "channel-bias-backward");
        string squares = CompileExplicitlyGrouped(typeof(Norms), "BlockChunkSumsKernel", "norms-squares", typeof(SquareTerm));
        string finite = CompileExplicitlyGrouped(typeof(Norms), "BlockChunkSumsKernel", "norms-finite", typeof(NonFiniteTerm));
        foreach (var ptx in new[] { planes, bias, squares, finite })
        {
            Assert.Contains("bar.sync", ptx);
            Assert.DoesNotContain(".local", ptx);
            Assert.DoesNotContain(".extern .func", ptx);
        }
    }

    /// <summary>
    /// The optimizer kernels keep PyTorch's roundings: every product an explicit mul.rn, every fused operation an fma.rn
    /// (RoundedMath). The CPU branches stay behind constant predicates for ptxas to drop, without external calls.
    /// </summary>
    [Fact]
    public void OptimizerKernelsRoundLikePyTorch()
    {
        foreach (var (type, muls, fmas) in new[] { (typeof(AdamW), 6, 2), (typeof(Ema), 1, 1) })
        {
            var method = type.GetMethod("Kernel", BindingFlags.Static | BindingFlags.NonPublic)!;
            using var context = Context.Create(b => b.Optimize(OptimizationLevel.O2).EnableAlgorithms());
            using var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90,
                CudaInstructionSet.ISA_85, null);
            var entry = EntryPointDescription.FromImplicitlyGroupedKernel(method);
            string ptx = ((PTXCompiledKernel)backend.Compile(entry, default)).PTXAssembly;
            Assert.Equal(muls, ptx.Split("mul.rn.f32").Length - 1);
            Assert.Equal(fmas, ptx.Split("fma.rn.f32").Length - 1);
            Assert.DoesNotContain(".extern .func", ptx);
        }
    }

    /// <summary>Conv2d's bias gradient: one group per channel, strided sums and a shared-memory tree.</summary>
    [Fact]
    public void ConvBiasGradientCompilesForSm90()
    {
        string ptx = CompileExplicitlyGrouped(typeof(Conv2d), "BiasGradientKernel", "conv2d-bias-gradient");
        Assert.Contains("bar.sync", ptx);
        Assert.DoesNotContain(".local", ptx);
        Assert.DoesNotContain(".extern .func", ptx);
    }

    /// <summary>
    /// ILGPU passes inline-asm operands through one 4-byte local slot each (st.local, asm, ld.local), which ptxas folds
    /// into registers (0-byte stack frames: benchmarks/ptx/sass-mix.sh); anything larger in local memory would be a spilled
    /// accumulator or fragment array.
    /// </summary>
    static void AssertOnlyInlineAsmLocals(string ptx)
    {
        var locals = System.Text.RegularExpressions.Regex.Matches(ptx, @"\.local\s[^\n]*\[(\d+)\]").Select(m => int.Parse(m.Groups[1].Value));
        Assert.All(locals, size => Assert.Equal(4, size));
    }

    /// <summary>PTX of an explicitly grouped kernel (closed over <paramref name="typeArguments"/> if generic), dumped as <paramref name="dumpName"/>.</summary>
    static string CompileExplicitlyGrouped(Type type, string name, string dumpName, params Type[] typeArguments)
    {
        var method = type.GetMethod(name, BindingFlags.Static | BindingFlags.NonPublic)!;
        if (typeArguments.Length > 0)
        {
            method = method.MakeGenericMethod(typeArguments);
        }
        using var context = Context.Create(builder => builder.Optimize(OptimizationLevel.O2).EnableAlgorithms());
        using var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90,
            CudaInstructionSet.ISA_85, null);
        string ptx = ((PTXCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(method), default)).PTXAssembly;
        Dump(dumpName, ptx);
        return ptx;
    }

    /// <summary>With DIFFSEG_DUMP_PTX=DIR, the hot kernels' PTX is written there (benchmarks/device/run.sh ptx runs ptxas -v on it).</summary>
    static void Dump(string name, string ptx)
    {
        if (Environment.GetEnvironmentVariable("DIFFSEG_DUMP_PTX") is { Length: > 0 } directory)
        {
            Directory.CreateDirectory(directory);
            File.WriteAllText(Path.Combine(directory, name + ".ptx"), ptx);
        }
    }

    [Fact]
    public void EveryKernelFileIsCovered()
    {
        Assert.True(KernelMethods().Count() >= 25, $"only {KernelMethods().Count()} kernels found");
    }
}
