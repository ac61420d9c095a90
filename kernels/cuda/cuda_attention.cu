/* cuda_attention.cu - attention over the paged KV cache.
 *
 * Decode (one query per sequence), flash-decoding: a block takes (KV head, sequence, split of
 * the context); its 4 warps walk the split's keys, a key per warp at a time, and every warp
 * scores the key against all g query heads of the KV head (GQA: one K/V load serves the
 * group), keeping per head the running max m, sum l and unnormalized output (online softmax,
 * FP32). The warps' states merge in shared memory; with several splits each writes its
 * normalized output and log-sum-exp, and a combine kernel weighs them.
 *
 * Prefill, flash attention: a work item is (sequence, KV head, tile of queries) with up to
 * CUDA_ATTN_ROWS rows (query x group head). Tiles of keys are loaded into shared memory
 * through the block table; 4 threads share a row, each holding a quarter of q and of the
 * output accumulator in registers; scores of a key tile live in registers only (no score
 * matrix). Causal and sliding-window masks per row. */
#include <math.h>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

template <bool BF16> __device__ __forceinline__ float kv_at(const void *p, size_t i) {
    if (BF16) return cu_bf16(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

/* ---- decode ---- */

#define DEC_WARPS 4

/* K and V of key position j, KV head h: this lane's EPL values of each. */
template <int EPL, bool BF16>
__device__ __forceinline__ void dec_load(const cuda_kv_view &kv, const int32_t *block_table,
                                         int32_t j, int h, int lane, float kr[EPL], float vr[EPL]) {
    const int hd = kv.head_dim, bs = kv.block_size;
    int32_t blk = block_table[j / bs];
    size_t base = (((size_t)blk * kv.n_kv_heads + h) * bs + j % bs) * hd;
    if (EPL % 4 == 0 && hd == 32 * EPL) {
        /* full rows: 4 values per load (8 bytes of BF16, 16 of F32; aligned since base and
         * lane * EPL are multiples of 4) */
#pragma unroll
        for (int e = 0; e < EPL; e += 4) {
            size_t a = base + lane * EPL + e;
            if (BF16) {
                uint2 uk = *(const uint2 *)((const uint16_t *)kv.k + a);
                uint2 uv = *(const uint2 *)((const uint16_t *)kv.v + a);
                kr[e] = __uint_as_float(uk.x << 16),
                kr[e + 1] = __uint_as_float(uk.x & 0xffff0000u);
                kr[e + 2] = __uint_as_float(uk.y << 16),
                       kr[e + 3] = __uint_as_float(uk.y & 0xffff0000u);
                vr[e] = __uint_as_float(uv.x << 16),
                vr[e + 1] = __uint_as_float(uv.x & 0xffff0000u);
                vr[e + 2] = __uint_as_float(uv.y << 16),
                       vr[e + 3] = __uint_as_float(uv.y & 0xffff0000u);
            } else {
                float4 fk = *(const float4 *)((const float *)kv.k + a);
                float4 fv = *(const float4 *)((const float *)kv.v + a);
                kr[e] = fk.x, kr[e + 1] = fk.y, kr[e + 2] = fk.z, kr[e + 3] = fk.w;
                vr[e] = fv.x, vr[e + 1] = fv.y, vr[e + 2] = fv.z, vr[e + 3] = fv.w;
            }
        }
    } else {
#pragma unroll
        for (int e = 0; e < EPL; e++) {
            int d = lane * EPL + e;
            kr[e] = d < hd ? kv_at<BF16>(kv.k, base + d) : 0.0f;
            vr[e] = d < hd ? kv_at<BF16>(kv.v, base + d) : 0.0f;
        }
    }
}

/* One key into the running state of the g query heads (online softmax). */
template <int EPL, int G>
__device__ __forceinline__ void dec_update(const float (&qv)[G][EPL], float (&acc)[G][EPL],
                                           float (&m)[G], float (&l)[G], int g, const float kr[EPL],
                                           const float vr[EPL]) {
#pragma unroll
    for (int gi = 0; gi < G; gi++) {
        if (gi >= g) break;
        float dot = 0;
#pragma unroll
        for (int e = 0; e < EPL; e++) dot += qv[gi][e] * kr[e];
        dot = cu_warp_sum(dot);
        float m_new = fmaxf(m[gi], dot);
        float corr = __expf(m[gi] - m_new), p = __expf(dot - m_new);
        l[gi] = l[gi] * corr + p;
#pragma unroll
        for (int e = 0; e < EPL; e++) acc[gi][e] = acc[gi][e] * corr + p * vr[e];
        m[gi] = m_new;
    }
}

/* EPL: head dims per lane (head_dim <= 32 * EPL); G: most query heads per KV head. */
template <int EPL, int G, bool BF16>
__global__ void __launch_bounds__(32 * DEC_WARPS)
    k_attn_decode(float *__restrict__ out, const float *__restrict__ q, cuda_kv_view kv,
                  const cuda_attn_seq *__restrict__ seqs, int n_heads, float scale, int window,
                  int chunk, int n_splits, float *__restrict__ part) {
    extern __shared__ float smem[]; /* [DEC_WARPS][g][hd] acc, [DEC_WARPS][g] m, l */
    const int h = blockIdx.x, si = blockIdx.y, sp = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int hd = kv.head_dim, nkv = kv.n_kv_heads, g = n_heads / nkv;
    const cuda_attn_seq s = seqs[si];
    const int32_t qpos = s.n_ctx - 1;
    int32_t start = sp * chunk, end = min(s.n_ctx, start + chunk);
    if (window > 0) start = max(start, qpos - window + 1);

    float qv[G][EPL], acc[G][EPL], m[G], l[G];
#pragma unroll
    for (int gi = 0; gi < G; gi++) {
        m[gi] = -INFINITY, l[gi] = 0;
#pragma unroll
        for (int e = 0; e < EPL; e++) {
            int d = lane * EPL + e;
            acc[gi][e] = 0;
            qv[gi][e] = gi < g && d < hd
                            ? q[((size_t)s.q_start * n_heads + h * g + gi) * hd + d] * scale
                            : 0.0f;
        }
    }
    /* two keys per warp and iteration: both loads are in flight before the math */
    for (int32_t j = start + warp; j < end; j += 2 * DEC_WARPS) {
        const bool two = j + DEC_WARPS < end; /* warp-uniform */
        float kr0[EPL], vr0[EPL], kr1[EPL], vr1[EPL];
        dec_load<EPL, BF16>(kv, s.block_table, j, h, lane, kr0, vr0);
        if (two) dec_load<EPL, BF16>(kv, s.block_table, j + DEC_WARPS, h, lane, kr1, vr1);
        dec_update<EPL, G>(qv, acc, m, l, g, kr0, vr0);
        if (two) dec_update<EPL, G>(qv, acc, m, l, g, kr1, vr1);
    }
    float *sacc = smem, *sm = smem + (size_t)DEC_WARPS * g * hd, *sl = sm + DEC_WARPS * g;
#pragma unroll
    for (int gi = 0; gi < G; gi++) {
        if (gi >= g) break;
#pragma unroll
        for (int e = 0; e < EPL; e++) {
            int d = lane * EPL + e;
            if (d < hd) sacc[((size_t)warp * g + gi) * hd + d] = acc[gi][e];
        }
        if (lane == 0) sm[warp * g + gi] = m[gi], sl[warp * g + gi] = l[gi];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < g * hd; i += blockDim.x) {
        int gi = i / hd, d = i % hd;
        float M = -INFINITY;
        for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, sm[w * g + gi]);
        float L = 0, O = 0;
        if (M != -INFINITY)
            for (int w = 0; w < DEC_WARPS; w++) {
                float f = __expf(sm[w * g + gi] - M); /* 0 for a warp that saw no key */
                L += sl[w * g + gi] * f;
                O += sacc[((size_t)w * g + gi) * hd + d] * f;
            }
        int head = h * g + gi;
        if (n_splits == 1) {
            out[((size_t)s.q_start * n_heads + head) * hd + d] = L > 0 ? O / L : 0.0f;
        } else {
            size_t idx = ((size_t)si * n_heads + head) * n_splits + sp;
            part[idx * hd + d] = L > 0 ? O / L : 0.0f;
            if (d == 0) {
                size_t n_part = (size_t)gridDim.y * n_heads * n_splits;
                part[n_part * hd + idx] = L > 0 ? M + logf(L) : -INFINITY;
            }
        }
    }
}

/* Weighs the splits' outputs by their log-sum-exp. A block per (sequence, head). */
__global__ void k_attn_combine(float *__restrict__ out, const cuda_attn_seq *__restrict__ seqs,
                               int n_seqs, int n_heads, int hd, int n_splits,
                               const float *__restrict__ part) {
    int si = blockIdx.x / n_heads, head = blockIdx.x % n_heads;
    size_t n_part = (size_t)n_seqs * n_heads * n_splits;
    size_t first = ((size_t)si * n_heads + head) * n_splits;
    const float *lse = part + n_part * hd + first;
    float M = -INFINITY;
    for (int sp = 0; sp < n_splits; sp++) M = fmaxf(M, lse[sp]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float W = 0, O = 0;
        for (int sp = 0; sp < n_splits; sp++) {
            if (lse[sp] == -INFINITY) continue;
            float f = __expf(lse[sp] - M);
            W += f;
            O += f * part[(first + sp) * hd + d];
        }
        out[((size_t)seqs[si].q_start * n_heads + head) * hd + d] = W > 0 ? O / W : 0.0f;
    }
}

cuda_decode_plan cuda_decode_plan_make(int n_seqs, int n_kv_heads, int n_heads, int head_dim,
                                       int max_ctx, int n_sms, size_t part_floats) {
    cuda_decode_plan p = {1, max_ctx > 0 ? max_ctx : 1};
    int64_t base = (int64_t)n_seqs * n_kv_heads;
    /* about one full wave of 16 four-warp blocks per SM (rounded down: a second, mostly
     * idle wave costs more than a slightly short first one) */
    int64_t want = 16 * (int64_t)(n_sms > 0 ? n_sms : 132) / base;
    int64_t most = (max_ctx + 63) / 64; /* at least 64 keys (16 per warp) per split */
    if (want > most) want = most;
    int64_t per = (int64_t)n_seqs * n_heads * (head_dim + 2);
    if (per > 0 && want * per > (int64_t)part_floats) want = (int64_t)part_floats / per;
    if (want <= 1) return p;
    int chunk = (int)((max_ctx + want - 1) / want);
    chunk = (chunk + 31) & ~31;
    p.chunk = chunk;
    p.n_splits = (max_ctx + chunk - 1) / chunk;
    return p;
}

template <int EPL, int G>
static cudaError_t decode_g(float *out, const float *q, cuda_kv_view kv, const cuda_attn_seq *seqs,
                            int n_seqs, int n_heads, float scale, int window, cuda_decode_plan plan,
                            float *part, cudaStream_t s) {
    int g = n_heads / kv.n_kv_heads;
    size_t smem = ((size_t)DEC_WARPS * g * kv.head_dim + 2 * DEC_WARPS * g) * sizeof(float);
    if (smem > 48 * 1024) return cudaErrorInvalidValue;
    dim3 grid((unsigned)kv.n_kv_heads, (unsigned)n_seqs, (unsigned)plan.n_splits);
    if (kv.type == DTYPE_BF16)
        k_attn_decode<EPL, G, true><<<grid, 32 * DEC_WARPS, smem, s>>>(
            out, q, kv, seqs, n_heads, scale, window, plan.chunk, plan.n_splits, part);
    else
        k_attn_decode<EPL, G, false><<<grid, 32 * DEC_WARPS, smem, s>>>(
            out, q, kv, seqs, n_heads, scale, window, plan.chunk, plan.n_splits, part);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || plan.n_splits == 1) return e;
    int threads = kv.head_dim >= 128 ? 128 : ((kv.head_dim + 31) & ~31);
    k_attn_combine<<<(unsigned)(n_seqs * n_heads), threads, 0, s>>>(
        out, seqs, n_seqs, n_heads, kv.head_dim, plan.n_splits, part);
    return cudaGetLastError();
}

