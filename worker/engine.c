/* engine.c - the Llama forward pass, top to bottom:
 *
 *   x = embed(tokens)                                   [n, d]
 *   for each layer:
 *     h = rmsnorm(x) ; q, k, v = h Wq, h Wk, h Wv        [n, heads * hd], [n, kv * hd]
 *     rope(q), rope(k) ; write k, v into the blocks
 *     x += attention(q, cached K/V) Wo
 *     h = rmsnorm(x) ; x += (silu(h Wgate) * h Wup) Wdown
 *   logits = rmsnorm(x[selected rows]) Wout             [rows, vocab]
 */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#ifdef CINDER_HAVE_CUDA
#include "cuda_ops.h"
#endif

typedef struct engine_layer {
    const float *attn_norm, *ffn_norm; /* [d] (backend memory) */
    kernel_weight wq, wk, wv, wo;      /* [heads*hd, d], [kv*hd, d], [kv*hd, d], [d, heads*hd] */
    kernel_weight gate, up, down;      /* [ff, d], [ff, d], [d, ff] */
} engine_layer;

struct engine {
    model_config cfg;
    kernel_ops *k;
    kv_cache *kv;
    engine_options opts;
    kernel_weight embed, output; /* [vocab, d] each (the same tensor when tied) */
    const float *output_norm;    /* [d] */
    engine_layer *layers;        /* [n_layers] */
    float *inv_freq;             /* [rope_dim / 2] (backend memory) */
    float **owned;               /* F32 copies made at load (f32_weights, norms not in F32) */
    int n_owned;

    /* Scratch in backend memory, sized once for max_batch_tokens tokens and max_seqs
     * sequences. logits: [logit_rows, vocab], only where the backend's memory is not the
     * host's (else the caller's buffer is written directly). */
    float *x, *h, *q, *kk, *vv, *att, *gate, *up, *rows, *logits;
    int32_t *ids; /* [logit_rows]: the rows' argmax, with logits */
    int logit_rows;
    /* A step's int32 plan, packed on the host and uploaded in one copy:
     * [tokens n][pos n][slots n][row_index n_rows][block tables], meta_cap values. */
    int32_t *meta, *dmeta;
    size_t meta_cap;
    kernel_attn_seq *aseqs; /* host; block_table pointers into dmeta */
    bool graphs;            /* decode steps as backend graphs */
};

/* One step's forward pass from the embedding to the logits rows, as ops only (no host
 * traffic), so that a backend can capture it as a graph. */
typedef struct engine_pass {
    engine *e;
    int n, n_seqs, n_rows;
    const int32_t *tokens, *pos, *slots, *rows; /* backend memory */
    float *logits;                              /* backend memory: [n_rows, vocab] */
} engine_pass;

const char *engine_backend_name(engine_backend b) {
    return b == ENGINE_BACKEND_CUDA ? "cuda" : "cpu";
}

bool engine_backend_parse(const char *s, engine_backend *out) {
    if (strcmp(s, "cpu") == 0) *out = ENGINE_BACKEND_CPU;
    else if (strcmp(s, "cuda") == 0) *out = ENGINE_BACKEND_CUDA;
    else return false;
    return true;
}

engine_options engine_options_default(void) {
    return (engine_options){.backend = ENGINE_BACKEND_CPU,
                            .device = 0,
                            .kv_type = DTYPE_F32,
                            .kv_fraction = 0,
                            .n_threads = 0,
                            .block_size = 16,
                            .kv_blocks = 0,
                            .kv_bytes = (size_t)256 << 20,
                            .max_batch_tokens = 2048,
                            .max_seqs = 256,
                            .f32_weights = false,
                            .simd = KERNEL_SIMD_AUTO,
                            .act = KERNEL_ACT_DEFAULT,
                            .no_graphs = false};
}

const model_config *engine_config(const engine *e) {
    return &e->cfg;
}

kv_cache *engine_kv(engine *e) {
    return e->kv;
}

