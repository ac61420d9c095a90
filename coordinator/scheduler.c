/* scheduler.c - iteration-level scheduling (Orca, vLLM): one step per group at a time.
 *
 * A step is planned when the group's previous step has come back:
 *   1. every running sequence gets blocks for all its tokens (its newly sampled token); when the
 *      pool runs dry, the most recently admitted sequence is preempted: its blocks are freed
 *      and it goes back to the front of the queue, to be recomputed later (its prompt and the
 *      tokens generated so far are prefilled again; prefix-cache hits make that cheaper);
 *   2. decodes first (one token each), then the prefill chunks of sequences admitted earlier,
 *      within the token budget (max_batch_tokens), so a long prompt never stalls decodes;
 *   3. waiting requests are admitted in arrival order while blocks and budget last; the head
 *      of the queue is never overtaken (FCFS). With several groups, a request goes to the group
 *      where it costs least: its uncached prompt tokens plus a charge per running sequence.
 *      With continuous batching off, requests are admitted only when the group runs nothing
 *      (static batches), and a batch keeps its shape until its last request ends: a request
 *      that ends before leaves a padding slot that goes on decoding its sequence, output
 *      dropped (sched_pad), as a fixed-shape batch does (FasterTransformer, Hugging Face
 *      generate). --static-early-exit drops that: ended requests leave the steps at once.
 * The results come back as one sampled token per sequence whose step reached its last token. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator.h"
#include "log.h"

void request_free(request *r) {
    if (!r) return;
    stop_text_free(&r->stop);
    free(r->tokens);
    free(r->sent_table);
    free(r->text);
    free(r->out_ids);
    free(r->out_lps);
    free(r);
}

/* ------------------------------------------------------------------------------------------ */
/* Lists */

static void list_remove(request **head, request **tail, request *r) {
    if (r->prev) r->prev->next = r->next;
    else *head = r->next;
    if (r->next) r->next->prev = r->prev;
    else *tail = r->prev;
    r->prev = r->next = NULL;
}

static void list_push_back(request **head, request **tail, request *r) {
    r->next = NULL;
    r->prev = *tail;
    if (*tail) (*tail)->next = r;
    else *head = r;
    *tail = r;
}

static void list_push_front(request **head, request **tail, request *r) {
    r->prev = NULL;
    r->next = *head;
    if (*head) (*head)->prev = r;
    else *tail = r;
    *head = r;
}

void sched_enqueue(coord *co, request *r) {
    r->state = REQ_WAITING;
    list_push_back(&co->wait_head, &co->wait_tail, r);
    co->n_waiting++;
}

void sched_dequeue(coord *co, request *r) {
    CN_ASSERT(r->state == REQ_WAITING);
    list_remove(&co->wait_head, &co->wait_tail, r);
    co->n_waiting--;
}

static bool grow(void **p, int *cap, int need, size_t elem) {
    if (need <= *cap) return true;
    int cap2 = *cap ? *cap : 16;
    while (cap2 < need) cap2 *= 2;
    void *q = realloc(*p, (size_t)cap2 * elem);
    if (!q) return false;
    *p = q;
    *cap = cap2;
    return true;
}

static void group_release_seq(group *g, uint64_t seq_id) {
    if (!grow((void **)&g->release, &g->cap_release, g->n_release + 1, sizeof *g->release)) {
        LOG_WARN("out of memory: the workers keep sequence %llu's state until they restart",
                 (unsigned long long)seq_id);
        return;
    }
    g->release[g->n_release++] = seq_id;
}

void sched_detach(coord *co, request *r) {
    (void)co;
    if (r->state != REQ_RUNNING) return;
    group *g = r->g;
    CN_ASSERT(r->step_tokens == 0);
    if (g->kv) kvm_seq_free(g->kv, r->kv);
    r->kv = NULL;
    if (r->on_worker) group_release_seq(g, r->seq_id);
    r->on_worker = false;
    r->n_sent = 0;
    r->n_computed = 0;
    list_remove(&g->run_head, &g->run_tail, r);
    g->n_running--;
    r->g = NULL;
}

/* Back to the front of the queue, to be recomputed. */
static void sched_preempt(coord *co, request *r) {
    group *g = r->g;
    LOG_DEBUG("preempting request %s (sequence %llu, %d tokens) on group %d", r->id,
              (unsigned long long)r->seq_id, r->n_tokens, g->id);
    sched_detach(co, r);
    co->preemptions++;
    r->state = REQ_WAITING;
    list_push_front(&co->wait_head, &co->wait_tail, r);
    co->n_waiting++;
}

