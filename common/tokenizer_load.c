/* tokenizer_load.c - builds a tokenizer from GGUF metadata (tokenizer.ggml.*) or from a
 * Hugging Face tokenizer.json (+ tokenizer_config.json beside it).
 *
 * Only byte-level BPE is accepted: GGUF model "gpt2", tokenizer.json "BPE" with a ByteLevel
 * pre-tokenizer. Anything else (SentencePiece, WordPiece, normalizers cinder lacks) is refused
 * by name rather than tokenized almost right. */
#define _POSIX_C_SOURCE 200809L /* strdup, strndup */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "gguf.h"
#include "log.h"
#include "tokenizer_impl.h"

static cinder_status pre_builtin(tokenizer *t, tok_pre kind, cinder_error *err) {
    cinder_status st = CINDER_OK;
    if (kind == TOK_PRE_SMOLLM)
        st = tok_add_split(t, TOK_RE_DIGIT, false, TOK_SPLIT_ISOLATED, false, false, err);
    if (st == CINDER_OK)
        st = tok_add_split(t, kind == TOK_PRE_LLAMA3 ? TOK_RE_LLAMA3 : TOK_RE_GPT2, false,
                           TOK_SPLIT_ISOLATED, false, false, err);
    t->pre = kind;
    return st;
}

/* ---------------------------------------------------------------------------------------------
 * GGUF
 * ------------------------------------------------------------------------------------------- */

/* llama.cpp's names for the pre-tokenizers cinder has. */
static const struct {
    const char *name;
    tok_pre kind;
} gguf_pres[] = {
    {"default", TOK_PRE_GPT2},     {"gpt2", TOK_PRE_GPT2},     {"smollm", TOK_PRE_SMOLLM},
    {"llama-bpe", TOK_PRE_LLAMA3}, {"llama3", TOK_PRE_LLAMA3}, {"llama-v3", TOK_PRE_LLAMA3},
};

/* An optional integer key: *out unchanged when absent. */
static cinder_status gguf_opt_int(const gguf_file *g, const char *key, int32_t *out,
                                  cinder_error *err) {
    int64_t v;
    cinder_status st = gguf_get_int(g, key, &v, err);
    if (st == CINDER_ERR_NOT_FOUND) return CINDER_OK;
    if (st != CINDER_OK) return st;
    if (v < -1 || v > INT32_MAX)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s = %lld is out of range", key,
                                (long long)v);
    *out = (int32_t)v;
    return CINDER_OK;
}

static bool gguf_is_int_type(gguf_type ty) {
    return ty == GGUF_TYPE_UINT8 || ty == GGUF_TYPE_INT8 || ty == GGUF_TYPE_UINT16 ||
           ty == GGUF_TYPE_INT16 || ty == GGUF_TYPE_UINT32 || ty == GGUF_TYPE_INT32 ||
           ty == GGUF_TYPE_UINT64 || ty == GGUF_TYPE_INT64;
}

