#define _POSIX_C_SOURCE 200809L
#include "hf_config.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mapped_file.h"

/* The architectures read, with the defaults of their transformers config classes. */
typedef struct hf_arch_info {
    const char *class_name; /* "architectures": [...] */
    const char *model_type; /* "model_type", used when "architectures" is absent */
    model_arch arch;
    int default_context;
    float default_norm_eps;
    float default_rope_theta;
    bool sliding_window; /* reads "sliding_window" */
    bool experts;        /* reads "num_local_experts" / "num_experts_per_tok" */
} hf_arch_info;

static const hf_arch_info hf_archs[] = {
    {"LlamaForCausalLM", "llama", MODEL_ARCH_LLAMA, 2048, 1e-6f, 10000.0f, false, false},
    {"MistralForCausalLM", "mistral", MODEL_ARCH_MISTRAL, 131072, 1e-6f, 10000.0f, true, false},
    {"MixtralForCausalLM", "mixtral", MODEL_ARCH_MIXTRAL, 131072, 1e-5f, 1e6f, true, true},
};
#define HF_N_ARCHS (sizeof hf_archs / sizeof hf_archs[0])

static const struct {
    const char *name;
    rope_scaling_type type;
} hf_rope_types[] = {
    {"default", ROPE_SCALING_NONE},    {"linear", ROPE_SCALING_LINEAR},
    {"dynamic", ROPE_SCALING_DYNAMIC}, {"llama3", ROPE_SCALING_LLAMA3},
    {"yarn", ROPE_SCALING_YARN},
};

/* ---- typed field access ---- */

/* Where fields are read from, for messages: the file and the enclosing key ("rope_scaling."). */
typedef struct hf_ctx {
    const char *what;
    const char *prefix;
    cinder_error *err;
} hf_ctx;

static const char *hf_json_repr(const cJSON *item, char *buf, size_t size) {
    char *s = cJSON_PrintUnformatted(item);
    if (!s) {
        snprintf(buf, size, "(unprintable)");
        return buf;
    }
    if (strlen(s) < size)
        snprintf(buf, size, "%s", s);
    else
        snprintf(buf, size, "%.*s...", (int)(size - 4), s);
    cJSON_free(s);
    return buf;
}

static cinder_status hf_bad(const hf_ctx *c, const char *key, const char *expect,
                            const cJSON *got) {
    char repr[64];
    return cinder_error_set(c->err, CINDER_ERR_FORMAT, "%s: '%s%s' must be %s, got %s", c->what,
                            c->prefix, key, expect, hf_json_repr(got, repr, sizeof repr));
}

static cinder_status hf_missing(const hf_ctx *c, const char *key) {
    return cinder_error_set(c->err, CINDER_ERR_FORMAT, "%s: missing required field '%s%s'", c->what,
                            c->prefix, key);
}

/* An integer >= min. Absent (or null, when not required) gives def. */
static cinder_status hf_get_int(const hf_ctx *c, const cJSON *obj, const char *key, bool required,
                                int def, int min, int *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item) {
        if (required) return hf_missing(c, key);
        *out = def;
        return CINDER_OK;
    }
    if (cJSON_IsNull(item) && !required) {
        *out = def;
        return CINDER_OK;
    }
    double d = cJSON_IsNumber(item) ? item->valuedouble : NAN;
    if (!isfinite(d) || d != floor(d) || d < min || d > INT_MAX)
        return hf_bad(c, key, min > 0 ? "a positive integer" : "a non-negative integer", item);
    *out = (int)d;
    return CINDER_OK;
}

/* A finite number, > 0 when positive. */
static cinder_status hf_get_float(const hf_ctx *c, const cJSON *obj, const char *key, bool required,
                                  float def, bool positive, float *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item || (cJSON_IsNull(item) && !required)) {
        if (!item && required) return hf_missing(c, key);
        *out = def;
        return CINDER_OK;
    }
    double d = cJSON_IsNumber(item) ? item->valuedouble : NAN;
    /* Out of float range, or so small that it rounds to 0: refused, not silently changed. */
    if (!isfinite(d) || (positive && !(d > 0)) || fabs(d) > FLT_MAX ||
        (d != 0 && fabs(d) < FLT_MIN))
        return hf_bad(c, key, positive ? "a positive number" : "a number", item);
    *out = (float)d;
    return CINDER_OK;
}

