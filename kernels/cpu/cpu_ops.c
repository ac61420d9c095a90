/* cpu_ops.c - the CPU backend: the kernel_ops table, its context (thread pool, SIMD level,
 * scratch) and the threading around the per-level kernels.
 *
 * Work is split over output rows for matmuls and over tokens for the rest; every output is
 * computed by exactly one thread with the same arithmetic whatever the split, so results do
 * not depend on the thread count. Small ops run on the calling thread: waking the pool costs
 * a few microseconds, more than normalizing one 576-wide token. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_attention.h"
#include "cpu_exp.h"
#include "cpu_pool.h"
#include "cpu_simd.h"
#include "log.h"

#ifdef CPU_SIMD_X86
#include <cpuid.h>
#endif

/* Ops with fewer values than this per call run on one thread. */
#define CPU_PARALLEL_MIN 16384
/* The longest rope_dim rope() takes (its cos/sin tables live on the stack). */
#define CPU_ROPE_MAX_DIM 1024

typedef struct cpu_ctx {
    kernel_ops ops;
    char name[32]; /* ops.name: the table's, "-int8" appended on the 8-bit path */
    cpu_pool *pool;
    const cpu_simd_table *simd;
    kernel_act_precision act; /* ACCURATE or INT8 */
    /* Quantized activations of the current matmul, in the format of act; act_cap blocks. */
    cpu_block_q8 *q8;
    cpu_act_q16 q16;
    size_t act_cap;
    cpu_attn_scratch attn;
    /* cos and sin of the last positions rotated: every layer's q and k rotations of a step
     * take the same positions, so the angles are computed once a step, not 2 x n_layers
     * times (sin and cos in double were ~1% of a batch-32 decode step). Kept by content:
     * positions, their count and the frequencies. */
    struct {
        float *cs;        /* [n, half] cos, then [n, half] sin */
        int32_t *pos;     /* [n] */
        float inv_freq[CPU_ROPE_MAX_DIM / 2];
        int n, half, cap; /* cap: positions the buffers hold, at CPU_ROPE_MAX_DIM / 2 each */
    } rope;
    /* Prepared weights: carved from chunks of CPU_PACK_CHUNK bytes (huge-page aligned and
     * advised), a larger weight in a chunk of its own. */
    void **chunks;
    int n_chunks;
    size_t chunk_used, chunk_size; /* of the last chunk */
} cpu_ctx;

#define CPU_PACK_CHUNK ((size_t)32 << 20)
#define CPU_HUGE_PAGE  ((size_t)2 << 20)

/* ---- SIMD level ---- */

#ifdef CPU_SIMD_X86
/* F16C by CPUID (leaf 1, ECX bit 29): clang's __builtin_cpu_supports does not know "f16c". */
static bool cpu_has_f16c(void) {
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
}
#endif

bool kernel_cpu_simd_supported(kernel_simd simd) {
    switch (simd) {
        case KERNEL_SIMD_AUTO:
        case KERNEL_SIMD_SCALAR:
            return true;
#ifdef CPU_SIMD_X86
        case KERNEL_SIMD_AVX2:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   cpu_has_f16c();
        case KERNEL_SIMD_AVX512:
            return kernel_cpu_simd_supported(KERNEL_SIMD_AVX2) &&
                   __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
        default:
            return false;
    }
}

kernel_simd kernel_cpu_simd_best(void) {
    if (kernel_cpu_simd_supported(KERNEL_SIMD_AVX512)) return KERNEL_SIMD_AVX512;
    if (kernel_cpu_simd_supported(KERNEL_SIMD_AVX2)) return KERNEL_SIMD_AVX2;
    return KERNEL_SIMD_SCALAR;
}

static const cpu_simd_table *cpu_simd_table_for(kernel_simd simd) {
    switch (simd) {
#ifdef CPU_SIMD_X86
        case KERNEL_SIMD_AVX2:
            return &cpu_simd_avx2;
        case KERNEL_SIMD_AVX512:
            return &cpu_simd_avx512;
#endif
        default:
            return &cpu_simd_scalar;
    }
}

/* ---- scratch ---- */

