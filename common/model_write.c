/* model_write.c - random-weight Llama models: a plan (the tensors the options give, with their
 * seeds), value generation row by row, and the GGUF and Hugging Face writers fed by producers
 * that make a few MB of rows at a time while the file is written. */
#define _POSIX_C_SOURCE 200809L
#include "model_write.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf.h"
#include "gguf_write.h"
#include "log.h"
#include "rng.h"
#include "safetensors.h"
#include "tokenizer.h"

#define MW_NORM_NOISE   0.02f
#define MW_CHUNK_VALUES (1 << 20) /* values generated per piece handed to the file writer */

/* ============================================================================================
 * Random numbers: splitmix64 seeds a xoshiro256** stream per row.
 * ========================================================================================== */

static void mw_rng_seed(rng_state *r, uint64_t tensor_seed, int64_t row) {
    rng_seed(r, tensor_seed ^ ((uint64_t)row * 0xd1b54a32d192ed03ull));
}

static inline float mw_rng_normal(rng_state *r) {
    uint64_t v = rng_next(r);
    int32_t sum = (int32_t)((v & 0xffff) + ((v >> 16) & 0xffff) + ((v >> 32) & 0xffff) + (v >> 48));
    return (float)(sum - 131070) * (1.7320508f / 65536.0f);
}

static uint64_t mw_fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* ============================================================================================
 * The plan: resolved options and the tensors they give.
 * ========================================================================================== */

typedef struct mw_plan mw_plan;

typedef struct mw_tensor {
    char name[96];    /* canonical (GGUF) name */
    char hf_name[96]; /* Hugging Face name */
    dtype type;
    int n_dims;     /* 1 (norms) or 2 */
    int64_t rows;   /* 1 for a norm */
    int64_t cols;   /* the contiguous dimension */
    bool norm;      /* 1 + noise instead of N(0, std^2) */
    bool rope_rows; /* attn_q / attn_k: the HF file holds rows in rotate_half order */
    uint64_t seed;
    mw_plan *plan;
} mw_tensor;

struct mw_plan {
    model_write_options o; /* defaults filled in */
    mw_tensor *tensors;    /* [n_tensors] in GGUF file order */
    int n_tensors;
    float *values; /* scratch for one piece: [piece_values] */
    uint8_t *out;  /* the piece converted */
    int64_t piece_values;
};

static void mw_plan_free(mw_plan *p) {
    free(p->tensors);
    free(p->values);
    free(p->out);
    memset(p, 0, sizeof *p);
}

static const char *mw_format_name(model_format f) {
    return f == MODEL_FORMAT_HF ? "hf" : "gguf";
}

