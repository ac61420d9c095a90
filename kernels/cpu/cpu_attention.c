/* cpu_attention.c - flash attention over a paged KV cache.
 *
 * Work items are (sequence, KV head, tile of queries). An item takes the query heads that
 * share its KV head (GQA) for every query of its tile - up to CPU_ATTN_ROWS rows - and walks
 * the sequence's blocks once, so each K/V row is loaded once for the whole group. Per row it
 * keeps the running maximum m, the running sum l and the unnormalized output acc (online
 * softmax): for each block, scores s = scale * q.k over the visible keys, then
 *   m' = max(m, max s);  acc = acc * e^(m - m') + sum_j e^(s_j - m') v_j;  l likewise.
 * Only one block of scores exists at a time; there is no score matrix. An item is computed
 * by one thread start to end, so results do not depend on the thread count. */
#include "cpu_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_exp.h"
#include "log.h"

/* Rows (query heads x queries) an item handles at once. */
#define CPU_ATTN_ROWS 64

void cpu_attn_scratch_free(cpu_attn_scratch *s) {
    free(s->buf);
    free(s->tile_start);
    memset(s, 0, sizeof *s);
}

typedef struct kv_write_args {
    const kernel_kv_layer *kv;
    const float *k, *v;
    const int32_t *slots;
} kv_write_args;

static void kv_write_rows(void *arg, int64_t t0, int64_t t1, int thread) {
    const kv_write_args *a = arg;
    const kernel_kv_layer *kv = a->kv;
    int hd = kv->head_dim, bs = kv->block_size, nkv = kv->n_kv_heads;
    for (int64_t t = t0; t < t1; t++) {
        int32_t slot = a->slots[t], block = slot / bs, off = slot % bs;
        CN_ASSERT(slot >= 0 && block < kv->n_blocks);
        for (int h = 0; h < nkv; h++) {
            size_t dst = (((size_t)block * nkv + h) * bs + off) * hd;
            size_t src = ((size_t)t * nkv + h) * hd;
            memcpy(kv->k + dst, a->k + src, (size_t)hd * sizeof(float));
            memcpy(kv->v + dst, a->v + src, (size_t)hd * sizeof(float));
        }
    }
}

void cpu_kv_write(cpu_pool *pool, const kernel_kv_layer *kv, const float *k, const float *v,
                  const int32_t *slots, int n) {
    kv_write_args a = {kv, k, v, slots};
    if ((int64_t)n * kv->n_kv_heads * kv->head_dim < 16384) kv_write_rows(&a, 0, n, 0);
    else cpu_pool_run(pool, kv_write_rows, &a, n, 16);
}

typedef struct attn_args {
    float *out;
    const float *q;
    const kernel_kv_layer *kv;
    const kernel_attn_seq *seqs;
    int n_seqs, n_heads, group, q_tile, window;
    float scale;
    const int32_t *tile_start;
    float *scratch;
    size_t per_thread;
    bool avx2; /* attn_item_avx2 for head_dim 64 and 128 */
} attn_args;

/* q.k over hd values with 8 partial sums (vectorizes; the order is fixed). */
static inline float attn_dot(const float *a, const float *b, int hd) {
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= hd; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < hd; i++) r += a[i] * b[i];
    return r;
}