/* Appends token to a padding slot's sequence. */
static bool pad_append(request *p, int32_t token) {
    if (!grow((void **)&p->tokens, &p->cap_tokens, p->n_tokens + 1, sizeof *p->tokens))
        return false;
    p->tokens[p->n_tokens++] = token;
    return true;
}

bool sched_pad(coord *co, request *r, Cinder__FinishReason reason) {
    if (!co->a.no_continuous_batching || co->a.static_early_exit || r->state != REQ_RUNNING ||
        r->padding || reason == CINDER__FINISH_REASON__FINISH_REASON_ERROR)
        return false;
    group *g = r->g;
    if (g->n_running - g->n_padding < 2 || r->n_tokens >= co->ctx) return false;
    request *p = calloc(1, sizeof *p);
    if (!p) return false;
    /* A request that ended on a stop token did not keep it: the slot decodes it next. */
    if (r->n_tokens == r->n_computed &&
        !pad_append(r, co->n_eos_ids ? co->eos_ids[0] : r->tokens[r->n_tokens - 1])) {
        free(p);
        return false;
    }
    snprintf(p->id, sizeof p->id, "(padding of sequence %llu)", (unsigned long long)r->seq_id);
    p->state = REQ_RUNNING;
    p->padding = true;
    p->seq_id = r->seq_id;
    p->n_prompt = r->n_prompt;
    p->g = g;
    p->n_computed = r->n_computed;
    p->on_worker = r->on_worker;
    p->sp = r->sp;
    p->has_sampling = r->has_sampling;
    p->rng_draws = r->rng_draws;
    /* the sequence, its blocks and what the workers hold move over */
    p->tokens = r->tokens, p->n_tokens = r->n_tokens, p->cap_tokens = r->cap_tokens;
    p->kv = r->kv;
    p->sent_table = r->sent_table, p->n_sent = r->n_sent, p->cap_sent = r->cap_sent;
    r->tokens = NULL, r->n_tokens = r->cap_tokens = 0;
    r->kv = NULL;
    r->sent_table = NULL, r->n_sent = r->cap_sent = 0;
    r->on_worker = false;
    /* in r's place in the running list */
    p->prev = r->prev, p->next = r->next;
    if (r->prev)
        r->prev->next = p;
    else
        g->run_head = p;
    if (r->next)
        r->next->prev = p;
    else
        g->run_tail = p;
    r->prev = r->next = NULL;
    r->g = NULL;
    g->n_padding++;
    return true;
}

void sched_pad_drop(coord *co, request *p) {
    CN_ASSERT(p->padding);
    if (p->g) p->g->n_padding--;
    sched_detach(co, p);
    request_free(p);
}

/* A static batch whose last request has ended: its padding slots end too. */
static void pad_release(coord *co, group *g) {
    if (g->n_padding == 0 || g->n_running > g->n_padding) return;
    while (g->run_head) sched_pad_drop(co, g->run_head);
}

void sched_group_lost(coord *co, group *g) {
    /* Requeue in arrival order: walk from the tail, each to the queue front. */
    while (g->run_tail) {
        request *r = g->run_tail;
        r->step_tokens = 0;
        r->on_worker = false; /* the workers are gone; nothing to release */
        if (r->padding)
            sched_pad_drop(co, r);
        else if (r->pending_finish)
            front_finish(co, r, r->pending_finish, r->pending_msg);
        else
            sched_preempt(co, r);
    }
    g->in_flight = false;
    g->n_step_reqs = 0;
    g->n_release = 0;
    kvm_free(g->kv);
    g->kv = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Planning */

typedef struct plan {
    request **reqs;
    int *chunk;
    int n, cap;
    int budget, max_seqs;
} plan;

static bool plan_add(plan *p, request *r, int chunk) {
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        request **rr = realloc(p->reqs, (size_t)cap * sizeof *rr);
        if (!rr) return false;
        p->reqs = rr;
        int *cc = realloc(p->chunk, (size_t)cap * sizeof *cc);
        if (!cc) return false;
        p->chunk = cc;
        p->cap = cap;
    }
    p->reqs[p->n] = r;
    p->chunk[p->n] = chunk;
    p->n++;
    p->budget -= chunk;
    return true;
}

/* Step 1: blocks for every token of every running sequence, preempting when they run out. A
 * padding slot never preempts a request: it ends instead, and it is the first to go. */