template <int EPL>
static cudaError_t decode_epl(float *out, const float *q, cuda_kv_view kv,
                              const cuda_attn_seq *seqs, int n_seqs, int n_heads, float scale,
                              int window, cuda_decode_plan plan, float *part, cudaStream_t s) {
    int g = n_heads / kv.n_kv_heads;
#define DEC_G(GG)                                                                                  \
    if (g <= GG)                                                                                   \
        return decode_g<EPL, GG>(out, q, kv, seqs, n_seqs, n_heads, scale, window, plan, part, s);
    DEC_G(1)
    DEC_G(2) DEC_G(4) DEC_G(8) DEC_G(16)
#undef DEC_G
        return cudaErrorInvalidValue;
}

cudaError_t cuda_attention_decode(float *out, const float *q, cuda_kv_view kv,
                                  const cuda_attn_seq *seqs, int n_seqs, int n_heads, float scale,
                                  int window, cuda_decode_plan plan, float *part, cudaStream_t s) {
    if (n_seqs <= 0) return cudaSuccess;
    int hd = kv.head_dim;
#define DEC_EPL(E)                                                                                 \
    if (hd <= 32 * E)                                                                              \
        return decode_epl<E>(out, q, kv, seqs, n_seqs, n_heads, scale, window, plan, part, s);
    DEC_EPL(1)
    DEC_EPL(2) DEC_EPL(4) DEC_EPL(8)
#undef DEC_EPL
        return cudaErrorInvalidValue;
}

