// ClassifierGradient — where classifier guidance starts its backward pass: d/d logits of Σ_n log softmax(logits_n)[y_n]
// (classifier_sample.py's cond_fn), i.e. dl[n,k] = [k = y_n] − softmax(l_n)[k]. fp32; the softmax subtracts the row max.
//   v1  one thread per row: max, sum of exponentials, then the row's gradient. K = 1000 classes, N a batch: tiny.
// logits, dLogits: (N, K); labels: (N,) int.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class ClassifierGradient
{
    // ---- CPU reference

    /// <summary>The gradient in double: onehot(y) − softmax(logits), row by row.</summary>
    public static float[] Reference(float[] logits, int[] labels, int classes)
    {
        var d = new float[logits.Length];
        for (int n = 0; n < labels.Length; n++)
        {
            double max = double.NegativeInfinity, sum = 0;
            for (int k = 0; k < classes; k++)
            {
                max = Math.Max(max, logits[n * classes + k]);
            }
            for (int k = 0; k < classes; k++)
            {
                sum += Math.Exp(logits[n * classes + k] - max);
            }
            for (int k = 0; k < classes; k++)
            {
                double p = Math.Exp(logits[n * classes + k] - max) / sum;
                d[n * classes + k] = (float)((k == labels[n] ? 1 : 0) - p);
            }
        }
        return d;
    }

    // ---- GPU kernels

    static void Kernel(Index1D n, int classes, ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> d)
    {
        int row = n * classes;
        float max = float.NegativeInfinity, sum = 0f;
        for (int k = 0; k < classes; k++)
        {
            max = XMath.Max(max, logits[row + k]);
        }
        for (int k = 0; k < classes; k++)
        {
            sum += XMath.Exp(logits[row + k] - max);
        }
        int y = labels[n];
        for (int k = 0; k < classes; k++)
        {
            float p = XMath.Exp(logits[row + k] - max) / sum;
            d[row + k] = (k == y ? 1f : 0f) - p;
        }
    }

    // ---- launcher

    /// <summary>dLogits = d Σ_n log softmax(logits_n)[labels_n] / d logits.</summary>
    public static void Forward(Tensor logits, DeviceBuffer<int> labels, Tensor dLogits)
    {
        int n = logits[0], classes = logits.Length / n;
        if (labels.Length != n || dLogits.Length != logits.Length)
        {
            throw new ArgumentException($"classifier gradient: logits {logits.ShapeString}, {labels.Length} labels → " +
                                        dLogits.ShapeString);
        }
        var dev = logits.Device;
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, ArrayView<float>, ArrayView<int>,
            ArrayView<float>>(Kernel));
        k(n, classes, logits.View, labels.View, dLogits.View);
    }
}
