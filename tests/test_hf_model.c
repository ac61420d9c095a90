/* test_hf_model.c - Hugging Face folders: config.json for Llama, Mistral and Mixtral, single and
 * sharded safetensors, canonical names, and the errors of broken configs and indexes. */
#include <cjson/cJSON.h>
#include <math.h>

#include "hf_config.h"
#include "hf_test_util.h"
#include "model.h"
#include "safetensors.h"
#include "test.h"

static const char *tmp_root; /* every folder of this test lives under it */

/* ---- config.json helpers ---- */

static const char llama_config_text[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\","
    " \"hidden_act\": \"silu\", \"hidden_size\": 64, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"intermediate_size\": 128, \"vocab_size\": 100,"
    " \"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0,"
    " \"rope_scaling\": null, \"tie_word_embeddings\": false, \"attention_bias\": false,"
    " \"mlp_bias\": false, \"torch_dtype\": \"float32\", \"bos_token_id\": 1}";

static cJSON *llama_config(void) {
    cJSON *j = cJSON_Parse(llama_config_text);
    if (!j) abort();
    return j;
}

/* Sets key to the JSON value text, or removes it when value is NULL. */
static void config_set(cJSON *j, const char *key, const char *value) {
    cJSON_DeleteItemFromObjectCaseSensitive(j, key);
    if (!value) return;
    cJSON *v = cJSON_Parse(value);
    if (!v) abort();
    cJSON_AddItemToObject(j, key, v);
}

static cinder_status config_parse(const cJSON *j, model_config *cfg, cinder_error *err) {
    char *text = cJSON_PrintUnformatted(j);
    cinder_status st = hf_config_parse(text, strlen(text), "config.json", cfg, err);
    cJSON_free(text);
    return st;
}

static void write_config(const char *dir, const cJSON *j) {
    char *text = cJSON_Print(j);
    tu_write_text(tu_path(dir, "config.json"), text);
    cJSON_free(text);
}

/* A new folder tmp_root/name. */
static const char *make_dir(const char *name) {
    const char *dir = tu_path(tmp_root, name);
    if (mkdir(dir, 0700) != 0) {
        perror(dir);
        abort();
    }
    return dir;
}

/* ---- tiny checkpoints ---- */

typedef struct tiny_tensor {
    char hf[96];    /* name in the file */
    char canon[96]; /* expected canonical name; empty when it must be skipped */
    dtype type;
    int n_dims;
    int64_t shape[3];
    uint8_t *data;
    size_t nbytes;
} tiny_tensor;

typedef struct tiny_model {
    tiny_tensor t[128];
    int n;
} tiny_model;

static void tiny_add(tiny_model *m, const char *hf, const char *canon, dtype type, int64_t rows,
                     int64_t cols) {
    tiny_tensor *t = &m->t[m->n];
    snprintf(t->hf, sizeof t->hf, "%s", hf);
    snprintf(t->canon, sizeof t->canon, "%s", canon);
    t->type = type;
    t->n_dims = rows ? 2 : 1;
    t->shape[0] = rows ? rows : cols;
    t->shape[1] = cols;
    t->nbytes = (size_t)(rows ? rows : 1) * (size_t)cols * dtype_block_bytes(type);
    t->data = malloc(t->nbytes);
    for (size_t k = 0; k < t->nbytes; k++) t->data[k] = (uint8_t)(m->n * 31 + k * 7);
    m->n++;
}

/* The tensors of a Llama-shaped model (hidden 64, 4 heads, 2 KV heads of 16, FFN 128, vocab
 * 100); experts > 0 makes it a Mixtral. */
static void tiny_build(tiny_model *m, int n_layers, int experts, bool tied) {
    const int64_t d = 64, kv = 32, ff = 128, vocab = 100;
    m->n = 0;
    tiny_add(m, "model.embed_tokens.weight", "token_embd.weight", DTYPE_BF16, vocab, d);
    tiny_add(m, "model.norm.weight", "output_norm.weight", DTYPE_F32, 0, d);
    if (!tied) tiny_add(m, "lm_head.weight", "output.weight", DTYPE_F16, vocab, d);
    char hf[96], canon[96];
    for (int l = 0; l < n_layers; l++) {
        static const struct {
            const char *hf, *canon;
            int64_t rows, cols; /* -1: kv, -2: ff */
        } per_layer[] = {
            {"input_layernorm.weight", "attn_norm.weight", 0, 64},
            {"self_attn.q_proj.weight", "attn_q.weight", 64, 64},
            {"self_attn.k_proj.weight", "attn_k.weight", -1, 64},
            {"self_attn.v_proj.weight", "attn_v.weight", -1, 64},
            {"self_attn.o_proj.weight", "attn_output.weight", 64, 64},
            {"post_attention_layernorm.weight", "ffn_norm.weight", 0, 64},
            {"self_attn.rotary_emb.inv_freq", "", 0, 8},
        };
        for (size_t i = 0; i < sizeof per_layer / sizeof per_layer[0]; i++) {
            snprintf(hf, sizeof hf, "model.layers.%d.%s", l, per_layer[i].hf);
            if (per_layer[i].canon[0])
                snprintf(canon, sizeof canon, "blk.%d.%s", l, per_layer[i].canon);
            else
                canon[0] = '\0';
            int64_t rows = per_layer[i].rows == -1 ? kv : per_layer[i].rows;
            tiny_add(m, hf, canon, DTYPE_F32, rows, per_layer[i].cols);
        }
        if (experts == 0) {
            snprintf(hf, sizeof hf, "model.layers.%d.mlp.gate_proj.weight", l);
            snprintf(canon, sizeof canon, "blk.%d.ffn_gate.weight", l);
            tiny_add(m, hf, canon, DTYPE_BF16, ff, d);
            snprintf(hf, sizeof hf, "model.layers.%d.mlp.up_proj.weight", l);
            snprintf(canon, sizeof canon, "blk.%d.ffn_up.weight", l);
            tiny_add(m, hf, canon, DTYPE_BF16, ff, d);
            snprintf(hf, sizeof hf, "model.layers.%d.mlp.down_proj.weight", l);
            snprintf(canon, sizeof canon, "blk.%d.ffn_down.weight", l);
            tiny_add(m, hf, canon, DTYPE_BF16, d, ff);
            continue;
        }
        snprintf(hf, sizeof hf, "model.layers.%d.block_sparse_moe.gate.weight", l);
        snprintf(canon, sizeof canon, "blk.%d.ffn_gate_inp.weight", l);
        tiny_add(m, hf, canon, DTYPE_F32, experts, d);
        for (int e = 0; e < experts; e++) {
            static const struct {
                const char *w, *canon;
            } ew[] = {{"w1", "ffn_gate"}, {"w3", "ffn_up"}, {"w2", "ffn_down"}};
            for (int k = 0; k < 3; k++) {
                snprintf(hf, sizeof hf, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", l,
                         e, ew[k].w);
                snprintf(canon, sizeof canon, "blk.%d.%s.%d.weight", l, ew[k].canon, e);
                bool down = k == 2;
                tiny_add(m, hf, canon, DTYPE_F16, down ? d : ff, down ? ff : d);
            }
        }
    }
}

static void tiny_free(tiny_model *m) {
    for (int i = 0; i < m->n; i++) free(m->t[i].data);
    m->n = 0;
}

static const char *shard_name(int s, int n_shards) {
    static char name[64];
    snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
    return name;
}

/* Writes the tensors to dir: model.safetensors when n_shards is 0, else n_shards shards
 * (round-robin) and model.safetensors.index.json. */
static void tiny_write(const tiny_model *m, const char *dir, int n_shards) {
    cinder_error err = {0};
    int n_files = n_shards ? n_shards : 1;
    cJSON *index = cJSON_CreateObject(), *map = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
    size_t total = 0;
    for (int s = 0; s < n_files; s++) {
        st_writer *w = st_writer_init();
        for (int i = s; i < m->n; i += n_files) {
            const tiny_tensor *t = &m->t[i];
            CHECK_EQ_INT(
                st_writer_add(w, t->hf, t->type, t->n_dims, t->shape, t->data, t->nbytes, &err),
                CINDER_OK);
            cJSON_AddStringToObject(map, t->hf, shard_name(s, n_shards));
            total += t->nbytes;
        }
        const char *file = n_shards ? shard_name(s, n_shards) : "model.safetensors";
        CHECK_EQ_INT(st_writer_write(w, tu_path(dir, file), &err), CINDER_OK);
        st_writer_free(w);
    }
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON_AddItemToObject(index, "weight_map", map);
    if (n_shards) {
        char *text = cJSON_Print(index);
        tu_write_text(tu_path(dir, "model.safetensors.index.json"), text);
        cJSON_free(text);
    }
    cJSON_Delete(index);
}

/* A model loaded the way model_open does it, minus the tokenizer and validation. */
static model *load_dir(const char *dir, cinder_error *err) {
    model *m = calloc(1, sizeof *m);
    m->path = strdup(dir);
    if (hf_model_load(m, dir, err) != CINDER_OK) {
        model_free(m);
        return NULL;
    }
    return m;
}

/* Every tensor of tm is in m under its canonical name, with its shape, type and bytes. */
static void check_tensors(const model *m, const tiny_model *tm) {
    int expected = 0;
    for (int i = 0; i < tm->n; i++) {
        const tiny_tensor *t = &tm->t[i];
        if (!t->canon[0]) continue;
        expected++;
        const model_tensor *mt = model_tensor_find(m, t->canon);
        CHECK_MSG(mt != NULL, "%s (%s) missing", t->canon, t->hf);
        if (!mt) continue;
        CHECK_MSG(mt->type == t->type && mt->n_dims == t->n_dims && mt->nbytes == t->nbytes, "%s",
                  t->canon);
        for (int d = 0; d < t->n_dims; d++) CHECK(mt->shape[d] == t->shape[d]);
        CHECK_MSG(memcmp(mt->data, t->data, t->nbytes) == 0, "%s: bytes differ", t->canon);
    }
    CHECK_EQ_INT(m->n_tensors, expected);
}

/* ---- tests ---- */

static void test_llama_single(void) {
    const char *dir = make_dir("tiny-llama");
    char dir_copy[512];
    snprintf(dir_copy, sizeof dir_copy, "%s", dir);
    cJSON *j = llama_config();
    config_set(j, "rope_scaling",
               "{\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
               " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}");
    write_config(dir_copy, j);
    cJSON_Delete(j);
    tiny_model *tm = calloc(1, sizeof *tm);
    tiny_build(tm, 2, 0, false);
    tiny_write(tm, dir_copy, 0);

    cinder_error err = {0};
    model *m = load_dir(dir_copy, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        const model_config *c = &m->config;
        CHECK_EQ_INT(m->format, MODEL_FORMAT_HF);
        CHECK_EQ_INT(c->arch, MODEL_ARCH_LLAMA);
        CHECK_STR_EQ(c->arch_name, "LlamaForCausalLM");
        CHECK_STR_EQ(c->name, "tiny-llama");
        CHECK_EQ_INT(c->d_model, 64);
        CHECK_EQ_INT(c->n_layers, 2);
        CHECK_EQ_INT(c->n_heads, 4);
        CHECK_EQ_INT(c->n_kv_heads, 2);
        CHECK_EQ_INT(c->head_dim, 16);
        CHECK_EQ_INT(c->rope_dim, 16);
        CHECK_EQ_INT(c->d_ff, 128);
        CHECK_EQ_INT(c->vocab_size, 100);
        CHECK_EQ_INT(c->context_len, 256);
        CHECK(c->norm_eps == 1e-5f);
        CHECK(c->rope_theta == 500000.0f);
        CHECK_EQ_INT(c->rope_layout, ROPE_LAYOUT_HALF);
        CHECK_EQ_INT(c->rope_scaling, ROPE_SCALING_LLAMA3);
        CHECK(c->rope_scaling_factor == 8.0f);
        CHECK(c->rope_low_freq_factor == 1.0f);
        CHECK(c->rope_high_freq_factor == 4.0f);
        CHECK_EQ_INT(c->rope_original_context, 8192);
        CHECK(!c->tied_embeddings && !c->attention_bias && !c->mlp_bias);
        CHECK_EQ_INT(c->sliding_window, 0);
        CHECK_EQ_INT(c->n_experts, 0);
        check_tensors(m, tm);
        CHECK(model_tensor_find(m, "blk.0.attn_q.weight") != NULL);
        const model_tensor *k = model_tensor_find(m, "blk.1.attn_k.weight");
        CHECK(k && k->n_dims == 2 && k->shape[0] == 32 && k->shape[1] == 64);
        CHECK_EQ_INT(m->n_files, 1);
        cinder_status vs = model_validate(m, &err);
        CHECK_MSG(vs == CINDER_OK, "%s", err.msg);
    }
    model_free(m);

    /* The whole path through model_open: the folder, and its config.json. */
    m = model_open(dir_copy, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) CHECK_EQ_INT(m->n_tensors, 3 + 2 * 9);
    model_free(m);
    m = model_open(tu_path(dir_copy, "config.json"), &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) CHECK_STR_EQ(m->config.name, "tiny-llama");
    model_free(m);

    tiny_free(tm);
    free(tm);
}

static void test_llama_sharded(void) {
    const char *dir = make_dir("tiny-sharded");
    char dir_copy[512];
    snprintf(dir_copy, sizeof dir_copy, "%s", dir);
    cJSON *j = llama_config();
    config_set(j, "tie_word_embeddings", "true");
    write_config(dir_copy, j);
    cJSON_Delete(j);
    tiny_model *tm = calloc(1, sizeof *tm);
    tiny_build(tm, 2, 0, true);
    tiny_write(tm, dir_copy, 2);

    cinder_error err = {0};
    char with_slash[600];
    snprintf(with_slash, sizeof with_slash, "%s/", dir_copy);
    model *m = load_dir(with_slash, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        CHECK(m->config.tied_embeddings);
        CHECK_STR_EQ(m->config.name, "tiny-sharded");
        CHECK_EQ_INT(m->n_files, 2);
        check_tensors(m, tm);
        CHECK(model_tensor_find(m, "output.weight") == NULL);
        CHECK_EQ_INT(model_validate(m, &err), CINDER_OK);
    }
    model_free(m);
    tiny_free(tm);
    free(tm);
}

static void test_mistral(void) {
    cJSON *j = llama_config();
    cJSON_ReplaceItemInObject(j, "architectures", cJSON_Parse("[\"MistralForCausalLM\"]"));
    config_set(j, "sliding_window", "4096");
    config_set(j, "head_dim", "32");
    config_set(j, "num_key_value_heads", NULL);
    config_set(j, "rope_theta", NULL);
    config_set(j, "max_position_embeddings", NULL);
    model_config c;
    cinder_error err = {0};
    CHECK_MSG(config_parse(j, &c, &err) == CINDER_OK, "%s", err.msg);
    CHECK_EQ_INT(c.arch, MODEL_ARCH_MISTRAL);
    CHECK_STR_EQ(c.arch_name, "MistralForCausalLM");
    CHECK_EQ_INT(c.sliding_window, 4096);
    CHECK_EQ_INT(c.head_dim, 32); /* explicit, not hidden / heads */
    CHECK_EQ_INT(c.rope_dim, 32);
    CHECK_EQ_INT(c.n_kv_heads, 4); /* defaults to the heads */
    CHECK(c.rope_theta == 10000.0f);
    CHECK_EQ_INT(c.context_len, 131072);
    CHECK_EQ_INT(c.rope_scaling, ROPE_SCALING_NONE);
    CHECK(c.rope_scaling_factor == 1.0f);

    config_set(j, "sliding_window", "null");
    CHECK(config_parse(j, &c, &err) == CINDER_OK && c.sliding_window == 0);
    config_set(j, "sliding_window", "-1");
    CHECK_EQ_INT(config_parse(j, &c, &err), CINDER_ERR_FORMAT);
    CHECK(test_contains(err.msg, "'sliding_window' must be a non-negative integer, got -1"));
    cJSON_Delete(j);

    /* Without "architectures", the model_type says which. */
    j = llama_config();
    config_set(j, "architectures", NULL);
    config_set(j, "model_type", "\"mistral\"");
    CHECK(config_parse(j, &c, &err) == CINDER_OK && c.arch == MODEL_ARCH_MISTRAL);
    cJSON_Delete(j);
}

static void test_mixtral(void) {
    const char *dir = make_dir("tiny-mixtral");
    char dir_copy[512];
    snprintf(dir_copy, sizeof dir_copy, "%s", dir);
    cJSON *j = llama_config();
    cJSON_ReplaceItemInObject(j, "architectures", cJSON_Parse("[\"MixtralForCausalLM\"]"));
    config_set(j, "num_local_experts", "4");
    config_set(j, "num_experts_per_tok", "2");
    config_set(j, "sliding_window", "null");
    config_set(j, "rope_theta", NULL);
    config_set(j, "rms_norm_eps", NULL);
    write_config(dir_copy, j);
    tiny_model *tm = calloc(1, sizeof *tm);
    tiny_build(tm, 2, 4, false);
    tiny_write(tm, dir_copy, 3);

    cinder_error err = {0};
    model *m = load_dir(dir_copy, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        const model_config *c = &m->config;
        CHECK_EQ_INT(c->arch, MODEL_ARCH_MIXTRAL);
        CHECK_EQ_INT(c->n_experts, 4);
        CHECK_EQ_INT(c->n_experts_used, 2);
        CHECK_EQ_INT(c->sliding_window, 0);
        CHECK(c->rope_theta == 1e6f); /* MixtralConfig's default */
        CHECK(c->norm_eps == 1e-5f);
        check_tensors(m, tm);
        const model_tensor *t = model_tensor_find(m, "blk.1.ffn_down.3.weight");
        CHECK(t && t->shape[0] == 64 && t->shape[1] == 128);
        t = model_tensor_find(m, "blk.0.ffn_gate_inp.weight");
        CHECK(t && t->shape[0] == 4 && t->shape[1] == 64);
        CHECK_EQ_INT(model_validate(m, &err), CINDER_OK);
    }
    model_free(m);

    model_config c;
    config_set(j, "num_experts_per_tok", "5");
    CHECK_EQ_INT(config_parse(j, &c, &err), CINDER_ERR_FORMAT);
    CHECK(test_contains(err.msg, "'num_experts_per_tok' (5) exceeds 'num_local_experts' (4)"));

    /* A Mixtral config with fewer experts than the files hold. */
    config_set(j, "num_experts_per_tok", "1");
    config_set(j, "num_local_experts", "2");
    write_config(dir_copy, j);
    m = load_dir(dir_copy, &err);
    CHECK(m == NULL && err.status == CINDER_ERR_FORMAT);
    CHECK_MSG(test_contains(err.msg, "but config.json has 2 experts"), "%s", err.msg);
    cJSON_Delete(j);
    tiny_free(tm);
    free(tm);
}

static void test_rope_scaling(void) {
    static const struct {
        const char *value;
        cinder_status status;
        rope_scaling_type type;
        float factor;
        int original;
        const char *expect; /* a piece of the message */
    } cases[] = {
        {"null", CINDER_OK, ROPE_SCALING_NONE, 1.0f, 0, NULL},
        {"{\"type\": \"linear\", \"factor\": 2.0}", CINDER_OK, ROPE_SCALING_LINEAR, 2.0f, 256,
         NULL},
        {"{\"type\": \"dynamic\", \"factor\": 4}", CINDER_OK, ROPE_SCALING_DYNAMIC, 4.0f, 256,
         NULL},
        {"{\"rope_type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 64,"
         " \"beta_fast\": 32}",
         CINDER_OK, ROPE_SCALING_YARN, 4.0f, 64, NULL},
        {"{\"rope_type\": \"default\"}", CINDER_OK, ROPE_SCALING_NONE, 1.0f, 0, NULL},
        {"{\"rope_type\": \"longrope\", \"factor\": 2.0}", CINDER_ERR_UNSUPPORTED, 0, 0, 0,
         "rope_scaling type 'longrope' is not supported"},
        {"{\"factor\": 2.0}", CINDER_ERR_FORMAT, 0, 0, 0, "'rope_scaling.rope_type'"},
        {"{\"type\": 3}", CINDER_ERR_FORMAT, 0, 0, 0, "'rope_scaling.type' must be a string"},
        {"{\"type\": \"linear\"}", CINDER_ERR_FORMAT, 0, 0, 0, "'rope_scaling.factor'"},
        {"{\"type\": \"linear\", \"factor\": -1}", CINDER_ERR_FORMAT, 0, 0, 0,
         "'rope_scaling.factor' must be a positive number, got -1"},
        {"{\"rope_type\": \"llama3\", \"factor\": 8.0, \"high_freq_factor\": 4.0,"
         " \"original_max_position_embeddings\": 8192}",
         CINDER_ERR_FORMAT, 0, 0, 0, "'rope_scaling.low_freq_factor'"},
        {"{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
         " \"high_freq_factor\": 4.0}",
         CINDER_ERR_FORMAT, 0, 0, 0, "'rope_scaling.original_max_position_embeddings'"},
        {"{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 4.0,"
         " \"high_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192}",
         CINDER_ERR_FORMAT, 0, 0, 0, "must be greater"},
        {"\"linear\"", CINDER_ERR_FORMAT, 0, 0, 0, "'rope_scaling' must be an object or null"},
    };
    cJSON *j = llama_config();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        config_set(j, "rope_scaling", cases[i].value);
        model_config c;
        cinder_error err = {0};
        cinder_status st = config_parse(j, &c, &err);
        CHECK_MSG(st == cases[i].status, "case %zu: %s", i, err.msg);
        if (st != CINDER_OK || cases[i].status != CINDER_OK) {
            CHECK_MSG(test_contains(err.msg, cases[i].expect), "case %zu: '%s'", i, err.msg);
            continue;
        }
        CHECK_EQ_INT(c.rope_scaling, cases[i].type);
        CHECK_MSG(c.rope_scaling_factor == cases[i].factor, "case %zu", i);
        CHECK_EQ_INT(c.rope_original_context, cases[i].original);
    }
    cJSON_Delete(j);
}