/* Fills the defaults and checks everything a writer or model_open would refuse. */
static cinder_status mw_resolve(const model_write_options *in, model_write_options *o,
                                cinder_error *err) {
    *o = *in;
    model_config *c = &o->cfg;
    if (c->arch != MODEL_ARCH_LLAMA || c->n_experts || c->n_experts_used)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "model writer: only dense Llama models are written (no experts)");
    if (c->rope_scaling != ROPE_SCALING_NONE || c->sliding_window || c->attention_bias ||
        c->mlp_bias)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "model writer: RoPE scaling, sliding windows and biases are not "
                                "written");
    if (in->format != MODEL_FORMAT_GGUF && in->format != MODEL_FORMAT_HF)
        return cinder_error_set(err, CINDER_ERR_ARG, "model writer: bad format %d",
                                (int)in->format);
    const struct {
        const char *what;
        int value;
        bool optional; /* 0 asks for the default */
    } sizes[] = {
        {"layers", c->n_layers, false},         {"hidden size", c->d_model, false},
        {"heads", c->n_heads, false},           {"feed-forward size", c->d_ff, false},
        {"vocab size", c->vocab_size, false},   {"KV heads", c->n_kv_heads, true},
        {"head dim", c->head_dim, true},        {"context length", c->context_len, true},
        {"RoPE dimensions", c->rope_dim, true},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].value < 0 || (!sizes[i].optional && sizes[i].value == 0))
            return cinder_error_set(
                err, CINDER_ERR_ARG, "model writer: %s is %d, must be %s", sizes[i].what,
                sizes[i].value, sizes[i].optional ? "positive (or 0 for the default)" : "positive");
    if (c->n_kv_heads == 0) c->n_kv_heads = c->n_heads;
    if (c->n_heads % c->n_kv_heads)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "model writer: %d heads are not a multiple of %d KV heads",
                                c->n_heads, c->n_kv_heads);
    if (c->head_dim == 0) {
        if (c->d_model % c->n_heads)
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "model writer: hidden size %d is not a multiple of %d heads "
                                    "(give the head dim to use another)",
                                    c->d_model, c->n_heads);
        c->head_dim = c->d_model / c->n_heads;
    }
    if (c->head_dim % 2)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "model writer: head dim %d must be even (RoPE rotates pairs)",
                                c->head_dim);
    if (c->rope_dim != 0 && c->rope_dim != c->head_dim)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "model writer: partial RoPE (%d of %d dimensions) is not written",
                                c->rope_dim, c->head_dim);
    c->rope_dim = c->head_dim;
    if ((int64_t)c->n_heads * c->head_dim > INT_MAX)
        return cinder_error_set(err, CINDER_ERR_ARG, "model writer: %d heads of %d are too many",
                                c->n_heads, c->head_dim);
    if (c->context_len == 0) c->context_len = 2048;
    if (c->norm_eps == 0) c->norm_eps = 1e-5f;
    if (c->rope_theta == 0) c->rope_theta = 10000.0f;
    if (!(c->norm_eps > 0 && c->norm_eps < 1) || !(c->rope_theta > 0 && isfinite(c->rope_theta)))
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "model writer: norm eps %g must be in (0, 1) and RoPE theta %g "
                                "positive",
                                c->norm_eps, c->rope_theta);
    if (o->init_std == 0) o->init_std = MODEL_WRITE_DEFAULT_STD;
    if (!(o->init_std > 0 && o->init_std < 1e6f))
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "model writer: init std %g must be positive and finite",
                                o->init_std);
    if (!c->name[0]) snprintf(c->name, sizeof c->name, "random-llama");
    snprintf(c->arch_name, sizeof c->arch_name, "%s",
             o->format == MODEL_FORMAT_GGUF ? "llama" : "LlamaForCausalLM");
    c->rope_layout = o->format == MODEL_FORMAT_GGUF ? ROPE_LAYOUT_INTERLEAVED : ROPE_LAYOUT_HALF;
    c->rope_scaling_factor = 1.0f;

    const struct {
        const char *what;
        dtype t;
    } types[] = {{"weight type", o->type}, {"embedding type", o->embed_type}};
    for (int i = 0; i < 2; i++) {
        if ((unsigned)types[i].t >= DTYPE_COUNT)
            return cinder_error_set(err, CINDER_ERR_ARG, "model writer: bad %s %d", types[i].what,
                                    (int)types[i].t);
        if (o->format == MODEL_FORMAT_HF && dtype_is_quantized(types[i].t))
            return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                    "model writer: %s %s cannot be written to a Hugging Face "
                                    "folder (F32, F16 and BF16 only; use the GGUF format)",
                                    types[i].what, dtype_name(types[i].t));
    }
    /* Quantized rows must be whole blocks: the row length of each weight is its input size. */
    const struct {
        const char *what;
        int64_t cols;
        dtype t;
    } rows[] = {{"hidden size", c->d_model, o->type},
                {"heads x head dim", (int64_t)c->n_heads * c->head_dim, o->type},
                {"feed-forward size", c->d_ff, o->type},
                {"hidden size", c->d_model, o->embed_type}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (rows[i].cols % dtype_block_size(rows[i].t))
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "model writer: %s rows are blocks of %lld values, but the %s "
                                    "is %lld",
                                    dtype_name(rows[i].t), (long long)dtype_block_size(rows[i].t),
                                    rows[i].what, (long long)rows[i].cols);
    if (!o->no_tokenizer && !o->tokenizer_from && c->vocab_size < MODEL_WRITE_BUILTIN_VOCAB)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "model writer: vocab size %d is smaller than the %d tokens of the "
                                "built-in tokenizer (or write no tokenizer)",
                                c->vocab_size, MODEL_WRITE_BUILTIN_VOCAB);
    return CINDER_OK;
}

static cinder_status mw_plan_add(mw_plan *p, int cap, const char *name, const char *hf_name,
                                 dtype type, int64_t rows, int64_t cols, bool norm,
                                 cinder_error *err) {
    CN_ASSERT(p->n_tensors < cap);
    mw_tensor *t = &p->tensors[p->n_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->hf_name, sizeof t->hf_name, "%s", hf_name);
    t->type = type;
    t->n_dims = norm ? 1 : 2;
    t->rows = rows;
    t->cols = cols;
    t->norm = norm;
    t->rope_rows = strstr(name, ".attn_q.") || strstr(name, ".attn_k.");
    uint64_t x = p->o.seed ^ mw_fnv1a(name);
    t->seed = rng_splitmix64(&x);
    t->plan = p;
    if (rows > INT64_MAX / cols)
        return cinder_error_set(err, CINDER_ERR_ARG, "model writer: tensor '%s' is too large",
                                name);
    return CINDER_OK;
}

