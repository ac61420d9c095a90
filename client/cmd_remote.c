/* cmd_remote.c - the `cinder` subcommands that talk to a coordinator through libcinder-client:
 * `generate --server`, `status` and `models`. */
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinder_client.h"
#include "cli.h"
#include "commands.h"
#include "protocol.h"

#define N_OPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Connects, or says why not. */
static cinder_client *remote_connect(const char *server, int64_t timeout_ms) {
    cinder_client_options o = cinder_client_options_default();
    if (timeout_ms > 0) o.connect_timeout_ms = o.timeout_ms = (int)timeout_ms;
    cinder_error err = {0};
    cinder_client *c = cinder_client_connect(server, &o, &err);
    if (!c) fprintf(stderr, "cinder: %s\n", err.msg);
    return c;
}

/* ---- generate --server ------------------------------------------------------------------- */

static volatile sig_atomic_t remote_interrupted;

static void remote_on_sigint(int sig) {
    (void)sig;
    remote_interrupted = 1;
}

static int remote_print_chunk(void *user, const cinder_gen_chunk *chunk) {
    (void)user;
    fwrite(chunk->text, 1, chunk->text_len, stdout);
    fflush(stdout);
    return remote_interrupted; /* Ctrl-C: cancel the request */
}

int generate_remote(const gen_args *a) {
    cinder_client *c = remote_connect(a->server, 0);
    if (!c) return 1;
    cinder_chat_msg msgs[2];
    size_t n_msgs = 0;
    cinder_gen_request req;
    cinder_gen_request_init(&req);
    if (a->chat) {
        if (a->system) msgs[n_msgs++] = (cinder_chat_msg){"system", a->system};
        msgs[n_msgs++] = (cinder_chat_msg){"user", a->prompt};
        req.chat = msgs;
        req.n_chat = n_msgs;
    } else {
        req.text = a->prompt;
    }
    req.temperature = (float)a->temperature;
    req.top_k = (int32_t)a->top_k;
    req.top_p = (float)a->top_p;
    req.min_p = (float)a->min_p;
    req.repetition_penalty = (float)a->repeat_penalty;
    req.has_seed = a->seed >= 0;
    req.seed = a->seed >= 0 ? (uint64_t)a->seed : 0;
    req.max_tokens = (int32_t)a->max_tokens;
    const char *stops[1] = {a->stop};
    req.stop = stops;
    req.n_stop = a->stop ? 1 : 0;
    req.timeout_ms = (uint32_t)a->timeout_ms;
    /* Silence this long means the coordinator is gone (it streams every step, but a request
     * may wait in its queue): the request's own limit plus a margin, else two minutes. */
    req.wait_ms = a->timeout_ms
                      ? (int)(a->timeout_ms < 2000000000 ? a->timeout_ms : 2000000000) + 10000
                      : 120000;

    /* Ctrl-C once cancels the request (the coordinator ends it); twice kills. */
    struct sigaction sa = {0}, old;
    sa.sa_handler = remote_on_sigint;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);

    cinder_gen_result res;
    cinder_error err = {0};
    cinder_status s = cinder_client_generate(c, &req, remote_print_chunk, NULL, &res, &err);
    sigaction(SIGINT, &old, NULL);
    printf("\n");
    fflush(stdout); /* the text before the report on stderr */
    int rc = 1;
    if (s != CINDER_OK) {
        fprintf(stderr, "cinder: %s\n", err.msg);
    } else {
        double total_s = res.total_us * 1e-6;
        double tpot_ms = res.time_per_output_token_us * 1e-3;
        fprintf(stderr,
                "cinder: prompt %d tokens (%d cached); generated %d tokens; first token after "
                "%.0f ms (queued %.0f ms), then %.1f ms per token (%.1f tokens/s); total %.2f s; "
                "finished by %s%s%s\n",
                res.prompt_tokens, res.cached_prompt_tokens, res.completion_tokens,
                res.time_to_first_token_us * 1e-3, res.queue_us * 1e-3, tpot_ms,
                tpot_ms > 0 ? 1000.0 / tpot_ms : 0.0, total_s,
                cinder_finish_reason_name(res.finish_reason), res.message[0] ? ": " : "",
                res.message);
        rc = res.finish_reason == CINDER_FINISH_STOP || res.finish_reason == CINDER_FINISH_LENGTH
                 ? 0
                 : 1;
    }
    cinder_client_free(c);
    return rc;
}

