// TEMPORARY: host-side double-precision stand-ins for the backward ops while their kernels are written; each is replaced
// by the op's own backward (reference + kernels) in its file. Not for use beyond wiring the model's backward.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

static class StubIo
{
    public static float[] Get(Tensor t) => t.ToArray();

    public static void Set(Tensor t, float[] v) => t.CopyFrom(v);

    public static void Add(Tensor t, double[] v)
    {
        var a = t.ToArray();
        for (int i = 0; i < a.Length; i++)
        {
            a[i] = (float)(a[i] + v[i]);
        }
        t.CopyFrom(a);
    }

    public static float Round(float v, bool half) => half ? (float)(System.Half)v : v;
}

public static partial class Conv2d
{
    public static void BackwardInput(Tensor dy, ConvWeights w, Tensor dx, int stride, MatmulKernel kernel, bool accumulate = false)
    {
        bool half = kernel.RoundsOperandsToHalf();
        var s = ConvShape.Create(dx[0], dx[1], dx[2], dx[3], w[0], w[2], stride, w[2] / 2);
        var g = StubIo.Get(dy);
        var wt = StubIo.Get(w.Float32For(kernel));
        var r = new double[dx.Length];
        for (int n = 0; n < s.N; n++)
        for (int co = 0; co < s.Cout; co++)
        for (int oy = 0; oy < s.Ho; oy++)
        for (int ox = 0; ox < s.Wo; ox++)
        {
            double gv = StubIo.Round(g[((n * s.Cout + co) * s.Ho + oy) * s.Wo + ox], half);
            for (int ci = 0; ci < s.Cin; ci++)
            for (int ky = 0; ky < s.K; ky++)
            for (int kx = 0; kx < s.K; kx++)
            {
                int iy = oy * s.Stride - s.Pad + ky, ix = ox * s.Stride - s.Pad + kx;
                if (iy >= 0 && iy < s.H && ix >= 0 && ix < s.W)
                {
                    r[((n * s.Cin + ci) * s.H + iy) * s.W + ix] += gv * StubIo.Round(wt[((co * s.Cin + ci) * s.K + ky) * s.K + kx], half);
                }
            }
        }
        if (!accumulate)
        {
            dx.View.MemSetToZero();
        }
        StubIo.Add(dx, r);
    }

    public static void BackwardWeights(Tensor x, Tensor dy, Tensor dw, Tensor? db, int stride, MatmulKernel kernel)
    {
        bool half = kernel.RoundsOperandsToHalf();
        var s = ConvShape.Create(x[0], x[1], x[2], x[3], dw[0], dw[2], stride, dw[2] / 2);
        var g = StubIo.Get(dy);
        var xv = StubIo.Get(x);
        var rw = new double[dw.Length];
        var rb = new double[s.Cout];
        for (int n = 0; n < s.N; n++)
        for (int co = 0; co < s.Cout; co++)
        for (int oy = 0; oy < s.Ho; oy++)
        for (int ox = 0; ox < s.Wo; ox++)
        {
            double gv = g[((n * s.Cout + co) * s.Ho + oy) * s.Wo + ox];
            rb[co] += gv;
            gv = StubIo.Round((float)gv, half);
            for (int ci = 0; ci < s.Cin; ci++)
            for (int ky = 0; ky < s.K; ky++)
            for (int kx = 0; kx < s.K; kx++)
            {
                int iy = oy * s.Stride - s.Pad + ky, ix = ox * s.Stride - s.Pad + kx;
                if (iy >= 0 && iy < s.H && ix >= 0 && ix < s.W)
                {
                    rw[((co * s.Cin + ci) * s.K + ky) * s.K + kx] += gv * StubIo.Round(xv[((n * s.Cin + ci) * s.H + iy) * s.W + ix], half);
                }
            }
        }
        StubIo.Add(dw, rw);
        if (db is not null)
        {
            StubIo.Add(db, rb);
        }
    }
}

