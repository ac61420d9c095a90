/* cpu_simd_avx512.c - AVX-512 (F, BW, VL) + VNNI kernels.
 *
 * Like the AVX2 file, compiled for its target by a pragma and reached only after cpu_ops.c has
 * checked the CPU. Quantized dot products use VNNI's dpbusd (u8 x s8, four products summed
 * into each i32 lane, no saturation) on two blocks per 512-bit register; an odd last block
 * goes through the 256-bit form. On 16-bit activations a block fills a register and
 * AVX-512BW's madd (i16 x i16, pairs summed to i32) does its products.
 *
 * Built a second time with CPU_SIMD_EMULATE defined, against SIMDe's portable versions of the
 * same intrinsics, into a table only the tests use: that is how this code is checked on CPUs
 * without AVX-512 (CI's included). The few intrinsics SIMDe lacks are built from two 256-bit
 * halves below. Quantization reuses the AVX2 quantizers (every AVX-512 CPU has AVX2). */
#include <string.h>

#include "cpu_q16_layout.h"
#include "cpu_simd.h"

#ifdef CPU_SIMD_X86

#ifdef CPU_SIMD_EMULATE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#define TABLE_NAME  cpu_simd_avx512_emulated
#define TABLE_LABEL "cpu-avx512-emulated"
#else
#if defined(__clang__)
#pragma clang attribute push(                                                                      \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))),                 \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#endif
#include <immintrin.h>
#define TABLE_NAME  cpu_simd_avx512
#define TABLE_LABEL "cpu-avx512"
#endif

#define INLINE static inline __attribute__((always_inline))

#ifdef CPU_SIMD_EMULATE
/* What SIMDe 0.7 does not have, from two 256-bit halves. */
INLINE __m512 emu_from_halves_ps(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(
        _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
INLINE __m512 emu_cvtepi32_ps(__m512i v) {
    return emu_from_halves_ps(_mm256_cvtepi32_ps(_mm512_castsi512_si256(v)),
                              _mm256_cvtepi32_ps(_mm512_extracti64x4_epi64(v, 1)));
}
INLINE __m512 emu_cvtph_ps(__m256i h) {
    return emu_from_halves_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)),
                              _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)));
}
INLINE __m512i emu_cvtepu16_epi32(__m256i h) {
    return _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h))),
        _mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)), 1);
}
INLINE __m512i emu_cvtepu8_epi16(__m256i b) {
    return _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(b))),
        _mm256_cvtepu8_epi16(_mm256_extracti128_si256(b, 1)), 1);
}
#undef _mm512_cvtepi32_ps
#undef _mm512_cvtepu8_epi16
#undef _mm512_cvtph_ps
#undef _mm512_cvtepu16_epi32
#undef _mm512_madd_epi16
#define _mm512_cvtepi32_ps    emu_cvtepi32_ps
#define _mm512_cvtph_ps       emu_cvtph_ps
#define _mm512_cvtepu8_epi16  emu_cvtepu8_epi16
#define _mm512_cvtepu16_epi32 emu_cvtepu16_epi32
#define _mm512_madd_epi16     simde_mm512_madd_epi16 /* SIMDe 0.7's alias has four arguments */
#endif

