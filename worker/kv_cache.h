/* kv_cache.h - the paged KV cache of one worker: per layer, a pool of fixed-size blocks.
 *
 * Block b of layer l holds block_size consecutive positions of one sequence for every KV head:
 *   K: [n_blocks, n_kv_heads, block_size, head_dim] F32 (V the same; F16 or BF16 where the
 *      backend takes it, see kv_cache_create_on)
 * so the keys one head reads in a block are contiguous. A sequence's block table maps its
 * position p to block table[p / block_size], slot p % block_size; blocks of one sequence may
 * lie anywhere in the pool. There is no contiguous per-sequence buffer anywhere.
 *
 * The cache also keeps the free list. In a cluster the coordinator decides which block holds
 * what and the worker only follows its tables; `cinder generate` allocates here directly. */
#ifndef CINDER_KV_CACHE_H
#define CINDER_KV_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops.h"
#include "status.h"

typedef struct kv_cache {
    int n_layers, n_kv_heads, head_dim, block_size;
    int32_t n_blocks;
    dtype type;              /* of the pools: F32, or F16 / BF16 on backends that take them */
    kernel_ops *backend;     /* whose memory the pools are in (NULL: host, calloc) */
    kernel_kv_layer *layers; /* [n_layers] views into the pools, for the attention op */
    float *k, *v; /* [n_layers, n_blocks, n_kv_heads, block_size, head_dim] of type (backend
                     memory) */
    int32_t *free_list;      /* [n_blocks] stack of free block ids */
    int32_t n_free;
    uint8_t *is_free; /* [n_blocks] 1 when on the free list (catches double frees) */
} kv_cache;

/* Bytes one block takes over all layers (K and V) in F32. */
size_t kv_cache_block_bytes(int n_layers, int n_kv_heads, int head_dim, int block_size);
/* The same for pools of another type (F32, F16 or BF16). */
size_t kv_cache_block_bytes_type(int n_layers, int n_kv_heads, int head_dim, int block_size,
                                 dtype type);

/* A KV type's command-line name ("f32", "f16", "bf16") as a dtype; false for another name
 * (*out unchanged). KV_CACHE_TYPE_NAMES lists them for messages and --help. */
#define KV_CACHE_TYPE_NAMES "f32, f16 or bf16"
bool kv_cache_type_parse(const char *name, dtype *out);

/* Allocates n_blocks F32 blocks per layer in host memory. Returns NULL and fills err when the
 * sizes are not positive or memory runs out. */
kv_cache *kv_cache_create(int n_layers, int n_kv_heads, int head_dim, int block_size,
                          int32_t n_blocks, cinder_error *err);
/* The same in a backend's memory (NULL: host) with pools of type (F32, or F16 / BF16 where
 * kernel_supports_kv says so; CINDER_ERR_UNSUPPORTED otherwise). Pools come zeroed
 * (kernel_alloc's memory is). */
kv_cache *kv_cache_create_on(kernel_ops *backend, int n_layers, int n_kv_heads, int head_dim,
                             int block_size, int32_t n_blocks, dtype type, cinder_error *err);
void kv_cache_free(kv_cache *c);

/* Takes n free blocks into out; CINDER_ERR_NOMEM (nothing taken) when fewer are free. */
cinder_status kv_cache_alloc(kv_cache *c, int32_t n, int32_t *out, cinder_error *err);
/* Returns blocks to the free list. A block id out of range or already free is a bug. */
void kv_cache_release(kv_cache *c, const int32_t *blocks, int32_t n);

/* Copies the K and V of block src into block dst, every layer (copy-on-write of a shared
 * block, ordered by the coordinator). Ids out of range are a bug. */
void kv_cache_copy_block(kv_cache *c, int32_t src, int32_t dst);

/* A sequence's block table when this process allocates (`cinder generate`, tests). */
typedef struct kv_seq {
    int32_t *blocks; /* [n_blocks] */
    int32_t n_blocks, cap;
} kv_seq;

/* Grows s's table to cover positions [0, n_positions); CINDER_ERR_NOMEM when the pool is
 * short (s unchanged). */
cinder_status kv_seq_reserve(kv_cache *c, kv_seq *s, int32_t n_positions, cinder_error *err);
/* Gives every block back and empties s (its table memory is kept for reuse; kv_seq_free
 * frees it). */
void kv_seq_release(kv_cache *c, kv_seq *s);
void kv_seq_free(kv_cache *c, kv_seq *s);

#endif
