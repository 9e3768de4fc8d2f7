// Linear — y = x·Wᵀ + b (torch.nn.Linear) over a batch of rows, as a strided Gemm with the bias (and an
// optional ReLU) in the epilogue. time_embed, every ResBlock's emb_layers, the pixel classifier.
// x: (R, in); W: (out, in); b: (out); y: (R, out). FLOPs = 2·R·in·out.
using ILGPU;

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

    // ---- launcher (the kernel is Gemm's)

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
}