/* Sum of 16 floats: the two 256-bit halves added, then 8 -> 1. */
INLINE float hsum16(__m512 v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float load_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ---- float weights ---- */

INLINE __m512 load_w16(dtype type, const uint8_t *row, int64_t k) {
    if (type == DTYPE_F32) return _mm512_loadu_ps((const float *)row + k);
    __m256i h = _mm256_loadu_si256((const __m256i *)(row + 2 * k));
    if (type == DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); /* BF16 */
}

INLINE float load_w1(dtype type, const uint8_t *row, int64_t k) {
    uint16_t h;
    if (type == DTYPE_F32) {
        float f;
        memcpy(&f, row + 4 * k, 4);
        return f;
    }
    memcpy(&h, row + 2 * k, 2);
    return type == DTYPE_F16 ? _cvtsh_ss(h) : bf16_to_f32(h);
}

INLINE void tile_float(const cpu_gemm_args *a, dtype type, int64_t r, int NR, int t, int NT) {
    const kernel_weight *w = a->w;
    const int64_t cols = w->cols, cols16 = cols & ~(int64_t)15;
    const float *x = (const float *)a->x + (int64_t)t * cols;
    const int64_t esize = type == DTYPE_F32 ? 4 : 2;
    const uint8_t *row[4];
    __m512 acc[4][4];
    float tail[4][4];
    for (int i = 0; i < NR; i++) {
        row[i] = (const uint8_t *)w->data + (r + i) * w->row_bytes;
        for (int j = 0; j < NT; j++) acc[i][j] = _mm512_setzero_ps(), tail[i][j] = 0;
    }
    for (int64_t k = 0; k < cols16; k += 16) {
        __m512 wv[4];
        for (int i = 0; i < NR; i++) {
            _mm_prefetch((const char *)row[i] + NR * w->row_bytes + k * esize, _MM_HINT_T0);
            wv[i] = load_w16(type, row[i], k);
        }
        for (int j = 0; j < NT; j++) {
            __m512 xv = _mm512_loadu_ps(x + j * cols + k);
            for (int i = 0; i < NR; i++) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    for (int64_t k = cols16; k < cols; k++)
        for (int i = 0; i < NR; i++)
            for (int j = 0; j < NT; j++) tail[i][j] += load_w1(type, row[i], k) * x[j * cols + k];
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < NT; j++)
            a->out[(t + j) * w->rows + r + i] = hsum16(acc[i][j]) + tail[i][j];
}

#define TILE_F32(a, r, NR, t, NT)  tile_float(a, DTYPE_F32, r, NR, t, NT)
#define TILE_F16(a, r, NR, t, NT)  tile_float(a, DTYPE_F16, r, NR, t, NT)
#define TILE_BF16(a, r, NR, t, NT) tile_float(a, DTYPE_BF16, r, NR, t, NT)

static void gemm_f32(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    CPU_GEMM_DRIVE(TILE_F32, a, r0, r1);
}
static void gemm_f16(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    CPU_GEMM_DRIVE(TILE_F16, a, r0, r1);
}
static void gemm_bf16(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    CPU_GEMM_DRIVE(TILE_BF16, a, r0, r1);
}

/* ---- quantized weights x 8-bit activations ---- */

INLINE size_t wblock_bytes(dtype type) {
    return type == DTYPE_Q8_0   ? sizeof(block_q8_0)
           : type == DTYPE_Q4_1 ? sizeof(block_q4_1)
                                : sizeof(block_q4_0);
}

/* A block's 32 quant bytes in a 256-bit register, nibbles unpacked (low nibbles are values
 * 0-15, in the low half): the 16 bytes in both halves, the high half shifted right by 4 (64-bit
 * shifts: what crosses in from the neighbouring byte lands in the high nibble, masked off). */
INLINE __m256i load_wq256(dtype type, const uint8_t *blk) {
    if (type == DTYPE_Q8_0) return _mm256_loadu_si256((const __m256i *)(blk + 2));
    __m256i v = _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)(blk + (type == DTYPE_Q4_1 ? 4 : 2))));
    v = _mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

/* Blocks b and b + 1 side by side: [block b's 32 bytes | block b+1's], the same way. */
INLINE __m512i load_wq512(dtype type, const uint8_t *blk0, const uint8_t *blk1) {
    if (type == DTYPE_Q8_0)
        return _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(blk0 + 2))),
            _mm256_loadu_si256((const __m256i *)(blk1 + 2)), 1);
    int off = type == DTYPE_Q4_1 ? 4 : 2;
    __m512i v = _mm512_inserti64x4(
        _mm512_castsi256_si512(
            _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(blk0 + off)))),
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(blk1 + off))), 1);
    v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
}