tokenizer *tok_from_gguf(const struct gguf_file *g, cinder_error *err) {
    tokenizer *t = NULL;
    cinder_error scratch;
    gguf_str model, pre = {"default", 7};
    gguf_type ety;
    uint64_t n_tok, n_merges, n_types = 0;

    if (gguf_get_str(g, "tokenizer.ggml.model", &model, err) != CINDER_OK) goto fail;
    if (!gguf_str_eq(model, "gpt2")) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                         "tokenizer.ggml.model '%.*s' is not supported: cinder reads byte-level "
                         "BPE ('gpt2') only%s",
                         (int)model.len, model.ptr,
                         gguf_str_eq(model, "llama") ? " (this is SentencePiece)" : "");
        goto fail;
    }
    cinder_status st = gguf_get_str(g, "tokenizer.ggml.pre", &pre, &scratch);
    if (st != CINDER_OK && st != CINDER_ERR_NOT_FOUND) {
        *err = scratch;
        goto fail;
    }
    int kind = -1;
    for (size_t i = 0; i < sizeof(gguf_pres) / sizeof(gguf_pres[0]); i++)
        if (gguf_str_eq(pre, gguf_pres[i].name)) kind = (int)i;
    if (kind < 0) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                         "tokenizer.ggml.pre '%.*s' is not supported (known: gpt2, smollm, "
                         "llama-bpe)",
                         (int)pre.len, pre.ptr);
        goto fail;
    }

    if (gguf_get_arr(g, "tokenizer.ggml.tokens", &ety, &n_tok, err) != CINDER_OK) goto fail;
    if (ety != GGUF_TYPE_STRING || n_tok == 0 || n_tok > INT32_MAX) {
        cinder_error_set(err, CINDER_ERR_FORMAT,
                         "tokenizer.ggml.tokens: expected a non-empty array of strings, got %llu "
                         "of %s",
                         (unsigned long long)n_tok, gguf_type_name(ety));
        goto fail;
    }
    const gguf_kv *tokens = gguf_kv_find(g, "tokenizer.ggml.tokens");
    const gguf_kv *types = gguf_kv_find(g, "tokenizer.ggml.token_type");
    if (types) {
        if (gguf_get_arr(g, "tokenizer.ggml.token_type", &ety, &n_types, err) != CINDER_OK)
            goto fail;
        if (!gguf_is_int_type(ety) || n_types != n_tok) {
            cinder_error_set(err, CINDER_ERR_FORMAT,
                             "tokenizer.ggml.token_type: expected %llu integers, got %llu of %s",
                             (unsigned long long)n_tok, (unsigned long long)n_types,
                             gguf_type_name(ety));
            goto fail;
        }
    }
    if (gguf_get_arr(g, "tokenizer.ggml.merges", &ety, &n_merges, err) != CINDER_OK) goto fail;
    if (ety != GGUF_TYPE_STRING) {
        cinder_error_set(err, CINDER_ERR_FORMAT, "tokenizer.ggml.merges: expected strings, got %s",
                         gguf_type_name(ety));
        goto fail;
    }

    t = tok_alloc((int32_t)n_tok, err);
    if (!t) goto fail;
    uint64_t cursor = 0;
    for (uint64_t i = 0; i < n_tok; i++) {
        gguf_str s = gguf_arr_str_next(tokens, &cursor);
        int64_t ty = types ? gguf_arr_int(types, i) : TOK_TYPE_NORMAL;
        if (ty < TOK_TYPE_NORMAL || ty > TOK_TYPE_BYTE) ty = TOK_TYPE_NORMAL; /* 0: undefined */
        if (tok_set_token(t, (int32_t)i, s.ptr, s.len, (tok_type)ty, err) != CINDER_OK) goto fail;
    }
    if (tok_index(t, n_merges, err) != CINDER_OK) goto fail;
    const gguf_kv *merges = gguf_kv_find(g, "tokenizer.ggml.merges");
    cursor = 0;
    size_t skipped = 0;
    for (uint64_t i = 0; i < n_merges; i++) {
        gguf_str s = gguf_arr_str_next(merges, &cursor);
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        if (!sp) {
            cinder_error_set(err, CINDER_ERR_FORMAT,
                             "tokenizer.ggml.merges[%llu] '%.*s' is not two tokens",
                             (unsigned long long)i, (int)s.len, s.ptr);
            goto fail;
        }
        size_t ll = (size_t)(sp - s.ptr);
        if (!tok_add_merge(t, (int32_t)i, s.ptr, ll, sp + 1, s.len - ll - 1)) skipped++;
    }
    if (skipped) LOG_DEBUG("%zu merges skipped (a part or the result is not a token)", skipped);

    for (int32_t id = 0; id < t->n_vocab; id++) {
        tok_type ty = (tok_type)t->type[id];
        if (ty != TOK_TYPE_CONTROL && ty != TOK_TYPE_USER_DEFINED) continue;
        tok_special sp = {.id = id, .control = ty == TOK_TYPE_CONTROL};
        if (tok_add_special(t, sp, err) != CINDER_OK) goto fail;
    }
    if (gguf_opt_int(g, "tokenizer.ggml.bos_token_id", &t->bos, err) != CINDER_OK ||
        gguf_opt_int(g, "tokenizer.ggml.eos_token_id", &t->eos, err) != CINDER_OK ||
        gguf_opt_int(g, "tokenizer.ggml.padding_token_id", &t->pad, err) != CINDER_OK)
        goto fail;
    st = gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, &scratch);
    if (st != CINDER_OK && st != CINDER_ERR_NOT_FOUND) {
        *err = scratch;
        goto fail;
    }
    if (st == CINDER_ERR_NOT_FOUND) t->add_bos = false; /* llama.cpp's default for gpt2 */
    gguf_str tpl;
    st = gguf_get_str(g, "tokenizer.chat_template", &tpl, &scratch);
    if (st == CINDER_OK) {
        t->chat_template = strndup(tpl.ptr, tpl.len);
        if (!t->chat_template) {
            cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for the chat template");
            goto fail;
        }
    } else if (st != CINDER_ERR_NOT_FOUND) {
        *err = scratch;
        goto fail;
    }

    snprintf(t->pre_name, sizeof(t->pre_name), "%.*s", (int)pre.len, pre.ptr);
    if (pre_builtin(t, gguf_pres[kind].kind, err) != CINDER_OK) goto fail;
    t->ignore_merges = t->pre == TOK_PRE_LLAMA3; /* llama.cpp does the same */
    if (tok_finish(t, err) != CINDER_OK) goto fail;
    LOG_DEBUG("gguf tokenizer: %d tokens, %zu merges, pre '%s', %d special", t->n_vocab,
              t->n_merges, t->pre_name, t->n_specials);
    return t;
