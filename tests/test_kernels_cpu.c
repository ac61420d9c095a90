/* test_kernels_cpu.c - the CPU kernels against references computed here in double precision.
 *
 * Every op, every weight type, odd sizes, every SIMD level this CPU has (each compared with
 * the references and with the scalar level), both activation precisions of quantized
 * matmuls, and 1, 2 and 3 threads giving identical bits.
 *
 * Built twice: as test_kernels_cpu, and with TEST_AVX512_EMULATED as
 * test_kernels_avx512_emulated, which runs the matmul checks on the AVX-512 kernels compiled
 * against SIMDe's emulation (the way to check that code on CPUs without AVX-512). */
#include <math.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "cpu_pool.h"
#include "cpu_simd.h"
#include "dtype.h"
#include "log.h"
#include "ops.h"
#include "test.h"

#define U (1.0 / 16777216.0) /* fp32 unit roundoff, 2^-24 */

/* ---- random data ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(float lo, float hi) {
    return lo + (hi - lo) * (float)((rng_next() >> 40) * (1.0 / 16777216.0));
}

static void store_u16(uint8_t *p, uint16_t v) {
    memcpy(p, &v, 2);
}

/* A random weight of any type and its dequantized copy. Quantized blocks get random bytes
 * (every code, -128 included for Q8_0) and random scales of either sign, as real files have
 * (ggml's Q4_0 scales are mostly negative). */
typedef struct test_weight {
    kernel_weight w;
    uint8_t *data;
    float *deq; /* [rows, cols] */
} test_weight;

static void weight_make(test_weight *tw, dtype type, int64_t rows, int64_t cols) {
    size_t row_bytes = dtype_row_bytes(type, cols);
    tw->data = malloc(rows * row_bytes);
    tw->deq = malloc(rows * cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *row = tw->data + r * row_bytes;
        if (type == DTYPE_F32 || type == DTYPE_F16 || type == DTYPE_BF16) {
            for (int64_t k = 0; k < cols; k++) {
                float v = rng_uniform(-1, 1);
                if (type == DTYPE_F32) memcpy(row + 4 * k, &v, 4);
                if (type == DTYPE_F16) store_u16(row + 2 * k, f32_to_fp16(v));
                if (type == DTYPE_BF16) store_u16(row + 2 * k, f32_to_bf16(v));
            }
        } else {
            size_t bb = dtype_block_bytes(type);
            for (int64_t b = 0; b < cols / QK; b++) {
                uint8_t *blk = row + b * bb;
                for (size_t i = 0; i < bb; i++) blk[i] = (uint8_t)rng_next();
                float d = rng_uniform(0.002f, 0.05f) * (rng_next() & 1 ? -1 : 1);
                if (type == DTYPE_Q8_0) d *= 0.1f;
                store_u16(blk, f32_to_fp16(d));
                if (type == DTYPE_Q4_1) store_u16(blk + 2, f32_to_fp16(rng_uniform(-0.3f, 0.3f)));
            }
        }
        dtype_to_f32(type, row, tw->deq + r * cols, cols);
    }
    tw->w = (kernel_weight){type, rows, cols, tw->data, row_bytes, NULL};
}

static void weight_free(test_weight *tw) {
    free(tw->data);
    free(tw->deq);
}

/* Activations: uniform with a few outliers (they set a block's scale) and one all-zero block
 * (the zero-scale path). */
static float *activations_make(int n, int64_t cols) {
    float *x = malloc((size_t)n * cols * sizeof *x);
    for (int64_t i = 0; i < n * cols; i++) {
        x[i] = rng_uniform(-1, 1);
        if (rng_next() % 97 == 0) x[i] *= 20;
    }
    if (cols >= QK) memset(x, 0, QK * sizeof *x);
    return x;
}

/* The 8-bit activation format as ops.h and cpu_simd.h document it, written independently. */
static void test_quantize(const float *x, cpu_block_q8 *y, int64_t k) {
    for (int64_t b = 0; b < k / QK; b++) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[b * QK + j]));
        bool tiny = !(amax >= 1e-30f); /* CPU_ACT_TINY: zeros, not infinities */
        float d = tiny ? 0.0f : amax / 127.0f, id = tiny ? 0.0f : 127.0f / amax;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            float r = (float)rint((double)(x[b * QK + j] * id)); /* ties to even */
            y[b].qs[j] = (int8_t)r;
            sum += (int)r;
        }
        y[b].d = d;
        y[b].s = d * (float)sum;
    }
}

/* The 16-bit format: scale max|x| / 32767, and s the F32 sum of the block in the order
 * cpu_simd.h fixes (eight interleaved partial sums, then halving). */
static void test_quantize16(const float *x, int16_t *qs, float *ds, int64_t k) {
    for (int64_t b = 0; b < k / QK; b++) {
        const float *v = x + b * QK;
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(v[j]));
        bool tiny = !(amax >= 1e-30f);
        float d = tiny ? 0.0f : amax / 32767.0f, id = tiny ? 0.0f : 32767.0f / amax;
        for (int j = 0; j < QK; j++) qs[b * QK + j] = (int16_t)rint((double)(v[j] * id));
        float p[8];
        for (int l = 0; l < 8; l++) p[l] = (v[l] + v[l + 8]) + (v[l + 16] + v[l + 24]);
        float q[4] = {p[0] + p[4], p[1] + p[5], p[2] + p[6], p[3] + p[7]};
        ds[2 * b] = d;
        ds[2 * b + 1] = (q[0] + q[2]) + (q[1] + q[3]);
    }
}

/* ---- backends under test ---- */

#define MAX_LEVELS 4
static const int thread_counts[3] = {1, 2, 3};
/* The activation precisions, ACT_ACCURATE and ACT_INT8 by index. */
enum { ACT_ACCURATE, ACT_INT8, N_ACTS };
static const kernel_act_precision acts[N_ACTS] = {KERNEL_ACT_ACCURATE, KERNEL_ACT_INT8};

typedef struct level {
    const char *name;
    kernel_ops *ops[3];          /* by thread_counts, the default (accurate) precision */
    kernel_ops *acts[N_ACTS][3]; /* by precision and thread count; acts[ACT_ACCURATE] = ops */
} level;

static level levels[MAX_LEVELS];
static int n_levels;

static void levels_open(void) {
    cinder_error err = {0};
#ifdef TEST_AVX512_EMULATED
    /* AVX2 beside the emulated AVX-512 kernels: their 16-bit matmuls must agree bit for bit */
    const cpu_simd_table *tables[] = {&cpu_simd_scalar, &cpu_simd_avx2, &cpu_simd_avx512_emulated};
    for (int l = 0; l < 3; l++) {
        if (l == 1 && !kernel_cpu_simd_supported(KERNEL_SIMD_AVX2)) {
            printf("skipping the AVX2 and emulated AVX-512 kernels: they need AVX2 to run\n");
            break;
        }
        levels[n_levels].name = tables[l]->name;
        for (int a = 0; a < N_ACTS; a++)
            for (int i = 0; i < 3; i++) {
                levels[n_levels].acts[a][i] =
                    cpu_ops_create_table(thread_counts[i], tables[l], acts[a], &err);
                CN_ASSERT(levels[n_levels].acts[a][i]);
            }
        n_levels++;
    }
#else
    for (int s = KERNEL_SIMD_SCALAR; s < KERNEL_SIMD_COUNT; s++) {
        if (!kernel_cpu_simd_supported((kernel_simd)s)) {
            printf("this CPU has no %s: its kernels are not tested here\n",
                   kernel_simd_name((kernel_simd)s));
            continue;
        }
        for (int a = 0; a < N_ACTS; a++)
            for (int i = 0; i < 3; i++) {
                kernel_cpu_options o = {thread_counts[i], (kernel_simd)s, acts[a]};
                kernel_ops *k = kernel_cpu_create_opts(&o, &err);
                CHECK_MSG(k != NULL, "%s", err.msg);
                if (!k) exit(1);
                levels[n_levels].acts[a][i] = k;
            }
        levels[n_levels].name = levels[n_levels].acts[ACT_ACCURATE][0]->name;
        n_levels++;
    }
#endif
    for (int l = 0; l < n_levels; l++)
        memcpy(levels[l].ops, levels[l].acts[ACT_ACCURATE], sizeof levels[l].ops);
    for (int l = 0; l < n_levels; l++) printf("testing %s\n", levels[l].name);
}

