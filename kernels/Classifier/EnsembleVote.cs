// EnsembleVote — ddpm-segmentation's predict_labels for a chunk of pixels:
//   label = the most frequent of the members' argmax classes, ties to the smallest class id (torch.mode on CPU);
//   js    = H(mean_m softmax_m) − mean_m H(softmax_m), natural log (the Jensen–Shannon uncertainty).
//   v1  two passes: per (member, pixel) logsumexp, argmax and entropy; then per pixel the vote and js.
// logits: (M, P, C); labels: (P) ints; js: (P).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static class EnsembleVote
{
    // ---- CPU reference

    public static (int[] labels, float[] js) Reference(float[] logits, int members, int pixels, int classes)
    {
        var labels = new int[pixels];
        var js = new float[pixels];
        for (int p = 0; p < pixels; p++)
        {
            var votes = new int[classes];
            var mean = new double[classes];
            double meanEntropy = 0;
            for (int m = 0; m < members; m++)
            {
                int row = (m * pixels + p) * classes;
                double max = double.NegativeInfinity;
                int arg = 0;
                for (int c = 0; c < classes; c++)
                {
                    if (logits[row + c] > max)
                    {
                        max = logits[row + c];
                        arg = c;
                    }
                }
                double sum = 0;
                for (int c = 0; c < classes; c++)
                {
                    sum += Math.Exp(logits[row + c] - max);
                }
                double lse = max + Math.Log(sum), h = 0;
                for (int c = 0; c < classes; c++)
                {
                    double q = Math.Exp(logits[row + c] - lse);
                    mean[c] += q / members;
                    h -= q * (logits[row + c] - lse);
                }
                meanEntropy += h / members;
                votes[arg]++;
            }
            int best = 0;
            for (int c = 1; c < classes; c++)
            {
                if (votes[c] > votes[best])
                {
                    best = c;
                }
            }
            double hMean = 0;
            foreach (var q in mean)
            {
                hMean -= q > 0 ? q * Math.Log(q) : 0;
            }
            labels[p] = best;
            js[p] = (float)(hMean - meanEntropy);
        }
        return (labels, js);
    }

    // ---- GPU kernels

    static void MemberKernel(Index1D index, int stride, int total, int classes, ArrayView<float> logits, ArrayView<float> lse,
        ArrayView<int> argmax, ArrayView<float> entropy)
    {
        for (int i = index; i < total; i += stride)
        {
            int row = i * classes;
            float l = CrossEntropy.LogSumExp(logits, row, classes, out int arg);
            float h = 0f;
            for (int c = 0; c < classes; c++)
            {
                float logq = logits[row + c] - l;
                h -= XMath.Exp(logq) * logq;
            }
            lse[i] = l;
            argmax[i] = arg;
            entropy[i] = h;
        }
    }

    static void VoteKernel(Index1D index, int stride, int members, int pixels, int classes, ArrayView<float> logits, ArrayView<float> lse,
        ArrayView<int> argmax, ArrayView<float> entropy, ArrayView<int> labels, ArrayView<float> js)
    {
        for (int p = index; p < pixels; p += stride)
        {
            int best = classes, bestCount = 0;
            float meanEntropy = 0f;
            for (int m = 0; m < members; m++)
            {
                int a = argmax[m * pixels + p];
                int count = 0;
                for (int m2 = 0; m2 < members; m2++)
                {
                    count += argmax[m2 * pixels + p] == a ? 1 : 0;
                }
                if (count > bestCount || (count == bestCount && a < best))
                {
                    best = a;
                    bestCount = count;
                }
                meanEntropy += entropy[m * pixels + p];
            }
            meanEntropy /= members;
            float hMean = 0f;
            for (int c = 0; c < classes; c++)
            {
                float q = 0f;
                for (int m = 0; m < members; m++)
                {
                    q += XMath.Exp(logits[(m * pixels + p) * classes + c] - lse[m * pixels + p]);
                }
                q /= members;
                hMean -= q > 0f ? q * XMath.Log(q) : 0f;
            }
            labels[p] = best;
            js[p] = hMean - meanEntropy;
        }
    }

    // ---- launcher

    /// <summary>Votes over <paramref name="logits"/> (M, P, C); scratch is taken from and returned to the pool.</summary>
    public static void Forward(ComputeDevice dev, int members, int pixels, int classes, ArrayView<float> logits, ArrayView<int> labels,
        ArrayView<float> js)
    {
        var memberK = dev.Kernel(MemberKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, ArrayView<float>,
            ArrayView<float>, ArrayView<int>, ArrayView<float>>(MemberKernel));
        var voteK = dev.Kernel(VoteKernel, a => a.LoadAutoGroupedStreamKernel<Index1D, int, int, int, int, ArrayView<float>,
            ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<float>>(VoteKernel));
        int rows = members * pixels;
        using var lse = dev.Allocate(rows);
        using var entropy = dev.Allocate(rows);
        using var argmax = dev.Buffer<int>(rows);
        int threads = dev.StrideThreads(rows);
        memberK(threads, threads, rows, classes, logits, lse.View, argmax.View, entropy.View);
        threads = dev.StrideThreads(pixels);
        voteK(threads, threads, members, pixels, classes, logits, lse.View, argmax.View, entropy.View, labels, js);
        dev.Synchronize();
    }
}
