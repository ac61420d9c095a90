/* cuda_common.cuh - device helpers shared by the kernels (private): element loads of every
 * dtype, block dequantization, warp reductions. */
#ifndef CINDER_CUDA_COMMON_CUH
#define CINDER_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

extern "C" {
#include "dtype.h"
}

__device__ __forceinline__ float cu_bf16(uint16_t b) {
    return __uint_as_float((uint32_t)b << 16);
}
__device__ __forceinline__ float cu_f16(uint16_t h) {
    return __half2float(__ushort_as_half(h));
}
/* Unaligned-safe 16-bit load (quantized blocks are only 2-byte aligned). */
__device__ __forceinline__ uint16_t cu_u16(const uint8_t *p) {
    return *(const uint16_t *)p;
}

/* Element c of a row of type t (any dtype). */
__device__ __forceinline__ float cu_load(dtype t, const uint8_t *row, int64_t c) {
    switch (t) {
        case DTYPE_F32:
            return ((const float *)row)[c];
        case DTYPE_F16:
            return cu_f16(((const uint16_t *)row)[c]);
        case DTYPE_BF16:
            return cu_bf16(((const uint16_t *)row)[c]);
        case DTYPE_Q8_0: {
            const uint8_t *b = row + (c / QK) * 34;
            return cu_f16(cu_u16(b)) * (float)(int8_t)b[2 + c % QK];
        }
        case DTYPE_Q4_0: {
            const uint8_t *b = row + (c / QK) * 18;
            int i = (int)(c % QK);
            int q = i < 16 ? (b[2 + i] & 15) : (b[2 + i - 16] >> 4);
            return cu_f16(cu_u16(b)) * (float)(q - 8);
        }
        case DTYPE_Q4_1: {
            const uint8_t *b = row + (c / QK) * 20;
            int i = (int)(c % QK);
            int q = i < 16 ? (b[4 + i] & 15) : (b[4 + i - 16] >> 4);
            return cu_f16(cu_u16(b)) * (float)q + cu_f16(cu_u16(b + 2));
        }
        default:
            return 0.0f;
    }
}

/* Block bytes of the quantized types. */
__host__ __device__ __forceinline__ int cu_qblock_bytes(dtype t) {
    return t == DTYPE_Q8_0 ? 34 : t == DTYPE_Q4_0 ? 18 : 20;
}

/* Dequantizes the 32 values of one quantized block into v. */
__device__ __forceinline__ void cu_dequant_block(dtype t, const uint8_t *b, float v[QK]) {
    float d = cu_f16(cu_u16(b));
    if (t == DTYPE_Q8_0) {
        const uint16_t *q = (const uint16_t *)(b + 2); /* 2-byte aligned */
#pragma unroll
        for (int i = 0; i < QK / 2; i++) {
            uint16_t w = q[i];
            v[2 * i] = d * (float)(int8_t)(w & 0xff);
            v[2 * i + 1] = d * (float)(int8_t)(w >> 8);
        }
    } else {
        float m = t == DTYPE_Q4_1 ? cu_f16(cu_u16(b + 2)) : -8.0f * d;
        const uint16_t *q = (const uint16_t *)(b + (t == DTYPE_Q4_1 ? 4 : 2));
#pragma unroll
        for (int i = 0; i < QK / 4; i++) {
            uint16_t w = q[i];
            v[2 * i] = d * (float)(w & 15) + m;
            v[2 * i + 1] = d * (float)((w >> 8) & 15) + m;
            v[2 * i + 16] = d * (float)((w >> 4) & 15) + m;
            v[2 * i + 17] = d * (float)(w >> 12) + m;
        }
    }
}

__device__ __forceinline__ float cu_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float cu_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over a block of blockDim.x threads (a multiple of 32, <= 1024); every thread gets it.
 * red: __shared__ float[32]. */
__device__ __forceinline__ float cu_block_sum(float v, float *red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cu_warp_sum(v);
    __syncthreads(); /* red may still be read from a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return cu_warp_sum(v);
}
__device__ __forceinline__ float cu_block_max(float v, float *red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cu_warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : -INFINITY;
    return cu_warp_max(v);
}

#endif
