using ILGPU.Runtime;
using IlgpuDiffSeg.Kernels;

namespace IlgpuDiffSeg.Model;

/// <summary>A weight of the model, known by its state_dict name and shape before any value is loaded.</summary>
public sealed class Parameter(string name, int[] shape)
{
    public string Name { get; } = name;
    public int[] Shape { get; } = shape;
    public long Count => Tensor.Count(Shape);
    public string ShapeString => "(" + string.Join(", ", Shape) + ")";

    /// <summary>The device copy; set by the weight loader.</summary>
    public Tensor? Value { get; internal set; }

    /// <summary>The fp16 rows of a convolution's weight, for the tensor-core kernel (ModelWeights.Place, AddHalfCopies).</summary>
    public HalfWeights? Half { get; internal set; }

    /// <summary>d loss / d this weight, summed over the backward passes since it was last cleared; null until training asks.</summary>
    public Tensor? Grad { get; internal set; }

    /// <summary>A convolution's weight: it may be held as fp16 rows (ExecutionPlan.HoldsConvWeightsInHalf).</summary>
    public bool IsConvolutionWeight { get; init; }

    public Tensor T => Value ?? throw new InvalidOperationException(Half is null
        ? $"weight '{Name}' is not loaded"
        : $"weight '{Name}' is held in fp16 only (precision fp16), for the tensor-core kernel");

    /// <summary>The gradient accumulator, which a backward pass adds to.</summary>
    public Tensor G => Grad ?? throw new InvalidOperationException($"weight '{Name}' has no gradient buffer: call AllocateGradients first");

    /// <summary>The weight as a convolution takes it: fp32, fp16 rows, or both.</summary>
    public ConvWeights ConvWeights => new(Value, Half, Shape);

    /// <summary>Frees the device copies.</summary>
    public void Release()
    {
        Value?.Dispose();
        Value = null;
        Half?.Dispose();
        Half = null;
        Grad?.Dispose();
        Grad = null;
    }
}

/// <summary>
/// A piece of the model with a state_dict prefix (e.g. "input_blocks.1.0."). Parameters are listed in PyTorch's
/// registration order: own parameters first, then each child's.
/// </summary>
public abstract class Module(string prefix)
{
    readonly List<Parameter> own = new();
    readonly List<Module> children = new();

    public string Prefix { get; } = prefix;

    protected Parameter Param(string localName, params int[] shape) => Register(new Parameter(Prefix + localName, shape));

    /// <summary>A convolution's weight (Cout, Cin, k…): one that may be held as fp16 rows.</summary>
    protected Parameter ConvolutionParam(string localName, params int[] shape) =>
        Register(new Parameter(Prefix + localName, shape) { IsConvolutionWeight = true });

    Parameter Register(Parameter p)
    {
        own.Add(p);
        return p;
    }

    protected T Add<T>(T child) where T : Module
    {
        children.Add(child);
        return child;
    }

    public IEnumerable<Parameter> Parameters()
    {
        foreach (var p in own)
        {
            yield return p;
        }
        foreach (var c in children)
        {
            foreach (var p in c.Parameters())
            {
                yield return p;
            }
        }
    }

    /// <summary>Gives every parameter a zeroed gradient buffer (kept until the module is disposed).</summary>
    public void AllocateGradients(ComputeDevice dev)
    {
        foreach (var p in Parameters())
        {
            p.Grad ??= dev.Allocate(p.Shape);
            p.Grad.View.MemSetToZero();
        }
    }

    /// <summary>Clears every gradient buffer (the next backward passes sum into them from zero).</summary>
    public void ZeroGradients()
    {
        foreach (var p in Parameters())
        {
            p.Grad?.View.MemSetToZero();
        }
    }
}

/// <summary>
/// One pass through a model: the plan its ops run by, whether it trains (dropout on), and — when it saves — what each
/// module keeps from its forward for its backward. A module saves its state under itself (each module runs once per pass)
/// and its backward takes it back; whatever is still saved when the pass is disposed (a failed or abandoned step) is
/// released then. An inference pass saves nothing, so every activation goes back to the pool as soon as its last user
/// disposes it; a checkpointed block runs its forward in a pass that trains but does not save, and again, saving, in its
/// backward.
/// </summary>
public sealed class Pass(ExecutionPlan plan, bool training = false, ulong dropoutSeed = 0, bool? saves = null) : IDisposable
{
    readonly Dictionary<object, IDisposable> saved = new(ReferenceEqualityComparer.Instance);

    public ExecutionPlan Plan { get; } = plan;
    public ComputeDevice Device => Plan.Device;

    /// <summary>Training mode: dropout is on.</summary>
    public bool Training { get; } = training;

    /// <summary>Modules keep what their backward needs (by default, when training).</summary>
    public bool Saves { get; } = saves ?? training;

    /// <summary>The seed of this pass's dropout masks (a mask is a hash of the seed, the layer and the element).</summary>
    public ulong DropoutSeed { get; } = dropoutSeed;

    /// <summary>Keeps <paramref name="state"/> for <paramref name="owner"/>'s backward (passes that save only).</summary>
    public void Save(object owner, IDisposable state)
    {
        if (!Saves)
        {
            state.Dispose();
            return;
        }
        if (!saved.TryAdd(owner, state))
        {
            state.Dispose();
            throw new InvalidOperationException($"{owner} ran twice in one pass: its saved activations would be overwritten");
        }
    }

    /// <summary>The state <paramref name="owner"/> saved in the forward; the caller disposes it.</summary>
    public T Take<T>(object owner) where T : IDisposable
    {
        if (!saved.Remove(owner, out var state))
        {
            throw new InvalidOperationException($"{owner}: backward without a training forward in this pass");
        }
        return (T)state;
    }

    /// <summary>Whether anything is still saved (a complete backward takes everything).</summary>
    public int SavedCount => saved.Count;

    public void Dispose()
    {
        foreach (var state in saved.Values)
        {
            state.Dispose();
        }
        saved.Clear();
    }
}

/// <summary>References to the tensors a module's backward needs, taken in its forward and dropped when disposed.</summary>
public sealed class SavedTensors : IDisposable
{
    readonly Tensor?[] tensors;

    /// <summary>Retains each tensor given (null entries stay null).</summary>
    public SavedTensors(params Tensor?[] keep)
    {
        tensors = new Tensor?[keep.Length];
        for (int i = 0; i < keep.Length; i++)
        {
            tensors[i] = keep[i]?.Retain();
        }
    }

    public Tensor this[int index] => tensors[index] ?? throw new InvalidOperationException($"saved tensor {index} is null");

    public Tensor? Optional(int index) => tensors[index];

    public void Dispose()
    {
        for (int i = 0; i < tensors.Length; i++)
        {
            tensors[i]?.Dispose();
            tensors[i] = null;
        }
    }
}
