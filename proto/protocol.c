#include "protocol.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef CINDER_VERSION_STRING
#define CINDER_VERSION_STRING "unknown"
#endif

/* Room for a field's path ("step.seqs[4095].sampling.repetition_penalty"), and for the prefix
 * of one ("step.seqs[4095]") that leaves room for a field name after it. */
#define PROTO_PATH_CAP   160
#define PROTO_PREFIX_CAP 64

/* ------------------------------------------------------------------------------------------ */
/* Small pieces */

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. Returns the length
 * of the valid character at s[0..n) or 0. */
static size_t proto_utf8_char(const unsigned char *s, size_t n) {
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000}; /* below: overlong */
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (!len || len > n) return 0;
    uint32_t cp = c & (0x7fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

static bool proto_utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t len = proto_utf8_char(p + i, n - i);
        if (!len) return false;
        i += len;
    }
    return true;
}

/* A malloc'd copy of s cut to at most max bytes on a character boundary, with every byte that
 * does not start a valid character replaced by '?'. */
static char *proto_utf8_sanitize(const char *s, size_t max) {
    size_t n = s ? strlen(s) : 0;
    char *out = malloc((n < max ? n : max) + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t len = proto_utf8_char((const unsigned char *)s + i, n - i);
        if (o + (len ? len : 1) > max) break;
        if (len) {
            memcpy(out + o, s + i, len);
        } else {
            out[o] = '?';
            len = 1;
        }
        o += len;
        i += len;
    }
    out[o] = '\0';
    return out;
}

static const char *proto_sep(const char *path) {
    return path[0] ? "." : "";
}

/* A string field of min..max bytes (UTF-8 is checked by the generic pass). */
static cinder_status proto_check_str(const char *field, const char *s, size_t min, size_t max,
                                     cinder_error *err) {
    size_t n = s ? strlen(s) : 0;
    if (n < min) return cinder_error_set(err, CINDER_ERR_ARG, "%s is empty", field);
    if (n > max)
        return cinder_error_set(err, CINDER_ERR_RANGE, "%s is %zu bytes, over the bound of %zu",
                                field, n, max);
    return CINDER_OK;
}

static cinder_status proto_check_request_id(const char *field, const char *id, cinder_error *err) {
    return proto_check_str(field, id, 1, PROTO_MAX_REQUEST_ID_BYTES, err);
}

/* A count of repeated entries within min..max. */
static cinder_status proto_check_count(const char *field, size_t n, size_t min, size_t max,
                                       cinder_error *err) {
    if (n < min)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s has %zu entries, fewer than %zu", field,
                                n, min);
    if (n > max)
        return cinder_error_set(err, CINDER_ERR_RANGE, "%s has %zu entries, over the bound of %zu",
                                field, n, max);
    return CINDER_OK;
}

/* An int32 within [min, max]. */
static cinder_status proto_check_int(const char *field, int64_t v, int64_t min, int64_t max,
                                     cinder_error *err) {
    if (v < min || v > max)
        return cinder_error_set(err, CINDER_ERR_ARG, "%s %lld is outside [%lld, %lld]", field,
                                (long long)v, (long long)min, (long long)max);
    return CINDER_OK;
}

/* Token ids: non-negative, below the vocabulary when it is known. */
static cinder_status proto_check_tokens(const char *field, const int32_t *ids, size_t n,
                                        const proto_limits *lim, cinder_error *err) {
    int32_t vocab = lim ? lim->vocab_size : 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0)
            return cinder_error_set(err, CINDER_ERR_ARG, "%s[%zu] = %d is a negative token id",
                                    field, i, ids[i]);
        if (vocab > 0 && ids[i] >= vocab)
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "%s[%zu] = %d is not below the vocabulary size %d", field, i,
                                    ids[i], vocab);
    }
    return CINDER_OK;
}

/* KV block ids: non-negative, below the pool size when it is known. */
static cinder_status proto_check_blocks(const char *field, const int32_t *ids, size_t n,
                                        const proto_limits *lim, cinder_error *err) {
    int32_t pool = lim ? lim->kv_blocks : 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0)
            return cinder_error_set(err, CINDER_ERR_ARG, "%s[%zu] = %d is a negative block id",
                                    field, i, ids[i]);
        if (pool > 0 && ids[i] >= pool)
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "%s[%zu] = %d is not below the pool size of %d blocks", field,
                                    i, ids[i], pool);
    }
    return CINDER_OK;
}

/* Log-probabilities: none, or one per token, each <= 0 (finite is checked by the generic pass). */
static cinder_status proto_check_logprobs(const char *field, const float *lp, size_t n,
                                          size_t n_tokens, cinder_error *err) {
    if (n != 0 && n != n_tokens)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s has %zu entries for %zu tokens", field,
                                n, n_tokens);
    for (size_t i = 0; i < n; i++)
        if (lp[i] > 0)
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "%s[%zu] = %g is a positive log-probability", field, i, lp[i]);
    return CINDER_OK;
}

static int proto_cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* ------------------------------------------------------------------------------------------ */
/* The generic pass: walks every field through protobuf-c's descriptors, so a field added later
 * gets these rules without new code. Enum values must be known, strings UTF-8 (proto3 says so,
 * protobuf-c does not check), floats finite. */

/* Writes the name of element k of field f under path: "path.field" or "path.field[k]". */
static const char *proto_field_name(char *name, const char *path, const ProtobufCFieldDescriptor *f,
                                    size_t k) {
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        snprintf(name, PROTO_PATH_CAP, "%s%s%s[%zu]", path, proto_sep(path), f->name, k);
    else
        snprintf(name, PROTO_PATH_CAP, "%s%s%s", path, proto_sep(path), f->name);
    return name;
}