public static partial class GroupNorm
{
    public static void Backward(Tensor x, Tensor stats, Tensor gamma, Tensor beta, Tensor? scaleShift, bool silu, Tensor dy, Tensor dx,
        Tensor dgamma, Tensor dbeta, Tensor? dScaleShift, bool accumulateInput = false)
    {
        int n = x[0], c = x[1], spatial = x.Length / (n * c), groups = stats.Length / (2 * n), cg = c / groups;
        var xv = StubIo.Get(x);
        var st = StubIo.Get(stats);
        var gm = StubIo.Get(gamma);
        var bt = StubIo.Get(beta);
        var e = scaleShift is null ? null : StubIo.Get(scaleShift);
        var g = StubIo.Get(dy);
        var rdx = new double[x.Length];
        var rdg = new double[c];
        var rdb = new double[c];
        var rde = new double[2 * n * c];
        for (int b = 0; b < n; b++)
        for (int gr = 0; gr < groups; gr++)
        {
            double mean = st[2 * (b * groups + gr)], rstd = st[2 * (b * groups + gr) + 1];
            int count = cg * spatial;
            var du = new double[count];
            var u = new double[count];
            double sumDu = 0, sumDuU = 0;
            for (int e2 = 0; e2 < count; e2++)
            {
                int ch = gr * cg + e2 / spatial;
                int i = (b * c + gr * cg) * spatial + e2;
                u[e2] = (xv[i] - mean) * rstd;
                double v = u[e2] * gm[ch] + bt[ch];
                double scale = e is null ? 0 : e[b * 2 * c + ch], w = e is null ? v : v * (1 + scale) + e[b * 2 * c + c + ch];
                double dw = g[i];
                if (silu)
                {
                    double sg = 1 / (1 + Math.Exp(-w));
                    dw *= sg * (1 + w * (1 - sg));
                }
                if (e is not null)
                {
                    rde[b * 2 * c + c + ch] += dw;
                    rde[b * 2 * c + ch] += dw * v;
                }
                double dv = dw * (1 + scale);
                rdb[ch] += dv;
                rdg[ch] += dv * u[e2];
                du[e2] = dv * gm[ch];
                sumDu += du[e2];
                sumDuU += du[e2] * u[e2];
            }
            for (int e2 = 0; e2 < count; e2++)
            {
                int i = (b * c + gr * cg) * spatial + e2;
                rdx[i] = rstd * (du[e2] - sumDu / count - u[e2] * sumDuU / count);
            }
        }
        if (!accumulateInput)
        {
            dx.View.MemSetToZero();
        }
        StubIo.Add(dx, rdx);
        StubIo.Add(dgamma, rdg);
        StubIo.Add(dbeta, rdb);
        if (dScaleShift is not null)
        {
            dScaleShift.CopyFrom(rde.Select(v => (float)v).ToArray());
        }
    }
}

public static partial class Silu
{
    public static void Backward(Tensor x, Tensor dy, Tensor dx)
    {
        var xv = StubIo.Get(x);
        var g = StubIo.Get(dy);
        StubIo.Set(dx, xv.Select((v, i) =>
        {
            double s = 1 / (1 + Math.Exp(-(double)v));
            return (float)(g[i] * s * (1 + v * (1 - s)));
        }).ToArray());
    }
}

public static class Dropout
{
    static float Mask(ulong seed, int i, float p)
    {
        ulong z = seed + (ulong)i * 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 40) / (float)(1 << 24) < p ? 0f : 1f / (1f - p);
    }

    public static void Forward(Tensor x, Tensor y, float p, ulong seed)
    {
        var v = x.ToArray();
        for (int i = 0; i < v.Length; i++)
        {
            v[i] *= Mask(seed, i, p);
        }
        y.CopyFrom(v);
    }

    public static void Backward(Tensor dy, Tensor dx, float p, ulong seed) => Forward(dy, dx, p, seed);
}

public static class Embedding
{
    public static void Backward(IReadOnlyList<long> labels, Tensor dy, Tensor dWeight)
    {
        var g = StubIo.Get(dy);
        int dim = dy.Length / labels.Count;
        var r = new double[dWeight.Length];
        for (int i = 0; i < labels.Count; i++)
        for (int j = 0; j < dim; j++)
        {
            r[labels[i] * dim + j] += g[i * dim + j];
        }
        StubIo.Add(dWeight, r);
    }
}

public static partial class Linear
{
    public static void Backward(Tensor x, Tensor w, Tensor dy, Tensor? dx, Tensor dw, Tensor db, MatmulKernel kernel)
    {
        int outF = w[0], inF = w[1], rows = x.Length / inF;
        var xv = StubIo.Get(x);
        var wv = StubIo.Get(w);
        var g = StubIo.Get(dy);
        var rdx = new double[x.Length];
        var rdw = new double[w.Length];
        var rdb = new double[outF];
        for (int r = 0; r < rows; r++)
        for (int o = 0; o < outF; o++)
        {
            double gv = g[r * outF + o];
            rdb[o] += gv;
            for (int i = 0; i < inF; i++)
            {
                rdx[r * inF + i] += gv * wv[o * inF + i];
                rdw[o * inF + i] += gv * xv[r * inF + i];
            }
        }
        if (dx is not null)
        {
            StubIo.Set(dx, rdx.Select(v => (float)v).ToArray());
        }
        StubIo.Add(dw, rdw);
        StubIo.Add(db, rdb);
    }
}

