/* dtype.h - the tensor element types cinder reads, their block layout, and fp16/bf16 helpers.
 *
 * Quantized types store blocks of 32 values (GGUF layouts, model-notes.md):
 *   Q8_0: fp16 d, int8 q[32]             (34 bytes)  x = q * d
 *   Q4_0: fp16 d, uint8 qs[16]           (18 bytes)  x = (q - 8) * d
 *   Q4_1: fp16 d, fp16 m, uint8 qs[16]   (20 bytes)  x = q * d + m
 * In the 4-bit types the low nibbles of qs are elements 0-15, the high nibbles 16-31. */
#ifndef CINDER_DTYPE_H
#define CINDER_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum dtype {
    DTYPE_F32 = 0,
    DTYPE_F16,
    DTYPE_BF16,
    DTYPE_Q8_0,
    DTYPE_Q4_0,
    DTYPE_Q4_1,
    DTYPE_COUNT,
} dtype;

#define QK 32 /* values per quantized block */

typedef struct block_q8_0 {
    uint16_t d;
    int8_t qs[QK];
} block_q8_0;
typedef struct block_q4_0 {
    uint16_t d;
    uint8_t qs[QK / 2];
} block_q4_0;
typedef struct block_q4_1 {
    uint16_t d, m;
    uint8_t qs[QK / 2];
} block_q4_1;

const char *dtype_name(dtype t);
/* Values per block: 1 for float types, 32 for quantized ones. */
int64_t dtype_block_size(dtype t);
/* Bytes per block. */
size_t dtype_block_bytes(dtype t);
/* Bytes of a row of n values; n must be a multiple of the block size (returns 0 if not). */
size_t dtype_row_bytes(dtype t, int64_t n);
bool dtype_is_quantized(dtype t);

/* Dequantizes n values (n a multiple of the block size) of type t starting at src into dst. */
void dtype_to_f32(dtype t, const void *src, float *dst, int64_t n);
/* Converts n values (n a multiple of the block size) to type t at dst (dtype_row_bytes(t, n)
 * bytes): F16 and BF16 round to nearest even; Q8_0, Q4_0 and Q4_1 quantize each block as ggml's
 * reference quantizers do (quantize_row_*_ref), so the bytes match llama.cpp's. */
void dtype_from_f32(dtype t, const float *src, void *dst, int64_t n);

static inline float fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) mant <<= 1, exp--;
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even. */
static inline uint16_t f32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13), rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)h;
}

static inline float bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

#endif
