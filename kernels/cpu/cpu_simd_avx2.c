/* cpu_simd_avx2.c - AVX2 + FMA + F16C kernels.
 *
 * The whole file is compiled for that target (the pragma below) without -mavx2 on the command
 * line, so the library runs anywhere and this code is only reached when cpu_ops.c has checked
 * the CPU. Quantized dot products use the maddubs trick (u8 x s8 pairs summed to i16, then
 * pairs of i16 to i32): exact here, since |pair sum| <= 2 * 128 * 127 < 32767. On 16-bit
 * activations the weights are widened to i16 (for a GEMM once per block of tokens, into a
 * buffer that stays in L1) and madd does the products: as many per instruction as maddubs +
 * madd on 8 bits. */
#include <string.h>

#include "cpu_q16_layout.h"
#include "cpu_simd.h"

#ifdef CPU_SIMD_X86

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

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

/* max |x| over a block's 32 values */
INLINE float block_amax(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m =
        _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, abs_mask), _mm256_and_ps(v1, abs_mask)),
                      _mm256_max_ps(_mm256_and_ps(v2, abs_mask), _mm256_and_ps(v3, abs_mask)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    return _mm_cvtss_f32(m4);
}

void cpu_quantize_q8_avx2(const float *x, cpu_block_q8 *y, int64_t k) {
    /* packs works within 128-bit lanes; this puts the four 8-value groups back in order */
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < k / QK; b++, x += QK) {
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
        __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
        float amax = block_amax(v0, v1, v2, v3);
        /* the same arithmetic as cpu_quantize_q8_scalar, so the blocks are identical */
        float d = amax >= CPU_ACT_TINY ? amax / 127.0f : 0.0f;
        float id = amax >= CPU_ACT_TINY ? 127.0f / amax : 0.0f;
        __m256 idv = _mm256_set1_ps(id);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, idv));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, idv));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, idv));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, idv));
        __m256i s8 = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
        __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)y[b].qs, _mm256_permutevar8x32_epi32(q, perm));
        y[b].d = d;
        y[b].s = d * (float)_mm_cvtsi128_si32(s4);
    }
}

void cpu_quantize_q16_avx2(const float *x, int16_t *qs, float *ds, int64_t k) {
    for (int64_t b = 0; b < k / QK; b++, x += QK, qs += QK) {
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
        __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
        float amax = block_amax(v0, v1, v2, v3);
        /* the same arithmetic as cpu_quantize_q16_scalar, so the blocks are identical */
        float d = amax >= CPU_ACT_TINY ? amax / 32767.0f : 0.0f;
        float id = amax >= CPU_ACT_TINY ? 32767.0f / amax : 0.0f;
        __m256 idv = _mm256_set1_ps(id);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, idv));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, idv));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, idv));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, idv));
        /* packs interleaves the 128-bit halves of its two sources; 0, 2, 1, 3 undoes it */
        __m256i q01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xd8);
        __m256i q23 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i2, i3), 0xd8);
        _mm256_storeu_si256((__m256i *)qs, q01);
        _mm256_storeu_si256((__m256i *)(qs + 16), q23);
        ds[2 * b] = d;
        ds[2 * b + 1] = hsum8(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
    }
}

/* ---- float weights ---- */

