/* groups.c - the worker endpoint: worker groups join, get their plan, and stay alive.
 *
 * A rank says Hello, then Register (rank, group, world size). When every rank of a group has
 * registered, each gets its ShardPlan; when every rank is Ready, the group's KV block manager
 * is created with the smallest pool any rank reported, and the scheduler starts sending it
 * steps. A rank that cannot take its plan (its backend has no pool of the plan's KV type, it
 * cannot load the model) answers Error instead of Ready: the reason is logged and its group is
 * LOST until it registers again. Heartbeats go both ways; a group whose ranks fall silent is
 * LOST: its sequences go back to the queue to be recomputed elsewhere (or when it returns),
 * nothing accepted is lost.
 * A rank that registers again for a lost group starts the group over. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "log.h"

static group *group_find(coord *co, int id) {
    for (int i = 0; i < co->n_groups; i++)
        if (co->groups[i]->id == id) return co->groups[i];
    return NULL;
}

/* The group and rank of a worker connection, by its routing id. */
static group *group_of(coord *co, const uint8_t *id, size_t len, int *rank) {
    for (int i = 0; i < co->n_groups; i++) {
        group *g = co->groups[i];
        for (int r = 0; r < g->world_size; r++)
            if (g->ranks[r].registered && g->ranks[r].id_len == len &&
                memcmp(g->ranks[r].id, id, len) == 0) {
                *rank = r;
                return g;
            }
    }
    return NULL;
}

void groups_send(coord *co, group *g, const Cinder__Envelope *env) {
    for (int r = 0; r < g->world_size; r++) {
        if (!g->ranks[r].registered) continue;
        cinder_error err = {0};
        cinder_status s = wire_send(co->workers, g->ranks[r].id, g->ranks[r].id_len, env, &err);
        if (s == CINDER_ERR_NOT_FOUND) {
            /* The rank's connection is gone: the next groups_tick declares the group lost. */
            LOG_WARN("group %d rank %d: its connection is gone", g->id, r);
            g->ranks[r].last_seen_us = 0;
        } else if (s) {
            LOG_WARN("group %d rank %d: cannot send %s: %s", g->id, r,
                     proto_body_name(env->body_case), err.msg);
        }
    }
}

int groups_max_blocks(const coord *co) {
    int best = 0;
    for (int i = 0; i < co->n_groups; i++)
        if (co->groups[i]->kv && co->groups[i]->n_blocks > best) best = co->groups[i]->n_blocks;
    return best;
}

static void group_reset(coord *co, group *g, Cinder__GroupState state) {
    if (g->kv || g->n_running) sched_group_lost(co, g);
    g->state = state;
    for (int r = 0; r < g->world_size; r++) memset(&g->ranks[r], 0, sizeof g->ranks[r]);
}

static void send_plan(coord *co, group *g) {
    const model_config *c = &co->m->config;
    for (int r = 0; r < g->world_size; r++) {
        Cinder__Range qh = CINDER__RANGE__INIT, kvh = CINDER__RANGE__INIT,
                      ffn = CINDER__RANGE__INIT, voc = CINDER__RANGE__INIT;
        qh.count = c->n_heads;
        kvh.count = c->n_kv_heads;
        ffn.count = c->d_ff;
        voc.count = c->vocab_size;
        Cinder__ShardPlan p = CINDER__SHARD_PLAN__INIT;
        p.group = g->id;
        p.rank = r;
        p.world_size = g->world_size;
        p.model_path = co->model_path;
        p.tp_size = 1;
        p.ep_size = 1;
        p.q_heads = &qh;
        p.kv_heads = &kvh;
        p.ffn = &ffn;
        p.vocab = &voc;
        p.block_size = (int32_t)co->a.block_size;
        p.kv_blocks = (int32_t)co->a.kv_blocks;
        p.kv_mem_bytes = (uint64_t)co->a.kv_mib << 20;
        p.max_batch_tokens = (int32_t)co->a.max_batch_tokens;
        p.max_seqs = (int32_t)co->a.max_seqs;
        p.kv_type = co->kv_wire;
        Cinder__Envelope env = CINDER__ENVELOPE__INIT;
        env.body_case = CINDER__ENVELOPE__BODY_SHARD_PLAN;
        env.shard_plan = &p;
        cinder_error err = {0};
        if (wire_send(co->workers, g->ranks[r].id, g->ranks[r].id_len, &env, &err))
            LOG_ERROR("group %d rank %d: cannot send its plan: %s", g->id, r, err.msg);
    }
}

