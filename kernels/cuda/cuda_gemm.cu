/* cuda_gemm.cu - matmuls cuBLAS does not do: GEMV for small batches (any weight type, F32
 * activations, FP32 accumulation) and a tiled GEMM for quantized weights. Dense GEMMs of
 * more tokens go to cuBLAS (cuda_ops.cu). */
#include <stdint.h>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

#define GEMV_WARPS 4 /* rows per block: one warp per output row */

/* 8 consecutive weights of a 16-byte-aligned chunk as floats. */
template <dtype T>
__device__ __forceinline__ void gemv_load8(const uint8_t *row, int64_t c, float w[8]) {
    if (T == DTYPE_F32) {
        float4 a = *(const float4 *)(row + c * 4), b = *(const float4 *)(row + c * 4 + 16);
        w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z,
        w[7] = b.w;
    } else {
        uint4 u = *(const uint4 *)(row + c * 2);
        uint32_t p[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint16_t lo = (uint16_t)(p[i] & 0xffff), hi = (uint16_t)(p[i] >> 16);
            w[2 * i] = T == DTYPE_BF16 ? cu_bf16(lo) : cu_f16(lo);
            w[2 * i + 1] = T == DTYPE_BF16 ? cu_bf16(hi) : cu_f16(hi);
        }
    }
}

/* out [n, rows] = x [n, cols] . W^T, W dense, N >= n tokens; vec: 8-wide aligned loads. */
template <dtype T, int N>
__global__ void k_gemv_dense(float *__restrict__ out, const float *__restrict__ x,
                             const uint8_t *__restrict__ w, int64_t rows, int64_t cols,
                             size_t row_bytes, int n, int vec) {
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return; /* a whole warp leaves together */
    const uint8_t *wr = w + row * row_bytes;
    float acc[N];
#pragma unroll
    for (int t = 0; t < N; t++) acc[t] = 0;
    if (vec) {
#pragma unroll 4
        for (int64_t c = (int64_t)lane * 8; c < cols; c += 32 * 8) {
            float wv[8];
            gemv_load8<T>(wr, c, wv);
#pragma unroll
            for (int t = 0; t < N; t++) {
                if (t >= n) break;
                const float4 *xp = (const float4 *)(x + t * cols + c);
                float4 a = __ldg(xp), b = __ldg(xp + 1);
                acc[t] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x +
                          wv[5] * b.y + wv[6] * b.z + wv[7] * b.w;
            }
        }
    } else {
        for (int64_t c = lane; c < cols; c += 32) {
            float wv = cu_load(T, wr, c);
#pragma unroll
            for (int t = 0; t < N; t++)
                if (t < n) acc[t] += wv * __ldg(x + t * cols + c);
        }
    }
#pragma unroll
    for (int t = 0; t < N; t++) {
        if (t >= n) break;
        float v = cu_warp_sum(acc[t]);
        if (lane == 0) out[t * rows + row] = v;
    }
}

/* The same for quantized W: a lane takes whole 32-value blocks. */
template <dtype T, int N>
__global__ void k_gemv_quant(float *__restrict__ out, const float *__restrict__ x,
                             const uint8_t *__restrict__ w, int64_t rows, int64_t cols,
                             size_t row_bytes, int n, int vec) {
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const uint8_t *wr = w + row * row_bytes;
    const int bb = cu_qblock_bytes(T);
    int64_t nb = cols / QK;
    float acc[N];
#pragma unroll
    for (int t = 0; t < N; t++) acc[t] = 0;
    for (int64_t b = lane; b < nb; b += 32) {
        float v[QK];
        cu_dequant_block(T, wr + b * bb, v);
#pragma unroll
        for (int t = 0; t < N; t++) {
            if (t >= n) break;
            const float *xp = x + t * cols + b * QK;
            float s = 0;
            if (vec) {
#pragma unroll
                for (int i = 0; i < QK; i += 4) {
                    float4 a = __ldg((const float4 *)(xp + i));
                    s += v[i] * a.x + v[i + 1] * a.y + v[i + 2] * a.z + v[i + 3] * a.w;
                }
            } else {
#pragma unroll
                for (int i = 0; i < QK; i++) s += v[i] * __ldg(xp + i);
            }
            acc[t] += s;
        }
    }
#pragma unroll
    for (int t = 0; t < N; t++) {
        if (t >= n) break;
        float r = cu_warp_sum(acc[t]);
        if (lane == 0) out[t * rows + row] = r;
    }
}

