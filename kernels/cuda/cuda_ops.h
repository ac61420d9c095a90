/* cuda_ops.h - the CUDA backend of the op interface (ops.h), a plain C header.
 *
 * Every op runs on the backend's one stream and returns without waiting; kernel_download()
 * and kernel_sync() wait. Backend memory is device memory: the engine allocates its scratch
 * and KV pools with kernel_alloc() and hands each weight to kernel_prepare_weight() once,
 * which copies it to the device (owned by the backend until destroy).
 *
 * What runs where:
 *   matmul  F32: cuBLAS (FP32, no TF32). F16/BF16: up to 8 tokens a GEMV kernel with F32
 *           activations; more tokens cuBLAS with FP32 accumulation, the activations given as
 *           a hi + lo pair of the weight's type (ACCURATE, ~F32 products: one GEMM of 2n
 *           rows) or rounded once to it (FAST). Q8_0/Q4_0/Q4_1: GEMV (<= 8 tokens) and a
 *           tiled GEMM, both dequantizing the blocks in registers / shared memory, FP32
 *           activations and accumulation.
 *   attention  sequences with one query: paged decode attention (a KV head's query heads
 *           share each K/V load, the context split in chunks with a combine step:
 *           flash-decoding); the others: flash attention over the paged K/V (tiles of keys,
 *           online softmax in FP32, causal, GQA). KV pools F32 or BF16; on BF16 pools of head
 *           dim 64 or 128 the prefill runs on tensor cores (Q and P rounded to BF16, FP32
 *           accumulation), elsewhere in FP32 SIMT.
 * A CUDA failure inside an op aborts with the call, file and line (the op interface has no
 * runtime status; a device fault leaves nothing to recover). */
#ifndef CINDER_CUDA_OPS_H
#define CINDER_CUDA_OPS_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How F16/BF16 weights meet F32 activations in cuBLAS GEMMs (more than 8 tokens). */
typedef enum kernel_cuda_gemm {
    KERNEL_CUDA_GEMM_DEFAULT = 0, /* CINDER_CUDA_GEMM=accurate|fast, else ACCURATE */
    KERNEL_CUDA_GEMM_ACCURATE,    /* x = hi + lo, both in the weight's type: ~F32 accuracy */
    KERNEL_CUDA_GEMM_FAST,        /* x rounded to the weight's type (~3 significant digits) */
} kernel_cuda_gemm;

typedef struct kernel_cuda_options {
    int device; /* CUDA device ordinal */
    kernel_cuda_gemm gemm;
    bool simt_prefill; /* flash prefill on BF16 pools with the FP32 SIMT kernel rather than
                          tensor cores (also CINDER_CUDA_PREFILL=simt) */
} kernel_cuda_options;

kernel_cuda_options kernel_cuda_options_default(void);
/* The CUDA backend on one device: a stream, a cuBLAS handle, workspaces. Returns NULL and
 * fills err when there is no such device (CINDER_ERR_UNSUPPORTED) or setup fails. */
kernel_ops *kernel_cuda_create(const kernel_cuda_options *opts, cinder_error *err);
/* Number of CUDA devices (0 when there is no driver or no device). */
int kernel_cuda_device_count(void);

#ifdef __cplusplus
}
#endif

#endif
