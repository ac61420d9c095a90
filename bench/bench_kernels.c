/* bench_kernels.c - CPU kernel throughput next to the memory bandwidth measured in the same run.
 *
 * Decode is a GEMV per weight matrix, bound by reading the weights once (design.md §7), so
 * GEMV figures are GB/s of weights read, printed beside what the machine can stream. Each
 * GEMV runs "cold" (rotating over enough copies of the matrix to overflow the last-level
 * cache, as a forward pass over all layers does) and "hot" (one matrix, cache-resident).
 * Prefill is a GEMM over 64 tokens, in GFLOP/s. Quantized weights are measured on both
 * activation precisions (ops.h, kernel_act_precision), side by side: the 8-bit path and the
 * accurate 16-bit one, with the time ratio accurate / int8. The two alternate within each
 * measurement, so that a noisy neighbour slows both alike.
 *
 * Attention (bench_kernels attn) runs SmolLM2-135M's shape (9 query heads, 3 KV heads, head
 * dim 64, KV in blocks of 16) over a 512-token prefill and over 32 decoding sequences at
 * 64-512 tokens of context, in thread CPU time at 1 thread (what a shared machine perturbs
 * least), wall time above; for F32, F16 and BF16 KV pools, each call on the next of enough
 * layers' pools to overflow the last-level cache (as a forward pass reads them).
 *
 *   bench_kernels [max_threads [TYPE [LEVEL]]]
 *   bench_kernels attn [max_threads [LEVEL]]
 *     max_threads  each figure for 1..max_threads threads (default 2)
 *     TYPE, LEVEL  only this weight type (Q4_1, BF16, ...) / SIMD level (scalar, avx2, avx512) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "cpu_pool.h"
#include "dtype.h"
#include "ops.h"

#define COLD_BYTES (512u << 20) /* total weights cycled through for "cold" figures */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- memory bandwidth: streaming reads (what a GEMV does) and memcpy ---- */

typedef struct bw_job {
    const uint64_t *src;
    uint64_t *dst;
    uint64_t sums[64];
} bw_job;

static void bw_read(void *arg, int64_t b, int64_t e, int thread) {
    bw_job *j = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int64_t i = b; i < e; i += 4) {
        s0 += j->src[i], s1 += j->src[i + 1], s2 += j->src[i + 2], s3 += j->src[i + 3];
    }
    j->sums[thread & 63] += s0 + s1 + s2 + s3;
}

static void bw_copy(void *arg, int64_t b, int64_t e, int thread) {
    bw_job *j = arg;
    memcpy(j->dst + b, j->src + b, (size_t)(e - b) * 8);
}

static void bench_bandwidth(cpu_pool *pool, int nt) {
    size_t words = COLD_BYTES / 8;
    /* 2 MiB pages, as the CPU backend's prepared weights */
    uint64_t *src = aligned_alloc((size_t)2 << 20, COLD_BYTES);
    uint64_t *dst = aligned_alloc((size_t)2 << 20, COLD_BYTES);
#ifdef MADV_HUGEPAGE
    madvise(src, COLD_BYTES, MADV_HUGEPAGE);
    madvise(dst, COLD_BYTES, MADV_HUGEPAGE);
#endif
    for (size_t i = 0; i < words; i++) src[i] = i, dst[i] = 0;
    bw_job j = {src, dst, {0}};
    int64_t grain = (int64_t)words / (4 * nt);
    double best_read = 1e9, best_copy = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        cpu_pool_run(pool, bw_read, &j, (int64_t)words, grain);
        double t1 = now_s();
        cpu_pool_run(pool, bw_copy, &j, (int64_t)words, grain);
        double t2 = now_s();
        best_read = t1 - t0 < best_read ? t1 - t0 : best_read;
        best_copy = t2 - t1 < best_copy ? t2 - t1 : best_copy;
    }
    printf("memory, %d thread%s: read %.1f GB/s, memcpy %.1f GB/s (read + write)\n", nt,
           nt > 1 ? "s" : "", COLD_BYTES / best_read / 1e9, 2.0 * COLD_BYTES / best_copy / 1e9);
    free(src);
    free(dst);
}

/* ---- GEMV / GEMM ---- */

