/* gguf_model.c - a llama-architecture GGUF file as a model: the config from the llama.* keys,
 * the tensors under their GGUF names (already the canonical ones), data left in the mapping. */
#include "model.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "gguf.h"
#include "log.h"

/* Where the keys of the one architecture we read live: "llama.block_count", ... */
#define GGUF_MODEL_ARCH "llama"

/* A file's string, NUL-terminated and cut to fit buf (for names and messages). */
static void gguf_model_copy_str(char *buf, size_t size, gguf_str s) {
    size_t n = s.len < size - 1 ? (size_t)s.len : size - 1;
    memcpy(buf, s.ptr, n);
    buf[n] = '\0';
}

/* Reads the integer key "llama.<suffix>" into *out, which must land in [lo, INT_MAX].
 * An absent key gives def, or an error when it is required. */
static cinder_status gguf_model_int(const gguf_file *g, const char *suffix, bool required, int def,
                                    int lo, int *out, cinder_error *err) {
    char key[128];
    snprintf(key, sizeof key, GGUF_MODEL_ARCH ".%s", suffix);
    int64_t v;
    cinder_status s = gguf_get_int(g, key, &v, err);
    if (s == CINDER_ERR_NOT_FOUND) {
        if (required)
            return cinder_error_set(err, CINDER_ERR_FORMAT, "gguf: required key '%s' is missing",
                                    key);
        *out = def;
        return CINDER_OK;
    }
    if (s != CINDER_OK) return s;
    if (v < lo || v > INT_MAX)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "gguf: key '%s' = %" PRId64 " is outside [%d, %d]", key, v, lo,
                                INT_MAX);
    *out = (int)v;
    return CINDER_OK;
}

/* The float key "llama.<suffix>"; must be positive and finite when present. */
static cinder_status gguf_model_float(const gguf_file *g, const char *suffix, bool required,
                                      float def, float *out, cinder_error *err) {
    char key[128];
    snprintf(key, sizeof key, GGUF_MODEL_ARCH ".%s", suffix);
    double v;
    cinder_status s = gguf_get_float(g, key, &v, err);
    if (s == CINDER_ERR_NOT_FOUND) {
        if (required)
            return cinder_error_set(err, CINDER_ERR_FORMAT, "gguf: required key '%s' is missing",
                                    key);
        *out = def;
        return CINDER_OK;
    }
    if (s != CINDER_OK) return s;
    if (!(v > 0 && v < 1e30))
        return cinder_error_set(err, CINDER_ERR_FORMAT, "gguf: key '%s' = %g must be positive", key,
                                v);
    *out = (float)v;
    return CINDER_OK;
}

#define GGUF_MODEL_TRY(call)                                                                       \
    do {                                                                                           \
        cinder_status s_ = (call);                                                                 \
        if (s_ != CINDER_OK) return s_;                                                            \
    } while (0)

/* llama.rope.scaling.* (llama.cpp's keys), or the older llama.rope.scale_linear. Llama 3.1's
 * frequency bands are not keys in GGUF: llama.cpp stores them as the tensor rope_freqs.weight. */
static cinder_status gguf_model_rope_scaling(const gguf_file *g, model_config *c,
                                             cinder_error *err) {
    c->rope_scaling = ROPE_SCALING_NONE;
    c->rope_scaling_factor = 1.0f;
    gguf_str type;
    cinder_status s = gguf_get_str(g, GGUF_MODEL_ARCH ".rope.scaling.type", &type, err);
    if (s == CINDER_ERR_NOT_FOUND) {
        GGUF_MODEL_TRY(
            gguf_model_float(g, "rope.scale_linear", false, 1.0f, &c->rope_scaling_factor, err));
        if (c->rope_scaling_factor != 1.0f) c->rope_scaling = ROPE_SCALING_LINEAR;
        return CINDER_OK;
    }
    if (s != CINDER_OK) return s;
    if (gguf_str_eq(type, "none")) return CINDER_OK;
    if (gguf_str_eq(type, "linear")) {
        c->rope_scaling = ROPE_SCALING_LINEAR;
    } else if (gguf_str_eq(type, "yarn")) {
        c->rope_scaling = ROPE_SCALING_YARN;
    } else {
        char shown[64];
        gguf_model_copy_str(shown, sizeof shown, type);
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "gguf: rope scaling type '%s' is not supported (none, linear, "
                                "yarn)",
                                shown);
    }
    GGUF_MODEL_TRY(
        gguf_model_float(g, "rope.scaling.factor", true, 1.0f, &c->rope_scaling_factor, err));
    return gguf_model_int(g, "rope.scaling.original_context_length",
                          c->rope_scaling == ROPE_SCALING_YARN, 0, 1, &c->rope_original_context,
                          err);
}