/* 8 weights from row at element k, as floats. */
INLINE __m256 load_w8(dtype type, const uint8_t *row, int64_t k) {
    if (type == DTYPE_F32) return _mm256_loadu_ps((const float *)row + k);
    __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * k));
    if (type == DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); /* BF16 */
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
    const int64_t cols = w->cols, cols8 = cols & ~(int64_t)7;
    const float *x = (const float *)a->x + (int64_t)t * cols;
    const int64_t esize = type == DTYPE_F32 ? 4 : 2;
    const uint8_t *row[4];
    __m256 acc[4][4];
    float tail[4][4];
    for (int i = 0; i < NR; i++) {
        row[i] = (const uint8_t *)w->data + (r + i) * w->row_bytes;
        for (int j = 0; j < NT; j++) acc[i][j] = _mm256_setzero_ps(), tail[i][j] = 0;
    }
    for (int64_t k = 0; k < cols8; k += 8) {
        __m256 wv[4];
        for (int i = 0; i < NR; i++) {
            _mm_prefetch((const char *)row[i] + NR * w->row_bytes + k * esize, _MM_HINT_T0);
            wv[i] = load_w8(type, row[i], k);
        }
        for (int j = 0; j < NT; j++) {
            __m256 xv = _mm256_loadu_ps(x + j * cols + k);
            for (int i = 0; i < NR; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    for (int64_t k = cols8; k < cols; k++)
        for (int i = 0; i < NR; i++)
            for (int j = 0; j < NT; j++) tail[i][j] += load_w1(type, row[i], k) * x[j * cols + k];
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < NT; j++)
            a->out[(t + j) * w->rows + r + i] = hsum8(acc[i][j]) + tail[i][j];
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

/* Sums of 4 adjacent u8 x s8 products: 8 x i32. */
INLINE __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* The same for s8 x s8: move a's sign onto b (|a| x sign(a)·b, zero where a is). */
INLINE __m256i dot_s8s8(__m256i a, __m256i b) {
    return dot_u8s8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

/* The 32 4-bit values of a Q4_0/Q4_1 block as bytes, low nibbles (values 0-15) in the low
 * half: the 16 bytes loaded into both halves, the high half shifted right by 4 (64-bit
 * shifts: what crosses into a byte from its neighbour lands in the high nibble, masked off). */
INLINE __m256i load_nibbles(const uint8_t *qs) {
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    v = _mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4));
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

/* One tile of a quantized matmul. Per block b, row i, token j, with isum the integer dot
 * product of the weight's and the activation's 8-bit values and ys the activation's sums
 * by groups of four (as floats, lane by lane: they add up to sum(q_x)):
 *   Q8_0: acc += isum · (d_w·d_x)
 *   Q4_0: acc += (isum - 8·ys) · (d_w·d_x)     isum over the unsigned nibbles; exact
 *   Q4_1: acc += (isum·d_w + m_w·ys) · d_x     the offset m_w rides in the same vector
 * ys and d_x depend on the token only, so they are computed once per block for all rows. */
INLINE void tile_quant(const cpu_gemm_args *a, dtype type, int64_t r, int NR, int t, int NT) {
    const kernel_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const size_t bb = type == DTYPE_Q8_0   ? sizeof(block_q8_0)
                      : type == DTYPE_Q4_1 ? sizeof(block_q4_1)
                                           : sizeof(block_q4_0);
    const cpu_block_q8 *x = (const cpu_block_q8 *)a->x + t * nb;
    const uint8_t *row[4];
    __m256 acc[4][4];
    for (int i = 0; i < NR; i++) {
        row[i] = (const uint8_t *)w->data + (r + i) * w->row_bytes;
        for (int j = 0; j < NT; j++) acc[i][j] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        __m256i xq[4];
        __m256 dx[4], ys[4];
        for (int j = 0; j < NT; j++) {
            const cpu_block_q8 *xb = x + j * nb + b;
            xq[j] = _mm256_loadu_si256((const __m256i *)xb->qs);
            dx[j] = _mm256_broadcast_ss(&xb->d);
            if (type != DTYPE_Q8_0)
                ys[j] = _mm256_cvtepi32_ps(dot_u8s8(_mm256_set1_epi8(1), xq[j]));
        }
        for (int i = 0; i < NR; i++) {
            const uint8_t *blk = row[i] + b * bb;
            _mm_prefetch((const char *)blk + NR * w->row_bytes, _MM_HINT_T0);
            if (type == DTYPE_Q8_0) {
                __m256i wq = _mm256_loadu_si256((const __m256i *)(blk + 2));
                __m256 dw = _mm256_set1_ps(load_f16(blk));
                for (int j = 0; j < NT; j++)
                    acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_s8s8(wq, xq[j])),
                                                _mm256_mul_ps(dw, dx[j]), acc[i][j]);
            } else if (type == DTYPE_Q4_0) {
                __m256i wq = load_nibbles(blk + 2);
                __m256 dw = _mm256_set1_ps(load_f16(blk)), m8 = _mm256_set1_ps(-8.0f);
                for (int j = 0; j < NT; j++) {
                    __m256 v = _mm256_fmadd_ps(m8, ys[j], _mm256_cvtepi32_ps(dot_u8s8(wq, xq[j])));
                    acc[i][j] = _mm256_fmadd_ps(v, _mm256_mul_ps(dw, dx[j]), acc[i][j]);
                }
            } else {
                __m256i wq = load_nibbles(blk + 4);
                uint32_t dm_bits;
                memcpy(&dm_bits, blk, 4);
                __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm_bits)); /* d, m */
                __m256 dw = _mm256_broadcastss_ps(dm);
                __m256 mw = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
                for (int j = 0; j < NT; j++) {
                    __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(wq, xq[j])), dw,
                                               _mm256_mul_ps(mw, ys[j]));
                    acc[i][j] = _mm256_fmadd_ps(v, dx[j], acc[i][j]);
                }
            }
        }
    }
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < NT; j++) a->out[(t + j) * w->rows + r + i] = hsum8(acc[i][j]);
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