static void plan_grow_running(coord *co, group *g) {
    for (request *r = g->run_head, *next; r; r = next) {
        next = r->next;
        for (;;) {
            int have = kvm_seq_n_tokens(r->kv);
            if (have >= r->n_tokens) break;
            cinder_error err = {0};
            if (kvm_seq_append(g->kv, r->kv, r->tokens + have, r->n_tokens - have, &err) ==
                CINDER_OK)
                break;
            if (r->padding) {
                sched_pad_drop(co, r);
                break;
            }
            request *victim = g->run_tail;
            if (victim == r && g->run_head == r) {
                /* Alone and still too big: no preemption can help. */
                char msg[256];
                snprintf(msg, sizeof msg,
                         "the KV pool (%d blocks of %d tokens) cannot hold this sequence's %d "
                         "tokens",
                         g->n_blocks, g->block_size, r->n_tokens);
                front_finish(co, r, CINDER__FINISH_REASON__FINISH_REASON_ERROR, msg);
                break;
            }
            if (victim == next) next = NULL; /* the tail: nothing after it */
            if (victim->padding)
                sched_pad_drop(co, victim);
            else
                sched_preempt(co, victim);
            if (victim == r) break;
        }
    }
}

/* Data parallelism: what admitting r costs on group x, in prompt tokens: the tokens it must
 * compute there (its prefix-cache hits are free) plus PLAN_SEQ_COST for each sequence x
 * already runs (a running sequence slows every step about as much as that much prefill). */
#define PLAN_SEQ_COST 64

static int plan_cost(const group *x, const request *r) {
    int match = kvm_prefix_match(x->kv, r->tokens, r->n_tokens);
    return r->n_tokens - match + PLAN_SEQ_COST * x->n_running;
}

/* Whether another ready group with room would admit r more cheaply; the head of the queue then
 * waits for that group's next plan (at most one step away). */
static bool plan_better_group(coord *co, group *g, request *r) {
    if (co->n_groups < 2) return false;
    int cost = plan_cost(g, r);
    for (int i = 0; i < co->n_groups; i++) {
        group *h = co->groups[i];
        if (h == g || h->state != CINDER__GROUP_STATE__GROUP_STATE_READY || !h->kv) continue;
        int match = kvm_prefix_match(h->kv, r->tokens, r->n_tokens);
        int need = kvm_blocks_for_tokens(h->kv, r->n_tokens) - match / h->block_size;
        if (h->n_running >= h->max_seqs || !kvm_can_allocate(h->kv, need)) continue;
        if (plan_cost(h, r) < cost) return true;
    }
    return false;
}

static void plan_admit(coord *co, group *g, plan *p) {
    if (co->a.no_continuous_batching && g->n_running > 0) return;
    while (co->wait_head && p->budget > 0 && p->n < p->max_seqs && g->n_running < g->max_seqs) {
        request *r = co->wait_head;
        if (kvm_blocks_for_tokens(g->kv, r->n_tokens) > g->n_blocks) {
            sched_dequeue(co, r);
            char msg[256];
            snprintf(msg, sizeof msg,
                     "the sequence has grown to %d tokens; the KV pool holds %d blocks of %d",
                     r->n_tokens, g->n_blocks, g->block_size);
            front_finish(co, r, CINDER__FINISH_REASON__FINISH_REASON_ERROR, msg);
            continue;
        }
        if (plan_better_group(co, g, r)) break;
        kvm_seq *s;
        int n_cached = 0;
        cinder_error err = {0};
        if (kvm_seq_alloc(g->kv, (int64_t)r->seq_id, r->tokens, r->n_tokens, &s, &n_cached,
                          &err) != CINDER_OK)
            break; /* not enough blocks now: the head waits, nobody overtakes it */
        sched_dequeue(co, r);
        r->state = REQ_RUNNING;
        r->g = g;
        r->kv = s;
        r->n_computed = n_cached;
        r->on_worker = false;
        r->n_sent = 0;
        if (!r->t_scheduled) {
            r->t_scheduled = wire_now_us();
            r->n_cached = n_cached < r->n_prompt ? n_cached : r->n_prompt;
        }
        list_push_back(&g->run_head, &g->run_tail, r);
        g->n_running++;
        int chunk = r->n_tokens - r->n_computed;
        if (chunk > p->budget) chunk = p->budget;
        if (!plan_add(p, r, chunk)) break;
    }
}

