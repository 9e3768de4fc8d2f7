// Linear — y = x·Wᵀ + b (torch.nn.Linear) over a batch of rows, as a strided Gemm with the bias (and an
// optional ReLU) in the epilogue. time_embed, every ResBlock's emb_layers, the pixel classifier.
// x: (R, in); W: (out, in); b: (out); y: (R, out). FLOPs = 2·R·in·out.
// Backward: dx = dy·W (R, in) and dW += dyᵀ·x (out, in) as two Gemm.Run products (the second with dW as its residual), and
// db += Σ_rows dy by a column-sum kernel: a thread per column, rows in order (deterministic; coalesced across threads).
// FLOPs = 4·R·in·out; the column sum reads dy once.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class Linear
{
    // ---- CPU reference

    public static float[] Reference(float[] x, float[] w, float[]? b, int rows, int inFeatures, int outFeatures, bool relu = false)
    {
        var y = new float[rows * outFeatures];
        for (int r = 0; r < rows; r++)
        for (int o = 0; o < outFeatures; o++)
        {
            double acc = b is null ? 0 : b[o];
            for (int i = 0; i < inFeatures; i++)
            {
                acc += (double)x[r * inFeatures + i] * w[o * inFeatures + i];
            }
            y[r * outFeatures + o] = (float)(relu ? Math.Max(acc, 0) : acc);
        }
        return y;
    }

    /// <summary>The gradients of Reference against dy, in double: (dx, dW, db), dW and db not accumulated.</summary>
    public static (double[] Dx, double[] Dw, double[] Db) BackwardReference(float[] x, float[] w, float[] dy, int rows, int inFeatures,
        int outFeatures)
    {
        var dx = new double[rows * inFeatures];
        var dw = new double[outFeatures * inFeatures];
        var db = new double[outFeatures];
        for (int r = 0; r < rows; r++)
        for (int o = 0; o < outFeatures; o++)
        {
            double g = dy[r * outFeatures + o];
            db[o] += g;
            for (int i = 0; i < inFeatures; i++)
            {
                dx[r * inFeatures + i] += g * w[o * inFeatures + i];
                dw[o * inFeatures + i] += g * x[r * inFeatures + i];
            }
        }
        return (dx, dw, db);
    }

    // ---- GPU kernels (the products are Gemm's)

    /// <summary>db[j] += Σ_r dy[r, j], rows in order.</summary>
    static void ColumnSumKernel(Index1D index, int stride, int rows, int cols, ArrayView<float> dy, ArrayView<float> db)
    {
        for (int j = index; j < cols; j += stride)
        {
            float acc = 0f;
            for (int r = 0; r < rows; r++)
            {
                acc += dy[r * cols + j];
            }
            db[j] += acc;
        }
    }

    // ---- launcher

    /// <summary>The GEMM layout of y(R, out) = x(R, in)·W(out, in)ᵀ + b.</summary>
    public static GemmShape Shape(int rows, int inFeatures, int outFeatures, Activation act = Activation.None)
    {
        var s = GemmShape.RowMajor(rows, outFeatures, inFeatures, transB: true);
        s.BiasCol = 1;
        s.Act = (int)act;
        return s;
    }

    public static void Forward(Tensor x, Tensor w, Tensor? b, Tensor y, Activation act = Activation.None,
        MatmulKernel kernel = MatmulKernel.Registers)
    {
        int outFeatures = w[0], inFeatures = w[1], rows = x.Length / inFeatures;
        if (x[-1] != inFeatures || y.Length != rows * outFeatures || (b is not null && b.Length != outFeatures))
        {
            throw new ArgumentException($"linear: input {x.ShapeString}, weight {w.ShapeString}, output {y.ShapeString}");
        }
        Gemm.Run(x.Device, Shape(rows, inFeatures, outFeatures, act), x.View, w.View, y.View, b?.View, kernel: kernel);
    }

    /// <summary>Views of a raw buffer, for callers that keep weights packed.</summary>
    public static void Forward(ComputeDevice dev, ArrayView<float> x, ArrayView<float> w, ArrayView<float>? b, ArrayView<float> y,
        int rows, int inFeatures, int outFeatures, Activation act = Activation.None, MatmulKernel kernel = MatmulKernel.Registers) =>
        Gemm.Run(dev, Shape(rows, inFeatures, outFeatures, act), x, w, y, b, kernel: kernel);

    /// <summary>
    /// The backward of Forward (no activation): <paramref name="dx"/> (R, in) = dy·W written (skipped when null),
    /// <paramref name="dw"/> += dyᵀ·x and <paramref name="db"/> += Σ_rows dy accumulated.
    /// </summary>
    public static void Backward(Tensor x, Tensor w, Tensor dy, Tensor? dx, Tensor dw, Tensor db, MatmulKernel kernel)
    {
        int outFeatures = w[0], inFeatures = w[1], rows = x.Length / inFeatures;
        if (x[-1] != inFeatures || dy.Length != rows * outFeatures || dw.Length != w.Length || db.Length != outFeatures ||
            (dx is not null && dx.Length != x.Length))
        {
            throw new ArgumentException($"linear backward: input {x.ShapeString}, weight {w.ShapeString}, dy {dy.ShapeString}, " +
                                        $"dx {dx?.ShapeString ?? "null"}, dW {dw.ShapeString}, db {db.ShapeString}");
        }
        var dev = x.Device;
        if (dx is not null)
        {
            Gemm.Run(dev, GemmShape.RowMajor(rows, inFeatures, outFeatures), dy.View, w.View, dx.View, kernel: kernel);
        }
        Gemm.Run(dev, GemmShape.RowMajor(outFeatures, inFeatures, rows, transA: true), dy.View, x.View, dw.View, residual: dw.View,
            kernel: kernel);
        var k = dev.Kernel(ColumnSumKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>>(ColumnSumKernel));
        int threads = dev.StrideThreads(outFeatures);
        k(threads, threads, rows, outFeatures, dy.View, db.View);
    }
}
