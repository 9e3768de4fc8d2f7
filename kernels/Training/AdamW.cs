// AdamW — torch.optim.AdamW (amsgrad off, maximize off) over one parameter tensor, as guided-diffusion's TrainLoop steps
// its fp32 master parameters; the gradient is first multiplied by gradScale (the fp16 loss scaling's 2^−lg, as
// MixedPrecisionTrainer's grad.mul_ before opt.step()). The scalars of step t are computed in double on the host, as
// PyTorch's _single_tensor_adamw does, and rounded to fp32 where its tensor ops take them:
//   p ← p·f32(1 − lr·wd)                                   param.mul_(1 − lr·wd)
//   m ← fma(g, f32(1 − β1), m·f32(β1))                     exp_avg.mul_(β1).add_(grad, alpha=1 − β1)
//   v ← fma(f32(1 − β2)·g, g, v·f32(β2))                   exp_avg_sq.mul_(β2).addcmul_(grad, grad, value=1 − β2)
//   p ← p + (f32(−lr/(1 − β1^t))·m) / (√v / f32(√(1 − β2^t)) + f32(eps))
//                                                           param.addcdiv_(exp_avg, denom, value=−step_size)
// The fused operations are where PyTorch 1.13's CPU kernels fuse (add_ with alpha is an explicit fmadd; addcmul_ is
// contracted by the compiler); its bits, checked against torch 1.13 by tests/generators/make_adamw_fixture.py: identical.
// Every other operation rounds once (RoundedMath keeps ptxas from contracting them on CUDA).
//   v1  grid-stride element-wise. 4 reads + 3 writes per parameter → bandwidth-bound (28 B per parameter).
//   CPU backend (plan.OnHost): the same expression in Vector<float> lanes, a chunk of 16,384 parameters per task
//   (HostBackend.ForEach) — the kernel's bits (IEEE sqrt and division per lane, FusedMultiplyAdd correctly rounded).
// p, g, m, v: equal lengths, any shape; g is read, not changed.
using System.Numerics;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

/// <summary>The fp32 scalars of one AdamW step, from its double-precision hyperparameters.</summary>
public struct AdamWStep
{
    public float Decay, Beta1, OneMinusBeta1, Beta2, OneMinusBeta2, NegStepSize, BiasCorrection2Sqrt, Eps, GradScale;

    /// <summary>Step <paramref name="t"/> (1-based: the count after PyTorch's step_t += 1).</summary>
    public static AdamWStep At(long t, double lr, double weightDecay, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
        float gradScale = 1f)
    {
        if (t < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(t), t, "AdamW steps count from 1");
        }
        return new()
        {
            Decay = (float)(1 - lr * weightDecay),
            Beta1 = (float)beta1,
            OneMinusBeta1 = (float)(1 - beta1),
            Beta2 = (float)beta2,
            OneMinusBeta2 = (float)(1 - beta2),
            NegStepSize = (float)-(lr / (1 - Math.Pow(beta1, t))),
            BiasCorrection2Sqrt = (float)Math.Sqrt(1 - Math.Pow(beta2, t)),
            Eps = (float)eps,
            GradScale = gradScale,
        };
    }
}

public static class AdamW
{
    // ---- CPU reference

    /// <summary>The formula above, one parameter at a time, in place.</summary>
    public static void Reference(float[] p, float[] g, float[] m, float[] v, AdamWStep s)
    {
        for (int i = 0; i < p.Length; i++)
        {
            float grad = g[i] * s.GradScale;
            float decayed = p[i] * s.Decay;
            m[i] = MathF.FusedMultiplyAdd(grad, s.OneMinusBeta1, m[i] * s.Beta1);
            v[i] = MathF.FusedMultiplyAdd(s.OneMinusBeta2 * grad, grad, v[i] * s.Beta2);
            float denom = MathF.Sqrt(v[i]) / s.BiasCorrection2Sqrt + s.Eps;
            p[i] = decayed + s.NegStepSize * m[i] / denom;
        }
    }

    // ---- GPU kernels

    static void Kernel(Index1D index, int stride, int n, AdamWStep s, ArrayView<float> p, ArrayView<float> g, ArrayView<float> m,
        ArrayView<float> v)
    {
        for (int i = index; i < n; i += stride)
        {
            float grad = RoundedMath.Mul(g[i], s.GradScale);
            float decayed = RoundedMath.Mul(p[i], s.Decay);
            float mi = RoundedMath.Fma(grad, s.OneMinusBeta1, RoundedMath.Mul(m[i], s.Beta1));
            float vi = RoundedMath.Fma(RoundedMath.Mul(s.OneMinusBeta2, grad), grad, RoundedMath.Mul(v[i], s.Beta2));
            m[i] = mi;
            v[i] = vi;
            float denom = XMath.Sqrt(vi) / s.BiasCorrection2Sqrt + s.Eps;
            p[i] = decayed + RoundedMath.Mul(s.NegStepSize, mi) / denom;
        }
    }