/* The dot products and the V accumulation vectorize; an AVX2 clone is picked at load time
 * where the CPU has it (the result may differ from the SSE2 one in the last bits, never with
 * the thread count). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("avx2", "default")))
#endif
static void attn_item(const attn_args *a, int64_t item, float *scratch) {
    /* Which sequence: the last whose first item is <= item. */
    int lo = 0, hi = a->n_seqs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (a->tile_start[mid] <= item) lo = mid;
        else hi = mid - 1;
    }
    const kernel_attn_seq *s = &a->seqs[lo];
    const kernel_kv_layer *kv = a->kv;
    int hd = kv->head_dim, bs = kv->block_size, nkv = kv->n_kv_heads, g = a->group;
    int64_t local = item - a->tile_start[lo];
    int n_tiles = (s->n_q + a->q_tile - 1) / a->q_tile;
    int h = (int)(local / n_tiles), tile = (int)(local % n_tiles);
    int t0 = tile * a->q_tile, t1 = t0 + a->q_tile < s->n_q ? t0 + a->q_tile : s->n_q;
    int rows = (t1 - t0) * g;
    int32_t first_pos = s->n_ctx - s->n_q; /* position of query 0 */

    float *acc = scratch, *m = acc + (size_t)rows * hd, *l = m + rows, *sc = l + rows;
    for (int r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0;
    memset(acc, 0, (size_t)rows * hd * sizeof(float));

    /* Keys visible to any row of the tile: [lo_pos, hi_pos]. */
    int32_t hi_pos = first_pos + t1 - 1;
    int32_t lo_pos = a->window > 0 ? first_pos + t0 - a->window + 1 : 0;
    if (lo_pos < 0) lo_pos = 0;
    for (int32_t b = lo_pos / bs; b <= hi_pos / bs; b++) {
        int32_t blk = s->block_table[b];
        const float *kb = kv->k + ((size_t)blk * nkv + h) * bs * hd;
        const float *vb = kv->v + ((size_t)blk * nkv + h) * bs * hd;
        int32_t p0 = b * bs;
        int j_end = hi_pos - p0 + 1 < bs ? hi_pos - p0 + 1 : bs;
        for (int t = t0; t < t1; t++) {
            int32_t qpos = first_pos + t;
            /* The keys this query sees in the block: [j_lo, j_hi). */
            int j_hi = qpos - p0 + 1 < j_end ? qpos - p0 + 1 : j_end;
            int j_lo = a->window > 0 ? qpos - a->window + 1 - p0 : 0;
            if (j_lo < 0) j_lo = 0;
            if (j_hi <= j_lo) continue;
            for (int gi = 0; gi < g; gi++) {
                int r = (t - t0) * g + gi;
                const float *qr = a->q + ((size_t)(s->q_start + t) * a->n_heads + h * g + gi) * hd;
                float bmax = -INFINITY;
                for (int j = j_lo; j < j_hi; j++) {
                    sc[j] = attn_dot(qr, kb + (size_t)j * hd, hd) * a->scale;
                    if (sc[j] > bmax) bmax = sc[j];
                }
                float m_new = m[r] > bmax ? m[r] : bmax;
                float corr = expf(m[r] - m_new); /* 0 on the first block (m = -inf) */
                float *ar = acc + (size_t)r * hd;
                if (corr != 1.0f)
                    for (int i = 0; i < hd; i++) ar[i] *= corr;
                float sum = 0;
                for (int j = j_lo; j < j_hi; j++) {
                    float p = expf(sc[j] - m_new);
                    sum += p;
                    const float *vr = vb + (size_t)j * hd;
                    for (int i = 0; i < hd; i++) ar[i] += p * vr[i];
                }
                l[r] = l[r] * corr + sum;
                m[r] = m_new;
            }
        }
    }
    for (int t = t0; t < t1; t++)
        for (int gi = 0; gi < g; gi++) {
            int r = (t - t0) * g + gi;
            float *o = a->out + ((size_t)(s->q_start + t) * a->n_heads + h * g + gi) * hd;
            float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f; /* every query sees itself, so l > 0 */
            for (int i = 0; i < hd; i++) o[i] = acc[(size_t)r * hd + i] * inv;
        }
}

#if defined(__x86_64__)
/* The same item in AVX2 for a head dim HD of 64 or 128 (a row's output lives in registers
 * while a block's keys go by), with exp as a polynomial (cpu_exp.h). Each row's arithmetic
 * depends only on its own query and the keys it sees, never on the other rows of the tile:
 * scores four keys at a time (a key past the last is a copy of it, its score dropped), the
 * four dot products reduced by one fixed tree; then exp, the block's sum and the V update in
 * key order. */
#define ATTN_TARGET __attribute__((target("avx2,fma")))