/* ---- JSON of any protobuf-c message, through its descriptor ----------------------------- */

/* Field names as in cinder.proto, enum values by name, every field (zeros included), so that
 * a field added to the proto shows up here without new code. */
static cJSON *pb_json_message(const ProtobufCMessage *m);

static size_t pb_elem_size(ProtobufCType t) {
    switch (t) {
        case PROTOBUF_C_TYPE_INT64:
        case PROTOBUF_C_TYPE_SINT64:
        case PROTOBUF_C_TYPE_SFIXED64:
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED64:
        case PROTOBUF_C_TYPE_DOUBLE:
            return 8;
        case PROTOBUF_C_TYPE_STRING:
        case PROTOBUF_C_TYPE_MESSAGE:
            return sizeof(void *);
        case PROTOBUF_C_TYPE_BYTES:
            return sizeof(ProtobufCBinaryData);
        case PROTOBUF_C_TYPE_BOOL:
            return sizeof(protobuf_c_boolean);
        default:
            return 4;
    }
}

static cJSON *pb_json_value(const ProtobufCFieldDescriptor *f, const void *p) {
    switch (f->type) {
        case PROTOBUF_C_TYPE_INT32:
        case PROTOBUF_C_TYPE_SINT32:
        case PROTOBUF_C_TYPE_SFIXED32:
            return cJSON_CreateNumber(*(const int32_t *)p);
        case PROTOBUF_C_TYPE_UINT32:
        case PROTOBUF_C_TYPE_FIXED32:
            return cJSON_CreateNumber(*(const uint32_t *)p);
        case PROTOBUF_C_TYPE_INT64:
        case PROTOBUF_C_TYPE_SINT64:
        case PROTOBUF_C_TYPE_SFIXED64:
            return cJSON_CreateNumber((double)*(const int64_t *)p);
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED64:
            return cJSON_CreateNumber((double)*(const uint64_t *)p);
        case PROTOBUF_C_TYPE_FLOAT:
            return cJSON_CreateNumber(*(const float *)p);
        case PROTOBUF_C_TYPE_DOUBLE:
            return cJSON_CreateNumber(*(const double *)p);
        case PROTOBUF_C_TYPE_BOOL:
            return cJSON_CreateBool(*(const protobuf_c_boolean *)p);
        case PROTOBUF_C_TYPE_ENUM: {
            int v = *(const int *)p;
            const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
            return ev ? cJSON_CreateString(ev->name) : cJSON_CreateNumber(v);
        }
        case PROTOBUF_C_TYPE_STRING: {
            const char *s = *(char *const *)p;
            return cJSON_CreateString(s ? s : "");
        }
        case PROTOBUF_C_TYPE_BYTES: {
            const ProtobufCBinaryData *b = p;
            return cJSON_CreateNumber((double)b->len); /* the size; no binary in status */
        }
        case PROTOBUF_C_TYPE_MESSAGE: {
            const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
            return sub ? pb_json_message(sub) : cJSON_CreateNull();
        }
    }
    return cJSON_CreateNull();
}

static cJSON *pb_json_message(const ProtobufCMessage *m) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    cJSON *o = cJSON_CreateObject();
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *field = (const char *)m + f->offset;
        cJSON *v;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
            const char *elems = *(char *const *)field;
            size_t sz = pb_elem_size(f->type);
            v = cJSON_CreateArray();
            for (size_t k = 0; k < n; k++)
                cJSON_AddItemToArray(v, pb_json_value(f, elems + k * sz));
        } else {
            if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
                *(const uint32_t *)((const char *)m + f->quantifier_offset) != f->id)
                continue;
            v = pb_json_value(f, field);
        }
        cJSON_AddItemToObject(o, f->name, v);
    }
    return o;
}