/* transformers >= 5 writes theta and scaling together as "rope_parameters", which wins over
 * the older keys. */
static void test_rope_parameters(void) {
    cJSON *j = llama_config();
    config_set(j, "rope_scaling", NULL);
    config_set(j, "rope_theta", "10000");
    config_set(j, "rope_parameters",
               "{\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 8.0,"
               " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
               " \"original_max_position_embeddings\": 8192}");
    model_config c;
    cinder_error err = {0};
    CHECK_MSG(config_parse(j, &c, &err) == CINDER_OK, "%s", err.msg);
    CHECK(c.rope_theta == 500000.0f);
    CHECK_EQ_INT(c.rope_scaling, ROPE_SCALING_LLAMA3);
    CHECK(c.rope_scaling_factor == 8.0f);
    CHECK_EQ_INT(c.rope_original_context, 8192);
    config_set(j, "rope_parameters", "{\"rope_type\": \"default\", \"rope_theta\": 100000}");
    config_set(j, "rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}");
    CHECK_MSG(config_parse(j, &c, &err) == CINDER_OK, "%s", err.msg);
    CHECK(c.rope_theta == 100000.0f);
    CHECK_EQ_INT(c.rope_scaling, ROPE_SCALING_NONE);
    config_set(j, "rope_parameters", "{\"rope_type\": \"longrope\"}");
    CHECK_EQ_INT(config_parse(j, &c, &err), CINDER_ERR_UNSUPPORTED);
    CHECK_MSG(test_contains(err.msg, "rope_parameters type 'longrope'"), "%s", err.msg);
    config_set(j, "rope_parameters", "{\"rope_type\": \"default\", \"rope_theta\": \"big\"}");
    CHECK_EQ_INT(config_parse(j, &c, &err), CINDER_ERR_FORMAT);
    CHECK_MSG(test_contains(err.msg, "'rope_parameters.rope_theta'"), "%s", err.msg);
    cJSON_Delete(j);
}