kernel_ops *engine_backend_ops(engine *e) {
    return e->k;
}

/* Keeps a buffer the engine owns; returns it (NULL when out of memory). */
static float *engine_own(engine *e, size_t count) {
    float **list = realloc(e->owned, (size_t)(e->n_owned + 1) * sizeof *list);
    if (!list) return NULL;
    e->owned = list;
    float *p = malloc(count * sizeof(float));
    if (p) e->owned[e->n_owned++] = p;
    return p;
}

/* A weight view of a tensor, or an F32 copy of it when f32 is asked for (or the kernels cannot
 * read its type); a tensor already in F32 is never copied. */
static cinder_status engine_weight(engine *e, const model *m, const char *name, bool f32,
                                   kernel_weight *w, cinder_error *err) {
    const model_tensor *t = model_tensor_find(m, name);
    if (!t) return cinder_error_set(err, CINDER_ERR_FORMAT, "tensor '%s' is missing", name);
    cinder_status s = kernel_weight_from_tensor(t, w, err);
    if (s) return s;
    float *f = NULL;
    if (w->type != DTYPE_F32 && (f32 || !kernel_supports(e->k, w->type))) {
        f = engine_own(e, (size_t)(w->rows * w->cols));
        if (!f)
            return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for '%s' in F32", name);
        for (int64_t r = 0; r < w->rows; r++)
            dtype_to_f32(w->type, (const uint8_t *)w->data + r * w->row_bytes, f + r * w->cols,
                         w->cols);
        w->type = DTYPE_F32;
        w->data = f;
        w->row_bytes = (size_t)w->cols * sizeof(float);
    }
    /* Where and how the ops read it: in place (or also in the CPU kernels' own layout), or a
     * device copy on CUDA. A tied LM head is the embedding's view, prepared with it. */
    s = kernel_prepare_weight(e->k, w, err);
    if (s) {
        cinder_error_prefix(err, "'%s'", name);
        return s;
    }
    if (f && w->data != f) { /* copied elsewhere (the device): the host copy is not needed */
        CN_ASSERT(e->owned[e->n_owned - 1] == f);
        free(f);
        e->n_owned--;
    }
    return CINDER_OK;
}

/* A 1-D norm weight as F32 (norms are F32 in every file seen, but need not be). */
static cinder_status engine_norm(engine *e, const model *m, const char *name, const float **out,
                                 cinder_error *err) {
    kernel_weight w;
    cinder_status s = engine_weight(e, m, name, true, &w, err);
    if (s) return s;
    if (w.rows != 1 || w.cols != e->cfg.d_model)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "norm '%s' has %lld x %lld values, expected %d",
                                name, (long long)w.rows, (long long)w.cols, e->cfg.d_model);
    *out = w.data;
    return CINDER_OK;
}

/* What the forward pass cannot run yet is refused by name, not run wrong. */
cinder_status engine_model_supported(const model *m, cinder_error *err) {
    const model_config *c = &m->config;
    if (c->sliding_window > 0)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "sliding-window attention (window %d) is not supported yet",
                                c->sliding_window);
    if (c->n_experts > 0)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "mixture of experts (%d experts) is not supported yet", c->n_experts);
    if (c->attention_bias || c->mlp_bias)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "attention or MLP biases are not supported");
    if (model_tensor_find(m, "rope_freqs.weight"))
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "per-dimension RoPE frequencies (rope_freqs.weight, Llama 3.1 "
                                "GGUF) are not supported yet");
    if (c->head_dim % 2 || c->rope_dim > c->head_dim)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "head dim %d / rope dim %d", c->head_dim,
                                c->rope_dim);
    return CINDER_OK;
}