/* ---- prefill ---- */

#define PF_THREADS (CUDA_ATTN_ROWS * 4)

/* DPT: head dims per thread (head_dim <= 4 * DPT); BK: keys per shared-memory tile. */
template <int DPT, int BK, bool BF16>
__global__ void __launch_bounds__(PF_THREADS)
    k_attn_prefill(float *__restrict__ out, const float *__restrict__ q, cuda_kv_view kv,
                   const cuda_attn_seq *__restrict__ seqs, int n_seqs, int n_heads, float scale,
                   int window) {
    __shared__ float ks[BK][4 * DPT], vs[BK][4 * DPT];
    const int item = blockIdx.x;
    /* the sequence: the last whose first item is <= item */
    int lo = 0, hi = n_seqs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (seqs[mid].item_start <= item)
            lo = mid;
        else
            hi = mid - 1;
    }
    const cuda_attn_seq s = seqs[lo];
    const int hd = kv.head_dim, bs = kv.block_size, nkv = kv.n_kv_heads, g = n_heads / nkv;
    const int q_tile = CUDA_ATTN_ROWS / g > 0 ? CUDA_ATTN_ROWS / g : 1;
    const int n_tiles = (s.n_q + q_tile - 1) / q_tile;
    const int local = item - s.item_start, h = local / n_tiles, tile = local % n_tiles;
    const int t0 = tile * q_tile, t1 = min(s.n_q, t0 + q_tile);
    const int32_t first_pos = s.n_ctx - s.n_q;

    const int row = threadIdx.x >> 2, quad = threadIdx.x & 3;
    const int t = t0 + row / g, gi = row % g;
    const bool valid = row < (t1 - t0) * g;
    const int32_t qpos = valid ? first_pos + t : -1;
    const int32_t qlo = valid && window > 0 ? qpos - window + 1 : 0;
    const size_t qrow = ((size_t)(s.q_start + (valid ? t : 0)) * n_heads + h * g + gi) * hd;

    float qv[DPT], acc[DPT], m = -INFINITY, l = 0;