/* The vocabulary size: llama.vocab_size, else the tokenizer's token count, else the rows of
 * token_embd (ne[1]). */
static cinder_status gguf_model_vocab_size(const gguf_file *g, model_config *c, cinder_error *err) {
    if (gguf_kv_find(g, GGUF_MODEL_ARCH ".vocab_size"))
        return gguf_model_int(g, "vocab_size", true, 0, 1, &c->vocab_size, err);
    gguf_type elem;
    uint64_t n;
    if (gguf_get_arr(g, "tokenizer.ggml.tokens", &elem, &n, NULL) == CINDER_OK) {
        if (n == 0 || n > INT_MAX)
            return cinder_error_set(err, CINDER_ERR_FORMAT,
                                    "gguf: tokenizer.ggml.tokens has %" PRIu64 " tokens", n);
        c->vocab_size = (int)n;
        return CINDER_OK;
    }
    const gguf_tensor_info *t = gguf_tensor_find(g, "token_embd.weight");
    if (!t || t->n_dims != 2 || t->ne[1] > INT_MAX)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "gguf: no " GGUF_MODEL_ARCH ".vocab_size, tokenizer.ggml.tokens "
                                "or 2-D token_embd.weight to tell the vocabulary size");
    c->vocab_size = (int)t->ne[1];
    return CINDER_OK;
}

static cinder_status gguf_model_config(const gguf_file *g, model_config *c, cinder_error *err) {
    gguf_str arch;
    cinder_status s = gguf_get_str(g, "general.architecture", &arch, err);
    if (s == CINDER_ERR_NOT_FOUND)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "gguf: required key 'general.architecture' is missing");
    if (s != CINDER_OK) return s;
    gguf_model_copy_str(c->arch_name, sizeof c->arch_name, arch);
    if (!gguf_str_eq(arch, GGUF_MODEL_ARCH))
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "architecture '%s' is not supported (llama only)", c->arch_name);
    gguf_str name;
    if (gguf_get_str(g, "general.name", &name, NULL) == CINDER_OK)
        gguf_model_copy_str(c->name, sizeof c->name, name);

    GGUF_MODEL_TRY(gguf_model_int(g, "context_length", true, 0, 1, &c->context_len, err));
    GGUF_MODEL_TRY(gguf_model_int(g, "embedding_length", true, 0, 1, &c->d_model, err));
    GGUF_MODEL_TRY(gguf_model_int(g, "block_count", true, 0, 1, &c->n_layers, err));
    GGUF_MODEL_TRY(gguf_model_int(g, "feed_forward_length", true, 0, 1, &c->d_ff, err));
    GGUF_MODEL_TRY(gguf_model_int(g, "attention.head_count", true, 0, 1, &c->n_heads, err));
    GGUF_MODEL_TRY(
        gguf_model_int(g, "attention.head_count_kv", false, c->n_heads, 1, &c->n_kv_heads, err));
    GGUF_MODEL_TRY(
        gguf_model_float(g, "attention.layer_norm_rms_epsilon", true, 0, &c->norm_eps, err));

    /* The head size is d_model / n_heads unless the file says otherwise (key_length). */
    if (gguf_kv_find(g, GGUF_MODEL_ARCH ".attention.key_length")) {
        GGUF_MODEL_TRY(gguf_model_int(g, "attention.key_length", true, 0, 1, &c->head_dim, err));
    } else if (c->d_model % c->n_heads) {
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "gguf: embedding_length %d is not a multiple of head_count %d "
                                "and " GGUF_MODEL_ARCH ".attention.key_length is not given",
                                c->d_model, c->n_heads);
    } else {
        c->head_dim = c->d_model / c->n_heads;
    }
    int value_len;
    GGUF_MODEL_TRY(
        gguf_model_int(g, "attention.value_length", false, c->head_dim, 1, &value_len, err));
    if (value_len != c->head_dim)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "gguf: attention.value_length %d differs from key_length %d",
                                value_len, c->head_dim);

    c->rope_layout = ROPE_LAYOUT_INTERLEAVED; /* the converter permuted Q and K for this */
    GGUF_MODEL_TRY(gguf_model_float(g, "rope.freq_base", false, 10000.0f, &c->rope_theta, err));
    GGUF_MODEL_TRY(
        gguf_model_int(g, "rope.dimension_count", false, c->head_dim, 1, &c->rope_dim, err));
    GGUF_MODEL_TRY(gguf_model_rope_scaling(g, c, err));
    GGUF_MODEL_TRY(gguf_model_vocab_size(g, c, err));
    GGUF_MODEL_TRY(gguf_model_int(g, "expert_count", false, 0, 0, &c->n_experts, err));
    GGUF_MODEL_TRY(gguf_model_int(g, "expert_used_count", false, 0, 0, &c->n_experts_used, err));
    GGUF_MODEL_TRY(
        gguf_model_int(g, "attention.sliding_window", false, 0, 0, &c->sliding_window, err));
    c->arch = c->n_experts > 0 ? MODEL_ARCH_MIXTRAL : MODEL_ARCH_LLAMA;

    c->tied_embeddings = gguf_tensor_find(g, "output.weight") == NULL;
    /* llama.cpp's llama loader takes these biases when a file has them; say so, so the engine
     * can refuse rather than ignore them. Layer 0 speaks for all. */
    c->attention_bias =
        gguf_tensor_find(g, "blk.0.attn_q.bias") || gguf_tensor_find(g, "blk.0.attn_k.bias") ||
        gguf_tensor_find(g, "blk.0.attn_v.bias") || gguf_tensor_find(g, "blk.0.attn_output.bias");
    c->mlp_bias = gguf_tensor_find(g, "blk.0.ffn_gate.bias") ||
                  gguf_tensor_find(g, "blk.0.ffn_up.bias") ||
                  gguf_tensor_find(g, "blk.0.ffn_down.bias");
    return CINDER_OK;
}

