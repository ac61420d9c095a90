/* cuda_elementwise.cu - embedding gather, RMSNorm, RoPE, SwiGLU, residual add, softmax,
 * argmax, KV write, activation splitting. */
#include <math.h>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

static inline unsigned cu_blocks(int64_t count, int threads) {
    int64_t b = (count + threads - 1) / threads;
    return (unsigned)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

/* ---- embed: one block per token ---- */

__global__ void k_embed(float *out, const uint8_t *table, dtype type, int64_t cols,
                        size_t row_bytes, const int32_t *ids) {
    int i = blockIdx.x;
    const uint8_t *row = table + (size_t)ids[i] * row_bytes;
    float *o = out + (int64_t)i * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = cu_load(type, row, c);
}

cudaError_t cuda_embed(float *out, const void *table, dtype type, int64_t cols, size_t row_bytes,
                       const int32_t *ids, int n, cudaStream_t s) {
    if (n <= 0) return cudaSuccess;
    k_embed<<<n, 256, 0, s>>>(out, (const uint8_t *)table, type, cols, row_bytes, ids);
    return cudaGetLastError();
}

/* ---- rmsnorm: one block per row; out may alias x ---- */

__global__ void k_rmsnorm(float *out, const float *x, const float *w, int d, float eps) {
    __shared__ float red[32];
    const float *xr = x + (int64_t)blockIdx.x * d;
    float *o = out + (int64_t)blockIdx.x * d;
    float ss = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
    ss = cu_block_sum(ss, red);
    float scale = rsqrtf(ss / d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = xr[i] * scale * w[i];
}

cudaError_t cuda_rmsnorm(float *out, const float *x, const float *w, int n, int d, float eps,
                         cudaStream_t s) {
    if (n <= 0) return cudaSuccess;
    k_rmsnorm<<<n, d >= 1024 ? 512 : 256, 0, s>>>(out, x, w, d, eps);
    return cudaGetLastError();
}

/* ---- rope: a thread per (token, head, pair); angles in double like the CPU ---- */

__global__ void k_rope(float *x, const int32_t *pos, int n, int n_heads, int head_dim, int halfdim,
                       int interleaved, const float *inv_freq) {
    int64_t total = (int64_t)n * n_heads * halfdim;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % halfdim);
        int64_t th = idx / halfdim; /* token * n_heads + head */
        int64_t t = th / n_heads;
        double sn, cs;
        sincos((double)pos[t] * (double)inv_freq[i], &sn, &cs);
        float c = (float)cs, sf = (float)sn;
        float *v = x + th * head_dim;
        int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + halfdim;
        float a = v[ia], b = v[ib];
        v[ia] = a * c - b * sf;
        v[ib] = a * sf + b * c;
    }
}

cudaError_t cuda_rope(float *x, const int32_t *pos, int n, int n_heads, int head_dim, int rope_dim,
                      rope_layout layout, const float *inv_freq, cudaStream_t s) {
    int64_t total = (int64_t)n * n_heads * (rope_dim / 2);
    if (total <= 0) return cudaSuccess;
    k_rope<<<cu_blocks(total, 256), 256, 0, s>>>(x, pos, n, n_heads, head_dim, rope_dim / 2,
                                                 layout == ROPE_LAYOUT_INTERLEAVED, inv_freq);
    return cudaGetLastError();
}

/* ---- swiglu, add ---- */

__global__ void k_swiglu(float *out, const float *gate, const float *up, int64_t count) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count;
         i += (int64_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

cudaError_t cuda_swiglu(float *out, const float *gate, const float *up, int64_t count,
                        cudaStream_t s) {
    if (count <= 0) return cudaSuccess;
    k_swiglu<<<cu_blocks(count, 256), 256, 0, s>>>(out, gate, up, count);
    return cudaGetLastError();
}

__global__ void k_add(float *out, const float *a, const float *b, int64_t count) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

cudaError_t cuda_add(float *out, const float *a, const float *b, int64_t count, cudaStream_t s) {
    if (count <= 0) return cudaSuccess;
    k_add<<<cu_blocks(count, 256), 256, 0, s>>>(out, a, b, count);
    return cudaGetLastError();
}

__global__ void k_add_halves(float *out, const float *a, int64_t hn) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < hn;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = a[i] + a[hn + i];
}

cudaError_t cuda_add_halves(float *out, const float *a, int n, int64_t m, cudaStream_t s) {
    int64_t hn = (int64_t)n * m;
    if (hn <= 0) return cudaSuccess;
    k_add_halves<<<cu_blocks(hn, 256), 256, 0, s>>>(out, a, hn);
    return cudaGetLastError();
}

/* ---- softmax, argmax: one block per row ---- */