static void levels_close(void) {
    for (int l = 0; l < n_levels; l++)
        for (int a = 0; a < N_ACTS; a++)
            for (int i = 0; i < 3; i++) kernel_ops_free(levels[l].acts[a][i]);
}

/* ---- matmul ---- */

/* Checks one matmul shape and weight type on every level and thread count, and for quantized
 * weights on both activation precisions.
 *
 * References, in double:
 *  - exact:  out = x · Wᵀ with the dequantized weights and the F32 activations;
 *  - quant:  per precision, the same with the activations as the kernels see them (x̂:
 *            quantized by test_quantize or test_quantize16; unchanged for float weights).
 *            On the 16-bit path Q4_1's offset m multiplies the block's F32 sum s instead:
 *            quant = Σ (w - m)·x̂ + Σ_blocks m·s.
 * Against `quant`, only fp32 rounding differs: each block's term d_w·d_x·isum (isum exact in
 * integers) is rounded a few times, then up to nb (or cols) terms, and Q4_1's m terms, are
 * summed in fp32, so |err| <= (terms + 16)·4u·M, M the sum of the magnitudes of the products
 * (for Q4_1 the q·d and m parts separately: |q·d| <= |w| + |m|).
 * Against `exact`, the quantization adds its bound: a value is off by at most d/2 (d = block
 * max / qmax; round to nearest), so |err| <= Σ_blocks d/2 · Σ|w| in the block (Σ|w - m| on
 * the 16-bit path, plus |m|·|s - Σx| for its sum's rounding).
 *
 * The 16-bit d is the 8-bit one divided by 32767 / 127 = 258, and so is the error: each
 * output's is a sum of independent roundings, uniform in ±d/2, so its r.m.s. scales with d.
 * On shapes with enough outputs (>= 256) for the r.m.s. to be steady, the accurate path's
 * r.m.s. error against `exact` must be at least 100 times below the 8-bit path's. */
static void check_matmul(dtype type, int64_t rows, int64_t cols, int n) {
    test_weight tw;
    weight_make(&tw, type, rows, cols);
    float *x = activations_make(n, cols);
    const bool quant = dtype_is_quantized(type);
    const int n_acts = quant ? N_ACTS : 1;
    const int64_t nb = cols / QK;
    const size_t out_n = (size_t)n * rows;
    const char *act_name[N_ACTS] = {"accurate", "int8"};

    /* Per precision: the activations the kernels multiply, d/2 and (16-bit path) the F32 sum
     * of each block. */
    float *xq[N_ACTS] = {0}, *sums = NULL;
    double *half[N_ACTS] = {0};
    for (int a = 0; a < n_acts; a++) {
        xq[a] = malloc((size_t)n * cols * sizeof(float));
        half[a] = calloc((size_t)n * nb + 1, sizeof(double));
    }
    if (quant) {
        cpu_block_q8 *b8 = malloc((size_t)n * nb * sizeof *b8);
        int16_t *q16 = malloc((size_t)n * cols * sizeof *q16);
        float *ds = malloc((size_t)n * nb * 2 * sizeof *ds);
        sums = malloc((size_t)n * nb * sizeof *sums);
        test_quantize(x, b8, n * cols);
        test_quantize16(x, q16, ds, n * cols);
        for (int64_t b = 0; b < n * nb; b++) {
            for (int j = 0; j < QK; j++) {
                xq[ACT_INT8][b * QK + j] = b8[b].qs[j] * b8[b].d;
                xq[ACT_ACCURATE][b * QK + j] = q16[b * QK + j] * ds[2 * b];
            }
            half[ACT_INT8][b] = b8[b].d / 2.0 * (1 + 1e-5);
            half[ACT_ACCURATE][b] = ds[2 * b] / 2.0 * (1 + 1e-5);
            sums[b] = ds[2 * b + 1];
        }
        free(b8), free(q16), free(ds);
    } else {
        memcpy(xq[0], x, (size_t)n * cols * sizeof(float));
    }
    /* Q4_1's offsets, per row and block (0 for the other types) */
    float *mw = calloc((size_t)rows * nb + 1, sizeof *mw);
    if (type == DTYPE_Q4_1)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t b = 0; b < nb; b++) {
                uint16_t m;
                memcpy(&m, tw.data + r * tw.w.row_bytes + b * sizeof(block_q4_1) + 2, 2);
                mw[r * nb + b] = fp16_to_f32(m);
            }

    float *out[MAX_LEVELS][N_ACTS][3];
    for (int l = 0; l < n_levels; l++)
        for (int a = 0; a < n_acts; a++)
            for (int i = 0; i < 3; i++) {
                out[l][a][i] = malloc(out_n * sizeof(float));
                kernel_matmul(levels[l].acts[a][i], out[l][a][i], x, &tw.w, n);
            }

    int bad_exact = 0, bad_quant = 0, bad_levels = 0, bad_threads = 0;
    double worst_ratio[N_ACTS] = {0}, sq_err[MAX_LEVELS][N_ACTS] = {{0}};
    for (int t = 0; t < n; t++) {
        for (int64_t r = 0; r < rows; r++) {
            const float *w = tw.deq + r * cols, *xt = x + t * cols;
            double exact = 0;
            for (int64_t k = 0; k < cols; k++) exact += (double)w[k] * xt[k];
            for (int a = 0; a < n_acts; a++) {
                /* the 16-bit path takes Q4_1's m apart, on the block sums */
                const bool m_apart = quant && a == ACT_ACCURATE && type == DTYPE_Q4_1;
                const float *qt = xq[a] + t * cols;
                double ref = 0, mag = 0, qbound = 0;
                for (int64_t k = 0; k < cols; k++) {
                    double m = quant ? mw[r * nb + k / QK] : 0, wk = w[k];
                    if (m_apart) wk -= m;
                    ref += wk * qt[k];
                    mag += (fabs(wk) + 2 * fabs(m)) * fabs(qt[k]);
                    if (quant) qbound += fabs(wk) * half[a][t * nb + k / QK];
                }
                if (m_apart)
                    for (int64_t b = 0; b < nb; b++) {
                        double m = mw[r * nb + b], s = sums[t * nb + b], sx = 0;
                        for (int j = 0; j < QK; j++) sx += xt[b * QK + j];
                        ref += m * s;
                        mag += fabs(m * s);
                        qbound += fabs(m) * fabs(s - sx);
                    }
                double terms = quant ? (double)nb : (double)cols;
                double tol = (terms + 16) * 4 * U * mag + 1e-30;
                for (int l = 0; l < n_levels; l++) {
                    double got = out[l][a][0][t * rows + r];
                    if (!(fabs(got - ref) <= tol) && bad_quant++ < 5)
                        fprintf(stderr,
                                "%s %s %s [%lld x %lld] n=%d t=%d r=%lld: %.9g, reference %.9g "
                                "(tol %.3g)\n",
                                levels[l].name, act_name[a], dtype_name(type), (long long)rows,
                                (long long)cols, n, t, (long long)r, got, ref, tol);
                    if (!(fabs(got - exact) <= qbound + tol) && bad_exact++ < 5)
                        fprintf(stderr, "%s %s %s: %.9g, exact %.9g (bound %.3g)\n", levels[l].name,
                                act_name[a], dtype_name(type), got, exact, qbound + tol);
                    if (qbound > 0)
                        worst_ratio[a] = fmax(worst_ratio[a], fabs(got - exact) / qbound);
                    sq_err[l][a] += (got - exact) * (got - exact);
                    double scalar = out[0][a][0][t * rows + r];
                    if (!(fabs(got - scalar) <= 2 * tol) && bad_levels++ < 5)
                        fprintf(stderr, "%s %s %s: %.9g, scalar %.9g\n", levels[l].name,
                                act_name[a], dtype_name(type), got, scalar);
                }
            }
        }
    }
    /* the same bits for 1, 2 and 3 threads, and for the last token alone (other tiles) */
    float *alone = malloc(rows * sizeof *alone);
    int bad_batch = 0;
    for (int l = 0; l < n_levels; l++)
        for (int a = 0; a < n_acts; a++) {
            for (int i = 1; i < 3; i++)
                if (memcmp(out[l][a][i], out[l][a][0], out_n * sizeof(float)) != 0 &&
                    bad_threads++ < 5)
                    fprintf(stderr, "%s %s %s [%lld x %lld] n=%d: %d threads differ from 1\n",
                            levels[l].name, act_name[a], dtype_name(type), (long long)rows,
                            (long long)cols, n, thread_counts[i]);
            kernel_matmul(levels[l].acts[a][1], alone, x + (n - 1) * cols, &tw.w, 1);
            bad_batch += memcmp(alone, out[l][a][0] + (n - 1) * rows, rows * sizeof *alone) != 0;
        }
    free(alone);
    /* The AVX2 and AVX-512 16-bit matmuls do the same float operations in the same order on
     * exact integer sums: the same bits. */
    int bad_x86 = 0;
    for (int l = 0; quant && l < n_levels; l++)
        for (int k = 0; k < n_levels; k++)
            if (strcmp(levels[l].name, "cpu-avx2") == 0 &&
                strncmp(levels[k].name, "cpu-avx512", 10) == 0 &&
                memcmp(out[l][ACT_ACCURATE][0], out[k][ACT_ACCURATE][0], out_n * sizeof(float)) !=
                    0 &&
                bad_x86++ < 5)
                fprintf(stderr, "%s [%lld x %lld] n=%d: %s and %s differ\n", dtype_name(type),
                        (long long)rows, (long long)cols, n, levels[l].name, levels[k].name);
    CHECK_MSG(bad_x86 == 0, "%s [%lld x %lld] n=%d: AVX2 and AVX-512 16-bit matmuls differ",
              dtype_name(type), (long long)rows, (long long)cols, n);
    /* a prepared weight (the backend's own layout, where it has one) gives the same bits */
    int bad_prepared = 0;
    float *prep_out = malloc(out_n * sizeof *prep_out);
    for (int l = 0; l < n_levels; l++)
        for (int a = 0; a < n_acts; a++)
            for (int i = 0; i < 3; i++) {
                kernel_weight pw = tw.w;
                cinder_error err = {0};
                CHECK_MSG(kernel_prepare_weight(levels[l].acts[a][i], &pw, &err) == CINDER_OK, "%s",
                          err.msg);
                kernel_matmul(levels[l].acts[a][i], prep_out, x, &pw, n);
                if (memcmp(prep_out, out[l][a][i], out_n * sizeof(float)) != 0 &&
                    bad_prepared++ < 5)
                    fprintf(stderr, "%s %s %s [%lld x %lld] n=%d, %d threads: prepared weight %s\n",
                            levels[l].name, act_name[a], dtype_name(type), (long long)rows,
                            (long long)cols, n, thread_counts[i],
                            pw.prepared ? "differs" : "(not prepared) differs");
            }
    free(prep_out);
    CHECK_MSG(bad_prepared == 0, "%s [%lld x %lld] n=%d: prepared and file layouts differ",
              dtype_name(type), (long long)rows, (long long)cols, n);
    CHECK_MSG(bad_batch == 0, "%s [%lld x %lld] n=%d: a token alone differs from in the batch",
              dtype_name(type), (long long)rows, (long long)cols, n);
    CHECK_MSG(bad_quant == 0, "%s [%lld x %lld] n=%d vs the quantized-activation reference",
              dtype_name(type), (long long)rows, (long long)cols, n);
    CHECK_MSG(bad_exact == 0, "%s [%lld x %lld] n=%d vs the exact reference", dtype_name(type),
              (long long)rows, (long long)cols, n);
    CHECK_MSG(bad_levels == 0, "%s [%lld x %lld] n=%d: SIMD vs scalar", dtype_name(type),
              (long long)rows, (long long)cols, n);
    CHECK_MSG(bad_threads == 0, "%s [%lld x %lld] n=%d: thread counts", dtype_name(type),
              (long long)rows, (long long)cols, n);
    if (quant && rows * n >= 256)
        for (int l = 0; l < n_levels; l++) {
            double gain = sqrt(sq_err[l][ACT_INT8] / sq_err[l][ACT_ACCURATE]);
            CHECK_MSG(gain >= 100, "%s %s [%lld x %lld] n=%d: accurate path only %.1fx better",
                      levels[l].name, dtype_name(type), (long long)rows, (long long)cols, n, gain);
        }
    /* The worst-case bounds are loose (they assume every rounding error has the same sign);
     * the real errors sit far inside them. Printed for the record on the largest shapes. */
    if (quant && rows * cols >= 576 * 1536)
        printf("  %s [%lld x %lld] n=%d: worst |err| / bound: int8 %.3f, accurate %.3f; "
               "r.m.s. error int8 / accurate: %.0f\n",
               dtype_name(type), (long long)rows, (long long)cols, n, worst_ratio[ACT_INT8],
               worst_ratio[ACT_ACCURATE], sqrt(sq_err[0][ACT_INT8] / sq_err[0][ACT_ACCURATE]));

    for (int l = 0; l < n_levels; l++)
        for (int a = 0; a < n_acts; a++)
            for (int i = 0; i < 3; i++) free(out[l][a][i]);
    for (int a = 0; a < n_acts; a++) free(xq[a]), free(half[a]);
    free(sums);
    free(mw);
    free(x);
    weight_free(&tw);
}