static void *cpu_alloc64(size_t bytes) {
    return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

static cinder_status cpu_act_reserve(cpu_ctx *c, size_t blocks, cinder_error *err) {
    if (blocks <= c->act_cap) return CINDER_OK;
    if (c->act == KERNEL_ACT_INT8) {
        cpu_block_q8 *p = cpu_alloc64(blocks * sizeof *p);
        if (!p) goto nomem;
        free(c->q8);
        c->q8 = p;
    } else {
        int16_t *qs = cpu_alloc64(blocks * QK * sizeof *qs);
        float *ds = cpu_alloc64(blocks * 2 * sizeof *ds);
        if (!qs || !ds) {
            free(qs);
            free(ds);
            goto nomem;
        }
        free(c->q16.qs);
        free(c->q16.ds);
        c->q16 = (cpu_act_q16){qs, ds};
    }
    c->act_cap = blocks;
    return CINDER_OK;
nomem:
    return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for %zu activation blocks",
                            blocks);
}

static cinder_status cpu_reserve(void *ctx, int max_tokens, int64_t max_cols, cinder_error *err) {
    if (max_tokens < 0 || max_cols < 0)
        return cinder_error_set(err, CINDER_ERR_ARG, "reserve: %d tokens of %lld columns",
                                max_tokens, (long long)max_cols);
    return cpu_act_reserve(ctx, (size_t)max_tokens * (size_t)((max_cols + QK - 1) / QK), err);
}

static bool cpu_supports(void *ctx, dtype type) {
    return (unsigned)type < DTYPE_COUNT;
}

/* ---- prepared weights ---- */

size_t cpu_pack_group_block_bytes(dtype type) {
    switch (type) {
        case DTYPE_Q8_0:
            return CPU_PACK_ROWS * (QK + 2);
        case DTYPE_Q4_0:
            return CPU_PACK_ROWS * (QK / 2 + 2);
        case DTYPE_Q4_1:
            return CPU_PACK_ROWS * (QK / 2 + 4);
        default:
            return 0;
    }
}

/* The layout cpu_simd.h describes: per group block, the rows' values transposed by pairs of
 * bytes, then the scales. dst holds ceil(rows / 8) * nb group blocks. */
static void cpu_pack_weight(const kernel_weight *w, uint8_t *dst) {
    const int64_t nb = w->cols / QK, groups = (w->rows + CPU_PACK_ROWS - 1) / CPU_PACK_ROWS;
    const size_t gb = cpu_pack_group_block_bytes(w->type), bb = dtype_block_bytes(w->type);
    const size_t qb = w->type == DTYPE_Q8_0 ? QK : QK / 2; /* value bytes of a row's block */
    const size_t head = w->type == DTYPE_Q4_1 ? 4 : 2;     /* scale bytes before them */
    memset(dst, 0, (size_t)groups * nb * gb);
    for (int64_t g = 0; g < groups; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *o = dst + ((size_t)g * nb + b) * gb;
            for (int i = 0; i < CPU_PACK_ROWS && g * CPU_PACK_ROWS + i < w->rows; i++) {
                const uint8_t *blk = (const uint8_t *)w->data +
                                     (size_t)(g * CPU_PACK_ROWS + i) * w->row_bytes + b * bb;
                for (size_t c = 0; c < qb / 2; c++) /* pair c of row i: chunk c, lanes 2i, 2i+1 */
                    memcpy(o + c * 2 * CPU_PACK_ROWS + 2 * i, blk + head + 2 * c, 2);
                memcpy(o + CPU_PACK_ROWS * qb + 2 * i, blk, 2); /* d */
                if (w->type == DTYPE_Q4_1)
                    memcpy(o + CPU_PACK_ROWS * (qb + 2) + 2 * i, blk + 2, 2); /* m */
            }
        }
}