static cinder_status mw_plan_init(mw_plan *p, const model_write_options *in, cinder_error *err) {
    memset(p, 0, sizeof *p);
    cinder_status s = mw_resolve(in, &p->o, err);
    if (s) return s;
    const model_config *c = &p->o.cfg;
    if (c->n_layers > (INT_MAX - 3) / 9)
        return cinder_error_set(err, CINDER_ERR_ARG, "model writer: %d layers are too many",
                                c->n_layers);
    int cap = 3 + 9 * c->n_layers;
    p->tensors = calloc((size_t)cap, sizeof *p->tensors);
    if (!p->tensors) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
    int64_t d = c->d_model, q = (int64_t)c->n_heads * c->head_dim,
            kv = (int64_t)c->n_kv_heads * c->head_dim, ff = c->d_ff;
    dtype w = p->o.type, e = p->o.embed_type;
    s = mw_plan_add(p, cap, "token_embd.weight", "model.embed_tokens.weight", e, c->vocab_size, d,
                    false, err);
    if (!s)
        s = mw_plan_add(p, cap, "output_norm.weight", "model.norm.weight", DTYPE_F32, 1, d, true,
                        err);
    if (!s && !c->tied_embeddings)
        s = mw_plan_add(p, cap, "output.weight", "lm_head.weight", e, c->vocab_size, d, false, err);
    static const struct {
        const char *gguf, *hf;
        char rows, cols; /* 'd' hidden, 'q' heads x head dim, 'k' KV heads x head dim, 'f' FFN;
                            rows 'n' for a norm */
    } layer[] = {
        {"attn_norm", "input_layernorm", 'n', 'd'},
        {"attn_q", "self_attn.q_proj", 'q', 'd'},
        {"attn_k", "self_attn.k_proj", 'k', 'd'},
        {"attn_v", "self_attn.v_proj", 'k', 'd'},
        {"attn_output", "self_attn.o_proj", 'd', 'q'},
        {"ffn_norm", "post_attention_layernorm", 'n', 'd'},
        {"ffn_gate", "mlp.gate_proj", 'f', 'd'},
        {"ffn_up", "mlp.up_proj", 'f', 'd'},
        {"ffn_down", "mlp.down_proj", 'd', 'f'},
    };
    for (int l = 0; l < c->n_layers && !s; l++)
        for (size_t i = 0; i < sizeof layer / sizeof layer[0] && !s; i++) {
            char name[96], hf[96];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, layer[i].gguf);
            snprintf(hf, sizeof hf, "model.layers.%d.%s.weight", l, layer[i].hf);
            int64_t dims[2];
            for (int k = 0; k < 2; k++) {
                char ch = k ? layer[i].cols : layer[i].rows;
                dims[k] = ch == 'd' ? d : ch == 'q' ? q : ch == 'k' ? kv : ch == 'f' ? ff : 1;
            }
            bool norm = layer[i].rows == 'n';
            s = mw_plan_add(p, cap, name, hf, norm ? DTYPE_F32 : w, dims[0], dims[1], norm, err);
        }
    if (s) mw_plan_free(p);
    return s;
}

/* The scratch the producers share: one piece of at least a whole row. */
static cinder_status mw_plan_scratch(mw_plan *p, cinder_error *err) {
    int64_t piece = MW_CHUNK_VALUES;
    for (int i = 0; i < p->n_tensors; i++)
        if (p->tensors[i].cols > piece) piece = p->tensors[i].cols;
    p->piece_values = piece;
    p->values = malloc((size_t)piece * sizeof *p->values);
    p->out = malloc((size_t)piece * sizeof(float)); /* no type is wider than F32 */
    if (!p->values || !p->out) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
    return CINDER_OK;
}

static const mw_tensor *mw_plan_find(const mw_plan *p, const char *name) {
    for (int i = 0; i < p->n_tensors; i++)
        if (strcmp(p->tensors[i].name, name) == 0) return &p->tensors[i];
    return NULL;
}

/* ============================================================================================
 * Values
 * ========================================================================================== */

/* The row of the GGUF layout that HF row r of attn_q / attn_k holds. llama.cpp's converter
 * views each head's HF rows as [2][head_dim / 2] and stores them transposed, [head_dim / 2][2],
 * so that the rotate_half pairs (i, i + head_dim / 2) become adjacent rows (2i, 2i + 1). */
static int64_t mw_hf_row_to_gguf(int64_t r, int64_t head_dim) {
    int64_t half = head_dim / 2, head = r / head_dim, w = r % head_dim;
    return head * head_dim + 2 * (w % half) + w / half;
}

