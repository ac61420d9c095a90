#include "dtype.h"

#include <math.h>

#include "log.h"

static const struct {
    const char *name;
    int64_t block_size;
    size_t block_bytes;
} dtype_info[DTYPE_COUNT] = {
    [DTYPE_F32] = {"F32", 1, 4},
    [DTYPE_F16] = {"F16", 1, 2},
    [DTYPE_BF16] = {"BF16", 1, 2},
    [DTYPE_Q8_0] = {"Q8_0", QK, sizeof(block_q8_0)},
    [DTYPE_Q4_0] = {"Q4_0", QK, sizeof(block_q4_0)},
    [DTYPE_Q4_1] = {"Q4_1", QK, sizeof(block_q4_1)},
};

_Static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");

const char *dtype_name(dtype t) {
    return (unsigned)t < DTYPE_COUNT ? dtype_info[t].name : "?";
}

int64_t dtype_block_size(dtype t) {
    CN_ASSERT((unsigned)t < DTYPE_COUNT);
    return dtype_info[t].block_size;
}

size_t dtype_block_bytes(dtype t) {
    CN_ASSERT((unsigned)t < DTYPE_COUNT);
    return dtype_info[t].block_bytes;
}

size_t dtype_row_bytes(dtype t, int64_t n) {
    int64_t bs = dtype_block_size(t);
    if (n < 0 || n % bs != 0) return 0;
    return (size_t)(n / bs) * dtype_block_bytes(t);
}

bool dtype_is_quantized(dtype t) {
    return t == DTYPE_Q8_0 || t == DTYPE_Q4_0 || t == DTYPE_Q4_1;
}

void dtype_to_f32(dtype t, const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    switch (t) {
        case DTYPE_F32: memcpy(dst, src, (size_t)n * 4); return;
        case DTYPE_F16:
            for (int64_t i = 0; i < n; i++) {
                uint16_t h;
                memcpy(&h, p + 2 * i, 2);
                dst[i] = fp16_to_f32(h);
            }
            return;
        case DTYPE_BF16:
            for (int64_t i = 0; i < n; i++) {
                uint16_t h;
                memcpy(&h, p + 2 * i, 2);
                dst[i] = bf16_to_f32(h);
            }
            return;
        case DTYPE_Q8_0:
            for (int64_t b = 0; b < n / QK; b++) {
                block_q8_0 blk;
                memcpy(&blk, p + b * sizeof blk, sizeof blk);
                float d = fp16_to_f32(blk.d);
                for (int j = 0; j < QK; j++) dst[b * QK + j] = blk.qs[j] * d;
            }
            return;
        case DTYPE_Q4_0:
            for (int64_t b = 0; b < n / QK; b++) {
                block_q4_0 blk;
                memcpy(&blk, p + b * sizeof blk, sizeof blk);
                float d = fp16_to_f32(blk.d);
                for (int j = 0; j < QK / 2; j++) {
                    dst[b * QK + j] = ((blk.qs[j] & 0xf) - 8) * d;
                    dst[b * QK + j + QK / 2] = ((blk.qs[j] >> 4) - 8) * d;
                }
            }
            return;
        case DTYPE_Q4_1:
            for (int64_t b = 0; b < n / QK; b++) {
                block_q4_1 blk;
                memcpy(&blk, p + b * sizeof blk, sizeof blk);
                float d = fp16_to_f32(blk.d), m = fp16_to_f32(blk.m);
                for (int j = 0; j < QK / 2; j++) {
                    dst[b * QK + j] = (blk.qs[j] & 0xf) * d + m;
                    dst[b * QK + j + QK / 2] = (blk.qs[j] >> 4) * d + m;
                }
            }
            return;
        case DTYPE_COUNT: break;
    }
    CN_ABORT("bad dtype %d", (int)t);
}

/* ggml's quantize_row_q8_0_ref: d = amax / 127, q = round(x / d). */
static void dtype_quantize_q8_0(const float *x, block_q8_0 *y) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = f32_to_fp16(d);
    for (int j = 0; j < QK; j++) y->qs[j] = (int8_t)roundf(x[j] * id);
}

/* ggml's quantize_row_q4_0_ref: the value of largest magnitude, sign kept, maps to -8. */
static void dtype_quantize_q4_0(const float *x, block_q4_0 *y) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QK; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = f32_to_fp16(d);
    for (int j = 0; j < QK / 2; j++) {
        int lo = (int8_t)(x[j] * id + 8.5f), hi = (int8_t)(x[j + QK / 2] * id + 8.5f);
        y->qs[j] = (uint8_t)((lo < 15 ? lo : 15) | (hi < 15 ? hi : 15) << 4);
    }
}

/* ggml's quantize_row_q4_1_ref: 16 steps from the block's min to its max. */
static void dtype_quantize_q4_1(const float *x, block_q4_1 *y) {
    float min = x[0], max = x[0];
    for (int j = 1; j < QK; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    float d = (max - min) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = f32_to_fp16(d);
    y->m = f32_to_fp16(min);
    for (int j = 0; j < QK / 2; j++) {
        int lo = (int8_t)((x[j] - min) * id + 0.5f),
            hi = (int8_t)((x[j + QK / 2] - min) * id + 0.5f);
        y->qs[j] = (uint8_t)((lo < 15 ? lo : 15) | (hi < 15 ? hi : 15) << 4);
    }
}

void dtype_from_f32(dtype t, const float *src, void *dst, int64_t n) {
    uint8_t *p = dst;
    switch (t) {
        case DTYPE_F32: memcpy(dst, src, (size_t)n * 4); return;
        case DTYPE_F16:
            for (int64_t i = 0; i < n; i++) {
                uint16_t h = f32_to_fp16(src[i]);
                memcpy(p + 2 * i, &h, 2);
            }
            return;
        case DTYPE_BF16:
            for (int64_t i = 0; i < n; i++) {
                uint16_t h = f32_to_bf16(src[i]);
                memcpy(p + 2 * i, &h, 2);
            }
            return;
        case DTYPE_Q8_0:
            for (int64_t b = 0; b < n / QK; b++) {
                block_q8_0 blk;
                dtype_quantize_q8_0(src + b * QK, &blk);
                memcpy(p + b * sizeof blk, &blk, sizeof blk);
            }
            return;
        case DTYPE_Q4_0:
            for (int64_t b = 0; b < n / QK; b++) {
                block_q4_0 blk;
                dtype_quantize_q4_0(src + b * QK, &blk);
                memcpy(p + b * sizeof blk, &blk, sizeof blk);
            }
            return;
        case DTYPE_Q4_1:
            for (int64_t b = 0; b < n / QK; b++) {
                block_q4_1 blk;
                dtype_quantize_q4_1(src + b * QK, &blk);
                memcpy(p + b * sizeof blk, &blk, sizeof blk);
            }
            return;
        case DTYPE_COUNT: break;
    }
    CN_ABORT("bad dtype %d", (int)t);
}