    // ---- CPU backend

    const int HostChunk = 16384;

    static unsafe void StepOnHost(ComputeDevice dev, AdamWStep s, int n, ArrayView<float> p, ArrayView<float> g, ArrayView<float> m,
        ArrayView<float> v)
    {
        nint pp = (nint)HostBackend.Pointer(p), pg = (nint)HostBackend.Pointer(g), pm = (nint)HostBackend.Pointer(m),
            pv = (nint)HostBackend.Pointer(v);
        HostBackend.ForEach(dev, (n + HostChunk - 1) / HostChunk, chunk =>
        {
            int start = chunk * HostChunk;
            UpdateHost(s, Math.Min(HostChunk, n - start), (float*)pp + start, (float*)pg + start, (float*)pm + start, (float*)pv + start);
        });
    }

    /// <summary>v1's expression over <paramref name="n"/> parameters, Vector&lt;float&gt; lanes first, in the same order of
    /// operations.</summary>
    static unsafe void UpdateHost(AdamWStep s, int n, float* p, float* g, float* m, float* v)
    {
        var gradScale = new Vector<float>(s.GradScale);
        var decay = new Vector<float>(s.Decay);
        var beta1 = new Vector<float>(s.Beta1);
        var beta2 = new Vector<float>(s.Beta2);
        var mix1 = new Vector<float>(s.OneMinusBeta1);
        var mix2 = new Vector<float>(s.OneMinusBeta2);
        var correction = new Vector<float>(s.BiasCorrection2Sqrt);
        var eps = new Vector<float>(s.Eps);
        var negStep = new Vector<float>(s.NegStepSize);
        int i = 0;
        for (; i <= n - Vector<float>.Count; i += Vector<float>.Count)
        {
            var grad = Vector.Load(g + i) * gradScale;
            var decayed = Vector.Load(p + i) * decay;
            var mi = Vector.FusedMultiplyAdd(grad, mix1, Vector.Load(m + i) * beta1);
            var vi = Vector.FusedMultiplyAdd(mix2 * grad, grad, Vector.Load(v + i) * beta2);
            Vector.Store(mi, m + i);
            Vector.Store(vi, v + i);
            var denom = Vector.SquareRoot(vi) / correction + eps;
            Vector.Store(decayed + negStep * mi / denom, p + i);
        }
        for (; i < n; i++)
        {
            float grad = g[i] * s.GradScale;
            float decayed = p[i] * s.Decay;
            float mi = MathF.FusedMultiplyAdd(grad, s.OneMinusBeta1, m[i] * s.Beta1);
            float vi = MathF.FusedMultiplyAdd(s.OneMinusBeta2 * grad, grad, v[i] * s.Beta2);
            m[i] = mi;
            v[i] = vi;
            float denom = MathF.Sqrt(vi) / s.BiasCorrection2Sqrt + s.Eps;
            p[i] = decayed + s.NegStepSize * mi / denom;
        }
    }

    // ---- launcher

    /// <summary>
    /// One torch.optim.AdamW step of <paramref name="p"/> in place, with its moments <paramref name="m"/> and
    /// <paramref name="v"/> (zeros before step 1); <paramref name="step"/> counts from 1.
    /// </summary>
    public static void Step(ExecutionPlan plan, Tensor p, Tensor g, Tensor m, Tensor v, long step, double lr, double weightDecay,
        double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, float gradScale = 1f) =>
        Step(plan, p, g, m, v, AdamWStep.At(step, lr, weightDecay, beta1, beta2, eps, gradScale));

    /// <summary>One step with its scalars already computed.</summary>
    public static void Step(ExecutionPlan plan, Tensor p, Tensor g, Tensor m, Tensor v, AdamWStep s)
    {
        int n = p.Length;
        if (g.Length != n || m.Length != n || v.Length != n)
        {
            throw new ArgumentException($"adamw: parameter {p.ShapeString}, gradient {g.ShapeString}, moments {m.ShapeString}, " +
                                        v.ShapeString);
        }
        var dev = plan.Device;
        if (plan.OnHost)
        {
            StepOnHost(dev, s, n, p.View, g.View, m.View, v.View);
            return;
        }
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, AdamWStep, ArrayView<float>, ArrayView<float>,
            ArrayView<float>, ArrayView<float>>(Kernel));
        int threads = dev.StrideThreads(n);
        k(threads, threads, n, s, p.View, g.View, m.View, v.View);
    }
}
