/* worker_main.c - `cinder-worker`: one rank of a worker group (one MPI job).
 *
 *   mpirun -np N cinder-worker --coordinator tcp://HOST:5556 [--threads N] [--group G]
 *   cinder-worker --coordinator tcp://HOST:5556 --device cuda     (one rank, no mpirun)
 *
 * A group of one rank needs no mpirun: a build without MPI runs one rank (comm single), and an
 * MPI build started alone is a one-rank MPI job. With --device cuda the forward pass runs on
 * the CUDA backend (the same engine_create as `cinder generate --device cuda`); the backend is
 * brought up once before joining, so a build without CUDA or a machine without a GPU is refused
 * at once, and Register reports the device's free memory.
 *
 * Each rank connects to the coordinator's control endpoint and says Hello, then Register
 * (rank, group, world size, host, device, free memory). The coordinator answers with a
 * ShardPlan (model path, what this rank holds, the KV pool and its element type); the rank
 * loads its shard, sizes its KV pool in that type's bytes and answers Ready with the blocks it
 * got. A plan it cannot follow (a KV type its backend lacks, a model it cannot load) is
 * answered with an Error saying why, and the rank leaves. On CUDA the pool is --kv-fraction of
 * the device memory left free by the weights and scratch unless the plan names a block count
 * (the coordinator's --kv-blocks); --kv-fraction 0 takes the plan's bytes (--kv-mib) instead.
 * From then on it executes Steps: the coordinator's plan says which tokens of which sequences,
 * at which positions, through which blocks, and how to sample; the worker runs the forward
 * pass, samples on rank 0 and sends a StepResult back. It decides nothing. Heartbeats go both
 * ways every second.
 *
 * Per sequence the worker keeps what sampling needs between steps: the tokens seen (for the
 * repetition penalty), its random stream and its block table. A Step brings them again
 * (history, rng_draws, a whole block table) whenever the worker may lack them, so a sequence
 * resumed after preemption or moved from another group samples exactly as before. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "cli.h"
#include "comm.h"
#ifdef CINDER_COMM_MPI
#include "comm_mpi.h"
#endif
#include "engine.h"
#ifdef CINDER_HAVE_CUDA
#include "cuda_ops.h"
#endif
#include "log.h"
#include "math.h"
#include "model.h"
#include "protocol.h"
#include "sampler.h"
#include "wire.h"

#define N_OPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

typedef struct worker_args {
    const char *coordinator, *device;
    int64_t threads, group, heartbeat_ms, timeout_ms, gpu;
    double kv_fraction;
} worker_args;

/* What the worker remembers of one sequence between steps. */
typedef struct worker_seq {
    uint64_t id;
    int32_t *history; /* [n_history] tokens at positions [0, n_history) */
    int n_history, cap_history;
    int32_t *table; /* [n_table] its block table */
    int n_table, cap_table;
    sampler_rng rng;
    uint64_t draws; /* draws taken from rng since seeding */
    bool rng_valid;
} worker_seq;

typedef struct worker {
    worker_args args;
    comm *group; /* this rank's worker group (the MPI job; a single rank without MPI) */
    int rank, world_size;
    engine_backend backend;
    char device[PROTO_MAX_NAME_BYTES]; /* Register.device: "cpu", "cuda:0 cuda0-sm90" */
    uint64_t mem_bytes;                /* Register.mem_bytes: free host or device memory */
    void *zctx, *sock;
    model *m;
    engine *e;
    sampler *smp;
    int vocab, max_batch_tokens, max_seqs;
    float *logits;  /* [max_batch_tokens, vocab]: every row may be asked for */
    int32_t *ids;   /* [max_batch_tokens]: each row's argmax, in greedy steps */
    float *raw_row; /* [vocab]: a row before sampling changes it (logprobs) */
    worker_seq *seqs;
    int n_seqs, cap_seqs;
    engine_seq *eseqs; /* [max_seqs] */
    /* A StepResult's parts, [max_seqs] each, sized once. */
    Cinder__SeqResult *results, **result_ptrs;
    int32_t *sampled;
    float *lps;
    uint64_t steps_done, heartbeat_seq, last_heard_us, last_sent_us;
} worker;