fail:
    cinder_error_prefix(err, "tokenizer");
    tok_free(t);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * tokenizer.json
 * ------------------------------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len, cinder_error *err) {
    FILE *f = fopen(path, "rb");
    char *data = NULL;
    if (!f) {
        cinder_error_set(err, CINDER_ERR_IO, "%s: cannot open", path);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0) goto io;
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) goto io;
    data = malloc((size_t)size + 1);
    if (!data) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory (%ld bytes)", path, size);
        fclose(f);
        return NULL;
    }
    if (fread(data, 1, (size_t)size, f) != (size_t)size) goto io;
    fclose(f);
    data[size] = '\0';
    *len = (size_t)size;
    return data;
io:
    cinder_error_set(err, CINDER_ERR_IO, "%s: read failed", path);
    free(data);
    fclose(f);
    return NULL;
}

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool jbool(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* A non-negative integer id, or -1. */
static int64_t jid(const cJSON *v) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > INT32_MAX ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return -1;
    return (int64_t)v->valuedouble;
}

static const struct {
    const char *name;
    tok_split_behavior behavior;
} json_behaviors[] = {
    {"Isolated", TOK_SPLIT_ISOLATED},
    {"Removed", TOK_SPLIT_REMOVED},
    {"MergedWithPrevious", TOK_SPLIT_MERGED_WITH_PREVIOUS},
    {"MergedWithNext", TOK_SPLIT_MERGED_WITH_NEXT},
    {"Contiguous", TOK_SPLIT_CONTIGUOUS},
};

