// Embedding — nn.Embedding(num, dim): the class-label embedding of class-conditional models, y[i] = W[label_i]. The
// forward is a row copy per sample (EmbeddingLayer); this file holds its reference and its backward.
// Backward: dW[label] += Σ_{i : label_i = label} dy[i], deterministic when labels repeat: the host groups the samples by
// label (batch order kept within a label), and a thread per (distinct label, column) sums its samples' rows in that order
// before adding the sum to dW — as autograd adds the step's embedding gradient to .grad. No atomics.
// labels: N host values; dy: (N, dim); dW: (num, dim). Reads dy once, reads and writes the touched rows of dW once.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class Embedding
{
    // ---- CPU reference

    public static float[] Reference(IReadOnlyList<long> labels, float[] weight, int dim)
    {
        var y = new float[labels.Count * dim];
        for (int i = 0; i < labels.Count; i++)
        {
            Array.Copy(weight, labels[i] * dim, y, (long)i * dim, dim);
        }
        return y;
    }

    /// <summary>dW of Reference against dy, in double (not accumulated).</summary>
    public static double[] BackwardReference(IReadOnlyList<long> labels, float[] dy, int count, int dim)
    {
        var dw = new double[count * dim];
        for (int i = 0; i < labels.Count; i++)
        for (int d = 0; d < dim; d++)
        {
            dw[labels[i] * dim + d] += dy[i * dim + d];
        }
        return dw;
    }

    // ---- GPU kernels

    /// <summary>
    /// index = (k, d) over distinct labels × dim. plan = [labels of the K distinct labels | K + 1 offsets | N sample rows
    /// grouped by label]: dW[label_k, d] += Σ over rows[offsets[k] .. offsets[k + 1]) of dy[row, d].
    /// </summary>
    static void BackwardKernel(Index1D index, int stride, int distinct, int dim, ArrayView<int> plan, ArrayView<float> dy,
        ArrayView<float> dWeight)
    {
        int total = distinct * dim;
        for (int item = index; item < total; item += stride)
        {
            int d = item % dim, k = item / dim;
            int first = plan[distinct + k], end = plan[distinct + k + 1];
            float acc = 0f;
            for (int j = first; j < end; j++)
            {
                acc += dy[plan[2 * distinct + 1 + j] * dim + d];
            }
            int o = plan[k] * dim + d;
            dWeight[o] += acc;
        }
    }

    // ---- launcher

    /// <summary>dWeight (num, dim) += the gradient of gathering rows <paramref name="labels"/> of it, given dy (N, dim).</summary>
    public static void Backward(IReadOnlyList<long> labels, Tensor dy, Tensor dWeight)
    {
        int n = labels.Count, count = dWeight[0], dim = dWeight.Length / Math.Max(1, count);
        if (dy.Length != n * dim || dWeight.Rank != 2)
        {
            throw new ArgumentException($"embedding backward: {n} labels, dy {dy.ShapeString}, dW {dWeight.ShapeString}");
        }
        if (n == 0)
        {
            return;
        }
        // Samples grouped by label, in order of first appearance; batch order within a label.
        var rows = new Dictionary<int, List<int>>();
        var order = new List<int>();
        for (int i = 0; i < n; i++)
        {
            if (labels[i] < 0 || labels[i] >= count)
            {
                throw new ArgumentException($"embedding backward: label {labels[i]} is outside [0, {count})");
            }
            int label = (int)labels[i];
            if (!rows.TryGetValue(label, out var list))
            {
                rows[label] = list = [];
                order.Add(label);
            }
            list.Add(i);
        }
        int distinct = order.Count;
        var plan = new int[2 * distinct + 1 + n];
        int at = 0;
        for (int k = 0; k < distinct; k++)
        {
            plan[k] = order[k];
            plan[distinct + k] = at;
            foreach (int row in rows[order[k]])
            {
                plan[2 * distinct + 1 + at++] = row;
            }
        }
        plan[2 * distinct] = at;
        var dev = dy.Device;
        using var planBuffer = dev.Buffer<int>(plan);
        var kernel = dev.Kernel(BackwardKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<int>, ArrayView<float>,
            ArrayView<float>>(BackwardKernel));
        int threads = dev.StrideThreads((long)distinct * dim);
        kernel(threads, threads, distinct, dim, planBuffer.View, dy.View, dWeight.View);
    }
}