static volatile sig_atomic_t worker_stop;

static void worker_on_signal(int sig) {
    (void)sig;
    worker_stop = 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Sending */

static cinder_status worker_send(worker *w, Cinder__Envelope *env) {
    cinder_error err = {0};
    cinder_status s = wire_send(w->sock, NULL, 0, env, &err);
    if (s)
        LOG_ERROR("cannot send %s: %s", proto_body_name(env->body_case), err.msg);
    else
        w->last_sent_us = wire_now_us();
    return s;
}

static void worker_send_heartbeat(worker *w) {
    Cinder__Heartbeat hb = CINDER__HEARTBEAT__INIT;
    hb.group = (int32_t)w->args.group;
    hb.rank = w->rank;
    hb.seq = ++w->heartbeat_seq;
    hb.time_us = wire_now_us();
    hb.steps_done = w->steps_done;
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    worker_send(w, &env);
}

/* Waits up to timeout_ms for one message from the coordinator; *out owns it. */
static cinder_status worker_wait(worker *w, int timeout_ms, Cinder__Envelope **out,
                                 cinder_error *err) {
    *out = NULL;
    zmq_pollitem_t item = {w->sock, 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&item, 1, timeout_ms);
    if (rc < 0) {
        if (zmq_errno() == EINTR) return cinder_error_set(err, CINDER_ERR_NOT_FOUND, "interrupted");
        return cinder_error_set(err, CINDER_ERR_IO, "zmq_poll: %s", zmq_strerror(zmq_errno()));
    }
    if (rc == 0) return cinder_error_set(err, CINDER_ERR_NOT_FOUND, "no message");
    proto_limits lim = {.vocab_size = w->vocab, .kv_blocks = w->e ? engine_kv(w->e)->n_blocks : 0};
    wire_msg m;
    cinder_status s = wire_recv(w->sock, false, &lim, &m, err);
    if (s == CINDER_OK) {
        *out = m.env;
        m.env = NULL;
        w->last_heard_us = wire_now_us();
    } else if (s != CINDER_ERR_NOT_FOUND) {
        LOG_ERROR("refused a message from the coordinator: %s", err->msg);
        wire_send_refusal(w->sock, &m, &lim, err);
    }
    wire_msg_clear(&m);
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* The device */

/* What Register reports: the device and the memory free on it. CUDA is brought up once and
 * asked (the engine brings it up again for the model; the context stays), so that a build
 * without CUDA or a machine without a GPU is refused before joining. */
static cinder_status worker_probe_device(worker *w, cinder_error *err) {
    if (w->backend == ENGINE_BACKEND_CPU) {
        long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        snprintf(w->device, sizeof w->device, "cpu");
        w->mem_bytes = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
        return CINDER_OK;
    }
#ifdef CINDER_HAVE_CUDA
    int n_dev = kernel_cuda_device_count();
    if (n_dev == 0)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "--device cuda: no CUDA device found (no GPU, or no driver)");
    kernel_cuda_options ko = kernel_cuda_options_default();
    ko.device = (int)w->args.gpu;
    kernel_ops *k = kernel_cuda_create(&ko, err);
    if (!k) return err->status;
    size_t free_b = 0, total_b = 0;
    cinder_status s = kernel_mem_info(k, &free_b, &total_b, err);
    if (s == CINDER_OK) {
        snprintf(w->device, sizeof w->device, "cuda:%lld %s", (long long)w->args.gpu, k->name);
        w->mem_bytes = free_b;
        LOG_INFO("%s: %zu MiB free of %zu; KV pool: %s", w->device, free_b >> 20, total_b >> 20,
                 w->args.kv_fraction > 0 ? "a fraction of what the model leaves free"
                                         : "the coordinator's plan");
    }
    kernel_ops_free(k);
    return s;
#else
    return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                            "--device cuda: this cinder-worker was built without the CUDA backend "
                            "(configure with -DCINDER_CUDA=ON where nvcc is found)");
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Joining: Hello, Register, ShardPlan, Ready */

/* Waits for a message of one body type (heartbeats are skipped; an Error ends the wait). */
static Cinder__Envelope *worker_expect(worker *w, Cinder__Envelope__BodyCase body,
                                       cinder_error *err) {
    uint64_t deadline = wire_now_us() + (uint64_t)w->args.timeout_ms * 1000u;
    while (!worker_stop) {
        uint64_t now = wire_now_us();
        if (now >= deadline) break;
        Cinder__Envelope *env;
        cinder_status s = worker_wait(w, (int)((deadline - now) / 1000u) + 1, &env, err);
        if (s == CINDER_ERR_NOT_FOUND) continue;
        if (s) return NULL;
        if (env->body_case == body) return env;
        if (env->body_case == CINDER__ENVELOPE__BODY_ERROR) {
            cinder_error_set(err, CINDER_ERR_ARG, "the coordinator refused: %s",
                             env->error->message);
            proto_envelope_free(env);
            return NULL;
        }
        if (env->body_case != CINDER__ENVELOPE__BODY_HEARTBEAT)
            LOG_WARN("ignored %s while waiting for %s", proto_body_name(env->body_case),
                     proto_body_name(body));
        proto_envelope_free(env);
    }
    cinder_error_set(err, CINDER_ERR_IO, "no %s from the coordinator at %s within %lld ms",
                     proto_body_name(body), w->args.coordinator, (long long)w->args.timeout_ms);
    return NULL;
}

static cinder_status worker_load(worker *w, const Cinder__ShardPlan *plan, cinder_error *err) {
    if (plan->tp_size > 1 || plan->ep_size > 1 || plan->world_size > 1)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "shard plan with %d tensor-parallel and %d expert-parallel ranks: "
                                "this worker runs whole models only (one rank per group)",
                                plan->tp_size, plan->ep_size);
    /* The KV type first: a plan this worker cannot follow is refused before the model loads.
     * (An unknown KvType value never gets here: proto_decode refuses the frame, and the
     * refusal goes back to the coordinator.) */
    dtype kv_type;
    if (!proto_kv_type_to_dtype(plan->kv_type, &kv_type))
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "shard_plan.kv_type %d: this worker has no such KV cache type",
                                (int)plan->kv_type);
    LOG_INFO("loading %s", plan->model_path);
    w->m = model_open(plan->model_path, err);
    if (!w->m) return err->status;
    engine_options o = engine_options_default();
    o.kv_type = kv_type;
    o.backend = w->backend;
    o.device = (int)w->args.gpu;
    o.n_threads = (int)w->args.threads;
    if (plan->block_size > 0) o.block_size = plan->block_size;
    o.kv_blocks = plan->kv_blocks;
    if (plan->kv_mem_bytes) o.kv_bytes = plan->kv_mem_bytes;
    /* A device's pool: a fraction of what the weights and scratch leave (the engine asks the
     * backend), unless the plan counts blocks. */
    if (w->backend != ENGINE_BACKEND_CPU && plan->kv_blocks <= 0)
        o.kv_fraction = w->args.kv_fraction;
    if (plan->max_batch_tokens > 0) o.max_batch_tokens = plan->max_batch_tokens;
    if (plan->max_seqs > 0) o.max_seqs = plan->max_seqs;
    w->e = engine_create(w->m, &o, err);
    if (!w->e) return err->status;
    w->vocab = w->m->config.vocab_size;
    w->max_batch_tokens = o.max_batch_tokens;
    w->max_seqs = o.max_seqs;
    w->smp = sampler_create(w->vocab, err);
    if (!w->smp) return err->status;
    w->logits = malloc((size_t)w->max_batch_tokens * (size_t)w->vocab * sizeof(float));
    w->raw_row = malloc((size_t)w->vocab * sizeof(float));
    w->ids = malloc((size_t)w->max_batch_tokens * sizeof *w->ids);
    w->eseqs = calloc((size_t)w->max_seqs, sizeof *w->eseqs);
    w->results = calloc((size_t)w->max_seqs, sizeof *w->results);
    w->result_ptrs = calloc((size_t)w->max_seqs, sizeof *w->result_ptrs);
    w->sampled = calloc((size_t)w->max_seqs, sizeof *w->sampled);
    w->lps = calloc((size_t)w->max_seqs, sizeof *w->lps);
    if (!w->logits || !w->raw_row || !w->ids || !w->eseqs || !w->results || !w->result_ptrs ||
        !w->sampled || !w->lps)
        return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for the step buffers");
    return CINDER_OK;
}

