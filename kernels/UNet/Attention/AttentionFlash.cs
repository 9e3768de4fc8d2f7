// Attention's flash kernels, forward (v2); the header of Attention.cs lists every version.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class Attention
{
    // ---- GPU kernels (forward v2 and backward v2, flash; v1 are Gemm and Softmax launches)

    public struct FlashShape
    {
        public int Channels, Heads, HeadChannels, T, Legacy;
        public float ScaleSquared;

        /// <summary>1: FlashKernel also writes each query's log Σ exp of its scores.</summary>
        public int LogSumExp;
    }

    public const int FlashQueries = 64, FlashKeys = 32, FlashThreads = 256, FlashMaxHeadChannels = 64;

    /// <summary>Forward v2; lse (N·H, T): each query's max + log Σ exp(S − max) when s.LogSumExp is 1.</summary>
    static void FlashKernel(FlashShape s, ArrayView<float> qkv, ArrayView<float> y, ArrayView<float> lse)
    {
        var qs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashQueries);             // [c][query]
        var kv = SharedMemory.Allocate<float>(FlashMaxHeadChannels * (FlashKeys + 1));          // [c][key], K then V
        var ps = SharedMemory.Allocate<float>(FlashQueries * FlashKeys);                        // [query][key]
        var rowMax = SharedMemory.Allocate<float>(FlashQueries);
        var rowSum = SharedMemory.Allocate<float>(FlashQueries);
        var rowScale = SharedMemory.Allocate<float>(FlashQueries);
        int tid = Group.IdxX;
        int b = Grid.IdxY / s.Heads, h = Grid.IdxY % s.Heads;
        int i0 = Grid.IdxX * FlashQueries;
        QkvOffsets(b, h, s.Channels, s.T, s.Heads, s.Legacy != 0, out int q0, out int k0, out int v0);
        for (int e = tid; e < FlashMaxHeadChannels * FlashQueries; e += FlashThreads)
        {
            int c = e / FlashQueries, i = i0 + e % FlashQueries;
            qs[e] = c < s.HeadChannels && i < s.T ? qkv[q0 + c * s.T + i] * s.ScaleSquared : 0f;
        }
        if (tid < FlashQueries)
        {
            rowMax[tid] = float.NegativeInfinity;
            rowSum[tid] = 0f;
        }
        int ty = tid / 16, tx = tid % 16;
        float o00 = 0, o01 = 0, o02 = 0, o03 = 0, o10 = 0, o11 = 0, o12 = 0, o13 = 0;
        float o20 = 0, o21 = 0, o22 = 0, o23 = 0, o30 = 0, o31 = 0, o32 = 0, o33 = 0;
        Group.Barrier();
        for (int j0 = 0; j0 < s.T; j0 += FlashKeys)
        {
            LoadKeyTile(s, qkv, k0, j0, kv, tid);
            Group.Barrier();
            // S for queries ty·4+r and keys tx·2+u; keys past T get −∞, i.e. weight 0.
            float s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
            for (int c = 0; c < s.HeadChannels; c++)
            {
                int qa = c * FlashQueries + ty * 4, ka = c * (FlashKeys + 1) + tx * 2;
                float q0v = qs[qa], q1v = qs[qa + 1], q2v = qs[qa + 2], q3v = qs[qa + 3];
                float k0v = kv[ka], k1v = kv[ka + 1];
                s00 += q0v * k0v; s01 += q0v * k1v; s10 += q1v * k0v; s11 += q1v * k1v;
                s20 += q2v * k0v; s21 += q2v * k1v; s30 += q3v * k0v; s31 += q3v * k1v;
            }
            bool valid0 = j0 + tx * 2 < s.T, valid1 = j0 + tx * 2 + 1 < s.T;
            int pa = ty * 4 * FlashKeys + tx * 2;
            ps[pa] = valid0 ? s00 : float.NegativeInfinity; ps[pa + 1] = valid1 ? s01 : float.NegativeInfinity;
            ps[pa + FlashKeys] = valid0 ? s10 : float.NegativeInfinity; ps[pa + FlashKeys + 1] = valid1 ? s11 : float.NegativeInfinity;
            ps[pa + 2 * FlashKeys] = valid0 ? s20 : float.NegativeInfinity;
            ps[pa + 2 * FlashKeys + 1] = valid1 ? s21 : float.NegativeInfinity;
            ps[pa + 3 * FlashKeys] = valid0 ? s30 : float.NegativeInfinity;
            ps[pa + 3 * FlashKeys + 1] = valid1 ? s31 : float.NegativeInfinity;
            Group.Barrier();
            LoadKeyTile(s, qkv, v0, j0, kv, tid);
            OnlineSoftmaxStep(ps, rowMax, rowSum, rowScale, tid);
            Group.Barrier();
            // O = O·scale + P·Vᵀ for queries ty·4+r and channels tx·4+u.
            float a0 = rowScale[ty * 4], a1 = rowScale[ty * 4 + 1], a2 = rowScale[ty * 4 + 2], a3 = rowScale[ty * 4 + 3];
            o00 *= a0; o01 *= a0; o02 *= a0; o03 *= a0; o10 *= a1; o11 *= a1; o12 *= a1; o13 *= a1;
            o20 *= a2; o21 *= a2; o22 *= a2; o23 *= a2; o30 *= a3; o31 *= a3; o32 *= a3; o33 *= a3;
            for (int j = 0; j < FlashKeys; j++)
            {
                int pr = ty * 4 * FlashKeys + j, vr = tx * 4 * (FlashKeys + 1) + j;
                float p0 = ps[pr], p1 = ps[pr + FlashKeys], p2 = ps[pr + 2 * FlashKeys], p3 = ps[pr + 3 * FlashKeys];
                float w0 = kv[vr], w1 = kv[vr + FlashKeys + 1], w2 = kv[vr + 2 * (FlashKeys + 1)], w3 = kv[vr + 3 * (FlashKeys + 1)];
                o00 += p0 * w0; o01 += p0 * w1; o02 += p0 * w2; o03 += p0 * w3;
                o10 += p1 * w0; o11 += p1 * w1; o12 += p1 * w2; o13 += p1 * w3;
                o20 += p2 * w0; o21 += p2 * w1; o22 += p2 * w2; o23 += p2 * w3;
                o30 += p3 * w0; o31 += p3 * w1; o32 += p3 * w2; o33 += p3 * w3;
            }
            Group.Barrier();
        }
        int yBase = (b * s.Channels + h * s.HeadChannels) * s.T, i4 = i0 + ty * 4, c4 = tx * 4;
        StoreQuery(s, y, yBase, i4, c4, rowSum[ty * 4], o00, o01, o02, o03);
        StoreQuery(s, y, yBase, i4 + 1, c4, rowSum[ty * 4 + 1], o10, o11, o12, o13);
        StoreQuery(s, y, yBase, i4 + 2, c4, rowSum[ty * 4 + 2], o20, o21, o22, o23);
        StoreQuery(s, y, yBase, i4 + 3, c4, rowSum[ty * 4 + 3], o30, o31, o32, o33);
        if (s.LogSumExp != 0 && tx == 0)
        {
            for (int r = 0; r < 4; r++)
            {
                if (i4 + r < s.T)
                {
                    lse[Grid.IdxY * s.T + i4 + r] = rowMax[ty * 4 + r] + XMath.Log(rowSum[ty * 4 + r]);
                }
            }
        }
    }

    /// <summary>Keys (or values) j0..j0+31 of one head into kv[c][key], zero past T and past ch.</summary>
    static void LoadKeyTile(FlashShape s, ArrayView<float> qkv, int start, int j0, ArrayView<float> kv, int tid)
    {
        for (int e = tid; e < FlashMaxHeadChannels * FlashKeys; e += FlashThreads)
        {
            int c = e / FlashKeys, j = e % FlashKeys;
            kv[c * (FlashKeys + 1) + j] = c < s.HeadChannels && j0 + j < s.T ? qkv[start + c * s.T + j0 + j] : 0f;
        }
    }

    /// <summary>
    /// Four adjacent lanes per query row: the row's new running max over this tile, its scores turned into
    /// exp(score − max) in place, the old sum rescaled by exp(oldMax − max) plus this tile's; rowScale gets that factor.
    /// </summary>
    static void OnlineSoftmaxStep(ArrayView<float> ps, ArrayView<float> rowMax, ArrayView<float> rowSum, ArrayView<float> rowScale, int tid)
    {
        int row = tid / 4, part = tid % 4, first = row * FlashKeys + part * 8;
        float tileMax = float.NegativeInfinity;
        for (int u = 0; u < 8; u++)
        {
            tileMax = XMath.Max(tileMax, ps[first + u]);
        }
        tileMax = XMath.Max(tileMax, Warp.ShuffleXor(tileMax, 1));
        tileMax = XMath.Max(tileMax, Warp.ShuffleXor(tileMax, 2));
        float oldMax = rowMax[row];
        float newMax = XMath.Max(oldMax, tileMax);
        float sum = 0f;
        for (int u = 0; u < 8; u++)
        {
            float p = XMath.Exp(ps[first + u] - newMax);
            ps[first + u] = p;
            sum += p;
        }
        sum += Warp.ShuffleXor(sum, 1);
        sum += Warp.ShuffleXor(sum, 2);
        if (part == 0)
        {
            float scale = XMath.Exp(oldMax - newMax);
            rowScale[row] = scale;
            rowSum[row] = rowSum[row] * scale + sum;
            rowMax[row] = newMax;
        }
    }

    static void StoreQuery(FlashShape s, ArrayView<float> y, int yBase, int i, int c, float sum, float v0, float v1, float v2, float v3)
    {
        if (i >= s.T)
        {
            return;
        }
        float inv = 1f / sum;
        if (c < s.HeadChannels)
        {
            y[yBase + c * s.T + i] = v0 * inv;
        }
        if (c + 1 < s.HeadChannels)
        {
            y[yBase + (c + 1) * s.T + i] = v1 * inv;
        }
        if (c + 2 < s.HeadChannels)
        {
            y[yBase + (c + 2) * s.T + i] = v2 * inv;
        }
        if (c + 3 < s.HeadChannels)
        {
            y[yBase + (c + 3) * s.T + i] = v3 * inv;
        }
    }

    // Backward v2: tiles of FlashBlock queries × FlashBlock keys, FlashBackwardThreads threads. In the score phase thread
    // (r, u) = (tid / 8, tid % 8) computes the 4 entries (r, u + 8m) of S and dP; in the sum phase thread (lane, w) =
    // (tid % 32, tid / 32) accumulates the channels w + 8m of its row lane. Shared tiles are [c][position], 64 × 32
    // (channels past ch and positions past T hold zeros); P and dS are [row][column] with a padded stride of 33, so
    // the sum phase's lanes (32 rows, one column) hit 32 banks.
    public const int FlashBlock = 32, FlashBackwardThreads = 256;
}