static cinder_status proto_check_fields(const ProtobufCMessage *m, const char *path,
                                        cinder_error *err) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    char name[PROTO_PATH_CAP];
    /* Unknown fields are skipped (a newer minor), but field number 0 does not exist: protobuf-c
     * lets it through when its tag is encoded in more bytes than needed, and would then write
     * a frame that no reader (itself included) accepts. */
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return cinder_error_set(err, CINDER_ERR_FORMAT, "%s has a field numbered 0",
                                    path[0] ? path : "envelope");
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        /* Only the member a oneof holds is valid. */
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;
        if (f->type != PROTOBUF_C_TYPE_ENUM && f->type != PROTOBUF_C_TYPE_STRING &&
            f->type != PROTOBUF_C_TYPE_FLOAT && f->type != PROTOBUF_C_TYPE_DOUBLE &&
            f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const void *member = base + f->offset;
        size_t n = 1;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)(base + f->quantifier_offset);
            member = *(const void *const *)member;
        }
        for (size_t k = 0; k < n; k++) {
            switch (f->type) {
                case PROTOBUF_C_TYPE_ENUM: {
                    int32_t v = ((const int32_t *)member)[k];
                    const ProtobufCEnumDescriptor *e = f->descriptor;
                    if (!protobuf_c_enum_descriptor_get_value(e, v))
                        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s %d is not a known %s",
                                                proto_field_name(name, path, f, k), v,
                                                e->short_name);
                    break;
                }
                case PROTOBUF_C_TYPE_STRING: {
                    const char *s = ((const char *const *)member)[k];
                    if (s && !proto_utf8_valid(s, strlen(s)))
                        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s is not valid UTF-8",
                                                proto_field_name(name, path, f, k));
                    break;
                }
                case PROTOBUF_C_TYPE_FLOAT: {
                    float v = ((const float *)member)[k];
                    if (!isfinite(v))
                        return cinder_error_set(err, CINDER_ERR_ARG, "%s %g is not a finite number",
                                                proto_field_name(name, path, f, k), v);
                    break;
                }
                case PROTOBUF_C_TYPE_DOUBLE: {
                    double v = ((const double *)member)[k];
                    if (!isfinite(v))
                        return cinder_error_set(err, CINDER_ERR_ARG, "%s %g is not a finite number",
                                                proto_field_name(name, path, f, k), v);
                    break;
                }
                default: { /* PROTOBUF_C_TYPE_MESSAGE; the schema has no recursion */
                    const ProtobufCMessage *sub = ((const ProtobufCMessage *const *)member)[k];
                    if (!sub) break;
                    cinder_status st =
                        proto_check_fields(sub, proto_field_name(name, path, f, k), err);
                    if (st != CINDER_OK) return st;
                    break;
                }
            }
        }
    }
    return CINDER_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* The rules of each message. `field` buffers hold names with indices, for the messages. */

/* Mirrors sampler_params_check (worker/sampler.c); NaN and infinities are already refused. */
static cinder_status proto_check_sampling(const char *at, const Cinder__SamplingParams *s,
                                          cinder_error *err) {
    if (!s) return CINDER_OK; /* the defaults */
    if (!(s->temperature >= 0 && s->temperature <= PROTO_TEMPERATURE_MAX))
        return cinder_error_set(err, CINDER_ERR_ARG, "%s.temperature %g is outside [0, %g]", at,
                                s->temperature, PROTO_TEMPERATURE_MAX);
    if (s->top_k < 0)
        return cinder_error_set(err, CINDER_ERR_ARG, "%s.top_k %d is negative", at, s->top_k);
    if (!(s->top_p > 0 && s->top_p <= 1))
        return cinder_error_set(err, CINDER_ERR_ARG, "%s.top_p %g is outside (0, 1]", at, s->top_p);
    if (!(s->min_p >= 0 && s->min_p <= 1))
        return cinder_error_set(err, CINDER_ERR_ARG, "%s.min_p %g is outside [0, 1]", at, s->min_p);
    if (!(s->repetition_penalty > 0 && s->repetition_penalty <= PROTO_REPETITION_PENALTY_MAX))
        return cinder_error_set(err, CINDER_ERR_ARG, "%s.repetition_penalty %g is outside (0, %g]",
                                at, s->repetition_penalty, PROTO_REPETITION_PENALTY_MAX);
    return CINDER_OK;
}

static cinder_status proto_check_hello(const Cinder__Hello *m, cinder_error *err) {
    if (m->major != PROTO_VERSION_MAJOR)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "hello.major %u: this side speaks protocol %d.%d and the majors "
                                "must match",
                                m->major, PROTO_VERSION_MAJOR, PROTO_VERSION_MINOR);
    if (m->role == CINDER__ROLE__ROLE_UNSPECIFIED)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "hello.role is missing");
    return proto_check_str("hello.software", m->software, 0, PROTO_MAX_NAME_BYTES, err);
}

static cinder_status proto_check_error(const Cinder__Error *m, cinder_error *err) {
    cinder_status st =
        proto_check_str("error.request_id", m->request_id, 0, PROTO_MAX_REQUEST_ID_BYTES, err);
    if (st) return st;
    if (m->code == CINDER__ERROR_CODE__ERROR_CODE_UNSPECIFIED)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "error.code is missing");
    return proto_check_str("error.message", m->message, 0, PROTO_MAX_MESSAGE_BYTES, err);
}