static cinder_status hf_get_bool(const hf_ctx *c, const cJSON *obj, const char *key, bool def,
                                 bool *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item || cJSON_IsNull(item)) {
        *out = def;
        return CINDER_OK;
    }
    if (!cJSON_IsBool(item)) return hf_bad(c, key, "true or false", item);
    *out = cJSON_IsTrue(item);
    return CINDER_OK;
}

/* A string, or NULL when absent or null. */
static cinder_status hf_get_str(const hf_ctx *c, const cJSON *obj, const char *key,
                                const char **out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!item || cJSON_IsNull(item)) return CINDER_OK;
    if (!cJSON_IsString(item)) return hf_bad(c, key, "a string", item);
    *out = item->valuestring;
    return CINDER_OK;
}

#define HF_TRY(expr)                                                                               \
    do {                                                                                           \
        cinder_status st_ = (expr);                                                                \
        if (st_ != CINDER_OK) return st_;                                                          \
    } while (0)

/* ---- sections ---- */

static cinder_status hf_parse_arch(const hf_ctx *c, const cJSON *root, model_config *cfg,
                                   const hf_arch_info **info) {
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const char *name;
    bool by_class = archs && !cJSON_IsNull(archs);
    if (by_class) {
        if (!cJSON_IsArray(archs) || !cJSON_IsString(archs->child))
            return hf_bad(c, "architectures", "a list of class names", archs);
        name = archs->child->valuestring;
        if (cJSON_GetArraySize(archs) > 1)
            LOG_WARN("%s: several architectures listed; using the first, %s", c->what, name);
    } else {
        HF_TRY(hf_get_str(c, root, "model_type", &name));
        if (!name)
            return cinder_error_set(c->err, CINDER_ERR_FORMAT,
                                    "%s: missing 'architectures' (and no 'model_type')", c->what);
    }
    for (size_t i = 0; i < HF_N_ARCHS; i++) {
        if (strcmp(name, by_class ? hf_archs[i].class_name : hf_archs[i].model_type) == 0) {
            *info = &hf_archs[i];
            cfg->arch = hf_archs[i].arch;
            snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", name);
            return CINDER_OK;
        }
    }
    return cinder_error_set(c->err, CINDER_ERR_UNSUPPORTED,
                            "%s: %s '%s' is not supported (cinder reads LlamaForCausalLM, "
                            "MistralForCausalLM and MixtralForCausalLM)",
                            c->what, by_class ? "architecture" : "model_type", name);
}

/* RoPE theta and scaling. transformers >= 5 writes them together as "rope_parameters"
 * ({"rope_type": "default"|"llama3"|..., "rope_theta": ..., "factor": ...}); older files have
 * "rope_theta" at the top and "rope_scaling" apart. The newer object wins when both exist. */
