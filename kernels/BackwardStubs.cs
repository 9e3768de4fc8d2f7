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