static void test_matmul(void) {
    static const struct {
        int64_t rows, cols;
        int n;
    } shapes[] = {
        {1, 32, 1},     {7, 64, 3},      {33, 96, 17},   {1, 576, 3}, {576, 576, 1},
        {576, 1536, 3}, {1536, 576, 17}, {33, 1536, 70}, /* 70: past one 64-token block */
        {49, 576, 6},   {1000, 64, 1},                   /* groups of 8 rows: a short last one */
        {7, 37, 3},     {5, 40, 2},      {3, 15, 1},     /* float types only: odd widths */
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int t = 0; t < DTYPE_COUNT; t++) {
            if (dtype_is_quantized((dtype)t) && shapes[s].cols % QK != 0) continue;
            check_matmul((dtype)t, shapes[s].rows, shapes[s].cols, shapes[s].n);
        }
}

/* Runs matmul_multi over count weights (prepared first if prep), through the backend's op and
 * through kernel_matmul_multi's fallback, and counts the outputs whose bits differ from a
 * matmul call's; what names the case in messages. */
enum { MULTI_MAX_W = 11 };
static int check_matmul_multi(kernel_ops *k, const test_weight *tw, int count, const float *x,
                              int n, bool prep, const char *what) {
    kernel_weight w[MULTI_MAX_W];
    kernel_matmul_out outs[MULTI_MAX_W];
    float *want[MULTI_MAX_W];
    for (int i = 0; i < count; i++) {
        w[i] = tw[i].w;
        cinder_error err = {0};
        if (prep) CHECK_MSG(kernel_prepare_weight(k, &w[i], &err) == CINDER_OK, "%s", err.msg);
        size_t bytes = (size_t)n * w[i].rows * sizeof(float);
        want[i] = malloc(bytes);
        kernel_matmul(k, want[i], x, &w[i], n);
        outs[i] = (kernel_matmul_out){malloc(bytes), &w[i]}; /* NaN-filled before each run */
    }
    /* the backend's op, then the wrapper's fallback (what a backend without it runs) */
    kernel_ops fallback = *k;
    fallback.matmul_multi = NULL;
    kernel_ops *run[2] = {k, &fallback};
    int bad = 0;
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < count; i++)
            memset(outs[i].out, 0xff, (size_t)n * w[i].rows * sizeof(float));
        kernel_matmul_multi(run[r], outs, count, x, n);
        for (int i = 0; i < count; i++) {
            bool same = memcmp(outs[i].out, want[i], (size_t)n * w[i].rows * sizeof(float)) == 0;
            if (!same)
                fprintf(stderr, "%s%s: weight %d (%s x %lld) differs from matmul\n", what,
                        r ? " (fallback)" : "", i, dtype_name(w[i].type), (long long)w[i].rows);
            bad += !same;
        }
    }
    for (int i = 0; i < count; i++) {
        free(outs[i].out);
        free(want[i]);
    }
    return bad;
}

/* matmul_multi gives the bits of separate matmul calls: weight sets of one type, mixed ones
 * (quantized beside float: one quantization, float rows on x), more weights than one job
 * takes, row counts off the 8-row groups; file and prepared layouts; every level, both
 * precisions, 1 and 2 threads. */