template <dtype T>
static cudaError_t gemv_type(float *out, const float *x, const void *w, int64_t rows, int64_t cols,
                             size_t row_bytes, int n, cudaStream_t s) {
    unsigned grid = (unsigned)((rows + GEMV_WARPS - 1) / GEMV_WARPS);
    const uint8_t *wb = (const uint8_t *)w;
    bool xa = ((uintptr_t)x & 15) == 0;
    if (T == DTYPE_Q8_0 || T == DTYPE_Q4_0 || T == DTYPE_Q4_1) {
        int vec = xa && cols % 4 == 0;
        if (n == 1)
            k_gemv_quant<T, 1>
                <<<grid, 32 * GEMV_WARPS, 0, s>>>(out, x, wb, rows, cols, row_bytes, n, vec);
        else if (n == 2)
            k_gemv_quant<T, 2>
                <<<grid, 32 * GEMV_WARPS, 0, s>>>(out, x, wb, rows, cols, row_bytes, n, vec);
        else if (n <= 4)
            k_gemv_quant<T, 4>
                <<<grid, 32 * GEMV_WARPS, 0, s>>>(out, x, wb, rows, cols, row_bytes, n, vec);
        else
            k_gemv_quant<T, 8>
                <<<grid, 32 * GEMV_WARPS, 0, s>>>(out, x, wb, rows, cols, row_bytes, n, vec);
    } else {
        int vec = xa && cols % 8 == 0 && ((uintptr_t)w & 15) == 0 && row_bytes % 16 == 0;
        if (n == 1)
            k_gemv_dense<T, 1>
                <<<grid, 32 * GEMV_WARPS, 0, s>>>(out, x, wb, rows, cols, row_bytes, n, vec);
        else if (n == 2)
            k_gemv_dense<T, 2>
                <<<grid, 32 * GEMV_WARPS, 0, s>>>(out, x, wb, rows, cols, row_bytes, n, vec);
        else if (n <= 4)
            k_gemv_dense<T, 4>
                <<<grid, 32 * GEMV_WARPS, 0, s>>>(out, x, wb, rows, cols, row_bytes, n, vec);
        else
            k_gemv_dense<T, 8>
                <<<grid, 32 * GEMV_WARPS, 0, s>>>(out, x, wb, rows, cols, row_bytes, n, vec);
    }
    return cudaGetLastError();
}

cudaError_t cuda_gemv(float *out, const float *x, const void *w, dtype type, int64_t rows,
                      int64_t cols, size_t row_bytes, int n, cudaStream_t s) {
    if (n <= 0 || rows <= 0) return cudaSuccess;
    if (n > CUDA_GEMV_MAX_TOKENS) return cudaErrorInvalidValue;
    switch (type) {
        case DTYPE_F32:
            return gemv_type<DTYPE_F32>(out, x, w, rows, cols, row_bytes, n, s);
        case DTYPE_F16:
            return gemv_type<DTYPE_F16>(out, x, w, rows, cols, row_bytes, n, s);
        case DTYPE_BF16:
            return gemv_type<DTYPE_BF16>(out, x, w, rows, cols, row_bytes, n, s);
        case DTYPE_Q8_0:
            return gemv_type<DTYPE_Q8_0>(out, x, w, rows, cols, row_bytes, n, s);
        case DTYPE_Q4_0:
            return gemv_type<DTYPE_Q4_0>(out, x, w, rows, cols, row_bytes, n, s);
        case DTYPE_Q4_1:
            return gemv_type<DTYPE_Q4_1>(out, x, w, rows, cols, row_bytes, n, s);
        default:
            return cudaErrorInvalidValue;
    }
}