/* Adds the steps of a pre_tokenizer object; *byte_level set when a ByteLevel step is seen. */
static cinder_status json_pre(tokenizer *t, const cJSON *p, bool *byte_level, cinder_error *err) {
    if (!p || cJSON_IsNull(p)) return CINDER_OK;
    const char *type = jstr(p, "type");
    if (!type) return cinder_error_set(err, CINDER_ERR_FORMAT, "pre_tokenizer without a type");
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(p, "pretokenizers")) {
            cinder_status st = json_pre(t, c, byte_level, err);
            if (st != CINDER_OK) return st;
        }
        return CINDER_OK;
    }
    if (strcmp(type, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String");
        const char *beh = jstr(p, "behavior");
        int b = -1;
        for (size_t i = 0; beh && i < sizeof(json_behaviors) / sizeof(json_behaviors[0]); i++)
            if (strcmp(beh, json_behaviors[i].name) == 0) b = (int)i;
        if ((!re && !lit) || b < 0)
            return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                    "Split pre-tokenizer: needs a Regex or String pattern and a "
                                    "known behavior (got '%s')",
                                    beh ? beh : "none");
        return tok_add_split(t, re ? re : lit, !re, json_behaviors[b].behavior,
                             jbool(p, "invert", false), false, err);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        bool use_regex = jbool(p, "use_regex", true), prefix = jbool(p, "add_prefix_space", true);
        *byte_level = true;
        if (!use_regex && !prefix) return CINDER_OK;
        return tok_add_split(t, use_regex ? TOK_RE_GPT2 : NULL, false, TOK_SPLIT_ISOLATED, false,
                             prefix, err);
    }
    if (strcmp(type, "Digits") == 0) {
        bool each = jbool(p, "individual_digits", false);
        return tok_add_split(t, TOK_RE_DIGIT, false,
                             each ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS, false, false, err);
    }
    return cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "pre-tokenizer '%s' is not supported",
                            type);
}

/* Names the pre-tokenizer when it is one of the built-in ones. */
static void json_pre_kind(tokenizer *t) {
    const char *p[3] = {0};
    int n = 0;
    bool plain = true;
    for (int i = 0; i < t->n_splits; i++) {
        const tok_split *s = &t->splits[i];
        if (s->add_prefix_space || s->invert || s->behavior != TOK_SPLIT_ISOLATED) plain = false;
        if (s->pattern && n < 3) p[n] = s->pattern;
        if (s->pattern) n++;
    }
    t->pre = TOK_PRE_CUSTOM;
    if (plain && n == 1 && strcmp(p[0], TOK_RE_GPT2) == 0) t->pre = TOK_PRE_GPT2;
    if (plain && n == 1 && strcmp(p[0], TOK_RE_LLAMA3) == 0) t->pre = TOK_PRE_LLAMA3;
    if (plain && n == 2 && strcmp(p[0], TOK_RE_DIGIT) == 0 && strcmp(p[1], TOK_RE_GPT2) == 0)
        t->pre = TOK_PRE_SMOLLM;
    static const char *const names[] = {"gpt2", "smollm", "llama-bpe", "custom"};
    snprintf(t->pre_name, sizeof(t->pre_name), "%s", names[t->pre]);
}

/* BOS from a TemplateProcessing post-processor (maybe inside a Sequence) that puts a special
 * token before the text. */
static const char *json_post_bos(const cJSON *p) {
    const char *type = jstr(p, "type");
    if (!type) return NULL;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(p, "processors")) {
            const char *b = json_post_bos(c);
            if (b) return b;
        }
        return NULL;
    }
    if (strcmp(type, "TemplateProcessing") != 0) return NULL;
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(p, "single"), 0);
    return jstr(cJSON_GetObjectItemCaseSensitive(first, "SpecialToken"), "id");
}

/* A token named in tokenizer_config.json: a string or {"content": ...}. */
static int32_t config_token(const tokenizer *t, const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : jstr(v, "content");
    return s ? tok_token_id(t, s) : -1;
}

