/* test_gguf_model.c - GGUF files as models: generated llama files (dense, MoE, with and
 * without output.weight, keys in assorted integer types), the files gguf_model_load must refuse,
 * and the real SmolLM2 file when it is here (the test returns 77, "skipped", when it is not). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "gguf_write.h"
#include "model.h"
#include "test.h"

#define TINY_D       64
#define TINY_LAYERS  2
#define TINY_HEADS   4
#define TINY_KV      2
#define TINY_HEAD    (TINY_D / TINY_HEADS)
#define TINY_FF      128
#define TINY_VOCAB   40
#define TINY_EXPERTS 4

/* Every tensor's data is a prefix of this pattern (the writer does not copy it). */
static uint8_t tiny_bytes[64 * 1024];

typedef struct tiny_opts {
    const char *arch;
    bool untied;              /* write output.weight */
    int n_experts;            /* 0: dense */
    bool vocab_key;           /* llama.vocab_size instead of the tokenizer's token count */
    bool no_tokens;           /* neither: the vocabulary comes from token_embd */
    const char *skip;         /* a key to leave out */
    const char *rope_scaling; /* llama.rope.scaling.type, or NULL */
    int n_heads;              /* 0: TINY_HEADS */
    const char *extra_tensor; /* one more (F32 [64]) tensor name, or NULL */
} tiny_opts;

static char tiny_path[64];

static void tiny_tensor(gguf_writer *w, const char *name, dtype type, int n_dims, uint64_t ne0,
                        uint64_t ne1, uint64_t ne2) {
    uint64_t ne[3] = {ne0, ne1, ne2};
    uint64_t numel = ne0 * (n_dims > 1 ? ne1 : 1) * (n_dims > 2 ? ne2 : 1);
    size_t nbytes = (size_t)(numel / (uint64_t)dtype_block_size(type) * dtype_block_bytes(type));
    CHECK(nbytes <= sizeof tiny_bytes);
    gguf_writer_add_tensor(w, name, type, n_dims, ne, tiny_bytes, nbytes);
}

/* Writes a small llama file to tiny_path; false when the writer failed. */
static bool tiny_write(const tiny_opts *o) {
    for (size_t i = 0; i < sizeof tiny_bytes; i++) tiny_bytes[i] = (uint8_t)(i * 11 + 3);
    /* The norms are F32 read back as floats: keep them finite. */
    for (size_t i = 0; i < TINY_D * 4; i += 4) memcpy(tiny_bytes + i, &(float){1.0f}, 4);
    int n_heads = o->n_heads ? o->n_heads : TINY_HEADS;
    gguf_writer *w = gguf_writer_init();
#define SKIP(key) (o->skip && strcmp(o->skip, key) == 0)
    gguf_writer_add_str(w, "general.architecture", o->arch ? o->arch : "llama");
    gguf_writer_add_str(w, "general.name", "tiny-llama");
    /* Writers use different integer types for these: any must do. */
    if (!SKIP("llama.context_length")) gguf_writer_add_i32(w, "llama.context_length", 256);
    if (!SKIP("llama.embedding_length")) gguf_writer_add_u64(w, "llama.embedding_length", TINY_D);
    if (!SKIP("llama.block_count")) gguf_writer_add_u16(w, "llama.block_count", TINY_LAYERS);
    if (!SKIP("llama.feed_forward_length"))
        gguf_writer_add_u32(w, "llama.feed_forward_length", TINY_FF);
    if (SKIP("string head_count"))
        gguf_writer_add_str(w, "llama.attention.head_count", "4");
    else
        gguf_writer_add_u8(w, "llama.attention.head_count", (uint8_t)n_heads);
    if (!SKIP("llama.attention.head_count_kv"))
        gguf_writer_add_i64(w, "llama.attention.head_count_kv", TINY_KV);
    if (!SKIP("llama.attention.layer_norm_rms_epsilon"))
        gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-6f);
    if (!SKIP("llama.rope.freq_base")) gguf_writer_add_f32(w, "llama.rope.freq_base", 500000.0f);
    if (o->rope_scaling) {
        gguf_writer_add_str(w, "llama.rope.scaling.type", o->rope_scaling);
        gguf_writer_add_f32(w, "llama.rope.scaling.factor", 4.0f);
        gguf_writer_add_u32(w, "llama.rope.scaling.original_context_length", 64);
    }
    if (o->n_experts) {
        gguf_writer_add_u32(w, "llama.expert_count", (uint32_t)o->n_experts);
        gguf_writer_add_u32(w, "llama.expert_used_count", 2);
    }
    if (o->vocab_key) gguf_writer_add_u32(w, "llama.vocab_size", TINY_VOCAB);
    if (!o->vocab_key && !o->no_tokens) {
        const char *tokens[TINY_VOCAB];
        char text[TINY_VOCAB][8];
        for (int i = 0; i < TINY_VOCAB; i++) {
            snprintf(text[i], sizeof text[i], "t%d", i);
            tokens[i] = text[i];
        }
        gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", tokens, TINY_VOCAB);
    }