/* Integer dot products, 4 byte products per i32 lane: weights u8 (nibbles) or s8 (Q8_0: the
 * weight's sign moves onto the activation), activations s8. */
INLINE __m512i dot512(dtype type, __m512i wq, __m512i xq) {
    const __m512i zero = _mm512_setzero_si512();
    if (type != DTYPE_Q8_0) return _mm512_dpbusd_epi32(zero, wq, xq);
    __m512i sx = _mm512_mask_sub_epi8(xq, _mm512_movepi8_mask(wq), zero, xq);
    return _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(wq), sx);
}

INLINE __m256i dot256(dtype type, __m256i wq, __m256i xq) {
    const __m256i zero = _mm256_setzero_si256();
    if (type != DTYPE_Q8_0) return _mm256_dpbusd_epi32(zero, wq, xq);
    return _mm256_dpbusd_epi32(zero, _mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
}

INLINE __m512 halves_ps(float lo, float hi) {
    return _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(lo), _mm512_set1_ps(hi));
}

/* One block pair's contribution (one block's, in 256 bits), as in the AVX2 file: with isum
 * the integer dot product and ys the activation's sums by groups of four,
 *   Q8_0: acc += isum · (d_w·d_x);  Q4_0: acc += (isum - 8·ys) · (d_w·d_x);
 *   Q4_1: acc += (isum·d_w + m_w·ys) · d_x. */
INLINE __m512 quant_step512(dtype type, __m512 acc, __m512i isum, __m512 ys, __m512 dw, __m512 mw,
                            __m512 dx) {
    __m512 v = _mm512_cvtepi32_ps(isum);
    if (type == DTYPE_Q8_0) return _mm512_fmadd_ps(v, _mm512_mul_ps(dw, dx), acc);
    if (type == DTYPE_Q4_0)
        return _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(-8.0f), ys, v), _mm512_mul_ps(dw, dx),
                               acc);
    return _mm512_fmadd_ps(_mm512_fmadd_ps(v, dw, _mm512_mul_ps(mw, ys)), dx, acc);
}

INLINE __m256 quant_step256(dtype type, __m256 acc, __m256i isum, __m256 ys, __m256 dw, __m256 mw,
                            __m256 dx) {
    __m256 v = _mm256_cvtepi32_ps(isum);
    if (type == DTYPE_Q8_0) return _mm256_fmadd_ps(v, _mm256_mul_ps(dw, dx), acc);
    if (type == DTYPE_Q4_0)
        return _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(-8.0f), ys, v), _mm256_mul_ps(dw, dx),
                               acc);
    return _mm256_fmadd_ps(_mm256_fmadd_ps(v, dw, _mm256_mul_ps(mw, ys)), dx, acc);
}

