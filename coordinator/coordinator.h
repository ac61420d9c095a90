/* coordinator.h - the state of `cinder-coordinator`, shared by its parts (internal header).
 *
 *   coordinator_main.c  options, sockets, the event loop, signals
 *   frontend.c          the client endpoint: Hello, validation, tokenizing, admission, output
 *                       (chunks, Done, Error), Cancel, Status, Models, disconnects
 *   groups.c            the worker endpoint: Hello, Register, ShardPlan, Ready, heartbeats,
 *                       lost groups
 *   scheduler.c         one step per group at a time: decodes first, then prefill chunks within
 *                       the token budget, admission in arrival order, preemption by recompute;
 *                       applies the StepResults
 *
 * One thread; every socket is polled by the loop, nothing blocks. A request is in exactly one
 * place: the waiting queue (coord.wait_*) or the running list of one group (group.run_*). */
#ifndef CINDER_COORDINATOR_H
#define CINDER_COORDINATOR_H

#include <stdbool.h>
#include <stdint.h>

#include "kv_manager.h"
#include "model.h"
#include "protocol.h"
#include "sampler.h"
#include "stop_text.h"
#include "tokenizer.h"
#include "wire.h"

typedef struct coord_args {
    const char *model, *listen, *control, *name, *kv_type;
    int64_t kv_blocks, block_size, max_batch_tokens, max_seqs, max_queue, kv_mib;
    int64_t heartbeat_timeout_ms, max_conns;
    bool no_continuous_batching;
    bool static_early_exit; /* static batches whose finished members leave the steps */
} coord_args;

/* A client connection (one DEALER socket on the client's side). */
typedef struct conn {
    uint8_t id[WIRE_MAX_IDENTITY];
    size_t id_len;
    bool hello; /* the client said Hello */
    bool gone;  /* a send found the peer gone: nothing more is sent */
    int n_requests;
    uint64_t last_seen_us;
} conn;

typedef enum req_state {
    REQ_WAITING, /* in the queue: no KV blocks */
    REQ_RUNNING, /* on a group: holds KV blocks */
} req_state;

typedef struct group group;

typedef struct request {
    struct request *prev, *next; /* in the waiting queue or the group's running list */
    req_state state;
    uint64_t seq_id;        /* unique for the coordinator's life; names the sequence on workers */
    char id[PROTO_MAX_REQUEST_ID_BYTES + 1]; /* the client's request id */
    conn *c;

    int32_t *tokens; /* [n_tokens] prompt, then the generated tokens */
    int n_tokens, cap_tokens, n_prompt;
    int max_new;     /* tokens to generate at most (max_tokens, cut to the context) */
    int n_generated; /* sampled tokens, a final stop token included */
    int n_cached;    /* prompt tokens the prefix cache held at the first admission */

    /* Where it runs. n_computed tokens have their KV on the group's workers. */
    group *g;
    kvm_seq *kv;
    int n_computed;
    bool on_worker;      /* the workers hold its state (table, history, random stream) */
    int32_t *sent_table; /* [n_sent] the block table as the workers hold it */
    int n_sent, cap_sent;
    int step_tokens;     /* tokens in the step in flight (0: not in it) */
    bool step_sample;

    sampler_params sp;
    bool has_sampling, stream, logprobs;
    uint64_t rng_draws;
    int32_t stop_ids[PROTO_MAX_STOP_IDS + 8];
    int n_stop_ids;
    stop_text stop;
    tok_stream ts;
    bool text_stopped; /* a stop string matched: no more text */

    /* Output not yet sent. */
    char *text;
    size_t n_text, cap_text;
    int32_t *out_ids;
    float *out_lps;
    int n_out, cap_out;

    uint64_t t_arrival, t_scheduled, t_first, t_last, deadline; /* us; deadline 0: none */
    Cinder__FinishReason pending_finish; /* cancel/timeout while in a step: applied after it */
    char pending_msg[256];
    /* A static batch's slot whose request has ended (--no-continuous-batching): no client, its
     * sequence keeps decoding (output dropped) until the batch's last request ends. */
    bool padding;
} request;

typedef struct group_rank {
    bool registered, ready;
    uint8_t id[WIRE_MAX_IDENTITY];
    size_t id_len;
    char host[PROTO_MAX_NAME_BYTES + 1], device[PROTO_MAX_NAME_BYTES + 1];
    uint64_t mem_bytes, last_seen_us;
    int32_t kv_blocks, block_size, max_batch_tokens, max_seqs;
} group_rank;