/* ---- quantized weights x 16-bit activations ---- */

/* Eight rows at a time (a group of CPU_PACK_ROWS), in the prepared layout (cpu_simd.h): a
 * 16-byte chunk widened to 16 bits holds one pair of columns for the 8 rows, so madd against
 * the token's pair of activations broadcast to every lane gives each row's two products
 * summed, row i in lane i. Per block b and token t the lanes add up to each row's integer dot
 * product isum (exact in int32: |isum| <= 32 * 128 * 32767 < 2^31, in any order), and the
 * float work is one vector for the 8 rows:
 *   acc = fma(float(isum), d_w * d_x, acc)       lane i: row i
 *   acc = fma(m_w, s_x, acc)                     Q4_1 only (s_x: the block's F32 sum)
 * Lane i of acc is row i's output after the last block: no horizontal sum. Every tile, GEMV
 * or GEMM, does exactly that for each of its tokens, so an output has the same bits whatever
 * the tile, the thread count or the batch. Weights in the file's layout (not prepared) are
 * transposed block by block into the same form first: same bits again. */

/* The token's activations x[k], x[k + 1] in every 32-bit lane. */
INLINE __m256i q16_pair(const int16_t *x) {
    int32_t v;
    memcpy(&v, x, 4);
    return _mm256_set1_epi32(v);
}

/* A Q4_0/Q4_1 chunk of the prepared layout widened to 16 bits: each byte zero-extended, its
 * low nibbles are columns 2c, 2c + 1 (lo), its high nibbles 16 + 2c, 16 + 2c + 1 (hi); Q4_0's
 * values centred by -8. */
INLINE void q16_widen_nibbles(dtype type, __m128i raw, __m256i *lo, __m256i *hi) {
    const __m256i v = _mm256_cvtepu8_epi16(raw);
    *lo = _mm256_and_si256(v, _mm256_set1_epi16(0x0f));
    *hi = _mm256_srli_epi16(v, 4);
    if (type == DTYPE_Q4_0) {
        *lo = _mm256_sub_epi16(*lo, _mm256_set1_epi16(8));
        *hi = _mm256_sub_epi16(*hi, _mm256_set1_epi16(8));
    }
}

/* Token t's outputs for the group from row r: lane i is row r + i, past the last row none. */
INLINE void q16_store(const cpu_gemm_args *a, int64_t r, int t, __m256 acc) {
    const int64_t rows = a->w->rows;
    float *o = a->out + (int64_t)t * rows + r;
    if (rows - r >= CPU_PACK_ROWS) {
        _mm256_storeu_ps(o, acc);
    } else {
        float v[CPU_PACK_ROWS];
        _mm256_storeu_ps(v, acc);
        memcpy(o, v, (size_t)(rows - r) * sizeof(float));
    }
}