static cinder_status worker_join(worker *w, cinder_error *err) {
    Cinder__Hello hello;
    proto_hello_init(&hello, CINDER__ROLE__ROLE_WORKER);
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_HELLO;
    env.hello = &hello;
    if (worker_send(w, &env)) return cinder_error_set(err, CINDER_ERR_IO, "cannot send Hello");
    Cinder__Envelope *reply = worker_expect(w, CINDER__ENVELOPE__BODY_HELLO, err);
    if (!reply) return err->status ? err->status : CINDER_ERR_IO;
    proto_envelope_free(reply);

    char host[256] = "";
    gethostname(host, sizeof host - 1);
    Cinder__Register reg = CINDER__REGISTER__INIT;
    reg.rank = w->rank;
    reg.group = (int32_t)w->args.group;
    reg.world_size = w->world_size;
    reg.host = host;
    reg.device = w->device;
    reg.mem_bytes = w->mem_bytes;
    env = (Cinder__Envelope)CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_REGISTER_RANK;
    env.register_rank = &reg;
    if (worker_send(w, &env)) return cinder_error_set(err, CINDER_ERR_IO, "cannot send Register");

    Cinder__Envelope *plan = worker_expect(w, CINDER__ENVELOPE__BODY_SHARD_PLAN, err);
    if (!plan) return err->status ? err->status : CINDER_ERR_IO;
    cinder_status s = worker_load(w, plan->shard_plan, err);
    proto_envelope_free(plan);
    if (s) {
        /* The coordinator hears why (its log names this rank), then this rank leaves. */
        Cinder__Envelope *e = proto_error_reply(
            NULL, proto_error_code(s), "cannot take the shard plan on %s: %s", w->device, err->msg);
        if (e) {
            worker_send(w, e);
            proto_envelope_free(e);
        }
        return s;
    }

    Cinder__Ready ready = CINDER__READY__INIT;
    ready.group = (int32_t)w->args.group;
    ready.rank = w->rank;
    ready.kv_blocks = engine_kv(w->e)->n_blocks;
    ready.block_size = engine_kv(w->e)->block_size;
    ready.max_batch_tokens = w->max_batch_tokens;
    ready.max_seqs = w->max_seqs;
    ready.vocab_size = w->vocab;
    const kv_cache *kv = engine_kv(w->e);
    if (!proto_kv_type_from_dtype(kv->type, &ready.kv_type))
        return cinder_error_set(err, CINDER_ERR_ARG, "the engine made a %s KV pool",
                                dtype_name(kv->type)); /* cannot happen: it took the plan's */
    env = (Cinder__Envelope)CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_READY;
    env.ready = &ready;
    if (worker_send(w, &env)) return cinder_error_set(err, CINDER_ERR_IO, "cannot send Ready");
    size_t block_bytes = kv_cache_block_bytes_type(kv->n_layers, kv->n_kv_heads, kv->head_dim,
                                                   kv->block_size, kv->type);
    LOG_INFO("ready: %d KV blocks of %d tokens (%s, %zu bytes each, %.1f MiB), batches up to %d "
             "tokens / %d sequences",
             ready.kv_blocks, ready.block_size, dtype_name(kv->type), block_bytes,
             (double)block_bytes * ready.kv_blocks / 1048576.0, ready.max_batch_tokens,
             ready.max_seqs);
    return CINDER_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Sequences */

static worker_seq *worker_seq_find(worker *w, uint64_t id) {
    for (int i = 0; i < w->n_seqs; i++)
        if (w->seqs[i].id == id) return &w->seqs[i];
    return NULL;
}

static worker_seq *worker_seq_get(worker *w, uint64_t id) {
    worker_seq *s = worker_seq_find(w, id);
    if (s) return s;
    if (w->n_seqs == w->cap_seqs) {
        int cap = w->cap_seqs ? 2 * w->cap_seqs : 64;
        worker_seq *p = realloc(w->seqs, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        w->seqs = p;
        w->cap_seqs = cap;
    }
    s = &w->seqs[w->n_seqs++];
    memset(s, 0, sizeof *s);
    s->id = id;
    return s;
}

static void worker_seq_release(worker *w, uint64_t id) {
    worker_seq *s = worker_seq_find(w, id);
    if (!s) return;
    free(s->history);
    free(s->table);
    *s = w->seqs[--w->n_seqs];
}

static bool worker_grow(int32_t **p, int *cap, int need) {
    if (need <= *cap) return true;
    int cap2 = *cap ? *cap : 64;
    while (cap2 < need) cap2 *= 2;
    int32_t *q = realloc(*p, (size_t)cap2 * sizeof *q);
    if (!q) return false;
    *p = q;
    *cap = cap2;
    return true;
}

/* Brings a sequence's state up to what step seq q says, and appends q's tokens to its history. */
static cinder_status worker_seq_update(worker *w, worker_seq *s, const Cinder__StepSeq *q,
                                       const int32_t *tokens, cinder_error *err) {
    int from = q->block_table_from;
    if (from > s->n_table)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "sequence %llu: block_table_from %d but this worker holds %d "
                                "entries of its table",
                                (unsigned long long)q->seq_id, from, s->n_table);
    int n_table = from + (int)q->n_block_table;
    if (!worker_grow(&s->table, &s->cap_table, n_table)) goto nomem;
    if (q->n_block_table) /* none: the worker's copy is current */
        memcpy(s->table + from, q->block_table, q->n_block_table * sizeof(int32_t));
    s->n_table = n_table;

    if (q->pos == 0) s->n_history = 0;
    if (q->n_history > 0) {
        if (!worker_grow(&s->history, &s->cap_history, (int)q->n_history)) goto nomem;
        memcpy(s->history, q->history, q->n_history * sizeof(int32_t));
        s->n_history = (int)q->n_history;
    }
    if (s->n_history != q->pos)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "sequence %llu starts at position %d but this worker holds %d of "
                                "its tokens and the step sent no history",
                                (unsigned long long)q->seq_id, q->pos, s->n_history);
    if (!worker_grow(&s->history, &s->cap_history, s->n_history + q->n_tokens)) goto nomem;
    memcpy(s->history + s->n_history, tokens, (size_t)q->n_tokens * sizeof(int32_t));
    s->n_history += q->n_tokens;

    /* The random stream: seeded by the request's seed, rng_draws draws already taken. */
    uint64_t seed = q->sampling ? q->sampling->seed : 0;
    if (!s->rng_valid || s->draws != q->rng_draws) {
        sampler_rng_seed(&s->rng, seed);
        for (uint64_t i = 0; i < q->rng_draws; i++) sampler_rng_next(&s->rng);
        s->draws = q->rng_draws;
        s->rng_valid = true;
    }
    return CINDER_OK;
nomem:
    return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for sequence %llu",
                            (unsigned long long)q->seq_id);
}