static void on_register(coord *co, const wire_msg *m, const Cinder__Register *reg) {
    if (reg->world_size > 1) {
        wire_send_error(co->workers, m->identity, m->identity_len, NULL,
                        CINDER__ERROR_CODE__ERROR_CODE_UNSUPPORTED, "%s",
                        "register_rank.world_size > 1: groups of several ranks need tensor "
                        "parallelism, which this coordinator does not plan yet; start each worker "
                        "group with mpirun -np 1");
        return;
    }
    group *g = group_find(co, reg->group);
    if (g && g->world_size != reg->world_size) {
        char why[200];
        snprintf(why, sizeof why, "register_rank.world_size %d: group %d has %d ranks",
                 reg->world_size, g->id, g->world_size);
        wire_send_error(co->workers, m->identity, m->identity_len, NULL,
                        CINDER__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT, "%s", why);
        return;
    }
    if (g && g->ranks[reg->rank].registered && g->state != CINDER__GROUP_STATE__GROUP_STATE_LOST) {
        char why[200];
        snprintf(why, sizeof why, "group %d rank %d is already registered and alive", g->id,
                 reg->rank);
        wire_send_error(co->workers, m->identity, m->identity_len, NULL,
                        CINDER__ERROR_CODE__ERROR_CODE_DUPLICATE, "%s", why);
        return;
    }
    if (!g) {
        if (co->n_groups == co->cap_groups) {
            int cap = co->cap_groups ? 2 * co->cap_groups : 8;
            group **p = realloc(co->groups, (size_t)cap * sizeof *p);
            if (!p) return;
            co->groups = p;
            co->cap_groups = cap;
        }
        g = calloc(1, sizeof *g);
        if (!g || !(g->ranks = calloc((size_t)reg->world_size, sizeof *g->ranks))) {
            free(g);
            return;
        }
        g->id = reg->group;
        g->world_size = reg->world_size;
        g->state = CINDER__GROUP_STATE__GROUP_STATE_JOINING;
        co->groups[co->n_groups++] = g;
    } else if (g->state == CINDER__GROUP_STATE__GROUP_STATE_LOST) {
        LOG_INFO("group %d is back", g->id);
        group_reset(co, g, CINDER__GROUP_STATE__GROUP_STATE_JOINING);
    }
    group_rank *rk = &g->ranks[reg->rank];
    rk->registered = true;
    memcpy(rk->id, m->identity, m->identity_len);
    rk->id_len = m->identity_len;
    snprintf(rk->host, sizeof rk->host, "%s", reg->host);
    snprintf(rk->device, sizeof rk->device, "%s", reg->device);
    rk->mem_bytes = reg->mem_bytes;
    rk->last_seen_us = wire_now_us();
    LOG_INFO("group %d rank %d/%d registered from %s (%s)", g->id, reg->rank, g->world_size,
             rk->host, rk->device);
    for (int r = 0; r < g->world_size; r++)
        if (!g->ranks[r].registered) return;
    send_plan(co, g);
}

static const char *kv_wire_name(Cinder__KvType t) {
    dtype d;
    return proto_kv_type_to_dtype(t, &d) ? dtype_name(d) : "unknown";
}

