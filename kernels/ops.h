/* ops.h - the kernel op interface the executor calls for every op, whatever runs it.
 *
 * A backend is a struct of function pointers plus a context (like a ggml backend): the CPU one
 * comes from kernel_cpu_create() (kernels/cpu/), the CUDA one from kernel_cuda_create()
 * (kernels/cuda/cuda_ops.h). The executor calls ops through the kernel_* wrappers at the
 * bottom of this file and never knows which backend it holds.
 *
 * Memory: every pointer an op takes (activations, ids, positions, slots, block tables, the KV
 * pool, weights' data) is *backend memory*: memory from kernel_alloc(), or a weight that
 * kernel_prepare_weight() has placed. The executor moves data in and out with
 * kernel_upload() / kernel_download() only. For the CPU backend backend memory is host memory
 * (its memory hooks are left NULL and the wrappers below use malloc and memcpy); for CUDA it
 * is device memory. The attention op's seqs array itself is host memory (the backend plans
 * with it), but each seqs[i].block_table points into backend memory.
 *
 * Conventions shared by every op:
 *   - activations are F32 and token-major: a batch of n tokens of width d is [n, d], row after
 *     row, no padding; n is the flattened batch of every sequence in a step;
 *   - weights are 2-D kernel_weight views [rows, cols] (rows = output features, each row
 *     contiguous), of any dtype in common/dtype.h, read in place from the mapped model file;
 *   - an op returns when its output is written (the CPU backend is synchronous);
 *   - shapes and arguments are the executor's business: a wrong shape, a NULL pointer or a
 *     token id outside the table is a bug and aborts (CN_ASSERT), it is not a runtime status.
 *     What a file or a user can get wrong (a weight type a backend lacks) is checked once at
 *     load time with kernel_supports();
 *   - nothing is allocated per call on the steady state: scratch lives in the backend's context,
 *     sized by kernel_reserve() (or grown on first use, then kept);
 *   - one caller at a time: a backend context is not re-entrant (it owns a thread pool and
 *     scratch); give each executor its own.
 *
 * Outputs may not alias inputs unless the op says so. */
#ifndef CINDER_KERNELS_OPS_H
#define CINDER_KERNELS_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "model.h" /* model_tensor, model_config, rope_layout, rope_scaling_type: types only */
#include "status.h"

/* A 2-D weight [rows, cols], row-major: row r starts at (const uint8_t *)data + r * row_bytes.
 * For quantized types cols is a multiple of QK (32) and a row is cols / 32 blocks. A view
 * of a range of rows (a tensor-parallel shard, one expert) is the same struct with data
 * moved and rows reduced. */
typedef struct kernel_weight {
    dtype type;
    int64_t rows, cols;
    const void *data;
    size_t row_bytes; /* dtype_row_bytes(type, cols) for a dense tensor */
    /* The backend's own copy in a layout of its own, made by kernel_prepare_weight (NULL:
     * none; only that backend reads it; data above stays valid and unchanged). Take views of
     * row ranges before preparing, never of a prepared weight. */
    const void *prepared;
} kernel_weight;

/* A view of a 1-D or 2-D tensor as a weight (a 1-D tensor is one row; a 3-D one is seen as
 * [shape[0] * shape[1], shape[2]]). Fills err and returns CINDER_ERR_ARG when the tensor's
 * row length does not fit its type's blocks or its byte count disagrees with its shape. */
cinder_status kernel_weight_from_tensor(const model_tensor *t, kernel_weight *w, cinder_error *err);

/* RoPE frequency scaling, as in Hugging Face's modeling_rope_utils. */
typedef struct kernel_rope_scaling {
    rope_scaling_type type; /* NONE, LINEAR, LLAMA3 supported; DYNAMIC, YARN not yet */
    float factor;           /* LINEAR, LLAMA3 */
    float low_freq_factor;  /* LLAMA3 */
    float high_freq_factor; /* LLAMA3 */
    int original_context;   /* LLAMA3: original_max_position_embeddings */
} kernel_rope_scaling;

/* The scaling a model's config asks for. */
kernel_rope_scaling kernel_rope_scaling_from_config(const model_config *cfg);

/* inv_freq[i] = theta^(-2i / rope_dim) for i < rope_dim / 2, then scaled (HF's
 * _compute_default_rope_parameters / _linear_scaling / _llama3_parameters, computed in
 * double and rounded to float). rope_dim is even. scaling may be NULL (none). Returns
 * CINDER_ERR_UNSUPPORTED for dynamic NTK and YaRN, CINDER_ERR_ARG for bad parameters. */