#pragma unroll
    for (int i = 0; i < DPT; i++) {
        int d = quad + 4 * i;
        qv[i] = valid && d < hd ? q[qrow + d] * scale : 0.0f;
        acc[i] = 0;
    }
    /* keys any row of the tile sees */
    const int32_t hi_pos = first_pos + t1 - 1;
    int32_t lo_pos = window > 0 ? first_pos + t0 - window + 1 : 0;
    if (lo_pos < 0) lo_pos = 0;
    lo_pos -= lo_pos % BK; /* tiles start on multiples of BK */
    for (int32_t k0 = lo_pos; k0 <= hi_pos; k0 += BK) {
        __syncthreads(); /* the previous tile is read */
        for (int i = threadIdx.x; i < BK * hd; i += PF_THREADS) {
            int j = i / hd, d = i % hd;
            int32_t p = k0 + j;
            float kval = 0, vval = 0;
            if (p <= hi_pos) {
                int32_t blk = s.block_table[p / bs];
                size_t a = (((size_t)blk * nkv + h) * bs + p % bs) * hd + d;
                kval = kv_at<BF16>(kv.k, a);
                vval = kv_at<BF16>(kv.v, a);
            }
            ks[j][d] = kval;
            vs[j][d] = vval;
        }
        __syncthreads();
        float sc[BK];
        float bmax = -INFINITY;
#pragma unroll
        for (int j = 0; j < BK; j++) {
            float dot = 0;
#pragma unroll
            for (int i = 0; i < DPT; i++) {
                int d = quad + 4 * i;
                if (d < hd) dot += qv[i] * ks[j][d];
            }
            dot += __shfl_xor_sync(0xffffffffu, dot, 1);
            dot += __shfl_xor_sync(0xffffffffu, dot, 2);
            int32_t p = k0 + j;
            sc[j] = (p <= qpos && p >= qlo) ? dot : -INFINITY;
            bmax = fmaxf(bmax, sc[j]);
        }
        if (bmax == -INFINITY) continue; /* nothing visible to this row in the tile */
        float m_new = fmaxf(m, bmax), corr = __expf(m - m_new), sum = 0;
#pragma unroll
        for (int i = 0; i < DPT; i++) acc[i] *= corr;
#pragma unroll
        for (int j = 0; j < BK; j++) {
            float p = __expf(sc[j] - m_new); /* 0 where masked */
            sum += p;
#pragma unroll
            for (int i = 0; i < DPT; i++) {
                int d = quad + 4 * i;
                if (d < hd) acc[i] += p * vs[j][d];
            }
        }
        l = l * corr + sum;
        m = m_new;
    }
    if (!valid) return;
    float inv = l > 0 ? 1.0f / l : 0.0f;