/* ---- tiled GEMM for quantized weights: a block computes 64 rows x 64 tokens, 256
 * threads of 4 x 4 outputs; per step one 32-value block of each of the 64 rows is
 * dequantized into shared memory beside the 64 tokens' 32 activations. ---- */

#define QG_TM 64
#define QG_TN 64

template <dtype T>
__global__ void __launch_bounds__(256)
    k_gemm_quant(float *__restrict__ out, const float *__restrict__ x,
                 const uint8_t *__restrict__ w, int64_t rows, int64_t cols, size_t row_bytes,
                 int n) {
    __shared__ float ws[QG_TM][QK + 1], xs[QG_TN][QK + 1];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int64_t row0 = (int64_t)blockIdx.x * QG_TM;
    const int tok0 = blockIdx.y * QG_TN;
    const int lr = tid >> 2, part = tid & 3; /* loader: row / token lr, values part*8.. */
    const int bb = cu_qblock_bytes(T);
    float acc[4][4] = {};
    for (int64_t b = 0; b < cols / QK; b++) {
        {
            int64_t r = row0 + lr;
            float v[8];
            if (r < rows) {
                const uint8_t *blk = w + r * row_bytes + b * bb;
                float d = cu_f16(cu_u16(blk));
                if (T == DTYPE_Q8_0) {
#pragma unroll
                    for (int i = 0; i < 8; i++) v[i] = d * (float)(int8_t)blk[2 + part * 8 + i];
                } else {
                    float m = T == DTYPE_Q4_1 ? cu_f16(cu_u16(blk + 2)) : -8.0f * d;
                    const uint8_t *qs = blk + (T == DTYPE_Q4_1 ? 4 : 2) + (part & 1) * 8;
                    int shift = (part >> 1) * 4;
#pragma unroll
                    for (int i = 0; i < 8; i++) v[i] = d * (float)((qs[i] >> shift) & 15) + m;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) v[i] = 0;
            }
#pragma unroll
            for (int i = 0; i < 8; i++) ws[lr][part * 8 + i] = v[i];
            int t = tok0 + lr;
            const float *xp = x + (int64_t)t * cols + b * QK + part * 8;
#pragma unroll
            for (int i = 0; i < 8; i++) xs[lr][part * 8 + i] = t < n ? xp[i] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < QK; k++) {
            float a[4], c[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = ws[ty * 4 + i][k], c[i] = xs[tx * 4 + i][k];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * c[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int t = tok0 + tx * 4 + j;
        if (t >= n) continue;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int64_t r = row0 + ty * 4 + i;
            if (r < rows) out[(int64_t)t * rows + r] = acc[i][j];
        }
    }
}

cudaError_t cuda_gemm_quant(float *out, const float *x, const void *w, dtype type, int64_t rows,
                            int64_t cols, size_t row_bytes, int n, cudaStream_t s) {
    if (n <= 0 || rows <= 0) return cudaSuccess;
    if (cols % QK) return cudaErrorInvalidValue;
    dim3 grid((unsigned)((rows + QG_TM - 1) / QG_TM), (unsigned)((n + QG_TN - 1) / QG_TN));
    const uint8_t *wb = (const uint8_t *)w;
    switch (type) {
        case DTYPE_Q8_0:
            k_gemm_quant<DTYPE_Q8_0><<<grid, 256, 0, s>>>(out, x, wb, rows, cols, row_bytes, n);
            break;
        case DTYPE_Q4_0:
            k_gemm_quant<DTYPE_Q4_0><<<grid, 256, 0, s>>>(out, x, wb, rows, cols, row_bytes, n);
            break;
        case DTYPE_Q4_1:
            k_gemm_quant<DTYPE_Q4_1><<<grid, 256, 0, s>>>(out, x, wb, rows, cols, row_bytes, n);
            break;
        default:
            return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}