INLINE void tile_quant(const cpu_gemm_args *a, dtype type, int64_t r, int NR, int t, int NT) {
    const kernel_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const size_t bb = wblock_bytes(type);
    const cpu_block_q8 *x = (const cpu_block_q8 *)a->x + t * nb;
    const uint8_t *row[4];
    __m512 acc[4][4];
    __m256 acc_last[4][4]; /* the odd last block */
    for (int i = 0; i < NR; i++) {
        row[i] = (const uint8_t *)w->data + (r + i) * w->row_bytes;
        for (int j = 0; j < NT; j++)
            acc[i][j] = _mm512_setzero_ps(), acc_last[i][j] = _mm256_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i xq[4];
        __m512 dx[4], ys[4] = {0};
        for (int j = 0; j < NT; j++) {
            const cpu_block_q8 *xb = x + j * nb + b;
            xq[j] = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)xb[0].qs)),
                _mm256_loadu_si256((const __m256i *)xb[1].qs), 1);
            dx[j] = halves_ps(xb[0].d, xb[1].d);
            if (type != DTYPE_Q8_0)
                ys[j] = _mm512_cvtepi32_ps(
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), xq[j]));
        }
        for (int i = 0; i < NR; i++) {
            const uint8_t *blk0 = row[i] + b * bb, *blk1 = blk0 + bb;
            _mm_prefetch((const char *)blk0 + NR * w->row_bytes, _MM_HINT_T0);
            __m512i wq = load_wq512(type, blk0, blk1);
            __m512 dw = halves_ps(load_f16(blk0), load_f16(blk1)), mw = dw;
            if (type == DTYPE_Q4_1) mw = halves_ps(load_f16(blk0 + 2), load_f16(blk1 + 2));
            for (int j = 0; j < NT; j++)
                acc[i][j] =
                    quant_step512(type, acc[i][j], dot512(type, wq, xq[j]), ys[j], dw, mw, dx[j]);
        }
    }
    if (b < nb) {
        __m256i xq[4];
        __m256 dx[4], ys[4] = {0};
        for (int j = 0; j < NT; j++) {
            const cpu_block_q8 *xb = x + j * nb + b;
            xq[j] = _mm256_loadu_si256((const __m256i *)xb->qs);
            dx[j] = _mm256_set1_ps(xb->d);
            if (type != DTYPE_Q8_0)
                ys[j] = _mm256_cvtepi32_ps(
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), xq[j]));
        }
        for (int i = 0; i < NR; i++) {
            const uint8_t *blk = row[i] + b * bb;
            __m256i wq = load_wq256(type, blk);
            __m256 dw = _mm256_set1_ps(load_f16(blk)), mw = dw;
            if (type == DTYPE_Q4_1) mw = _mm256_set1_ps(load_f16(blk + 2));
            for (int j = 0; j < NT; j++)
                acc_last[i][j] = quant_step256(type, acc_last[i][j], dot256(type, wq, xq[j]), ys[j],
                                               dw, mw, dx[j]);
        }
    }
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < NT; j++)
            a->out[(t + j) * w->rows + r + i] = hsum16(acc[i][j]) + hsum8(acc_last[i][j]);
}

#define TILE_Q8_0(a, r, NR, t, NT) tile_quant(a, DTYPE_Q8_0, r, NR, t, NT)
#define TILE_Q4_0(a, r, NR, t, NT) tile_quant(a, DTYPE_Q4_0, r, NR, t, NT)
#define TILE_Q4_1(a, r, NR, t, NT) tile_quant(a, DTYPE_Q4_1, r, NR, t, NT)

static void gemm_q8_0(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    CPU_GEMM_DRIVE(TILE_Q8_0, a, r0, r1);
}
static void gemm_q4_0(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    CPU_GEMM_DRIVE(TILE_Q4_0, a, r0, r1);
}
static void gemm_q4_1(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    CPU_GEMM_DRIVE(TILE_Q4_1, a, r0, r1);
}

/* ---- 16-bit activations on prepared weights: two groups of the prepared layout at a time ----
 *
 * The AVX2 file's kernel at twice the width, with VNNI's dpwssd folding its madd and add: a
 * 512-bit vector holds one pair of columns for 16 rows (two groups of CPU_PACK_ROWS; lanes 2i,
 * 2i + 1: row i), and dpwssd against the token's broadcast pair of activations adds each row's
 * two products to its 32-bit lane. Per block b, token t and row i the float work is the AVX2
 * kernel's, in its order:
 *   acc = fma(float(isum), d_w * d_x, acc);  acc = fma(m_w, s_x, acc)   (Q4_1)
 * and the integer sums are exact, so every output has the AVX2 kernel's bits (and the same
 * for any tile, thread count or batch). A lone last group is paired with itself. */

/* The token's activations x[k], x[k + 1] in every 32-bit lane. */
INLINE __m512i q16_pair512(const int16_t *x) {
    int32_t v;
    memcpy(&v, x, 4);
    return _mm512_set1_epi32(v);
}

/* Chunk c of two group blocks widened to 16 bits: A's rows in the low half, B's in the high.
 * Q4_0/Q4_1: lo holds columns 2c, 2c + 1 (low nibbles), hi 16 + 2c, 16 + 2c + 1. */