cinder_status kernel_rope_inv_freq(float *inv_freq, int rope_dim, float theta,
                                   const kernel_rope_scaling *scaling, cinder_error *err);

/* One layer's paged KV pool (worker/kv_cache.h owns the memory):
 *   k, v: [n_blocks, n_kv_heads, block_size, head_dim] of type `type`
 * Position p of a sequence lives in block table[p / block_size], slot p % block_size.
 * type is DTYPE_F32 (0, what a zeroed struct says) everywhere; the CPU backend also takes
 * DTYPE_F16 and DTYPE_BF16, the CUDA backend DTYPE_BF16 (k and v then point to uint16_t values
 * despite their declared type), see kernel_supports_kv(). */
typedef struct kernel_kv_layer {
    float *k, *v;
    int32_t n_blocks;
    int block_size, n_kv_heads, head_dim;
    dtype type;
} kernel_kv_layer;

/* One sequence of an attention call. Its n_q queries are rows [q_start, q_start + n_q) of
 * the flattened batch and sit at positions [n_ctx - n_q, n_ctx); query i sees the keys at
 * positions [0, n_ctx - n_q + i] (causal), minus those a sliding window leaves out. */
typedef struct kernel_attn_seq {
    int32_t q_start;
    int32_t n_q;
    int32_t n_ctx;
    const int32_t *block_table; /* [ceil(n_ctx / block_size)] block ids */
} kernel_attn_seq;

/* The SIMD level of the CPU backend. */
typedef enum kernel_simd {
    KERNEL_SIMD_AUTO = 0, /* the best this CPU has, or the CINDER_SIMD environment variable */
    KERNEL_SIMD_SCALAR,   /* portable C, always present: the reference */
    KERNEL_SIMD_AVX2,     /* AVX2 + FMA + F16C */
    KERNEL_SIMD_AVX512,   /* AVX-512 F/BW/VL + VNNI */
    KERNEL_SIMD_COUNT,
} kernel_simd;

/* How the CPU backend feeds F32 activations to quantized weights (Q8_0, Q4_0, Q4_1). Either
 * way the weights stay in their blocks (never a dequantized copy) and each token's row is
 * quantized once per matmul, in blocks of 32 values with an fp32 scale d = max|x| / qmax
 * (round to nearest even), so that the dot products run on integers, exactly:
 *   ACCURATE: 16 bits (qmax 32767): a value is off by at most max|x| / 65534 of its block,
 *             258x less than INT8; Q4_1's offset term takes the block's F32 sum. Relative
 *             r.m.s. error of a matmul ~5e-5 to 1e-4 (SmolLM2-135M's, against F32
 *             activations); logits within ~1e-3 of transformers, 256/256 teacher-forced
 *             argmax agreement. About INT8's speed: decode reads the same weights, and a
 *             16-bit multiply-add covers as many products per instruction as AVX2's 8-bit
 *             pair (maddubs + madd).
 *   INT8:     8 bits (qmax 127, like ggml's Q8_0/Q8_1): a value is off by at most
 *             max|x| / 254. Relative matmul error ~2e-3 to 1e-2; SmolLM2-135M's logits off
 *             by ~4e-2, 248/256 argmax agreement, close greedy choices flip.
 * F32, F16 and BF16 weights always take F32 activations. */
typedef enum kernel_act_precision {
    KERNEL_ACT_DEFAULT = 0, /* ACCURATE, or the CINDER_ACT environment variable (accurate|int8) */
    KERNEL_ACT_ACCURATE,
    KERNEL_ACT_INT8,
    KERNEL_ACT_COUNT,
} kernel_act_precision;

/* One output of matmul_multi: out = x · wᵀ, out [n, w->rows]. */
typedef struct kernel_matmul_out {
    float *out;
    const kernel_weight *w;
} kernel_matmul_out;

typedef struct kernel_ops kernel_ops;

struct kernel_ops {
    const char *name; /* "cpu-avx2", ... (for logs) */
    void *ctx;        /* the backend's state, passed back as the first argument of every op */

    /* Sizes scratch for matmuls of up to max_tokens tokens and max_cols input columns, so
     * that the steady state never allocates. Optional: scratch also grows on first use. */
    cinder_status (*reserve)(void *ctx, int max_tokens, int64_t max_cols, cinder_error *err);