static cinder_status proto_check_prompt(const Cinder__GenerateRequest *m, const proto_limits *lim,
                                        cinder_error *err) {
    char field[PROTO_PATH_CAP];
    switch (m->prompt_case) {
        case CINDER__GENERATE_REQUEST__PROMPT_TEXT:
            return proto_check_str("generate_request.text", m->text, 1, PROTO_MAX_PROMPT_BYTES,
                                   err);
        case CINDER__GENERATE_REQUEST__PROMPT_TOKENS: {
            size_t n = m->tokens ? m->tokens->n_ids : 0;
            cinder_status st =
                proto_check_count("generate_request.tokens.ids", n, 1, PROTO_MAX_CONTEXT, err);
            if (st) return st;
            return proto_check_tokens("generate_request.tokens.ids", m->tokens->ids, n, lim, err);
        }
        case CINDER__GENERATE_REQUEST__PROMPT_CHAT: {
            size_t n = m->chat ? m->chat->n_messages : 0;
            cinder_status st = proto_check_count("generate_request.chat.messages", n, 1,
                                                 PROTO_MAX_CHAT_MESSAGES, err);
            if (st) return st;
            size_t total = 0;
            for (size_t i = 0; i < n; i++) {
                const Cinder__ChatMessage *c = m->chat->messages[i];
                snprintf(field, sizeof field, "generate_request.chat.messages[%zu].role", i);
                if ((st = proto_check_str(field, c->role, 1, PROTO_MAX_NAME_BYTES, err))) return st;
                total += strlen(c->content);
            }
            if (total > PROTO_MAX_PROMPT_BYTES)
                return cinder_error_set(err, CINDER_ERR_RANGE,
                                        "generate_request.chat.messages hold %zu bytes of "
                                        "content, over the bound of %d",
                                        total, PROTO_MAX_PROMPT_BYTES);
            return CINDER_OK;
        }
        default:
            return cinder_error_set(err, CINDER_ERR_FORMAT,
                                    "generate_request.prompt is missing (text, tokens or chat)");
    }
}

static cinder_status proto_check_generate_request(const Cinder__GenerateRequest *m,
                                                  const proto_limits *lim, cinder_error *err) {
    char field[PROTO_PATH_CAP];
    cinder_status st;
    if ((st = proto_check_request_id("generate_request.request_id", m->request_id, err)) ||
        (st = proto_check_prompt(m, lim, err)) ||
        (st = proto_check_sampling("generate_request.sampling", m->sampling, err)) ||
        (st = proto_check_int("generate_request.max_tokens", m->max_tokens, 1, PROTO_MAX_NEW_TOKENS,
                              err)) ||
        (st =
             proto_check_count("generate_request.stop", m->n_stop, 0, PROTO_MAX_STOP_STRINGS, err)))
        return st;
    for (size_t i = 0; i < m->n_stop; i++) {
        snprintf(field, sizeof field, "generate_request.stop[%zu]", i);
        if ((st = proto_check_str(field, m->stop[i], 1, PROTO_MAX_STOP_BYTES, err))) return st;
    }
    if ((st = proto_check_count("generate_request.stop_token_ids", m->n_stop_token_ids, 0,
                                PROTO_MAX_STOP_IDS, err)))
        return st;
    if ((st = proto_check_tokens("generate_request.stop_token_ids", m->stop_token_ids,
                                 m->n_stop_token_ids, lim, err)))
        return st;
    return proto_check_str("generate_request.model", m->model, 0, PROTO_MAX_NAME_BYTES, err);
}

static cinder_status proto_check_generate_chunk(const Cinder__GenerateChunk *m,
                                                const proto_limits *lim, cinder_error *err) {
    cinder_status st;
    if ((st = proto_check_request_id("generate_chunk.request_id", m->request_id, err))) return st;
    if ((st = proto_check_str("generate_chunk.text", m->text, 0, PROTO_MAX_TEXT_BYTES, err)))
        return st;
    if ((st = proto_check_count("generate_chunk.token_ids", m->n_token_ids, 0,
                                PROTO_MAX_STEP_TOKENS, err)))
        return st;
    if ((st = proto_check_tokens("generate_chunk.token_ids", m->token_ids, m->n_token_ids, lim,
                                 err)))
        return st;
    return proto_check_logprobs("generate_chunk.logprobs", m->logprobs, m->n_logprobs,
                                m->n_token_ids, err);
}

static cinder_status proto_check_generate_done(const Cinder__GenerateDone *m, cinder_error *err) {
    cinder_status st;
    if ((st = proto_check_request_id("generate_done.request_id", m->request_id, err))) return st;
    if (m->finish_reason == CINDER__FINISH_REASON__FINISH_REASON_UNSPECIFIED)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "generate_done.finish_reason is missing");
    if (m->usage) {
        const Cinder__Usage *u = m->usage;
        if ((st = proto_check_int("generate_done.usage.prompt_tokens", u->prompt_tokens, 0,
                                  PROTO_MAX_CONTEXT, err)) ||
            (st = proto_check_int("generate_done.usage.completion_tokens", u->completion_tokens, 0,
                                  PROTO_MAX_CONTEXT, err)) ||
            (st = proto_check_int("generate_done.usage.cached_prompt_tokens",
                                  u->cached_prompt_tokens, 0, u->prompt_tokens, err)))
            return st;
    }
    return proto_check_str("generate_done.message", m->message, 0, PROTO_MAX_MESSAGE_BYTES, err);
}

static cinder_status proto_check_kv_usage(const char *at, const Cinder__KvUsage *kv,
                                          cinder_error *err) {
    char field[PROTO_PATH_CAP];
    if (!kv) return CINDER_OK;
    snprintf(field, sizeof field, "%.*s.kv.block_size", PROTO_PREFIX_CAP, at);
    return proto_check_int(field, kv->block_size, 0, PROTO_MAX_BLOCK_SIZE, err);
}