/* One or two tokens (decode) against one group, each chunk widened where it is used: a
 * widened copy would not pay for itself. */
INLINE void q16_direct_tile(const cpu_gemm_args *a, dtype type, bool packed, const q16_group *g,
                            int64_t r, int t, int NT) {
    const kernel_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const int nc = q16_chunks(type);
    const cpu_act_q16 *x = a->x;
    const int16_t *xq = x->qs + (int64_t)t * w->cols;
    const float *xds = x->ds + 2 * (int64_t)t * nb;
    _Alignas(32) uint8_t tmp[16 * QK / 2 + 32];
    __m256 acc[2];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *gbk = q16_group_block(type, packed, g, b, tmp);
        __m256i isum[2];
        for (int j = 0; j < NT; j++) isum[j] = _mm256_setzero_si256();
        for (int c = 0; c < nc; c++) {
            const __m128i raw = _mm_loadu_si128((const __m128i *)(gbk + 16 * c));
            if (type == DTYPE_Q8_0) {
                const __m256i w0 = _mm256_cvtepi8_epi16(raw);
                for (int j = 0; j < NT; j++) {
                    const int16_t *xj = xq + (j * nb + b) * QK + 2 * c;
                    isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(w0, q16_pair(xj)));
                }
            } else {
                __m256i lo, hi;
                q16_widen_nibbles(type, raw, &lo, &hi);
                for (int j = 0; j < NT; j++) {
                    const int16_t *xj = xq + (j * nb + b) * QK + 2 * c;
                    isum[j] = _mm256_add_epi32(
                        isum[j], _mm256_add_epi32(_mm256_madd_epi16(lo, q16_pair(xj)),
                                                  _mm256_madd_epi16(hi, q16_pair(xj + 16))));
                }
            }
        }
        const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(gbk + 16 * nc)));
        __m256 m8 = _mm256_setzero_ps();
        if (type == DTYPE_Q4_1)
            m8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(gbk + 16 * nc + 16)));
        for (int j = 0; j < NT; j++) {
            const float *ds = xds + 2 * (j * nb + b);
            __m256 scale = _mm256_mul_ps(d8, _mm256_broadcast_ss(ds));
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), scale, acc[j]);
            if (type == DTYPE_Q4_1)
                acc[j] = _mm256_fmadd_ps(m8, _mm256_broadcast_ss(ds + 1), acc[j]);
        }
    }
    for (int j = 0; j < NT; j++) q16_store(a, r, t + j, acc[j]);
}

/* Several tokens (prefill, batched decode): a group's blocks are widened once per token block
 * into q16_wide, which every tile of tokens then only loads: vector v holds columns 2v,
 * 2v + 1 of the 8 rows (lanes 2i, 2i + 1: row i), for every type. */
typedef struct q16_wide {
    __m256i v[QK / 2];
    __m256 d, m; /* the rows' scales and (Q4_1) offsets as floats */
} q16_wide;

/* A tile is up to Q16_GROUPS groups x 4 tokens, a lone group x 8: each broadcast pair of
 * activations feeds two madds, and the 8 integer sums, the weight vectors and the broadcast
 * fit the 16 registers. 16 rows x 4 tokens measured ~5% faster than 32 x 2 and 8 x 8 (Q4_1
 * and Q8_0 64-token GEMM on one AMD EPYC core, thread CPU time). */
#define Q16_GROUPS 2
/* Blocks widened at a time: 2 groups x 16 x 576 bytes stay in L1 while the tiles run. */
#define Q16_WIDE_BLOCKS 16