static void plan_make(coord *co, group *g, plan *p) {
    p->budget = g->max_batch_tokens;
    p->max_seqs = g->max_seqs;
    pad_release(co, g);
    plan_grow_running(co, g);
    /* Decodes first, then prefill chunks already under way, in admission order. */
    for (int pass = 0; pass < 2; pass++)
        for (request *r = g->run_head; r && p->budget > 0 && p->n < p->max_seqs; r = r->next) {
            int left = r->n_tokens - r->n_computed;
            if (left <= 0 || (pass == 0) != (left == 1)) continue;
            if (!plan_add(p, r, left < p->budget ? left : p->budget)) return;
        }
    plan_admit(co, g, p);
}

/* ------------------------------------------------------------------------------------------ */
/* The Step message */

static void sampling_to_proto(const request *r, Cinder__SamplingParams *s) {
    proto_sampling_default(s);
    s->temperature = r->sp.temperature;
    s->top_k = r->sp.top_k;
    s->top_p = r->sp.top_p;
    s->min_p = r->sp.min_p;
    s->repetition_penalty = r->sp.repetition_penalty;
    s->seed = r->sp.seed;
    s->has_seed = true;
}

static bool step_send(coord *co, group *g, const plan *p) {
    int n = p->n, n_tokens = 0;
    for (int i = 0; i < n; i++) n_tokens += p->chunk[i];
    int32_t *tokens = malloc((size_t)(n_tokens ? n_tokens : 1) * sizeof *tokens);
    Cinder__StepSeq *seqs = calloc((size_t)(n ? n : 1), sizeof *seqs);
    Cinder__StepSeq **seq_ptrs = calloc((size_t)(n ? n : 1), sizeof *seq_ptrs);
    Cinder__SamplingParams *sps = calloc((size_t)(n ? n : 1), sizeof *sps);
    int nc = 0;
    const kvm_copy *copies = kvm_copies_pending(g->kv, &nc);
    Cinder__BlockCopy *bc = calloc((size_t)(nc ? nc : 1), sizeof *bc);
    Cinder__BlockCopy **bc_ptrs = calloc((size_t)(nc ? nc : 1), sizeof *bc_ptrs);
    uint64_t *release = malloc((size_t)(g->n_release ? g->n_release : 1) * sizeof *release);
    bool ok = tokens && seqs && seq_ptrs && sps && bc && bc_ptrs && release &&
              grow((void **)&g->step_reqs, &g->cap_step_reqs, n, sizeof *g->step_reqs);
    if (!ok) {
        LOG_ERROR("out of memory for a step of %d sequences", n);
        goto out;
    }
    int off = 0;
    for (int i = 0; i < n; i++) {
        request *r = p->reqs[i];
        Cinder__StepSeq *q = &seqs[i];
        cinder__step_seq__init(q);
        q->seq_id = r->seq_id;
        q->n_tokens = p->chunk[i];
        q->pos = r->n_computed;
        memcpy(tokens + off, r->tokens + r->n_computed, (size_t)q->n_tokens * sizeof *tokens);
        off += q->n_tokens;
        int nb;
        const int32_t *table = kvm_seq_block_table(r->kv, &nb);
        int from = 0;
        if (r->on_worker)
            while (from < nb && from < r->n_sent && r->sent_table[from] == table[from]) from++;
        q->block_table_from = from;
        q->block_table = (int32_t *)table + from;
        q->n_block_table = (size_t)(nb - from);
        if (!r->on_worker && q->pos > 0) {
            q->history = r->tokens;
            q->n_history = (size_t)q->pos;
        }
        if (r->has_sampling) {
            sampling_to_proto(r, &sps[i]);
            q->sampling = &sps[i];
        }
        q->sample = q->pos + q->n_tokens == r->n_tokens;
        q->logprobs = r->logprobs && q->sample;
        q->rng_draws = r->rng_draws;
        seq_ptrs[i] = q;
    }
    for (int i = 0; i < nc; i++) {
        cinder__block_copy__init(&bc[i]);
        bc[i].src = copies[i].src;
        bc[i].dst = copies[i].dst;
        bc_ptrs[i] = &bc[i];
    }
    /* A sequence preempted and admitted again within this plan is not released: the step
     * resends its whole state. */
    int n_rel = 0;
    for (int i = 0; i < g->n_release; i++) {
        bool stepped = false;
        for (int j = 0; j < n && !stepped; j++) stepped = p->reqs[j]->seq_id == g->release[i];
        if (!stepped) release[n_rel++] = g->release[i];
    }
    Cinder__Step st = CINDER__STEP__INIT;
    st.step_id = ++co->next_step_id;
    st.n_tokens = (size_t)n_tokens;
    st.tokens = tokens;
    st.n_seqs = (size_t)n;
    st.seqs = seq_ptrs;
    st.n_copies = (size_t)nc;
    st.copies = bc_ptrs;
    st.n_release_seqs = (size_t)n_rel;
    st.release_seqs = release;
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_STEP;
    env.step = &st;
    groups_send(co, g, &env);

    kvm_copies_clear(g->kv);
    g->n_release = 0;
    g->in_flight = true;
    g->step_id = st.step_id;
    g->step_sent_us = wire_now_us();
    g->n_step_reqs = n;
    for (int i = 0; i < n; i++) {
        request *r = p->reqs[i];
        int nb;
        const int32_t *table = kvm_seq_block_table(r->kv, &nb);
        if (grow((void **)&r->sent_table, &r->cap_sent, nb, sizeof *r->sent_table)) {
            memcpy(r->sent_table, table, (size_t)nb * sizeof *table);
            r->n_sent = nb;
        } else {
            r->n_sent = 0; /* resend the whole table next time */
        }
        r->on_worker = true;
        r->step_tokens = p->chunk[i];
        r->step_sample = seqs[i].sample;
        g->step_reqs[i] = r;
    }
out:
    free(tokens);
    free(seqs);
    free(seq_ptrs);
    free(sps);
    free(bc);
    free(bc_ptrs);
    free(release);
    return ok;
}