static cinder_status hf_parse_rope_scaling(const hf_ctx *top, const cJSON *root,
                                           model_config *cfg) {
    cfg->rope_scaling = ROPE_SCALING_NONE;
    cfg->rope_scaling_factor = 1.0f;
    const char *key = "rope_parameters", *prefix = "rope_parameters.";
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!rs || cJSON_IsNull(rs)) {
        key = "rope_scaling";
        prefix = "rope_scaling.";
        rs = cJSON_GetObjectItemCaseSensitive(root, key);
    }
    if (!rs || cJSON_IsNull(rs)) return CINDER_OK;
    if (!cJSON_IsObject(rs)) return hf_bad(top, key, "an object or null", rs);

    hf_ctx c = {top->what, prefix, top->err};
    if (cJSON_GetObjectItemCaseSensitive(rs, "rope_theta"))
        HF_TRY(hf_get_float(&c, rs, "rope_theta", true, 0, true, &cfg->rope_theta));
    const char *type;
    const char *type_key = cJSON_GetObjectItemCaseSensitive(rs, "rope_type") ? "rope_type" : "type";
    HF_TRY(hf_get_str(&c, rs, type_key, &type));
    if (!type) return hf_missing(&c, "rope_type");
    size_t i = 0;
    while (i < sizeof hf_rope_types / sizeof hf_rope_types[0] &&
           strcmp(type, hf_rope_types[i].name))
        i++;
    if (i == sizeof hf_rope_types / sizeof hf_rope_types[0])
        return cinder_error_set(top->err, CINDER_ERR_UNSUPPORTED,
                                "%s: %s type '%s' is not supported (cinder reads default, "
                                "linear, dynamic, llama3 and yarn)",
                                top->what, key, type);
    cfg->rope_scaling = hf_rope_types[i].type;
    if (cfg->rope_scaling == ROPE_SCALING_NONE) return CINDER_OK;

    HF_TRY(hf_get_float(&c, rs, "factor", true, 1.0f, true, &cfg->rope_scaling_factor));
    bool llama3 = cfg->rope_scaling == ROPE_SCALING_LLAMA3;
    HF_TRY(hf_get_int(&c, rs, "original_max_position_embeddings", llama3, cfg->context_len, 1,
                      &cfg->rope_original_context));
    if (llama3) {
        HF_TRY(hf_get_float(&c, rs, "low_freq_factor", true, 0, true, &cfg->rope_low_freq_factor));
        HF_TRY(
            hf_get_float(&c, rs, "high_freq_factor", true, 0, true, &cfg->rope_high_freq_factor));
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
            return cinder_error_set(top->err, CINDER_ERR_FORMAT,
                                    "%s: '%shigh_freq_factor' (%g) must be greater than "
                                    "'%slow_freq_factor' (%g)",
                                    top->what, prefix, cfg->rope_high_freq_factor, prefix,
                                    cfg->rope_low_freq_factor);
    }
    return CINDER_OK;
}