#pragma unroll
    for (int i = 0; i < DPT; i++) {
        int d = quad + 4 * i;
        if (d < hd) out[qrow + d] = acc[i] * inv;
    }
}

template <int DPT, int BK>
static cudaError_t prefill_dpt(float *out, const float *q, cuda_kv_view kv,
                               const cuda_attn_seq *seqs, int n_seqs, int n_items, int n_heads,
                               float scale, int window, cudaStream_t s) {
    if (kv.type == DTYPE_BF16)
        k_attn_prefill<DPT, BK, true><<<(unsigned)n_items, PF_THREADS, 0, s>>>(
            out, q, kv, seqs, n_seqs, n_heads, scale, window);
    else
        k_attn_prefill<DPT, BK, false><<<(unsigned)n_items, PF_THREADS, 0, s>>>(
            out, q, kv, seqs, n_seqs, n_heads, scale, window);
    return cudaGetLastError();
}

cudaError_t cuda_attention_prefill(float *out, const float *q, cuda_kv_view kv,
                                   const cuda_attn_seq *seqs, int n_seqs, int n_items, int n_heads,
                                   float scale, int window, cudaStream_t s) {
    if (n_seqs <= 0 || n_items <= 0) return cudaSuccess;
    int hd = kv.head_dim, g = n_heads / kv.n_kv_heads;
    if (g > CUDA_ATTN_ROWS) return cudaErrorInvalidValue;
    if (hd <= 16)
        return prefill_dpt<4, 32>(out, q, kv, seqs, n_seqs, n_items, n_heads, scale, window, s);
    if (hd <= 32)
        return prefill_dpt<8, 32>(out, q, kv, seqs, n_seqs, n_items, n_heads, scale, window, s);
    if (hd <= 64)
        return prefill_dpt<16, 32>(out, q, kv, seqs, n_seqs, n_items, n_heads, scale, window, s);
    if (hd <= 128)
        return prefill_dpt<32, 32>(out, q, kv, seqs, n_seqs, n_items, n_heads, scale, window, s);
    if (hd <= 256)
        return prefill_dpt<64, 16>(out, q, kv, seqs, n_seqs, n_items, n_heads, scale, window, s);
    return cudaErrorInvalidValue;
}