static void test_matmul_multi(void) {
    enum { COLS = 96 };
    static const struct {
        int count;
        dtype types[MULTI_MAX_W];
        int64_t rows[MULTI_MAX_W];
    } sets[] = {
        {3, {DTYPE_Q4_1, DTYPE_Q4_1, DTYPE_Q4_1}, {72, 24, 24}},
        {2, {DTYPE_Q8_0, DTYPE_Q8_0}, {40, 40}},
        {2, {DTYPE_F32, DTYPE_F32}, {17, 3}},
        {1, {DTYPE_Q4_0}, {9}},
        {5, {DTYPE_Q4_1, DTYPE_F32, DTYPE_Q8_0, DTYPE_F16, DTYPE_Q4_0}, {33, 8, 1, 13, 64}},
        {MULTI_MAX_W,
         {DTYPE_Q4_1, DTYPE_Q8_0, DTYPE_Q4_0, DTYPE_BF16, DTYPE_Q4_1, DTYPE_F32, DTYPE_Q8_0,
          DTYPE_Q4_1, DTYPE_Q4_0, DTYPE_F16, DTYPE_Q4_1},
         {5, 16, 31, 2, 200, 7, 8, 9, 64, 3, 100}},
    };
    static const int ns[] = {1, 37};
    const char *act_name[N_ACTS] = {"accurate", "int8"};
    int bad = 0;
    for (size_t si = 0; si < sizeof sets / sizeof sets[0]; si++) {
        test_weight tw[MULTI_MAX_W];
        for (int i = 0; i < sets[si].count; i++)
            weight_make(&tw[i], sets[si].types[i], sets[si].rows[i], COLS);
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            float *x = activations_make(ns[ni], COLS);
            for (int l = 0; l < n_levels; l++)
                for (int a = 0; a < N_ACTS; a++)
                    for (int ti = 0; ti < 2; ti++)
                        for (int prep = 0; prep < 2; prep++) {
                            char what[128];
                            snprintf(what, sizeof what, "%s %s, %d threads%s, set %zu, n=%d",
                                     levels[l].name, act_name[a], thread_counts[ti],
                                     prep ? ", prepared" : "", si, ns[ni]);
                            bad += check_matmul_multi(levels[l].acts[a][ti], tw, sets[si].count, x,
                                                      ns[ni], prep, what);
                        }
            free(x);
        }
        for (int i = 0; i < sets[si].count; i++) weight_free(&tw[i]);
    }
    CHECK_MSG(bad == 0, "matmul_multi differs from separate matmuls (%d outputs)", bad);
}

/* Every level's quantizers give the blocks test_quantize and test_quantize16 describe, bit
 * for bit. */
static void test_quantize_levels(void) {
    enum { NB = 40 };
    const int64_t k = QK * NB;
    float *x = activations_make(1, k);
    /* awkward values: exact .5 ties (a block whose max is 127 has scale 1; one whose max is
     * 32767, for the 16-bit format), a denormal, one huge value, a block of tiny values (below
     * CPU_ACT_TINY: zeros, where 127 / max would be infinite) */
    for (int j = 0; j < QK; j++) x[QK + j] = j == 0 ? 127.0f : (float)(j - 16) + 0.5f;
    x[2 * QK] = 1e-40f;
    x[3 * QK + 5] = 3e30f;
    for (int j = 0; j < QK; j++) x[4 * QK + j] = 1e-38f * (float)(j - 16);
    for (int j = 0; j < QK; j++) x[5 * QK + j] = j == 7 ? -32767.0f : (float)(j * 1000) + 0.5f;
    cpu_block_q8 *want = malloc(NB * sizeof *want), *got = malloc(NB * sizeof *got);
    test_quantize(x, want, k);
    CHECK(want[4].d == 0 && want[4].qs[0] == 0);
    cpu_quantize_q8_scalar(x, got, k);
    CHECK(memcmp(want, got, NB * sizeof *got) == 0);
    int16_t want16[QK * NB], got16[QK * NB];
    float want_ds[2 * NB], got_ds[2 * NB];
    test_quantize16(x, want16, want_ds, k);
    CHECK(want_ds[2 * 4] == 0 && want16[4 * QK] == 0 && want16[5 * QK + 7] == -32767);
    cpu_quantize_q16_scalar(x, got16, got_ds, k);
    CHECK(memcmp(want16, got16, sizeof got16) == 0 && memcmp(want_ds, got_ds, sizeof got_ds) == 0);
#ifdef CPU_SIMD_X86
    if (kernel_cpu_simd_supported(KERNEL_SIMD_AVX2)) {
        memset(got, 0, NB * sizeof *got);
        cpu_quantize_q8_avx2(x, got, k);
        CHECK(memcmp(want, got, NB * sizeof *got) == 0);
        memset(got16, 0, sizeof got16);
        memset(got_ds, 0, sizeof got_ds);
        cpu_quantize_q16_avx2(x, got16, got_ds, k);
        CHECK(memcmp(want16, got16, sizeof got16) == 0);
        CHECK(memcmp(want_ds, got_ds, sizeof got_ds) == 0);
    }
#endif
    free(want);
    free(got);
    free(x);
}

#ifndef TEST_AVX512_EMULATED

/* ---- the other ops ---- */

static void test_embed(void) {
    int32_t ids[5] = {3, 0, 6, 3, 1};
    for (int t = 0; t < DTYPE_COUNT; t++) {
        test_weight tw;
        weight_make(&tw, (dtype)t, 7, 64);
        float out[5 * 64];
        for (int l = 0; l < n_levels; l++) {
            kernel_embed(levels[l].ops[1], out, &tw.w, ids, 5);
            int bad = 0;
            for (int i = 0; i < 5; i++)
                bad += memcmp(out + i * 64, tw.deq + ids[i] * 64, 64 * 4) != 0;
            CHECK_MSG(bad == 0, "embed %s on %s", dtype_name((dtype)t), levels[l].name);
        }
        weight_free(&tw);
    }
}

static void test_rmsnorm(void) {
    const int n = 5, d = 576;
    float *x = activations_make(n, d), *w = activations_make(1, d), *out = malloc(n * d * 4);
    for (int l = 0; l < n_levels; l++) {
        kernel_rmsnorm(levels[l].ops[2], out, x, w, n, d, 1e-5f);
        int bad = 0;
        for (int t = 0; t < n; t++) {
            double ss = 0;
            for (int i = 0; i < d; i++) ss += (double)x[t * d + i] * x[t * d + i];
            double inv = 1 / sqrt(ss / d + 1e-5);
            /* float products of a double-accurate scale: a few roundings */
            for (int i = 0; i < d; i++) {
                double want = x[t * d + i] * inv * w[i];
                bad += !(fabs(out[t * d + i] - want) <= 4 * U * fabs(want) + 1e-30);
            }
        }
        CHECK_MSG(bad == 0, "rmsnorm on %s: %d values off", levels[l].name, bad);
    }
    /* in place gives the same */
    float *y = malloc(n * d * 4);
    memcpy(y, x, n * d * 4);
    kernel_rmsnorm(levels[0].ops[0], y, y, w, n, d, 1e-5f);
    kernel_rmsnorm(levels[0].ops[0], out, x, w, n, d, 1e-5f);
    CHECK(memcmp(y, out, n * d * 4) == 0);
    /* a large batch goes through the pool: same bits for 1 and 3 threads */
    const int big = 300;
    float *xb = activations_make(big, d), *o1 = malloc(big * d * 4), *o3 = malloc(big * d * 4);
    kernel_rmsnorm(levels[0].ops[0], o1, xb, w, big, d, 1e-6f);
    kernel_rmsnorm(levels[0].ops[2], o3, xb, w, big, d, 1e-6f);
    CHECK(memcmp(o1, o3, big * d * 4) == 0);
    free(xb), free(o1), free(o3), free(y), free(x), free(w), free(out);
}