static int remote_print_json(const ProtobufCMessage *m) {
    cJSON *j = pb_json_message(m);
    char *text = j ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!text) {
        fprintf(stderr, "cinder: out of memory\n");
        return 1;
    }
    printf("%s\n", text);
    free(text);
    return 0;
}

/* ---- status ------------------------------------------------------------------------------ */

static const char *group_state_name(int state) {
    switch (state) {
        case CINDER__GROUP_STATE__GROUP_STATE_JOINING:
            return "joining";
        case CINDER__GROUP_STATE__GROUP_STATE_READY:
            return "ready";
        case CINDER__GROUP_STATE__GROUP_STATE_LOST:
            return "lost";
        default:
            return "unknown";
    }
}

static void print_kv(const Cinder__KvUsage *kv) {
    if (!kv) {
        printf("(not reported)\n");
        return;
    }
    dtype type; /* a value this client does not know cannot arrive: proto_decode refuses it */
    const char *type_name = proto_kv_type_to_dtype(kv->kv_type, &type) ? dtype_name(type) : "?";
    printf("%llu blocks of %d tokens, %s", (unsigned long long)kv->blocks_total, kv->block_size,
           type_name);
    if (kv->block_bytes) /* 0: a coordinator before protocol 1.3 */
        printf(" (%.1f KiB a block, %.1f MiB in all)", kv->block_bytes / 1024.0,
               (double)kv->block_bytes * (double)kv->blocks_total / 1048576.0);
    printf(": %llu used, %llu free (%llu of them cached prefixes)\n",
           (unsigned long long)kv->blocks_used, (unsigned long long)kv->blocks_free,
           (unsigned long long)kv->blocks_cached);
}

static void print_status(const char *server, const Cinder__StatusReply *s) {
    printf("coordinator   %s\n", server);
    printf("model         %s\n", s->model);
    printf("uptime        %.1f s\n", s->uptime_ms * 1e-3);
    size_t ready = 0;
    for (size_t i = 0; i < s->n_groups; i++)
        ready += s->groups[i]->state == CINDER__GROUP_STATE__GROUP_STATE_READY;
    printf("groups        %zu (%zu ready)\n", s->n_groups, ready);
    for (size_t i = 0; i < s->n_groups; i++) {
        const Cinder__GroupStatus *g = s->groups[i];
        printf("  group %d     %s, %d rank%s, %d running, %llu steps, heartbeat %llu ms ago\n",
               g->group, group_state_name(g->state), g->world_size, g->world_size == 1 ? "" : "s",
               g->running_seqs, (unsigned long long)g->steps,
               (unsigned long long)g->heartbeat_age_ms);
        printf("    kv        ");
        print_kv(g->kv);
        for (size_t r = 0; r < g->n_ranks; r++) {
            const Cinder__RankInfo *ri = g->ranks[r];
            printf("    rank %-4d %s, %s, %.2f GiB free\n", ri->rank, ri->host, ri->device,
                   ri->mem_bytes / 1073741824.0);
        }
    }
    printf("kv            ");
    print_kv(s->kv);
    printf("prefix cache  %llu hits of %llu blocks looked up",
           (unsigned long long)s->prefix_cache_hits, (unsigned long long)s->prefix_cache_queries);
    if (s->prefix_cache_queries)
        printf(" (%.1f%%)", 100.0 * s->prefix_cache_hits / s->prefix_cache_queries);
    printf("\n");
    printf("requests      %d waiting, %d running; %llu accepted, %llu finished, %llu rejected; "
           "%llu preemptions\n",
           s->queue_waiting, s->running_seqs, (unsigned long long)s->requests_total,
           (unsigned long long)s->requests_finished, (unsigned long long)s->requests_rejected,
           (unsigned long long)s->preemptions);
    printf("tokens        %llu prompt, %llu output\n", (unsigned long long)s->prompt_tokens_total,
           (unsigned long long)s->output_tokens_total);
    printf("rates         %.1f prompt tokens/s, %.1f output tokens/s, %.2f requests/s\n",
           s->prompt_tokens_per_s, s->output_tokens_per_s, s->requests_per_s);
}