/* Rows [row0, row0 + n) of t as the file of the plan's format holds them: [n, cols]. */
static void mw_fill_rows(const mw_tensor *t, int64_t row0, int64_t n, float *dst) {
    const mw_plan *p = t->plan;
    bool permute = t->rope_rows && p->o.format == MODEL_FORMAT_HF;
    for (int64_t i = 0; i < n; i++) {
        int64_t r = row0 + i, g = permute ? mw_hf_row_to_gguf(r, p->o.cfg.head_dim) : r;
        rng_state rng;
        mw_rng_seed(&rng, t->seed, g);
        float *row = dst + i * t->cols;
        if (t->norm) {
            for (int64_t j = 0; j < t->cols; j++)
                row[j] = 1.0f + MW_NORM_NOISE * mw_rng_normal(&rng);
        } else {
            float std = p->o.init_std;
            for (int64_t j = 0; j < t->cols; j++) row[j] = std * mw_rng_normal(&rng);
        }
    }
}

static size_t mw_tensor_bytes(const mw_tensor *t) {
    return (size_t)t->rows * dtype_row_bytes(t->type, t->cols);
}

typedef cinder_status (*mw_put_fn)(void *sink, const void *data, size_t n, cinder_error *err);

/* Generates t piece by piece, converts each piece to t's type and hands it to put. */
static cinder_status mw_produce(mw_tensor *t, mw_put_fn put, void *sink, cinder_error *err) {
    mw_plan *p = t->plan;
    int64_t per_piece = p->piece_values / t->cols;
    for (int64_t r = 0; r < t->rows; r += per_piece) {
        int64_t n = t->rows - r < per_piece ? t->rows - r : per_piece;
        mw_fill_rows(t, r, n, p->values);
        dtype_from_f32(t->type, p->values, p->out, n * t->cols);
        cinder_status s = put(sink, p->out, (size_t)n * dtype_row_bytes(t->type, t->cols), err);
        if (s) return s;
    }
    return CINDER_OK;
}

static cinder_status mw_put_gguf(void *sink, const void *data, size_t n, cinder_error *err) {
    return gguf_stream_write(sink, data, n, err);
}

static cinder_status mw_produce_gguf(void *ctx, gguf_stream *out, cinder_error *err) {
    return mw_produce(ctx, mw_put_gguf, out, err);
}

static cinder_status mw_put_st(void *sink, const void *data, size_t n, cinder_error *err) {
    return st_stream_write(sink, data, n, err);
}

static cinder_status mw_produce_st(void *ctx, st_stream *out, cinder_error *err) {
    return mw_produce(ctx, mw_put_st, out, err);
}

/* ============================================================================================
 * Tokenizers
 * ========================================================================================== */

