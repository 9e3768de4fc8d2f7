// Attention's flash backward kernels (v2); the header of Attention.cs lists every version.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace IlgpuDiffSeg.Kernels;

public static partial class Attention
{
    /// <summary>
    /// Backward v2, keys: one group per 32 keys of one head (Grid.IdxY = b·H + h) loops over every query tile and
    /// writes dK and dV of its keys. dy: (N, C, T); lse, d: (N·H, T).
    /// Per tile: S = σ²·kᵀq and dP = vᵀ·dy (4 each per thread, ch FMAs each), P = exp(S − lse), dS = P ⊙ (dP − D);
    /// then dV[c,j] += Σ_i P[j,i]·dy[c,i] and dK[c,j] += Σ_i dS[j,i]·σ²q[c,i] (16 accumulators per thread).
    /// </summary>
    static void FlashBackwardKeysKernel(FlashShape s, ArrayView<float> qkv, ArrayView<float> dy, ArrayView<float> lse,
        ArrayView<float> d, ArrayView<float> dqkv)
    {
        var ks = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // this block's k, [c][key]
        var vs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // its v
        var qs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // the query tile's σ²·q, [c][query]
        var gs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // its dy
        var ps = SharedMemory.Allocate<float>(FlashBlock * (FlashBlock + 1));      // P, [key][query]
        var dss = SharedMemory.Allocate<float>(FlashBlock * (FlashBlock + 1));     // dS, [key][query]
        var stats = SharedMemory.Allocate<float>(2 * FlashBlock);                  // the query tile's lse, then D
        int tid = Group.IdxX, bh = Grid.IdxY, j0 = Grid.IdxX * FlashBlock;
        QkvOffsets(bh / s.Heads, bh % s.Heads, s.Channels, s.T, s.Heads, s.Legacy != 0, out int q0, out int k0, out int v0);
        int g0 = bh * s.HeadChannels * s.T, stat0 = bh * s.T;
        LoadBlock(s, qkv, k0, j0, 1f, ks, tid);
        LoadBlock(s, qkv, v0, j0, 1f, vs, tid);
        int r = tid / 8, u = tid % 8, lane = tid % FlashBlock, w = tid / FlashBlock;
        bool key = j0 + r < s.T;
        int pr = r * (FlashBlock + 1) + u;
        float dv0 = 0, dv1 = 0, dv2 = 0, dv3 = 0, dv4 = 0, dv5 = 0, dv6 = 0, dv7 = 0;
        float dk0 = 0, dk1 = 0, dk2 = 0, dk3 = 0, dk4 = 0, dk5 = 0, dk6 = 0, dk7 = 0;
        for (int i0 = 0; i0 < s.T; i0 += FlashBlock)
        {
            Group.Barrier();
            LoadBlock(s, qkv, q0, i0, s.ScaleSquared, qs, tid);
            LoadBlock(s, dy, g0, i0, 1f, gs, tid);
            LoadStats(s, lse, d, stat0, i0, stats, tid);
            Group.Barrier();
            ScoreTile(s, ks, vs, qs, gs, r, u, out float s0, out float s1, out float s2, out float s3,
                out float e0, out float e1, out float e2, out float e3);
            float p0 = key && i0 + u < s.T ? XMath.Exp(s0 - stats[u]) : 0f;
            float p1 = key && i0 + u + 8 < s.T ? XMath.Exp(s1 - stats[u + 8]) : 0f;
            float p2 = key && i0 + u + 16 < s.T ? XMath.Exp(s2 - stats[u + 16]) : 0f;
            float p3 = key && i0 + u + 24 < s.T ? XMath.Exp(s3 - stats[u + 24]) : 0f;
            ps[pr] = p0;
            ps[pr + 8] = p1;
            ps[pr + 16] = p2;
            ps[pr + 24] = p3;
            dss[pr] = p0 * (e0 - stats[FlashBlock + u]);
            dss[pr + 8] = p1 * (e1 - stats[FlashBlock + u + 8]);
            dss[pr + 16] = p2 * (e2 - stats[FlashBlock + u + 16]);
            dss[pr + 24] = p3 * (e3 - stats[FlashBlock + u + 24]);
            Group.Barrier();
            // Channel w + 8m of position i sits at (w + 8m)·32 + i = c + m·256.
            const int M = 8 * FlashBlock;
            for (int i = 0; i < FlashBlock; i++)
            {
                float p = ps[lane * (FlashBlock + 1) + i], g = dss[lane * (FlashBlock + 1) + i];
                int c = w * FlashBlock + i;
                dv0 += p * gs[c]; dv1 += p * gs[c + M]; dv2 += p * gs[c + 2 * M]; dv3 += p * gs[c + 3 * M];
                dv4 += p * gs[c + 4 * M]; dv5 += p * gs[c + 5 * M]; dv6 += p * gs[c + 6 * M]; dv7 += p * gs[c + 7 * M];
                dk0 += g * qs[c]; dk1 += g * qs[c + M]; dk2 += g * qs[c + 2 * M]; dk3 += g * qs[c + 3 * M];
                dk4 += g * qs[c + 4 * M]; dk5 += g * qs[c + 5 * M]; dk6 += g * qs[c + 6 * M]; dk7 += g * qs[c + 7 * M];
            }
        }
        StoreChannels(s, dqkv, k0, j0 + lane, w, 1f, dk0, dk1, dk2, dk3, dk4, dk5, dk6, dk7);
        StoreChannels(s, dqkv, v0, j0 + lane, w, 1f, dv0, dv1, dv2, dv3, dv4, dv5, dv6, dv7);
    }