/* RoPE against the explicit formulas: pair (a, b) turns by angle pos·inv_freq[i]. */
static void test_rope(void) {
    const int n = 4, heads = 3, hd = 64;
    const int32_t pos[4] = {0, 1, 4097, 100000};
    const rope_layout layouts[2] = {ROPE_LAYOUT_INTERLEAVED, ROPE_LAYOUT_HALF};
    const int rope_dims[2] = {64, 32}; /* full and partial rotation */
    for (int li = 0; li < 2; li++)
        for (int di = 0; di < 2; di++) {
            int rd = rope_dims[di], half = rd / 2;
            float inv_freq[32];
            CHECK(kernel_rope_inv_freq(inv_freq, rd, 100000.0f, NULL, NULL) == CINDER_OK);
            float *x = activations_make(n, heads * hd), *y = malloc(n * heads * hd * 4);
            memcpy(y, x, n * heads * hd * 4);
            kernel_rope(levels[0].ops[0], y, pos, n, heads, hd, rd, layouts[li], inv_freq);
            int bad = 0;
            for (int t = 0; t < n; t++)
                for (int h = 0; h < heads; h++) {
                    const float *v = x + (t * heads + h) * hd;
                    const float *got = y + (t * heads + h) * hd;
                    double want[64];
                    for (int i = 0; i < hd; i++) want[i] = v[i]; /* past rope_dim: unchanged */
                    for (int i = 0; i < half; i++) {
                        double th = (double)pos[t] * inv_freq[i], c = cos(th), s = sin(th);
                        if (layouts[li] == ROPE_LAYOUT_INTERLEAVED) {
                            want[2 * i] = v[2 * i] * c - v[2 * i + 1] * s;
                            want[2 * i + 1] = v[2 * i] * s + v[2 * i + 1] * c;
                        } else {
                            want[i] = v[i] * c - v[i + half] * s;
                            want[i + half] = v[i] * s + v[i + half] * c;
                        }
                    }
                    /* cos and sin rounded to float, two products and a sum: a few units of
                     * roundoff of |a| + |b| */
                    for (int i = 0; i < hd; i++) {
                        int partner = layouts[li] == ROPE_LAYOUT_INTERLEAVED ? i ^ 1
                                      : i < half                             ? i + half
                                                                             : i - half;
                        double scale = i < rd ? fabs(v[i]) + fabs(v[partner]) : 0;
                        bad += !(fabs(got[i] - want[i]) <= 8 * U * scale);
                    }
                }
            CHECK_MSG(bad == 0, "rope layout %d rope_dim %d: %d values off", li, rd, bad);
            /* every level and thread count: same bits (rope is plain C on all) */
            float *z = malloc(n * heads * hd * 4);
            for (int l = 0; l < n_levels; l++)
                for (int i = 0; i < 3; i++) {
                    memcpy(z, x, n * heads * hd * 4);
                    kernel_rope(levels[l].ops[i], z, pos, n, heads, hd, rd, layouts[li], inv_freq);
                    CHECK(memcmp(z, y, n * heads * hd * 4) == 0);
                }
            free(z), free(x), free(y);
        }
}

static void test_rope_inv_freq(void) {
    float f[64];
    cinder_error err = {0};
    /* none: theta^(-2i/d) */
    CHECK(kernel_rope_inv_freq(f, 64, 100000.0f, NULL, &err) == CINDER_OK);
    CHECK(f[0] == 1.0f);
    CHECK(fabs(f[16] - 1 / sqrt(100000.0)) < 1e-7 * f[16]); /* 2*16/64 = 1/2 */
    /* linear: divided by the factor */
    kernel_rope_scaling lin = {ROPE_SCALING_LINEAR, 4.0f, 0, 0, 0};
    float g[64];
    CHECK(kernel_rope_inv_freq(g, 64, 100000.0f, &lin, &err) == CINDER_OK);
    CHECK(g[0] == 0.25f && fabs(g[16] - f[16] / 4) < 1e-7 * g[16]);
    /* llama3 with Llama 3.1's parameters (theta 500000, head_dim 128, factor 8, low 1,
     * high 4, original context 8192), values from HF's _compute_llama3_parameters evaluated
     * in float64 by hand: i <= 28 keep theta^(-2i/128) (wavelength < 2048), i >= 35 are
     * divided by 8 (wavelength > 8192), 29..34 blend with smooth = (8192/wavelen - 1) / 3. */
    kernel_rope_scaling l3 = {ROPE_SCALING_LLAMA3, 8.0f, 1.0f, 4.0f, 8192};
    CHECK(kernel_rope_inv_freq(f, 128, 500000.0f, &l3, &err) == CINDER_OK);
    static const struct {
        int i;
        double want;
    } l3_want[] = {
        {0, 1.0},
        {1, 0.8146172338565447},
        {20, 0.016560440080994446},
        {29, 0.002166570763503359},   /* smooth 0.803621 */
        {30, 0.0013718935677611381},  /* smooth 0.592849 */
        {32, 0.0005248461609929547},  /* smooth 0.281283 */
        {34, 0.00017850781276799638}, /* smooth 0.074527 */
        {35, 9.556212353964683e-05},
        {46, 1.0017868402809974e-05},
        {63, 3.068925988914511e-07},
    };
    for (size_t k = 0; k < sizeof l3_want / sizeof l3_want[0]; k++)
        CHECK_MSG(fabs(f[l3_want[k].i] - l3_want[k].want) <= 1e-6 * l3_want[k].want,
                  "llama3 inv_freq[%d] = %.9g, want %.9g", l3_want[k].i, f[l3_want[k].i],
                  l3_want[k].want);
    /* not yet, and wrong */
    kernel_rope_scaling dyn = {ROPE_SCALING_DYNAMIC, 2.0f, 0, 0, 0};
    kernel_rope_scaling yarn = {ROPE_SCALING_YARN, 2.0f, 0, 0, 0};
    CHECK(kernel_rope_inv_freq(f, 64, 10000.0f, &dyn, &err) == CINDER_ERR_UNSUPPORTED);
    CHECK(kernel_rope_inv_freq(f, 64, 10000.0f, &yarn, &err) == CINDER_ERR_UNSUPPORTED);
    CHECK(test_contains(err.msg, "YaRN"));
    kernel_rope_scaling bad_l3 = {ROPE_SCALING_LLAMA3, 8.0f, 4.0f, 1.0f, 8192};
    CHECK(kernel_rope_inv_freq(f, 64, 10000.0f, &bad_l3, &err) == CINDER_ERR_ARG);
    CHECK(kernel_rope_inv_freq(f, 63, 10000.0f, NULL, &err) == CINDER_ERR_ARG);
    /* from a config */
    model_config cfg = {.rope_scaling = ROPE_SCALING_LLAMA3,
                        .rope_scaling_factor = 8,
                        .rope_low_freq_factor = 1,
                        .rope_high_freq_factor = 4,
                        .rope_original_context = 8192};
    kernel_rope_scaling s = kernel_rope_scaling_from_config(&cfg);
    CHECK(s.type == ROPE_SCALING_LLAMA3 && s.factor == 8 && s.original_context == 8192);
}