static const char *const mw_special_tokens[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
enum { MW_TOK_BOS = 257, MW_TOK_EOS = 258 };
static const char mw_chat_template[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* Bytes that GPT-2's byte-to-unicode table maps to themselves. */
static bool mw_byte_printable(int b) {
    return (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
}

/* GPT-2's byte-to-unicode form of byte b, as UTF-8 (out holds 3 bytes with the NUL): printable
 * bytes stand for themselves, the others for 256, 257, ... in byte order. */
static void mw_byte_token(int b, char out[3]) {
    int cp = b;
    if (!mw_byte_printable(b)) {
        cp = 256;
        for (int x = 0; x < b; x++) cp += !mw_byte_printable(x);
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = '\0';
    } else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        out[2] = '\0';
    }
}

/* The built-in tokenizer's token strings: [MODEL_WRITE_BUILTIN_VOCAB], pointing into store. */
static void mw_builtin_tokens(const char *tokens[], char store[256][3]) {
    for (int b = 0; b < 256; b++) {
        mw_byte_token(b, store[b]);
        tokens[b] = store[b];
    }
    for (int i = 0; i < 3; i++) tokens[256 + i] = mw_special_tokens[i];
}

static void mw_gguf_builtin_tokenizer(gguf_writer *w) {
    const char *tokens[MODEL_WRITE_BUILTIN_VOCAB];
    char store[256][3];
    int32_t types[MODEL_WRITE_BUILTIN_VOCAB];
    mw_builtin_tokens(tokens, store);
    for (int i = 0; i < MODEL_WRITE_BUILTIN_VOCAB; i++) types[i] = i < 256 ? 1 : 3; /* control */
    gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_add_str(w, "tokenizer.ggml.pre", "gpt2");
    gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", tokens, MODEL_WRITE_BUILTIN_VOCAB);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types,
                        MODEL_WRITE_BUILTIN_VOCAB);
    gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", NULL, 0);
    gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", MW_TOK_BOS);
    gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", MW_TOK_EOS);
    gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", MW_TOK_EOS);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false);
    gguf_writer_add_str(w, "tokenizer.chat_template", mw_chat_template);
}

static bool mw_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool mw_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The folder of an HF tokenizer source: path itself, or the folder of a file in it. */
static char *mw_hf_tokenizer_dir(const char *path) {
    if (mw_is_dir(path)) return strdup(path);
    const char *slash = strrchr(path, '/');
    return slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
}

cinder_status model_write_tokenizer_vocab(const char *path, int *n_tokens, cinder_error *err) {
    tokenizer *t = NULL;
    if (gguf_path_has_magic(path)) {
        gguf_file *g = gguf_open(path, err);
        if (!g) return err ? err->status : CINDER_ERR_FORMAT;
        t = tok_from_gguf(g, err);
        gguf_close(g);
    } else {
        char *dir = mw_hf_tokenizer_dir(path), *file = NULL;
        if (!dir || asprintf(&file, "%s/tokenizer.json", dir) < 0) file = NULL;
        free(dir);
        if (!file) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        if (!mw_is_file(file)) {
            cinder_error_set(err, CINDER_ERR_NOT_FOUND,
                             "%s: neither a GGUF file nor a folder with a tokenizer.json", path);
            free(file);
            return CINDER_ERR_NOT_FOUND;
        }
        t = tok_from_json(file, err);
        free(file);
    }
    if (!t) {
        cinder_error_prefix(err, "%s", path);
        return err ? err->status : CINDER_ERR_FORMAT;
    }
    *n_tokens = tok_vocab_size(t);
    tok_free(t);
    return CINDER_OK;
}

/* Checks that the tokenizer source fits the output format and the vocabulary. */
static cinder_status mw_check_tokenizer(const model_write_options *o, cinder_error *err) {
    if (o->no_tokenizer || !o->tokenizer_from) return CINDER_OK;
    bool gguf_src = gguf_path_has_magic(o->tokenizer_from);
    if (gguf_src != (o->format == MODEL_FORMAT_GGUF))
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "model writer: the tokenizer of %s cannot be copied into %s "
                                "model (a GGUF model takes a GGUF file's tokenizer, an HF folder "
                                "an HF folder's)",
                                o->tokenizer_from,
                                o->format == MODEL_FORMAT_GGUF ? "a GGUF" : "an HF");
    int n;
    cinder_status s = model_write_tokenizer_vocab(o->tokenizer_from, &n, err);
    if (s) return s;
    if (n > o->cfg.vocab_size)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "model writer: the tokenizer of %s has %d tokens, more than the "
                                "vocab size %d",
                                o->tokenizer_from, n, o->cfg.vocab_size);
    return CINDER_OK;
}

/* Every tokenizer.* key of a GGUF file, copied as it is stored. */
static cinder_status mw_gguf_copy_tokenizer(gguf_writer *w, const char *path, cinder_error *err) {
    gguf_file *g = gguf_open(path, err);
    if (!g) return err ? err->status : CINDER_ERR_FORMAT;
    cinder_status s = CINDER_OK;
    for (uint64_t i = 0; i < g->n_kv && !s; i++) {
        const gguf_kv *kv = &g->kv[i];
        if (kv->key.len < 10 || memcmp(kv->key.ptr, "tokenizer.", 10) != 0) continue;
        char *key = strndup(kv->key.ptr, kv->key.len);
        size_t size = (kv->type == GGUF_TYPE_ARRAY ? 12 : 0) + kv->value_size;
        uint8_t *value = malloc(size ? size : 1);
        if (!key || !value) {
            s = cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        } else {
            uint8_t *p = value;
            if (kv->type == GGUF_TYPE_ARRAY) { /* the value as stored: type, count, elements */
                for (int b = 0; b < 4; b++) *p++ = (uint8_t)((uint32_t)kv->arr_type >> (8 * b));
                for (int b = 0; b < 8; b++) *p++ = (uint8_t)(kv->arr_n >> (8 * b));
            }
            if (kv->value_size) memcpy(p, kv->value, kv->value_size);
            gguf_writer_add_raw(w, key, kv->type, value, size); /* a failure shows at write */
        }
        free(key);
        free(value);
    }
    gguf_close(g);
    return s;
}

/* ============================================================================================
 * GGUF
 * ========================================================================================== */

/* llama.cpp's general.file_type for a model whose weights are mostly of type t. */
static uint32_t mw_gguf_file_type(dtype t) {
    switch (t) {
        case DTYPE_F32:
            return 0;
        case DTYPE_F16:
            return 1;
        case DTYPE_Q4_0:
            return 2;
        case DTYPE_Q4_1:
            return 3;
        case DTYPE_Q8_0:
            return 7;
        case DTYPE_BF16:
            return 32;
        default:
            break;
    }
    CN_ABORT("bad dtype %d", (int)t);
}