engine *engine_create(const model *m, const engine_options *opts_in, cinder_error *err) {
    engine_options opts = opts_in ? *opts_in : engine_options_default();
    if (opts.block_size <= 0 || opts.max_batch_tokens <= 0 || opts.max_seqs <= 0) {
        cinder_error_set(err, CINDER_ERR_ARG,
                         "block size %d, max batch tokens %d, max sequences %d: must be positive",
                         opts.block_size, opts.max_batch_tokens, opts.max_seqs);
        return NULL;
    }
    if (engine_model_supported(m, err)) return NULL;
    engine *e = calloc(1, sizeof *e);
    if (!e) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        return NULL;
    }
    e->cfg = m->config;
    e->opts = opts;
    const model_config *c = &e->cfg;
    int d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;

    if (opts.backend == ENGINE_BACKEND_CUDA) {
#ifdef CINDER_HAVE_CUDA
        kernel_cuda_options ko = kernel_cuda_options_default();
        ko.device = opts.device;
        ko.gemm = opts.act == KERNEL_ACT_INT8 ? KERNEL_CUDA_GEMM_FAST : KERNEL_CUDA_GEMM_DEFAULT;
        e->k = kernel_cuda_create(&ko, err);
#else
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                         "this build has no CUDA backend (configure with CINDER_CUDA=ON and nvcc)");
#endif
    } else if (opts.backend == ENGINE_BACKEND_CPU) {
        kernel_cpu_options ko = {.n_threads = opts.n_threads, .simd = opts.simd, .act = opts.act};
        e->k = kernel_cpu_create_opts(&ko, err);
    } else {
        cinder_error_set(err, CINDER_ERR_ARG, "backend %d", (int)opts.backend);
    }
    if (!e->k) goto fail;
    {
        const char *env = getenv("CINDER_GRAPHS");
        e->graphs = kernel_has_graphs(e->k) && !opts.no_graphs && !(env && strcmp(env, "0") == 0);
    }
    if (!kernel_supports_kv(e->k, opts.kv_type)) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "the %s backend has no %s KV cache",
                         e->k->name, dtype_name(opts.kv_type));
        goto fail;
    }

    /* Weights. */
    bool f32 = opts.f32_weights;
    if (engine_weight(e, m, "token_embd.weight", f32, &e->embed, err)) goto fail;
    if (c->tied_embeddings) e->output = e->embed; /* one view (or one F32 copy) for both */
    else if (engine_weight(e, m, "output.weight", f32, &e->output, err)) goto fail;
    if (engine_norm(e, m, "output_norm.weight", &e->output_norm, err)) goto fail;
    e->layers = calloc((size_t)c->n_layers, sizeof *e->layers);
    if (!e->layers) goto nomem;
    for (int l = 0; l < c->n_layers; l++) {
        engine_layer *L = &e->layers[l];
        char name[96];
#define W(field, suffix)                                                                           \
    snprintf(name, sizeof name, "blk.%d." suffix ".weight", l);                                    \
    if (engine_weight(e, m, name, f32, &L->field, err)) goto fail;
        W(wq, "attn_q") W(wk, "attn_k") W(wv, "attn_v") W(wo, "attn_output");
        W(gate, "ffn_gate") W(up, "ffn_up") W(down, "ffn_down");
#undef W
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        if (engine_norm(e, m, name, &L->attn_norm, err)) goto fail;
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        if (engine_norm(e, m, name, &L->ffn_norm, err)) goto fail;
    }


    /* RoPE frequencies. */
    float *inv_freq = engine_own(e, (size_t)c->rope_dim / 2);
    if (!inv_freq) goto nomem;
    kernel_rope_scaling scaling = kernel_rope_scaling_from_config(c);
    if (kernel_rope_inv_freq(inv_freq, c->rope_dim, c->rope_theta, &scaling, err)) goto fail;
    e->inv_freq = kernel_alloc(e->k, (size_t)c->rope_dim / 2 * sizeof(float), err);
    if (!e->inv_freq) goto fail;
    kernel_upload(e->k, e->inv_freq, inv_freq, (size_t)c->rope_dim / 2 * sizeof(float));

    /* Scratch (before the KV pool, which may take a fraction of what is left). */
    size_t T = (size_t)opts.max_batch_tokens;
    int64_t widest = d > c->d_ff ? d : c->d_ff;
    if (qd > widest) widest = qd;
    if (kernel_reserve(e->k, opts.max_batch_tokens, widest, err)) goto fail;
