/* cpu_attention.c - flash attention over a paged KV cache.
 *
 * Work items are (sequence, KV head, tile of queries). An item takes the query heads that
 * share its KV head (GQA) for every query of its tile - up to CPU_ATTN_ROWS rows - and walks
 * the sequence's keys once, so each K/V row is loaded once for the whole group. Per row it
 * keeps the running maximum m, the running sum l and the unnormalized output acc (online
 * softmax): for each span of keys, scores s = scale * q.k over the visible keys, then
 *   m' = max(m, max s);  acc = acc * e^(m - m') + sum_j e^(s_j - m') v_j;  l likewise.
 * Spans are CPU_ATTN_SPAN positions aligned on multiples of it, whatever the block size, so a
 * row's arithmetic depends on its query and its keys only, never on the block size, on the
 * tile or on how the prompt was chunked. Only one span of scores per row exists at a time;
 * there is no score matrix. An item is computed by one thread start to end, so results do
 * not depend on the thread count.
 *
 * Pools hold F32, F16 or BF16 (kernel_kv_layer.type). kv_write rounds to nearest even; the
 * kernels widen K and V to F32 as they load them (the AVX2 ones in registers, the portable one
 * a span at a time into scratch), and compute exactly as over an F32 pool: widening is exact,
 * so a 16-bit pool gives the bits of an F32 pool holding its values. Decode reads each K/V row
 * once per item from memory, so half the bytes is most of what 16 bits buy. */
#include "cpu_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_exp.h"
#include "log.h"

/* Rows (query heads x queries) an item handles at once. */
#define CPU_ATTN_ROWS 64
/* Keys per online-softmax update: its bookkeeping (max, rescale, exp, sum) is paid once per
 * 32 keys rather than once per KV block (16 keys by default). */
#define CPU_ATTN_SPAN 32
/* Floats per row of span scores: a span plus the padding lanes of a 4-key step. */
#define CPU_ATTN_SC_W (CPU_ATTN_SPAN + 8)

/* Floats of an item's scratch for rows: acc [rows, hd], m and l [rows], span scores
 * [rows, CPU_ATTN_SC_W], the queries [rows, hd]. After it, the portable kernel widens a span
 * of 16-bit K and V rows to F32: [2, CPU_ATTN_SPAN, hd]. */
static inline size_t attn_scratch_rows(int rows, int hd) {
    return (size_t)rows * (2 * hd + 2 + CPU_ATTN_SC_W);
}

void cpu_attn_scratch_free(cpu_attn_scratch *s) {
    free(s->buf);
    free(s->tile_start);
    memset(s, 0, sizeof *s);
}

typedef struct kv_write_args {
    const kernel_kv_layer *kv;
    const float *k, *v;
    const int32_t *slots;
    bool avx2;
} kv_write_args;

/* Bytes of one value in a pool of this type. */
static inline size_t kv_elem_bytes(dtype type) {
    return type == DTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
}

#if defined(__x86_64__)
/* F16 by F16C, round to nearest even: the bits f32_to_fp16 gives (a NaN stays a NaN, with
 * F16C's payload rather than the portable one's). */
__attribute__((target("avx2,f16c"))) static void kv_row_f16_avx2(uint16_t *dst, const float *src,
                                                                 int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = f32_to_fp16(src[i]);
}
#endif