/* log p(token) under the model's own distribution (before penalty and temperature). */
static float worker_logprob(const float *row, int vocab, int32_t token) {
    float mx = row[0];
    for (int i = 1; i < vocab; i++) mx = row[i] > mx ? row[i] : mx;
    double sum = 0;
    for (int i = 0; i < vocab; i++) sum += exp((double)(row[i] - mx));
    float lp = (float)((double)(row[token] - mx) - log(sum));
    return lp > 0 ? 0 : lp;
}

/* ------------------------------------------------------------------------------------------ */
/* Steps */

/* A sequence's sampling settings: the defaults, or what the step carries. */
static sampler_params worker_sampler_params(const Cinder__StepSeq *q) {
    sampler_params p = sampler_params_default();
    if (q->sampling) {
        p.temperature = q->sampling->temperature;
        p.top_k = q->sampling->top_k;
        p.top_p = q->sampling->top_p;
        p.min_p = q->sampling->min_p;
        p.repetition_penalty = q->sampling->repetition_penalty;
        p.seed = q->sampling->seed;
    }
    return p;
}

/* Whether every sequence the step samples for is plain greedy (temperature 0, no repetition
 * penalty, no logprobs): then each row's argmax, taken by the backend where the logits are,
 * is its sample, and on CUDA only the argmax comes back to the host (not vocab floats a row). */