/* [dot(a0), dot(a1), dot(a2), dot(a3)] from four 8-lane partial sums */
ATTN_TARGET static inline __attribute__((always_inline)) __m128 attn_hsum4(__m256 a0, __m256 a1,
                                                                           __m256 a2, __m256 a3) {
    __m256 u0 = _mm256_add_ps(_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
    __m256 u1 = _mm256_add_ps(_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
    __m256 w = _mm256_add_ps(_mm256_shuffle_ps(u0, u1, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(u0, u1, _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm_add_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps(w, 1));
}

ATTN_TARGET static inline __attribute__((always_inline)) void
attn_item_avx2_hd(const attn_args *a, int64_t item, float *scratch, const int HD) {
    enum { NV_MAX = 16 };
    const int NV = HD / 8;
    int lo = 0, hi = a->n_seqs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (a->tile_start[mid] <= item)
            lo = mid;
        else
            hi = mid - 1;
    }
    const kernel_attn_seq *s = &a->seqs[lo];
    const kernel_kv_layer *kv = a->kv;
    int bs = kv->block_size, nkv = kv->n_kv_heads, g = a->group;
    int64_t local = item - a->tile_start[lo];
    int n_tiles = (s->n_q + a->q_tile - 1) / a->q_tile;
    int h = (int)(local / n_tiles), tile = (int)(local % n_tiles);
    int t0 = tile * a->q_tile, t1 = t0 + a->q_tile < s->n_q ? t0 + a->q_tile : s->n_q;
    int rows = (t1 - t0) * g;
    int32_t first_pos = s->n_ctx - s->n_q;

    float *acc = scratch, *m = acc + (size_t)rows * HD, *l = m + rows, *sc = l + rows;
    for (int r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0;
    memset(acc, 0, (size_t)rows * HD * sizeof(float));
    const __m256 scale = _mm256_set1_ps(a->scale);

    int32_t hi_pos = first_pos + t1 - 1;
    int32_t lo_pos = a->window > 0 ? first_pos + t0 - a->window + 1 : 0;
    if (lo_pos < 0) lo_pos = 0;
    for (int32_t b = lo_pos / bs; b <= hi_pos / bs; b++) {
        int32_t blk = s->block_table[b];
        const float *kb = kv->k + ((size_t)blk * nkv + h) * bs * HD;
        const float *vb = kv->v + ((size_t)blk * nkv + h) * bs * HD;
        int32_t p0 = b * bs;
        int j_end = hi_pos - p0 + 1 < bs ? hi_pos - p0 + 1 : bs;
        for (int t = t0; t < t1; t++) {
            int32_t qpos = first_pos + t;
            int j_hi = qpos - p0 + 1 < j_end ? qpos - p0 + 1 : j_end;
            int j_lo = a->window > 0 ? qpos - a->window + 1 - p0 : 0;
            if (j_lo < 0) j_lo = 0;
            if (j_hi <= j_lo) continue;
            for (int gi = 0; gi < g; gi++) {
                int r = (t - t0) * g + gi;
                const float *qr = a->q + ((size_t)(s->q_start + t) * a->n_heads + h * g + gi) * HD;
                __m256 qv[NV_MAX];
                for (int v = 0; v < NV; v++) qv[v] = _mm256_loadu_ps(qr + 8 * v);
                /* scores, four keys at a time; the block's max on the way (a padding lane
                 * repeats a real key's score) */
                __m128 vmax = _mm_set1_ps(-INFINITY);
                for (int j = j_lo; j < j_hi; j += 4) {
                    const float *k0 = kb + (size_t)j * HD;
                    const float *k1 = j + 1 < j_hi ? k0 + HD : k0;
                    const float *k2 = j + 2 < j_hi ? k0 + 2 * HD : k0;
                    const float *k3 = j + 3 < j_hi ? k0 + 3 * HD : k0;
                    __m256 d0 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(k0));
                    __m256 d1 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(k1));
                    __m256 d2 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(k2));
                    __m256 d3 = _mm256_mul_ps(qv[0], _mm256_loadu_ps(k3));
                    for (int v = 1; v < NV; v++) {
                        d0 = _mm256_fmadd_ps(qv[v], _mm256_loadu_ps(k0 + 8 * v), d0);
                        d1 = _mm256_fmadd_ps(qv[v], _mm256_loadu_ps(k1 + 8 * v), d1);
                        d2 = _mm256_fmadd_ps(qv[v], _mm256_loadu_ps(k2 + 8 * v), d2);
                        d3 = _mm256_fmadd_ps(qv[v], _mm256_loadu_ps(k3 + 8 * v), d3);
                    }
                    __m128 s4 =
                        _mm_mul_ps(attn_hsum4(d0, d1, d2, d3), _mm256_castps256_ps128(scale));
                    vmax = _mm_max_ps(vmax, s4);
                    if (j + 4 <= j_hi) {
                        _mm_storeu_ps(sc + j, s4);
                    } else {
                        float tmp4[4];
                        _mm_storeu_ps(tmp4, s4);
                        memcpy(sc + j, tmp4, (size_t)(j_hi - j) * sizeof(float));
                    }
                }
                vmax = _mm_max_ps(vmax, _mm_movehl_ps(vmax, vmax));
                vmax = _mm_max_ss(vmax, _mm_movehdup_ps(vmax));
                float bmax = _mm_cvtss_f32(vmax);
                float m_new = m[r] > bmax ? m[r] : bmax;
                float corr = expf(m[r] - m_new); /* 0 on the first block (m = -inf) */
                /* p = exp(s - m_new) in place, eight at a time (lanes past j_hi unused) */
                __m256 mv = _mm256_set1_ps(m_new);
                for (int j = j_lo; j < j_hi; j += 8) {
                    __m256 x;
                    if (j + 8 <= j_hi) {
                        x = _mm256_loadu_ps(sc + j);
                    } else {
                        float tmp8[8] = {0};
                        memcpy(tmp8, sc + j, (size_t)(j_hi - j) * sizeof(float));
                        x = _mm256_loadu_ps(tmp8);
                    }
                    __m256 p = cpu_exp_avx2(_mm256_sub_ps(x, mv));
                    if (j + 8 <= j_hi) {
                        _mm256_storeu_ps(sc + j, p);
                    } else {
                        float tmp8[8];
                        _mm256_storeu_ps(tmp8, p);
                        memcpy(sc + j, tmp8, (size_t)(j_hi - j) * sizeof(float));
                    }
                }
                float *ar = acc + (size_t)r * HD;
                __m256 av[NV_MAX];
                const __m256 cv = _mm256_set1_ps(corr);
                for (int v = 0; v < NV; v++) av[v] = _mm256_mul_ps(_mm256_loadu_ps(ar + 8 * v), cv);
                float sum = 0;
                for (int j = j_lo; j < j_hi; j++) {
                    sum += sc[j];
                    const __m256 pv = _mm256_set1_ps(sc[j]);
                    const float *vr = vb + (size_t)j * HD;
                    for (int v = 0; v < NV; v++)
                        av[v] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr + 8 * v), av[v]);
                }
                for (int v = 0; v < NV; v++) _mm256_storeu_ps(ar + 8 * v, av[v]);
                l[r] = l[r] * corr + sum;
                m[r] = m_new;
            }
        }
    }
    for (int t = t0; t < t1; t++)
        for (int gi = 0; gi < g; gi++) {
            int r = (t - t0) * g + gi;
            float *o = a->out + ((size_t)(s->q_start + t) * a->n_heads + h * g + gi) * HD;
            float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f;
            for (int i = 0; i < HD; i++) o[i] = acc[(size_t)r * HD + i] * inv;
        }
}

