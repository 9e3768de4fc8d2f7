// CrossEntropy — nn.CrossEntropyLoss (mean over the batch, no weights) for every ensemble member, forward and
// backward in one pass: loss[m] = mean_b (logsumexp(z_b) − z_b[y_b]); dz = (softmax(z) − onehot(y)) / B; the output
// layer's bias gradient Σ_b dz is written too, and the number of rows whose argmax is the label (for the accuracy the
// original logs).
//   v1  one thread per member over its B·C logits (B = 64, C ≤ ~40: tiny).
// logits, dlogits: (M, B, C); labels: (B) as ints, or (M, B) when each member has its own batch; loss, correct: (M).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class CrossEntropy
{
    // ---- CPU reference

    public static (double loss, float[] dlogits) Reference(float[] logits, int[] labels, int classes)
    {
        int rows = labels.Length;
        var d = new float[logits.Length];
        double loss = 0;
        for (int b = 0; b < rows; b++)
        {
            double max = double.NegativeInfinity, sum = 0;
            for (int c = 0; c < classes; c++)
            {
                max = Math.Max(max, logits[b * classes + c]);
            }
            for (int c = 0; c < classes; c++)
            {
                sum += Math.Exp(logits[b * classes + c] - max);
            }
            double lse = max + Math.Log(sum);
            loss += lse - logits[b * classes + labels[b]];
            for (int c = 0; c < classes; c++)
            {
                d[b * classes + c] = (float)((Math.Exp(logits[b * classes + c] - lse) - (c == labels[b] ? 1 : 0)) / rows);
            }
        }
        return (loss / rows, d);
    }

    // ---- GPU kernels

    static void Kernel(Index1D m, int rows, int classes, int memberStride, int biasOffset, int labelStride, ArrayView<float> logits,
        ArrayView<int> labels, ArrayView<float> dlogits, ArrayView<float> grads, ArrayView<float> loss, ArrayView<float> correct)
    {
        int baseIndex = m * rows * classes;
        int gradBias = m * memberStride + biasOffset;
        for (int c = 0; c < classes; c++)
        {
            grads[gradBias + c] = 0f;
        }
        float total = 0f;
        int hits = 0;
        for (int b = 0; b < rows; b++)
        {
            int row = baseIndex + b * classes;
            float lse = LogSumExp(logits, row, classes, out int argmax);
            int label = labels[m * labelStride + b];
            total += lse - logits[row + label];
            hits += argmax == label ? 1 : 0;
            for (int c = 0; c < classes; c++)
            {
                float g = (XMath.Exp(logits[row + c] - lse) - (c == label ? 1f : 0f)) / rows;
                dlogits[row + c] = g;
                grads[gradBias + c] += g;
            }
        }
        loss[m] = total / rows;
        correct[m] = hits;
    }

    /// <summary>log Σ exp(x[row..row+n)), computed from the row's maximum; also the first index of that maximum.</summary>
    public static float LogSumExp(ArrayView<float> x, int row, int n, out int argmax)
    {
        float max = x[row];
        argmax = 0;
        for (int c = 1; c < n; c++)
        {
            if (x[row + c] > max)
            {
                max = x[row + c];
                argmax = c;
            }
        }
        float sum = 0f;
        for (int c = 0; c < n; c++)
        {
            sum += XMath.Exp(x[row + c] - max);
        }
        return max + XMath.Log(sum);
    }

    // ---- launcher

    /// <summary><paramref name="labelStride"/>: 0 when every member reads the same labels, B when each has its own batch.</summary>
    public static void ForwardBackward(ExecutionPlan plan, int members, int rows, int classes, int memberStride, int biasOffset,
        ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> dlogits, ArrayView<float> grads, ArrayView<float> loss,
        ArrayView<float> correct, int labelStride = 0)
    {
        var dev = plan.Device;
        if (plan.OnHost)
        {
            HostBackend.ForEach(dev, members, m => Kernel(m, rows, classes, memberStride, biasOffset, labelStride, logits, labels, dlogits, grads, loss, correct));
            return;
        }
        var k = dev.Kernel(Kernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, int, ArrayView<float>,
            ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>>(Kernel));
        k(members, rows, classes, memberStride, biasOffset, labelStride, logits, labels, dlogits, grads, loss, correct);
    }
}