    /* Whether matmul and embed accept weights of this type. */
    bool (*supports)(void *ctx, dtype type);

    /* Optional (NULL: nothing to prepare). Called once per weight at load (kernel_prepare_weight;
     * twice is harmless), before any op reads it. The backend places the weight where and how
     * its ops read it, owned by the backend until destroy:
     *   CUDA: copies it to the device and repoints w->data;
     *   CPU:  may copy it into a layout its kernels read faster (rows interleaved in groups,
     *         for the 16-bit activation path) and record it in w->prepared; w->data stays.
     * Results are the same bits with or without it. CINDER_ERR_NOMEM when the copy cannot be
     * made. */
    cinder_status (*prepare_weight)(void *ctx, kernel_weight *w, cinder_error *err);

    /* out[i, :] = dequantized table row ids[i].  out [n, table->cols], ids [n] in
     * [0, table->rows). Any dtype. */
    void (*embed)(void *ctx, float *out, const kernel_weight *table, const int32_t *ids, int n);

    /* out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight.  out, x [n, d]; weight [d].
     * out may alias x. */
    void (*rmsnorm)(void *ctx, float *out, const float *x, const float *weight, int n, int d,
                    float eps);

    /* Rotates x in place.  x [n, n_heads, head_dim]; pos [n] (position of each token);
     * inv_freq [rope_dim / 2] (kernel_rope_inv_freq). Only the first rope_dim (even,
     * <= head_dim) values of each head rotate; pair i turns by pos * inv_freq[i]:
     *   ROPE_LAYOUT_INTERLEAVED: (x[2i], x[2i + 1])
     *   ROPE_LAYOUT_HALF:        (x[i], x[i + rope_dim / 2])
     * as (a, b) -> (a cos - b sin, a sin + b cos). */
    void (*rope)(void *ctx, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
                 int rope_dim, rope_layout layout, const float *inv_freq);

    /* out = x · Wᵀ.  out [n, w->rows]; x [n, w->cols]. For quantized W the activations are
     * quantized to 16 or 8 bits per value (kernel_act_precision) before the integer dot
     * products; for F32/F16/BF16 W they stay F32. Results do not depend on the thread count,
     * nor on the other tokens of the batch. */
    void (*matmul)(void *ctx, float *out, const float *x, const kernel_weight *w, int n);

    /* Optional (NULL: kernel_matmul_multi calls matmul once per weight). For each i < count,
     * outs[i].out = x · outs[i].wᵀ, every w with x's cols (Q, K and V, or gate and up, of one
     * normalized input): the same bits as count matmul calls, with the work they share done
     * once (the CPU quantizes x once and hands all the rows to its threads in one job). No
     * output may alias x or another output. */
    void (*matmul_multi)(void *ctx, const kernel_matmul_out *outs, int count, const float *x,
                         int n);

    /* out = silu(gate) * up, silu(g) = g / (1 + exp(-g)).  out, gate, up [n, f]; out may
     * alias gate or up. */
    void (*swiglu)(void *ctx, float *out, const float *gate, const float *up, int n, int f);

    /* out = a + b over count values (the residual add); out may alias a or b. */
    void (*add)(void *ctx, float *out, const float *a, const float *b, int64_t count);

    /* Writes the K and V rows of n tokens into their slots (block * block_size + offset).
     * k, v [n, n_kv_heads, head_dim]; slots [n]. */
    void (*kv_write)(void *ctx, const kernel_kv_layer *kv, const float *k, const float *v,
                     const int32_t *slots, int n);

    /* Causal attention of every query over its sequence's paged K/V, flash style (tiles of
     * keys, online softmax in F32, no score matrix), GQA: query head h reads KV head
     * h / (n_heads / n_kv_heads).  out, q [n_tokens, n_heads, head_dim] (n_tokens = the sum of
     * n_q); scale multiplies q·k (1/sqrt(head_dim)); window > 0 keeps only the last window
     * positions up to each query's own (Mistral), 0 keeps all. */
    void (*attention)(void *ctx, float *out, const float *q, const kernel_kv_layer *kv,
                      const kernel_attn_seq *seqs, int n_seqs, int n_heads, float scale,
                      int window);

    /* Softmax of each row in place.  x [n, d]. */
    void (*softmax)(void *ctx, float *x, int n, int d);

    /* out[i] = index of the largest x[i, :] (the first one on ties; NaN never wins).
     * x [n, d]; out [n]. */
    void (*argmax)(void *ctx, int32_t *out, const float *x, int n, int d);

