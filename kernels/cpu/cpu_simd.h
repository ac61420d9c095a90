/* cpu_simd.h - private to kernels/cpu: the per-SIMD-level kernel tables behind the CPU ops.
 *
 * Each level (scalar C, AVX2, AVX-512) fills one cpu_simd_table; cpu_ops.c picks a table once,
 * at backend creation, and does the threading around it. Only the hot kernels are per level:
 * activation quantization and the matmul tiles. The cheap element-wise ops are plain C.
 *
 * Quantized matmuls work on integer activations, in one of two formats (ops.h,
 * kernel_act_precision). Each token's row is cut into blocks of 32 values, each block
 * quantized with its own fp32 scale d = max|x| / qmax (round to nearest even), so a value is
 * off by at most d / 2:
 *   8 bits (qmax 127): cpu_block_q8, which also keeps s = d * sum(q), the sum Q4_1's offset
 *     term m needs (like ggml's Q8_1, with fp32 instead of fp16 for d and s);
 *   16 bits (qmax 32767, the accurate path): cpu_act_q16, whose s is the sum of the block's
 *     F32 values themselves, so Q4_1's m term carries no quantization error.
 * A block whose max|x| is below CPU_ACT_TINY quantizes to zeros (d = 0): qmax / max|x| would
 * overflow to infinity. */
#ifndef CINDER_CPU_SIMD_H
#define CINDER_CPU_SIMD_H

#include <stdint.h>

#include "dtype.h"
#include "ops.h"

typedef struct cpu_block_q8 {
    float d;       /* scale: x ~= qs[j] * d */
    float s;       /* d * sum(qs) */
    int8_t qs[QK]; /* in [-127, 127] */
} cpu_block_q8;

/* 16-bit activations, planar so that each block's 64 bytes of values are 64-byte aligned. */
typedef struct cpu_act_q16 {
    int16_t *qs; /* [n, cols]: in [-32767, 32767] */
    float *ds;   /* [n, cols / QK, 2]: per block d (x ~= qs[j] * d), then s = sum(x) in F32 */
} cpu_act_q16;

/* Below this max|x| a block quantizes to zeros: 32767 / 1e-30 is far from overflowing, and a
 * value under 1e-30 times any weight of a real model is nothing next to the rest of a dot. */
#define CPU_ACT_TINY 1e-30f

/* A matmul as the tile kernels see it. */
typedef struct cpu_gemm_args {
    const kernel_weight *w; /* [rows, cols] */
    /* float [n, cols] for float w; for quantized w, cpu_block_q8 [n, cols / QK] (gemm) or a
     * const cpu_act_q16 * (gemm_q16) */
    const void *x;
    float *out; /* [n, rows] */
    int n;
} cpu_gemm_args;

/* Computes out[t, r] for every token t and rows r in [r0, r1). The value of each output must
 * depend on its row and token only (never on r0, r1 or n): that is what makes results
 * identical for every thread count. */
typedef void (*cpu_gemm_fn)(const cpu_gemm_args *a, int64_t r0, int64_t r1);

/* Quantizes k values (k a multiple of QK) into k / QK blocks. */
typedef void (*cpu_quantize_fn)(const float *x, cpu_block_q8 *y, int64_t k);
/* The same into 16 bits: qs [k], ds [k / QK, 2]. The sum s is taken in this order, which
 * every level follows (it is the natural one for 8-wide vectors): p[l] = (x[l] + x[l + 8]) +
 * (x[l + 16] + x[l + 24]) for l < 8, then p[l] += p[l + 4] (l < 4), p[l] += p[l + 2]
 * (l < 2), s = p[0] + p[1]. */
typedef void (*cpu_quantize_q16_fn)(const float *x, int16_t *qs, float *ds, int64_t k);

/* Prepared weights (kernel_prepare_weight) for the 16-bit path: rows in groups of
 * CPU_PACK_ROWS (the last group padded with zero rows), a group's blocks one after the other.
 * A group block holds the 8 rows' values transposed by pairs, so that one 16-byte chunk
 * widened to 16-bit lanes holds the same pair of columns for each of the 8 rows (lanes 2i,
 * 2i + 1: row i), then the 8 rows' scales:
 *   Q8_0: 16 chunks, chunk p: row i's values 2p, 2p + 1; then d[8] fp16 (272 bytes)
 *   Q4_0, Q4_1: 8 chunks, chunk c: row i's file bytes 2c, 2c + 1, whose low nibbles are values
 *         2c, 2c + 1 and high nibbles 16 + 2c, 16 + 2c + 1; then d[8] fp16, for Q4_1 then
 *         m[8] fp16 (144, 160 bytes)
 * as many bytes as the file's blocks, read as one stream. With it a madd against a broadcast
 * pair of activations gives 8 rows' partial sums in 8 lanes: no horizontal sums.
 * cpu_pack_weight (cpu_ops.c) makes it. */
#define CPU_PACK_ROWS 8

/* Bytes of one group block, 0 for a type without the prepared layout. */
size_t cpu_pack_group_block_bytes(dtype type);