static cinder_status mw_write_gguf(mw_plan *p, const char *path, cinder_error *err) {
    const model_write_options *o = &p->o;
    const model_config *c = &o->cfg;
    gguf_writer *w = gguf_writer_init();
    if (!w) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_str(w, "general.name", c->name);
    gguf_writer_set_alignment(w, GGUF_DEFAULT_ALIGNMENT);
    gguf_writer_add_u32(w, "general.file_type", mw_gguf_file_type(o->type));
    if (dtype_is_quantized(o->type) || dtype_is_quantized(o->embed_type))
        gguf_writer_add_u32(w, "general.quantization_version", 2);
    gguf_writer_add_u32(w, "llama.context_length", (uint32_t)c->context_len);
    gguf_writer_add_u32(w, "llama.embedding_length", (uint32_t)c->d_model);
    gguf_writer_add_u32(w, "llama.block_count", (uint32_t)c->n_layers);
    gguf_writer_add_u32(w, "llama.feed_forward_length", (uint32_t)c->d_ff);
    gguf_writer_add_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads);
    gguf_writer_add_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads);
    if (c->head_dim * c->n_heads != c->d_model) {
        gguf_writer_add_u32(w, "llama.attention.key_length", (uint32_t)c->head_dim);
        gguf_writer_add_u32(w, "llama.attention.value_length", (uint32_t)c->head_dim);
    }
    gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", c->norm_eps);
    gguf_writer_add_f32(w, "llama.rope.freq_base", c->rope_theta);
    gguf_writer_add_u32(w, "llama.rope.dimension_count", (uint32_t)c->rope_dim);
    gguf_writer_add_u32(w, "llama.vocab_size", (uint32_t)c->vocab_size);
    cinder_status s = CINDER_OK;
    if (o->tokenizer_from && !o->no_tokenizer)
        s = mw_gguf_copy_tokenizer(w, o->tokenizer_from, err);
    else if (!o->no_tokenizer)
        mw_gguf_builtin_tokenizer(w);
    for (int i = 0; i < p->n_tensors && !s; i++) {
        mw_tensor *t = &p->tensors[i];
        uint64_t ne[2] = {(uint64_t)t->cols, (uint64_t)t->rows}; /* GGUF order: reversed */
        gguf_writer_add_tensor_stream(w, t->name, t->type, t->n_dims, ne, mw_tensor_bytes(t),
                                      mw_produce_gguf, t);
    }
    if (!s) s = gguf_writer_write_file(w, path, err); /* also reports any failed add */
    gguf_writer_free(w);
    return s;
}

/* ============================================================================================
 * Hugging Face
 * ========================================================================================== */

/* The shortest decimal that reads back as f, as a double (so JSON shows 1e-05, not
 * 9.9999997473787516e-06). */