/* bytes of prepared-weight memory, 64-byte aligned, kept until the backend goes */
static void *cpu_pack_alloc(cpu_ctx *c, size_t bytes) {
    bytes = (bytes + 63) & ~(size_t)63;
    if (c->n_chunks == 0 || c->chunk_used + bytes > c->chunk_size) {
        size_t size = bytes > CPU_PACK_CHUNK ? (bytes + CPU_HUGE_PAGE - 1) & ~(CPU_HUGE_PAGE - 1)
                                             : CPU_PACK_CHUNK;
        void **list = realloc(c->chunks, (size_t)(c->n_chunks + 1) * sizeof *list);
        if (!list) return NULL;
        c->chunks = list;
        void *p = aligned_alloc(CPU_HUGE_PAGE, size);
        if (!p) return NULL;
        /* decode streams every weight once per token: 2 MiB pages spare the TLB a miss every
         * 4 KiB */
        kernel_advise_huge_pages(p, size);
        c->chunks[c->n_chunks++] = p;
        c->chunk_used = 0;
        c->chunk_size = size;
    }
    void *p = (uint8_t *)c->chunks[c->n_chunks - 1] + c->chunk_used;
    c->chunk_used += bytes;
    return p;
}

static cinder_status cpu_prepare_weight(void *ctx, kernel_weight *w, cinder_error *err) {
    cpu_ctx *c = ctx;
    CN_ASSERT((unsigned)w->type < DTYPE_COUNT);
    if (w->prepared || c->act != KERNEL_ACT_ACCURATE || !c->simd->q16_prepared[w->type])
        return CINDER_OK;
    CN_ASSERT(w->cols % QK == 0 && w->row_bytes == dtype_row_bytes(w->type, w->cols));
    size_t bytes = (size_t)((w->rows + CPU_PACK_ROWS - 1) / CPU_PACK_ROWS) *
                   (size_t)(w->cols / QK) * cpu_pack_group_block_bytes(w->type);
    uint8_t *p = cpu_pack_alloc(c, bytes);
    if (!p)
        return cinder_error_set(err, CINDER_ERR_NOMEM,
                                "out of memory preparing a %lld x %lld %s weight (%zu bytes)",
                                (long long)w->rows, (long long)w->cols, dtype_name(w->type), bytes);
    cpu_pack_weight(w, p);
    w->prepared = p;
    return CINDER_OK;
}

/* ---- embed ---- */

static void cpu_embed(void *ctx, float *out, const kernel_weight *table, const int32_t *ids,
                      int n) {
    for (int i = 0; i < n; i++) {
        CN_ASSERT(ids[i] >= 0 && ids[i] < table->rows);
        const uint8_t *row = (const uint8_t *)table->data + (size_t)ids[i] * table->row_bytes;
        dtype_to_f32(table->type, row, out + (int64_t)i * table->cols, table->cols);
    }
}

/* ---- rmsnorm ---- */

typedef struct rmsnorm_job {
    float *out;
    const float *x, *weight;
    int d;
    float eps;
} rmsnorm_job;

static void rmsnorm_rows(void *arg, int64_t t0, int64_t t1, int thread) {
    const rmsnorm_job *j = arg;
    for (int64_t t = t0; t < t1; t++) {
        const float *x = j->x + t * j->d;
        float *out = j->out + t * j->d;
        /* in double: d = 8192 squares of activations in the hundreds lose bits in float */
        double ss = 0;
        for (int i = 0; i < j->d; i++) ss += (double)x[i] * x[i];
        float scale = (float)(1.0 / sqrt(ss / j->d + j->eps));
        for (int i = 0; i < j->d; i++) out[i] = x[i] * scale * j->weight[i];
    }
}

static void cpu_rmsnorm(void *ctx, float *out, const float *x, const float *weight, int n, int d,
                        float eps) {
    cpu_ctx *c = ctx;
    CN_ASSERT(n >= 0 && d > 0);
    rmsnorm_job j = {out, x, weight, d, eps};
    int64_t grain = (int64_t)n * d < CPU_PARALLEL_MIN ? n : 1 + CPU_PARALLEL_MIN / (4 * d);
    cpu_pool_run(c->pool, rmsnorm_rows, &j, n, grain);
}

/* ---- rope ---- */

typedef struct rope_job {
    float *x;
    const int32_t *pos;
    int n_heads, head_dim, rope_dim;
    rope_layout layout;
    const float *inv_freq;
    float *cs; /* [n, half] cos, then [n, half] sin */
    int n;
} rope_job;