static cinder_status proto_check_status_reply(const Cinder__StatusReply *m, cinder_error *err) {
    char field[PROTO_PATH_CAP];
    cinder_status st;
    if ((st = proto_check_str("status_reply.model", m->model, 0, PROTO_MAX_NAME_BYTES, err)) ||
        (st =
             proto_check_count("status_reply.groups", m->n_groups, 0, PROTO_MAX_WORLD_SIZE, err)) ||
        (st = proto_check_kv_usage("status_reply", m->kv, err)) ||
        (st = proto_check_int("status_reply.queue_waiting", m->queue_waiting, 0, INT32_MAX, err)) ||
        (st = proto_check_int("status_reply.running_seqs", m->running_seqs, 0, INT32_MAX, err)))
        return st;
    if (m->prompt_tokens_per_s < 0 || m->output_tokens_per_s < 0 || m->requests_per_s < 0)
        return cinder_error_set(err, CINDER_ERR_ARG, "status_reply has a negative throughput");
    for (size_t i = 0; i < m->n_groups; i++) {
        const Cinder__GroupStatus *g = m->groups[i];
        char at[PROTO_PREFIX_CAP];
        snprintf(at, sizeof at, "status_reply.groups[%zu]", i);
        snprintf(field, sizeof field, "%s.group", at);
        if ((st = proto_check_int(field, g->group, 0, PROTO_MAX_WORLD_SIZE - 1, err))) return st;
        snprintf(field, sizeof field, "%s.world_size", at);
        if ((st = proto_check_int(field, g->world_size, 0, PROTO_MAX_WORLD_SIZE, err))) return st;
        snprintf(field, sizeof field, "%s.ranks", at);
        if ((st = proto_check_count(field, g->n_ranks, 0, PROTO_MAX_WORLD_SIZE, err))) return st;
        for (size_t r = 0; r < g->n_ranks; r++) {
            const Cinder__RankInfo *ri = g->ranks[r];
            snprintf(field, sizeof field, "%s.ranks[%zu].rank", at, r);
            if ((st = proto_check_int(field, ri->rank, 0, PROTO_MAX_WORLD_SIZE - 1, err)))
                return st;
            snprintf(field, sizeof field, "%s.ranks[%zu].host", at, r);
            if ((st = proto_check_str(field, ri->host, 0, PROTO_MAX_NAME_BYTES, err))) return st;
            snprintf(field, sizeof field, "%s.ranks[%zu].device", at, r);
            if ((st = proto_check_str(field, ri->device, 0, PROTO_MAX_NAME_BYTES, err))) return st;
        }
        if ((st = proto_check_kv_usage(at, g->kv, err))) return st;
        snprintf(field, sizeof field, "%s.running_seqs", at);
        if ((st = proto_check_int(field, g->running_seqs, 0, INT32_MAX, err))) return st;
    }
    return CINDER_OK;
}

static cinder_status proto_check_models_reply(const Cinder__ModelsReply *m, cinder_error *err) {
    char field[PROTO_PATH_CAP];
    cinder_status st =
        proto_check_count("models_reply.models", m->n_models, 0, PROTO_MAX_MODELS, err);
    if (st) return st;
    for (size_t i = 0; i < m->n_models; i++) {
        const Cinder__ModelInfo *mi = m->models[i];
        snprintf(field, sizeof field, "models_reply.models[%zu].name", i);
        if ((st = proto_check_str(field, mi->name, 1, PROTO_MAX_NAME_BYTES, err))) return st;
        snprintf(field, sizeof field, "models_reply.models[%zu].architecture", i);
        if ((st = proto_check_str(field, mi->architecture, 0, PROTO_MAX_NAME_BYTES, err)))
            return st;
        snprintf(field, sizeof field, "models_reply.models[%zu].weight_type", i);
        if ((st = proto_check_str(field, mi->weight_type, 0, PROTO_MAX_NAME_BYTES, err))) return st;
        snprintf(field, sizeof field, "models_reply.models[%zu].vocab_size", i);
        if ((st = proto_check_int(field, mi->vocab_size, 0, INT32_MAX, err))) return st;
        snprintf(field, sizeof field, "models_reply.models[%zu].context_length", i);
        if ((st = proto_check_int(field, mi->context_length, 0, PROTO_MAX_CONTEXT, err))) return st;
        snprintf(field, sizeof field, "models_reply.models[%zu].eos_token_ids", i);
        if ((st = proto_check_count(field, mi->n_eos_token_ids, 0, PROTO_MAX_STOP_IDS, err)))
            return st;
        proto_limits model_vocab = {.vocab_size = mi->vocab_size};
        if ((st = proto_check_tokens(field, mi->eos_token_ids, mi->n_eos_token_ids, &model_vocab,
                                     err)))
            return st;
    }
    return CINDER_OK;
}

/* A rank's identity: group id, world size (when given) and rank below it. */
static cinder_status proto_check_rank(const char *msg, int32_t group, int32_t world_size,
                                      int32_t rank, bool has_world, cinder_error *err) {
    char field[PROTO_PATH_CAP];
    cinder_status st;
    snprintf(field, sizeof field, "%s.group", msg);
    if ((st = proto_check_int(field, group, 0, PROTO_MAX_WORLD_SIZE - 1, err))) return st;
    if (has_world) {
        snprintf(field, sizeof field, "%s.world_size", msg);
        if ((st = proto_check_int(field, world_size, 1, PROTO_MAX_WORLD_SIZE, err))) return st;
    }
    snprintf(field, sizeof field, "%s.rank", msg);
    return proto_check_int(field, rank, 0, (has_world ? world_size : PROTO_MAX_WORLD_SIZE) - 1,
                           err);
}

static cinder_status proto_check_register(const Cinder__Register *m, cinder_error *err) {
    cinder_status st;
    if ((st = proto_check_rank("register_rank", m->group, m->world_size, m->rank, true, err)) ||
        (st = proto_check_str("register_rank.host", m->host, 1, PROTO_MAX_NAME_BYTES, err)))
        return st;
    return proto_check_str("register_rank.device", m->device, 0, PROTO_MAX_NAME_BYTES, err);
}