struct group {
    int id, world_size;
    Cinder__GroupState state;
    group_rank *ranks; /* [world_size] */
    kvm *kv;           /* while READY */
    int block_size, n_blocks, max_batch_tokens, max_seqs;
    request *run_head, *run_tail;
    int n_running, n_padding; /* n_padding of the n_running are padding slots */
    bool in_flight;
    uint64_t step_id, step_sent_us, steps;
    request **step_reqs; /* [n_step_reqs] the requests of the step in flight */
    int n_step_reqs, cap_step_reqs;
    uint64_t *release; /* sequences the workers may forget, sent with the next step */
    int n_release, cap_release;
};

typedef struct coord {
    coord_args a;
    model *m;
    const tokenizer *tok;
    char model_name[PROTO_MAX_NAME_BYTES + 1];
    char model_path[4096];
    int vocab, ctx;
    /* The workers' KV pools: element type (--kv-type), the same on the wire, and the bytes one
     * block of block_size tokens takes over every layer, K and V (a whole group's, all ranks). */
    dtype kv_type;
    Cinder__KvType kv_wire;
    size_t kv_block_bytes;
    int32_t eos_ids[8];
    int n_eos_ids;

    void *zctx, *clients, *workers;
    proto_limits client_limits, worker_limits;
    conn **conns;
    int n_conns, cap_conns;
    group **groups;
    int n_groups, cap_groups;
    request *wait_head, *wait_tail;
    int n_waiting;

    uint64_t t_start, next_seq_id, next_step_id;
    uint64_t requests_total, requests_finished, requests_rejected;
    uint64_t prompt_tokens_total, output_tokens_total, preemptions;
    /* Counters sampled once a second, for the rates in Status. */
    struct coord_sample {
        uint64_t t, prompt, output, finished;
    } samples[8];
    int n_samples;
    uint64_t last_sample_us, last_heartbeat_us;
    bool stopping;
} coord;

/* frontend.c */
void front_on_message(coord *co, wire_msg *m);
/* Sends what r has produced since the last chunk (streaming requests). */
void front_flush(coord *co, request *r);
/* Ends r: its output, then GenerateDone(reason); frees its blocks and the request. r must not
 * be in a step in flight (scheduler.c defers those). */
void front_finish(coord *co, request *r, Cinder__FinishReason reason, const char *msg);
/* Cancel, timeout, disconnect: ends r now, or after the step in flight that holds it. */
void front_end_request(coord *co, request *r, Cinder__FinishReason reason, const char *msg);
/* Ends the requests of clients found gone (a send failed). */
void front_reap(coord *co);
/* Ends the requests whose deadline has passed. */
void front_check_deadlines(coord *co, uint64_t now);
/* Forgets idle connections beyond the bound. */
void front_gc_conns(coord *co, uint64_t now);
void front_fill_status(coord *co, Cinder__Envelope *env);
/* Appends a generated token to r: stop ids, text, stop strings, limits. Returns true when r
 * is finished (front_finish already called). */
bool front_on_token(coord *co, request *r, int32_t token, float logprob, bool has_logprob);

/* groups.c */
void groups_on_message(coord *co, wire_msg *m);
/* Heartbeats to every rank; groups silent too long are lost (their requests requeued). */
void groups_tick(coord *co, uint64_t now);
void groups_send(coord *co, group *g, const Cinder__Envelope *env);
void groups_shutdown(coord *co, const char *reason);
/* Largest KV pool of a ready group, in blocks (0: none ready). */
int groups_max_blocks(const coord *co);

/* scheduler.c */
void sched_enqueue(coord *co, request *r);
void sched_dequeue(coord *co, request *r);
/* Plans and sends the next step of every ready group that has none in flight. */
void sched_run(coord *co);
void sched_on_result(coord *co, group *g, const Cinder__StepResult *res);
/* Takes r off its group (blocks freed, workers told to forget it). */
void sched_detach(coord *co, request *r);
/* Static batches that keep their shape (--no-continuous-batching without --static-early-exit):
 * r, running and ending for reason while other requests of its batch run, leaves a padding
 * slot in its place that takes over its sequence; returns whether it did (r is then off the
 * group, as after sched_detach). */
bool sched_pad(coord *co, request *r, Cinder__FinishReason reason);
/* Ends a padding slot: off the group, freed. */
void sched_pad_drop(coord *co, request *p);
/* A lost group: its running requests go back to the queue front, to be recomputed. */
void sched_group_lost(coord *co, group *g);
void request_free(request *r);

#endif