static void test_elementwise(void) {
    const int n = 3, f = 1536;
    float *g = activations_make(n, f), *u = activations_make(n, f), *out = malloc(n * f * 4);
    g[7] = -100; /* exp(100) overflows to inf: silu must still give -0 */
    g[8] = 100;
    for (int l = 0; l < n_levels; l++) {
        kernel_swiglu(levels[l].ops[2], out, g, u, n, f);
        int bad = 0;
        for (int i = 0; i < n * f; i++) {
            double want = g[i] / (1 + exp(-(double)g[i])) * u[i];
            /* expf within a few ulp, then a sum, a division and a product */
            bad += !(fabs(out[i] - want) <= 8 * U * fabs(want) + 1e-30);
        }
        CHECK_MSG(bad == 0, "swiglu on %s: %d values off", levels[l].name, bad);
    }
    float *same = malloc(n * f * 4);
    memcpy(same, g, n * f * 4);
    kernel_swiglu(levels[0].ops[0], same, same, u, n, f); /* out aliases gate */
    CHECK(memcmp(same, out, n * f * 4) == 0);

    /* add: exact, also on a count large enough to be split across threads */
    const int64_t big = 300000;
    float *a = activations_make(1, big), *b = activations_make(1, big), *c = malloc(big * 4);
    kernel_add(levels[0].ops[2], c, a, b, big);
    int bad = 0;
    for (int64_t i = 0; i < big; i++) bad += c[i] != a[i] + b[i];
    CHECK(bad == 0);
    kernel_add(levels[0].ops[1], a, a, b, big); /* in place */
    CHECK(memcmp(a, c, big * 4) == 0);

    /* softmax: sums to 1, matches exp(x - max) / sum */
    float sm[2 * 50];
    for (int i = 0; i < 100; i++) sm[i] = rng_uniform(-30, 30);
    sm[60] = 1000; /* no overflow: max is subtracted */
    float orig[100];
    memcpy(orig, sm, sizeof sm);
    kernel_softmax(levels[0].ops[0], sm, 2, 50);
    for (int t = 0; t < 2; t++) {
        double mx = -INFINITY, sum = 0, total = 0;
        for (int i = 0; i < 50; i++) mx = fmax(mx, orig[t * 50 + i]);
        for (int i = 0; i < 50; i++) sum += exp(orig[t * 50 + i] - mx);
        bad = 0;
        for (int i = 0; i < 50; i++) {
            double want = exp(orig[t * 50 + i] - mx) / sum;
            /* x - max is rounded in float: exp's relative error grows with |x - max|·u */
            double tol = (fabs(orig[t * 50 + i] - mx) + 8) * U * want + 1e-45;
            bad += !(fabs(sm[t * 50 + i] - want) <= tol);
            total += sm[t * 50 + i];
        }
        CHECK(bad == 0);
        CHECK(fabs(total - 1) < 1e-5);
    }

    /* argmax: the first of equal maxima; NaN never wins */
    float am[3 * 4] = {1, 5, 5, 2, NAN, -1, -3, NAN, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int32_t idx[3];
    kernel_argmax(levels[0].ops[0], idx, am, 3, 4);
    CHECK_EQ_INT(idx[0], 1);
    CHECK_EQ_INT(idx[1], 1);
    CHECK_EQ_INT(idx[2], 0);
    free(g), free(u), free(out), free(same), free(a), free(b), free(c);
}

/* ---- attention ---- */

/* Sequences of the attention checks: 0 is prefilled whole, in chunks and in a batch, 1 and 2
 * keep it company in the batch (2 decoding). Every position's K/V is written up front into
 * scattered blocks of a NaN-poisoned pool of type kvt (F32, F16, BF16), so a key read outside a
 * sequence's context shows. */
enum { ATTN_SEQS = 3, ATTN_HEADS_MAX = 9 };
static const int attn_len[ATTN_SEQS] = {100, 37, 70};

typedef struct attn_setup {
    int n_heads, n_kv, hd, bs, window;
    dtype kvt;
    kernel_kv_layer kv;
    int32_t *table[ATTN_SEQS];
    float *q[ATTN_SEQS]; /* [attn_len, n_heads, hd] */
    float *k[ATTN_SEQS]; /* [attn_len, n_kv, hd] */
    float *v[ATTN_SEQS];
    float *kq, *vq; /* sequence 0's k and v as the pool holds them (rounded to kvt) */
} attn_setup;

static void attn_setup_make(attn_setup *a, kernel_ops *k, int bs) {
    int blocks = 0;
    for (int i = 0; i < ATTN_SEQS; i++) blocks += (attn_len[i] + bs - 1) / bs;
    int n_blocks = blocks + 3;
    size_t pool = (size_t)n_blocks * a->n_kv * bs * a->hd, eb = a->kvt == DTYPE_F32 ? 4 : 2;
    a->kv = (kernel_kv_layer){
        malloc(pool * eb), malloc(pool * eb), n_blocks, bs, a->n_kv, a->hd, a->kvt};
    if (a->kvt == DTYPE_F32) {
        for (size_t i = 0; i < pool; i++) a->kv.k[i] = a->kv.v[i] = NAN;
    } else {
        uint16_t nan16 = a->kvt == DTYPE_F16 ? 0x7e00 : 0x7fc0, *k16 = (uint16_t *)a->kv.k;
        for (size_t i = 0; i < pool; i++) k16[i] = nan16;
        memcpy(a->kv.v, a->kv.k, pool * eb);
    }
    int32_t *perm = malloc((size_t)n_blocks * sizeof *perm);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(rng_next() % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int s = 0, b = 0; s < ATTN_SEQS; s++) {
        int n = attn_len[s], nb = (n + bs - 1) / bs;
        a->table[s] = malloc((size_t)nb * sizeof(int32_t));
        memcpy(a->table[s], perm + b, (size_t)nb * sizeof(int32_t));
        b += nb;
        int32_t *slots = malloc((size_t)n * sizeof *slots);
        for (int p = 0; p < n; p++) slots[p] = a->table[s][p / bs] * bs + p % bs;
        kernel_kv_write(k, &a->kv, a->k[s], a->v[s], slots, n);
        free(slots);
    }
    free(perm);
}

static void attn_setup_free_pool(attn_setup *a) {
    free(a->kv.k);
    free(a->kv.v);
    for (int s = 0; s < ATTN_SEQS; s++) free(a->table[s]);
}

/* Sequence 0's queries [0, 100) in one call into out [100, n_heads, hd]. */
static void attn_whole(kernel_ops *k, const attn_setup *a, float *out) {
    kernel_attn_seq s = {0, attn_len[0], attn_len[0], a->table[0]};
    kernel_attention(k, out, a->q[0], &a->kv, &s, 1, a->n_heads, 1 / sqrtf((float)a->hd),
                     a->window);
}

/* Values as a pool of type t holds them: rounded to F16 or BF16 (nearest even). */
static float *attn_rounded(const float *x, size_t n, dtype t) {
    float *r = malloc(n * sizeof *r);
    for (size_t i = 0; i < n; i++)
        r[i] = t == DTYPE_F16    ? fp16_to_f32(f32_to_fp16(x[i]))
               : t == DTYPE_BF16 ? bf16_to_f32(f32_to_bf16(x[i]))
                                 : x[i];
    return r;
}

static void test_attention_case(attn_setup *a) {
    int n = attn_len[0], nh = a->n_heads, hd = a->hd, g = nh / a->n_kv;
    size_t row = (size_t)nh * hd, bytes = (size_t)n * row * sizeof(float);
    size_t kv_vals = (size_t)n * a->n_kv * hd;
    float scale = 1 / sqrtf((float)hd);
    float *ref = malloc(bytes), *out = malloc(bytes), *got = malloc(bytes);
    a->kq = attn_rounded(a->k[0], kv_vals, a->kvt);
    a->vq = attn_rounded(a->v[0], kv_vals, a->kvt);
    static const int sizes[] = {16, 1, 32, 7};
    for (int l = 0; l < n_levels; l++) {
        for (int b = 0; b < 4; b++) {
            attn_setup_make(a, levels[l].ops[0], sizes[b]);
            char what[112];
            snprintf(what, sizeof what,
                     "attention on %s, %s KV, %d:%d heads, hd %d, window %d, bs %d", levels[l].name,
                     dtype_name(a->kvt), nh, a->n_kv, hd, a->window, sizes[b]);
            attn_whole(levels[l].ops[0], a, out);
            if (b == 0 && a->kvt != DTYPE_F32) {
                /* the pool's values widen exactly and the arithmetic is F32's: the same bits as
                 * an F32 pool that holds the rounded values */
                attn_setup f = *a;
                f.kvt = DTYPE_F32;
                f.k[0] = a->kq, f.v[0] = a->vq;
                attn_setup_make(&f, levels[l].ops[0], sizes[b]);
                attn_whole(levels[l].ops[0], &f, got);
                CHECK_MSG(memcmp(got, out, bytes) == 0, "%s: differs from F32 KV of its values",
                          what);
                attn_setup_free_pool(&f);
            }
            if (b == 0) {
                /* against double precision from the values the pool holds: within a few
                 * roundings of the largest |v| (or 1) */
                memcpy(ref, out, bytes);
                double worst = 0;
                double *w = malloc((size_t)n * sizeof *w);
                for (int t = 0; t < n; t++)
                    for (int h = 0; h < nh; h++) {
                        const float *qr = a->q[0] + t * row + (size_t)h * hd;
                        int j0 = a->window > 0 && t - a->window + 1 > 0 ? t - a->window + 1 : 0;
                        double mx = -INFINITY, sum = 0, vmax = 1;
                        for (int j = j0; j <= t; j++) {
                            const float *kr = a->kq + ((size_t)j * a->n_kv + h / g) * hd;
                            double d = 0;
                            for (int i = 0; i < hd; i++) d += (double)qr[i] * kr[i];
                            w[j] = d * scale;
                            mx = w[j] > mx ? w[j] : mx;
                        }
                        for (int j = j0; j <= t; j++) sum += w[j] = exp(w[j] - mx);
                        for (int i = 0; i < hd; i++) {
                            double o = 0;
                            for (int j = j0; j <= t; j++) {
                                float v = a->vq[((size_t)j * a->n_kv + h / g) * hd + i];
                                o += w[j] * v;
                                vmax = fabs(v) > vmax ? fabs(v) : vmax;
                            }
                            double e = fabs(out[t * row + (size_t)h * hd + i] - o / sum) / vmax;
                            worst = e > worst || isnan(e) ? e : worst;
                        }
                    }
                free(w);
                CHECK_MSG(worst <= 64 * U, "%s: off by %.3g of max |v|", what, worst);
            } else {
                /* spans of positions, not blocks: the block size changes nothing */
                CHECK_MSG(memcmp(out, ref, bytes) == 0, "%s: differs from bs 16", what);
            }
            /* 2 and 3 threads */
            for (int i = 1; i < 3; i++) {
                attn_whole(levels[l].ops[i], a, got);
                CHECK_MSG(memcmp(got, out, bytes) == 0, "%s: %d threads differ", what,
                          thread_counts[i]);
            }
            /* in chunks of 7, 40 and 53 */
            static const int cuts[] = {0, 7, 47, 100};
            for (int c = 0; c < 3; c++) {
                kernel_attn_seq s = {0, cuts[c + 1] - cuts[c], cuts[c + 1], a->table[0]};
                kernel_attention(levels[l].ops[1], got + cuts[c] * row, a->q[0] + cuts[c] * row,
                                 &a->kv, &s, 1, nh, scale, a->window);
            }
            CHECK_MSG(memcmp(got, out, bytes) == 0, "%s: chunks differ", what);
            /* queries 70-99 in a batch: behind sequence 1's prompt, before 2's decode row */
            float *bq = malloc((size_t)(37 + 30 + 1) * row * sizeof(float));
            memcpy(bq, a->q[1], 37 * row * sizeof(float));
            memcpy(bq + 37 * row, a->q[0] + 70 * row, 30 * row * sizeof(float));
            memcpy(bq + 67 * row, a->q[2] + 69 * row, row * sizeof(float));
            kernel_attn_seq bs3[3] = {
                {0, 37, 37, a->table[1]}, {37, 30, 100, a->table[0]}, {67, 1, 70, a->table[2]}};
            kernel_attention(levels[l].ops[2], bq, bq, &a->kv, bs3, 3, nh, scale, a->window);
            CHECK_MSG(memcmp(bq + 37 * row, out + 70 * row, 30 * row * sizeof(float)) == 0,
                      "%s: a batch changes a sequence's rows", what);
            free(bq);
            attn_setup_free_pool(a);
        }
    }
    free(ref);
    free(out);
    free(got);
    free(a->kq);
    free(a->vq);
}

/* kv_write into F16 and BF16 pools: the portable converters' bits (round to nearest even) on
 * every level and at 1 and 3 threads, a NaN stays a NaN; F32, F16 and BF16 are supported. */
static void test_kv_write(void) {
    /* HD: an 8-wide piece and a tail; N * NKV * HD > 16384 values: on the pool's threads */
    enum { N = 700, NKV = 2, HD = 12, BS = 16 };
    float *k = activations_make(N, NKV * HD), *v = activations_make(N, NKV * HD);
    k[5] = NAN, k[6] = 70000.0f, k[7] = 65519.0f, k[8] = 3e-6f, k[9] = -1e-9f, v[3] = -INFINITY;
    k[10] = 1.0f + 0x1p-11f, k[11] = 1.0f + 0x3p-11f; /* ties: to even */
    int32_t *slots = malloc(N * sizeof *slots);
    for (int t = 0; t < N; t++) slots[t] = N - 1 - t;
    int n_blocks = (N + BS - 1) / BS;
    size_t vals = (size_t)n_blocks * NKV * BS * HD;
    uint16_t *pk = malloc(vals * 2), *pv = malloc(vals * 2);
    static const dtype types[] = {DTYPE_F16, DTYPE_BF16};
    for (int l = 0; l < n_levels; l++) {
        CHECK(kernel_supports_kv(levels[l].ops[0], DTYPE_F32));
        CHECK(kernel_supports_kv(levels[l].ops[0], DTYPE_F16));
        CHECK(kernel_supports_kv(levels[l].ops[0], DTYPE_BF16));
        CHECK(!kernel_supports_kv(levels[l].ops[0], DTYPE_Q8_0));
        for (int ti = 0; ti < 2; ti++)
            for (int i = 0; i < 3; i += 2) {
                dtype t = types[ti];
                memset(pk, 0xff, vals * 2), memset(pv, 0xff, vals * 2);
                kernel_kv_layer kv = {(float *)pk, (float *)pv, n_blocks, BS, NKV, HD, t};
                kernel_kv_write(levels[l].ops[i], &kv, k, v, slots, N);
                int bad = 0;
                for (int tok = 0; tok < N && !bad; tok++)
                    for (int h = 0; h < NKV; h++)
                        for (int d = 0; d < HD; d++) {
                            int32_t s = slots[tok];
                            size_t at = (((size_t)(s / BS) * NKV + h) * BS + s % BS) * HD + d;
                            float xk = k[((size_t)tok * NKV + h) * HD + d];
                            float xv = v[((size_t)tok * NKV + h) * HD + d];
                            uint16_t wk = t == DTYPE_F16 ? f32_to_fp16(xk) : f32_to_bf16(xk);
                            uint16_t wv = t == DTYPE_F16 ? f32_to_fp16(xv) : f32_to_bf16(xv);
                            float gk = t == DTYPE_F16 ? fp16_to_f32(pk[at]) : bf16_to_f32(pk[at]);
                            if (isnan(xk) ? !isnan(gk) : pk[at] != wk) bad++;
                            if (pv[at] != wv) bad++;
                        }
                CHECK_MSG(!bad, "kv_write on %s, %s pool, %d threads: %d values differ",
                          levels[l].name, dtype_name(t), thread_counts[i], bad);
            }
    }
    free(pk), free(pv), free(slots), free(k), free(v);
}

/* Flash attention against double precision; per level and KV type, identical bits for 1-3
 * threads, for a prompt in chunks, in a batch and for any block size; F16 and BF16 pools give
 * the bits of an F32 pool holding their values. Head dims 64 and 128 have AVX2 kernels; 8 and
 * 48 take the portable one. */
static void test_attention(void) {
    static const int dims[] = {64, 128, 8, 48}, heads[][2] = {{9, 3}, {8, 2}};
    static const dtype kvts[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16};
    for (int t = 0; t < 3; t++)
        for (int d = 0; d < 4; d++)
            for (int h = 0; h < 2; h++)
                for (int window = 0; window <= 20; window += 20) {
                    attn_setup a = {.n_heads = heads[h][0],
                                    .n_kv = heads[h][1],
                                    .hd = dims[d],
                                    .window = window,
                                    .kvt = kvts[t]};
                    for (int s = 0; s < ATTN_SEQS; s++) {
                        a.q[s] = activations_make(attn_len[s], (int64_t)a.n_heads * a.hd);
                        a.k[s] = activations_make(attn_len[s], (int64_t)a.n_kv * a.hd);
                        a.v[s] = activations_make(attn_len[s], (int64_t)a.n_kv * a.hd);
                    }
                    test_attention_case(&a);
                    for (int s = 0; s < ATTN_SEQS; s++) free(a.q[s]), free(a.k[s]), free(a.v[s]);
                }
}

static void test_weight_from_tensor(void) {
    static uint8_t bytes[4 * 2 * sizeof(block_q4_1)];
    model_tensor t = {.name = "blk.0.ffn_up.weight",
                      .type = DTYPE_Q4_1,
                      .n_dims = 2,
                      .shape = {4, 64},
                      .data = bytes,
                      .nbytes = sizeof bytes};
    kernel_weight w;
    cinder_error err = {0};
    CHECK(kernel_weight_from_tensor(&t, &w, &err) == CINDER_OK);
    CHECK(w.rows == 4 && w.cols == 64 && w.row_bytes == 2 * sizeof(block_q4_1) && w.data == bytes);
    t.shape[1] = 48; /* not a whole number of blocks */
    CHECK(kernel_weight_from_tensor(&t, &w, &err) == CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "blk.0.ffn_up.weight"));
    t.shape[1] = 64;
    t.nbytes--;
    CHECK(kernel_weight_from_tensor(&t, &w, &err) == CINDER_ERR_ARG);
    /* 1-D (a norm) is one row; 3-D (experts) stacks the rows */
    float norm[576];
    model_tensor n1 = {.type = DTYPE_F32,
                       .n_dims = 1,
                       .shape = {576},
                       .data = (void *)norm,
                       .nbytes = sizeof norm};
    CHECK(kernel_weight_from_tensor(&n1, &w, &err) == CINDER_OK && w.rows == 1 && w.cols == 576);
    model_tensor e = {.type = DTYPE_Q4_1,
                      .n_dims = 3,
                      .shape = {2, 2, 64},
                      .data = bytes,
                      .nbytes = sizeof bytes};
    CHECK(kernel_weight_from_tensor(&e, &w, &err) == CINDER_OK && w.rows == 4);
    for (int tt = 0; tt < DTYPE_COUNT; tt++) CHECK(kernel_supports(levels[0].ops[0], (dtype)tt));
}

