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

typedef struct engine_layer {
    const float *attn_norm, *ffn_norm; /* [d] */
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
    float *inv_freq;             /* [rope_dim / 2] */
    float **owned;               /* F32 copies made at load (f32_weights, norms not in F32) */
    int n_owned;

    /* Scratch, sized once for max_batch_tokens tokens and max_seqs sequences. */
    float *x, *h, *q, *kk, *vv, *att, *gate, *up, *rows;
    int32_t *tokens, *pos, *slots, *row_index;
    kernel_attn_seq *aseqs;
};

engine_options engine_options_default(void) {
    return (engine_options){.n_threads = 0,
                            .block_size = 16,
                            .kv_blocks = 0,
                            .kv_bytes = (size_t)256 << 20,
                            .max_batch_tokens = 2048,
                            .max_seqs = 256,
                            .f32_weights = false,
                            .simd = KERNEL_SIMD_AUTO,
                            .act = KERNEL_ACT_DEFAULT};
}

const model_config *engine_config(const engine *e) {
    return &e->cfg;
}

kv_cache *engine_kv(engine *e) {
    return e->kv;
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
    if (w->type == DTYPE_F32 || (!f32 && kernel_supports(e->k, w->type))) return CINDER_OK;
    float *f = engine_own(e, (size_t)(w->rows * w->cols));
    if (!f) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for '%s' in F32", name);
    for (int64_t r = 0; r < w->rows; r++)
        dtype_to_f32(w->type, (const uint8_t *)w->data + r * w->row_bytes, f + r * w->cols, w->cols);
    w->type = DTYPE_F32;
    w->data = f;
    w->row_bytes = (size_t)w->cols * sizeof(float);
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

    kernel_cpu_options ko = {.n_threads = opts.n_threads, .simd = opts.simd, .act = opts.act};
    e->k = kernel_cpu_create_opts(&ko, err);
    if (!e->k) goto fail;

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

    /* The backend's own layout of the matmul weights, where it has one (the embedding table
     * itself stays as it is: the tied LM head is prepared as output only). */
    for (int l = 0; l < c->n_layers; l++) {
        engine_layer *L = &e->layers[l];
        kernel_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            if (kernel_prepare_weight(e->k, ws[i], err)) goto fail;
    }
    if (kernel_prepare_weight(e->k, &e->output, err)) goto fail;

    /* RoPE frequencies. */
    e->inv_freq = engine_own(e, (size_t)c->rope_dim / 2);
    if (!e->inv_freq) goto nomem;
    kernel_rope_scaling scaling = kernel_rope_scaling_from_config(c);
    if (kernel_rope_inv_freq(e->inv_freq, c->rope_dim, c->rope_theta, &scaling, err)) goto fail;

    /* KV cache. */
    int32_t blocks = opts.kv_blocks;
    if (blocks <= 0) {
        size_t per = kv_cache_block_bytes(c->n_layers, c->n_kv_heads, c->head_dim, opts.block_size);
        size_t n = opts.kv_bytes / per;
        blocks = n > INT32_MAX ? INT32_MAX : (int32_t)n;
        if (blocks <= 0) {
            cinder_error_set(err, CINDER_ERR_ARG, "KV pool of %zu bytes holds no %zu-byte block",
                             opts.kv_bytes, per);
            goto fail;
        }
    }
    e->kv = kv_cache_create(c->n_layers, c->n_kv_heads, c->head_dim, opts.block_size, blocks, err);
    if (!e->kv) goto fail;

    /* Scratch. */
    size_t T = (size_t)opts.max_batch_tokens;
    int64_t widest = d > c->d_ff ? d : c->d_ff;
    if (qd > widest) widest = qd;
    if (kernel_reserve(e->k, opts.max_batch_tokens, widest, err)) goto fail;
    e->x = malloc(T * d * sizeof(float));
    e->h = malloc(T * d * sizeof(float));
    e->q = malloc(T * qd * sizeof(float));
    e->kk = malloc(T * kvd * sizeof(float));
    e->vv = malloc(T * kvd * sizeof(float));
    e->att = malloc(T * qd * sizeof(float));
    e->gate = malloc(T * c->d_ff * sizeof(float));
    e->up = malloc(T * c->d_ff * sizeof(float));
    e->rows = malloc(T * d * sizeof(float));
    e->tokens = malloc(T * sizeof(int32_t));
    e->pos = malloc(T * sizeof(int32_t));
    e->slots = malloc(T * sizeof(int32_t));
    e->row_index = malloc(T * sizeof(int32_t));
    e->aseqs = malloc((size_t)opts.max_seqs * sizeof *e->aseqs);
    if (!e->x || !e->h || !e->q || !e->kk || !e->vv || !e->att || !e->gate || !e->up || !e->rows ||
        !e->tokens || !e->pos || !e->slots || !e->row_index || !e->aseqs)
        goto nomem;
    LOG_INFO("engine: %s, %d layers, KV %d blocks of %d tokens, %s weights", e->k->name,
             c->n_layers, blocks, opts.block_size, opts.f32_weights ? "F32" : "file's");
    return e;
nomem:
    cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory building the engine");
fail:
    engine_free(e);
    return NULL;
}