ATTN_TARGET static void attn_item_avx2_64(const attn_args *a, int64_t item, float *scratch) {
    attn_item_avx2_hd(a, item, scratch, 64);
}
ATTN_TARGET static void attn_item_avx2_128(const attn_args *a, int64_t item, float *scratch) {
    attn_item_avx2_hd(a, item, scratch, 128);
}
#endif

static void attn_items(void *arg, int64_t i0, int64_t i1, int thread) {
    const attn_args *a = arg;
    float *scratch = a->scratch + (size_t)thread * a->per_thread;
#if defined(__x86_64__)
    if (a->avx2 && a->kv->head_dim == 64) {
        for (int64_t i = i0; i < i1; i++) attn_item_avx2_64(a, i, scratch);
        return;
    }
    if (a->avx2 && a->kv->head_dim == 128) {
        for (int64_t i = i0; i < i1; i++) attn_item_avx2_128(a, i, scratch);
        return;
    }
#endif
    for (int64_t i = i0; i < i1; i++) attn_item(a, i, scratch);
}

void cpu_attention(cpu_pool *pool, cpu_attn_scratch *scr, float *out, const float *q,
                   const kernel_kv_layer *kv, const kernel_attn_seq *seqs, int n_seqs,
                   int n_heads, float scale, int window, bool avx2) {
    CN_ASSERT(n_seqs > 0 && kv->n_kv_heads > 0 && n_heads % kv->n_kv_heads == 0);
    int g = n_heads / kv->n_kv_heads, hd = kv->head_dim, bs = kv->block_size;
    int q_tile = CPU_ATTN_ROWS / g > 1 ? CPU_ATTN_ROWS / g : 1;
    int rows = q_tile * g;
    size_t per_thread = (size_t)rows * hd + 2 * (size_t)rows + (size_t)bs;
    per_thread = (per_thread + 15) & ~(size_t)15; /* 64-byte apart, no false sharing */
    int n_threads = cpu_pool_n_threads(pool);

    /* Scratch grows here, before the parallel part, and is kept: one caller at a time. */
    if (per_thread > scr->per_thread) {
        float *p = aligned_alloc(64, per_thread * (size_t)n_threads * sizeof(float));
        CN_ASSERT(p); /* a few hundred KiB */
        free(scr->buf);
        scr->buf = p;
        scr->per_thread = per_thread;
    }
    if (n_seqs + 1 > scr->tile_cap) {
        int32_t *p = realloc(scr->tile_start, (size_t)(n_seqs + 1) * sizeof *p);
        CN_ASSERT(p);
        scr->tile_start = p;
        scr->tile_cap = n_seqs + 1;
    }
    int64_t items = 0;
    for (int i = 0; i < n_seqs; i++) {
        CN_ASSERT(seqs[i].n_q > 0 && seqs[i].n_q <= seqs[i].n_ctx);
        scr->tile_start[i] = (int32_t)items;
        items += (int64_t)kv->n_kv_heads * ((seqs[i].n_q + q_tile - 1) / q_tile);
    }
    scr->tile_start[n_seqs] = (int32_t)items;
    attn_args a = {out, q, kv, seqs, n_seqs, n_heads, g, q_tile, window, scale,
                   scr->tile_start, scr->buf, scr->per_thread, avx2};
    if (items == 1 || n_threads == 1) attn_items(&a, 0, items, 0);
    else cpu_pool_run(pool, attn_items, &a, items, 1);
}