public static partial class UpsampleNearest2x
{
    public static void Backward(Tensor dy, Tensor dx)
    {
        int planes = dx[0] * dx[1], h = dx[2], w = dx[3];
        var g = StubIo.Get(dy);
        var r = new float[dx.Length];
        for (int pl = 0; pl < planes; pl++)
        for (int y = 0; y < 2 * h; y++)
        for (int x = 0; x < 2 * w; x++)
        {
            r[(pl * h + y / 2) * w + x / 2] += g[(pl * 2 * h + y) * 2 * w + x];
        }
        StubIo.Set(dx, r);
    }
}

public static partial class AvgPool2x2
{
    public static void Backward(Tensor dy, Tensor dx)
    {
        int planes = dx[0] * dx[1], h = dx[2], w = dx[3];
        var g = StubIo.Get(dy);
        var r = new float[dx.Length];
        for (int pl = 0; pl < planes; pl++)
        for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
        {
            r[(pl * h + y) * w + x] = g[(pl * (h / 2) + y / 2) * (w / 2) + x / 2] / 4;
        }
        StubIo.Set(dx, r);
    }
}

public static partial class ConcatChannels
{
    public static void Backward(Tensor dy, Tensor da, Tensor db)
    {
        int n = dy[0], ca = da[1], cb = db[1], spatial = dy.Length / (n * (ca + cb));
        var g = StubIo.Get(dy);
        var ra = new float[da.Length];
        var rb = new float[db.Length];
        for (int b = 0; b < n; b++)
        {
            Array.Copy(g, b * (ca + cb) * spatial, ra, b * ca * spatial, ca * spatial);
            Array.Copy(g, (b * (ca + cb) + ca) * spatial, rb, b * cb * spatial, cb * spatial);
        }
        StubIo.Set(da, ra);
        StubIo.Set(db, rb);
    }
}

public static partial class Add
{
    public static void Accumulate(Tensor into, Tensor from)
    {
        var a = StubIo.Get(into);
        var b = StubIo.Get(from);
        StubIo.Set(into, a.Select((v, i) => v + b[i]).ToArray());
    }

    public static void ChannelBiasBackward(Tensor dy, Tensor dbias)
    {
        int nc = dbias.Length, spatial = dy.Length / nc;
        var g = StubIo.Get(dy);
        var r = new float[nc];
        for (int i = 0; i < nc; i++)
        {
            double acc = 0;
            for (int p = 0; p < spatial; p++)
            {
                acc += g[i * spatial + p];
            }
            r[i] = (float)acc;
        }
        StubIo.Set(dbias, r);
    }
}

public static class AdamW
{
    public static void Step(ExecutionPlan plan, Tensor p, Tensor g, Tensor m, Tensor v, long step, double lr, double weightDecay,
        double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, float gradScale = 1f)
    {
        var pv = p.ToArray();
        var gv = g.ToArray();
        var mv = m.ToArray();
        var vv = v.ToArray();
        double bc1 = 1 - Math.Pow(beta1, step), bc2 = 1 - Math.Pow(beta2, step);
        for (int i = 0; i < pv.Length; i++)
        {
            float grad = gv[i] * gradScale;
            pv[i] *= (float)(1 - lr * weightDecay);
            mv[i] = (float)(beta1 * mv[i] + (1 - beta1) * grad);
            vv[i] = (float)(beta2 * vv[i] + (1 - beta2) * grad * grad);
            double denom = Math.Sqrt(vv[i]) / Math.Sqrt(bc2) + eps;
            pv[i] = (float)(pv[i] - lr / bc1 * mv[i] / denom);
        }
        p.CopyFrom(pv);
        m.CopyFrom(mv);
        v.CopyFrom(vv);
    }
}

public static class Ema
{
    public static void Update(Tensor ema, Tensor p, float rate)
    {
        var e = ema.ToArray();
        var pv = p.ToArray();
        for (int i = 0; i < e.Length; i++)
        {
            e[i] = e[i] * rate + pv[i] * (1 - rate);
        }
        ema.CopyFrom(e);
    }
}

public static class Norms
{
    public static void SumOfSquares(Tensor x, Tensor into, int slot)
    {
        var xv = x.ToArray();
        double acc = 0;
        foreach (var v in xv)
        {
            acc += (double)v * v;
        }
        var all = into.ToArray();
        all[slot] = (float)acc;
        into.CopyFrom(all);
    }
}