static double mw_json_float(float f) {
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if ((float)strtod(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

static const char *mw_torch_dtype(dtype t) {
    return t == DTYPE_BF16 ? "bfloat16" : t == DTYPE_F16 ? "float16" : "float32";
}

/* Writes a cJSON tree as pretty-printed text; takes ownership of root. */
static cinder_status mw_write_json(cJSON *root, const char *dir, const char *name,
                                   cinder_error *err) {
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory building %s", name);
    char *path = NULL;
    cinder_status s = CINDER_OK;
    if (asprintf(&path, "%s/%s", dir, name) < 0) {
        path = NULL;
        s = cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        goto done;
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        s = cinder_error_set(err, CINDER_ERR_IO, "%s: %s", path, strerror(errno));
        goto done;
    }
    size_t len = strlen(text);
    bool ok = fwrite(text, 1, len, f) == len && fputc('\n', f) != EOF;
    if (fclose(f) != 0) ok = false;
    if (!ok) s = cinder_error_set(err, CINDER_ERR_IO, "%s: write failed", path);
done:
    free(path);
    cJSON_free(text);
    return s;
}

static cinder_status mw_hf_config(const mw_plan *p, const char *dir, cinder_error *err) {
    const model_write_options *o = &p->o;
    const model_config *c = &o->cfg;
    cJSON *j = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("LlamaForCausalLM"));
    cJSON_AddStringToObject(j, "model_type", "llama");
    cJSON_AddNumberToObject(j, "hidden_size", c->d_model);
    cJSON_AddNumberToObject(j, "intermediate_size", c->d_ff);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(j, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(j, "max_position_embeddings", c->context_len);
    cJSON_AddNumberToObject(j, "rms_norm_eps", mw_json_float(c->norm_eps));
    cJSON_AddNumberToObject(j, "rope_theta", mw_json_float(c->rope_theta));
    cJSON_AddNullToObject(j, "rope_scaling");
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tied_embeddings);
    cJSON_AddStringToObject(j, "hidden_act", "silu");
    cJSON_AddBoolToObject(j, "attention_bias", false);
    cJSON_AddBoolToObject(j, "mlp_bias", false);
    cJSON_AddNumberToObject(j, "initializer_range", mw_json_float(o->init_std));
    cJSON_AddStringToObject(j, "torch_dtype", mw_torch_dtype(o->type));
    if (!o->tokenizer_from && !o->no_tokenizer) {
        cJSON_AddNumberToObject(j, "bos_token_id", MW_TOK_BOS);
        cJSON_AddNumberToObject(j, "eos_token_id", MW_TOK_EOS);
    }
    cJSON_AddBoolToObject(j, "use_cache", true);
    return mw_write_json(j, dir, "config.json", err);
}

/* tokenizer.json and tokenizer_config.json of the built-in tokenizer. */
static cinder_status mw_hf_builtin_tokenizer(const mw_plan *p, const char *dir, cinder_error *err) {
    const char *tokens[MODEL_WRITE_BUILTIN_VOCAB];
    char store[256][3];
    mw_builtin_tokens(tokens, store);

    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "version", "1.0");
    cJSON_AddNullToObject(j, "truncation");
    cJSON_AddNullToObject(j, "padding");
    cJSON *added = cJSON_AddArrayToObject(j, "added_tokens");
    for (int i = 256; i < MODEL_WRITE_BUILTIN_VOCAB; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", i);
        cJSON_AddStringToObject(a, "content", tokens[i]);
        cJSON_AddBoolToObject(a, "single_word", false);
        cJSON_AddBoolToObject(a, "lstrip", false);
        cJSON_AddBoolToObject(a, "rstrip", false);
        cJSON_AddBoolToObject(a, "normalized", false);
        cJSON_AddBoolToObject(a, "special", true);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddNullToObject(j, "normalizer");
    for (int k = 0; k < 2; k++) {
        cJSON *bl = cJSON_AddObjectToObject(j, k ? "decoder" : "pre_tokenizer");
        cJSON_AddStringToObject(bl, "type", "ByteLevel");
        cJSON_AddBoolToObject(bl, "add_prefix_space", false);
        cJSON_AddBoolToObject(bl, "trim_offsets", true);
        cJSON_AddBoolToObject(bl, "use_regex", true);
        if (!k) cJSON_AddNullToObject(j, "post_processor");
    }
    cJSON *m = cJSON_AddObjectToObject(j, "model");
    cJSON_AddStringToObject(m, "type", "BPE");
    cJSON_AddNullToObject(m, "dropout");
    cJSON_AddNullToObject(m, "unk_token");
    cJSON_AddNullToObject(m, "continuing_subword_prefix");
    cJSON_AddNullToObject(m, "end_of_word_suffix");
    cJSON_AddBoolToObject(m, "fuse_unk", false);
    cJSON_AddBoolToObject(m, "byte_fallback", false);
    cJSON_AddBoolToObject(m, "ignore_merges", false);
    cJSON *vocab = cJSON_AddObjectToObject(m, "vocab");
    for (int i = 0; i < MODEL_WRITE_BUILTIN_VOCAB; i++)
        cJSON_AddNumberToObject(vocab, tokens[i], i);
    cJSON_AddArrayToObject(m, "merges");
    cinder_status s = mw_write_json(j, dir, "tokenizer.json", err);
    if (s) return s;

    j = cJSON_CreateObject();
    cJSON_AddBoolToObject(j, "add_bos_token", false);
    cJSON_AddBoolToObject(j, "add_eos_token", false);
    cJSON_AddStringToObject(j, "bos_token", tokens[MW_TOK_BOS]);
    cJSON_AddStringToObject(j, "eos_token", tokens[MW_TOK_EOS]);
    cJSON_AddStringToObject(j, "pad_token", tokens[MW_TOK_EOS]);
    cJSON_AddStringToObject(j, "chat_template", mw_chat_template);
    cJSON_AddBoolToObject(j, "clean_up_tokenization_spaces", false);
    cJSON_AddNumberToObject(j, "model_max_length", p->o.cfg.context_len);
    cJSON_AddStringToObject(j, "tokenizer_class", "PreTrainedTokenizerFast");
    return mw_write_json(j, dir, "tokenizer_config.json", err);
}

static cinder_status mw_copy_file(const char *from, const char *to, cinder_error *err) {
    FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
    cinder_status s = CINDER_OK;
    if (!in || !out) {
        s = cinder_error_set(err, CINDER_ERR_IO, "%s: %s", in ? to : from, strerror(errno));
        goto done;
    }
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) break;
    if (ferror(in) || ferror(out))
        s = cinder_error_set(err, CINDER_ERR_IO, "copying %s to %s failed", from, to);
done:
    if (in) fclose(in);
    if (out && fclose(out) != 0 && !s)
        s = cinder_error_set(err, CINDER_ERR_IO, "%s: write failed", to);
    return s;
}

/* tokenizer.json, and tokenizer_config.json and special_tokens_map.json when present. */
static cinder_status mw_hf_copy_tokenizer(const char *src, const char *dir, cinder_error *err) {
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json"};
    char *from_dir = mw_hf_tokenizer_dir(src);
    if (!from_dir) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
    cinder_status s = CINDER_OK;
    for (size_t i = 0; i < sizeof files / sizeof files[0] && !s; i++) {
        char *from = NULL, *to = NULL;
        if (asprintf(&from, "%s/%s", from_dir, files[i]) < 0) from = NULL;
        if (asprintf(&to, "%s/%s", dir, files[i]) < 0) to = NULL;
        if (!from || !to)
            s = cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        else if (i == 0 || mw_is_file(from))
            s = mw_copy_file(from, to, err);
        free(from);
        free(to);
    }
    free(from_dir);
    return s;
}

static cinder_status mw_write_hf(mw_plan *p, const char *dir, cinder_error *err) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return cinder_error_set(err, CINDER_ERR_IO, "%s: cannot create the folder: %s", dir,
                                strerror(errno));
    if (!mw_is_dir(dir))
        return cinder_error_set(err, CINDER_ERR_IO, "%s: exists and is not a folder", dir);
    st_writer *w = st_writer_init();
    char *file = NULL;
    if (!w || asprintf(&file, "%s/model.safetensors", dir) < 0) {
        st_writer_free(w);
        return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
    }
    cinder_status s = st_writer_set_metadata(w, "format", "pt", err);
    for (int i = 0; i < p->n_tensors && !s; i++) {
        mw_tensor *t = &p->tensors[i];
        int64_t shape[2] = {t->rows, t->cols};
        s = st_writer_add_stream(w, t->hf_name, t->type, t->n_dims, t->norm ? shape + 1 : shape,
                                 mw_tensor_bytes(t), mw_produce_st, t, err);
    }
    if (!s) s = st_writer_write(w, file, err);
    st_writer_free(w);
    free(file);
    if (!s) s = mw_hf_config(p, dir, err);
    if (!s && p->o.tokenizer_from && !p->o.no_tokenizer)
        s = mw_hf_copy_tokenizer(p->o.tokenizer_from, dir, err);
    else if (!s && !p->o.no_tokenizer)
        s = mw_hf_builtin_tokenizer(p, dir, err);
    return s;
}