static bool worker_step_greedy(const Cinder__Step *st) {
    for (size_t i = 0; i < st->n_seqs; i++) {
        const Cinder__StepSeq *q = st->seqs[i];
        if (!q->sample) continue;
        sampler_params p = worker_sampler_params(q);
        if (p.temperature != 0 || p.repetition_penalty != 1.0f || q->logprobs) return false;
    }
    return true;
}

static cinder_status worker_run_step(worker *w, const Cinder__Step *st, Cinder__StepResult *res,
                                     Cinder__SeqResult *results, Cinder__SeqResult **result_ptrs,
                                     int32_t *sampled, float *lps, cinder_error *err) {
    kv_cache *kv = engine_kv(w->e);
    for (size_t i = 0; i < st->n_copies; i++)
        kv_cache_copy_block(kv, st->copies[i]->src, st->copies[i]->dst);
    for (size_t i = 0; i < st->n_release_seqs; i++) worker_seq_release(w, st->release_seqs[i]);
    if (st->n_seqs == 0) return CINDER_OK;
    if ((int)st->n_seqs > w->max_seqs)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "a step of %zu sequences; this worker takes %d", st->n_seqs,
                                w->max_seqs);
    int rows = 0;
    size_t off = 0;
    for (size_t i = 0; i < st->n_seqs; i++) {
        const Cinder__StepSeq *q = st->seqs[i];
        worker_seq *s = worker_seq_get(w, q->seq_id);
        if (!s) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for sequences");
        cinder_status status = worker_seq_update(w, s, q, st->tokens + off, err);
        if (status) return status;
        w->eseqs[i] = (engine_seq){.tokens = st->tokens + off,
                                   .n_tokens = q->n_tokens,
                                   .pos = q->pos,
                                   .block_table = s->table,
                                   .n_blocks = s->n_table,
                                   .all_logits = q->all_logits};
        rows += q->all_logits ? q->n_tokens : 1;
        off += (size_t)q->n_tokens;
    }
    if (rows > w->max_batch_tokens)
        return cinder_error_set(err, CINDER_ERR_ARG, "a step asking for %d logit rows; at most %d",
                                rows, w->max_batch_tokens);
    bool greedy = worker_step_greedy(st);
    cinder_status status =
        greedy ? engine_step_argmax(w->e, w->eseqs, (int)st->n_seqs, w->logits, w->ids, err)
               : engine_step(w->e, w->eseqs, (int)st->n_seqs, w->logits, err);
    if (status) return status;

    int row = 0;
    for (size_t i = 0; i < st->n_seqs; i++) {
        const Cinder__StepSeq *q = st->seqs[i];
        int n_rows = q->all_logits ? q->n_tokens : 1;
        int last = row + n_rows - 1;
        float *logits = w->logits + (size_t)last * (size_t)w->vocab;
        row += n_rows;
        Cinder__SeqResult *r = &results[i];
        cinder__seq_result__init(r);
        r->seq_id = q->seq_id;
        result_ptrs[i] = r;
        if (!q->sample) continue;
        r->n_tokens = 1;
        r->tokens = &sampled[i];
        if (greedy) {
            sampled[i] = w->ids[last];
            continue;
        }
        worker_seq *s = worker_seq_find(w, q->seq_id);
        sampler_params p = worker_sampler_params(q);
        if (q->logprobs) memcpy(w->raw_row, logits, (size_t)w->vocab * sizeof(float));
        sampled[i] = sampler_sample(w->smp, &p, &s->rng, logits, s->history, s->n_history);
        if (p.temperature > 0) s->draws++;
        if (q->logprobs) {
            lps[i] = worker_logprob(w->raw_row, w->vocab, sampled[i]);
            r->n_logprobs = 1;
            r->logprobs = &lps[i];
        }
    }
    res->n_seqs = st->n_seqs;
    res->seqs = result_ptrs;
    return CINDER_OK;
}