    /* Frees the context and the struct. */
    void (*destroy)(kernel_ops *ops);

    /* ---- memory hooks: all optional; NULL means host memory (malloc, memcpy, nothing to
     * wait for), which is what the CPU backend uses. ---- */

    /* bytes of zeroed backend memory (NULL and err filled when it runs out); freed by
     * free_mem. */
    void *(*alloc)(void *ctx, size_t bytes, cinder_error *err);
    void (*free_mem)(void *ctx, void *p);
    /* Host -> backend and backend -> host copies of bytes. download returns once the bytes
     * are on the host (it waits for the ops before it). */
    void (*upload)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*download)(void *ctx, void *dst, const void *src, size_t bytes);
    /* Waits until every op issued so far has finished. */
    void (*sync)(void *ctx);
    /* Free and total backend memory in bytes (NULL: unknown). */
    cinder_status (*mem_info)(void *ctx, size_t *free_bytes, size_t *total_bytes,
                              cinder_error *err);
    /* Whether kv_write and attention take KV pools of this type (NULL: F32 only). */
    bool (*supports_kv)(void *ctx, dtype type);

    /* ---- plan and graphs: optional (NULL: nothing to plan, no graphs) ---- */

    /* Plans the attention calls of one step before they run (flashinfer's plan/run split):
     * the backend keeps what it derives from seqs (CUDA: uploads its descriptors), and the
     * attention calls that follow with equal seqs reuse it. ctx_bound > 0: plan grids for any
     * context up to ctx_bound rather than this step's (so a graph captured with the plan
     * stays valid for later steps); 0: this step's. */
    void (*attention_plan)(void *ctx, const kernel_attn_seq *seqs, int n_seqs, int n_heads,
                           const kernel_kv_layer *kv, int32_t ctx_bound);
    /* Runs body(arg), which issues ops only (no upload, download or sync), as a graph known by
     * key: captured on the first call with that key, replayed after. Whatever body's ops
     * read must be at the same addresses each time (device contents may change). */
    cinder_status (*graph_run)(void *ctx, uint64_t key, void (*body)(void *arg), void *arg,
                               cinder_error *err);
};

/* The CPU backend's settings; all zeros (kernel_cpu_options_default()) is the default. */
typedef struct kernel_cpu_options {
    int n_threads;            /* the pool's threads, the caller included; 0: one per online CPU */
    kernel_simd simd;         /* AUTO: CINDER_SIMD (scalar|avx2|avx512), else the best level */
    kernel_act_precision act; /* DEFAULT: CINDER_ACT (accurate|int8), else ACCURATE */
} kernel_cpu_options;

kernel_cpu_options kernel_cpu_options_default(void);
/* The CPU backend: a persistent thread pool, the kernels of one SIMD level, one activation
 * precision. opts NULL: the defaults. Returns NULL and fills err on failure:
 * CINDER_ERR_UNSUPPORTED when this CPU lacks the SIMD level, CINDER_ERR_ARG for a bad
 * setting or environment variable. */
kernel_ops *kernel_cpu_create_opts(const kernel_cpu_options *opts, cinder_error *err);
/* The same with n_threads and the other settings at their defaults. */
kernel_ops *kernel_cpu_create(int n_threads, cinder_error *err);
/* The same with n_threads and a SIMD level, the activation precision at its default. */
kernel_ops *kernel_cpu_create_simd(int n_threads, kernel_simd simd, cinder_error *err);
/* Whether this CPU (and this build) can run a level. SCALAR and AUTO: always. */
bool kernel_cpu_simd_supported(kernel_simd simd);
/* The best level this CPU supports. */
kernel_simd kernel_cpu_simd_best(void);
/* "scalar", "avx2", "avx512", "auto". */
const char *kernel_simd_name(kernel_simd simd);
/* "accurate", "int8", "default". */
const char *kernel_act_name(kernel_act_precision act);

/* Frees a backend; accepts NULL. */
void kernel_ops_free(kernel_ops *ops);

/* The executor's calls: one line each, so call sites read like the forward pass. */
static inline bool kernel_host_memory(const kernel_ops *k) {
    return k->alloc == NULL;
}
void *kernel_alloc(kernel_ops *k, size_t bytes, cinder_error *err);
/* Asks for 2 MiB pages over the whole ones inside [p, p + bytes) of host memory (madvise, where
 * the kernel has transparent huge pages; a hint, nothing changes elsewhere). */