static void test_create(void) {
    cinder_error err = {0};
    CHECK_STR_EQ(kernel_simd_name(KERNEL_SIMD_AVX512), "avx512");
    CHECK(kernel_cpu_simd_supported(kernel_cpu_simd_best()));
    setenv("CINDER_SIMD", "scalar", 1);
    kernel_ops *k = kernel_cpu_create(2, &err);
    CHECK(k && strcmp(k->name, "cpu-scalar") == 0);
    CHECK(kernel_reserve(k, 64, 1536, &err) == CINDER_OK);
    kernel_ops_free(k);
    setenv("CINDER_SIMD", "sse9", 1);
    CHECK(kernel_cpu_create(1, &err) == NULL && err.status == CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "sse9"));
    unsetenv("CINDER_SIMD");
    k = kernel_cpu_create(0, &err); /* one thread per CPU, the best level */
    CHECK(k != NULL);
    kernel_ops_free(k);
    kernel_ops_free(NULL);
    if (!kernel_cpu_simd_supported(KERNEL_SIMD_AVX512)) {
        CHECK(kernel_cpu_create_simd(1, KERNEL_SIMD_AVX512, &err) == NULL);
        CHECK(err.status == CINDER_ERR_UNSUPPORTED);
    }

    /* the activation precision: accurate by default, CINDER_ACT when not chosen, and the
     * two give their own results (the name says int8) */
    CHECK_STR_EQ(kernel_act_name(KERNEL_ACT_ACCURATE), "accurate");
    CHECK_STR_EQ(kernel_act_name(KERNEL_ACT_INT8), "int8");
    kernel_cpu_options o = kernel_cpu_options_default();
    CHECK(o.n_threads == 0 && o.simd == KERNEL_SIMD_AUTO && o.act == KERNEL_ACT_DEFAULT);
    o.n_threads = 1;
    o.simd = KERNEL_SIMD_SCALAR;
    test_weight tw;
    weight_make(&tw, DTYPE_Q4_1, 8, 64);
    float *x = activations_make(2, 64), want[2][16], got[16];
    for (int a = 0; a < N_ACTS; a++) kernel_matmul(levels[0].acts[a][0], want[a], x, &tw.w, 2);
    CHECK(memcmp(want[ACT_ACCURATE], want[ACT_INT8], sizeof want[0]) != 0);
    static const struct {
        const char *env;             /* CINDER_ACT, NULL: unset */
        kernel_act_precision chosen; /* o.act */
        int expect;                  /* ACT_*; -1: refused */
    } cases[] = {
        {NULL, KERNEL_ACT_DEFAULT, ACT_ACCURATE},
        {"int8", KERNEL_ACT_DEFAULT, ACT_INT8},
        {"accurate", KERNEL_ACT_DEFAULT, ACT_ACCURATE},
        {"int8", KERNEL_ACT_ACCURATE, ACT_ACCURATE}, /* a choice in the code wins */
        {"accurate", KERNEL_ACT_INT8, ACT_INT8},
        {"int4", KERNEL_ACT_DEFAULT, -1},
        {NULL, KERNEL_ACT_COUNT, -1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        if (cases[c].env)
            setenv("CINDER_ACT", cases[c].env, 1);
        else
            unsetenv("CINDER_ACT");
        o.act = cases[c].chosen;
        k = kernel_cpu_create_opts(&o, &err);
        if (cases[c].expect < 0) {
            CHECK_MSG(k == NULL && err.status == CINDER_ERR_ARG, "case %zu", c);
            if (cases[c].env) CHECK(test_contains(err.msg, cases[c].env));
            continue;
        }
        CHECK_MSG(k != NULL, "case %zu: %s", c, err.msg);
        if (!k) continue;
        CHECK_STR_EQ(k->name, cases[c].expect == ACT_INT8 ? "cpu-scalar-int8" : "cpu-scalar");
        kernel_matmul(k, got, x, &tw.w, 2);
        CHECK_MSG(memcmp(got, want[cases[c].expect], sizeof got) == 0, "case %zu", c);
        kernel_ops_free(k);
    }
    setenv("CINDER_ACT", "int8", 1); /* the older constructors read it too */
    k = kernel_cpu_create_simd(1, KERNEL_SIMD_SCALAR, &err);
    CHECK(k && strcmp(k->name, "cpu-scalar-int8") == 0);
    kernel_ops_free(k);
    unsetenv("CINDER_ACT");
    k = kernel_cpu_create_opts(NULL, &err);
    CHECK(k && !test_contains(k->name, "int8"));
    kernel_ops_free(k);
    free(x);
    weight_free(&tw);
}