typedef struct cpu_simd_table {
    const char *name; /* "cpu-avx2" */
    kernel_simd level;
    cpu_quantize_fn quantize_q8;
    cpu_gemm_fn gemm[DTYPE_COUNT]; /* one per weight type; quantized ones on cpu_block_q8 */
    cpu_quantize_q16_fn quantize_q16;
    cpu_gemm_fn gemm_q16[DTYPE_COUNT]; /* quantized weight types only, on cpu_act_q16 */
    /* Whether gemm_q16 of a type also reads prepared weights (w->prepared, the same bits as
     * from the file's layout): only then does the backend prepare weights of that type. Such
     * a kernel needs r0 to be a multiple of CPU_PACK_ROWS. */
    bool q16_prepared[DTYPE_COUNT];
} cpu_simd_table;

/* Tokens whose activations one pass over a range of weight rows reuses: their quantized
 * activations (64 x 1536 values: ~100 KB in 8 bits, ~200 KB in 16) stay in L2 while the rows
 * stream through L1. */
#define CPU_GEMM_TOKEN_BLOCK 64

/* The SIMD tiles prefetch the next tile's rows (row + NR rows, same column) while they work
 * on theirs: a decode tile reads 4 rows at once in steps of 16-34 bytes, more streams than
 * the hardware prefetcher follows well. Measured on an AMD EPYC (bench_kernels, cold Q4_1
 * GEMV, one thread): 4096 x 4096 from 5.3 to 8.8 GB/s; and better than a fixed distance
 * ahead in the same row, which misses on short rows. */

/* Runs a tile kernel MK(a, r, NR, t, NT) - NR rows from r, NT tokens from t - over rows
 * [r0, r1) and every token: token blocks of CPU_GEMM_TOKEN_BLOCK; in a block, 4 rows x 1 token
 * tiles for decode (one token: four independent dot products hide the FMA latency) and
 * 2 rows x 4 tokens otherwise (each weight block loaded once serves 4 tokens). NR and NT are
 * constants at every call, so an always_inline MK unrolls and keeps its accumulators in
 * registers. MK must compute each output the same way whatever NR and NT are. */
#define CPU_GEMM_DRIVE(MK, a, r0, r1)                                                              \
    do {                                                                                           \
        for (int t0_ = 0; t0_ < (a)->n; t0_ += CPU_GEMM_TOKEN_BLOCK) {                             \
            int t1_ = (a)->n - t0_ < CPU_GEMM_TOKEN_BLOCK ? (a)->n : t0_ + CPU_GEMM_TOKEN_BLOCK;   \
            int64_t r_ = (r0);                                                                     \
            if (t1_ - t0_ == 1) {                                                                  \
                for (; r_ + 4 <= (r1); r_ += 4) MK(a, r_, 4, t0_, 1);                              \
                for (; r_ < (r1); r_++) MK(a, r_, 1, t0_, 1);                                      \
                continue;                                                                          \
            }                                                                                      \
            for (; r_ + 2 <= (r1); r_ += 2) CPU_GEMM_ROW_TILES_(MK, a, r_, 2, t0_, t1_);           \
            if (r_ < (r1)) CPU_GEMM_ROW_TILES_(MK, a, r_, 1, t0_, t1_);                            \
        }                                                                                          \
    } while (0)
#define CPU_GEMM_ROW_TILES_(MK, a, r, NR, t0, t1)                                                  \
    do {                                                                                           \
        int t_ = (t0);                                                                             \
        for (; t_ + 4 <= (t1); t_ += 4) MK(a, r, NR, t_, 4);                                       \
        switch ((t1)-t_) {                                                                         \
            case 3:                                                                                \
                MK(a, r, NR, t_, 3);                                                               \
                break;                                                                             \
            case 2:                                                                                \
                MK(a, r, NR, t_, 2);                                                               \
                break;                                                                             \
            case 1:                                                                                \
                MK(a, r, NR, t_, 1);                                                               \
                break;                                                                             \
        }                                                                                          \
    } while (0)

extern const cpu_simd_table cpu_simd_scalar;
#if defined(__x86_64__)
#define CPU_SIMD_X86 1
extern const cpu_simd_table cpu_simd_avx2;
extern const cpu_simd_table cpu_simd_avx512;
/* The AVX-512 kernels compiled against SIMDe's portable emulation (tests only, where the
 * library was found): they check the AVX-512 code on a CPU without AVX-512. */
extern const cpu_simd_table cpu_simd_avx512_emulated;
#endif

/* The quantizers: every level's gives the same blocks, bit for bit. */
void cpu_quantize_q8_scalar(const float *x, cpu_block_q8 *y, int64_t k);
void cpu_quantize_q16_scalar(const float *x, int16_t *qs, float *ds, int64_t k);
#ifdef CPU_SIMD_X86
void cpu_quantize_q8_avx2(const float *x, cpu_block_q8 *y, int64_t k);
void cpu_quantize_q16_avx2(const float *x, int16_t *qs, float *ds, int64_t k);
#endif

/* A CPU backend running a given table with a given activation precision (ACCURATE or INT8,
 * not DEFAULT): the tests use it to run the emulated table. */
kernel_ops *cpu_ops_create_table(int n_threads, const cpu_simd_table *table,
                                 kernel_act_precision act, cinder_error *err);

#endif