    /// <summary>
    /// Backward v2, queries: one group per 32 queries of one head loops over every key tile and writes dQ of its queries.
    /// Per tile: S = σ²·qᵀk and dP = dyᵀ·v, P = exp(S − lse), dS = P ⊙ (dP − D); then dQ[c,i] += Σ_j dS[i,j]·k[c,j]
    /// (8 accumulators per thread), scaled by σ² when stored.
    /// </summary>
    static void FlashBackwardQueriesKernel(FlashShape s, ArrayView<float> qkv, ArrayView<float> dy, ArrayView<float> lse,
        ArrayView<float> d, ArrayView<float> dqkv)
    {
        var qs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // this block's σ²·q, [c][query]
        var gs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // its dy
        var ks = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // the key tile's k, [c][key]
        var vs = SharedMemory.Allocate<float>(FlashMaxHeadChannels * FlashBlock);  // its v
        var dss = SharedMemory.Allocate<float>(FlashBlock * (FlashBlock + 1));     // dS, [query][key]
        var stats = SharedMemory.Allocate<float>(2 * FlashBlock);                  // this block's lse, then D
        int tid = Group.IdxX, bh = Grid.IdxY, i0 = Grid.IdxX * FlashBlock;
        QkvOffsets(bh / s.Heads, bh % s.Heads, s.Channels, s.T, s.Heads, s.Legacy != 0, out int q0, out int k0, out int v0);
        int g0 = bh * s.HeadChannels * s.T, stat0 = bh * s.T;
        LoadBlock(s, qkv, q0, i0, s.ScaleSquared, qs, tid);
        LoadBlock(s, dy, g0, i0, 1f, gs, tid);
        LoadStats(s, lse, d, stat0, i0, stats, tid);
        int r = tid / 8, u = tid % 8, lane = tid % FlashBlock, w = tid / FlashBlock;
        bool query = i0 + r < s.T;
        int pr = r * (FlashBlock + 1) + u;
        float dq0 = 0, dq1 = 0, dq2 = 0, dq3 = 0, dq4 = 0, dq5 = 0, dq6 = 0, dq7 = 0;
        for (int j0 = 0; j0 < s.T; j0 += FlashBlock)
        {
            Group.Barrier();
            LoadBlock(s, qkv, k0, j0, 1f, ks, tid);
            LoadBlock(s, qkv, v0, j0, 1f, vs, tid);
            Group.Barrier();
            ScoreTile(s, qs, gs, ks, vs, r, u, out float s0, out float s1, out float s2, out float s3,
                out float e0, out float e1, out float e2, out float e3);
            float l = stats[r], dr = stats[FlashBlock + r];
            dss[pr] = query && j0 + u < s.T ? XMath.Exp(s0 - l) * (e0 - dr) : 0f;
            dss[pr + 8] = query && j0 + u + 8 < s.T ? XMath.Exp(s1 - l) * (e1 - dr) : 0f;
            dss[pr + 16] = query && j0 + u + 16 < s.T ? XMath.Exp(s2 - l) * (e2 - dr) : 0f;
            dss[pr + 24] = query && j0 + u + 24 < s.T ? XMath.Exp(s3 - l) * (e3 - dr) : 0f;
            Group.Barrier();
            const int M = 8 * FlashBlock;
            for (int j = 0; j < FlashBlock; j++)
            {
                float g = dss[lane * (FlashBlock + 1) + j];
                int c = w * FlashBlock + j;
                dq0 += g * ks[c]; dq1 += g * ks[c + M]; dq2 += g * ks[c + 2 * M]; dq3 += g * ks[c + 3 * M];
                dq4 += g * ks[c + 4 * M]; dq5 += g * ks[c + 5 * M]; dq6 += g * ks[c + 6 * M]; dq7 += g * ks[c + 7 * M];
            }
        }
        StoreChannels(s, dqkv, q0, i0 + lane, w, s.ScaleSquared, dq0, dq1, dq2, dq3, dq4, dq5, dq6, dq7);
    }