static cinder_status hf_parse_root(const hf_ctx *c, const cJSON *root, model_config *cfg) {
    const hf_arch_info *info = NULL;
    HF_TRY(hf_parse_arch(c, root, cfg, &info));

    const char *act;
    HF_TRY(hf_get_str(c, root, "hidden_act", &act));
    if (act && strcmp(act, "silu") != 0)
        return cinder_error_set(c->err, CINDER_ERR_UNSUPPORTED,
                                "%s: hidden_act '%s' is not supported (cinder reads silu)", c->what,
                                act);

    const cJSON *quant = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (quant && !cJSON_IsNull(quant)) {
        const cJSON *method = cJSON_GetObjectItemCaseSensitive(quant, "quant_method");
        return cinder_error_set(c->err, CINDER_ERR_UNSUPPORTED,
                                "%s: quantized checkpoints ('quantization_config', method '%s') "
                                "are not supported; cinder reads F32, F16 and BF16 weights",
                                c->what, cJSON_IsString(method) ? method->valuestring : "?");
    }

    HF_TRY(hf_get_int(c, root, "hidden_size", true, 0, 1, &cfg->d_model));
    HF_TRY(hf_get_int(c, root, "num_hidden_layers", true, 0, 1, &cfg->n_layers));
    HF_TRY(hf_get_int(c, root, "num_attention_heads", true, 0, 1, &cfg->n_heads));
    HF_TRY(hf_get_int(c, root, "num_key_value_heads", false, cfg->n_heads, 1, &cfg->n_kv_heads));
    HF_TRY(hf_get_int(c, root, "intermediate_size", true, 0, 1, &cfg->d_ff));
    HF_TRY(hf_get_int(c, root, "vocab_size", true, 0, 1, &cfg->vocab_size));
    HF_TRY(hf_get_int(c, root, "max_position_embeddings", false, info->default_context, 1,
                      &cfg->context_len));

    const cJSON *jhead_dim = cJSON_GetObjectItemCaseSensitive(root, "head_dim");
    if (jhead_dim && !cJSON_IsNull(jhead_dim)) {
        HF_TRY(hf_get_int(c, root, "head_dim", true, 0, 1, &cfg->head_dim));
    } else if (cfg->d_model % cfg->n_heads != 0) {
        return cinder_error_set(c->err, CINDER_ERR_FORMAT,
                                "%s: 'hidden_size' (%d) is not a multiple of "
                                "'num_attention_heads' (%d) and 'head_dim' is not given",
                                c->what, cfg->d_model, cfg->n_heads);
    } else {
        cfg->head_dim = cfg->d_model / cfg->n_heads;
    }

    HF_TRY(
        hf_get_float(c, root, "rms_norm_eps", false, info->default_norm_eps, true, &cfg->norm_eps));
    HF_TRY(hf_get_float(c, root, "rope_theta", false, info->default_rope_theta, true,
                        &cfg->rope_theta));
    cfg->rope_layout = ROPE_LAYOUT_HALF;
    cfg->rope_dim = cfg->head_dim;
    const cJSON *jprf = cJSON_GetObjectItemCaseSensitive(root, "partial_rotary_factor");
    if (jprf && !cJSON_IsNull(jprf)) {
        float f;
        HF_TRY(hf_get_float(c, root, "partial_rotary_factor", true, 1.0f, true, &f));
        int dim = (int)((double)cfg->head_dim * f);
        if (f > 1.0f || dim < 2 || dim % 2 != 0)
            return cinder_error_set(c->err, CINDER_ERR_FORMAT,
                                    "%s: 'partial_rotary_factor' %g gives %d rotated dimensions "
                                    "of head_dim %d (needs an even number, at least 2)",
                                    c->what, f, dim, cfg->head_dim);
        cfg->rope_dim = dim;
    }
    HF_TRY(hf_parse_rope_scaling(c, root, cfg));

    HF_TRY(hf_get_bool(c, root, "tie_word_embeddings", false, &cfg->tied_embeddings));
    HF_TRY(hf_get_bool(c, root, "attention_bias", false, &cfg->attention_bias));
    HF_TRY(hf_get_bool(c, root, "mlp_bias", false, &cfg->mlp_bias));

    if (info->sliding_window)
        HF_TRY(hf_get_int(c, root, "sliding_window", false, 0, 0, &cfg->sliding_window));
    if (info->experts) {
        HF_TRY(hf_get_int(c, root, "num_local_experts", false, 8, 1, &cfg->n_experts));
        HF_TRY(hf_get_int(c, root, "num_experts_per_tok", false, 2, 1, &cfg->n_experts_used));
        if (cfg->n_experts_used > cfg->n_experts)
            return cinder_error_set(c->err, CINDER_ERR_FORMAT,
                                    "%s: 'num_experts_per_tok' (%d) exceeds 'num_local_experts' "
                                    "(%d)",
                                    c->what, cfg->n_experts_used, cfg->n_experts);
    }
    return CINDER_OK;
}

cinder_status hf_config_parse(const char *json, size_t len, const char *what, model_config *cfg,
                              cinder_error *err) {
    memset(cfg, 0, sizeof *cfg);
    /* A NUL-terminated copy keeps cJSON inside the buffer whatever the input. */
    char *text = malloc(len + 1);
    if (!text) return cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", what);
    if (len) memcpy(text, json, len);
    text[len] = '\0';

    cinder_status st = CINDER_OK;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        st = cinder_error_set(err, CINDER_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)",
                              what, at);
        goto done;
    }
    for (const char *p = end; p < text + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st =
                cinder_error_set(err, CINDER_ERR_FORMAT, "%s: data after the JSON value (byte %zu)",
                                 what, (size_t)(p - text));
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = cinder_error_set(err, CINDER_ERR_FORMAT, "%s: must be a JSON object", what);
        goto done;
    }
    hf_ctx c = {what, "", err};
    st = hf_parse_root(&c, root, cfg);