void kernel_advise_huge_pages(void *p, size_t bytes);
void kernel_free(kernel_ops *k, void *p); /* accepts NULL */
void kernel_upload(kernel_ops *k, void *dst, const void *src, size_t bytes);
void kernel_download(kernel_ops *k, void *dst, const void *src, size_t bytes);
void kernel_sync(kernel_ops *k);
cinder_status kernel_prepare_weight(kernel_ops *k, kernel_weight *w, cinder_error *err);
/* CINDER_ERR_UNSUPPORTED when the backend cannot tell. */
cinder_status kernel_mem_info(kernel_ops *k, size_t *free_bytes, size_t *total_bytes,
                              cinder_error *err);
bool kernel_supports_kv(kernel_ops *k, dtype type);
static inline void kernel_attention_plan(kernel_ops *k, const kernel_attn_seq *seqs, int n_seqs,
                                         int n_heads, const kernel_kv_layer *kv,
                                         int32_t ctx_bound) {
    if (k->attention_plan) k->attention_plan(k->ctx, seqs, n_seqs, n_heads, kv, ctx_bound);
}
static inline bool kernel_has_graphs(const kernel_ops *k) {
    return k->graph_run != NULL;
}
/* body(arg) as a graph where the backend has them, else simply called. */
static inline cinder_status kernel_graph_run(kernel_ops *k, uint64_t key, void (*body)(void *arg),
                                             void *arg, cinder_error *err) {
    if (!k->graph_run) {
        body(arg);
        return CINDER_OK;
    }
    return k->graph_run(k->ctx, key, body, arg, err);
}

static inline cinder_status kernel_reserve(kernel_ops *k, int max_tokens, int64_t max_cols,
                                           cinder_error *err) {
    return k->reserve(k->ctx, max_tokens, max_cols, err);
}
static inline bool kernel_supports(kernel_ops *k, dtype type) {
    return k->supports(k->ctx, type);
}
static inline void kernel_embed(kernel_ops *k, float *out, const kernel_weight *table,
                                const int32_t *ids, int n) {
    k->embed(k->ctx, out, table, ids, n);
}
static inline void kernel_rmsnorm(kernel_ops *k, float *out, const float *x, const float *weight,
                                  int n, int d, float eps) {
    k->rmsnorm(k->ctx, out, x, weight, n, d, eps);
}
static inline void kernel_rope(kernel_ops *k, float *x, const int32_t *pos, int n, int n_heads,
                               int head_dim, int rope_dim, rope_layout layout,
                               const float *inv_freq) {
    k->rope(k->ctx, x, pos, n, n_heads, head_dim, rope_dim, layout, inv_freq);
}
static inline void kernel_matmul(kernel_ops *k, float *out, const float *x, const kernel_weight *w,
                                 int n) {
    k->matmul(k->ctx, out, x, w, n);
}
static inline void kernel_matmul_multi(kernel_ops *k, const kernel_matmul_out *outs, int count,
                                       const float *x, int n) {
    if (k->matmul_multi) {
        k->matmul_multi(k->ctx, outs, count, x, n);
        return;
    }
    for (int i = 0; i < count; i++) k->matmul(k->ctx, outs[i].out, x, outs[i].w, n);
}
static inline void kernel_swiglu(kernel_ops *k, float *out, const float *gate, const float *up,
                                 int n, int f) {
    k->swiglu(k->ctx, out, gate, up, n, f);
}
static inline void kernel_add(kernel_ops *k, float *out, const float *a, const float *b,
                              int64_t count) {
    k->add(k->ctx, out, a, b, count);
}
static inline void kernel_kv_write(kernel_ops *k, const kernel_kv_layer *kv, const float *kr,
                                   const float *vr, const int32_t *slots, int n) {
    k->kv_write(k->ctx, kv, kr, vr, slots, n);
}
static inline void kernel_attention(kernel_ops *k, float *out, const float *q,
                                    const kernel_kv_layer *kv, const kernel_attn_seq *seqs,
                                    int n_seqs, int n_heads, float scale, int window) {
    k->attention(k->ctx, out, q, kv, seqs, n_seqs, n_heads, scale, window);
}
static inline void kernel_softmax(kernel_ops *k, float *x, int n, int d) {
    k->softmax(k->ctx, x, n, d);
}
static inline void kernel_argmax(kernel_ops *k, int32_t *out, const float *x, int n, int d) {
    k->argmax(k->ctx, out, x, n, d);
}

#endif