void engine_free(engine *e) {
    if (!e) return;
    kernel_ops_free(e->k);
    kv_cache_free(e->kv);
    for (int i = 0; i < e->n_owned; i++) free(e->owned[i]);
    free(e->owned);
    free(e->layers);
    free(e->x), free(e->h), free(e->q), free(e->kk), free(e->vv), free(e->att);
    free(e->gate), free(e->up), free(e->rows);
    free(e->tokens), free(e->pos), free(e->slots), free(e->row_index), free(e->aseqs);
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

cinder_status engine_step(engine *e, const engine_seq *seqs, int n_seqs, float *logits,
                          cinder_error *err) {
    cinder_status s = engine_check_step(e, seqs, n_seqs, err);
    if (s) return s;
    const model_config *c = &e->cfg;
    kernel_ops *k = e->k;
    int d = c->d_model, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    int bs = e->opts.block_size;

    /* Flatten: tokens, positions, KV slots, and which rows get logits. */
    int n = 0, n_rows = 0;
    for (int i = 0; i < n_seqs; i++) {
        const engine_seq *sq = &seqs[i];
        e->aseqs[i] = (kernel_attn_seq){.q_start = n, .n_q = sq->n_tokens,
                                        .n_ctx = sq->pos + sq->n_tokens,
                                        .block_table = sq->block_table};
        for (int32_t t = 0; t < sq->n_tokens; t++, n++) {
            int32_t p = sq->pos + t;
            e->tokens[n] = sq->tokens[t];
            e->pos[n] = p;
            e->slots[n] = sq->block_table[p / bs] * bs + p % bs;
            if (sq->all_logits || t == sq->n_tokens - 1) e->row_index[n_rows++] = n;
        }
    }

    float scale = 1.0f / sqrtf((float)hd);
    kernel_embed(k, e->x, &e->embed, e->tokens, n);
    for (int l = 0; l < c->n_layers; l++) {
        const engine_layer *L = &e->layers[l];
        const kernel_kv_layer *kv = &e->kv->layers[l];
        kernel_rmsnorm(k, e->h, e->x, L->attn_norm, n, d, c->norm_eps);
        kernel_matmul(k, e->q, e->h, &L->wq, n);
        kernel_matmul(k, e->kk, e->h, &L->wk, n);
        kernel_matmul(k, e->vv, e->h, &L->wv, n);
        kernel_rope(k, e->q, e->pos, n, nh, hd, c->rope_dim, c->rope_layout, e->inv_freq);
        kernel_rope(k, e->kk, e->pos, n, nkv, hd, c->rope_dim, c->rope_layout, e->inv_freq);
        kernel_kv_write(k, kv, e->kk, e->vv, e->slots, n);
        kernel_attention(k, e->att, e->q, kv, e->aseqs, n_seqs, nh, scale, c->sliding_window);
        kernel_matmul(k, e->h, e->att, &L->wo, n);
        kernel_add(k, e->x, e->x, e->h, (int64_t)n * d);

        kernel_rmsnorm(k, e->h, e->x, L->ffn_norm, n, d, c->norm_eps);
        kernel_matmul(k, e->gate, e->h, &L->gate, n);
        kernel_matmul(k, e->up, e->h, &L->up, n);
        kernel_swiglu(k, e->gate, e->gate, e->up, n, c->d_ff);
        kernel_matmul(k, e->h, e->gate, &L->down, n);
        kernel_add(k, e->x, e->x, e->h, (int64_t)n * d);
    }
    for (int r = 0; r < n_rows; r++)
        memcpy(e->rows + (size_t)r * d, e->x + (size_t)e->row_index[r] * d, (size_t)d * sizeof(float));
    kernel_rmsnorm(k, e->rows, e->rows, e->output_norm, n_rows, d, c->norm_eps);
    kernel_matmul(k, logits, e->rows, &e->output, n_rows);
    return CINDER_OK;
}