static cinder_status proto_check_range(const char *field, const Cinder__Range *r,
                                       cinder_error *err) {
    if (r && (r->begin < 0 || r->count < 0 || (int64_t)r->begin + r->count > INT32_MAX))
        return cinder_error_set(err, CINDER_ERR_ARG, "%s [%d, %d + %d) is not a valid range", field,
                                r->begin, r->begin, r->count);
    return CINDER_OK;
}

static cinder_status proto_check_shard_plan(const Cinder__ShardPlan *m, cinder_error *err) {
    cinder_status st;
    if ((st = proto_check_rank("shard_plan", m->group, m->world_size, m->rank, true, err)) ||
        (st = proto_check_str("shard_plan.model_path", m->model_path, 1, PROTO_MAX_MESSAGE_BYTES,
                              err)) ||
        (st = proto_check_int("shard_plan.tp_size", m->tp_size, 1, m->world_size, err)) ||
        (st = proto_check_int("shard_plan.tp_rank", m->tp_rank, 0, m->tp_size - 1, err)) ||
        (st = proto_check_int("shard_plan.ep_size", m->ep_size, 1, m->world_size, err)) ||
        (st = proto_check_int("shard_plan.ep_rank", m->ep_rank, 0, m->ep_size - 1, err)) ||
        (st = proto_check_range("shard_plan.q_heads", m->q_heads, err)) ||
        (st = proto_check_range("shard_plan.kv_heads", m->kv_heads, err)) ||
        (st = proto_check_range("shard_plan.ffn", m->ffn, err)) ||
        (st = proto_check_range("shard_plan.vocab", m->vocab, err)) ||
        (st = proto_check_count("shard_plan.experts", m->n_experts, 0, PROTO_MAX_STEP_SEQS, err)) ||
        (st = proto_check_int("shard_plan.block_size", m->block_size, 1, PROTO_MAX_BLOCK_SIZE,
                              err)) ||
        (st = proto_check_int("shard_plan.kv_blocks", m->kv_blocks, 0, INT32_MAX, err)) ||
        (st = proto_check_int("shard_plan.max_batch_tokens", m->max_batch_tokens, 1,
                              PROTO_MAX_STEP_TOKENS, err)) ||
        (st = proto_check_int("shard_plan.max_seqs", m->max_seqs, 1, PROTO_MAX_STEP_SEQS, err)))
        return st;
    for (size_t i = 0; i < m->n_experts; i++)
        if (m->experts[i] < 0)
            return cinder_error_set(err, CINDER_ERR_ARG, "shard_plan.experts[%zu] = %d is negative",
                                    i, m->experts[i]);
    if (m->kv_blocks == 0 && m->kv_mem_bytes == 0)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "shard_plan sizes no KV pool: kv_blocks and kv_mem_bytes are 0");
    return CINDER_OK;
}

static cinder_status proto_check_ready(const Cinder__Ready *m, cinder_error *err) {
    cinder_status st;
    if ((st = proto_check_rank("ready", m->group, 0, m->rank, false, err)) ||
        (st = proto_check_int("ready.kv_blocks", m->kv_blocks, 1, INT32_MAX, err)) ||
        (st = proto_check_int("ready.block_size", m->block_size, 1, PROTO_MAX_BLOCK_SIZE, err)) ||
        (st = proto_check_int("ready.max_batch_tokens", m->max_batch_tokens, 1,
                              PROTO_MAX_STEP_TOKENS, err)) ||
        (st = proto_check_int("ready.max_seqs", m->max_seqs, 1, PROTO_MAX_STEP_SEQS, err)))
        return st;
    return proto_check_int("ready.vocab_size", m->vocab_size, 1, INT32_MAX, err);
}

/* Sequence ids appear once in a step (or a step's result). ids [n] is scratch, sorted here. */
static cinder_status proto_check_unique(const char *field, uint64_t *ids, size_t n,
                                        cinder_error *err) {
    qsort(ids, n, sizeof *ids, proto_cmp_u64);
    for (size_t i = 1; i < n; i++)
        if (ids[i] == ids[i - 1])
            return cinder_error_set(err, CINDER_ERR_ARG, "%s: seq_id %llu appears twice", field,
                                    (unsigned long long)ids[i]);
    return CINDER_OK;
}

static cinder_status proto_check_step_seq(const Cinder__StepSeq *s, size_t i,
                                          const proto_limits *lim, cinder_error *err) {
    char at[PROTO_PREFIX_CAP], field[PROTO_PATH_CAP];
    cinder_status st;
    snprintf(at, sizeof at, "step.seqs[%zu]", i);
    snprintf(field, sizeof field, "%s.n_tokens", at);
    if ((st = proto_check_int(field, s->n_tokens, 1, PROTO_MAX_STEP_TOKENS, err))) return st;
    snprintf(field, sizeof field, "%s.pos", at);
    if ((st = proto_check_int(field, s->pos, 0, PROTO_MAX_CONTEXT - s->n_tokens, err))) return st;
    snprintf(field, sizeof field, "%s.block_table", at);
    if ((st = proto_check_count(field, s->n_block_table, s->block_table_from == 0 ? 1 : 0,
                                PROTO_MAX_SEQ_BLOCKS, err)) ||
        (st = proto_check_blocks(field, s->block_table, s->n_block_table, lim, err)))
        return st;
    snprintf(field, sizeof field, "%s.block_table_from", at);
    if ((st = proto_check_int(field, s->block_table_from, 0,
                              PROTO_MAX_SEQ_BLOCKS - (int64_t)s->n_block_table, err)))
        return st;
    snprintf(field, sizeof field, "%s.sampling", at);
    if ((st = proto_check_sampling(field, s->sampling, err))) return st;
    snprintf(field, sizeof field, "%s.history", at);
    if (s->n_history != 0 && s->n_history != (size_t)s->pos)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s has %zu tokens for pos %d", field,
                                s->n_history, s->pos);
    return proto_check_tokens(field, s->history, s->n_history, lim, err);
}

