/* engine.h - the forward pass of a Llama-family model over a flattened variable-length batch
 * and a paged KV cache. The same code runs in `cinder generate` and in every worker rank.
 *
 * One step takes the new tokens of several sequences, concatenated (no padding). Each
 * sequence brings its position (how many of its tokens are already in the KV cache) and its
 * block table covering every position up to the end of this step's tokens. The step writes
 * the new tokens' K and V into their blocks and returns logits for the last new token of each
 * sequence, or for every new token where asked (speculative decoding, scoring).
 *
 *   engine *e = engine_create(m, &opts, &err);
 *   engine_seq s = {.tokens = prompt, .n_tokens = n, .pos = 0, .block_table = blocks, ...};
 *   engine_step(e, &s, 1, logits, &err);        // logits [1, vocab]
 *
 * Plan and run are apart: the engine decides nothing (which tokens, which blocks); it checks
 * the plan it is given and runs it. */
#ifndef CINDER_ENGINE_H
#define CINDER_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "kv_cache.h"
#include "model.h"
#include "ops.h"
#include "status.h"

/* Which kernel backend runs the forward pass. */
typedef enum engine_backend {
    ENGINE_BACKEND_CPU = 0,
    ENGINE_BACKEND_CUDA, /* needs a build with CINDER_CUDA (else CINDER_ERR_UNSUPPORTED) */
} engine_backend;

/* "cpu", "cuda"; engine_backend_parse returns false on another name. */
const char *engine_backend_name(engine_backend b);
bool engine_backend_parse(const char *s, engine_backend *out);

typedef struct engine_options {
    engine_backend backend; /* default CPU */
    int device;             /* CUDA device ordinal */
    dtype kv_type;          /* KV pools: F32 (default, every backend), F16 (CPU) or BF16
                               (CPU, CUDA); see kernel_supports_kv */
    double kv_fraction;     /* > 0 and kv_blocks 0: the KV pool takes this fraction of the
                               backend's free memory after weights and scratch (CUDA) */
    int n_threads;        /* 0: one per online CPU */
    int block_size;       /* tokens per KV block (default 16) */
    int32_t kv_blocks;    /* KV pool size in blocks; 0: from kv_bytes */
    size_t kv_bytes;      /* KV pool size in bytes when kv_blocks is 0 (default 256 MiB) */
    int max_batch_tokens; /* most tokens in one step (default 2048) */
    int max_seqs;         /* most sequences in one step (default 256) */
    bool f32_weights;     /* dequantize every weight to F32 at load (reference precision) */
    kernel_simd simd;     /* CPU SIMD level (default: the best, or CINDER_SIMD) */
    kernel_act_precision act; /* activations for quantized weights: 16-bit (default) or 8-bit
                                 integers (or CINDER_ACT=accurate|int8); on CUDA, INT8 picks
                                 the fast (rounded) activations of F16/BF16 GEMMs */
    bool no_graphs;           /* CUDA: run decode steps op by op, not as CUDA graphs
                                 (graphs are captured per batch size; CINDER_GRAPHS=0 too) */
} engine_options;

engine_options engine_options_default(void);

typedef struct engine_seq {
    const int32_t *tokens;      /* [n_tokens] the new tokens of this step */
    int32_t n_tokens;           /* >= 1 */
    int32_t pos;                /* position of tokens[0] (tokens already cached) */
    const int32_t *block_table; /* [n_blocks] covers positions [0, pos + n_tokens) */
    int32_t n_blocks;
    bool all_logits; /* logits of every new token, not only the last */
} engine_seq;

typedef struct engine engine;

/* Builds the engine for a model: the backend, weight views (or F32 copies; on CUDA copied to
 * the device), scratch for max_batch_tokens, the KV cache (in the backend's memory). Refuses by name what the forward pass cannot run yet
 * (sliding window, experts, biases, a weight type the kernels lack). */
engine *engine_create(const model *m, const engine_options *opts, cinder_error *err);
/* The refusals of engine_create alone: CINDER_ERR_UNSUPPORTED naming what the forward pass
 * cannot run yet (checked before any memory is spent). */
cinder_status engine_model_supported(const model *m, cinder_error *err);
void engine_free(engine *e);

const model_config *engine_config(const engine *e);
kv_cache *engine_kv(engine *e);
/* The backend the engine runs on (its name says which). */
kernel_ops *engine_backend_ops(engine *e);
/* Rows of logits a step returns: the sum over sequences of (all_logits ? n_tokens : 1). */
int engine_logit_rows(const engine_seq *seqs, int n_seqs);

/* Runs one step. logits [engine_logit_rows(seqs), vocab], in sequence order, host memory
 * (on CUDA only the logits come back to the host). A plan that
 * does not fit (token out of the vocabulary, position past the context, block table too
 * short or naming a block outside the pool, batch over max_batch_tokens) is refused with
 * CINDER_ERR_ARG naming the sequence and the field, before anything is computed. */
cinder_status engine_step(engine *e, const engine_seq *seqs, int n_seqs, float *logits,
                          cinder_error *err);
/* The same step, returning only each logits row's argmax (the first largest; NaN never wins):
 * ids [engine_logit_rows(seqs)]. Greedy sampling where the logits are: on CUDA the rows'
 * argmax comes back instead of the rows (4 bytes a row, not 4 x vocab). logits: scratch the
 * size engine_step's would be where the backend's memory is the host's (the CPU); elsewhere
 * unused and may be NULL. */
cinder_status engine_step_argmax(engine *e, const engine_seq *seqs, int n_seqs, float *logits,
                                 int32_t *ids, cinder_error *err);

#endif