__global__ void k_softmax(float *x, int d) {
    __shared__ float red[32];
    float *v = x + (int64_t)blockIdx.x * d;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < d; i += blockDim.x) m = fmaxf(m, v[i]);
    m = cu_block_max(m, red);
    float sum = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float e = expf(v[i] - m);
        v[i] = e;
        sum += e;
    }
    sum = cu_block_sum(sum, red);
    float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < d; i += blockDim.x) v[i] *= inv;
}

cudaError_t cuda_softmax(float *x, int n, int d, cudaStream_t s) {
    if (n <= 0) return cudaSuccess;
    k_softmax<<<n, 256, 0, s>>>(x, d);
    return cudaGetLastError();
}

/* (value, index) order of argmax: larger value first, NaN never wins, lower index on ties. */
__device__ __forceinline__ bool cu_better(float va, int ia, float vb, int ib) {
    if (isnan(vb)) return !isnan(va) || ia < ib;
    if (isnan(va)) return false;
    return va > vb || (va == vb && ia < ib);
}

__global__ void k_argmax(int32_t *out, const float *x, int d) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *v = x + (int64_t)blockIdx.x * d;
    float bv = NAN;
    int bi = INT_MAX;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        if (cu_better(v[i], i, bv, bi)) bv = v[i], bi = i;
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (cu_better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sv[warp] = bv, si[warp] = bi;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        bv = lane < nw ? sv[lane] : NAN;
        bi = lane < nw ? si[lane] : INT_MAX;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (cu_better(ov, oi, bv, bi)) bv = ov, bi = oi;
        }
        /* every value NaN: index 0, as the CPU op answers */
        if (lane == 0) out[blockIdx.x] = bi == INT_MAX ? 0 : bi;
    }
}

cudaError_t cuda_argmax(int32_t *out, const float *x, int n, int d, cudaStream_t s) {
    if (n <= 0) return cudaSuccess;
    k_argmax<<<n, 256, 0, s>>>(out, x, d);
    return cudaGetLastError();
}

/* ---- kv_write: a block per (token, KV head) ---- */

__global__ void k_kv_write(void *kpool, void *vpool, int bf16, int block_size, int n_kv_heads,
                           int head_dim, const float *k, const float *v, const int32_t *slots) {
    int t = blockIdx.x, h = blockIdx.y;
    int32_t slot = slots[t], block = slot / block_size, off = slot % block_size;
    size_t dst = (((size_t)block * n_kv_heads + h) * block_size + off) * head_dim;
    size_t src = ((size_t)t * n_kv_heads + h) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        if (bf16) {
            ((__nv_bfloat16 *)kpool)[dst + i] = __float2bfloat16_rn(k[src + i]);
            ((__nv_bfloat16 *)vpool)[dst + i] = __float2bfloat16_rn(v[src + i]);
        } else {
            ((float *)kpool)[dst + i] = k[src + i];
            ((float *)vpool)[dst + i] = v[src + i];
        }
    }
}

cudaError_t cuda_kv_write(void *kpool, void *vpool, dtype kv_type, int32_t n_blocks, int block_size,
                          int n_kv_heads, int head_dim, const float *k, const float *v,
                          const int32_t *slots, int n, cudaStream_t s) {
    if (n <= 0) return cudaSuccess;
    dim3 grid((unsigned)n, (unsigned)n_kv_heads);
    k_kv_write<<<grid, head_dim >= 128 ? 128 : 64, 0, s>>>(
        kpool, vpool, kv_type == DTYPE_BF16, block_size, n_kv_heads, head_dim, k, v, slots);
    return cudaGetLastError();
}

/* ---- activations for cuBLAS: hi = round(x), lo = round(x - hi) in F16 or BF16 ---- */

__global__ void k_split_act(uint16_t *out, const float *x, int64_t count, int bf16, int with_lo) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = x[i], hi;
        uint16_t h, l;
        if (bf16) {
            __nv_bfloat16 b = __float2bfloat16_rn(v);
            hi = __bfloat162float(b);
            h = __bfloat16_as_ushort(b);
            l = __bfloat16_as_ushort(__float2bfloat16_rn(v - hi));
        } else {
            __half b = __float2half_rn(v);
            hi = __half2float(b);
            h = __half_as_ushort(b);
            l = __half_as_ushort(__float2half_rn(v - hi));
        }
        out[i] = h;
        if (with_lo) out[count + i] = l;
    }
}

cudaError_t cuda_split_act(void *out, const float *x, int64_t count, dtype type, bool with_lo,
                           cudaStream_t s) {
    if (count <= 0) return cudaSuccess;
    k_split_act<<<cu_blocks(count, 256), 256, 0, s>>>((uint16_t *)out, x, count, type == DTYPE_BF16,
                                                      with_lo);
    return cudaGetLastError();
}