static cinder_status proto_check_step(const Cinder__Step *m, const proto_limits *lim,
                                      cinder_error *err) {
    char field[PROTO_PATH_CAP];
    cinder_status st;
    if ((st = proto_check_count("step.seqs", m->n_seqs, 0, PROTO_MAX_STEP_SEQS, err)) ||
        (st = proto_check_count("step.tokens", m->n_tokens, 0, PROTO_MAX_STEP_TOKENS, err)) ||
        (st = proto_check_tokens("step.tokens", m->tokens, m->n_tokens, lim, err)))
        return st;
    uint64_t ids[PROTO_MAX_STEP_SEQS];
    int64_t total = 0;
    for (size_t i = 0; i < m->n_seqs; i++) {
        if ((st = proto_check_step_seq(m->seqs[i], i, lim, err))) return st;
        total += m->seqs[i]->n_tokens;
        ids[i] = m->seqs[i]->seq_id;
    }
    if (total != (int64_t)m->n_tokens)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "step.seqs' n_tokens add up to %lld but step.tokens has %zu",
                                (long long)total, m->n_tokens);
    if ((st = proto_check_unique("step.seqs", ids, m->n_seqs, err))) return st;
    for (size_t i = 0; i < m->n_release_seqs; i++)
        if (bsearch(&m->release_seqs[i], ids, m->n_seqs, sizeof *ids, proto_cmp_u64))
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "step.release_seqs[%zu] = %llu is also stepped", i,
                                    (unsigned long long)m->release_seqs[i]);
    for (size_t i = 0; i < m->n_copies; i++) {
        const Cinder__BlockCopy *c = m->copies[i];
        int32_t pair[2] = {c->src, c->dst};
        snprintf(field, sizeof field, "step.copies[%zu]", i);
        if ((st = proto_check_blocks(field, pair, 2, lim, err))) return st;
        if (c->src == c->dst)
            return cinder_error_set(err, CINDER_ERR_ARG, "%s copies block %d onto itself", field,
                                    c->src);
    }
    return proto_check_blocks("step.free_blocks", m->free_blocks, m->n_free_blocks, lim, err);
}

static cinder_status proto_check_step_result(const Cinder__StepResult *m, const proto_limits *lim,
                                             cinder_error *err) {
    char field[PROTO_PATH_CAP];
    cinder_status st;
    if ((st = proto_check_rank("step_result", m->group, 0, m->rank, false, err)) ||
        (st = proto_check_count("step_result.seqs", m->n_seqs, 0, PROTO_MAX_STEP_SEQS, err)) ||
        (st = proto_check_str("step_result.error", m->error, 0, PROTO_MAX_MESSAGE_BYTES, err)))
        return st;
    uint64_t ids[PROTO_MAX_STEP_SEQS];
    for (size_t i = 0; i < m->n_seqs; i++) {
        const Cinder__SeqResult *s = m->seqs[i];
        snprintf(field, sizeof field, "step_result.seqs[%zu].tokens", i);
        if ((st = proto_check_count(field, s->n_tokens, 0, PROTO_MAX_STEP_TOKENS, err)) ||
            (st = proto_check_tokens(field, s->tokens, s->n_tokens, lim, err)))
            return st;
        snprintf(field, sizeof field, "step_result.seqs[%zu].logprobs", i);
        if ((st = proto_check_logprobs(field, s->logprobs, s->n_logprobs, s->n_tokens, err)))
            return st;
        ids[i] = s->seq_id;
    }
    return proto_check_unique("step_result.seqs", ids, m->n_seqs, err);
}

static cinder_status proto_check_migrate(const Cinder__MigrateBlocks *m, const proto_limits *lim,
                                         cinder_error *err) {
    cinder_status st;
    if (m->op == CINDER__MIGRATE_OP__MIGRATE_OP_UNSPECIFIED)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "migrate_blocks.op is missing");
    if ((st = proto_check_int("migrate_blocks.rank", m->rank, 0, PROTO_MAX_WORLD_SIZE - 1, err)) ||
        (st = proto_check_count("migrate_blocks.blocks", m->n_blocks, 0, PROTO_MAX_SEQ_BLOCKS,
                                err)) ||
        (st = proto_check_blocks("migrate_blocks.blocks", m->blocks, m->n_blocks, lim, err)))
        return st;
    bool carries = m->op == CINDER__MIGRATE_OP__MIGRATE_OP_DATA ||
                   m->op == CINDER__MIGRATE_OP__MIGRATE_OP_IMPORT;
    size_t want = carries ? m->n_blocks : 0;
    if (m->n_block_data != want)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "migrate_blocks.block_data has %zu entries for %zu blocks (op %d)",
                                m->n_block_data, want, (int)m->op);
    for (size_t i = 0; i < m->n_block_data; i++)
        if (m->block_data[i].len == 0 || m->block_data[i].len != m->block_data[0].len)
            return cinder_error_set(err, CINDER_ERR_FORMAT,
                                    "migrate_blocks.block_data[%zu] is %zu bytes; every block "
                                    "must hold the same, non-zero size (%zu)",
                                    i, m->block_data[i].len, m->block_data[0].len);
    return CINDER_OK;
}