#define SCRATCH(ptr, count)                                                                        \
    if (!((ptr) = kernel_alloc(e->k, (size_t)(count) * sizeof *(ptr), err))) goto fail;
    SCRATCH(e->x, T * d) SCRATCH(e->h, T * d) SCRATCH(e->q, T * qd) SCRATCH(e->kk, T * kvd)
    SCRATCH(e->vv, T * kvd) SCRATCH(e->att, T * qd) SCRATCH(e->gate, T * c->d_ff)
    SCRATCH(e->up, T * c->d_ff) SCRATCH(e->rows, T * d)
    if (!kernel_host_memory(e->k)) {
        e->logit_rows = opts.max_seqs > 64 ? opts.max_seqs : 64;
        if ((size_t)e->logit_rows > T) e->logit_rows = (int)T;
        SCRATCH(e->logits, (size_t)e->logit_rows * c->vocab_size)
        SCRATCH(e->ids, e->logit_rows)
    }
    size_t max_blocks = ((size_t)c->context_len + opts.block_size - 1) / opts.block_size;
    e->meta_cap = 4 * T + (size_t)opts.max_seqs * max_blocks;
    e->meta = malloc(e->meta_cap * sizeof *e->meta);
    e->aseqs = malloc((size_t)opts.max_seqs * sizeof *e->aseqs);
    if (!e->meta || !e->aseqs) goto nomem;
    if (kernel_host_memory(e->k)) e->dmeta = e->meta;
    else SCRATCH(e->dmeta, e->meta_cap)
#undef SCRATCH

    /* KV cache. */
    int32_t blocks = opts.kv_blocks;
    size_t per = kv_cache_block_bytes_type(c->n_layers, c->n_kv_heads, c->head_dim,
                                           opts.block_size, opts.kv_type);
    if (blocks <= 0) {
        size_t bytes = opts.kv_bytes;
        if (opts.kv_fraction > 0) {
            size_t free_b = 0, total_b = 0;
            if (opts.kv_fraction > 1) {
                cinder_error_set(err, CINDER_ERR_ARG, "KV fraction %g is not in (0, 1]",
                                 opts.kv_fraction);
                goto fail;
            }
            if (kernel_mem_info(e->k, &free_b, &total_b, err)) goto fail;
            bytes = (size_t)((double)free_b * opts.kv_fraction);
            LOG_INFO("engine: %zu MiB free of %zu after weights and scratch; KV pool %zu MiB",
                     free_b >> 20, total_b >> 20, bytes >> 20);
        }
        size_t n = bytes / per;
        blocks = n > INT32_MAX ? INT32_MAX : (int32_t)n;
        if (blocks <= 0) {
            cinder_error_set(err, CINDER_ERR_ARG, "KV pool of %zu bytes holds no %zu-byte block",
                             bytes, per);
            goto fail;
        }
    }
    e->kv = kv_cache_create_on(e->k, c->n_layers, c->n_kv_heads, c->head_dim, opts.block_size,
                               blocks, opts.kv_type, err);
    if (!e->kv) goto fail;
    LOG_INFO("engine: %s, %d layers, KV %d blocks of %d tokens (%s), %s weights", e->k->name,
             c->n_layers, blocks, opts.block_size, dtype_name(opts.kv_type),
             opts.f32_weights ? "F32" : "file's");
    return e;
nomem:
    cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory building the engine");
fail:
    engine_free(e);
    return NULL;
}