static void fill_weight(dtype type, uint8_t *p, size_t bytes) {
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < bytes; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        p[i] = (uint8_t)x;
    }
    /* sane scales (random bytes could be fp16 NaNs): the speed does not depend on them, but
     * NaN arithmetic can be slow on some CPUs */
    if (dtype_is_quantized(type)) {
        size_t bb = dtype_block_bytes(type);
        for (size_t b = 0; b + bb <= bytes; b += bb) {
            uint16_t d = f32_to_fp16(0.01f);
            memcpy(p + b, &d, 2);
            if (type == DTYPE_Q4_1) memcpy(p + b + 2, &d, 2);
        }
    } else if (type != DTYPE_F32) {
        for (size_t i = 0; i + 2 <= bytes; i += 2) {
            uint16_t h = type == DTYPE_F16 ? f32_to_fp16(0.5f) : f32_to_bf16(0.5f);
            memcpy(p + i, &h, 2);
        }
    } else {
        for (size_t i = 0; i + 4 <= bytes; i += 4) {
            float f = 0.5f;
            memcpy(p + i, &f, 4);
        }
    }
}

/* Times matmuls on each backend of k (the same weights and inputs), alternating between
 * them; the best of 5 rounds each. */
static void bench_matmul(kernel_ops *const *k, int n_k, dtype type, int64_t rows, int64_t cols,
                         int n, bool cold) {
    size_t row_bytes = dtype_row_bytes(type, cols), mat = rows * row_bytes;
    int copies = cold ? (int)(COLD_BYTES / mat) + 1 : 1;
    uint8_t *data = malloc(mat * copies);
    fill_weight(type, data, mat * copies);
    float *x = malloc((size_t)n * cols * sizeof *x), *out = malloc((size_t)n * rows * sizeof *out);
    for (int64_t i = 0; i < n * cols; i++) x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    /* each copy as the engine sees it: prepared by the backend where it has its own layout */
    kernel_weight *ws[2];
    double best[2] = {1e9, 1e9};
    for (int b = 0; b < n_k; b++) {
        ws[b] = malloc(copies * sizeof *ws[b]);
        for (int c = 0; c < copies; c++) {
            ws[b][c] = (kernel_weight){type, rows, cols, data + (size_t)c * mat, row_bytes, NULL};
            kernel_prepare_weight(k[b], &ws[b][c], NULL);
        }
        kernel_reserve(k[b], n, cols, NULL);
        kernel_matmul(k[b], out, x, &ws[b][0], n); /* warm up: pool, scratch, page faults */
    }
    for (int rep = 0; rep < 5; rep++)
        for (int b = 0; b < n_k; b++) {
            int iters = 0;
            double t0 = now_s(), t;
            do {
                kernel_matmul(k[b], out, x, &ws[b][iters % copies], n);
                iters++;
                t = now_s() - t0;
            } while (t < 0.05 || iters < copies);
            best[b] = t / iters < best[b] ? t / iters : best[b];
        }
    if (n == 1)
        printf("  %-5s %5lld x %-5lld %s:", dtype_name(type), (long long)rows, (long long)cols,
               cold ? "cold" : "hot ");
    else
        printf("  %-5s %5lld x %-5lld n=%d:", dtype_name(type), (long long)rows, (long long)cols,
               n);
    for (int b = 0; b < n_k; b++) {
        if (n == 1)
            printf("%s%7.1f us %5.1f GB/s", b ? "  |" : "", best[b] * 1e6, mat / best[b] / 1e9);
        else
            printf("%s%8.1f us %5.1f GFLOP/s", b ? "  |" : "", best[b] * 1e6,
                   2.0 * rows * cols * n / best[b] / 1e9);
    }
    if (n_k == 2) printf("  x%.2f", best[1] / best[0]);
    printf("\n");
    for (int b = 0; b < n_k; b++) free(ws[b]);
    free(data);
    free(x);
    free(out);
}

/* ---- attention ---- */

/* One layer's attention for the sequences seqs (their blocks scattered through the pool, as
 * a serving pool leaves them), KV of type kvt; best of 7 rounds. */