static cinder_status proto_check_body(const Cinder__Envelope *env, const proto_limits *lim,
                                      cinder_error *err) {
    switch (env->body_case) {
        case CINDER__ENVELOPE__BODY_HELLO:
            return proto_check_hello(env->hello, err);
        case CINDER__ENVELOPE__BODY_ERROR:
            return proto_check_error(env->error, err);
        case CINDER__ENVELOPE__BODY_GENERATE_REQUEST:
            return proto_check_generate_request(env->generate_request, lim, err);
        case CINDER__ENVELOPE__BODY_GENERATE_CHUNK:
            return proto_check_generate_chunk(env->generate_chunk, lim, err);
        case CINDER__ENVELOPE__BODY_GENERATE_DONE:
            return proto_check_generate_done(env->generate_done, err);
        case CINDER__ENVELOPE__BODY_CANCEL:
            return proto_check_request_id("cancel.request_id", env->cancel->request_id, err);
        case CINDER__ENVELOPE__BODY_STATUS_REQUEST:
            return CINDER_OK;
        case CINDER__ENVELOPE__BODY_STATUS_REPLY:
            return proto_check_status_reply(env->status_reply, err);
        case CINDER__ENVELOPE__BODY_MODELS_REQUEST:
            return CINDER_OK;
        case CINDER__ENVELOPE__BODY_MODELS_REPLY:
            return proto_check_models_reply(env->models_reply, err);
        case CINDER__ENVELOPE__BODY_REGISTER_RANK:
            return proto_check_register(env->register_rank, err);
        case CINDER__ENVELOPE__BODY_SHARD_PLAN:
            return proto_check_shard_plan(env->shard_plan, err);
        case CINDER__ENVELOPE__BODY_READY:
            return proto_check_ready(env->ready, err);
        case CINDER__ENVELOPE__BODY_STEP:
            return proto_check_step(env->step, lim, err);
        case CINDER__ENVELOPE__BODY_STEP_RESULT:
            return proto_check_step_result(env->step_result, lim, err);
        case CINDER__ENVELOPE__BODY_HEARTBEAT:
            return proto_check_rank("heartbeat", env->heartbeat->group, 0, env->heartbeat->rank,
                                    false, err);
        case CINDER__ENVELOPE__BODY_MIGRATE_BLOCKS:
            return proto_check_migrate(env->migrate_blocks, lim, err);
        case CINDER__ENVELOPE__BODY_SHUTDOWN:
            return proto_check_str("shutdown.reason", env->shutdown->reason, 0,
                                   PROTO_MAX_MESSAGE_BYTES, err);
        case CINDER__ENVELOPE__BODY__NOT_SET:
            break;
        default:
            break;
    }
    /* A body this version does not know arrives as an unknown envelope field. */
    if (env->base.n_unknown_fields > 0)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "envelope body is field %u, which protocol %d.%d does not know",
                                env->base.unknown_fields[0].tag, PROTO_VERSION_MAJOR,
                                PROTO_VERSION_MINOR);
    return cinder_error_set(err, CINDER_ERR_FORMAT, "envelope has no body");
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding, encoding, replies */

cinder_status proto_validate(const Cinder__Envelope *env, const proto_limits *limits,
                             cinder_error *err) {
    /* A body must be present and known before the generic pass, which would accept an empty
     * envelope; and the version check must win over any other complaint about a Hello. */
    if (env->body_case == CINDER__ENVELOPE__BODY__NOT_SET)
        return proto_check_body(env, limits, err);
    /* Unpacking never leaves a set body NULL; a message built in memory might. */
    const ProtobufCFieldDescriptor *body =
        protobuf_c_message_descriptor_get_field(env->base.descriptor, env->body_case);
    if (!body)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "envelope body case %d is not known",
                                (int)env->body_case);
    if (!*(void *const *)((const char *)env + body->offset))
        return cinder_error_set(err, CINDER_ERR_FORMAT, "envelope.%s is set but NULL", body->name);
    if (env->body_case == CINDER__ENVELOPE__BODY_HELLO && env->hello->major != PROTO_VERSION_MAJOR)
        return proto_check_hello(env->hello, err);
    cinder_status st = proto_check_fields(&env->base, "", err);
    if (st) return st;
    return proto_check_body(env, limits, err);
}

cinder_status proto_decode(const void *buf, size_t len, const proto_limits *limits,
                           Cinder__Envelope **out, cinder_error *err) {
    *out = NULL;
    size_t max =
        limits && limits->max_frame_bytes ? limits->max_frame_bytes : PROTO_MAX_FRAME_BYTES;
    if (len > max)
        return cinder_error_set(err, CINDER_ERR_RANGE,
                                "frame of %zu bytes is over the bound of %zu", len, max);
    Cinder__Envelope *env = cinder__envelope__unpack(NULL, len, buf);
    if (!env)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "frame of %zu bytes is not a protobuf Envelope", len);
    cinder_status st = proto_validate(env, limits, err);
    if (st != CINDER_OK) {
        cinder__envelope__free_unpacked(env, NULL);
        return st;
    }
    *out = env;
    return CINDER_OK;
}

size_t proto_encoded_size(const Cinder__Envelope *env) {
    return cinder__envelope__get_packed_size(env);
}

cinder_status proto_encode(const Cinder__Envelope *env, uint8_t *buf, size_t cap, size_t *len,
                           cinder_error *err) {
    cinder_status st = proto_validate(env, NULL, err);
    if (st != CINDER_OK) return st;
    size_t n = cinder__envelope__get_packed_size(env);
    if (n > cap)
        return cinder_error_set(err, CINDER_ERR_RANGE,
                                "%s message is %zu bytes, the buffer holds %zu",
                                proto_body_name(env->body_case), n, cap);
    *len = cinder__envelope__pack(env, buf);
    return CINDER_OK;
}

cinder_status proto_encode_alloc(const Cinder__Envelope *env, uint8_t **buf, size_t *len,
                                 cinder_error *err) {
    *buf = NULL;
    size_t n = proto_encoded_size(env);
    uint8_t *b = malloc(n ? n : 1);
    if (!b) return cinder_error_set(err, CINDER_ERR_NOMEM, "encoding %zu bytes", n);
    cinder_status st = proto_encode(env, b, n, len, err);
    if (st != CINDER_OK) {
        free(b);
        return st;
    }
    *buf = b;
    return CINDER_OK;
}