INLINE void q16_widen512(dtype type, const uint8_t *ga, const uint8_t *gb, int c, __m512i *lo,
                         __m512i *hi) {
    const __m256i raw = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(ga + 16 * c))),
        _mm_loadu_si128((const __m128i *)(gb + 16 * c)), 1);
    if (type == DTYPE_Q8_0) {
        *lo = _mm512_cvtepi8_epi16(raw);
        return;
    }
    const __m512i v = _mm512_cvtepu8_epi16(raw);
    *lo = _mm512_and_si512(v, _mm512_set1_epi16(0x0f));
    *hi = _mm512_srli_epi16(v, 4);
    if (type == DTYPE_Q4_0) {
        *lo = _mm512_sub_epi16(*lo, _mm512_set1_epi16(8));
        *hi = _mm512_sub_epi16(*hi, _mm512_set1_epi16(8));
    }
}

/* The 16 rows' scales (off: 16 * chunks) or Q4_1 offsets (off + 16) as floats. */
INLINE __m512 q16_halves512(const uint8_t *ga, const uint8_t *gb, size_t off) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(ga + off))),
        _mm_loadu_si128((const __m128i *)(gb + off)), 1));
}

/* Token t's outputs for rows r .. r + 15, those below the matrix's end (and below r + 8 for a
 * lone group). */
INLINE void q16_store512(const cpu_gemm_args *a, int64_t r, int n_rows, int t, __m512 acc) {
    float *o = a->out + (int64_t)t * a->w->rows + r;
    if (n_rows >= 16) {
        _mm512_storeu_ps(o, acc);
    } else {
        float v[16];
        _mm512_storeu_ps(v, acc);
        memcpy(o, v, (size_t)n_rows * sizeof(float));
    }
}

/* acc = fma(float(isum), d * d_x, acc), then + m * s_x for Q4_1: the AVX2 kernel's order. */
INLINE __m512 q16_scale512(dtype type, __m512 acc, __m512i isum, __m512 d, __m512 m,
                           const float *ds) {
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, _mm512_set1_ps(ds[0])), acc);
    if (type == DTYPE_Q4_1) acc = _mm512_fmadd_ps(m, _mm512_set1_ps(ds[1]), acc);
    return acc;
}

/* One or two tokens (decode) against two groups, each chunk widened where it is used. */
INLINE void q16_direct512(const cpu_gemm_args *a, dtype type, bool packed, const q16_group *g,
                          int64_t r, int n_rows, int t, int NT) {
    const int64_t nb = a->w->cols / QK;
    const int nc = q16_chunks(type);
    const cpu_act_q16 *x = a->x;
    const int16_t *xq = x->qs + (int64_t)t * a->w->cols;
    const float *xds = x->ds + 2 * (int64_t)t * nb;
    _Alignas(32) uint8_t tmp[2][16 * QK / 2 + 32];
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *ga = q16_group_block(type, packed, &g[0], b, tmp[0]);
        const uint8_t *gb = q16_group_block(type, packed, &g[1], b, tmp[1]);
        __m512i isum[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
        for (int c = 0; c < nc; c++) {
            __m512i lo, hi;
            q16_widen512(type, ga, gb, c, &lo, &hi);
            for (int j = 0; j < NT; j++) {
                const int16_t *xj = xq + (j * nb + b) * QK + 2 * c;
                isum[j] = _mm512_dpwssd_epi32(isum[j], lo, q16_pair512(xj));
                if (type != DTYPE_Q8_0)
                    isum[j] = _mm512_dpwssd_epi32(isum[j], hi, q16_pair512(xj + 16));
            }
        }
        const __m512 d = q16_halves512(ga, gb, 16 * (size_t)nc);
        const __m512 m = type == DTYPE_Q4_1 ? q16_halves512(ga, gb, 16 * (size_t)nc + 16) : d;
        for (int j = 0; j < NT; j++)
            acc[j] = q16_scale512(type, acc[j], isum[j], d, m, xds + 2 * (j * nb + b));
    }
    for (int j = 0; j < NT; j++) q16_store512(a, r, n_rows, t + j, acc[j]);
}