static void rope_angles(void *arg, int64_t t0, int64_t t1, int thread) {
    const rope_job *j = arg;
    const int half = j->rope_dim / 2;
    float *cs = j->cs, *sn = j->cs + (size_t)j->n * half;
    for (int64_t t = t0; t < t1; t++)
        /* angles in double: pos * inv_freq reaches thousands of radians, where a float angle
         * is off by ~1e-4 */
        for (int i = 0; i < half; i++) {
            double angle = (double)j->pos[t] * j->inv_freq[i];
            cs[t * half + i] = (float)cos(angle);
            sn[t * half + i] = (float)sin(angle);
        }
}

static void rope_rows(void *arg, int64_t t0, int64_t t1, int thread) {
    const rope_job *j = arg;
    const int half = j->rope_dim / 2;
    /* pair i is (v[i * step], v[i * step + off]) */
    const int step = j->layout == ROPE_LAYOUT_INTERLEAVED ? 2 : 1;
    const int off = j->layout == ROPE_LAYOUT_INTERLEAVED ? 1 : half;
    for (int64_t t = t0; t < t1; t++) {
        const float *cs = j->cs + t * half, *sn = j->cs + ((size_t)j->n + t) * half;
        for (int h = 0; h < j->n_heads; h++) {
            float *v = j->x + (t * j->n_heads + h) * j->head_dim;
            for (int i = 0; i < half; i++) {
                float a = v[i * step], b = v[i * step + off];
                v[i * step] = a * cs[i] - b * sn[i];
                v[i * step + off] = a * sn[i] + b * cs[i];
            }
        }
    }
}

static void cpu_rope(void *ctx, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
                     int rope_dim, rope_layout layout, const float *inv_freq) {
    cpu_ctx *c = ctx;
    CN_ASSERT(n >= 0 && n_heads > 0 && rope_dim > 0 && rope_dim % 2 == 0);
    CN_ASSERT(rope_dim <= head_dim && rope_dim <= CPU_ROPE_MAX_DIM);
    CN_ASSERT(layout == ROPE_LAYOUT_INTERLEAVED || layout == ROPE_LAYOUT_HALF);
    if (n == 0) return;
    const int half = rope_dim / 2;
    if (n > c->rope.cap) { /* grows before the parallel part and is kept, as the attention's */
        float *cs = malloc((size_t)n * CPU_ROPE_MAX_DIM * sizeof *cs);
        int32_t *p = malloc((size_t)n * sizeof *p);
        CN_ASSERT(cs && p); /* a few MiB at most */
        free(c->rope.cs);
        free(c->rope.pos);
        c->rope.cs = cs, c->rope.pos = p;
        c->rope.cap = n, c->rope.n = 0;
    }
    rope_job j = {x, pos, n_heads, head_dim, rope_dim, layout, inv_freq, c->rope.cs, n};
    if (c->rope.n != n || c->rope.half != half ||
        memcmp(c->rope.pos, pos, (size_t)n * sizeof *pos) != 0 ||
        memcmp(c->rope.inv_freq, inv_freq, (size_t)half * sizeof *inv_freq) != 0) {
        int64_t grain = (int64_t)n * half < CPU_PARALLEL_MIN / 16 ? n : 4;
        cpu_pool_run(c->pool, rope_angles, &j, n, grain);
        memcpy(c->rope.pos, pos, (size_t)n * sizeof *pos);
        memcpy(c->rope.inv_freq, inv_freq, (size_t)half * sizeof *inv_freq);
        c->rope.n = n, c->rope.half = half;
    }
    int64_t per_token = (int64_t)n_heads * head_dim;
    int64_t grain = n * per_token < CPU_PARALLEL_MIN ? n : 1 + CPU_PARALLEL_MIN / (4 * per_token);
    cpu_pool_run(c->pool, rope_rows, &j, n, grain);
}

/* ---- matmul ---- */

typedef struct quantize_job {
    const cpu_ctx *c;
    const float *x;
    int64_t cols;
} quantize_job;

