/* model.c - model_open() and what the engine asks of a model, whatever its format. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf.h"
#include "log.h"
#include "tokenizer.h"

const char *model_arch_name(model_arch arch) {
    switch (arch) {
        case MODEL_ARCH_LLAMA: return "llama";
        case MODEL_ARCH_MISTRAL: return "mistral";
        case MODEL_ARCH_MIXTRAL: return "mixtral";
    }
    return "?";
}

cinder_status model_add_tensor(model *m, const model_tensor *t, cinder_error *err) {
    if (m->n_tensors == m->tensors_cap) {
        int cap = m->tensors_cap ? 2 * m->tensors_cap : 64;
        model_tensor *p = realloc(m->tensors, (size_t)cap * sizeof *p);
        if (!p) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for tensors");
        m->tensors = p;
        m->tensors_cap = cap;
    }
    m->tensors[m->n_tensors++] = *t;
    return CINDER_OK;
}

int model_add_file(model *m, mapped_file *mf) {
    mapped_file *p = realloc(m->files, (size_t)(m->n_files + 1) * sizeof *p);
    if (!p) return -1;
    m->files = p;
    m->files[m->n_files] = *mf;
    memset(mf, 0, sizeof *mf);
    return m->n_files++;
}

/* Accepts a folder, or the path of a file inside it (config.json): returns the folder. */
static char *model_hf_dir(const char *path, bool is_dir) {
    if (is_dir) return strdup(path);
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    return strndup(path, (size_t)(slash - path));
}

static cinder_status model_load_tokenizer(model *m, cinder_error *err) {
    if (m->format == MODEL_FORMAT_GGUF) {
        if (!gguf_kv_find(m->source, "tokenizer.ggml.model")) {
            LOG_INFO("%s: no tokenizer.ggml.model; the model takes token ids only", m->path);
            return CINDER_OK;
        }
        m->tok = tok_from_gguf(m->source, err);
        if (!m->tok) return err ? err->status : CINDER_ERR_FORMAT;
        return CINDER_OK;
    }
    char *file = NULL;
    if (asprintf(&file, "%s/tokenizer.json", m->path) < 0)
        return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
    struct stat st;
    cinder_status s = CINDER_OK;
    if (stat(file, &st) == 0) {
        m->tok = tok_from_json(file, err);
        if (!m->tok) s = err ? err->status : CINDER_ERR_FORMAT;
    } else {
        LOG_INFO("%s: no tokenizer.json; the model takes token ids only", m->path);
    }
    free(file);
    return s;
}

model *model_open(const char *path, cinder_error *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        cinder_error_set(err, CINDER_ERR_IO, "%s: no such file or folder", path);
        return NULL;
    }
    model *m = calloc(1, sizeof *m);
    if (!m) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        return NULL;
    }
    cinder_status s;
    bool is_dir = S_ISDIR(st.st_mode);
    if (!is_dir && gguf_path_has_magic(path)) {
        m->path = strdup(path);
        m->format = MODEL_FORMAT_GGUF;
        s = m->path ? gguf_model_load(m, path, err) : CINDER_ERR_NOMEM;
    } else if (is_dir || strstr(path, ".json")) {
        m->path = model_hf_dir(path, is_dir);
        m->format = MODEL_FORMAT_HF;
        s = m->path ? hf_model_load(m, m->path, err) : CINDER_ERR_NOMEM;
    } else {
        s = cinder_error_set(err, CINDER_ERR_FORMAT,
                             "%s: neither a GGUF file (no 'GGUF' magic) nor a Hugging Face folder",
                             path);
    }
    if (s == CINDER_ERR_NOMEM && err && !err->msg[0]) cinder_error_set(err, s, "out of memory");
    if (s != CINDER_OK) goto fail;
    if (m->config.rope_dim == 0) m->config.rope_dim = m->config.head_dim;
    s = model_load_tokenizer(m, err);
    if (s != CINDER_OK) goto fail;
    s = model_validate(m, err);
    if (s != CINDER_OK) goto fail;
    return m;
fail:
    model_free(m);
    return NULL;
}

void model_free(model *m) {
    if (!m) return;
    tok_free(m->tok);
    if (m->format == MODEL_FORMAT_GGUF) gguf_close(m->source); /* tensor data points into it */
    for (int i = 0; i < m->n_files; i++) mapped_file_close(&m->files[i]);
    free(m->files);
    free(m->tensors);
    free(m->path);
    free(m);
}

const model_tensor *model_tensor_find(const model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

int64_t model_tensor_numel(const model_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++) n *= t->shape[i];
    return n;
}

int64_t model_tensor_row_len(const model_tensor *t) {
    return t->n_dims ? t->shape[t->n_dims - 1] : 1;
}

int64_t model_tensor_n_rows(const model_tensor *t) {
    return model_tensor_numel(t) / model_tensor_row_len(t);
}

cinder_status model_tensor_slice_rows(const model_tensor *t, int64_t r0, int64_t n,
                                      model_tensor *view, cinder_error *err) {
    int64_t outer = t->n_dims ? t->shape[0] : 1;
    if (r0 < 0 || n < 0 || r0 > outer || n > outer - r0)
        return cinder_error_set(err, CINDER_ERR_RANGE,
                                "tensor '%s': rows [%lld, %lld) outside its %lld rows", t->name,
                                (long long)r0, (long long)(r0 + n), (long long)outer);
    size_t per_outer = t->nbytes / (size_t)(outer ? outer : 1);
    *view = *t;
    view->shape[0] = n;
    view->data = t->data + (size_t)r0 * per_outer;
    view->nbytes = (size_t)n * per_outer;
    return CINDER_OK;
}