INLINE void q16_widen(dtype type, const uint8_t *gbk, q16_wide *o) {
    const int nc = q16_chunks(type);
    for (int c = 0; c < nc; c++) {
        const __m128i raw = _mm_loadu_si128((const __m128i *)(gbk + 16 * c));
        if (type == DTYPE_Q8_0) {
            o->v[c] = _mm256_cvtepi8_epi16(raw);
            continue;
        }
        __m256i lo, hi;
        q16_widen_nibbles(type, raw, &lo, &hi);
        o->v[c] = lo;          /* columns 2c, 2c + 1 */
        o->v[QK / 4 + c] = hi; /* columns 16 + 2c, 16 + 2c + 1 */
    }
    o->d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(gbk + 16 * nc)));
    if (type == DTYPE_Q4_1)
        o->m = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(gbk + 16 * nc + 16)));
}

/* G groups (wide[g]: their blocks [b0, b1) widened) x NT tokens from t. The float sums
 * acc[j * Q16_GROUPS + g] stay in memory between blocks: with the integer sums in registers
 * there is no room for them. */
INLINE void gemm_q16_tile(const cpu_gemm_args *a, dtype type, q16_wide *const *wide, int G,
                          int64_t b0, int64_t b1, int t, int NT, __m256 *acc) {
    const int64_t cols = a->w->cols, nb = cols / QK;
    const cpu_act_q16 *x = a->x;
    const int16_t *xq = x->qs + (int64_t)t * cols;
    const float *xds = x->ds + 2 * (int64_t)t * nb;
    for (int64_t b = b0; b < b1; b++) {
        const q16_wide *wb[Q16_GROUPS];
        for (int g = 0; g < G; g++) wb[g] = wide[g] + (b - b0);
        __m256i isum[Q16_GROUPS][8];
#pragma GCC unroll 16
        for (int v = 0; v < QK / 2; v++) {
            __m256i wv[Q16_GROUPS];
            for (int g = 0; g < G; g++) {
                wv[g] = _mm256_load_si256(&wb[g]->v[v]);
                /* loaded once into a register: left alone, GCC folds the load into each of
                 * the NT madds */
                __asm__("" : "+x"(wv[g]));
            }
            for (int j = 0; j < NT; j++) {
                const __m256i xv = q16_pair(xq + j * cols + b * QK + 2 * v);
                for (int g = 0; g < G; g++) {
                    const __m256i p = _mm256_madd_epi16(wv[g], xv);
                    isum[g][j] = v == 0 ? p : _mm256_add_epi32(isum[g][j], p);
                    /* each sum stays one chain of adds: GCC reassociates the unrolled chains
                     * into trees, whose pending products spill */
                    __asm__("" : "+x"(isum[g][j]));
                }
            }
        }
        for (int j = 0; j < NT; j++) {
            /* in registers before the stores to acc, which GCC must assume alias them */
            const __m256 dx = _mm256_broadcast_ss(xds + 2 * (j * nb + b));
            const __m256 sx = _mm256_broadcast_ss(xds + 2 * (j * nb + b) + 1);
            for (int g = 0; g < G; g++) {
                __m256 *o = &acc[j * Q16_GROUPS + g];
                __m256 scale = _mm256_mul_ps(wb[g]->d, dx);
                __m256 s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[g][j]), scale, *o);
                if (type == DTYPE_Q4_1) s = _mm256_fmadd_ps(wb[g]->m, sx, s);
                *o = s;
            }
        }
    }
}

/* Tokens [t0, t1) against G groups' widened blocks [b0, b1): tiles of 8 / G tokens, then
 * what is left. */
INLINE void gemm_q16_tiles(const cpu_gemm_args *a, dtype type, q16_wide *const *wide, int G,
                           int64_t b0, int64_t b1, int t0, int t1, __m256 *acc) {
    const int nt = 8 / G;
    int t = t0;
#define TILE_(NT) gemm_q16_tile(a, type, wide, G, b0, b1, t, NT, acc + Q16_GROUPS * (t - t0))
    for (; t + nt <= t1; t += nt) TILE_(nt);
    if (nt > 4 && t + 4 <= t1) TILE_(4), t += 4;
    if (t + 2 <= t1) TILE_(2), t += 2;
    if (t < t1) TILE_(1);
#undef TILE_
}