#undef SKIP

    tiny_tensor(w, "token_embd.weight", DTYPE_F16, 2, TINY_D, TINY_VOCAB, 1);
    tiny_tensor(w, "output_norm.weight", DTYPE_F32, 1, TINY_D, 1, 1);
    if (o->untied) tiny_tensor(w, "output.weight", DTYPE_Q8_0, 2, TINY_D, TINY_VOCAB, 1);
    for (int l = 0; l < TINY_LAYERS; l++) {
        char name[96];
#define T(suffix, ...)                                                                             \
    snprintf(name, sizeof name, "blk.%d." suffix ".weight", l);                                    \
    tiny_tensor(w, name, __VA_ARGS__)
        T("attn_norm", DTYPE_F32, 1, TINY_D, 1, 1);
        T("attn_q", DTYPE_Q8_0, 2, TINY_D, TINY_HEADS * TINY_HEAD, 1);
        T("attn_k", DTYPE_Q4_0, 2, TINY_D, TINY_KV * TINY_HEAD, 1);
        T("attn_v", DTYPE_Q4_1, 2, TINY_D, TINY_KV * TINY_HEAD, 1);
        T("attn_output", DTYPE_BF16, 2, TINY_HEADS * TINY_HEAD, TINY_D, 1);
        T("ffn_norm", DTYPE_F32, 1, TINY_D, 1, 1);
        if (o->n_experts) {
            T("ffn_gate_inp", DTYPE_F32, 2, TINY_D, (uint64_t)o->n_experts, 1);
            T("ffn_gate_exps", DTYPE_Q8_0, 3, TINY_D, TINY_FF, (uint64_t)o->n_experts);
            T("ffn_up_exps", DTYPE_Q8_0, 3, TINY_D, TINY_FF, (uint64_t)o->n_experts);
            T("ffn_down_exps", DTYPE_Q8_0, 3, TINY_FF, TINY_D, (uint64_t)o->n_experts);
        } else {
            T("ffn_gate", DTYPE_Q4_1, 2, TINY_D, TINY_FF, 1);
            T("ffn_up", DTYPE_Q4_1, 2, TINY_D, TINY_FF, 1);
            T("ffn_down", DTYPE_Q4_1, 2, TINY_FF, TINY_D, 1);
        }
#undef T
    }
    if (o->extra_tensor) tiny_tensor(w, o->extra_tensor, DTYPE_F32, 1, TINY_D, 1, 1);
    cinder_error err = {0};
    cinder_status s = gguf_writer_write_file(w, tiny_path, &err);
    CHECK_MSG(s == CINDER_OK, "%s", err.msg);
    gguf_writer_free(w);
    return s == CINDER_OK;
}

/* gguf_model_load on a fresh model, as model_open calls it; NULL (err filled) on failure. */
static model *tiny_load(const char *path, cinder_error *err) {
    model *m = calloc(1, sizeof *m);
    m->path = strdup(path);
    if (gguf_model_load(m, path, err) != CINDER_OK) {
        model_free(m);
        return NULL;
    }
    return m;
}