static void quantize_rows(void *arg, int64_t t0, int64_t t1, int thread) {
    const quantize_job *j = arg;
    const cpu_ctx *c = j->c;
    const int64_t cols = j->cols, nb = cols / QK;
    for (int64_t t = t0; t < t1; t++) {
        if (c->act == KERNEL_ACT_INT8)
            c->simd->quantize_q8(j->x + t * cols, c->q8 + t * nb, cols);
        else
            c->simd->quantize_q16(j->x + t * cols, c->q16.qs + t * cols, c->q16.ds + 2 * t * nb,
                                  cols);
    }
}

/* Quantizes x [n, cols] into the context's activation scratch, in the format of c->act. */
static void cpu_act_quantize(cpu_ctx *c, const float *x, int64_t cols, int n) {
    CN_ASSERT(cols % QK == 0);
    size_t blocks = (size_t)n * (size_t)(cols / QK);
    if (blocks > c->act_cap) {
        /* Outside the steady state (kernel_reserve sizes this once); failing to find a
         * few kilobytes of scratch mid-step leaves nothing sensible to do. */
        LOG_DEBUG("growing activation scratch to %zu blocks", blocks);
        cinder_error err;
        if (cpu_act_reserve(c, blocks, &err) != CINDER_OK) CN_ABORT("%s", err.msg);
    }
    quantize_job q = {c, x, cols};
    int64_t grain = (int64_t)n * cols < CPU_PARALLEL_MIN ? n : 4;
    cpu_pool_run(c->pool, quantize_rows, &q, n, grain);
}

typedef struct gemm_job {
    cpu_gemm_fn fn;
    cpu_gemm_args args;
} gemm_job;

/* out = x · wᵀ as a tile kernel and its arguments; for quantized w, on the activations
 * cpu_act_quantize left in the scratch. */
static gemm_job cpu_gemm_job(const cpu_ctx *c, float *out, const float *x, const kernel_weight *w,
                             int n) {
    gemm_job j = {c->simd->gemm[w->type], {w, x, out, n}};
    if (dtype_is_quantized(w->type)) {
        if (c->act == KERNEL_ACT_INT8) {
            j.args.x = c->q8;
        } else {
            j.fn = c->simd->gemm_q16[w->type];
            j.args.x = &c->q16;
        }
    }
    return j;
}

/* Rows per range of a weight of `rows` rows: about 8 ranges per thread to even out uneven
 * threads, but a multiple of 2 * CPU_PACK_ROWS: the prepared tiles start on a group, and the
 * AVX2 GEMM's fast tile takes two groups at once (an odd group runs a slower one-group tile). */
static int64_t cpu_gemm_grain(const cpu_ctx *c, int64_t rows) {
    const int64_t unit = 2 * CPU_PACK_ROWS;
    int nt = cpu_pool_n_threads(c->pool);
    int64_t grain = (rows + 8 * nt - 1) / (8 * nt);
    return (grain + unit - 1) / unit * unit;
}

static void gemm_rows(void *arg, int64_t r0, int64_t r1, int thread) {
    const gemm_job *j = arg;
    j->fn(&j->args, r0, r1);
}

static void cpu_matmul(void *ctx, float *out, const float *x, const kernel_weight *w, int n) {
    cpu_ctx *c = ctx;
    CN_ASSERT(n >= 0 && w->rows > 0 && w->cols > 0 && (unsigned)w->type < DTYPE_COUNT);
    if (n == 0) return;
    if (dtype_is_quantized(w->type)) cpu_act_quantize(c, x, w->cols, n);
    gemm_job j = cpu_gemm_job(c, out, x, w, n);
    cpu_pool_run(c->pool, gemm_rows, &j, w->rows, cpu_gemm_grain(c, w->rows));
}

/* Weights one matmul_multi job covers (Q, K, V: 3); more are run as several jobs. */
#define CPU_MULTI_MAX 8

/* Several matmuls as one pool job over their ranges, one after the other: range k is range
 * k - first[i] of part i, for the i with first[i] <= k < first[i + 1]. A part's ranges are
 * those its own matmul call would run (the same grain). */