/* ---- prefill on tensor cores (BF16 KV pools, head dim 64 or 128) ----
 *
 * FlashAttention-2 on mma.sync m16n8k16 (BF16 in, FP32 accumulate): a work item is
 * (sequence, query head, tile of 64 queries), 4 warps of 16 query rows each. Q (scaled by
 * scale * log2 e, rounded to BF16) stays in registers as A fragments; each tile of 64 keys of
 * K and V is copied from the paged pool into shared memory; S = Q K^T and O += P V run on
 * tensor cores, P rounded to BF16 from the S accumulators without leaving registers; the
 * online softmax (base 2) runs on the accumulators, each row's max and sum shared by the 4
 * lanes that hold it. Fragment layouts are PTX's for m16n8k16: lane = 4 g + t; A: rows g and
 * g + 8, columns 2t, 2t + 1 (+ 8); B: rows (k) 2t, 2t + 1 (+ 8), column (n) g; C: rows g and
 * g + 8, columns 2t, 2t + 1. */

#define TC_BM 64 /* queries per item */
#define TC_BN 64 /* keys per tile */

__device__ __forceinline__ uint32_t tc_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
    return *(uint32_t *)&v;
}

__device__ __forceinline__ void tc_mma(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap(); /* never launched below sm_80 (cuda_attention_prefill_tc_fits, cu_prefill_tc) */
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

template <int HD>
__global__ void __launch_bounds__(128)
    k_attn_prefill_tc(float *__restrict__ out, const float *__restrict__ q, cuda_kv_view kv,
                      const cuda_attn_seq *__restrict__ seqs, int n_seqs, int n_heads, float scale,
                      int window) {
    constexpr int LD = HD + 8;  /* smem row stride in bf16 (16-byte aligned, fewer conflicts) */
    constexpr int KS = HD / 16; /* k-steps of Q K^T */
    constexpr int NT = HD / 8;  /* n-tiles of O */
    __shared__ __align__(16) uint16_t ks[TC_BN * LD], vs[TC_BN * LD];
    const int item = blockIdx.x;
    int lo = 0, hi = n_seqs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (seqs[mid].item_start <= item)
            lo = mid;
        else
            hi = mid - 1;
    }
    const cuda_attn_seq s = seqs[lo];
    const int bs = kv.block_size, nkv = kv.n_kv_heads, g_heads = n_heads / nkv;
    const int n_tiles = (s.n_q + TC_BM - 1) / TC_BM;
    const int local = item - s.item_start, head = local / n_tiles;
    const int tile = n_tiles - 1 - local % n_tiles; /* the longest tiles first */
    const int kvh = head / g_heads;
    const int t0 = tile * TC_BM;
    const int32_t first_pos = s.n_ctx - s.n_q;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int r_lo = t0 + warp * 16 + g, r_hi = r_lo + 8; /* this lane's two query rows */
    const bool v_lo = r_lo < s.n_q, v_hi = r_hi < s.n_q;
    const int32_t p_lo = first_pos + r_lo, p_hi = first_pos + r_hi;
    const float qs = scale * 1.4426950408889634f; /* scores in base 2 */

    uint32_t qa[KS][4];
    {
        const float *q_lo = q + ((size_t)(s.q_start + (v_lo ? r_lo : 0)) * n_heads + head) * HD;
        const float *q_hi = q + ((size_t)(s.q_start + (v_hi ? r_hi : 0)) * n_heads + head) * HD;
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            int c = kk * 16 + 2 * t;
            float2 a = v_lo ? *(const float2 *)(q_lo + c) : make_float2(0, 0);
            float2 b = v_hi ? *(const float2 *)(q_hi + c) : make_float2(0, 0);
            float2 a8 = v_lo ? *(const float2 *)(q_lo + c + 8) : make_float2(0, 0);
            float2 b8 = v_hi ? *(const float2 *)(q_hi + c + 8) : make_float2(0, 0);
            qa[kk][0] = tc_pack(a.x * qs, a.y * qs);
            qa[kk][1] = tc_pack(b.x * qs, b.y * qs);
            qa[kk][2] = tc_pack(a8.x * qs, a8.y * qs);
            qa[kk][3] = tc_pack(b8.x * qs, b8.y * qs);
        }
    }
    float o[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0, l_hi = 0;

    const int32_t last = min(first_pos + t0 + TC_BM - 1, s.n_ctx - 1); /* last key any row sees */
    int32_t first = window > 0 ? first_pos + t0 - window + 1 : 0;
    if (first < 0) first = 0;
    first -= first % TC_BN;
    for (int32_t k0 = first; k0 <= last; k0 += TC_BN) {
        __syncthreads(); /* the previous tile is read */
        /* K and V tile: 64 keys x HD bf16, in 16-byte pieces */
        for (int i = threadIdx.x; i < TC_BN * (HD / 8); i += 128) {
            int j = i / (HD / 8), c = (i % (HD / 8)) * 8;
            int32_t p = k0 + j;
            uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
            if (p <= last) {
                int32_t blk = s.block_table[p / bs];
                size_t a = (((size_t)blk * nkv + kvh) * bs + p % bs) * HD + c;
                kv4 = *(const uint4 *)((const uint16_t *)kv.k + a);
                vv4 = *(const uint4 *)((const uint16_t *)kv.v + a);
            }
            *(uint4 *)&ks[j * LD + c] = kv4;
            *(uint4 *)&vs[j * LD + c] = vv4;
        }
        __syncthreads();
        /* S = Q K^T: 8 n-tiles of 8 keys */
        float sc[TC_BN / 8][4];
#pragma unroll
        for (int j = 0; j < TC_BN / 8; j++) {
            sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0;
            const uint16_t *kr = &ks[(8 * j + g) * LD + 2 * t];
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                uint32_t b0 = *(const uint32_t *)(kr + kk * 16);
                uint32_t b1 = *(const uint32_t *)(kr + kk * 16 + 8);
                tc_mma(sc[j], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b0, b1);
            }
        }
        /* masks, row maxima */
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
        for (int j = 0; j < TC_BN / 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int32_t p = k0 + 8 * j + 2 * t + e;
                bool ok_lo = v_lo && p <= p_lo && (window <= 0 || p > p_lo - window);
                bool ok_hi = v_hi && p <= p_hi && (window <= 0 || p > p_hi - window);
                if (!ok_lo) sc[j][e] = -INFINITY;
                if (!ok_hi) sc[j][2 + e] = -INFINITY;
                mx_lo = fmaxf(mx_lo, sc[j][e]);
                mx_hi = fmaxf(mx_hi, sc[j][2 + e]);
            }
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
        float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
        /* a row that has seen nothing yet keeps zeros: subtract 0 instead of -inf */
        float u_lo = mn_lo == -INFINITY ? 0.0f : mn_lo, u_hi = mn_hi == -INFINITY ? 0.0f : mn_hi;
        float c_lo = exp2f(m_lo - u_lo), c_hi = exp2f(m_hi - u_hi); /* 0 when m was -inf */
        m_lo = mn_lo, m_hi = mn_hi;
        float sum_lo = 0, sum_hi = 0;
#pragma unroll
        for (int j = 0; j < TC_BN / 8; j++) {
            sc[j][0] = exp2f(sc[j][0] - u_lo), sc[j][1] = exp2f(sc[j][1] - u_lo);
            sc[j][2] = exp2f(sc[j][2] - u_hi), sc[j][3] = exp2f(sc[j][3] - u_hi);
            sum_lo += sc[j][0] + sc[j][1];
            sum_hi += sc[j][2] + sc[j][3];
        }
        l_lo = l_lo * c_lo + sum_lo; /* this lane's part of the row sum; summed at the end */
        l_hi = l_hi * c_hi + sum_hi;
#pragma unroll
        for (int n = 0; n < NT; n++)
            o[n][0] *= c_lo, o[n][1] *= c_lo, o[n][2] *= c_hi, o[n][3] *= c_hi;
            /* O += P V: 4 k-steps of 16 keys; P's A fragments come from two S n-tiles */
#pragma unroll
        for (int ks16 = 0; ks16 < TC_BN / 16; ks16++) {
            uint32_t a0 = tc_pack(sc[2 * ks16][0], sc[2 * ks16][1]);
            uint32_t a1 = tc_pack(sc[2 * ks16][2], sc[2 * ks16][3]);
            uint32_t a2 = tc_pack(sc[2 * ks16 + 1][0], sc[2 * ks16 + 1][1]);
            uint32_t a3 = tc_pack(sc[2 * ks16 + 1][2], sc[2 * ks16 + 1][3]);
            const uint16_t *v0 = &vs[(16 * ks16 + 2 * t) * LD + g];
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const uint16_t *vp = v0 + 8 * n;
                uint32_t b0 = (uint32_t)vp[0] | ((uint32_t)vp[LD] << 16);
                uint32_t b1 = (uint32_t)vp[8 * LD] | ((uint32_t)vp[9 * LD] << 16);
                tc_mma(o[n], a0, a1, a2, a3, b0, b1);
            }
        }
    }
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    float i_lo = l_lo > 0 ? 1.0f / l_lo : 0.0f, i_hi = l_hi > 0 ? 1.0f / l_hi : 0.0f;
    float *o_lo = out + ((size_t)(s.q_start + r_lo) * n_heads + head) * HD;
    float *o_hi = out + ((size_t)(s.q_start + r_hi) * n_heads + head) * HD;