void proto_envelope_free(Cinder__Envelope *env) {
    /* free_unpacked frees every field through the default allocator (malloc/free), which is
     * how proto_error_reply builds its envelopes too. */
    if (env) cinder__envelope__free_unpacked(env, NULL);
}

Cinder__ErrorCode proto_error_code(cinder_status status) {
    switch (status) {
        case CINDER_ERR_FORMAT:
            return CINDER__ERROR_CODE__ERROR_CODE_MALFORMED;
        case CINDER_ERR_UNSUPPORTED:
            return CINDER__ERROR_CODE__ERROR_CODE_UNSUPPORTED;
        case CINDER_ERR_ARG:
            return CINDER__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT;
        case CINDER_ERR_RANGE:
            return CINDER__ERROR_CODE__ERROR_CODE_TOO_LARGE;
        case CINDER_ERR_NOT_FOUND:
            return CINDER__ERROR_CODE__ERROR_CODE_NOT_FOUND;
        default:
            return CINDER__ERROR_CODE__ERROR_CODE_INTERNAL;
    }
}

Cinder__Envelope *proto_error_reply(const char *request_id, Cinder__ErrorCode code, const char *fmt,
                                    ...) {
    char text[PROTO_MAX_MESSAGE_BYTES + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    Cinder__Envelope *env = malloc(sizeof *env);
    Cinder__Error *e = malloc(sizeof *e);
    char *id = proto_utf8_sanitize(request_id, PROTO_MAX_REQUEST_ID_BYTES);
    char *msg = proto_utf8_sanitize(text, PROTO_MAX_MESSAGE_BYTES);
    if (!env || !e || !id || !msg) goto fail;
    cinder__envelope__init(env);
    cinder__error__init(e);
    e->request_id = id;
    e->code = code;
    e->message = msg;
    env->body_case = CINDER__ENVELOPE__BODY_ERROR;
    env->error = e;
    return env;
fail:
    free(env);
    free(e);
    free(id);
    free(msg);
    return NULL;
}

Cinder__Envelope *proto_refusal_reply(const void *buf, size_t len, const proto_limits *limits,
                                      const cinder_error *err) {
    const char *id = NULL;
    Cinder__Envelope *env = NULL;
    size_t max =
        limits && limits->max_frame_bytes ? limits->max_frame_bytes : PROTO_MAX_FRAME_BYTES;
    if (len <= max) env = cinder__envelope__unpack(NULL, len, buf);
    if (env) {
        /* The refused message is not trusted: its id is used only if it is well-formed. */
        id = proto_envelope_request_id(env);
        if (id && (!id[0] || strlen(id) > PROTO_MAX_REQUEST_ID_BYTES ||
                   !proto_utf8_valid(id, strlen(id))))
            id = NULL;
    }
    cinder_status status = err ? err->status : CINDER_ERR_FORMAT;
    Cinder__Envelope *reply =
        proto_error_reply(id, proto_error_code(status), "%s", err ? err->msg : "refused");
    if (env) cinder__envelope__free_unpacked(env, NULL);
    return reply;
}

const char *proto_envelope_request_id(const Cinder__Envelope *env) {
    switch (env->body_case) {
        case CINDER__ENVELOPE__BODY_GENERATE_REQUEST:
            return env->generate_request->request_id;
        case CINDER__ENVELOPE__BODY_GENERATE_CHUNK:
            return env->generate_chunk->request_id;
        case CINDER__ENVELOPE__BODY_GENERATE_DONE:
            return env->generate_done->request_id;
        case CINDER__ENVELOPE__BODY_CANCEL:
            return env->cancel->request_id;
        case CINDER__ENVELOPE__BODY_ERROR:
            return env->error->request_id;
        default:
            return NULL;
    }
}

const char *proto_body_name(Cinder__Envelope__BodyCase body) {
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&cinder__envelope__descriptor, (unsigned)body);
    return f ? f->name : "none";
}

void proto_hello_init(Cinder__Hello *hello, Cinder__Role role) {
    cinder__hello__init(hello);
    hello->major = PROTO_VERSION_MAJOR;
    hello->minor = PROTO_VERSION_MINOR;
    hello->role = role;
    hello->software = (char *)"cinder " CINDER_VERSION_STRING;
}

static const struct {
    Cinder__KvType wire;
    dtype type;
} proto_kv_types[] = {
    {CINDER__KV_TYPE__KV_TYPE_F32, DTYPE_F32},
    {CINDER__KV_TYPE__KV_TYPE_F16, DTYPE_F16},
    {CINDER__KV_TYPE__KV_TYPE_BF16, DTYPE_BF16},
};

bool proto_kv_type_to_dtype(Cinder__KvType t, dtype *out) {
    for (size_t i = 0; i < sizeof proto_kv_types / sizeof proto_kv_types[0]; i++)
        if (proto_kv_types[i].wire == t) {
            *out = proto_kv_types[i].type;
            return true;
        }
    return false;
}

bool proto_kv_type_from_dtype(dtype t, Cinder__KvType *out) {
    for (size_t i = 0; i < sizeof proto_kv_types / sizeof proto_kv_types[0]; i++)
        if (proto_kv_types[i].type == t) {
            *out = proto_kv_types[i].wire;
            return true;
        }
    return false;
}

void proto_sampling_default(Cinder__SamplingParams *s) {
    cinder__sampling_params__init(s);
    s->temperature = 0;
    s->top_k = 0;
    s->top_p = 1;
    s->min_p = 0;
    s->repetition_penalty = 1;
}