cinder_status model_tensor_copy_cols(const model_tensor *t, int64_t c0, int64_t n, void *dst,
                                     size_t dst_size, cinder_error *err) {
    int64_t cols = model_tensor_row_len(t), bs = dtype_block_size(t->type);
    if (c0 < 0 || n < 0 || c0 > cols || n > cols - c0)
        return cinder_error_set(err, CINDER_ERR_RANGE,
                                "tensor '%s': columns [%lld, %lld) outside its %lld columns",
                                t->name, (long long)c0, (long long)(c0 + n), (long long)cols);
    if (c0 % bs || n % bs)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "tensor '%s' (%s): columns [%lld, %lld) do not fall on %lld-value "
                                "block boundaries",
                                t->name, dtype_name(t->type), (long long)c0, (long long)(c0 + n),
                                (long long)bs);
    int64_t rows = model_tensor_n_rows(t);
    size_t src_row = dtype_row_bytes(t->type, cols), off = dtype_row_bytes(t->type, c0),
           len = dtype_row_bytes(t->type, n);
    if (dst_size < (size_t)rows * len)
        return cinder_error_set(err, CINDER_ERR_RANGE,
                                "tensor '%s': %zu-byte buffer for %lld rows of %zu bytes", t->name,
                                dst_size, (long long)rows, len);
    uint8_t *out = dst;
    for (int64_t r = 0; r < rows; r++) memcpy(out + r * len, t->data + r * src_row + off, len);
    return CINDER_OK;
}

/* Checks one tensor's presence and 2-D shape [rows, cols]. */
static cinder_status model_expect(const model *m, const char *name, int64_t rows, int64_t cols,
                                  cinder_error *err) {
    const model_tensor *t = model_tensor_find(m, name);
    if (!t) return cinder_error_set(err, CINDER_ERR_FORMAT, "%s: tensor '%s' is missing", m->path, name);
    bool ok = rows ? (t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == cols)
                   : (t->n_dims == 1 && t->shape[0] == cols);
    if (!ok)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]",
                                m->path, name, (long long)t->shape[0],
                                (long long)(t->n_dims > 1 ? t->shape[1] : 0), (long long)rows,
                                (long long)cols);
    if (dtype_row_bytes(t->type, model_tensor_row_len(t)) == 0)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s' (%s): row of %lld values is not whole blocks",
                                m->path, name, dtype_name(t->type),
                                (long long)model_tensor_row_len(t));
    return CINDER_OK;
}

cinder_status model_validate(const model *m, cinder_error *err) {
    const model_config *c = &m->config;
    struct {
        const char *name;
        int value;
    } sizes[] = {{"layers", c->n_layers},      {"hidden size", c->d_model},
                 {"heads", c->n_heads},        {"KV heads", c->n_kv_heads},
                 {"head dim", c->head_dim},    {"feed-forward size", c->d_ff},
                 {"vocab size", c->vocab_size}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].value <= 0)
            return cinder_error_set(err, CINDER_ERR_FORMAT, "%s: %s is %d, must be positive",
                                    m->path, sizes[i].name, sizes[i].value);
    if (c->n_heads % c->n_kv_heads)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: %d heads are not a multiple of %d KV heads", m->path,
                                c->n_heads, c->n_kv_heads);
    if (c->rope_dim <= 0 || c->rope_dim > c->head_dim || c->rope_dim % 2)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: RoPE dimension %d must be even and within head dim %d",
                                m->path, c->rope_dim, c->head_dim);
    if (!(c->norm_eps > 0) || !(c->rope_theta > 0))
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: norm eps (%g) and RoPE theta (%g) must be positive", m->path,
                                c->norm_eps, c->rope_theta);
    if (c->n_experts > 0 && (c->n_experts_used <= 0 || c->n_experts_used > c->n_experts))
        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s: %d experts used of %d", m->path,
                                c->n_experts_used, c->n_experts);
    if (m->tok && tok_vocab_size(m->tok) > c->vocab_size)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tokenizer has %d tokens, the model's vocabulary %d", m->path,
                                tok_vocab_size(m->tok), c->vocab_size);

    int64_t d = c->d_model, q = (int64_t)c->n_heads * c->head_dim,
            kv = (int64_t)c->n_kv_heads * c->head_dim;
    cinder_status s = model_expect(m, "token_embd.weight", c->vocab_size, d, err);
    if (!s) s = model_expect(m, "output_norm.weight", 0, d, err);
    if (!s && !c->tied_embeddings) s = model_expect(m, "output.weight", c->vocab_size, d, err);
    for (int l = 0; l < c->n_layers && !s; l++) {
        char name[96];
#define EXPECT(suffix, rows, cols)                                                                 \
    if (!s) {                                                                                      \
        snprintf(name, sizeof name, "blk.%d." suffix ".weight", l);                                \
        s = model_expect(m, name, rows, cols, err);                                                \
    }
        EXPECT("attn_norm", 0, d);
        EXPECT("attn_q", q, d);
        EXPECT("attn_k", kv, d);
        EXPECT("attn_v", kv, d);
        EXPECT("attn_output", d, q);
        EXPECT("ffn_norm", 0, d);
        if (c->n_experts == 0) {
            EXPECT("ffn_gate", c->d_ff, d);
            EXPECT("ffn_up", c->d_ff, d);
            EXPECT("ffn_down", d, c->d_ff);
        } else {
            EXPECT("ffn_gate_inp", c->n_experts, d);
        }
#undef EXPECT
    }
    return s;
}