#pragma unroll
    for (int n = 0; n < NT; n++) {
        int c = 8 * n + 2 * t;
        if (v_lo) *(float2 *)(o_lo + c) = make_float2(o[n][0] * i_lo, o[n][1] * i_lo);
        if (v_hi) *(float2 *)(o_hi + c) = make_float2(o[n][2] * i_hi, o[n][3] * i_hi);
    }
}

bool cuda_attention_prefill_tc_fits(dtype kv_type, int head_dim) {
    return kv_type == DTYPE_BF16 && (head_dim == 64 || head_dim == 128);
}

cudaError_t cuda_attention_prefill_tc(float *out, const float *q, cuda_kv_view kv,
                                      const cuda_attn_seq *seqs, int n_seqs, int n_items,
                                      int n_heads, float scale, int window, cudaStream_t s) {
    if (n_seqs <= 0 || n_items <= 0) return cudaSuccess;
    if (!cuda_attention_prefill_tc_fits(kv.type, kv.head_dim)) return cudaErrorInvalidValue;
    if (kv.head_dim == 64)
        k_attn_prefill_tc<64>
            <<<(unsigned)n_items, 128, 0, s>>>(out, q, kv, seqs, n_seqs, n_heads, scale, window);
    else
        k_attn_prefill_tc<128>
            <<<(unsigned)n_items, 128, 0, s>>>(out, q, kv, seqs, n_seqs, n_heads, scale, window);
    return cudaGetLastError();
}