static void check_tensor(const model *m, const char *name, dtype type, int n_dims, int64_t d0,
                         int64_t d1, int64_t d2) {
    const model_tensor *t = model_tensor_find(m, name);
    CHECK_MSG(t != NULL, "tensor %s missing", name);
    if (!t) return;
    int64_t want[3] = {d0, d1, d2};
    CHECK_MSG(t->type == type, "%s: %s", name, dtype_name(t->type));
    CHECK_EQ_INT(t->n_dims, n_dims);
    for (int d = 0; d < n_dims && d < 3; d++)
        CHECK_MSG(t->shape[d] == want[d], "%s: shape[%d] = %lld, expected %lld", name, d,
                  (long long)t->shape[d], (long long)want[d]);
    int64_t rows = model_tensor_n_rows(t), cols = model_tensor_row_len(t);
    CHECK_EQ_INT(t->nbytes, (size_t)rows * dtype_row_bytes(type, cols));
    /* The data is the file's own bytes, inside the model's mapping. */
    const mapped_file *f = &m->files[0];
    CHECK(t->data >= f->data && t->nbytes <= f->size - (size_t)(t->data - f->data));
    CHECK_MSG(memcmp(t->data, tiny_bytes, t->nbytes) == 0, "%s: data", name);
}

static void test_tiny_dense(void) {
    cinder_error err = {0};
    tiny_opts o = {0};
    if (!tiny_write(&o)) return;
    model *m = tiny_load(tiny_path, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (!m) return;
    const model_config *c = &m->config;
    CHECK_EQ_INT(m->format, MODEL_FORMAT_GGUF);
    CHECK(m->source != NULL);
    CHECK_EQ_INT(m->n_files, 1);
    CHECK_EQ_INT(c->arch, MODEL_ARCH_LLAMA);
    CHECK_STR_EQ(c->arch_name, "llama");
    CHECK_STR_EQ(c->name, "tiny-llama");
    CHECK_EQ_INT(c->n_layers, TINY_LAYERS);
    CHECK_EQ_INT(c->d_model, TINY_D);
    CHECK_EQ_INT(c->n_heads, TINY_HEADS);
    CHECK_EQ_INT(c->n_kv_heads, TINY_KV);
    CHECK_EQ_INT(c->head_dim, TINY_HEAD);
    CHECK_EQ_INT(c->rope_dim, TINY_HEAD);
    CHECK_EQ_INT(c->d_ff, TINY_FF);
    CHECK_EQ_INT(c->vocab_size, TINY_VOCAB);
    CHECK_EQ_INT(c->context_len, 256);
    CHECK(fabsf(c->norm_eps - 1e-6f) < 1e-12f);
    CHECK(c->rope_theta == 500000.0f);
    CHECK_EQ_INT(c->rope_layout, ROPE_LAYOUT_INTERLEAVED);
    CHECK_EQ_INT(c->rope_scaling, ROPE_SCALING_NONE);
    CHECK(c->tied_embeddings);
    CHECK_EQ_INT(c->n_experts, 0);
    CHECK(!c->attention_bias && !c->mlp_bias);
    CHECK_EQ_INT(m->n_tensors, 2 + 9 * TINY_LAYERS);
    check_tensor(m, "token_embd.weight", DTYPE_F16, 2, TINY_VOCAB, TINY_D, 0);
    check_tensor(m, "output_norm.weight", DTYPE_F32, 1, TINY_D, 0, 0);
    check_tensor(m, "blk.1.attn_q.weight", DTYPE_Q8_0, 2, TINY_D, TINY_D, 0);
    check_tensor(m, "blk.1.attn_k.weight", DTYPE_Q4_0, 2, TINY_KV * TINY_HEAD, TINY_D, 0);
    check_tensor(m, "blk.0.attn_v.weight", DTYPE_Q4_1, 2, TINY_KV * TINY_HEAD, TINY_D, 0);
    check_tensor(m, "blk.0.attn_output.weight", DTYPE_BF16, 2, TINY_D, TINY_D, 0);
    check_tensor(m, "blk.1.ffn_down.weight", DTYPE_Q4_1, 2, TINY_D, TINY_FF, 0);
    check_tensor(m, "blk.1.ffn_up.weight", DTYPE_Q4_1, 2, TINY_FF, TINY_D, 0);
    CHECK(model_tensor_find(m, "output.weight") == NULL);
    CHECK_MSG(model_validate(m, &err) == CINDER_OK, "%s", err.msg);
    model_free(m);
}

static void test_tiny_variants(void) {
    cinder_error err = {0};
    /* Untied, vocabulary from llama.vocab_size, linear RoPE scaling. */
    tiny_opts o = {.untied = true, .vocab_key = true, .rope_scaling = "linear"};
    if (!tiny_write(&o)) return;
    model *m = tiny_load(tiny_path, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        CHECK(!m->config.tied_embeddings);
        CHECK_EQ_INT(m->config.vocab_size, TINY_VOCAB);
        CHECK_EQ_INT(m->config.rope_scaling, ROPE_SCALING_LINEAR);
        CHECK(m->config.rope_scaling_factor == 4.0f);
        CHECK_EQ_INT(m->config.rope_original_context, 64);
        CHECK_EQ_INT(m->n_tensors, 3 + 9 * TINY_LAYERS);
        check_tensor(m, "output.weight", DTYPE_Q8_0, 2, TINY_VOCAB, TINY_D, 0);
        CHECK_MSG(model_validate(m, &err) == CINDER_OK, "%s", err.msg);
    }
    model_free(m);

    /* Vocabulary from token_embd; default head_count_kv (= heads) and RoPE base. */
    o = (tiny_opts){.no_tokens = true, .skip = "llama.rope.freq_base"};
    if (!tiny_write(&o)) return;
    m = tiny_load(tiny_path, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        CHECK_EQ_INT(m->config.vocab_size, TINY_VOCAB);
        CHECK(m->config.rope_theta == 10000.0f);
    }
    model_free(m);
    o = (tiny_opts){.skip = "llama.attention.head_count_kv"};
    if (!tiny_write(&o)) return;
    m = tiny_load(tiny_path, &err);
    CHECK_MSG(m && m->config.n_kv_heads == TINY_HEADS, "%s", err.msg);
    model_free(m);

    /* Biases are reported, for the engine to refuse. */
    o = (tiny_opts){.extra_tensor = "blk.0.attn_q.bias"};
    if (!tiny_write(&o)) return;
    m = tiny_load(tiny_path, &err);
    CHECK_MSG(m && m->config.attention_bias && !m->config.mlp_bias, "%s", err.msg);
    model_free(m);
}

static void test_tiny_moe(void) {
    cinder_error err = {0};
    tiny_opts o = {.n_experts = TINY_EXPERTS};
    if (!tiny_write(&o)) return;
    model *m = tiny_load(tiny_path, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (!m) return;
    CHECK_EQ_INT(m->config.arch, MODEL_ARCH_MIXTRAL);
    CHECK_EQ_INT(m->config.n_experts, TINY_EXPERTS);
    CHECK_EQ_INT(m->config.n_experts_used, 2);
    check_tensor(m, "blk.0.ffn_gate_inp.weight", DTYPE_F32, 2, TINY_EXPERTS, TINY_D, 0);
    check_tensor(m, "blk.1.ffn_gate_exps.weight", DTYPE_Q8_0, 3, TINY_EXPERTS, TINY_FF, TINY_D);
    check_tensor(m, "blk.1.ffn_down_exps.weight", DTYPE_Q8_0, 3, TINY_EXPERTS, TINY_D, TINY_FF);
    CHECK_MSG(model_validate(m, &err) == CINDER_OK, "%s", err.msg);
    model_free(m);
}

static void test_refusals(void) {
    char long_name[120];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    struct {
        tiny_opts o;
        cinder_status status;
        const char *needle;
    } cases[] = {
        {{.arch = "qwen2"},
         CINDER_ERR_UNSUPPORTED,
         "architecture 'qwen2' is not supported (llama only)"},
        {{.skip = "llama.block_count"}, CINDER_ERR_FORMAT, "'llama.block_count' is missing"},
        {{.skip = "llama.attention.layer_norm_rms_epsilon"},
         CINDER_ERR_FORMAT,
         "'llama.attention.layer_norm_rms_epsilon' is missing"},
        {{.skip = "string head_count"},
         CINDER_ERR_FORMAT,
         "'llama.attention.head_count' is a string"},
        {{.n_heads = 5},
         CINDER_ERR_FORMAT,
         "embedding_length 64 is not a multiple of head_count 5"},
        {{.rope_scaling = "longrope"},
         CINDER_ERR_UNSUPPORTED,
         "rope scaling type 'longrope' is not supported"},
        {{.extra_tensor = long_name}, CINDER_ERR_FORMAT, "name longer than 95 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!tiny_write(&cases[i].o)) continue;
        cinder_error err = {0};
        model *m = tiny_load(tiny_path, &err);
        CHECK_MSG(m == NULL, "case %zu accepted", i);
        model_free(m);
        CHECK_MSG(err.status == cases[i].status, "case %zu: %s", i, err.msg);
        CHECK_MSG(test_contains(err.msg, cases[i].needle), "case %zu: \"%s\" lacks \"%s\"", i,
                  err.msg, cases[i].needle);
        CHECK_MSG(test_contains(err.msg, tiny_path), "case %zu: \"%s\" lacks the path", i, err.msg);
    }
    /* A file that is not GGUF at all. */
    FILE *f = fopen(tiny_path, "wb");
    fputs("not a gguf file", f);
    fclose(f);
    cinder_error err = {0};
    model *m = tiny_load(tiny_path, &err);
    CHECK(m == NULL && err.status == CINDER_ERR_FORMAT && test_contains(err.msg, "magic"));
    model_free(m);
}

/* The real file: SmolLM2-135M-Instruct, Q4_1 (model-notes.md). */
static void check_smollm2(const model *m) {
    const model_config *c = &m->config;
    CHECK_EQ_INT(c->arch, MODEL_ARCH_LLAMA);
    CHECK_EQ_INT(c->n_layers, 30);
    CHECK_EQ_INT(c->d_model, 576);
    CHECK_EQ_INT(c->n_heads, 9);
    CHECK_EQ_INT(c->n_kv_heads, 3);
    CHECK_EQ_INT(c->head_dim, 64);
    CHECK_EQ_INT(c->rope_dim, 64);
    CHECK_EQ_INT(c->d_ff, 1536);
    CHECK_EQ_INT(c->vocab_size, 49152);
    CHECK_EQ_INT(c->context_len, 8192);
    CHECK(c->rope_theta == 100000.0f);
    CHECK(fabsf(c->norm_eps - 1e-5f) < 1e-10f);
    CHECK(c->tied_embeddings);
    CHECK_EQ_INT(c->rope_layout, ROPE_LAYOUT_INTERLEAVED);
    CHECK_EQ_INT(c->n_experts, 0);
    CHECK_EQ_INT(m->n_tensors, 272);
    const model_tensor *t = model_tensor_find(m, "token_embd.weight");
    CHECK(t && t->type == DTYPE_Q8_0 && t->n_dims == 2 && t->shape[0] == 49152 &&
          t->shape[1] == 576 && t->nbytes == (size_t)49152 * 18 * 34);
    CHECK(model_tensor_find(m, "output.weight") == NULL);
    int n_q41 = 0, n_norms = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        t = &m->tensors[i];
        bool blk = strncmp(t->name, "blk.", 4) == 0;
        if (t->n_dims == 1) {
            CHECK_MSG(t->type == DTYPE_F32 && strstr(t->name, "norm"), "%s", t->name);
            n_norms++;
        } else if (blk) {
            CHECK_MSG(t->type == DTYPE_Q4_1 && t->n_dims == 2, "%s: %s", t->name,
                      dtype_name(t->type));
            n_q41++;
        }
    }
    CHECK_EQ_INT(n_q41, 30 * 7);
    CHECK_EQ_INT(n_norms, 30 * 2 + 1);
    t = model_tensor_find(m, "blk.29.ffn_down.weight");
    CHECK(t && t->shape[0] == 576 && t->shape[1] == 1536);
    t = model_tensor_find(m, "blk.0.attn_k.weight");
    CHECK(t && t->shape[0] == 192 && t->shape[1] == 576);
}

static bool test_real_file(void) {
    const char *path = CINDER_DEFAULT_MODEL;
    if (access(path, R_OK) != 0) {
        printf("test_gguf_model: %s not here; skipping the real-file checks "
               "(scripts/fetch-model.sh gets it)\n",
               path);
        return false;
    }
    cinder_error err = {0};
    model *m = tiny_load(path, &err);
    CHECK_MSG(m != NULL, "gguf_model_load: %s", err.msg);
    if (m) check_smollm2(m);
    model_free(m);
    /* The whole way in: tokenizer and validation as well. */
    m = model_open(path, &err);
    CHECK_MSG(m != NULL, "model_open: %s", err.msg);
    if (m) {
        check_smollm2(m);
        CHECK(m->tok != NULL);
    }
    model_free(m);
    return true;
}

int main(void) {
    snprintf(tiny_path, sizeof tiny_path, "/tmp/cinder_test_gguf_model_%d.gguf", (int)getpid());
    test_tiny_dense();
    test_tiny_variants();
    test_tiny_moe();
    test_refusals();
    remove(tiny_path);
    bool real = test_real_file();
    int rc = test_summary("test_gguf_model");
    return rc == 0 && !real ? 77 : rc;
}