typedef struct gemm_multi_job {
    gemm_job part[CPU_MULTI_MAX];
    int64_t grain[CPU_MULTI_MAX];
    int64_t first[CPU_MULTI_MAX + 1];
} gemm_multi_job;

static void gemm_multi_ranges(void *arg, int64_t k0, int64_t k1, int thread) {
    const gemm_multi_job *j = arg;
    int i = 0;
    for (int64_t k = k0; k < k1; k++) {
        while (k >= j->first[i + 1]) i++;
        const gemm_job *p = &j->part[i];
        int64_t r0 = (k - j->first[i]) * j->grain[i], r1 = r0 + j->grain[i];
        p->fn(&p->args, r0, r1 < p->args.w->rows ? r1 : p->args.w->rows);
    }
}

/* One hand-off to the pool instead of one per weight (at batch 1 a K or V projection is a few
 * microseconds of work, and every hand-off waits for its slowest thread), and the activations
 * quantized once. Each output comes from the same kernel as in cpu_matmul: the same bits. */
static void cpu_matmul_multi(void *ctx, const kernel_matmul_out *outs, int count, const float *x,
                             int n) {
    cpu_ctx *c = ctx;
    CN_ASSERT(count >= 0 && n >= 0);
    bool quantized = false;
    for (int i = 0; i < count; i++) {
        const kernel_weight *w = outs[i].w;
        CN_ASSERT(w->rows > 0 && w->cols > 0 && (unsigned)w->type < DTYPE_COUNT);
        CN_ASSERT(w->cols == outs[0].w->cols && outs[i].out != x);
        quantized |= dtype_is_quantized(w->type);
    }
    if (n == 0 || count == 0) return;
    /* every quantized type reads the same activation format: float weights read x itself */
    if (quantized) cpu_act_quantize(c, x, outs[0].w->cols, n);
    for (int i0 = 0; i0 < count; i0 += CPU_MULTI_MAX) {
        int parts = count - i0 < CPU_MULTI_MAX ? count - i0 : CPU_MULTI_MAX;
        gemm_multi_job j;
        j.first[0] = 0;
        for (int i = 0; i < parts; i++) {
            const kernel_matmul_out *o = &outs[i0 + i];
            j.part[i] = cpu_gemm_job(c, o->out, x, o->w, n);
            j.grain[i] = cpu_gemm_grain(c, o->w->rows);
            j.first[i + 1] = j.first[i] + (o->w->rows + j.grain[i] - 1) / j.grain[i];
        }
        cpu_pool_run(c->pool, gemm_multi_ranges, &j, j.first[parts], 1);
    }
}

/* ---- element-wise ---- */

typedef struct swiglu_job {
    float *out;
    const float *gate, *up;
    bool avx2;
} swiglu_job;

/* silu(g) * u = g / (1 + exp(-g)) * u, exp from cpu_exp.h: the AVX2 and plain loops give the
 * same bits. */
#ifdef CPU_SIMD_X86
__attribute__((target("avx2,fma"))) static void swiglu_avx2(float *out, const float *gate,
                                                            const float *up, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = cpu_exp_avx2(_mm256_xor_ps(g, sign)); /* exp(-g) */
        __m256 y = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i));
        _mm256_storeu_ps(out + i, y);
    }
    for (; i < n; i++) out[i] = gate[i] / (1.0f + cpu_exp_scalar(-gate[i])) * up[i];
}
#endif

static void swiglu_range(void *arg, int64_t i0, int64_t i1, int thread) {
    const swiglu_job *j = arg;
#ifdef CPU_SIMD_X86
    if (j->avx2) {
        swiglu_avx2(j->out + i0, j->gate + i0, j->up + i0, i1 - i0);
        return;
    }
#endif
    for (int64_t i = i0; i < i1; i++) {
        float g = j->gate[i];
        j->out[i] = g / (1.0f + cpu_exp_scalar(-g)) * j->up[i];
    }
}

static void cpu_swiglu(void *ctx, float *out, const float *gate, const float *up, int n, int f) {
    cpu_ctx *c = ctx;
    CN_ASSERT(n >= 0 && f >= 0);
    swiglu_job j = {out, gate, up, c->simd->level != KERNEL_SIMD_SCALAR};
    cpu_pool_run(c->pool, swiglu_range, &j, (int64_t)n * f, CPU_PARALLEL_MIN);
}