/* The pool: every index visited exactly once, over many back-to-back runs (where a lost
 * wake-up or a reused job would show), with odd grains and more threads than cores. */
typedef struct pool_count_job {
    _Atomic int *hits;
    _Atomic int bad_thread;
    int n_threads;
} pool_count_job;

static void pool_count(void *arg, int64_t b, int64_t e, int thread) {
    pool_count_job *j = arg;
    if (thread < 0 || thread >= j->n_threads) j->bad_thread = 1;
    for (int64_t i = b; i < e; i++) j->hits[i]++;
}

static void test_pool(void) {
    cinder_error err = {0};
    for (int nt = 1; nt <= 4; nt++) {
        cpu_pool *p = cpu_pool_create(nt, &err);
        CHECK(p && cpu_pool_n_threads(p) == nt);
        enum { N = 1000 };
        static _Atomic int hits[N];
        pool_count_job j = {hits, 0, nt};
        int bad = 0;
        for (int it = 0; it < 2000; it++) {
            int64_t n = 1 + it % N, grain = 1 + it % 37;
            for (int i = 0; i < N; i++) hits[i] = 0;
            cpu_pool_run(p, pool_count, &j, n, grain);
            for (int i = 0; i < N; i++) bad += hits[i] != (i < n);
        }
        /* after an idle pause long enough for the workers to sleep */
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
        for (int i = 0; i < N; i++) hits[i] = 0;
        cpu_pool_run(p, pool_count, &j, N, 10);
        for (int i = 0; i < N; i++) bad += hits[i] != 1;
        CHECK_MSG(bad == 0 && !j.bad_thread, "pool of %d threads", nt);
        cpu_pool_free(p);
    }
    cpu_pool_free(NULL);
    CHECK(cpu_count_online() >= 1);
}

#endif /* !TEST_AVX512_EMULATED */

int main(void) {
    levels_open();
    test_quantize_levels();
    test_matmul();
    test_matmul_multi();
#ifndef TEST_AVX512_EMULATED
    test_embed();
    test_rmsnorm();
    test_rope();
    test_rope_inv_freq();
    test_elementwise();
    test_kv_write();
    test_attention();
    test_weight_from_tensor();
    test_create();
    test_pool();
#endif
    levels_close();
#ifdef TEST_AVX512_EMULATED
    return test_summary("test_kernels_avx512_emulated");
#else
    return test_summary("test_kernels_cpu");
#endif
}
