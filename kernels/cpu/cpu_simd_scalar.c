/* cpu_simd_scalar.c - the portable kernels: the reference every SIMD level is tested against,
 * and the fallback on CPUs without one. Written for clarity first; the compiler vectorizes
 * what it can. */
#include <math.h>
#include <string.h>

#include "cpu_simd.h"

void cpu_quantize_q8_scalar(const float *x, cpu_block_q8 *y, int64_t k) {
    for (int64_t b = 0; b < k / QK; b++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax >= CPU_ACT_TINY ? amax / 127.0f : 0.0f;
        float id = amax >= CPU_ACT_TINY ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            /* nearbyintf rounds to nearest even, like the SIMD conversions */
            int q = (int)nearbyintf(x[j] * id);
            y[b].qs[j] = (int8_t)q;
            sum += q;
        }
        y[b].d = d;
        y[b].s = d * (float)sum;
    }
}

void cpu_quantize_q16_scalar(const float *x, int16_t *qs, float *ds, int64_t k) {
    for (int64_t b = 0; b < k / QK; b++, x += QK, qs += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax >= CPU_ACT_TINY ? amax / 32767.0f : 0.0f;
        float id = amax >= CPU_ACT_TINY ? 32767.0f / amax : 0.0f;
        for (int j = 0; j < QK; j++) qs[j] = (int16_t)nearbyintf(x[j] * id);
        float p[8]; /* the sum in the order cpu_simd.h fixes */
        for (int l = 0; l < 8; l++) p[l] = (x[l] + x[l + 8]) + (x[l + 16] + x[l + 24]);
        for (int l = 0; l < 4; l++) p[l] += p[l + 4];
        for (int l = 0; l < 2; l++) p[l] += p[l + 2];
        ds[2 * b] = d;
        ds[2 * b + 1] = p[0] + p[1];
    }
}

static float load_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return fp16_to_f32(h);
}

/* ---- float weights: F32, F16, BF16 (activations stay F32) ---- */

static inline float float_weight(dtype t, const uint8_t *row, int64_t k) {
    uint16_t h;
    switch (t) {
        case DTYPE_F32: {
            float f;
            memcpy(&f, row + 4 * k, 4);
            return f;
        }
        case DTYPE_F16:
            memcpy(&h, row + 2 * k, 2);
            return fp16_to_f32(h);
        default:
            memcpy(&h, row + 2 * k, 2);
            return bf16_to_f32(h);
    }
}

static void gemm_float(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    const kernel_weight *w = a->w;
    const float *x = a->x;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)w->data + r * w->row_bytes;
        for (int t = 0; t < a->n; t++) {
            const float *xt = x + (int64_t)t * w->cols;
            float acc = 0;
            for (int64_t k = 0; k < w->cols; k++) acc += float_weight(w->type, row, k) * xt[k];
            a->out[(int64_t)t * w->rows + r] = acc;
        }
    }
}

/* ---- quantized weights x 8-bit activations ---- */

/* One output: sum over blocks of d_w * d_x * (integer dot), plus m_w * s_x for Q4_1. Q4_0's
 * -8 offset is applied to the weight's nibbles, so its dot stays exact in integers. */
static float dot_q(dtype t, const uint8_t *row, const cpu_block_q8 *x, int64_t nb) {
    float acc = 0, macc = 0;
    for (int64_t b = 0; b < nb; b++) {
        int sum = 0;
        float dw, mw = 0;
        if (t == DTYPE_Q8_0) {
            const uint8_t *blk = row + b * sizeof(block_q8_0);
            dw = load_f16(blk);
            const int8_t *q = (const int8_t *)(blk + 2);
            for (int j = 0; j < QK; j++) sum += q[j] * x[b].qs[j];
        } else {
            const uint8_t *blk = row + b * dtype_block_bytes(t);
            dw = load_f16(blk);
            int off = 8;
            if (t == DTYPE_Q4_1) mw = load_f16(blk + 2), off = 0;
            const uint8_t *q = blk + (t == DTYPE_Q4_1 ? 4 : 2);
            for (int j = 0; j < QK / 2; j++) {
                sum += ((q[j] & 0xf) - off) * x[b].qs[j];
                sum += ((q[j] >> 4) - off) * x[b].qs[j + QK / 2];
            }
        }
        acc += (float)sum * (dw * x[b].d);
        macc += mw * x[b].s;
    }
    return acc + macc;
}

static void gemm_quant(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    const kernel_weight *w = a->w;
    int64_t nb = w->cols / QK;
    const cpu_block_q8 *x = a->x;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)w->data + r * w->row_bytes;
        for (int t = 0; t < a->n; t++)
            a->out[(int64_t)t * w->rows + r] = dot_q(w->type, row, x + t * nb, nb);
    }
}

/* ---- quantized weights x 16-bit activations ---- */

/* One output: sum over blocks of d_w * d_x * (integer dot, exact in int32: |dot| <= 32 *
 * 128 * 32767 < 2^31), plus m_w * s_x for Q4_1, s_x the block's F32 sum. */
static float dot_q16(dtype t, const uint8_t *row, const int16_t *qs, const float *ds, int64_t nb) {
    float acc = 0, macc = 0;
    const size_t bb = dtype_block_bytes(t);
    for (int64_t b = 0; b < nb; b++, qs += QK) {
        const uint8_t *blk = row + b * bb;
        int32_t sum = 0;
        float dw = load_f16(blk), mw = 0;
        if (t == DTYPE_Q8_0) {
            const int8_t *q = (const int8_t *)(blk + 2);
            for (int j = 0; j < QK; j++) sum += q[j] * qs[j];
        } else {
            int off = t == DTYPE_Q4_1 ? 0 : 8;
            if (t == DTYPE_Q4_1) mw = load_f16(blk + 2);
            const uint8_t *q = blk + (t == DTYPE_Q4_1 ? 4 : 2);
            for (int j = 0; j < QK / 2; j++) {
                sum += ((q[j] & 0xf) - off) * qs[j];
                sum += ((q[j] >> 4) - off) * qs[j + QK / 2];
            }
        }
        acc += (float)sum * (dw * ds[2 * b]);
        macc += mw * ds[2 * b + 1];
    }
    return acc + macc;
}

static void gemm_quant_q16(const cpu_gemm_args *a, int64_t r0, int64_t r1) {
    const kernel_weight *w = a->w;
    const int64_t nb = w->cols / QK;
    const cpu_act_q16 *x = a->x;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)w->data + r * w->row_bytes;
        for (int t = 0; t < a->n; t++)
            a->out[(int64_t)t * w->rows + r] =
                dot_q16(w->type, row, x->qs + t * w->cols, x->ds + 2 * t * nb, nb);
    }
}

const cpu_simd_table cpu_simd_scalar = {
    .name = "cpu-scalar",
    .level = KERNEL_SIMD_SCALAR,
    .quantize_q8 = cpu_quantize_q8_scalar,
    .gemm =
        {
            [DTYPE_F32] = gemm_float,
            [DTYPE_F16] = gemm_float,
            [DTYPE_BF16] = gemm_float,
            [DTYPE_Q8_0] = gemm_quant,
            [DTYPE_Q4_0] = gemm_quant,
            [DTYPE_Q4_1] = gemm_quant,
        },
    .quantize_q16 = cpu_quantize_q16_scalar,
    .gemm_q16 =
        {
            [DTYPE_Q8_0] = gemm_quant_q16,
            [DTYPE_Q4_0] = gemm_quant_q16,
            [DTYPE_Q4_1] = gemm_quant_q16,
        },
};