/* The options of status and models. */
typedef struct remote_args {
    const char *server;
    bool json;
    int64_t timeout_ms;
} remote_args;

static int remote_parse(const char *name, const char *summary, int argc, char **argv,
                        remote_args *a) {
    cli_option opts[] = {
        {"server", CLI_STR, &a->server, CINDER_CLIENT_DEFAULT_ENDPOINT, 0, 0, "ENDPOINT",
         "the coordinator's client endpoint", false},
        {"json", CLI_FLAG, &a->json, NULL, 0, 0, NULL,
         "print the reply as JSON (field names as in proto/cinder.proto)", false},
        {"timeout-ms", CLI_INT, &a->timeout_ms, "5000", 1, 3600000, "N",
         "give up when the coordinator has not answered within N ms", false},
    };
    char usage[128];
    snprintf(usage, sizeof usage, "cinder %s [--server ENDPOINT] [--json]", name);
    cinder_error err = {0};
    const char *pos[1];
    int n_pos;
    switch (cli_parse(opts, N_OPTS(opts), argc, argv, pos, 0, &n_pos, &err)) {
        case CLI_RESULT_HELP:
            cli_print_help(stdout, usage, summary, opts, N_OPTS(opts));
            return 0;
        case CLI_RESULT_ERROR:
            fprintf(stderr, "cinder: %s\nusage: %s\n", err.msg, usage);
            return 2;
        case CLI_RESULT_OK:
            break;
    }
    return -1;
}

int cmd_status(int argc, char **argv) {
    remote_args a = {0};
    int rc = remote_parse("status",
                          "Asks a coordinator for its state: worker groups and their ranks, KV "
                          "blocks, prefix cache, queue, counters and rates.",
                          argc, argv, &a);
    if (rc >= 0) return rc;
    cinder_client *c = remote_connect(a.server, a.timeout_ms);
    if (!c) return 1;
    Cinder__StatusReply *reply = NULL;
    cinder_error err = {0};
    if (cinder_client_status(c, -1, &reply, &err) != CINDER_OK) {
        fprintf(stderr, "cinder: status: %s\n", err.msg);
        rc = 1;
    } else if (a.json) {
        rc = remote_print_json(&reply->base);
    } else {
        print_status(a.server, reply);
        rc = 0;
    }
    cinder_client_status_free(reply);
    cinder_client_free(c);
    return rc;
}

int cmd_models(int argc, char **argv) {
    remote_args a = {0};
    int rc = remote_parse("models", "Lists the models a coordinator serves.", argc, argv, &a);
    if (rc >= 0) return rc;
    cinder_client *c = remote_connect(a.server, a.timeout_ms);
    if (!c) return 1;
    Cinder__ModelsReply *reply = NULL;
    cinder_error err = {0};
    if (cinder_client_models(c, -1, &reply, &err) != CINDER_OK) {
        fprintf(stderr, "cinder: models: %s\n", err.msg);
        rc = 1;
    } else if (a.json) {
        rc = remote_print_json(&reply->base);
    } else {
        for (size_t i = 0; i < reply->n_models; i++) {
            const Cinder__ModelInfo *m = reply->models[i];
            printf("%s\n  architecture %s, %s weights, vocabulary %d, context %d, chat template "
                   "%s, end ids",
                   m->name, m->architecture, m->weight_type, m->vocab_size, m->context_length,
                   m->chat ? "yes" : "no");
            for (size_t k = 0; k < m->n_eos_token_ids; k++) printf(" %d", m->eos_token_ids[k]);
            printf("\n");
        }
        rc = 0;
    }
    cinder_client_models_free(reply);
    cinder_client_free(c);
    return rc;
}