static void worker_on_step(worker *w, const Cinder__Step *st) {
    uint64_t t0 = wire_now_us();
    Cinder__StepResult res = CINDER__STEP_RESULT__INIT;
    res.step_id = st->step_id;
    res.group = (int32_t)w->args.group;
    res.rank = w->rank;
    cinder_error err = {0};
    if (worker_run_step(w, st, &res, w->results, w->result_ptrs, w->sampled, w->lps, &err)) {
        LOG_ERROR("step %llu failed: %s", (unsigned long long)st->step_id, err.msg);
        res.n_seqs = 0;
        res.seqs = NULL;
        res.error = err.msg;
    }
    w->steps_done++;
    res.elapsed_us = wire_now_us() - t0;
    if (w->rank == 0) {
        Cinder__Envelope env = CINDER__ENVELOPE__INIT;
        env.body_case = CINDER__ENVELOPE__BODY_STEP_RESULT;
        env.step_result = &res;
        worker_send(w, &env);
    }
}

/* Executes steps until Shutdown, a signal, or the coordinator falls silent. */
static int worker_serve(worker *w) {
    uint64_t hb_us = (uint64_t)w->args.heartbeat_ms * 1000u;
    while (!worker_stop) {
        uint64_t now = wire_now_us();
        if (now - w->last_sent_us >= hb_us) worker_send_heartbeat(w);
        if (now - w->last_heard_us > (uint64_t)w->args.timeout_ms * 1000u) {
            LOG_ERROR("the coordinator at %s has been silent for %lld ms; leaving",
                      w->args.coordinator, (long long)w->args.timeout_ms);
            return 1;
        }
        Cinder__Envelope *env;
        cinder_error err = {0};
        cinder_status s = worker_wait(w, (int)(hb_us / 1000u), &env, &err);
        if (s == CINDER_ERR_NOT_FOUND || s == CINDER_ERR_FORMAT || s == CINDER_ERR_ARG ||
            s == CINDER_ERR_RANGE || s == CINDER_ERR_UNSUPPORTED)
            continue;
        if (s) {
            LOG_ERROR("%s", err.msg);
            return 1;
        }
        switch (env->body_case) {
            case CINDER__ENVELOPE__BODY_STEP:
                worker_on_step(w, env->step);
                break;
            case CINDER__ENVELOPE__BODY_HEARTBEAT:
                break;
            case CINDER__ENVELOPE__BODY_SHUTDOWN:
                LOG_INFO("shutdown: %s", env->shutdown->reason);
                proto_envelope_free(env);
                return 0;
            case CINDER__ENVELOPE__BODY_ERROR:
                LOG_ERROR("the coordinator says: %s", env->error->message);
                break;
            default:
                LOG_WARN("ignored %s", proto_body_name(env->body_case));
                break;
        }
        proto_envelope_free(env);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */

static void worker_free(worker *w) {
    for (int i = 0; i < w->n_seqs; i++) {
        free(w->seqs[i].history);
        free(w->seqs[i].table);
    }
    free(w->seqs);
    free(w->eseqs);
    free(w->results);
    free(w->result_ptrs);
    free(w->sampled);
    free(w->ids);
    free(w->lps);
    free(w->logits);
    free(w->raw_row);
    sampler_free(w->smp);
    engine_free(w->e);
    model_free(w->m);
    if (w->sock) {
        /* A moment for the last message to leave (an Error saying why this rank cannot join). */
        int linger = 1000;
        zmq_setsockopt(w->sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(w->sock);
    }
    if (w->zctx) zmq_ctx_term(w->zctx);
}

int main(int argc, char **argv) {
    worker w = {0};
    cli_option opts[] = {
        {"coordinator", CLI_STR, &w.args.coordinator, NULL, 0, 0, "ENDPOINT",
         "the coordinator's control endpoint (tcp://HOST:5556)", true},
        {"threads", CLI_INT, &w.args.threads, "0", 0, 1024, "N", "CPU threads per rank (0: all)",
         false},
        {"device", CLI_STR, &w.args.device, "cpu", 0, 0, "cpu|cuda",
         "where the forward pass runs (cuda: a build with CINDER_CUDA and a GPU)", false},
        {"gpu", CLI_INT, &w.args.gpu, "0", 0, 1024, "N", "CUDA device ordinal (--device cuda)",
         false},
        {"kv-fraction", CLI_FLOAT, &w.args.kv_fraction, "0.9", 0, 1, "F",
         "--device cuda: the KV pool takes this fraction of the device memory the weights and "
         "scratch leave free, unless the coordinator gives --kv-blocks (0: its --kv-mib)",
         false},
        {"group", CLI_INT, &w.args.group, "0", 0, PROTO_MAX_WORLD_SIZE - 1, "G",
         "this worker group's id (one per mpirun job)", false},
        {"heartbeat-ms", CLI_INT, &w.args.heartbeat_ms, "1000", 10, 60000, "MS",
         "heartbeat interval", false},
        {"timeout-ms", CLI_INT, &w.args.timeout_ms, "30000", 100, 3600000, "MS",
         "leave when the coordinator is silent this long (and the join deadline)", false},
    };
    const char *usage =
        "[mpirun -np N] cinder-worker --coordinator ENDPOINT [--device cpu|cuda] [--threads N] "
        "[--group G]";
    cinder_error err = {0};
    int n_pos;
    switch (cli_parse(opts, N_OPTS(opts), argc - 1, argv + 1, NULL, 0, &n_pos, &err)) {
        case CLI_RESULT_HELP:
            cli_print_help(stdout, usage,
                           "One rank of a worker group: registers with the coordinator, loads the "
                           "model and executes the coordinator's steps.",
                           opts, N_OPTS(opts));
            return 0;
        case CLI_RESULT_ERROR:
            fprintf(stderr, "cinder-worker: %s\nusage: %s\n", err.msg, usage);
            return 2;
        case CLI_RESULT_OK:
            break;
    }
    log_init_from_env();
    if (!engine_backend_parse(w.args.device, &w.backend)) {
        fprintf(stderr, "cinder-worker: --device is cpu or cuda, not '%s'\nusage: %s\n",
                w.args.device, usage);
        return 2;
    }
#ifdef CINDER_COMM_MPI
    if (comm_mpi_init(&argc, &argv, &err) == CINDER_OK)
        w.group = comm_mpi_create(MPI_COMM_WORLD, COMM_MPI_REDUCE_FIXED, &err);
#else
    /* One rank per process without MPI: under `mpirun -np 2` every process would be rank 0. */
    const char *env_size = getenv("OMPI_COMM_WORLD_SIZE");
    if (!env_size) env_size = getenv("PMI_SIZE");
    if (env_size && atoi(env_size) > 1) {
        fprintf(stderr,
                "cinder-worker: started as one of %s ranks, but this build has no MPI "
                "(CINDER_MPI=OFF): it runs one rank per group; start it without mpirun\n",
                env_size);
        return 2;
    }
    w.group = comm_single_create(&err);
#endif
    if (!w.group) {
        fprintf(stderr, "cinder-worker: cannot set up the worker group: %s\n", err.msg);
        return 1;
    }
    w.rank = comm_rank(w.group);
    w.world_size = comm_size(w.group);
    log_set_rank(w.rank);
    int rc = 1;
    if (worker_probe_device(&w, &err)) {
        fprintf(stderr, "cinder-worker: %s\n", err.msg);
        goto out;
    }
    struct sigaction sa = {0};
    sa.sa_handler = worker_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    w.zctx = zmq_ctx_new();
    w.sock = w.zctx ? zmq_socket(w.zctx, ZMQ_DEALER) : NULL;
    if (!w.sock || wire_socket_setup(w.sock, false, 0, &err)) {
        fprintf(stderr, "cinder-worker: cannot create a socket: %s\n",
                err.msg[0] ? err.msg : zmq_strerror(zmq_errno()));
        goto out;
    }
    if (zmq_connect(w.sock, w.args.coordinator) != 0) {
        fprintf(stderr, "cinder-worker: cannot connect to %s: %s\n", w.args.coordinator,
                zmq_strerror(zmq_errno()));
        goto out;
    }
    w.last_heard_us = wire_now_us();
    if (worker_join(&w, &err)) {
        fprintf(stderr, "cinder-worker: rank %d of group %lld could not join: %s\n", w.rank,
                (long long)w.args.group, err.msg);
        goto out;
    }
    rc = worker_serve(&w);
out:
    worker_free(&w);
    comm_free(w.group);
#ifdef CINDER_COMM_MPI
    comm_mpi_finalize();
#endif
    return rc;
}