/* ============================================================================================
 * API
 * ========================================================================================== */

cinder_status model_write_check(const model_write_options *o, cinder_error *err) {
    model_write_options r;
    cinder_status s = mw_resolve(o, &r, err);
    return s ? s : mw_check_tokenizer(&r, err);
}

cinder_status model_write_size(const model_write_options *o, int64_t *params, int64_t *bytes,
                               cinder_error *err) {
    mw_plan p;
    cinder_status s = mw_plan_init(&p, o, err);
    if (s) return s;
    *params = *bytes = 0;
    for (int i = 0; i < p.n_tensors; i++) {
        *params += p.tensors[i].rows * p.tensors[i].cols;
        *bytes += (int64_t)mw_tensor_bytes(&p.tensors[i]);
    }
    mw_plan_free(&p);
    return CINDER_OK;
}

cinder_status model_write_values(const model_write_options *o, const char *name, int64_t row0,
                                 int64_t n_rows, float *dst, cinder_error *err) {
    mw_plan p;
    cinder_status s = mw_plan_init(&p, o, err);
    if (s) return s;
    const mw_tensor *t = mw_plan_find(&p, name);
    if (!t) {
        s = cinder_error_set(err, CINDER_ERR_NOT_FOUND, "model writer: no tensor '%s'", name);
    } else if (row0 < 0 || n_rows < 0 || row0 > t->rows || n_rows > t->rows - row0) {
        s = cinder_error_set(err, CINDER_ERR_RANGE,
                             "model writer: rows [%lld, %lld) outside the %lld of '%s'",
                             (long long)row0, (long long)(row0 + n_rows), (long long)t->rows, name);
    } else {
        mw_fill_rows(t, row0, n_rows, dst);
    }
    mw_plan_free(&p);
    return s;
}

cinder_status model_write_random(const model_write_options *o, const char *path,
                                 cinder_error *err) {
    mw_plan p;
    cinder_status s = mw_plan_init(&p, o, err);
    if (s) return s;
    s = mw_check_tokenizer(&p.o, err);
    if (!s) s = mw_plan_scratch(&p, err);
    if (!s) {
        LOG_INFO("writing %s (%s): %d tensors", path, mw_format_name(p.o.format), p.n_tensors);
        s = p.o.format == MODEL_FORMAT_GGUF ? mw_write_gguf(&p, path, err)
                                            : mw_write_hf(&p, path, err);
    }
    mw_plan_free(&p);
    return s;
}