void engine_free(engine *e) {
    if (!e) return;
    kv_cache_free(e->kv); /* in the backend's memory: before the backend goes */
    if (e->k) {
        float *bufs[] = {e->inv_freq, e->x, e->h, e->q, e->kk, e->vv, e->att,
                         e->gate, e->up, e->rows, e->logits};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) kernel_free(e->k, bufs[i]);
        kernel_free(e->k, e->ids);
        if (e->dmeta != e->meta) kernel_free(e->k, e->dmeta);
    }
    kernel_ops_free(e->k); /* frees the weights it placed */
    for (int i = 0; i < e->n_owned; i++) free(e->owned[i]);
    free(e->owned);
    free(e->layers);
    free(e->meta), free(e->aseqs);
    free(e);
}

int engine_logit_rows(const engine_seq *seqs, int n_seqs) {
    int rows = 0;
    for (int i = 0; i < n_seqs; i++) rows += seqs[i].all_logits ? seqs[i].n_tokens : 1;
    return rows;
}

/* Checks a step's plan against the model, the pool and the scratch before any compute. */
static cinder_status engine_check_step(const engine *e, const engine_seq *seqs, int n_seqs,
                                       cinder_error *err) {
    if (n_seqs <= 0 || n_seqs > e->opts.max_seqs)
        return cinder_error_set(err, CINDER_ERR_ARG, "step of %d sequences (1 to %d allowed)",
                                n_seqs, e->opts.max_seqs);
    int64_t total = 0;
    int bs = e->opts.block_size;
    for (int i = 0; i < n_seqs; i++) {
        const engine_seq *s = &seqs[i];
        if (s->n_tokens <= 0 || !s->tokens)
            return cinder_error_set(err, CINDER_ERR_ARG, "sequence %d: %d new tokens", i,
                                    s->n_tokens);
        total += s->n_tokens;
        if (total > e->opts.max_batch_tokens)
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "step of more than %d tokens (sequence %d brings it over)",
                                    e->opts.max_batch_tokens, i);
        if (s->pos < 0 || (int64_t)s->pos + s->n_tokens > e->cfg.context_len)
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "sequence %d: positions [%d, %lld) outside the context of %d",
                                    i, s->pos, (long long)s->pos + s->n_tokens, e->cfg.context_len);
        int64_t need = ((int64_t)s->pos + s->n_tokens + bs - 1) / bs;
        if (s->n_blocks < need || !s->block_table)
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "sequence %d: %d blocks cover %lld positions, %lld needed", i,
                                    s->n_blocks, (long long)s->n_blocks * bs,
                                    (long long)s->pos + s->n_tokens);
        for (int64_t b = 0; b < need; b++)
            if (s->block_table[b] < 0 || s->block_table[b] >= e->kv->n_blocks)
                return cinder_error_set(err, CINDER_ERR_ARG,
                                        "sequence %d: block table entry %lld is block %d, the pool "
                                        "has %d",
                                        i, (long long)b, s->block_table[b], e->kv->n_blocks);
        for (int32_t t = 0; t < s->n_tokens; t++)
            if (s->tokens[t] < 0 || s->tokens[t] >= e->cfg.vocab_size)
                return cinder_error_set(err, CINDER_ERR_ARG,
                                        "sequence %d: token %d is id %d, vocabulary is %d", i, t,
                                        s->tokens[t], e->cfg.vocab_size);
    }
    return CINDER_OK;
}