/* Reads tokenizer_config.json from the folder of path, when there is one. */
static cinder_status json_config(tokenizer *t, const char *path, cinder_error *err) {
    const char *slash = strrchr(path, '/');
    size_t dir = slash ? (size_t)(slash - path + 1) : 0;
    char cfg_path[4096];
    if (snprintf(cfg_path, sizeof(cfg_path), "%.*stokenizer_config.json", (int)dir, path) >=
        (int)sizeof(cfg_path))
        return cinder_error_set(err, CINDER_ERR_ARG, "%s: path too long", path);
    FILE *f = fopen(cfg_path, "rb");
    if (!f) return CINDER_OK;
    fclose(f);
    size_t len;
    char *data = read_file(cfg_path, &len, err);
    if (!data) return err ? err->status : CINDER_ERR_IO;
    cJSON *cfg = cJSON_ParseWithLength(data, len);
    free(data);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s: not a JSON object", cfg_path);
    }
    int32_t id;
    if ((id = config_token(t, cfg, "bos_token")) >= 0) t->bos = id;
    if ((id = config_token(t, cfg, "eos_token")) >= 0) t->eos = id;
    if ((id = config_token(t, cfg, "pad_token")) >= 0) t->pad = id;
    t->add_bos = jbool(cfg, "add_bos_token", t->add_bos);
    /* chat_template: a string, or a list of {name, template} (take "default"). */
    const cJSON *tpl = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    const char *text = cJSON_IsString(tpl) ? tpl->valuestring : NULL;
    const cJSON *c;
    if (cJSON_IsArray(tpl)) {
        cJSON_ArrayForEach(c, tpl) {
            const char *name = jstr(c, "name");
            if (!text || (name && strcmp(name, "default") == 0)) text = jstr(c, "template");
        }
    }
    cinder_status st = CINDER_OK;
    if (text && !(t->chat_template = strdup(text)))
        st = cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for the chat template");
    cJSON_Delete(cfg);
    return st;
}

/* Checks the parts of tokenizer.json cinder does not implement. */
static cinder_status json_check(const cJSON *root, const cJSON *model, cinder_error *err) {
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE") != 0)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "model type '%s' is not supported (byte-level BPE only)", type);
    if (jbool(model, "byte_fallback", false))
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "BPE with byte_fallback (SentencePiece style) is not supported");
    const char *pre = jstr(model, "continuing_subword_prefix"),
               *suf = jstr(model, "end_of_word_suffix");
    if ((pre && *pre) || (suf && *suf))
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "BPE with a subword prefix or suffix is not supported");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    const char *ntype = jstr(norm, "type");
    if (ntype && strcmp(ntype, "NFC") == 0) {
        LOG_WARN("tokenizer.json: NFC normalizer ignored (text is assumed to be NFC already)");
    } else if (ntype && !(strcmp(ntype, "Sequence") == 0 &&
                          cJSON_GetArraySize(cJSON_GetObjectItem(norm, "normalizers")) == 0)) {
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "normalizer '%s' is not supported",
                                ntype);
    }
    return CINDER_OK;
}