/* Blocks of two groups widened once per block of tokens: vector v holds columns 2v, 2v + 1
 * of the 16 rows. */
typedef struct q16_wide512 {
    __m512i v[QK / 2];
    __m512 d, m;
} q16_wide512;

/* Blocks widened at a time: 16 x 1.1 KB, in L1 while the tiles run. */
#define Q16_WIDE512_BLOCKS 16

INLINE void q16_widen_block512(dtype type, const uint8_t *ga, const uint8_t *gb, q16_wide512 *o) {
    const int nc = q16_chunks(type);
    for (int c = 0; c < nc; c++) {
        __m512i lo, hi;
        q16_widen512(type, ga, gb, c, &lo, &hi);
        o->v[c] = lo;
        if (type != DTYPE_Q8_0) o->v[QK / 4 + c] = hi;
    }
    o->d = q16_halves512(ga, gb, 16 * (size_t)nc);
    if (type == DTYPE_Q4_1) o->m = q16_halves512(ga, gb, 16 * (size_t)nc + 16);
}

/* NT tokens from t against widened blocks [b0, b1) (wide: block b0's), the float sums in
 * acc[0 .. NT) (in registers across the blocks: 32 vector registers hold 8 sums of each kind,
 * the weights and the broadcast). */
INLINE void gemm_q16_tile512(const cpu_gemm_args *a, dtype type, const q16_wide512 *wide,
                             int64_t b0, int64_t b1, int t, int NT, __m512 *acc_mem) {
    const int64_t cols = a->w->cols, nb = cols / QK;
    const cpu_act_q16 *x = a->x;
    const int16_t *xq = x->qs + (int64_t)t * cols;
    const float *xds = x->ds + 2 * (int64_t)t * nb;
    __m512 acc[8];
    for (int j = 0; j < NT; j++) acc[j] = acc_mem[j];
    for (int64_t b = b0; b < b1; b++) {
        const q16_wide512 *wb = wide + (b - b0);
        __m512i isum[8];
        for (int j = 0; j < NT; j++) isum[j] = _mm512_setzero_si512();
#pragma GCC unroll 16
        for (int v = 0; v < QK / 2; v++) {
            const __m512i wv = _mm512_load_si512(&wb->v[v]);
            for (int j = 0; j < NT; j++)
                isum[j] =
                    _mm512_dpwssd_epi32(isum[j], wv, q16_pair512(xq + j * cols + b * QK + 2 * v));
        }
        for (int j = 0; j < NT; j++)
            acc[j] = q16_scale512(type, acc[j], isum[j], wb->d, wb->m, xds + 2 * (j * nb + b));
    }
    for (int j = 0; j < NT; j++) acc_mem[j] = acc[j];
}

/* Rows [r0, r1), r0 a multiple of CPU_PACK_ROWS: token blocks of CPU_GEMM_TOKEN_BLOCK; in a
 * block, two groups at a time (a lone last one paired with itself), their blocks widened
 * Q16_WIDE512_BLOCKS at a time, then tiles of 8 tokens (4, 2, 1 for the rest). A block of one
 * or two tokens (decode) reads each weight once: no widened copy. */