static void bench_attention(kernel_ops *k, int nt, const char *what, const int *n_q,
                            const int *n_ctx, int n_seqs, dtype kvt) {
    enum { HEADS = 9, KV_HEADS = 3, HD = 64, BS = 16 };
    int tokens = 0, blocks = 0;
    for (int i = 0; i < n_seqs; i++) tokens += n_q[i], blocks += (n_ctx[i] + BS - 1) / BS;
    size_t kv_floats = (size_t)blocks * KV_HEADS * BS * HD;
    size_t layer_bytes = kv_floats * dtype_row_bytes(kvt, 1);
    /* layers enough to leave the caches cold, or one (CINDER_BENCH_HOT=1): the compute alone */
    const char *hot = getenv("CINDER_BENCH_HOT");
    int n_layers = hot && strcmp(hot, "1") == 0
                       ? 1
                       : (int)((COLD_BYTES / 4 + 2 * layer_bytes - 1) / (2 * layer_bytes));
    float *kc = malloc(kv_floats * sizeof(float)), *vc = malloc(kv_floats * sizeof(float));
    float *q = malloc((size_t)tokens * HEADS * HD * sizeof(float));
    float *out = malloc((size_t)tokens * HEADS * HD * sizeof(float));
    for (size_t i = 0; i < kv_floats; i++)
        kc[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f,
        vc[i] = (float)((i * 104729) % 1000) / 1000.0f - 0.5f;
    for (size_t i = 0; i < (size_t)tokens * HEADS * HD; i++)
        q[i] = (float)((i * 15485863) % 1000) / 250.0f - 2.0f;
    int32_t *table = malloc((size_t)blocks * sizeof *table);
    for (int i = 0; i < blocks; i++) table[i] = (int32_t)(((int64_t)i * 40503) % blocks);
    kernel_attn_seq *seqs = malloc((size_t)n_seqs * sizeof *seqs);
    for (int i = 0, qs = 0, b = 0; i < n_seqs; i++) {
        seqs[i] = (kernel_attn_seq){qs, n_q[i], n_ctx[i], table + b};
        qs += n_q[i], b += (n_ctx[i] + BS - 1) / BS;
    }
    kernel_kv_layer *kv = malloc((size_t)n_layers * sizeof *kv);
    for (int l = 0; l < n_layers; l++) {
        kv[l] = (kernel_kv_layer){kernel_alloc(k, layer_bytes, NULL),
                                  kernel_alloc(k, layer_bytes, NULL), blocks, BS, KV_HEADS, HD,
                                  kvt}; /* as the engine's pools */
        dtype_from_f32(kvt, kc, kv[l].k, (int64_t)kv_floats);
        dtype_from_f32(kvt, vc, kv[l].v, (int64_t)kv_floats);
    }
    float scale = 0.125f;
    kernel_attention(k, out, q, &kv[0], seqs, n_seqs, HEADS, scale, 0); /* warm up */
    double best = 1e9;
    for (int rep = 0, l = 0; rep < 7; rep++) {
        int iters = 0;
        double t0 = nt == 1 ? cpu_now_s() : now_s(), t;
        do {
            kernel_attention(k, out, q, &kv[l], seqs, n_seqs, HEADS, scale, 0);
            l = (l + 1) % n_layers;
            iters++;
            t = (nt == 1 ? cpu_now_s() : now_s()) - t0;
        } while (t < 0.05);
        best = t / iters < best ? t / iters : best;
    }
    printf("  %-28s %-4s KV %9.1f us\n", what, dtype_name(kvt), best * 1e6);
    for (int l = 0; l < n_layers; l++) kernel_free(k, kv[l].k), kernel_free(k, kv[l].v);
    free(kv);
    free(kc);
    free(vc);
    free(q);
    free(out);
    free(table);
    free(seqs);
}

static int bench_attention_all(int max_threads, const char *only_level) {
    enum { DECODE = 32 };
    int pq = 512, pctx = 512, dq[DECODE], dctx[DECODE];
    for (int i = 0; i < DECODE; i++) dq[i] = 1, dctx[i] = 64 + (i * 193) % 449;
    for (int s = KERNEL_SIMD_SCALAR; s < KERNEL_SIMD_COUNT; s++) {
        if (!kernel_cpu_simd_supported((kernel_simd)s)) continue;
        if (only_level && strcmp(only_level, kernel_simd_name((kernel_simd)s)) != 0) continue;
        for (int nt = 1; nt <= max_threads; nt++) {
            cinder_error err;
            kernel_ops *k = kernel_cpu_create_simd(nt, (kernel_simd)s, &err);
            if (!k) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
            printf("%s, %d thread%s: attention, SmolLM2-135M layer (%s)\n", k->name, nt,
                   nt > 1 ? "s" : "", nt == 1 ? "thread CPU time" : "wall time");
            static const dtype kvts[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16};
            for (int t = 0; t < 3; t++)
                bench_attention(k, nt, "prefill 512", &pq, &pctx, 1, kvts[t]);
            for (int t = 0; t < 3; t++)
                bench_attention(k, nt, "decode 32 x 1, ctx 64-512", dq, dctx, DECODE, kvts[t]);
            kernel_ops_free(k);
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "attn") == 0)
        return bench_attention_all(argc > 2 ? atoi(argv[2]) : 2, argc > 3 ? argv[3] : NULL);
    int max_threads = argc > 1 ? atoi(argv[1]) : 2;
    if (max_threads < 1) max_threads = 1;
    const char *only_type = argc > 2 ? argv[2] : NULL, *only_level = argc > 3 ? argv[3] : NULL;
    printf("bench_kernels: %d online CPUs, best SIMD level %s\n", cpu_count_online(),
           kernel_simd_name(kernel_cpu_simd_best()));
    for (int nt = 1; nt <= max_threads; nt++) {
        cpu_pool *pool = cpu_pool_create(nt, NULL);
        bench_bandwidth(pool, nt);
        cpu_pool_free(pool);
    }
    static const dtype types[] = {DTYPE_Q4_1, DTYPE_Q8_0, DTYPE_Q4_0,
                                  DTYPE_BF16, DTYPE_F16,  DTYPE_F32};
    static const int64_t shapes[][2] = {{1536, 576}, {576, 1536}, {4096, 4096}};
    for (int s = KERNEL_SIMD_SCALAR; s < KERNEL_SIMD_COUNT; s++) {
        if (!kernel_cpu_simd_supported((kernel_simd)s)) continue;
        if (only_level && strcmp(only_level, kernel_simd_name((kernel_simd)s)) != 0) continue;
        for (int nt = 1; nt <= max_threads; nt++) {
            cinder_error err;
            kernel_ops *k[2]; /* int8, accurate */
            for (int a = 0; a < 2; a++) {
                kernel_cpu_options o = {nt, (kernel_simd)s,
                                        a ? KERNEL_ACT_ACCURATE : KERNEL_ACT_INT8};
                k[a] = kernel_cpu_create_opts(&o, &err);
                if (!k[a]) {
                    fprintf(stderr, "%s\n", err.msg);
                    return 1;
                }
            }
            const char *label = "(quantized: int8 | accurate, time accurate / int8)";
            printf("%s, %d thread%s: GEMV (decode, one token) %s\n", k[1]->name, nt,
                   nt > 1 ? "s" : "", label);
            for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
                if (only_type && strcmp(only_type, dtype_name(types[t])) != 0) continue;
                if (!only_type && s == KERNEL_SIMD_SCALAR && t >= 4) break; /* a few suffice */
                int n_k = dtype_is_quantized(types[t]) ? 2 : 1;
                for (size_t sh = 0; sh < 3; sh++) {
                    bench_matmul(k, n_k, types[t], shapes[sh][0], shapes[sh][1], 1, true);
                    if (sh < 2)
                        bench_matmul(k, n_k, types[t], shapes[sh][0], shapes[sh][1], 1, false);
                }
            }
            printf("%s, %d thread%s: GEMM (prefill, 64 tokens) %s\n", k[1]->name, nt,
                   nt > 1 ? "s" : "", label);
            for (size_t t = 0; t < 4; t++)
                if (!only_type || strcmp(only_type, dtype_name(types[t])) == 0)
                    for (size_t sh = 0; sh < 2; sh++)
                        bench_matmul(k, dtype_is_quantized(types[t]) ? 2 : 1, types[t],
                                     shapes[sh][0], shapes[sh][1], 64, false);
            kernel_ops_free(k[0]);
            kernel_ops_free(k[1]);
        }
    }
    return 0;
}