/* Rows [r0, r1), r0 a multiple of CPU_PACK_ROWS: token blocks of CPU_GEMM_TOKEN_BLOCK; in a
 * block, Q16_GROUPS groups at a time (the last one alone if their number is odd), their
 * blocks widened Q16_WIDE_BLOCKS at a time. A block of one or two tokens (decode) reads each
 * weight once: no widened copy. */
INLINE void gemm_q16_drive(const cpu_gemm_args *a, dtype type, bool packed, int64_t r0,
                           int64_t r1) {
    const kernel_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const int64_t part = q16_part_blocks(nb, Q16_WIDE_BLOCKS);
    _Alignas(32) uint8_t tmp[16 * QK / 2 + 32];
    q16_wide wide_mem[Q16_GROUPS][Q16_WIDE_BLOCKS];
    q16_wide *const wide[Q16_GROUPS] = {wide_mem[0], wide_mem[1]};
    __m256 acc[Q16_GROUPS * CPU_GEMM_TOKEN_BLOCK];
    for (int t0 = 0; t0 < a->n; t0 += CPU_GEMM_TOKEN_BLOCK) {
        const int t1 = a->n - t0 < CPU_GEMM_TOKEN_BLOCK ? a->n : t0 + CPU_GEMM_TOKEN_BLOCK;
        for (int64_t r = r0; r < r1; r += Q16_GROUPS * CPU_PACK_ROWS) {
            const int G = r + CPU_PACK_ROWS < r1 ? Q16_GROUPS : 1;
            q16_group g[Q16_GROUPS];
            for (int k = 0; k < G; k++)
                g[k] = q16_group_at(w, packed, r + k * CPU_PACK_ROWS, nb, type);
            if (t1 - t0 <= 2) {
                for (int k = 0; k < G; k++) {
                    if (t1 - t0 == 1)
                        q16_direct_tile(a, type, packed, &g[k], r + k * CPU_PACK_ROWS, t0, 1);
                    else
                        q16_direct_tile(a, type, packed, &g[k], r + k * CPU_PACK_ROWS, t0, 2);
                }
                continue;
            }
            for (int i = 0; i < Q16_GROUPS * (t1 - t0); i++) acc[i] = _mm256_setzero_ps();
            for (int64_t b0 = 0; b0 < nb; b0 += part) {
                const int64_t b1 = b0 + part < nb ? b0 + part : nb;
                for (int k = 0; k < G; k++)
                    for (int64_t b = b0; b < b1; b++)
                        q16_widen(type, q16_group_block(type, packed, &g[k], b, tmp),
                                  &wide[k][b - b0]);
                if (G == Q16_GROUPS) /* G a constant in each call, so the tiles unroll */
                    gemm_q16_tiles(a, type, wide, Q16_GROUPS, b0, b1, t0, t1, acc);
                else
                    gemm_q16_tiles(a, type, wide, 1, b0, b1, t0, t1, acc);
            }
            for (int k = 0; k < G; k++)
                for (int t = t0; t < t1; t++)
                    q16_store(a, r + k * CPU_PACK_ROWS, t, acc[Q16_GROUPS * (t - t0) + k]);
        }
    }
}

#define GEMM_Q16(type, a, r0, r1)                                                                  \
    ((a)->w->prepared ? gemm_q16_drive(a, type, true, r0, r1)                                      \
                      : gemm_q16_drive(a, type, false, r0, r1))

static void gemm_q16_q8_0(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    GEMM_Q16(DTYPE_Q8_0, a, r0, r1);
}
static void gemm_q16_q4_0(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    GEMM_Q16(DTYPE_Q4_0, a, r0, r1);
}
static void gemm_q16_q4_1(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    GEMM_Q16(DTYPE_Q4_1, a, r0, r1);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

const cpu_simd_table cpu_simd_avx2 = {
    .name = "cpu-avx2",
    .level = KERNEL_SIMD_AVX2,
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