static void test_config_errors(void) {
    static const struct {
        const char *key, *value; /* value NULL: remove the key */
        cinder_status status;
        const char *expect;
    } cases[] = {
        {"architectures", "[\"Qwen2ForCausalLM\"]", CINDER_ERR_UNSUPPORTED,
         "architecture 'Qwen2ForCausalLM' is not supported"},
        {"architectures", "[]", CINDER_ERR_FORMAT, "'architectures' must be a list"},
        {"architectures", "\"LlamaForCausalLM\"", CINDER_ERR_FORMAT, "'architectures'"},
        {"hidden_size", NULL, CINDER_ERR_FORMAT, "missing required field 'hidden_size'"},
        {"num_attention_heads", "\"nine\"", CINDER_ERR_FORMAT,
         "config.json: 'num_attention_heads' must be a positive integer, got \"nine\""},
        {"hidden_size", "0", CINDER_ERR_FORMAT, "'hidden_size' must be a positive integer, got 0"},
        {"hidden_size", "null", CINDER_ERR_FORMAT, "'hidden_size' must be a positive integer"},
        {"num_hidden_layers", "2.5", CINDER_ERR_FORMAT, "'num_hidden_layers'"},
        {"vocab_size", "1e12", CINDER_ERR_FORMAT, "'vocab_size'"},
        {"intermediate_size", "-128", CINDER_ERR_FORMAT, "'intermediate_size'"},
        {"num_key_value_heads", "true", CINDER_ERR_FORMAT, "'num_key_value_heads'"},
        {"tie_word_embeddings", "\"yes\"", CINDER_ERR_FORMAT,
         "'tie_word_embeddings' must be true or false, got \"yes\""},
        {"rms_norm_eps", "-1e-5", CINDER_ERR_FORMAT, "'rms_norm_eps' must be a positive number"},
        {"rope_theta", "\"1e4\"", CINDER_ERR_FORMAT, "'rope_theta'"},
        {"rope_theta", "1e300", CINDER_ERR_FORMAT, "'rope_theta'"},
        {"rms_norm_eps", "1e-60", CINDER_ERR_FORMAT, "'rms_norm_eps'"},
        {"hidden_act", "\"gelu\"", CINDER_ERR_UNSUPPORTED, "hidden_act 'gelu' is not supported"},
        {"hidden_size", "65", CINDER_ERR_FORMAT, "not a multiple of 'num_attention_heads'"},
        {"quantization_config", "{\"quant_method\": \"fp8\"}", CINDER_ERR_UNSUPPORTED,
         "method 'fp8'"},
        {"partial_rotary_factor", "1.5", CINDER_ERR_FORMAT, "'partial_rotary_factor'"},
        {"partial_rotary_factor", "0.01", CINDER_ERR_FORMAT, "'partial_rotary_factor'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *j = llama_config();
        config_set(j, cases[i].key, cases[i].value);
        model_config c;
        cinder_error err = {0};
        CHECK_MSG(config_parse(j, &c, &err) == cases[i].status, "case %zu: %s", i, err.msg);
        CHECK_MSG(test_contains(err.msg, cases[i].expect), "case %zu: '%s'", i, err.msg);
        cJSON_Delete(j);
    }

    model_config c;
    cinder_error err = {0};
    cJSON *j = llama_config();
    config_set(j, "partial_rotary_factor", "0.5");
    CHECK(config_parse(j, &c, &err) == CINDER_OK && c.rope_dim == 8 && c.head_dim == 16);
    config_set(j, "architectures", NULL);
    config_set(j, "model_type", NULL);
    CHECK_EQ_INT(config_parse(j, &c, &err), CINDER_ERR_FORMAT);
    CHECK(test_contains(err.msg, "missing 'architectures'"));
    cJSON_Delete(j);

    static const char *not_configs[] = {"", "{", "[1]", "{\"a\": 1} x", "nul"};
    for (size_t i = 0; i < sizeof not_configs / sizeof not_configs[0]; i++) {
        CHECK_EQ_INT(
            hf_config_parse(not_configs[i], strlen(not_configs[i]), "config.json", &c, &err),
            CINDER_ERR_FORMAT);
        CHECK_MSG(strncmp(err.msg, "config.json: ", 13) == 0, "'%s'", err.msg);
    }
    /* Not NUL-terminated: the parser must stop at len. */
    char buf[4] = {'{', '}', 'x', 'x'};
    CHECK_EQ_INT(hf_config_parse(buf, 2, "config.json", &c, &err), CINDER_ERR_FORMAT);
    CHECK(test_contains(err.msg, "'architectures'"));
}

/* Random byte changes to a config never crash the parser; what it accepts is sane. */
static void test_config_mutations(void) {
    uint64_t rng = 0x2545f4914f6cdd1dull;
    size_t len = strlen(llama_config_text);
    char *text = malloc(len);
    int accepted = 0;
    for (int iter = 0; iter < 5000; iter++) {
        memcpy(text, llama_config_text, len); /* not NUL-terminated: the parser must stop */
        for (int k = 0; k < 3; k++) {
            rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
            uint64_t r = rng * 2685821657736338717ull;
            text[(r >> 8) % len] = (char)("{}[]\",:-.0123456789enul \\"[(r >> 40) % 25]);
        }
        model_config c;
        cinder_error err = {0};
        if (hf_config_parse(text, len, "config.json", &c, &err) == CINDER_OK) {
            accepted++;
            CHECK(c.d_model > 0 && c.n_heads > 0 && c.n_kv_heads > 0 && c.head_dim > 0);
            CHECK_MSG(c.norm_eps > 0 && c.rope_theta > 0 && c.rope_dim > 0, "%.*s", (int)len, text);
        } else {
            CHECK(strncmp(err.msg, "config.json: ", 13) == 0);
        }
    }
    CHECK(accepted > 0 && accepted < 5000);
    free(text);
}

static void test_name_map(void) {
    static const struct {
        const char *hf, *canon;
        int layer, expert;
    } cases[] = {
        {"model.embed_tokens.weight", "token_embd.weight", -1, -1},
        {"model.norm.weight", "output_norm.weight", -1, -1},
        {"lm_head.weight", "output.weight", -1, -1},
        {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight", 0, -1},
        {"model.layers.12.self_attn.o_proj.weight", "blk.12.attn_output.weight", 12, -1},
        {"model.layers.3.self_attn.q_proj.bias", "blk.3.attn_q.bias", 3, -1},
        {"model.layers.7.mlp.down_proj.weight", "blk.7.ffn_down.weight", 7, -1},
        {"model.layers.1.post_attention_layernorm.weight", "blk.1.ffn_norm.weight", 1, -1},
        {"model.layers.31.block_sparse_moe.gate.weight", "blk.31.ffn_gate_inp.weight", 31, -1},
        {"model.layers.2.block_sparse_moe.experts.7.w1.weight", "blk.2.ffn_gate.7.weight", 2, 7},
        {"model.layers.2.block_sparse_moe.experts.0.w3.weight", "blk.2.ffn_up.0.weight", 2, 0},
        {"model.layers.2.block_sparse_moe.experts.10.w2.weight", "blk.2.ffn_down.10.weight", 2, 10},
        {"model.layers.0.self_attn.rotary_emb.inv_freq", NULL, -1, -1},
        {"model.layers.01.input_layernorm.weight", NULL, -1, -1},
        {"model.layers.x.input_layernorm.weight", NULL, -1, -1},
        {"model.layers.1234567.input_layernorm.weight", NULL, -1, -1},
        {"model.layers.2.block_sparse_moe.experts.1.w4.weight", NULL, -1, -1},
        {"model.layers.2.block_sparse_moe.experts..w1.weight", NULL, -1, -1},
        {"model.layers.", NULL, -1, -1},
        {"", NULL, -1, -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[96];
        int layer, expert;
        bool ok = hf_tensor_name_map(cases[i].hf, out, sizeof out, &layer, &expert);
        CHECK_MSG(ok == (cases[i].canon != NULL), "%s", cases[i].hf);
        if (!ok || !cases[i].canon) continue;
        CHECK_STR_EQ(out, cases[i].canon);
        CHECK_EQ_INT(layer, cases[i].layer);
        CHECK_EQ_INT(expert, cases[i].expert);
    }
    char small[8];
    int layer, expert;
    CHECK(!hf_tensor_name_map("model.norm.weight", small, sizeof small, &layer, &expert));
}

/* Writes a folder with the tiny Llama config and one shard named by the given index text. */
static void folder_error_case(const char *name, const char *index_text, cinder_status status,
                              const char *expect) {
    const char *dir = make_dir(name);
    char dir_copy[512];
    snprintf(dir_copy, sizeof dir_copy, "%s", dir);
    cJSON *j = llama_config();
    write_config(dir_copy, j);
    cJSON_Delete(j);
    tiny_model *tm = calloc(1, sizeof *tm);
    tiny_build(tm, 2, 0, false);
    tiny_write(tm, dir_copy, 2);
    tiny_free(tm);
    free(tm);
    if (index_text) tu_write_text(tu_path(dir_copy, "model.safetensors.index.json"), index_text);

    cinder_error err = {0};
    model *m = load_dir(dir_copy, &err);
    CHECK_MSG(m == NULL, "%s: loaded", name);
    model_free(m);
    CHECK_MSG(err.status == status, "%s: status %d: %s", name, err.status, err.msg);
    CHECK_MSG(test_contains(err.msg, expect), "%s: '%s' lacks '%s'", name, err.msg, expect);
}

static void test_folder_errors(void) {
    folder_error_case("missing-shard",
                      "{\"weight_map\": {\"model.embed_tokens.weight\": "
                      "\"model-00001-of-00002.safetensors\","
                      " \"lm_head.weight\": \"model-00003-of-00003.safetensors\"}}",
                      CINDER_ERR_IO, "shard 'model-00003-of-00003.safetensors'");
    folder_error_case("dotdot", "{\"weight_map\": {\"model.norm.weight\": \"../x.safetensors\"}}",
                      CINDER_ERR_FORMAT, "shard '../x.safetensors' must be a plain file name");
    folder_error_case("slash", "{\"weight_map\": {\"model.norm.weight\": \"/etc/passwd\"}}",
                      CINDER_ERR_FORMAT, "shard '/etc/passwd'");
    folder_error_case("not-in-shard",
                      "{\"weight_map\": {\"model.embed_tokens.weight\": "
                      "\"model-00001-of-00002.safetensors\","
                      " \"model.norm.weight\": \"model-00001-of-00002.safetensors\"}}",
                      CINDER_ERR_FORMAT,
                      "tensor 'model.norm.weight' is listed in shard "
                      "'model-00001-of-00002.safetensors', which does not hold it");
    folder_error_case("bad-index", "{\"weight_map\": ", CINDER_ERR_FORMAT, "not valid JSON");
    folder_error_case("index-array", "[]", CINDER_ERR_FORMAT, "not a JSON object");
    folder_error_case("no-map", "{\"metadata\": {}}", CINDER_ERR_FORMAT, "missing 'weight_map'");
    folder_error_case("map-number", "{\"weight_map\": {\"model.norm.weight\": 1}}",
                      CINDER_ERR_FORMAT, "must map to a file name");

    /* No weights at all; no config.json; a layer the config does not have. */
    const char *dir = make_dir("no-weights");
    char dir_copy[512];
    snprintf(dir_copy, sizeof dir_copy, "%s", dir);
    cJSON *j = llama_config();
    write_config(dir_copy, j);
    cinder_error err = {0};
    CHECK(load_dir(dir_copy, &err) == NULL && err.status == CINDER_ERR_NOT_FOUND);
    CHECK(test_contains(err.msg, "model.safetensors"));
    CHECK(load_dir(tu_path(tmp_root, "nonexistent"), &err) == NULL);
    CHECK_EQ_INT(err.status, CINDER_ERR_IO);
    CHECK(test_contains(err.msg, "config.json"));

    config_set(j, "num_hidden_layers", "1");
    write_config(dir_copy, j);
    cJSON_Delete(j);
    tiny_model *tm = calloc(1, sizeof *tm);
    tiny_build(tm, 2, 0, false);
    tiny_write(tm, dir_copy, 0);
    tiny_free(tm);
    free(tm);
    CHECK(load_dir(dir_copy, &err) == NULL && err.status == CINDER_ERR_FORMAT);
    CHECK_MSG(test_contains(err.msg, "is for layer 1 but config.json has num_hidden_layers = 1"),
              "%s", err.msg);

    /* A corrupt single file names itself. */
    tu_write_text(tu_path(dir_copy, "model.safetensors"), "garbage");
    CHECK(load_dir(dir_copy, &err) == NULL && test_contains(err.msg, "model.safetensors"));
}

int main(void) {
    char root[64];
    snprintf(root, sizeof root, "%s", tu_mkdtemp());
    tmp_root = root;
    test_name_map();
    test_config_errors();
    test_config_mutations();
    test_rope_scaling();
    test_rope_parameters();
    test_mistral();
    test_llama_single();
    test_llama_sharded();
    test_mixtral();
    test_folder_errors();
    tu_rmtree(root);
    return test_summary("test_hf_model");
}