done:
    cJSON_Delete(root);
    free(text);
    if (st != CINDER_OK) memset(cfg, 0, sizeof *cfg);
    return st;
}

cinder_status hf_config_load(const char *path, model_config *cfg, cinder_error *err) {
    mapped_file mf;
    cinder_status st = mapped_file_open(path, &mf, err);
    if (st != CINDER_OK) {
        memset(cfg, 0, sizeof *cfg);
        return st;
    }
    st = hf_config_parse((const char *)mf.data, mf.size, path, cfg, err);
    mapped_file_close(&mf);
    return st;
}

/* ---- tensor names ---- */

typedef struct hf_name_pair {
    const char *hf, *canon;
} hf_name_pair;

static const hf_name_pair hf_global_names[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

/* After "model.layers.N." */
static const hf_name_pair hf_layer_names[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"mlp.gate_proj.bias", "ffn_gate.bias"},
    {"mlp.up_proj.bias", "ffn_up.bias"},
    {"mlp.down_proj.bias", "ffn_down.bias"},
    {"block_sparse_moe.gate.weight", "ffn_gate_inp.weight"},
};

/* After "model.layers.N.block_sparse_moe.experts.E.": the canonical stem. */
static const hf_name_pair hf_expert_names[] = {
    {"w1.weight", "ffn_gate"},
    {"w3.weight", "ffn_up"},
    {"w2.weight", "ffn_down"},
};

/* Reads a decimal index (no sign, no leading zeros, below 10^6) followed by '.'; returns the
 * text after the '.', or NULL. */
static const char *hf_parse_index(const char *s, int *out) {
    int v = 0, n = 0;
    while (s[n] >= '0' && s[n] <= '9' && n < 6) v = v * 10 + (s[n++] - '0');
    if (n == 0 || s[n] != '.' || (n > 1 && s[0] == '0')) return NULL;
    *out = v;
    return s + n + 1;
}

static bool hf_put(char *out, size_t out_size, int len) {
    return len >= 0 && (size_t)len < out_size;
}

bool hf_tensor_name_map(const char *hf_name, char *out, size_t out_size, int *layer, int *expert) {
    *layer = -1;
    *expert = -1;
    for (size_t i = 0; i < sizeof hf_global_names / sizeof hf_global_names[0]; i++)
        if (strcmp(hf_name, hf_global_names[i].hf) == 0)
            return hf_put(out, out_size, snprintf(out, out_size, "%s", hf_global_names[i].canon));

    static const char layers[] = "model.layers.";
    if (strncmp(hf_name, layers, sizeof layers - 1) != 0) return false;
    int n;
    const char *rest = hf_parse_index(hf_name + sizeof layers - 1, &n);
    if (!rest) return false;
    for (size_t i = 0; i < sizeof hf_layer_names / sizeof hf_layer_names[0]; i++) {
        if (strcmp(rest, hf_layer_names[i].hf) == 0) {
            *layer = n;
            return hf_put(out, out_size,
                          snprintf(out, out_size, "blk.%d.%s", n, hf_layer_names[i].canon));
        }
    }

    static const char experts[] = "block_sparse_moe.experts.";
    if (strncmp(rest, experts, sizeof experts - 1) != 0) return false;
    int e;
    rest = hf_parse_index(rest + sizeof experts - 1, &e);
    if (!rest) return false;
    for (size_t i = 0; i < sizeof hf_expert_names / sizeof hf_expert_names[0]; i++) {
        if (strcmp(rest, hf_expert_names[i].hf) == 0) {
            *layer = n;
            *expert = e;
            return hf_put(
                out, out_size,
                snprintf(out, out_size, "blk.%d.%s.%d.weight", n, hf_expert_names[i].canon, e));
        }
    }
    return false;
}
