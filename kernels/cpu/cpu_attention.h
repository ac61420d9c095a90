/* cpu_attention.h - paged KV write and flash attention on the CPU (private to the backend). */
#ifndef CINDER_CPU_ATTENTION_H
#define CINDER_CPU_ATTENTION_H

#include "cpu_pool.h"
#include "ops.h"

/* Per-thread scratch the attention needs; grown by cpu_attention_reserve before a run. */
typedef struct cpu_attn_scratch {
    float *buf;            /* [n_threads, per_thread] */
    size_t per_thread;     /* floats */
    int32_t *tile_start;   /* [n_seqs + 1] first work item of each sequence */
    int tile_cap;          /* entries of tile_start */
} cpu_attn_scratch;

void cpu_attn_scratch_free(cpu_attn_scratch *s);

/* Pools of type F32, F16 or BF16 (16-bit: rounded to nearest even, a NaN stays a NaN); avx2:
 * F16 through F16C (the same bits). */
void cpu_kv_write(cpu_pool *pool, const kernel_kv_layer *kv, const float *k, const float *v,
                  const int32_t *slots, int n, bool avx2);

/* K and V read in the pool's type (F32, F16, BF16) and widened to F32; avx2: the AVX2 kernel
 * where the head dim has one (64, 128), else portable C. */
void cpu_attention(cpu_pool *pool, cpu_attn_scratch *scratch, float *out, const float *q,
                   const kernel_kv_layer *kv, const kernel_attn_seq *seqs, int n_seqs,
                   int n_heads, float scale, int window, bool avx2);

#endif