tokenizer *tok_from_json(const char *path, cinder_error *err) {
    tokenizer *t = NULL;
    cJSON *root = NULL;
    size_t len;
    char *data = read_file(path, &len, err);
    if (!data) return NULL;
    root = cJSON_ParseWithLength(data, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= data && at <= data + len ? (size_t)(at - data) : 0;
        cinder_error_set(err, CINDER_ERR_FORMAT, "not valid JSON (near byte %zu)", off);
        goto fail;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (json_check(root, model, err) != CINDER_OK) goto fail;
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        cinder_error_set(err, CINDER_ERR_FORMAT, "no model.vocab object or model.merges array");
        goto fail;
    }

    int64_t max_id = -1;
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab) {
        int64_t id = jid(v);
        if (id < 0) {
            cinder_error_set(err, CINDER_ERR_FORMAT, "model.vocab['%s']: bad id", v->string);
            goto fail;
        }
        if (id > max_id) max_id = id;
    }
    cJSON_ArrayForEach(v, added) {
        int64_t id = jid(cJSON_GetObjectItemCaseSensitive(v, "id"));
        if (id < 0 || !jstr(v, "content")) {
            cinder_error_set(err, CINDER_ERR_FORMAT,
                             "added_tokens: an entry without id or content");
            goto fail;
        }
        if (id > max_id) max_id = id;
    }
    t = tok_alloc((int32_t)(max_id + 1), err);
    if (!t) goto fail;
    cJSON_ArrayForEach(v, vocab) {
        if (tok_set_token(t, (int32_t)jid(v), v->string, strlen(v->string), TOK_TYPE_NORMAL, err) !=
            CINDER_OK)
            goto fail;
    }
    cJSON_ArrayForEach(v, added) {
        const char *s = jstr(v, "content");
        tok_type ty = jbool(v, "special", false) ? TOK_TYPE_CONTROL : TOK_TYPE_USER_DEFINED;
        int32_t id = (int32_t)jid(cJSON_GetObjectItemCaseSensitive(v, "id"));
        if (tok_set_token(t, id, s, strlen(s), ty, err) != CINDER_OK) goto fail;
    }
    if (tok_index(t, (size_t)cJSON_GetArraySize(merges), err) != CINDER_OK) goto fail;

    /* Merges: "left right" strings, or [left, right] pairs in newer files. */
    int32_t rank = 0;
    size_t skipped = 0;
    cJSON_ArrayForEach(v, merges) {
        const char *l = NULL, *r = NULL, *sp = NULL;
        size_t ll = 0;
        if (cJSON_IsString(v) && v->valuestring[0] && (sp = strchr(v->valuestring + 1, ' '))) {
            l = v->valuestring;
            ll = (size_t)(sp - l);
            r = sp + 1;
        } else if (cJSON_GetArraySize(v) == 2 && cJSON_IsString(cJSON_GetArrayItem(v, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(v, 1))) {
            l = cJSON_GetArrayItem(v, 0)->valuestring;
            ll = strlen(l);
            r = cJSON_GetArrayItem(v, 1)->valuestring;
        } else {
            cinder_error_set(err, CINDER_ERR_FORMAT, "model.merges[%d] is not two tokens", rank);
            goto fail;
        }
        if (!tok_add_merge(t, rank, l, ll, r, strlen(r))) skipped++;
        rank++;
    }
    if (skipped) LOG_DEBUG("%zu merges skipped (a part or the result is not a token)", skipped);

    cJSON_ArrayForEach(v, added) {
        tok_special sp = {
            .id = (int32_t)jid(cJSON_GetObjectItemCaseSensitive(v, "id")),
            .control = jbool(v, "special", false),
            .lstrip = jbool(v, "lstrip", false),
            .rstrip = jbool(v, "rstrip", false),
            .single_word = jbool(v, "single_word", false),
        };
        if (tok_add_special(t, sp, err) != CINDER_OK) goto fail;
    }

    bool byte_level = false;
    if (json_pre(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), &byte_level, err) !=
        CINDER_OK)
        goto fail;
    if (!byte_level) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                         "not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer)");
        goto fail;
    }
    json_pre_kind(t);
    t->ignore_merges = jbool(model, "ignore_merges", false);
    const char *unk = jstr(model, "unk_token");
    if (unk) t->unk = tok_token_id(t, unk);
    const char *bos = json_post_bos(cJSON_GetObjectItemCaseSensitive(root, "post_processor"));
    if (bos && tok_token_id(t, bos) >= 0) {
        t->bos = tok_token_id(t, bos);
        t->add_bos = true;
    }
    if (json_config(t, path, err) != CINDER_OK) goto fail;
    if (tok_finish(t, err) != CINDER_OK) goto fail;
    cJSON_Delete(root);
    free(data);
    LOG_DEBUG("%s: %d tokens, %zu merges, pre '%s', %d added", path, t->n_vocab, t->n_merges,
              t->pre_name, t->n_specials);
    return t;
fail:
    cinder_error_prefix(err, "%s", path);
    tok_free(t);
    cJSON_Delete(root);
    free(data);
    return NULL;
}
