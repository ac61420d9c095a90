/* frontend.c - the client endpoint of the coordinator.
 *
 * Every frame has passed proto_decode (structure, ranges, UTF-8) before it gets here; what needs
 * state is checked here: Hello first, request ids unique per connection, the queue bound, the
 * model name, the prompt against the context and the KV pool. A refusal is one Error naming
 * the reason; an accepted request gets chunks and exactly one GenerateDone, whatever happens
 * (cancel, timeout, a failed step, shutdown). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "log.h"
#include "rng.h"

/* ------------------------------------------------------------------------------------------ */
/* Connections */

static conn *conn_find(coord *co, const uint8_t *id, size_t len) {
    for (int i = 0; i < co->n_conns; i++) {
        conn *c = co->conns[i];
        if (c->id_len == len && memcmp(c->id, id, len) == 0) return c;
    }
    return NULL;
}

static void conn_drop(coord *co, int i) {
    free(co->conns[i]);
    co->conns[i] = co->conns[--co->n_conns];
}

void front_gc_conns(coord *co, uint64_t now) {
    /* Idle an hour without a request: forgotten (a later message must say Hello again). Over
     * the bound, the longest idle goes first. */
    for (int i = 0; i < co->n_conns;) {
        conn *c = co->conns[i];
        if (c->n_requests == 0 && (c->gone || now - c->last_seen_us > 3600ull * 1000000u))
            conn_drop(co, i);
        else
            i++;
    }
    while (co->n_conns > co->a.max_conns) {
        int oldest = -1;
        for (int i = 0; i < co->n_conns; i++)
            if (co->conns[i]->n_requests == 0 &&
                (oldest < 0 || co->conns[i]->last_seen_us < co->conns[oldest]->last_seen_us))
                oldest = i;
        if (oldest < 0) break;
        conn_drop(co, oldest);
    }
}