static void on_ready(coord *co, group *g, int rank, const Cinder__Ready *rd) {
    group_rank *rk = &g->ranks[rank];
    if (rd->vocab_size != co->vocab || rd->block_size != co->a.block_size || rd->kv_blocks < 1 ||
        rd->kv_type != co->kv_wire) {
        /* A KV type other than the plan's: a worker from before protocol 1.3 (it skips
         * ShardPlan.kv_type and makes an F32 pool). */
        LOG_ERROR("group %d rank %d is ready with vocabulary %d, %d %s blocks of %d tokens; "
                  "expected vocabulary %d and %s blocks of %lld tokens%s",
                  g->id, rank, rd->vocab_size, rd->kv_blocks, kv_wire_name(rd->kv_type),
                  rd->block_size, co->vocab, dtype_name(co->kv_type), (long long)co->a.block_size,
                  rd->kv_type != co->kv_wire ? " (a worker older than protocol 1.3 makes F32 "
                                               "pools only)"
                                             : "");
        Cinder__Shutdown sd = CINDER__SHUTDOWN__INIT;
        sd.reason = "the rank's model or KV pool does not match the coordinator's";
        Cinder__Envelope env = CINDER__ENVELOPE__INIT;
        env.body_case = CINDER__ENVELOPE__BODY_SHUTDOWN;
        env.shutdown = &sd;
        cinder_error err = {0};
        wire_send(co->workers, rk->id, rk->id_len, &env, &err);
        return;
    }
    rk->ready = true;
    rk->kv_blocks = rd->kv_blocks;
    rk->block_size = rd->block_size;
    rk->max_batch_tokens = rd->max_batch_tokens;
    rk->max_seqs = rd->max_seqs;
    for (int r = 0; r < g->world_size; r++)
        if (!g->ranks[r].ready) return;
    int blocks = g->ranks[0].kv_blocks, mbt = g->ranks[0].max_batch_tokens,
        ms = g->ranks[0].max_seqs;
    for (int r = 1; r < g->world_size; r++) {
        if (g->ranks[r].kv_blocks < blocks) blocks = g->ranks[r].kv_blocks;
        if (g->ranks[r].max_batch_tokens < mbt) mbt = g->ranks[r].max_batch_tokens;
        if (g->ranks[r].max_seqs < ms) ms = g->ranks[r].max_seqs;
    }
    cinder_error err = {0};
    g->kv = kvm_create(blocks, (int)co->a.block_size, &err);
    if (!g->kv) {
        LOG_ERROR("group %d: %s", g->id, err.msg);
        return;
    }
    g->n_blocks = blocks;
    g->block_size = (int)co->a.block_size;
    g->max_batch_tokens = mbt;
    g->max_seqs = ms;
    g->state = CINDER__GROUP_STATE__GROUP_STATE_READY;
    LOG_INFO("group %d ready: %d ranks, %d KV blocks of %d tokens (%s, %zu bytes each, %.1f MiB), "
             "steps of up to %d tokens / %d sequences",
             g->id, g->world_size, blocks, g->block_size, dtype_name(co->kv_type),
             co->kv_block_bytes, (double)co->kv_block_bytes * blocks / 1048576.0, mbt, ms);
}