INLINE void gemm_q16_drive512(const cpu_gemm_args *a, dtype type, bool packed, int64_t r0,
                              int64_t r1) {
    const kernel_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const int64_t part = q16_part_blocks(nb, Q16_WIDE512_BLOCKS);
    _Alignas(32) uint8_t tmp[2][16 * QK / 2 + 32];
    _Alignas(64) q16_wide512 wide[Q16_WIDE512_BLOCKS];
    _Alignas(64) __m512 acc[CPU_GEMM_TOKEN_BLOCK];
    for (int t0 = 0; t0 < a->n; t0 += CPU_GEMM_TOKEN_BLOCK) {
        const int t1 = a->n - t0 < CPU_GEMM_TOKEN_BLOCK ? a->n : t0 + CPU_GEMM_TOKEN_BLOCK;
        for (int64_t r = r0; r < r1; r += 2 * CPU_PACK_ROWS) {
            const bool pair = r + CPU_PACK_ROWS < r1;
            const int64_t left = (pair ? r1 : r + CPU_PACK_ROWS) - r;
            const int n_rows = (int)(left < w->rows - r ? left : w->rows - r);
            q16_group g[2];
            g[0] = q16_group_at(w, packed, r, nb, type);
            g[1] = pair ? q16_group_at(w, packed, r + CPU_PACK_ROWS, nb, type) : g[0];
            if (t1 - t0 <= 2) {
                if (t1 - t0 == 1)
                    q16_direct512(a, type, packed, g, r, n_rows, t0, 1);
                else
                    q16_direct512(a, type, packed, g, r, n_rows, t0, 2);
                continue;
            }
            for (int i = 0; i < t1 - t0; i++) acc[i] = _mm512_setzero_ps();
            for (int64_t b0 = 0; b0 < nb; b0 += part) {
                const int64_t b1 = b0 + part < nb ? b0 + part : nb;
                for (int64_t b = b0; b < b1; b++)
                    q16_widen_block512(type, q16_group_block(type, packed, &g[0], b, tmp[0]),
                                       q16_group_block(type, packed, &g[1], b, tmp[1]),
                                       &wide[b - b0]);
                int t = t0;
#define TILE512_(NT) gemm_q16_tile512(a, type, wide, b0, b1, t, NT, acc + (t - t0))
                for (; t + 8 <= t1; t += 8) TILE512_(8);
                if (t + 4 <= t1) TILE512_(4), t += 4;
                if (t + 2 <= t1) TILE512_(2), t += 2;
                if (t < t1) TILE512_(1);
#undef TILE512_
            }
            for (int t = t0; t < t1; t++) q16_store512(a, r, n_rows, t, acc[t - t0]);
        }
    }
}

#define GEMM_Q16_512(type, a, r0, r1)                                                              \
    ((a)->w->prepared ? gemm_q16_drive512(a, type, true, r0, r1)                                   \
                      : gemm_q16_drive512(a, type, false, r0, r1))

static void gemm_q16_q8_0(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    GEMM_Q16_512(DTYPE_Q8_0, a, r0, r1);
}
static void gemm_q16_q4_0(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    GEMM_Q16_512(DTYPE_Q4_0, a, r0, r1);
}
static void gemm_q16_q4_1(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    GEMM_Q16_512(DTYPE_Q4_1, a, r0, r1);
}

#ifndef CPU_SIMD_EMULATE
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

const cpu_simd_table TABLE_NAME = {
    .name = TABLE_LABEL,
    .level = KERNEL_SIMD_AVX512,
    .quantize_q8 = cpu_quantize_q8_avx2,
    .gemm =
        {
            [DTYPE_F32] = gemm_f32,
            [DTYPE_F16] = gemm_f16,
            [DTYPE_BF16] = gemm_bf16,
            [DTYPE_Q8_0] = gemm_q8_0,
            [DTYPE_Q4_0] = gemm_q4_0,
            [DTYPE_Q4_1] = gemm_q4_1,
        },
    .quantize_q16 = cpu_quantize_q16_avx2,
    .gemm_q16 =
        {
            [DTYPE_Q8_0] = gemm_q16_q8_0,
            [DTYPE_Q4_0] = gemm_q16_q4_0,
            [DTYPE_Q4_1] = gemm_q16_q4_1,
        },
    .q16_prepared = {[DTYPE_Q8_0] = true, [DTYPE_Q4_0] = true, [DTYPE_Q4_1] = true},
};

#endif /* CPU_SIMD_X86 */