static conn *conn_get(coord *co, const uint8_t *id, size_t len) {
    conn *c = conn_find(co, id, len);
    if (c) return c;
    if (co->n_conns == co->cap_conns) {
        int cap = co->cap_conns ? 2 * co->cap_conns : 64;
        conn **p = realloc(co->conns, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        co->conns = p;
        co->cap_conns = cap;
    }
    c = calloc(1, sizeof *c);
    if (!c) return NULL;
    memcpy(c->id, id, len);
    c->id_len = len;
    co->conns[co->n_conns++] = c;
    return c;
}

/* Every request of every place, for lookups by connection. */
static request *request_find(coord *co, const conn *c, const char *id) {
    for (request *r = co->wait_head; r; r = r->next)
        if (r->c == c && strcmp(r->id, id) == 0) return r;
    for (int i = 0; i < co->n_groups; i++)
        for (request *r = co->groups[i]->run_head; r; r = r->next)
            if (r->c == c && strcmp(r->id, id) == 0) return r;
    return NULL;
}

static void front_send(coord *co, conn *c, const Cinder__Envelope *env) {
    if (c->gone) return;
    cinder_error err = {0};
    cinder_status s = wire_send(co->clients, c->id, c->id_len, env, &err);
    if (s == CINDER_OK) return;
    /* Its requests end at the next front_reap, outside whatever loop is sending now. */
    LOG_INFO("client connection lost (%s): its requests are cancelled", err.msg);
    c->gone = true;
}

/* ------------------------------------------------------------------------------------------ */
/* Output */

static bool append_text(request *r, const char *s, size_t n) {
    if (!n) return true;
    if (r->n_text + n + 1 > r->cap_text) {
        size_t cap = r->cap_text ? r->cap_text : 256;
        while (cap < r->n_text + n + 1) cap *= 2;
        char *p = realloc(r->text, cap);
        if (!p) return false;
        r->text = p;
        r->cap_text = cap;
    }
    memcpy(r->text + r->n_text, s, n);
    r->n_text += n;
    r->text[r->n_text] = 0;
    return true;
}

static void send_chunk(coord *co, request *r) {
    if (r->text) r->text[r->n_text] = 0;
    Cinder__GenerateChunk ch = CINDER__GENERATE_CHUNK__INIT;
    ch.request_id = r->id;
    ch.text = r->text ? r->text : "";
    ch.n_token_ids = (size_t)r->n_out;
    ch.token_ids = r->out_ids;
    if (r->logprobs) {
        ch.n_logprobs = (size_t)r->n_out;
        ch.logprobs = r->out_lps;
    }
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_GENERATE_CHUNK;
    env.generate_chunk = &ch;
    front_send(co, r->c, &env);
    r->n_text = 0;
    r->n_out = 0;
}

void front_flush(coord *co, request *r) {
    if (r->stream && (r->n_text || r->n_out)) send_chunk(co, r);
}

static void release_text(request *r, const char *piece, size_t len) {
    if (r->text_stopped) return;
    const char *out;
    size_t n;
    r->text_stopped = stop_text_feed(&r->stop, piece, len, &out, &n);
    if (!append_text(r, out, n)) LOG_ERROR("out of memory for request %s's text", r->id);
}

bool front_on_token(coord *co, request *r, int32_t token, float logprob, bool has_logprob) {
    uint64_t now = wire_now_us();
    r->n_generated++;
    if (r->sp.temperature > 0) r->rng_draws++;
    if (!r->t_first) r->t_first = now;
    r->t_last = now;
    co->output_tokens_total++;
    for (int i = 0; i < r->n_stop_ids; i++)
        if (token == r->stop_ids[i]) {
            front_finish(co, r, CINDER__FINISH_REASON__FINISH_REASON_STOP, NULL);
            return true;
        }
    if (r->n_tokens == r->cap_tokens) {
        int cap = 2 * r->cap_tokens;
        int32_t *p = realloc(r->tokens, (size_t)cap * sizeof *p);
        if (!p) {
            front_finish(co, r, CINDER__FINISH_REASON__FINISH_REASON_ERROR, "out of memory");
            return true;
        }
        r->tokens = p;
        r->cap_tokens = cap;
    }
    r->tokens[r->n_tokens++] = token;
    if (r->n_out == r->cap_out) {
        int cap = r->cap_out ? 2 * r->cap_out : 16;
        int32_t *ids = realloc(r->out_ids, (size_t)cap * sizeof *ids);
        if (ids) r->out_ids = ids;
        float *lps = realloc(r->out_lps, (size_t)cap * sizeof *lps);
        if (lps) r->out_lps = lps;
        if (!ids || !lps) {
            front_finish(co, r, CINDER__FINISH_REASON__FINISH_REASON_ERROR, "out of memory");
            return true;
        }
        r->cap_out = cap;
    }
    r->out_ids[r->n_out] = token;
    r->out_lps[r->n_out] = has_logprob ? logprob : 0;
    r->n_out++;
    char piece[1024];
    cinder_error err = {0};
    int len = tok_stream_feed(&r->ts, token, piece, sizeof piece, &err);
    if (len < 0) {
        front_finish(co, r, CINDER__FINISH_REASON__FINISH_REASON_ERROR, err.msg);
        return true;
    }
    release_text(r, piece, (size_t)len);
    if (r->text_stopped) {
        front_finish(co, r, CINDER__FINISH_REASON__FINISH_REASON_STOP, NULL);
        return true;
    }
    if (r->n_generated >= r->max_new) {
        front_finish(co, r, CINDER__FINISH_REASON__FINISH_REASON_LENGTH, NULL);
        return true;
    }
    return false;
}

void front_finish(coord *co, request *r, Cinder__FinishReason reason, const char *msg) {
    CN_ASSERT(r->step_tokens == 0);
    if (r->padding) { /* no client: a static batch's slot (scheduler.c) */
        sched_pad_drop(co, r);
        return;
    }
    if (r->state == REQ_WAITING)
        sched_dequeue(co, r);
    else if (!sched_pad(co, r, reason))
        sched_detach(co, r);
    /* What the decoder and the stop matcher still hold. */
    if (!r->text_stopped) {
        char piece[16];
        int len = tok_stream_flush(&r->ts, piece, sizeof piece);
        if (len > 0) release_text(r, piece, (size_t)len);
        if (!r->text_stopped) {
            const char *rest;
            size_t n;
            stop_text_finish(&r->stop, &rest, &n);
            append_text(r, rest, n);
        }
    }
    if (r->n_text || r->n_out || !r->stream) send_chunk(co, r);
    uint64_t now = wire_now_us();
    Cinder__Usage usage = CINDER__USAGE__INIT;
    usage.prompt_tokens = r->n_prompt;
    usage.completion_tokens = r->n_generated;
    usage.cached_prompt_tokens = r->n_cached;
    Cinder__Timings tm = CINDER__TIMINGS__INIT;
    tm.time_to_first_token_us = r->t_first ? r->t_first - r->t_arrival : 0;
    tm.time_per_output_token_us =
        r->n_generated > 1 ? (r->t_last - r->t_first) / (uint64_t)(r->n_generated - 1) : 0;
    tm.queue_us = r->t_scheduled ? r->t_scheduled - r->t_arrival : now - r->t_arrival;
    tm.total_us = now - r->t_arrival;
    Cinder__GenerateDone done = CINDER__GENERATE_DONE__INIT;
    done.request_id = r->id;
    done.finish_reason = reason;
    done.usage = &usage;
    done.timings = &tm;
    done.message = (char *)(msg ? msg : "");
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_GENERATE_DONE;
    env.generate_done = &done;
    front_send(co, r->c, &env);
    LOG_DEBUG("request %s done (%d) after %d tokens", r->id, (int)reason, r->n_generated);
    r->c->n_requests--;
    co->requests_finished++;
    request_free(r);
}

void front_end_request(coord *co, request *r, Cinder__FinishReason reason, const char *msg) {
    if (r->step_tokens > 0) {
        if (!r->pending_finish) {
            r->pending_finish = reason;
            snprintf(r->pending_msg, sizeof r->pending_msg, "%s", msg ? msg : "");
        }
        return;
    }
    front_finish(co, r, reason, msg);
}

/* Ends the requests of connections found gone. A request in a step in flight ends when the
 * step comes back (pending_finish). */
static void conn_end_requests(coord *co, conn *c) {
    for (;;) {
        request *victim = NULL;
        for (request *r = co->wait_head; r && !victim; r = r->next)
            if (r->c == c) victim = r;
        for (int i = 0; i < co->n_groups && !victim; i++)
            for (request *r = co->groups[i]->run_head; r && !victim; r = r->next)
                if (r->c == c && !r->pending_finish) victim = r;
        if (!victim) break;
        front_end_request(co, victim, CINDER__FINISH_REASON__FINISH_REASON_CANCELLED,
                          "the client disconnected");
    }
}

void front_reap(coord *co) {
    for (int i = 0; i < co->n_conns; i++)
        if (co->conns[i]->gone && co->conns[i]->n_requests > 0) conn_end_requests(co, co->conns[i]);
}

void front_check_deadlines(coord *co, uint64_t now) {
    for (;;) {
        request *victim = NULL;
        for (request *r = co->wait_head; r && !victim; r = r->next)
            if (r->deadline && now >= r->deadline) victim = r;
        for (int i = 0; i < co->n_groups && !victim; i++)
            for (request *r = co->groups[i]->run_head; r && !victim; r = r->next)
                if (r->deadline && now >= r->deadline && !r->pending_finish) victim = r;
        if (!victim) break;
        victim->deadline = 0;
        front_end_request(co, victim, CINDER__FINISH_REASON__FINISH_REASON_TIMEOUT,
                          "the request's timeout passed");
    }
}

/* ------------------------------------------------------------------------------------------ */
/* GenerateRequest */

/* The prompt as token ids; on failure an Error code and err. */
static int32_t *front_tokenize(coord *co, const Cinder__GenerateRequest *q, int *n_out,
                               Cinder__ErrorCode *code, cinder_error *err) {
    *code = CINDER__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT;
    if (q->prompt_case == CINDER__GENERATE_REQUEST__PROMPT_TOKENS) {
        size_t n = q->tokens->n_ids;
        int32_t *ids = malloc((n + 16) * sizeof *ids);
        if (!ids) goto nomem;
        memcpy(ids, q->tokens->ids, n * sizeof *ids);
        *n_out = (int)n;
        return ids;
    }
    char *templated = NULL;
    const char *text = q->text;
    if (q->prompt_case == CINDER__GENERATE_REQUEST__PROMPT_CHAT) {
        int n = (int)q->chat->n_messages;
        chat_message *msgs = malloc((size_t)n * sizeof *msgs);
        if (!msgs) goto nomem;
        for (int i = 0; i < n; i++)
            msgs[i] = (chat_message){q->chat->messages[i]->role, q->chat->messages[i]->content};
        templated = tok_chat_apply(co->tok, msgs, n, true, err);
        free(msgs);
        if (!templated) {
            cinder_error_prefix(err, "generate_request.chat");
            return NULL;
        }
        text = templated;
    }
    size_t len = strlen(text), n = 0;
    int32_t *ids = NULL;
    cinder_status s = tok_encode(co->tok, text, len, true, true, NULL, 0, &n, err);
    if (s == CINDER_OK || s == CINDER_ERR_RANGE) {
        ids = malloc((n + 16) * sizeof *ids);
        if (ids && tok_encode(co->tok, text, len, true, true, ids, n, &n, err) != CINDER_OK) {
            free(ids);
            ids = NULL;
        } else if (!ids) {
            cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        }
    }
    free(templated);
    if (!ids) {
        if (err->status == CINDER_ERR_NOMEM) *code = CINDER__ERROR_CODE__ERROR_CODE_INTERNAL;
        return NULL;
    }
    *n_out = (int)n;
    return ids;
nomem:
    *code = CINDER__ERROR_CODE__ERROR_CODE_INTERNAL;
    cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
    return NULL;
}

static void front_on_generate(coord *co, conn *c, const uint8_t *id, size_t id_len,
                              const Cinder__GenerateRequest *q) {
    const char *rid = q->request_id;
    Cinder__ErrorCode code = CINDER__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT;
    char why[600];
    cinder_error err = {0};
    int32_t *ids = NULL;
    request *r = NULL;
    if (co->stopping) {
        code = CINDER__ERROR_CODE__ERROR_CODE_SHUTTING_DOWN;
        snprintf(why, sizeof why, "the coordinator is shutting down");
        goto refuse;
    }
    if (request_find(co, c, rid)) {
        code = CINDER__ERROR_CODE__ERROR_CODE_DUPLICATE;
        snprintf(why, sizeof why, "request id is already in flight on this connection");
        goto refuse;
    }
    if (q->model && q->model[0] && strcmp(q->model, co->model_name) != 0) {
        code = CINDER__ERROR_CODE__ERROR_CODE_NOT_FOUND;
        snprintf(why, sizeof why, "generate_request.model: this coordinator serves \"%s\" only",
                 co->model_name);
        goto refuse;
    }
    if (co->n_groups == 0) {
        code = CINDER__ERROR_CODE__ERROR_CODE_UNAVAILABLE;
        snprintf(why, sizeof why, "no worker group has joined yet");
        goto refuse;
    }
    if (co->n_waiting >= co->a.max_queue) {
        code = CINDER__ERROR_CODE__ERROR_CODE_BUSY;
        snprintf(why, sizeof why, "busy: %d requests are waiting (the bound); try again later",
                 co->n_waiting);
        goto refuse;
    }
    int n = 0;
    ids = front_tokenize(co, q, &n, &code, &err);
    if (!ids) {
        snprintf(why, sizeof why, "%s", err.msg);
        goto refuse;
    }
    if (n == 0) {
        snprintf(why, sizeof why, "the prompt is empty after tokenizing");
        goto refuse;
    }
    if (n >= co->ctx) {
        code = CINDER__ERROR_CODE__ERROR_CODE_TOO_LARGE;
        snprintf(why, sizeof why,
                 "the prompt is %d tokens; the model's context is %d, so at most %d fit", n,
                 co->ctx, co->ctx - 1);
        goto refuse;
    }
    int max_blocks = groups_max_blocks(co);
    int bs = (int)co->a.block_size;
    if (max_blocks > 0 && (n + bs - 1) / bs > max_blocks) {
        code = CINDER__ERROR_CODE__ERROR_CODE_TOO_LARGE;
        snprintf(why, sizeof why,
                 "the prompt is %d tokens; the largest KV pool holds %d blocks of %d tokens", n,
                 max_blocks, bs);
        goto refuse;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        code = CINDER__ERROR_CODE__ERROR_CODE_INTERNAL;
        snprintf(why, sizeof why, "out of memory");
        goto refuse;
    }
    r->sp = sampler_params_default();
    if (q->sampling) {
        r->has_sampling = true;
        r->sp.temperature = q->sampling->temperature;
        r->sp.top_k = q->sampling->top_k;
        r->sp.top_p = q->sampling->top_p;
        r->sp.min_p = q->sampling->min_p;
        r->sp.repetition_penalty = q->sampling->repetition_penalty;
        if (q->sampling->has_seed) {
            r->sp.seed = q->sampling->seed;
        } else {
            uint64_t x = wire_now_us() ^ (co->next_seq_id << 32);
            r->sp.seed = rng_splitmix64(&x);
        }
        if (sampler_params_check(&r->sp, &err)) {
            snprintf(why, sizeof why, "generate_request.sampling: %s", err.msg);
            goto refuse;
        }
    }
    if (stop_text_init(&r->stop, (const char *const *)q->stop, (int)q->n_stop, &err)) {
        snprintf(why, sizeof why, "generate_request.stop: %s", err.msg);
        goto refuse;
    }
    if (!q->ignore_eos)
        for (int i = 0; i < co->n_eos_ids; i++) r->stop_ids[r->n_stop_ids++] = co->eos_ids[i];
    for (size_t i = 0; i < q->n_stop_token_ids; i++)
        r->stop_ids[r->n_stop_ids++] = q->stop_token_ids[i];
    snprintf(r->id, sizeof r->id, "%s", rid);
    r->c = c;
    r->seq_id = ++co->next_seq_id;
    r->tokens = ids;
    r->cap_tokens = n + 16;
    ids = NULL;
    r->n_tokens = r->n_prompt = n;
    r->max_new = q->max_tokens;
    if (r->max_new > co->ctx - n) r->max_new = co->ctx - n;
    r->stream = q->stream;
    r->logprobs = q->logprobs;
    tok_stream_init(&r->ts, co->tok, false);
    r->t_arrival = wire_now_us();
    r->deadline = q->timeout_ms ? r->t_arrival + (uint64_t)q->timeout_ms * 1000u : 0;
    c->n_requests++;
    co->requests_total++;
    co->prompt_tokens_total += (uint64_t)n;
    sched_enqueue(co, r);
    LOG_DEBUG("request %s accepted: %d prompt tokens, at most %d new", r->id, n, r->max_new);
    return;
refuse:
    co->requests_rejected++;
    free(ids);
    request_free(r);
    LOG_DEBUG("request refused: %s", why);
    wire_send_error(co->clients, id, id_len, rid, code, "%s", why);
}

/* ------------------------------------------------------------------------------------------ */
/* Status, Models */

static void kv_usage_add(Cinder__KvUsage *u, const kvm_stats *s) {
    u->blocks_total += (uint64_t)s->n_blocks;
    u->blocks_used += (uint64_t)s->used;
    u->blocks_free += (uint64_t)(s->free + s->cached); /* cached blocks are evictable */
    u->blocks_cached += (uint64_t)s->cached;
    u->block_size = s->block_size;
}

/* Fills env with a StatusReply whose parts are malloc'd; front_status_free frees them. */
void front_fill_status(coord *co, Cinder__Envelope *env) {
    uint64_t now = wire_now_us();
    Cinder__StatusReply *st = calloc(1, sizeof *st);
    Cinder__KvUsage *kv = calloc(1, sizeof *kv);
    int ng = co->n_groups;
    Cinder__GroupStatus **gp = calloc((size_t)(ng ? ng : 1), sizeof *gp);
    if (!st || !kv || !gp) {
        free(st);
        free(kv);
        free(gp);
        return;
    }
    cinder__status_reply__init(st);
    cinder__kv_usage__init(kv);
    kv->kv_type = co->kv_wire;
    kv->block_bytes = co->kv_block_bytes;
    st->model = co->model_name;
    st->uptime_ms = (now - co->t_start) / 1000u;
    st->kv = kv;
    st->groups = gp;
    int running = 0;
    for (int i = 0; i < ng; i++) {
        group *g = co->groups[i];
        Cinder__GroupStatus *gs = calloc(1, sizeof *gs);
        Cinder__KvUsage *gkv = calloc(1, sizeof *gkv);
        Cinder__RankInfo **ranks = calloc((size_t)g->world_size, sizeof *ranks);
        Cinder__RankInfo *ri = calloc((size_t)g->world_size, sizeof *ri);
        if (!gs || !gkv || !ranks || !ri) {
            free(gs);
            free(gkv);
            free(ranks);
            free(ri);
            break;
        }
        cinder__group_status__init(gs);
        cinder__kv_usage__init(gkv);
        gkv->kv_type = co->kv_wire; /* a rank with another type is not let in (groups.c) */
        gkv->block_bytes = co->kv_block_bytes;
        gs->group = g->id;
        gs->state = g->state;
        gs->world_size = g->world_size;
        gs->kv = gkv;
        gs->running_seqs = g->n_running;
        gs->steps = g->steps;
        uint64_t last = 0;
        for (int k = 0; k < g->world_size; k++) {
            cinder__rank_info__init(&ri[k]);
            ri[k].rank = k;
            ri[k].host = g->ranks[k].host;
            ri[k].device = g->ranks[k].device;
            ri[k].mem_bytes = g->ranks[k].mem_bytes;
            ranks[k] = &ri[k];
            if (g->ranks[k].last_seen_us > last) last = g->ranks[k].last_seen_us;
        }
        gs->ranks = ranks;
        gs->n_ranks = (size_t)g->world_size;
        gs->heartbeat_age_ms = last ? (now - last) / 1000u : 0;
        if (g->kv) {
            kvm_stats s;
            kvm_get_stats(g->kv, &s);
            kv_usage_add(gkv, &s);
            kv_usage_add(kv, &s);
            st->prefix_cache_hits += s.hit_blocks;
            st->prefix_cache_queries += s.query_blocks;
        }
        running += g->n_running;
        gp[st->n_groups++] = gs;
    }
    st->queue_waiting = co->n_waiting;
    st->running_seqs = running;
    st->requests_total = co->requests_total;
    st->requests_finished = co->requests_finished;
    st->requests_rejected = co->requests_rejected;
    st->prompt_tokens_total = co->prompt_tokens_total;
    st->output_tokens_total = co->output_tokens_total;
    st->preemptions = co->preemptions;
    if (co->n_samples >= 2) {
        const struct coord_sample *a = &co->samples[0], *b = &co->samples[co->n_samples - 1];
        double dt = (double)(b->t - a->t) * 1e-6;
        if (dt > 0) {
            st->prompt_tokens_per_s = (double)(b->prompt - a->prompt) / dt;
            st->output_tokens_per_s = (double)(b->output - a->output) / dt;
            st->requests_per_s = (double)(b->finished - a->finished) / dt;
        }
    }
    env->body_case = CINDER__ENVELOPE__BODY_STATUS_REPLY;
    env->status_reply = st;
}

static void front_status_free(Cinder__Envelope *env) {
    Cinder__StatusReply *st = env->status_reply;
    if (!st) return;
    for (size_t i = 0; i < st->n_groups; i++) {
        Cinder__GroupStatus *gs = st->groups[i];
        if (gs->n_ranks) free(gs->ranks[0]);
        free(gs->ranks);
        free(gs->kv);
        free(gs);
    }
    free(st->groups);
    free(st->kv);
    free(st);
}

static void front_on_models(coord *co, conn *c) {
    Cinder__ModelInfo mi = CINDER__MODEL_INFO__INIT;
    mi.name = co->model_name;
    mi.architecture = co->m->config.arch_name;
    mi.vocab_size = co->vocab;
    mi.context_length = co->ctx;
    const model_tensor *t = model_tensor_find(co->m, "blk.0.attn_q.weight");
    mi.weight_type = (char *)(t ? dtype_name(t->type) : "");
    mi.chat = tok_chat_format(co->tok) != CHAT_FORMAT_NONE;
    mi.n_eos_token_ids = (size_t)co->n_eos_ids;
    mi.eos_token_ids = co->eos_ids;
    Cinder__ModelInfo *list[1] = {&mi};
    Cinder__ModelsReply mr = CINDER__MODELS_REPLY__INIT;
    mr.n_models = 1;
    mr.models = list;
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_MODELS_REPLY;
    env.models_reply = &mr;
    front_send(co, c, &env);
}

/* ------------------------------------------------------------------------------------------ */

void front_on_message(coord *co, wire_msg *m) {
    conn *c = conn_get(co, m->identity, m->identity_len);
    if (!c) {
        wire_send_error(co->clients, m->identity, m->identity_len, NULL,
                        CINDER__ERROR_CODE__ERROR_CODE_INTERNAL, "%s", "out of memory");
        return;
    }
    c->last_seen_us = wire_now_us();
    const Cinder__Envelope *env = m->env;
    if (env->body_case == CINDER__ENVELOPE__BODY_HELLO) {
        if (env->hello->role != CINDER__ROLE__ROLE_CLIENT) {
            wire_send_error(co->clients, c->id, c->id_len, NULL,
                            CINDER__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT, "%s",
                            "hello.role: this is the client endpoint; workers use --control");
            return;
        }
        c->hello = true;
        Cinder__Hello h;
        proto_hello_init(&h, CINDER__ROLE__ROLE_COORDINATOR);
        Cinder__Envelope reply = CINDER__ENVELOPE__INIT;
        reply.body_case = CINDER__ENVELOPE__BODY_HELLO;
        reply.hello = &h;
        front_send(co, c, &reply);
        return;
    }
    if (!c->hello) {
        /* A new connection, or one this coordinator does not know: it restarted, or forgot the
         * connection after an hour idle, while the client's socket reconnected by itself. The
         * code tells a client to say Hello and send the message again. */
        if (env->body_case == CINDER__ENVELOPE__BODY_ERROR) {
            LOG_INFO("a client reports before Hello: %s", env->error->message);
            return;
        }
        wire_send_error(co->clients, c->id, c->id_len, proto_envelope_request_id(env),
                        CINDER__ERROR_CODE__ERROR_CODE_HELLO_REQUIRED, "%s",
                        "a connection opens with Hello first: say Hello, then send this again "
                        "(docs/protocol.md)");
        return;
    }
    switch (env->body_case) {
        case CINDER__ENVELOPE__BODY_GENERATE_REQUEST:
            front_on_generate(co, c, m->identity, m->identity_len, env->generate_request);
            break;
        case CINDER__ENVELOPE__BODY_CANCEL: {
            request *r = request_find(co, c, env->cancel->request_id);
            if (!r || r->pending_finish) {
                wire_send_error(co->clients, c->id, c->id_len, env->cancel->request_id,
                                CINDER__ERROR_CODE__ERROR_CODE_NOT_FOUND, "%s",
                                "cancel: no request with this id is in flight on this connection");
                break;
            }
            front_end_request(co, r, CINDER__FINISH_REASON__FINISH_REASON_CANCELLED,
                              "cancelled by the client");
            break;
        }
        case CINDER__ENVELOPE__BODY_STATUS_REQUEST: {
            Cinder__Envelope reply = CINDER__ENVELOPE__INIT;
            front_fill_status(co, &reply);
            if (reply.status_reply) front_send(co, c, &reply);
            front_status_free(&reply);
            break;
        }
        case CINDER__ENVELOPE__BODY_MODELS_REQUEST:
            front_on_models(co, c);
            break;
        case CINDER__ENVELOPE__BODY_ERROR:
            LOG_INFO("a client reports: %s", env->error->message);
            break;
        default:
            wire_send_error(
                co->clients, c->id, c->id_len, NULL, CINDER__ERROR_CODE__ERROR_CODE_UNSUPPORTED,
                "%s is not accepted on the client endpoint", proto_body_name(env->body_case));
            break;
    }
}
