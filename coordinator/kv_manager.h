/* kv_manager.h - the coordinator's KV block manager with prefix caching (design.md §1, §3).
 *
 * One manager per worker group owns that group's pool of n_blocks KV blocks of block_size tokens
 * each. Workers hold the KV data; the manager decides which block holds which tokens and sends
 * block tables (and copy orders) with each step. Pure bookkeeping: no network, no KV data.
 *
 * Every block is in exactly one state:
 *   free        on the free list, content meaningless;
 *   referenced  in the block table of at least one sequence (refcount = number of tables);
 *   cached      refcount 0 but registered in the prefix cache: its KV is still valid and a new
 *               sequence whose prompt starts with the same tokens reuses it. Evictable, LRU.
 * A FULL block is registered in the prefix cache once its KV has been computed
 * (kvm_seq_set_computed); it is keyed by a hash chain h_i = H(h_{i-1}, tokens of block i), and a
 * hit also compares the stored tokens and the identity of the parent block, so a hash collision
 * never shares wrong KV. A partial block is never cached. Forked sequences share their partial
 * last block until one of them appends to it: copy-on-write gives the appender a new block and
 * queues a copy order (src, dst) for the workers (kvm_copies_pending / kvm_copies_clear).
 *
 * Allocation takes free blocks first, then evicts the least recently used cached block. A call
 * that cannot get all the blocks it needs fails with CINDER_ERR_NOMEM and changes nothing (the
 * scheduler then preempts). New sequences may not dig into a watermark reserve kept for the
 * decodes of running sequences; appends may. */
#ifndef CINDER_KV_MANAGER_H
#define CINDER_KV_MANAGER_H

#include <stdbool.h>
#include <stdint.h>

#include "status.h"

typedef struct kvm kvm;
typedef struct kvm_seq kvm_seq;

/* Hash of one full block given its parent's hash (a constant for the first block). */
typedef uint64_t (*kvm_hash_fn)(uint64_t parent_hash, const int32_t *tokens, int n_tokens);

/* Copy the KV of block src into block dst (on every rank of the group) before the step runs. */
typedef struct kvm_copy {
    int32_t src, dst;
} kvm_copy;

typedef struct kvm_stats {
    int n_blocks, block_size;
    int used;                          /* referenced by at least one sequence */
    int free;                          /* on the free list */
    int cached;                        /* cached and unreferenced (evictable) */
    int registered;                    /* in the prefix-cache index, referenced or not */
    int n_seqs;                        /* live sequences */
    int watermark;                     /* blocks kept back from new sequences */
    uint64_t query_blocks, hit_blocks; /* prefix-cache lookups of full prompt blocks, and hits */
    uint64_t query_tokens, hit_tokens; /* prompt tokens looked up, and tokens served from cache */
    uint64_t evictions;                /* cached blocks evicted for reuse */
    uint64_t cow_copies;               /* copy-on-write copy orders issued */
} kvm_stats;

/* A pool of n_blocks blocks of block_size tokens; watermark defaults to 1% of n_blocks.
 * NULL (and err filled) on bad sizes or out of memory. */
kvm *kvm_create(int n_blocks, int block_size, cinder_error *err);
/* Frees the manager and every sequence still alive in it. Accepts NULL. */
void kvm_free(kvm *m);

/* Blocks that new sequences (kvm_seq_alloc) leave for running decodes; 0 <= n <= n_blocks. */
void kvm_set_watermark(kvm *m, int n_blocks);
/* Test hook: replaces the block hash (e.g. by a constant to force collisions). Only allowed
 * while nothing is registered in the prefix cache. NULL restores kvm_hash_default. */
void kvm_set_hash_fn(kvm *m, kvm_hash_fn fn);
uint64_t kvm_hash_default(uint64_t parent_hash, const int32_t *tokens, int n_tokens);

/* Blocks a sequence of n_tokens tokens occupies: ceil(n_tokens / block_size). */
int kvm_blocks_for_tokens(const kvm *m, int n_tokens);
/* Free plus evictable blocks. */
int kvm_num_available(const kvm *m);
/* Whether n_blocks more blocks can go to a new sequence while keeping the watermark reserve. */
bool kvm_can_allocate(const kvm *m, int n_blocks);
/* Prompt tokens that kvm_seq_alloc would find cached now (multiple of block_size, always
 * < n_prompt). Changes nothing, counts nothing: for placing a request on a group. */
int kvm_prefix_match(const kvm *m, const int32_t *prompt, int n_prompt);

/* A new sequence for prompt[0..n_prompt): reuses the cached full blocks of the longest cached
 * prefix and reserves fresh blocks for the rest. *n_cached (may be NULL) gets the number of
 * leading prompt tokens whose KV is already there (a multiple of block_size, < n_prompt: the
 * last prompt token is always computed); the caller prefills only the rest. CINDER_ERR_NOMEM
 * when the blocks (beyond the watermark) are not there; nothing changes then. */
cinder_status kvm_seq_alloc(kvm *m, int64_t seq_id, const int32_t *prompt, int n_prompt,
                            kvm_seq **out, int *n_cached, cinder_error *err);
/* Appends n tokens (a sampled token, or more), taking new blocks as blocks fill and copying a
 * shared partial last block first (copy-on-write). CINDER_ERR_NOMEM, changing nothing, when the
 * blocks are not there (the watermark does not apply). */
cinder_status kvm_seq_append(kvm *m, kvm_seq *s, const int32_t *tokens, int n, cinder_error *err);
/* The KV of the first n_computed tokens now exists on the workers: full blocks among them are
 * registered in the prefix cache. n_computed never goes down and never exceeds the tokens. */
void kvm_seq_set_computed(kvm *m, kvm_seq *s, int n_computed);
/* A new sequence sharing all of s's blocks (for n > 1 / beams); no block is taken. */
cinder_status kvm_seq_fork(kvm *m, kvm_seq *s, int64_t seq_id, kvm_seq **out, cinder_error *err);
/* Releases the sequence's blocks (cached ones stay cached, LRU) and the handle. Accepts NULL. */
void kvm_seq_free(kvm *m, kvm_seq *s);

int64_t kvm_seq_id(const kvm_seq *s);
int kvm_seq_n_tokens(const kvm_seq *s);
int kvm_seq_n_computed(const kvm_seq *s);
/* The block table: *n_blocks block ids, valid until the next call that changes s. */
const int32_t *kvm_seq_block_table(const kvm_seq *s, int *n_blocks);

/* Copy orders issued since the last kvm_copies_clear, in order; valid until the next call. */
const kvm_copy *kvm_copies_pending(const kvm *m, int *n_copies);
void kvm_copies_clear(kvm *m);

void kvm_get_stats(const kvm *m, kvm_stats *out);
/* For tests and status: a block's refcount, and whether it is in the prefix-cache index. */
int kvm_block_refcount(const kvm *m, int block);
bool kvm_block_is_registered(const kvm *m, int block);

/* Checks every invariant (block states, lists, refcounts against all block tables, the hash
 * index); CINDER_OK, or CINDER_ERR_FORMAT with the first violation in err. */
cinder_status kvm_check(const kvm *m, cinder_error *err);

#endif