typedef struct add_job {
    float *out;
    const float *a, *b;
} add_job;

static void add_range(void *arg, int64_t i0, int64_t i1, int thread) {
    const add_job *j = arg;
    for (int64_t i = i0; i < i1; i++) j->out[i] = j->a[i] + j->b[i];
}

static void cpu_add(void *ctx, float *out, const float *a, const float *b, int64_t count) {
    cpu_ctx *c = ctx;
    CN_ASSERT(count >= 0);
    add_job j = {out, a, b};
    /* memory-bound: more threads only help on large batches */
    cpu_pool_run(c->pool, add_range, &j, count, 4 * CPU_PARALLEL_MIN);
}

static void cpu_softmax(void *ctx, float *x, int n, int d) {
    CN_ASSERT(n >= 0 && d > 0);
    for (int t = 0; t < n; t++) {
        float *v = x + (int64_t)t * d, max = v[0];
        for (int i = 1; i < d; i++) max = v[i] > max ? v[i] : max;
        double sum = 0;
        for (int i = 0; i < d; i++) {
            v[i] = expf(v[i] - max);
            sum += v[i];
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < d; i++) v[i] *= inv;
    }
}

static void cpu_argmax(void *ctx, int32_t *out, const float *x, int n, int d) {
    CN_ASSERT(n >= 0 && d > 0);
    for (int t = 0; t < n; t++) {
        const float *v = x + (int64_t)t * d;
        int best = 0;
        for (int i = 1; i < d; i++)
            if (v[i] > v[best] || (isnan(v[best]) && !isnan(v[i]))) best = i;
        out[t] = best;
    }
}

static void cpu_kv_write_op(void *ctx, const kernel_kv_layer *kv, const float *k, const float *v,
                            const int32_t *slots, int n) {
    cpu_ctx *c = ctx;
    cpu_kv_write(c->pool, kv, k, v, slots, n, c->simd->level != KERNEL_SIMD_SCALAR);
}

static bool cpu_supports_kv(void *ctx, dtype type) {
    (void)ctx;
    return type == DTYPE_F32 || type == DTYPE_F16 || type == DTYPE_BF16;
}

static void cpu_attention_op(void *ctx, float *out, const float *q, const kernel_kv_layer *kv,
                             const kernel_attn_seq *seqs, int n_seqs, int n_heads, float scale,
                             int window) {
    cpu_ctx *c = ctx;
    cpu_attention(c->pool, &c->attn, out, q, kv, seqs, n_seqs, n_heads, scale, window,
                  c->simd->level != KERNEL_SIMD_SCALAR);
}

/* ---- creation ---- */

static void cpu_destroy(kernel_ops *ops) {
    if (!ops) return;
    cpu_ctx *c = ops->ctx;
    cpu_pool_free(c->pool);
    cpu_attn_scratch_free(&c->attn);
    free(c->rope.cs);
    free(c->rope.pos);
    free(c->q8);
    free(c->q16.qs);
    free(c->q16.ds);
    for (int i = 0; i < c->n_chunks; i++) free(c->chunks[i]);
    free(c->chunks);
    free(c);
}

kernel_ops *cpu_ops_create_table(int n_threads, const cpu_simd_table *table,
                                 kernel_act_precision act, cinder_error *err) {
    CN_ASSERT(act == KERNEL_ACT_ACCURATE || act == KERNEL_ACT_INT8);
    if (n_threads < 0) {
        cinder_error_set(err, CINDER_ERR_ARG, "%d threads", n_threads);
        return NULL;
    }
    if (n_threads == 0) n_threads = cpu_count_online();
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for the CPU backend");
        return NULL;
    }
    c->simd = table;
    c->act = act;
    snprintf(c->name, sizeof c->name, "%s%s", table->name, act == KERNEL_ACT_INT8 ? "-int8" : "");
    c->pool = cpu_pool_create(n_threads, err);
    if (!c->pool) goto fail;
    c->ops = (kernel_ops){
        .name = c->name,
        .ctx = c,
        .reserve = cpu_reserve,
        .supports = cpu_supports,
        .prepare_weight = cpu_prepare_weight,
        .embed = cpu_embed,
        .rmsnorm = cpu_rmsnorm,
        .rope = cpu_rope,
        .matmul = cpu_matmul,
        .matmul_multi = cpu_matmul_multi,
        .swiglu = cpu_swiglu,
        .add = cpu_add,
        .softmax = cpu_softmax,
        .argmax = cpu_argmax,
        .kv_write = cpu_kv_write_op,
        .attention = cpu_attention_op,
        .supports_kv = cpu_supports_kv,
        .destroy = cpu_destroy,
    };
    LOG_DEBUG("%s backend, %d threads, %s activations for quantized weights", c->name, n_threads,
              kernel_act_name(act));
    return &c->ops;