/* Every tensor under its own name, shape reversed to row-major (outermost first). */
static cinder_status gguf_model_tensors(model *m, const gguf_file *g, cinder_error *err) {
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor_info *ti = &g->tensors[i];
        model_tensor t;
        memset(&t, 0, sizeof t);
        if (ti->name.len >= sizeof t.name || memchr(ti->name.ptr, '\0', ti->name.len)) {
            char shown[64];
            gguf_model_copy_str(shown, sizeof shown, ti->name);
            return cinder_error_set(err, CINDER_ERR_FORMAT,
                                    "gguf: tensor #%" PRIu64 " '%s': name longer than %zu bytes "
                                    "or holding a NUL",
                                    i, shown, sizeof t.name - 1);
        }
        memcpy(t.name, ti->name.ptr, ti->name.len);
        t.type = ti->type;
        t.n_dims = (int)ti->n_dims;
        /* gguf_open checked that the element count fits an int64, so each dim does too. */
        for (int d = 0; d < t.n_dims; d++) t.shape[d] = (int64_t)ti->ne[t.n_dims - 1 - d];
        t.data = ti->data;
        t.nbytes = (size_t)ti->nbytes; /* within the mapped file, so it fits */
        GGUF_MODEL_TRY(model_add_tensor(m, &t, err));
    }
    return CINDER_OK;
}

cinder_status gguf_model_load(model *m, const char *path, cinder_error *err) {
    gguf_file *g = gguf_open(path, err);
    if (!g) return err ? err->status : CINDER_ERR_FORMAT;
    /* From here m owns g: model_free() calls gguf_close(m->source) because m->format is
     * MODEL_FORMAT_GGUF, so failures below just return (model_open frees m). The tokenizer
     * (tok_from_gguf) reads its metadata from m->source later. */
    m->format = MODEL_FORMAT_GGUF;
    m->source = g;
    /* The mapping joins m->files like an HF shard's; g still points into it and gguf_close
     * leaves it alone from now on. */
    mapped_file mf;
    gguf_release_file(g, &mf);
    if (model_add_file(m, &mf) < 0) {
        mapped_file_close(&mf);
        return cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", path);
    }
    cinder_status s = gguf_model_config(g, &m->config, err);
    if (s == CINDER_OK) s = gguf_model_tensors(m, g, err);
    if (s != CINDER_OK) {
        cinder_error_prefix(err, "%s", path);
        return s;
    }
    LOG_INFO("%s: %s '%s', %d layers, d_model %d, %d tensors", path, m->config.arch_name,
             m->config.name, m->config.n_layers, m->config.d_model, m->n_tensors);
    return CINDER_OK;
}