/* One head's row of n values into a pool of type type. */
static inline void kv_row_store(void *dst, const float *src, int n, dtype type, bool avx2) {
    if (type == DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (type == DTYPE_F16) {
#if defined(__x86_64__)
        if (avx2) {
            kv_row_f16_avx2(dst, src, n);
            return;
        }
#endif
        uint16_t *d = dst;
        for (int i = 0; i < n; i++) d[i] = f32_to_fp16(src[i]);
    } else {
        uint16_t *d = dst;
        for (int i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
    }
    (void)avx2;
}

static void kv_write_rows(void *arg, int64_t t0, int64_t t1, int thread) {
    const kv_write_args *a = arg;
    const kernel_kv_layer *kv = a->kv;
    int hd = kv->head_dim, bs = kv->block_size, nkv = kv->n_kv_heads;
    size_t eb = kv_elem_bytes(kv->type);
    for (int64_t t = t0; t < t1; t++) {
        int32_t slot = a->slots[t], block = slot / bs, off = slot % bs;
        CN_ASSERT(slot >= 0 && block < kv->n_blocks);
        for (int h = 0; h < nkv; h++) {
            size_t dst = (((size_t)block * nkv + h) * bs + off) * hd * eb;
            size_t src = ((size_t)t * nkv + h) * hd;
            kv_row_store((uint8_t *)kv->k + dst, a->k + src, hd, kv->type, a->avx2);
            kv_row_store((uint8_t *)kv->v + dst, a->v + src, hd, kv->type, a->avx2);
        }
    }
}

void cpu_kv_write(cpu_pool *pool, const kernel_kv_layer *kv, const float *k, const float *v,
                  const int32_t *slots, int n, bool avx2) {
    CN_ASSERT(kv->type == DTYPE_F32 || kv->type == DTYPE_F16 || kv->type == DTYPE_BF16);
    kv_write_args a = {kv, k, v, slots, avx2};
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

/* What an item computes: queries [t0, t1) of sequence s, KV head h; rows (t - t0) * group + gi. */
typedef struct attn_tile {
    const kernel_attn_seq *s;
    int h, t0, t1, rows;
    int32_t first_pos;      /* position of query 0 */
    int32_t lo_pos, hi_pos; /* keys visible to any row of the tile */
} attn_tile;

static inline attn_tile attn_tile_of(const attn_args *a, int64_t item) {
    /* Which sequence: the last whose first item is <= item. */
    int lo = 0, hi = a->n_seqs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (a->tile_start[mid] <= item)
            lo = mid;
        else
            hi = mid - 1;
    }
    attn_tile t;
    t.s = &a->seqs[lo];
    int64_t local = item - a->tile_start[lo];
    int n_tiles = (t.s->n_q + a->q_tile - 1) / a->q_tile;
    /* A head's last tiles, which see the most keys, first: the pool hands items out in order,
     * so the small ones are left to even the threads out at the end. */
    t.h = (int)(local / n_tiles);
    int tile = n_tiles - 1 - (int)(local % n_tiles);
    t.t0 = tile * a->q_tile;
    t.t1 = t.t0 + a->q_tile < t.s->n_q ? t.t0 + a->q_tile : t.s->n_q;
    t.rows = (t.t1 - t.t0) * a->group;
    t.first_pos = t.s->n_ctx - t.s->n_q;
    t.hi_pos = t.first_pos + t.t1 - 1;
    t.lo_pos = a->window > 0 ? t.first_pos + t.t0 - a->window + 1 : 0;
    if (t.lo_pos < 0) t.lo_pos = 0;
    return t;
}

/* The offsets [j_beg, j_end) of the span from p0 that a tile's positions [lo, hi] cover. */
static inline void attn_span_bounds(int32_t lo, int32_t hi, int32_t p0, int *j_beg, int *j_end) {
    *j_beg = lo > p0 ? lo - p0 : 0;
    *j_end = hi - p0 + 1 < CPU_ATTN_SPAN ? hi - p0 + 1 : CPU_ATTN_SPAN;
}

/* Pointers to the K and V rows of positions [p, p + n) for KV head h, in the pool's type. */
static inline void attn_span_rows(const kernel_kv_layer *kv, const int32_t *table, int h, int32_t p,
                                  int n, const void **kr, const void **vr) {
    int bs = kv->block_size;
    int32_t b = p / bs, off = p % bs;
    size_t eb = kv_elem_bytes(kv->type);
    for (int j = 0; j < n; j++) {
        size_t row = (((size_t)table[b] * kv->n_kv_heads + h) * bs + off) * kv->head_dim * eb;
        kr[j] = (const uint8_t *)kv->k + row;
        vr[j] = (const uint8_t *)kv->v + row;
        if (++off == bs) off = 0, b++;
    }
}

/* A K or V row as F32: the row itself in an F32 pool, else widened into buf (exactly: every
 * F16 and BF16 value is an F32 value). */
static inline const float *attn_row_f32(const void *row, dtype type, float *buf, int hd) {
    const uint16_t *h = row;
    if (type == DTYPE_F32) return row;
    if (type == DTYPE_F16)
        for (int i = 0; i < hd; i++) buf[i] = fp16_to_f32(h[i]);
    else
        for (int i = 0; i < hd; i++) buf[i] = bf16_to_f32(h[i]);
    return buf;
}

/* The keys of the span at position p0 that the query at qpos sees: [*jlo, *jhi), relative to
 * p0 (empty when *jhi <= *jlo). Both bounds grow with qpos. */
static inline void attn_span_range(int32_t qpos, int32_t p0, int window, int *jlo, int *jhi) {
    int32_t lo = window > 0 ? qpos - window + 1 - p0 : 0, hi = qpos - p0 + 1;
    *jlo = lo > 0 ? (int)lo : 0;
    *jhi = hi < CPU_ATTN_SPAN ? (int)hi : CPU_ATTN_SPAN;
}

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
    attn_tile tl = attn_tile_of(a, item);
    const kernel_attn_seq *s = tl.s;
    int hd = a->kv->head_dim, g = a->group, rows = tl.rows;
    float *acc = scratch, *m = acc + (size_t)rows * hd, *l = m + rows, *sc = l + rows;
    float *wk = scratch + attn_scratch_rows(rows, hd), *wv = wk + (size_t)CPU_ATTN_SPAN * hd;
    for (int r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0;
    memset(acc, 0, (size_t)rows * hd * sizeof(float));

    const void *kp[CPU_ATTN_SPAN], *vp[CPU_ATTN_SPAN];
    const float *kr[CPU_ATTN_SPAN], *vr[CPU_ATTN_SPAN];
    for (int32_t p0 = tl.lo_pos / CPU_ATTN_SPAN * CPU_ATTN_SPAN; p0 <= tl.hi_pos;
         p0 += CPU_ATTN_SPAN) {
        int j_beg, j_end;
        attn_span_bounds(tl.lo_pos, tl.hi_pos, p0, &j_beg, &j_end);
        attn_span_rows(a->kv, s->block_table, tl.h, p0 + j_beg, j_end - j_beg, kp + j_beg,
                       vp + j_beg);
        for (int j = j_beg; j < j_end; j++) {
            kr[j] = attn_row_f32(kp[j], a->kv->type, wk + (size_t)j * hd, hd);
            vr[j] = attn_row_f32(vp[j], a->kv->type, wv + (size_t)j * hd, hd);
        }
        for (int t = tl.t0; t < tl.t1; t++) {
            int j_lo, j_hi;
            attn_span_range(tl.first_pos + t, p0, a->window, &j_lo, &j_hi);
            if (j_hi <= j_lo) continue;
            for (int gi = 0; gi < g; gi++) {
                int r = (t - tl.t0) * g + gi;
                const float *qr =
                    a->q + ((size_t)(s->q_start + t) * a->n_heads + tl.h * g + gi) * hd;
                float bmax = -INFINITY;
                for (int j = j_lo; j < j_hi; j++) {
                    sc[j] = attn_dot(qr, kr[j], hd) * a->scale;
                    if (sc[j] > bmax) bmax = sc[j];
                }
                float m_new = m[r] > bmax ? m[r] : bmax;
                float corr = expf(m[r] - m_new); /* 0 on the first span (m = -inf) */
                float *ar = acc + (size_t)r * hd;
                if (corr != 1.0f)
                    for (int i = 0; i < hd; i++) ar[i] *= corr;
                float sum = 0;
                for (int j = j_lo; j < j_hi; j++) {
                    float p = expf(sc[j] - m_new);
                    sum += p;
                    for (int i = 0; i < hd; i++) ar[i] += p * vr[j][i];
                }
                l[r] = l[r] * corr + sum;
                m[r] = m_new;
            }
        }
    }
    for (int t = tl.t0; t < tl.t1; t++)
        for (int gi = 0; gi < g; gi++) {
            int r = (t - tl.t0) * g + gi;
            float *o = a->out + ((size_t)(s->q_start + t) * a->n_heads + tl.h * g + gi) * hd;
            float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f; /* every query sees itself, so l > 0 */
            for (int i = 0; i < hd; i++) o[i] = acc[(size_t)r * hd + i] * inv;
        }
}

#if defined(__x86_64__)
/* The same item in AVX2 for a head dim HD of 64 or 128, with exp as a polynomial (cpu_exp.h).
 * Rows go in groups that share each K and V load: six (else three) rows that see the same
 * keys of the span - in every span of a prefill tile but the diagonal ones, in all of a
 * decode item's - else pairs, else one row alone. Grouping is for speed only: each row's
 * arithmetic is a fixed function of its own query and the keys it sees, whichever group it
 * goes in:
 *   - a score: the 8-lane products of q and k summed over HD in order, then one fixed tree
 *     (attn_hsum4), times scale;
 *   - the span's maximum (exact in any order); e^(s - m') by the polynomial (elementwise);
 *   - the span's sum of e^(s - m') by span lane (key position mod 8, 0 for keys not seen,
 *     which adds nothing), then one fixed tree;
 *   - acc * e^(m - m'), then one FMA per key seen, in key order. */
#define ATTN_TARGET __attribute__((target("avx2,fma,f16c")))
#define ATTN_INLINE static inline __attribute__((always_inline))

/* [dot(a0), dot(a1), dot(a2), dot(a3)] from four 8-lane partial sums */
ATTN_TARGET ATTN_INLINE __m128 attn_hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 u0 = _mm256_add_ps(_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
    __m256 u1 = _mm256_add_ps(_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
    __m256 w = _mm256_add_ps(_mm256_shuffle_ps(u0, u1, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(u0, u1, _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm_add_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps(w, 1));
}

/* Values [i, i + 8) of a K or V row of type T, as F32 (exact: F16 by F16C, BF16 by a shift
 * into the high half). */
ATTN_TARGET ATTN_INLINE __m256 attn_kv(const void *row, int i, const dtype T) {
    if (T == DTYPE_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
    if (T == DTYPE_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i))),
            16));
    return _mm256_loadu_ps((const float *)row + i);
}

/* The same for R rows: with R > 1 held in a register, else GCC folds an F32 load into each
 * row's FMA and loads the vector R times. */
ATTN_TARGET ATTN_INLINE __m256 attn_load(const void *row, int i, const int R, const dtype T) {
    __m256 x = attn_kv(row, i, T);
    if (R > 1) __asm__("" : "+x"(x));
    return x;
}

/* Scores of keys [j_lo, j_hi) of the span for R (1 or 2) rows into sc[r][j], four keys at a
 * time (a key past the last is a copy of it; up to 3 lanes past j_hi are written). */
ATTN_TARGET ATTN_INLINE void attn_scores(const float *const *q, float *const *sc,
                                         const void *const *kr, int j_lo, int j_hi, __m128 scale,
                                         const int R, const int HD, const dtype T) {
    enum { NV_MAX = 16 };
    const int NV = HD / 8;
    __m256 q0[NV_MAX];
    if (R == 1)
        for (int v = 0; v < NV; v++) q0[v] = _mm256_loadu_ps(q[0] + 8 * v);
    for (int j = j_lo; j < j_hi; j += 4) {
        const void *k0 = kr[j];
        const void *k1 = j + 1 < j_hi ? kr[j + 1] : k0;
        const void *k2 = j + 2 < j_hi ? kr[j + 2] : k0;
        const void *k3 = j + 3 < j_hi ? kr[j + 3] : k0;
        __m256 d[2][4];
        {
            __m256 kv0 = attn_load(k0, 0, R, T), kv1 = attn_load(k1, 0, R, T);
            __m256 kv2 = attn_load(k2, 0, R, T), kv3 = attn_load(k3, 0, R, T);
            for (int r = 0; r < R; r++) {
                __m256 qv = R == 1 ? q0[0] : _mm256_loadu_ps(q[r]);
                d[r][0] = _mm256_mul_ps(qv, kv0);
                d[r][1] = _mm256_mul_ps(qv, kv1);
                d[r][2] = _mm256_mul_ps(qv, kv2);
                d[r][3] = _mm256_mul_ps(qv, kv3);
            }
        }
        for (int v = 1; v < NV; v++) {
            __m256 kv0 = attn_load(k0, 8 * v, R, T), kv1 = attn_load(k1, 8 * v, R, T);
            __m256 kv2 = attn_load(k2, 8 * v, R, T), kv3 = attn_load(k3, 8 * v, R, T);
            for (int r = 0; r < R; r++) {
                __m256 qv = R == 1 ? q0[v] : _mm256_loadu_ps(q[r] + 8 * v);
                d[r][0] = _mm256_fmadd_ps(qv, kv0, d[r][0]);
                d[r][1] = _mm256_fmadd_ps(qv, kv1, d[r][1]);
                d[r][2] = _mm256_fmadd_ps(qv, kv2, d[r][2]);
                d[r][3] = _mm256_fmadd_ps(qv, kv3, d[r][3]);
            }
        }
        for (int r = 0; r < R; r++)
            _mm_storeu_ps(sc[r] + j,
                          _mm_mul_ps(attn_hsum4(d[r][0], d[r][1], d[r][2], d[r][3]), scale));
    }
}

/* The online-softmax update of one row over its keys [j_lo, j_hi) of the span: sc (scores,
 * CPU_ATTN_SPAN of them) becomes e^(s - m') there and 0 elsewhere; m and l move on. Returns
 * e^(m - m'), the factor for acc. */
ATTN_TARGET ATTN_INLINE float attn_softmax(float *sc, int j_lo, int j_hi, float *m, float *l) {
    enum { NC = CPU_ATTN_SPAN / 8 };
    const __m256 lo = _mm256_set1_ps((float)j_lo), hi = _mm256_set1_ps((float)j_hi);
    __m256 idx = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), s[NC], seen[NC];
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (int c = 0; c < NC; c++) {
        seen[c] =
            _mm256_and_ps(_mm256_cmp_ps(idx, lo, _CMP_GE_OQ), _mm256_cmp_ps(idx, hi, _CMP_LT_OQ));
        s[c] = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_loadu_ps(sc + 8 * c), seen[c]);
        vmax = _mm256_max_ps(vmax, s[c]);
        idx = _mm256_add_ps(idx, _mm256_set1_ps(8));
    }
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    float bmax = _mm_cvtss_f32(x);
    float m_new = *m > bmax ? *m : bmax;
    float corr = expf(*m - m_new); /* 0 on the first span (m = -inf) */
    const __m256 mv = _mm256_set1_ps(m_new);
    __m256 p[NC];
    for (int c = 0; c < NC; c++) {
        p[c] = _mm256_and_ps(seen[c], cpu_exp_avx2(_mm256_sub_ps(s[c], mv)));
        _mm256_storeu_ps(sc + 8 * c, p[c]);
    }
    for (int w = 1; w < NC; w *= 2) /* pairwise: (p0 + p1) + (p2 + p3) for 4 */
        for (int c = 0; c < NC; c += 2 * w) p[c] = _mm256_add_ps(p[c], p[c + w]);
    x = _mm_add_ps(_mm256_castps256_ps128(p[0]), _mm256_extractf128_ps(p[0], 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    *l = *l * corr + _mm_cvtss_f32(x);
    *m = m_new;
    return corr;
}

/* acc += p[j] v_j for keys [j_lo, j_hi), over the 8 * N values of acc (in registers). */
ATTN_TARGET ATTN_INLINE void attn_v1(__m256 *acc, const float *p, const void *const *vr, int off,
                                     int j_lo, int j_hi, const int N, const dtype T) {
    for (int j = j_lo; j < j_hi; j++) {
        const __m256 pv = _mm256_set1_ps(p[j]);
        for (int v = 0; v < N; v++)
            acc[v] = _mm256_fmadd_ps(pv, attn_kv(vr[j], off + 8 * v, T), acc[v]);
    }
}

/* One row alone over its keys [j_lo, j_hi) of the span. */
ATTN_TARGET ATTN_INLINE void attn_row1(const float *q, float *sc, float *acc, float *m, float *l,
                                       const void *const *kr, const void *const *vr, int j_lo,
                                       int j_hi, __m128 scale, const int HD, const dtype T) {
    enum { NV_MAX = 16 };
    const int NV = HD / 8;
    attn_scores(&q, &sc, kr, j_lo, j_hi, scale, 1, HD, T);
    const __m256 cv = _mm256_set1_ps(attn_softmax(sc, j_lo, j_hi, m, l));
    __m256 av[NV_MAX];
    for (int v = 0; v < NV; v++) av[v] = _mm256_mul_ps(_mm256_loadu_ps(acc + 8 * v), cv);
    attn_v1(av, sc, vr, 0, j_lo, j_hi, NV, T);
    for (int v = 0; v < NV; v++) _mm256_storeu_ps(acc + 8 * v, av[v]);
}

/* Rows a and b together, a's query before b's (or the same): a sees [lo_a, hi_a), b
 * [lo_b, hi_b), lo_a <= lo_b and hi_a <= hi_b. */
ATTN_TARGET ATTN_INLINE void attn_row2(const float *qa, const float *qb, float *sca, float *scb,
                                       float *acca, float *accb, float *m, float *l,
                                       const void *const *kr, const void *const *vr, int lo_a,
                                       int hi_a, int lo_b, int hi_b, __m128 scale, const int HD,
                                       const dtype T) {
    const float *q[2] = {qa, qb};
    float *sc[2] = {sca, scb};
    attn_scores(q, sc, kr, lo_a, hi_b, scale, 2, HD, T);
    const __m256 ca = _mm256_set1_ps(attn_softmax(sca, lo_a, hi_a, &m[0], &l[0]));
    const __m256 cb = _mm256_set1_ps(attn_softmax(scb, lo_b, hi_b, &m[1], &l[1]));
    /* keys a alone sees, then both, then b alone: each row still takes its keys in order */
    int both_lo = lo_b, both_hi = hi_a < lo_b ? lo_b : hi_a;
    int a_end = hi_a < lo_b ? hi_a : lo_b;
    /* 32 values of both rows at a time: 8 accumulators, each V load used twice */
    for (int off = 0; off < HD; off += 32) {
        __m256 a4[4], b4[4];
        for (int v = 0; v < 4; v++) {
            a4[v] = _mm256_mul_ps(_mm256_loadu_ps(acca + off + 8 * v), ca);
            b4[v] = _mm256_mul_ps(_mm256_loadu_ps(accb + off + 8 * v), cb);
        }
        attn_v1(a4, sca, vr, off, lo_a, a_end, 4, T);
        for (int j = both_lo; j < both_hi; j++) {
            const __m256 pa = _mm256_set1_ps(sca[j]), pb = _mm256_set1_ps(scb[j]);
            for (int v = 0; v < 4; v++) {
                const __m256 vv = attn_load(vr[j], off + 8 * v, 2, T);
                a4[v] = _mm256_fmadd_ps(pa, vv, a4[v]);
                b4[v] = _mm256_fmadd_ps(pb, vv, b4[v]);
            }
        }
        attn_v1(b4, scb, vr, off, both_hi, hi_b, 4, T);
        for (int v = 0; v < 4; v++) {
            _mm256_storeu_ps(acca + off + 8 * v, a4[v]);
            _mm256_storeu_ps(accb + off + 8 * v, b4[v]);
        }
    }
}

/* The K and V rows of the next span of a decode item (n of them; 0: none or not streamed),
 * prefetched while this span is computed. */
typedef struct attn_next {
    const void *k[CPU_ATTN_SPAN], *v[CPU_ATTN_SPAN];
    int n;
} attn_next;

/* Prefetches n K or V rows (of head dim HD, type T) into L1; nothing when n <= 0. */
ATTN_TARGET ATTN_INLINE void attn_prefetch_rows(const void *const *rows, int n, const int HD,
                                                const dtype T) {
    const int bytes = HD * (int)kv_elem_bytes(T);
    for (int j = 0; j < n; j++)
        for (int b = 0; b < bytes; b += 64) _mm_prefetch((const char *)rows[j] + b, _MM_HINT_T0);
}

/* R rows (ATTN_WIDE or 3), consecutive in q, sc and acc, that all see keys [j_lo, j_hi) of
 * the span: scores two keys x R rows at a time, V sixteen values x R rows. Six rows make
 * twelve FMA chains with 2/3 of a K or V load per FMA (a pair: eight chains, 3/4). */
#define ATTN_WIDE 6
ATTN_TARGET ATTN_INLINE void attn_rows_wide(const float *q, float *sc, float *acc, float *m,
                                            float *l, const void *const *kr, const void *const *vr,
                                            int j_lo, int j_hi, const attn_next *nx, __m128 scale,
                                            const int R, const int HD, const dtype T) {
    enum { W = CPU_ATTN_SC_W, KJ_MAX = 4, NS_MAX = 4 };
    const int NV = HD / 8;
    /* keys per score step and vectors per V slice: twelve FMA chains either way (six rows:
     * 2 x 6, 2 x 6; three: 4 x 3, 4 x 3), with the queries read from L1 */
    const int KJ = R <= 3 ? 4 : 2, NS = R <= 3 ? 4 : 2;
    int pf = 0; /* next-span keys prefetched so far */
    for (int j = j_lo; j < j_hi; j += KJ) {
        if (pf < nx->n) {
            int cnt = nx->n - pf < KJ ? nx->n - pf : KJ;
            attn_prefetch_rows(nx->k + pf, cnt, HD, T);
            attn_prefetch_rows(nx->v + pf, cnt, HD, T);
            pf += cnt;
        }
        const void *k[KJ_MAX];
        for (int e = 0; e < KJ; e++) k[e] = j + e < j_hi ? kr[j + e] : kr[j];
        __m256 d[ATTN_WIDE][KJ_MAX], kv[KJ_MAX];
        for (int e = 0; e < KJ; e++) kv[e] = attn_load(k[e], 0, R, T);
        for (int r = 0; r < R; r++) {
            __m256 qv = _mm256_loadu_ps(q + r * HD);
            for (int e = 0; e < KJ; e++) d[r][e] = _mm256_mul_ps(qv, kv[e]);
        }
        for (int v = 1; v < NV; v++) {
            for (int e = 0; e < KJ; e++) kv[e] = attn_load(k[e], 8 * v, R, T);
            for (int r = 0; r < R; r++) {
                __m256 qv = _mm256_loadu_ps(q + r * HD + 8 * v);
                for (int e = 0; e < KJ; e++) d[r][e] = _mm256_fmadd_ps(qv, kv[e], d[r][e]);
            }
        }
        /* attn_hsum4 reduces each of its four inputs by the same tree, in whichever slot */
        if (KJ == 4) {
            for (int r = 0; r < R; r++)
                _mm_storeu_ps(sc + r * W + j,
                              _mm_mul_ps(attn_hsum4(d[r][0], d[r][1], d[r][2], d[r][3]), scale));
        } else {
            for (int r = 0; r < R; r += 2) {
                int r1 = r + 1 < R ? r + 1 : r;
                __m128 x = _mm_mul_ps(attn_hsum4(d[r][0], d[r][1], d[r1][0], d[r1][1]), scale);
                _mm_storel_pi((__m64 *)(sc + r * W + j), x);
                _mm_storeh_pi((__m64 *)(sc + r1 * W + j), x);
            }
        }
    }
    attn_prefetch_rows(nx->k + pf, nx->n - pf, HD, T);
    attn_prefetch_rows(nx->v + pf, nx->n - pf, HD, T);
    __m256 cv[ATTN_WIDE];
    for (int r = 0; r < R; r++)
        cv[r] = _mm256_set1_ps(attn_softmax(sc + r * W, j_lo, j_hi, &m[r], &l[r]));
    for (int off = 0; off < HD; off += 8 * NS) {
        __m256 av[ATTN_WIDE][NS_MAX];
        for (int r = 0; r < R; r++)
            for (int v = 0; v < NS; v++)
                av[r][v] = _mm256_mul_ps(_mm256_loadu_ps(acc + r * HD + off + 8 * v), cv[r]);
        for (int j = j_lo; j < j_hi; j++) {
            if (R <= 3) { /* R weights, then one V vector at a time: 12 + 3 + 1 registers */
                __m256 pv[3];
                for (int r = 0; r < R; r++) pv[r] = _mm256_set1_ps(sc[r * W + j]);
                for (int v = 0; v < NS; v++) {
                    const __m256 x = attn_load(vr[j], off + 8 * v, R, T);
                    for (int r = 0; r < R; r++) av[r][v] = _mm256_fmadd_ps(pv[r], x, av[r][v]);
                }
            } else { /* the NS V vectors, then a row's weight at a time: 12 + 2 + 1 */
                __m256 x[NS_MAX];
                for (int v = 0; v < NS; v++) x[v] = attn_load(vr[j], off + 8 * v, R, T);
                for (int r = 0; r < R; r++) {
                    const __m256 pv = _mm256_set1_ps(sc[r * W + j]);
                    for (int v = 0; v < NS; v++) av[r][v] = _mm256_fmadd_ps(pv, x[v], av[r][v]);
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int v = 0; v < NS; v++) _mm256_storeu_ps(acc + r * HD + off + 8 * v, av[r][v]);
    }
}

/* The K and V rows of span si of tile t (counted from its first) into nx; none past its end. */
ATTN_TARGET ATTN_INLINE void attn_span_of(const attn_args *a, const attn_tile *t, int si,
                                          attn_next *nx) {
    int32_t p0 = t->lo_pos / CPU_ATTN_SPAN * CPU_ATTN_SPAN + si * CPU_ATTN_SPAN;
    nx->n = 0;
    if (p0 > t->hi_pos) return;
    int j_beg, j_end;
    attn_span_bounds(t->lo_pos, t->hi_pos, p0, &j_beg, &j_end);
    nx->n = j_end - j_beg;
    attn_span_rows(a->kv, t->s->block_table, t->h, p0 + j_beg, nx->n, nx->k, nx->v);
}

ATTN_TARGET ATTN_INLINE void attn_item_avx2_hd(const attn_args *a, int64_t item, int64_t next,
                                               float *scratch, const int HD, const dtype T) {
    attn_tile tl = attn_tile_of(a, item);
    const kernel_attn_seq *s = tl.s;
    int g = a->group, rows = tl.rows;
    float *acc = scratch, *m = acc + (size_t)rows * HD, *l = m + rows, *sc = l + rows;
    float *qt = sc + (size_t)rows * CPU_ATTN_SC_W; /* the rows' queries, row after row */
    for (int r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0;
    memset(acc, 0, (size_t)rows * HD * sizeof(float));
    for (int t = tl.t0; t < tl.t1; t++)
        memcpy(qt + (size_t)(t - tl.t0) * g * HD,
               a->q + ((size_t)(s->q_start + t) * a->n_heads + tl.h * g) * HD,
               (size_t)g * HD * sizeof(float));
    const __m128 scale = _mm_set1_ps(a->scale);
#define ATTN_Q(r) (qt + (size_t)(r)*HD)

    /* A decode item (one query, its group's rows together) reads its keys from memory once
     * with few FMAs per byte: the score loop prefetches the next span's K and V a few keys
     * at a time (past the item's last span, the first span of the next item of the thread's
     * range), which keeps a steady number of lines in flight; a burst of a whole span's
     * prefetches at once fills the miss queue and stalls. Together ~25% off batch-32 decode
     * attention over an F16 pool (the profile's share of it, against the unchanged GEMM). */
    const bool stream = tl.t1 - tl.t0 == 1 && rows >= 3;
    const int32_t p_first = tl.lo_pos / CPU_ATTN_SPAN * CPU_ATTN_SPAN;
    const int n_spans = (tl.hi_pos - p_first) / CPU_ATTN_SPAN + 1;
    attn_tile tn = {0};
    if (stream && next >= 0) tn = attn_tile_of(a, next);
    const void *kr[CPU_ATTN_SPAN], *vr[CPU_ATTN_SPAN];
    attn_next nx = {.n = 0}, none = {.n = 0};
    for (int si = 0; si < n_spans; si++) {
        const int32_t p0 = p_first + si * CPU_ATTN_SPAN;
        int j_beg, j_end;
        attn_span_bounds(tl.lo_pos, tl.hi_pos, p0, &j_beg, &j_end);
        attn_span_rows(a->kv, s->block_table, tl.h, p0 + j_beg, j_end - j_beg, kr + j_beg,
                       vr + j_beg);
        if (stream) {
            if (si == 0) { /* in cache already when the item before was this thread's */
                attn_prefetch_rows(kr + j_beg, j_end - j_beg, HD, T);
                attn_prefetch_rows(vr + j_beg, j_end - j_beg, HD, T);
            }
            /* the next span, from the last one the next item's first */
            if (si + 1 < n_spans)
                attn_span_of(a, &tl, si + 1, &nx);
            else if (next >= 0 && tn.t1 - tn.t0 == 1)
                attn_span_of(a, &tn, 0, &nx);
            else
                nx.n = 0;
        } else { /* a prefill tile: this span's V and the next span's K, all at once */
            attn_prefetch_rows(vr + j_beg, j_end - j_beg, HD, T);
            attn_span_of(a, &tl, si + 1, &nx);
            attn_prefetch_rows(nx.k, nx.n, HD, T);
            nx.n = 0; /* not streamed by the score loop */
        }
        bool first_wide = true; /* the first wide group of rows prefetches the next span */
        for (int r = 0; r < rows;) {
            int n_wide = rows - r >= ATTN_WIDE ? ATTN_WIDE : rows - r >= 3 ? 3 : 0;
            if (n_wide) {
                int lo0, hi0, lo1, hi1;
                attn_span_range(tl.first_pos + tl.t0 + r / g, p0, a->window, &lo0, &hi0);
                attn_span_range(tl.first_pos + tl.t0 + (r + n_wide - 1) / g, p0, a->window, &lo1,
                                &hi1);
                if (lo0 == lo1 && hi0 == hi1 && hi0 > lo0) { /* bounds grow with r: all equal */
                    float *scr = sc + (size_t)r * CPU_ATTN_SC_W, *accr = acc + (size_t)r * HD;
                    const attn_next *pn = first_wide ? &nx : &none;
                    first_wide = false;
                    if (n_wide == ATTN_WIDE)
                        attn_rows_wide(ATTN_Q(r), scr, accr, m + r, l + r, kr, vr, lo0, hi0, pn,
                                       scale, ATTN_WIDE, HD, T);
                    else
                        attn_rows_wide(ATTN_Q(r), scr, accr, m + r, l + r, kr, vr, lo0, hi0, pn,
                                       scale, 3, HD, T);
                    r += n_wide;
                    continue;
                }
            }
            int lo_a, hi_a, lo_b = 0, hi_b = 0;
            attn_span_range(tl.first_pos + tl.t0 + r / g, p0, a->window, &lo_a, &hi_a);
            if (r + 1 < rows)
                attn_span_range(tl.first_pos + tl.t0 + (r + 1) / g, p0, a->window, &lo_b, &hi_b);
            bool ra = hi_a > lo_a, rb = hi_b > lo_b;
            float *sca = sc + (size_t)r * CPU_ATTN_SC_W, *acca = acc + (size_t)r * HD;
            if (ra && rb)
                attn_row2(ATTN_Q(r), ATTN_Q(r + 1), sca, sca + CPU_ATTN_SC_W, acca, acca + HD,
                          m + r, l + r, kr, vr, lo_a, hi_a, lo_b, hi_b, scale, HD, T);
            else if (ra)
                attn_row1(ATTN_Q(r), sca, acca, m + r, l + r, kr, vr, lo_a, hi_a, scale, HD, T);
            else if (rb)
                attn_row1(ATTN_Q(r + 1), sca + CPU_ATTN_SC_W, acca + HD, m + r + 1, l + r + 1, kr,
                          vr, lo_b, hi_b, scale, HD, T);
            r += 2;
        }
    }
#undef ATTN_Q
    for (int t = tl.t0; t < tl.t1; t++)
        for (int gi = 0; gi < g; gi++) {
            int r = (t - tl.t0) * g + gi;
            float *o = a->out + ((size_t)(s->q_start + t) * a->n_heads + tl.h * g + gi) * HD;
            float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f;
            for (int i = 0; i < HD; i++) o[i] = acc[(size_t)r * HD + i] * inv;
        }
}

/* One instance per head dim and pool type. */
#define ATTN_ITEM_AVX2(name, HD, T)                                                                \
    ATTN_TARGET static void name(const attn_args *a, int64_t i0, int64_t i1, float *scratch) {     \
        for (int64_t i = i0; i < i1; i++)                                                          \
            attn_item_avx2_hd(a, i, i + 1 < i1 ? i + 1 : -1, scratch, HD, T);                      \
    }
ATTN_ITEM_AVX2(attn_items_avx2_64_f32, 64, DTYPE_F32)
ATTN_ITEM_AVX2(attn_items_avx2_64_f16, 64, DTYPE_F16)
ATTN_ITEM_AVX2(attn_items_avx2_64_bf16, 64, DTYPE_BF16)
ATTN_ITEM_AVX2(attn_items_avx2_128_f32, 128, DTYPE_F32)
ATTN_ITEM_AVX2(attn_items_avx2_128_f16, 128, DTYPE_F16)
ATTN_ITEM_AVX2(attn_items_avx2_128_bf16, 128, DTYPE_BF16)
#undef ATTN_ITEM_AVX2

typedef void (*attn_items_fn)(const attn_args *a, int64_t i0, int64_t i1, float *scratch);
#endif

static void attn_items(void *arg, int64_t i0, int64_t i1, int thread) {
    const attn_args *a = arg;
    float *scratch = a->scratch + (size_t)thread * a->per_thread;
#if defined(__x86_64__)
    if (a->avx2 && (a->kv->head_dim == 64 || a->kv->head_dim == 128)) {
        static const attn_items_fn fns[2][3] = {
            {attn_items_avx2_64_f32, attn_items_avx2_64_f16, attn_items_avx2_64_bf16},
            {attn_items_avx2_128_f32, attn_items_avx2_128_f16, attn_items_avx2_128_bf16}};
        int t = a->kv->type == DTYPE_F16 ? 1 : a->kv->type == DTYPE_BF16 ? 2 : 0;
        fns[a->kv->head_dim == 128][t](a, i0, i1, scratch);
        return;
    }
#endif
    for (int64_t i = i0; i < i1; i++) attn_item(a, i, scratch);
}

/* Items per range handed to a thread: a decode item prefetches the next one of its range
 * while it finishes, so ranges of a sequence's KV heads, while there are at least eight per
 * thread to even the threads out. */
static int64_t attn_grain(int64_t items, int n_kv_heads, int n_threads) {
    int64_t g = items / (8 * (int64_t)n_threads);
    return g < 1 ? 1 : g < n_kv_heads ? g : n_kv_heads;
}

void cpu_attention(cpu_pool *pool, cpu_attn_scratch *scr, float *out, const float *q,
                   const kernel_kv_layer *kv, const kernel_attn_seq *seqs, int n_seqs,
                   int n_heads, float scale, int window, bool avx2) {
    CN_ASSERT(n_seqs > 0 && kv->n_kv_heads > 0 && n_heads % kv->n_kv_heads == 0);
    int g = n_heads / kv->n_kv_heads, hd = kv->head_dim;
    int q_tile = CPU_ATTN_ROWS / g > 1 ? CPU_ATTN_ROWS / g : 1;
    int rows = q_tile * g;
    CN_ASSERT(kv->type == DTYPE_F32 || kv->type == DTYPE_F16 || kv->type == DTYPE_BF16);
    size_t per_thread = attn_scratch_rows(rows, hd) + 2 * (size_t)CPU_ATTN_SPAN * hd;
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
    if (items == 1 || n_threads == 1)
        attn_items(&a, 0, items, 0);
    else
        cpu_pool_run(pool, attn_items, &a, items, attn_grain(items, kv->n_kv_heads, n_threads));
}