fail:
    free(c);
    return NULL;
}

kernel_cpu_options kernel_cpu_options_default(void) {
    return (kernel_cpu_options){
        .n_threads = 0, .simd = KERNEL_SIMD_AUTO, .act = KERNEL_ACT_DEFAULT};
}

/* DEFAULT made concrete: CINDER_ACT, else ACCURATE. KERNEL_ACT_COUNT on a bad setting. */
static kernel_act_precision cpu_act_resolve(kernel_act_precision act, cinder_error *err) {
    if ((unsigned)act >= KERNEL_ACT_COUNT) {
        cinder_error_set(err, CINDER_ERR_ARG, "activation precision %d", (int)act);
        return KERNEL_ACT_COUNT;
    }
    if (act != KERNEL_ACT_DEFAULT) return act;
    const char *env = getenv("CINDER_ACT");
    if (!env || !*env || strcmp(env, kernel_act_name(KERNEL_ACT_ACCURATE)) == 0)
        return KERNEL_ACT_ACCURATE;
    if (strcmp(env, kernel_act_name(KERNEL_ACT_INT8)) == 0) return KERNEL_ACT_INT8;
    cinder_error_set(err, CINDER_ERR_ARG, "CINDER_ACT=%s: expected accurate or int8", env);
    return KERNEL_ACT_COUNT;
}

kernel_ops *kernel_cpu_create_opts(const kernel_cpu_options *opts, cinder_error *err) {
    kernel_cpu_options o = opts ? *opts : kernel_cpu_options_default();
    kernel_simd simd = o.simd;
    kernel_act_precision act = cpu_act_resolve(o.act, err);
    if (act == KERNEL_ACT_COUNT) return NULL;
    if (simd == KERNEL_SIMD_AUTO) {
        simd = kernel_cpu_simd_best();
        const char *env = getenv("CINDER_SIMD");
        if (env && *env) {
            kernel_simd forced = KERNEL_SIMD_COUNT;
            for (int s = KERNEL_SIMD_SCALAR; s < KERNEL_SIMD_COUNT; s++)
                if (strcmp(env, kernel_simd_name((kernel_simd)s)) == 0) forced = (kernel_simd)s;
            if (forced == KERNEL_SIMD_COUNT) {
                cinder_error_set(err, CINDER_ERR_ARG,
                                 "CINDER_SIMD=%s: expected scalar, avx2 or avx512", env);
                return NULL;
            }
            simd = forced;
        }
    }
    if ((unsigned)simd >= KERNEL_SIMD_COUNT || !kernel_cpu_simd_supported(simd)) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "this CPU cannot run the %s kernels",
                         kernel_simd_name(simd));
        return NULL;
    }
    return cpu_ops_create_table(o.n_threads, cpu_simd_table_for(simd), act, err);
}

kernel_ops *kernel_cpu_create_simd(int n_threads, kernel_simd simd, cinder_error *err) {
    kernel_cpu_options o = kernel_cpu_options_default();
    o.n_threads = n_threads;
    o.simd = simd;
    return kernel_cpu_create_opts(&o, err);
}

kernel_ops *kernel_cpu_create(int n_threads, cinder_error *err) {
    kernel_cpu_options o = kernel_cpu_options_default();
    o.n_threads = n_threads;
    return kernel_cpu_create_opts(&o, err);
}