    /// <summary>Positions p0..p0+31 of a head's ch × T slab starting at <paramref name="start"/>, times scale, into tile[c][p].</summary>
    static void LoadBlock(FlashShape s, ArrayView<float> src, int start, int p0, float scale, ArrayView<float> tile, int tid)
    {
        for (int e = tid; e < FlashMaxHeadChannels * FlashBlock; e += FlashBackwardThreads)
        {
            int c = e / FlashBlock, p = e % FlashBlock;
            tile[e] = c < s.HeadChannels && p0 + p < s.T ? src[start + c * s.T + p0 + p] * scale : 0f;
        }
    }

    /// <summary>lse and D of queries i0..i0+31 into stats[0..32) and stats[32..64); zero past T.</summary>
    static void LoadStats(FlashShape s, ArrayView<float> lse, ArrayView<float> d, int stat0, int i0, ArrayView<float> stats, int tid)
    {
        if (tid < FlashBlock)
        {
            bool valid = i0 + tid < s.T;
            stats[tid] = valid ? lse[stat0 + i0 + tid] : 0f;
            stats[FlashBlock + tid] = valid ? d[stat0 + i0 + tid] : 0f;
        }
    }

    /// <summary>
    /// For row r of the group's own tiles a1, a2 and columns u, u+8, u+16, u+24 of the streamed b1, b2:
    /// s_m = Σ_c a1[c][r]·b1[c][u+8m] and e_m = Σ_c a2[c][r]·b2[c][u+8m] — the scores and dP, either way round.
    /// </summary>
    static void ScoreTile(FlashShape s, ArrayView<float> a1, ArrayView<float> a2, ArrayView<float> b1, ArrayView<float> b2, int r,
        int u, out float s0, out float s1, out float s2, out float s3, out float e0, out float e1, out float e2, out float e3)
    {
        s0 = s1 = s2 = s3 = e0 = e1 = e2 = e3 = 0f;
        for (int c = 0; c < s.HeadChannels; c++)
        {
            int row = c * FlashBlock;
            float x = a1[row + r], y = a2[row + r];
            float b10 = b1[row + u], b11 = b1[row + u + 8], b12 = b1[row + u + 16], b13 = b1[row + u + 24];
            float b20 = b2[row + u], b21 = b2[row + u + 8], b22 = b2[row + u + 16], b23 = b2[row + u + 24];
            s0 += x * b10; s1 += x * b11; s2 += x * b12; s3 += x * b13;
            e0 += y * b20; e1 += y * b21; e2 += y * b22; e3 += y * b23;
        }
    }

    /// <summary>dst[start + c·T + p] = scale·x_m for the channels c = w + 8m below ch, if p &lt; T (a lane per position).</summary>
    static void StoreChannels(FlashShape s, ArrayView<float> dst, int start, int p, int w, float scale,
        float x0, float x1, float x2, float x3, float x4, float x5, float x6, float x7)
    {
        if (p >= s.T)
        {
            return;
        }
        StoreChannel(s, dst, start, p, w, scale * x0);
        StoreChannel(s, dst, start, p, w + 8, scale * x1);
        StoreChannel(s, dst, start, p, w + 16, scale * x2);
        StoreChannel(s, dst, start, p, w + 24, scale * x3);
        StoreChannel(s, dst, start, p, w + 32, scale * x4);
        StoreChannel(s, dst, start, p, w + 40, scale * x5);
        StoreChannel(s, dst, start, p, w + 48, scale * x6);
        StoreChannel(s, dst, start, p, w + 56, scale * x7);
    }

    static void StoreChannel(FlashShape s, ArrayView<float> dst, int start, int p, int c, float v)
    {
        if (c < s.HeadChannels)
        {
            dst[start + c * s.T + p] = v;
        }
    }

    /// <summary>
    /// Backward v2's pre-pass over the (N·H·T) rows (b, h, i): d = Σ_c y[b, h·ch + c, i]·dy[b, h·ch + c, i], which equals
    /// rowsum(dP ⊙ P). Consecutive threads take consecutive i: coalesced; 2·C·T reads in all.
    /// </summary>
    static void FlashRowDotKernel(Index1D index, int stride, FlashShape s, int rows, ArrayView<float> y, ArrayView<float> dy,
        ArrayView<float> d)
    {
        for (int e = index; e < rows; e += stride)
        {
            int at = e / s.T * s.HeadChannels * s.T + e % s.T;
            float acc = 0f;
            for (int c = 0; c < s.HeadChannels; c++)
            {
                acc += y[at + c * s.T] * dy[at + c * s.T];
            }
            d[e] = acc;
        }
    }
}