/* The layers, then (n_rows > 0) the final norm and LM head of the selected rows. */
static void engine_forward(void *arg) {
    const engine_pass *p = arg;
    engine *e = p->e;
    const model_config *c = &e->cfg;
    kernel_ops *k = e->k;
    int n = p->n, d = c->d_model, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    kernel_embed(k, e->x, &e->embed, p->tokens, n);
    for (int l = 0; l < c->n_layers; l++) {
        const engine_layer *L = &e->layers[l];
        const kernel_kv_layer *kv = &e->kv->layers[l];
        kernel_rmsnorm(k, e->h, e->x, L->attn_norm, n, d, c->norm_eps);
        kernel_matmul_out qkv[3] = {{e->q, &L->wq}, {e->kk, &L->wk}, {e->vv, &L->wv}};
        kernel_matmul_multi(k, qkv, 3, e->h, n);
        kernel_rope(k, e->q, p->pos, n, nh, hd, c->rope_dim, c->rope_layout, e->inv_freq);
        kernel_rope(k, e->kk, p->pos, n, nkv, hd, c->rope_dim, c->rope_layout, e->inv_freq);
        kernel_kv_write(k, kv, e->kk, e->vv, p->slots, n);
        kernel_attention(k, e->att, e->q, kv, e->aseqs, p->n_seqs, nh, scale, c->sliding_window);
        kernel_matmul(k, e->h, e->att, &L->wo, n);
        kernel_add(k, e->x, e->x, e->h, (int64_t)n * d);

        kernel_rmsnorm(k, e->h, e->x, L->ffn_norm, n, d, c->norm_eps);
        kernel_matmul_out gate_up[2] = {{e->gate, &L->gate}, {e->up, &L->up}};
        kernel_matmul_multi(k, gate_up, 2, e->h, n);
        kernel_swiglu(k, e->gate, e->gate, e->up, n, c->d_ff);
        kernel_matmul(k, e->h, e->gate, &L->down, n);
        kernel_add(k, e->x, e->x, e->h, (int64_t)n * d);
    }
    if (p->n_rows == 0) return;
    /* The rows that get logits: a gather, as an embedding lookup in x seen as an F32 table. */
    kernel_weight xs = {DTYPE_F32, n, d, e->x, (size_t)d * sizeof(float), NULL};
    kernel_embed(k, e->rows, &xs, p->rows, p->n_rows);
    kernel_rmsnorm(k, e->rows, e->rows, e->output_norm, p->n_rows, d, c->norm_eps);
    kernel_matmul(k, p->logits, e->rows, &e->output, p->n_rows);
}

/* The rows' results: their logits into the host buffer logits, or (ids) only each row's
 * argmax, taken where the logits are (on CUDA, n_rows int32 come back instead of n_rows x
 * vocab floats). rows: the rows' logits in backend memory; on the host they are logits. */
static void engine_results(engine *e, const float *rows, int n_rows, float *logits, int32_t *ids) {
    kernel_ops *k = e->k;
    size_t vocab = (size_t)e->cfg.vocab_size;
    if (ids && kernel_host_memory(k)) {
        kernel_argmax(k, ids, rows, n_rows, (int)vocab);
    } else if (ids) {
        kernel_argmax(k, e->ids, rows, n_rows, (int)vocab);
        kernel_download(k, ids, e->ids, (size_t)n_rows * sizeof(int32_t));
    } else if (!kernel_host_memory(k)) {
        kernel_download(k, logits, rows, (size_t)n_rows * vocab * sizeof(float));
    }
}

