/* cuda_kernels.h - the host launchers of the CUDA kernels (private to kernels/cuda).
 *
 * flashinfer style: each launcher enqueues its kernel(s) and returns the launch's
 * cudaError_t; the stream comes last; no launcher allocates (workspaces come from the
 * caller). Pointers are device memory; shapes as in ops.h. */
#ifndef CINDER_CUDA_KERNELS_H
#define CINDER_CUDA_KERNELS_H

#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda_check.h"
extern "C" {
#include "dtype.h"
#include "model.h"
}

/* ---- element-wise (cuda_elementwise.cu) ---- */
cudaError_t cuda_embed(float *out, const void *table, dtype type, int64_t cols, size_t row_bytes,
                       const int32_t *ids, int n, cudaStream_t s);
cudaError_t cuda_rmsnorm(float *out, const float *x, const float *w, int n, int d, float eps,
                         cudaStream_t s);
cudaError_t cuda_rope(float *x, const int32_t *pos, int n, int n_heads, int head_dim, int rope_dim,
                      rope_layout layout, const float *inv_freq, cudaStream_t s);
cudaError_t cuda_swiglu(float *out, const float *gate, const float *up, int64_t count,
                        cudaStream_t s);
cudaError_t cuda_add(float *out, const float *a, const float *b, int64_t count, cudaStream_t s);
cudaError_t cuda_softmax(float *x, int n, int d, cudaStream_t s);
cudaError_t cuda_argmax(int32_t *out, const float *x, int n, int d, cudaStream_t s);
/* k, v [n, n_kv_heads, head_dim] F32 into pools of kv_type (F32 or BF16). */
cudaError_t cuda_kv_write(void *kpool, void *vpool, dtype kv_type, int32_t n_blocks, int block_size,
                          int n_kv_heads, int head_dim, const float *k, const float *v,
                          const int32_t *slots, int n, cudaStream_t s);
/* out[i] = hi(x[i]) and out[count + i] = lo(x[i]) = x - hi in the type (F16 or BF16);
 * with_lo false: only hi. */
cudaError_t cuda_split_act(void *out, const float *x, int64_t count, dtype type, bool with_lo,
                           cudaStream_t s);
/* out[i, :] = a[i, :] + a[n + i, :] over [n, m] (the hi/lo halves of a split GEMM). */
cudaError_t cuda_add_halves(float *out, const float *a, int n, int64_t m, cudaStream_t s);

/* ---- matmul kernels (cuda_gemm.cu) ---- */
#define CUDA_GEMV_MAX_TOKENS 8
/* out [n, rows] = x [n, cols] . W^T for n <= CUDA_GEMV_MAX_TOKENS, W of any dtype. */
cudaError_t cuda_gemv(float *out, const float *x, const void *w, dtype type, int64_t rows,
                      int64_t cols, size_t row_bytes, int n, cudaStream_t s);
/* The same for any n, W quantized (Q8_0, Q4_0, Q4_1), tiled, dequantizing in shared memory. */
cudaError_t cuda_gemm_quant(float *out, const float *x, const void *w, dtype type, int64_t rows,
                            int64_t cols, size_t row_bytes, int n, cudaStream_t s);

/* ---- attention (cuda_attention.cu) ---- */
/* A sequence as the kernels read it: the host plans, one upload per change. */
typedef struct cuda_attn_seq {
    int32_t q_start, n_q, n_ctx;
    int32_t item_start; /* prefill: first work item of this sequence */
    const int32_t *block_table;
} cuda_attn_seq;

typedef struct cuda_kv_view {
    const void *k, *v; /* [n_blocks, n_kv_heads, block_size, head_dim] */
    dtype type;        /* F32 or BF16 */
    int block_size, n_kv_heads, head_dim;
} cuda_kv_view;

/* Rows (query x head pairs) of one flash-prefill work item. */
#define CUDA_ATTN_ROWS 32
/* Query tokens per prefill work item for a GQA group of g heads. */
static inline int cuda_attn_q_tile(int g) {
    return CUDA_ATTN_ROWS / g > 0 ? CUDA_ATTN_ROWS / g : 1;
}
/* Flash attention for seqs [n_seqs] (device), n_items work items (sum over sequences of
 * n_kv_heads * ceil(n_q / q_tile)). out, q [tokens, n_heads, head_dim]. head_dim <= 256,
 * n_heads / n_kv_heads <= CUDA_ATTN_ROWS. */
cudaError_t cuda_attention_prefill(float *out, const float *q, cuda_kv_view kv,
                                   const cuda_attn_seq *seqs, int n_seqs, int n_items, int n_heads,
                                   float scale, int window, cudaStream_t s);
/* The same on tensor cores (BF16 in, FP32 accumulation; Q and P rounded to BF16) for BF16
 * pools of head dim 64 or 128 (cuda_attention_prefill_tc_fits); work items are (sequence,
 * query head, tile of CUDA_ATTN_TC_ROWS queries). */
#define CUDA_ATTN_TC_ROWS 64
bool cuda_attention_prefill_tc_fits(dtype kv_type, int head_dim);
cudaError_t cuda_attention_prefill_tc(float *out, const float *q, cuda_kv_view kv,
                                      const cuda_attn_seq *seqs, int n_seqs, int n_items,
                                      int n_heads, float scale, int window, cudaStream_t s);
/* Splits of a decode attention call: chunks of chunk keys (a multiple of 32) so that the
 * grid fills the device and the partials fit part_floats floats. */
typedef struct cuda_decode_plan {
    int n_splits, chunk;
} cuda_decode_plan;
cuda_decode_plan cuda_decode_plan_make(int n_seqs, int n_kv_heads, int n_heads, int head_dim,
                                       int max_ctx, int n_sms, size_t part_floats);
/* Decode attention: one query per sequence (q row seqs[i].q_start). part: workspace of
 * n_seqs * n_heads * n_splits * (head_dim + 2) floats (unused with one split). */
cudaError_t cuda_attention_decode(float *out, const float *q, cuda_kv_view kv,
                                  const cuda_attn_seq *seqs, int n_seqs, int n_heads, float scale,
                                  int window, cuda_decode_plan plan, float *part, cudaStream_t s);

#endif