void sched_run(coord *co) {
    for (int i = 0; i < co->n_groups; i++) {
        group *g = co->groups[i];
        if (g->state != CINDER__GROUP_STATE__GROUP_STATE_READY || g->in_flight) continue;
        plan p = {0};
        plan_make(co, g, &p);
        if (p.n > 0) step_send(co, g, &p);
        free(p.reqs);
        free(p.chunk);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Results */

void sched_on_result(coord *co, group *g, const Cinder__StepResult *res) {
    if (!g->in_flight || res->step_id != g->step_id) {
        LOG_WARN("group %d: result of step %llu, which is not in flight; ignored", g->id,
                 (unsigned long long)res->step_id);
        return;
    }
    g->in_flight = false;
    g->steps++;
    int n = g->n_step_reqs;
    g->n_step_reqs = 0;
    for (int i = 0; i < n; i++) {
        request *r = g->step_reqs[i];
        int chunk = r->step_tokens;
        bool sampled = r->step_sample;
        r->step_tokens = 0;
        r->step_sample = false;
        if (res->error && res->error[0]) {
            char msg[256];
            snprintf(msg, sizeof msg, "the worker failed the step: %.200s", res->error);
            /* Its state on the workers is unknown now: start over if it ever runs again. */
            front_finish(co, r, CINDER__FINISH_REASON__FINISH_REASON_ERROR, msg);
            continue;
        }
        r->n_computed += chunk;
        kvm_seq_set_computed(g->kv, r->kv, r->n_computed);
        if (r->pending_finish) {
            front_finish(co, r, r->pending_finish, r->pending_msg);
            continue;
        }
        if (!sampled) continue;
        const Cinder__SeqResult *sr = NULL;
        if ((size_t)i < res->n_seqs && res->seqs[i]->seq_id == r->seq_id) sr = res->seqs[i];
        for (size_t j = 0; !sr && j < res->n_seqs; j++)
            if (res->seqs[j]->seq_id == r->seq_id) sr = res->seqs[j];
        if (!sr || sr->n_tokens != 1 || sr->tokens[0] >= co->vocab) {
            front_finish(co, r, CINDER__FINISH_REASON__FINISH_REASON_ERROR,
                         "the worker returned no valid token for this sequence");
            continue;
        }
        if (r->padding) { /* the output is dropped; the sequence goes on to the context's end */
            if (r->sp.temperature > 0) r->rng_draws++; /* as front_on_token: the workers' stream */
            if (!pad_append(r, sr->tokens[0]) || r->n_tokens >= co->ctx) sched_pad_drop(co, r);
            continue;
        }
        bool has_lp = sr->n_logprobs == 1;
        if (!front_on_token(co, r, sr->tokens[0], has_lp ? sr->logprobs[0] : 0, has_lp))
            front_flush(co, r);
    }
}