/* engine_step, with each row's argmax in ids instead of its logits when ids is non-NULL. */
static cinder_status engine_run(engine *e, const engine_seq *seqs, int n_seqs, float *logits,
                                int32_t *ids, cinder_error *err) {
    cinder_status s = engine_check_step(e, seqs, n_seqs, err);
    if (s) return s;
    const model_config *c = &e->cfg;
    kernel_ops *k = e->k;
    int d = c->d_model, nh = c->n_heads;
    int bs = e->opts.block_size;

    /* Flatten into one int32 plan: tokens, positions, KV slots, the rows that get logits,
     * the block tables; then one upload (nothing to do where backend memory is the host's). */
    int n = 0, n_rows = 0;
    for (int i = 0; i < n_seqs; i++) n += seqs[i].n_tokens;
    int32_t *tokens = e->meta, *pos = tokens + n, *slots = pos + n, *row_index = slots + n;
    for (int i = 0, t0 = 0; i < n_seqs; i++) {
        const engine_seq *sq = &seqs[i];
        for (int32_t t = 0; t < sq->n_tokens; t++) {
            int32_t p = sq->pos + t, j = t0 + t;
            tokens[j] = sq->tokens[t];
            pos[j] = p;
            slots[j] = sq->block_table[p / bs] * bs + p % bs;
            if (sq->all_logits || t == sq->n_tokens - 1) row_index[n_rows++] = j;
        }
        t0 += sq->n_tokens;
    }
    size_t used = 3 * (size_t)n + (size_t)n_rows;
    for (int i = 0, q0 = 0; i < n_seqs; i++) {
        const engine_seq *sq = &seqs[i];
        int32_t n_ctx = sq->pos + sq->n_tokens, nb = (n_ctx + bs - 1) / bs;
        CN_ASSERT(used + (size_t)nb <= e->meta_cap); /* engine_check_step bounds n_ctx */
        memcpy(e->meta + used, sq->block_table, (size_t)nb * sizeof(int32_t));
        e->aseqs[i] = (kernel_attn_seq){.q_start = q0, .n_q = sq->n_tokens, .n_ctx = n_ctx,
                                        .block_table = e->dmeta + used};
        used += (size_t)nb;
        q0 += sq->n_tokens;
    }
    if (e->dmeta != e->meta) kernel_upload(k, e->dmeta, e->meta, used * sizeof(int32_t));
    engine_pass ps = {e, n, n_seqs, n_rows, e->dmeta, e->dmeta + n, e->dmeta + 2 * n,
                      e->dmeta + 3 * n, e->logits ? e->logits : logits};
    /* Decode steps (one new token per sequence) on a backend with graphs: one graph per batch
     * size, planned for any context so that it stays valid; everything else op by op. */
    bool decode = n == n_seqs && n_rows == n_seqs;
    bool graph = e->graphs && decode && n_rows <= e->logit_rows;
    kernel_attention_plan(k, e->aseqs, n_seqs, nh, &e->kv->layers[0], graph ? c->context_len : 0);
    if (graph) {
        s = kernel_graph_run(k, (uint64_t)n_seqs, engine_forward, &ps, err);
        if (s) return s;
        engine_results(e, ps.logits, n_rows, logits, ids);
        return CINDER_OK;
    }
    if (!e->logits || n_rows <= e->logit_rows) {
        engine_forward(&ps);
        engine_results(e, ps.logits, n_rows, logits, ids);
        return CINDER_OK;
    }
    /* More logits rows than the device buffer: the layers once, the LM head in pieces. */
    ps.n_rows = 0;
    engine_forward(&ps);
    size_t vocab = (size_t)c->vocab_size;
    kernel_weight xs = {DTYPE_F32, n, d, e->x, (size_t)d * sizeof(float), NULL};
    kernel_embed(k, e->rows, &xs, ps.rows, n_rows);
    kernel_rmsnorm(k, e->rows, e->rows, e->output_norm, n_rows, d, c->norm_eps);
    for (int r0 = 0; r0 < n_rows; r0 += e->logit_rows) {
        int nr = n_rows - r0 < e->logit_rows ? n_rows - r0 : e->logit_rows;
        kernel_matmul(k, e->logits, e->rows + (size_t)r0 * d, &e->output, nr);
        engine_results(e, e->logits, nr, logits ? logits + (size_t)r0 * vocab : NULL,
                       ids ? ids + r0 : NULL);
    }
    return CINDER_OK;
}

cinder_status engine_step(engine *e, const engine_seq *seqs, int n_seqs, float *logits,
                          cinder_error *err) {
    return engine_run(e, seqs, n_seqs, logits, NULL, err);
}

cinder_status engine_step_argmax(engine *e, const engine_seq *seqs, int n_seqs, float *logits,
                                 int32_t *ids, cinder_error *err) {
    CN_ASSERT(ids != NULL && (logits != NULL || !kernel_host_memory(e->k)));
    return engine_run(e, seqs, n_seqs, logits, ids, err);
}