void groups_on_message(coord *co, wire_msg *m) {
    const Cinder__Envelope *env = m->env;
    int rank = -1;
    group *g = group_of(co, m->identity, m->identity_len, &rank);
    if (g) g->ranks[rank].last_seen_us = wire_now_us();
    switch (env->body_case) {
        case CINDER__ENVELOPE__BODY_HELLO: {
            if (env->hello->role != CINDER__ROLE__ROLE_WORKER) {
                wire_send_error(co->workers, m->identity, m->identity_len, NULL,
                                CINDER__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT, "%s",
                                "hello.role: this is the worker endpoint; clients use --listen");
                return;
            }
            Cinder__Hello h;
            proto_hello_init(&h, CINDER__ROLE__ROLE_COORDINATOR);
            Cinder__Envelope reply = CINDER__ENVELOPE__INIT;
            reply.body_case = CINDER__ENVELOPE__BODY_HELLO;
            reply.hello = &h;
            cinder_error err = {0};
            wire_send(co->workers, m->identity, m->identity_len, &reply, &err);
            return;
        }
        case CINDER__ENVELOPE__BODY_REGISTER_RANK:
            on_register(co, m, env->register_rank);
            return;
        case CINDER__ENVELOPE__BODY_ERROR:
            if (g && g->state == CINDER__GROUP_STATE__GROUP_STATE_JOINING &&
                !g->ranks[rank].ready) {
                /* A joining rank that cannot take its plan (no such KV type on its backend, a
                 * model it cannot load) says why and leaves: so does its group. */
                LOG_ERROR("group %d rank %d cannot join: %s", g->id, rank, env->error->message);
                group_reset(co, g, CINDER__GROUP_STATE__GROUP_STATE_LOST);
            } else if (g) {
                LOG_WARN("group %d rank %d reports: %s", g->id, rank, env->error->message);
            } else {
                LOG_WARN("a worker reports: %s", env->error->message);
            }
            return;
        default:
            break;
    }
    if (!g) {
        wire_send_error(co->workers, m->identity, m->identity_len, NULL,
                        CINDER__ERROR_CODE__ERROR_CODE_MALFORMED,
                        "%s is refused before Hello and Register", proto_body_name(env->body_case));
        return;
    }
    switch (env->body_case) {
        case CINDER__ENVELOPE__BODY_READY:
            on_ready(co, g, rank, env->ready);
            break;
        case CINDER__ENVELOPE__BODY_HEARTBEAT:
            break;
        case CINDER__ENVELOPE__BODY_STEP_RESULT:
            if (rank != 0)
                LOG_WARN("group %d: a step result from rank %d ignored", g->id, rank);
            else
                sched_on_result(co, g, env->step_result);
            break;
        default:
            wire_send_error(co->workers, m->identity, m->identity_len, NULL,
                            CINDER__ERROR_CODE__ERROR_CODE_UNSUPPORTED,
                            "%s is not accepted on the worker endpoint",
                            proto_body_name(env->body_case));
            break;
    }
}

void groups_tick(coord *co, uint64_t now) {
    uint64_t limit = (uint64_t)co->a.heartbeat_timeout_ms * 1000u;
    for (int i = 0; i < co->n_groups; i++) {
        group *g = co->groups[i];
        if (g->state == CINDER__GROUP_STATE__GROUP_STATE_LOST) continue;
        for (int r = 0; r < g->world_size; r++) {
            group_rank *rk = &g->ranks[r];
            if (!rk->registered || (rk->last_seen_us && now - rk->last_seen_us <= limit)) continue;
            LOG_ERROR("group %d rank %d %s: the group is lost; its %d running requests go back "
                      "to the queue",
                      g->id, r, rk->last_seen_us ? "fell silent" : "disconnected", g->n_running);
            group_reset(co, g, CINDER__GROUP_STATE__GROUP_STATE_LOST);
            break;
        }
    }
    if (now - co->last_heartbeat_us < 1000000u) return;
    co->last_heartbeat_us = now;
    for (int i = 0; i < co->n_groups; i++) {
        group *g = co->groups[i];
        if (g->state == CINDER__GROUP_STATE__GROUP_STATE_LOST) continue;
        Cinder__Heartbeat hb = CINDER__HEARTBEAT__INIT;
        hb.group = g->id;
        hb.time_us = now;
        hb.steps_done = g->steps;
        Cinder__Envelope env = CINDER__ENVELOPE__INIT;
        env.body_case = CINDER__ENVELOPE__BODY_HEARTBEAT;
        env.heartbeat = &hb;
        groups_send(co, g, &env);
    }
}

void groups_shutdown(coord *co, const char *reason) {
    Cinder__Shutdown sd = CINDER__SHUTDOWN__INIT;
    sd.reason = (char *)reason;
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_SHUTDOWN;
    env.shutdown = &sd;
    for (int i = 0; i < co->n_groups; i++) groups_send(co, co->groups[i], &env);
}
