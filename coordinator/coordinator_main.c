/* coordinator_main.c - `cinder-coordinator`: options, sockets and the event loop.
 *
 *   cinder-coordinator --model PATH --listen tcp://127.0.0.1:5555 --control tcp://127.0.0.1:5556
 *
 * One thread polls both ROUTER sockets; after every batch of messages it plans a step for each
 * ready group that has none in flight (scheduler.c). Ctrl-C or SIGTERM ends every request
 * (GenerateDone with an error saying so), tells the workers to shut down, and exits. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "cli.h"
#include "coordinator.h"
#include "engine.h"
#include "log.h"

#define N_OPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

static volatile sig_atomic_t coord_stop;

static void coord_on_signal(int sig) {
    (void)sig;
    coord_stop = 1;
}

static void coord_sample(coord *co, uint64_t now) {
    if (now - co->last_sample_us < 1000000u) return;
    co->last_sample_us = now;
    int n = (int)(sizeof co->samples / sizeof co->samples[0]);
    if (co->n_samples == n) {
        memmove(co->samples, co->samples + 1, (size_t)(n - 1) * sizeof co->samples[0]);
        co->n_samples--;
    }
    co->samples[co->n_samples++] = (struct coord_sample){
        now, co->prompt_tokens_total, co->output_tokens_total, co->requests_finished};
}

/* Receives everything queued on one socket. */
static void coord_drain(coord *co, void *sock, bool clients) {
    const proto_limits *lim = clients ? &co->client_limits : &co->worker_limits;
    for (int i = 0; i < 1024; i++) {
        wire_msg m;
        cinder_error err = {0};
        cinder_status s = wire_recv(sock, true, lim, &m, &err);
        if (s == CINDER_ERR_NOT_FOUND) {
            wire_msg_clear(&m);
            return;
        }
        if (s == CINDER_OK) {
            if (clients) front_on_message(co, &m);
            else groups_on_message(co, &m);
        } else if (s == CINDER_ERR_IO || s == CINDER_ERR_NOMEM) {
            LOG_ERROR("%s", err.msg);
        } else {
            if (clients) co->requests_rejected++;
            LOG_INFO("refused a frame from a %s: %s", clients ? "client" : "worker", err.msg);
            wire_send_refusal(sock, &m, lim, &err);
        }
        wire_msg_clear(&m);
    }
}

static cinder_status coord_open(coord *co, cinder_error *err) {
    co->m = model_open(co->a.model, err);
    if (!co->m) return err->status;
    if (engine_model_supported(co->m, err)) return err->status;
    if (!co->m->tok)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "%s has no tokenizer", co->a.model);
    co->tok = co->m->tok;
    co->vocab = co->m->config.vocab_size;
    co->ctx = co->m->config.context_len;
    co->n_eos_ids = tok_stop_ids(co->tok, co->eos_ids, 8);
    if (!realpath(co->a.model, co->model_path))
        snprintf(co->model_path, sizeof co->model_path, "%s", co->a.model);
    const char *base = strrchr(co->model_path, '/');
    snprintf(co->model_name, sizeof co->model_name, "%.256s",
             co->a.name ? co->a.name : base ? base + 1 : co->model_path);
    /* The KV pools: each block's bytes in the chosen type, and what --kv-mib holds of them (a
     * CPU worker sizes its pool so; a CUDA worker by --kv-fraction unless --kv-blocks). */
    const model_config *c = &co->m->config;
    co->kv_block_bytes = kv_cache_block_bytes_type(c->n_layers, c->n_kv_heads, c->head_dim,
                                                   (int)co->a.block_size, co->kv_type);
    if (co->a.kv_blocks > 0) {
        LOG_INFO("KV pools: %lld blocks of %lld tokens per worker group, %s, %zu bytes each "
                 "(%.1f MiB)",
                 (long long)co->a.kv_blocks, (long long)co->a.block_size, dtype_name(co->kv_type),
                 co->kv_block_bytes,
                 (double)co->kv_block_bytes * (double)co->a.kv_blocks / 1048576.0);
    } else {
        uint64_t pool = (uint64_t)co->a.kv_mib << 20, blocks = pool / co->kv_block_bytes;
        if (blocks == 0)
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "--kv-mib %lld holds no KV block: one block of %lld tokens of "
                                    "this model takes %zu bytes in %s (raise --kv-mib, or set "
                                    "--kv-blocks)",
                                    (long long)co->a.kv_mib, (long long)co->a.block_size,
                                    co->kv_block_bytes, dtype_name(co->kv_type));
        LOG_INFO("KV pools: %lld MiB per worker, %s: %llu blocks of %lld tokens, %zu bytes each",
                 (long long)co->a.kv_mib, dtype_name(co->kv_type), (unsigned long long)blocks,
                 (long long)co->a.block_size, co->kv_block_bytes);
    }
    co->client_limits = (proto_limits){.vocab_size = co->vocab};
    co->worker_limits = (proto_limits){.vocab_size = co->vocab};

    co->zctx = zmq_ctx_new();
    if (!co->zctx) return cinder_error_set(err, CINDER_ERR_IO, "zmq_ctx_new failed");
    co->clients = zmq_socket(co->zctx, ZMQ_ROUTER);
    co->workers = zmq_socket(co->zctx, ZMQ_ROUTER);
    if (!co->clients || !co->workers)
        return cinder_error_set(err, CINDER_ERR_IO, "zmq_socket: %s", zmq_strerror(zmq_errno()));
    if (wire_socket_setup(co->clients, true, 0, err) ||
        wire_socket_setup(co->workers, true, 0, err))
        return err->status;
    if (zmq_bind(co->clients, co->a.listen) != 0)
        return cinder_error_set(err, CINDER_ERR_IO, "cannot listen on %s: %s", co->a.listen,
                                zmq_strerror(zmq_errno()));
    if (zmq_bind(co->workers, co->a.control) != 0)
        return cinder_error_set(err, CINDER_ERR_IO, "cannot listen for workers on %s: %s",
                                co->a.control, zmq_strerror(zmq_errno()));
    return CINDER_OK;
}

/* Every request ends with a GenerateDone, even now. */
static void coord_end_all(coord *co) {
    while (co->wait_head)
        front_finish(co, co->wait_head, CINDER__FINISH_REASON__FINISH_REASON_ERROR,
                     "the coordinator is shutting down");
    for (int i = 0; i < co->n_groups; i++) {
        group *g = co->groups[i];
        while (g->run_head) {
            g->run_head->step_tokens = 0;
            front_finish(co, g->run_head, CINDER__FINISH_REASON__FINISH_REASON_ERROR,
                         "the coordinator is shutting down");
        }
    }
}

static void coord_free(coord *co) {
    /* Give the last GenerateDone and Shutdown messages a moment to leave. */
    int linger = 1000;
    if (co->clients) zmq_setsockopt(co->clients, ZMQ_LINGER, &linger, sizeof linger);
    if (co->workers) zmq_setsockopt(co->workers, ZMQ_LINGER, &linger, sizeof linger);
    for (int i = 0; i < co->n_groups; i++) {
        kvm_free(co->groups[i]->kv);
        free(co->groups[i]->ranks);
        free(co->groups[i]->step_reqs);
        free(co->groups[i]->release);
        free(co->groups[i]);
    }
    free(co->groups);
    for (int i = 0; i < co->n_conns; i++) free(co->conns[i]);
    free(co->conns);
    if (co->clients) zmq_close(co->clients);
    if (co->workers) zmq_close(co->workers);
    if (co->zctx) zmq_ctx_term(co->zctx);
    model_free(co->m);
}

static void coord_loop(coord *co) {
    while (!coord_stop) {
        zmq_pollitem_t items[2] = {{co->clients, 0, ZMQ_POLLIN, 0}, {co->workers, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, 2, 100);
        if (rc < 0 && zmq_errno() != EINTR) {
            LOG_ERROR("zmq_poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (rc > 0) {
            if (items[1].revents & ZMQ_POLLIN) coord_drain(co, co->workers, false);
            if (items[0].revents & ZMQ_POLLIN) coord_drain(co, co->clients, true);
        }
        uint64_t now = wire_now_us();
        front_reap(co);
        front_check_deadlines(co, now);
        groups_tick(co, now);
        sched_run(co);
        front_reap(co);
        front_gc_conns(co, now);
        coord_sample(co, now);
    }
}

int main(int argc, char **argv) {
    coord co = {0};
    coord_args *a = &co.a;
    cli_option opts[] = {
        {"model", CLI_STR, &a->model, NULL, 0, 0, "PATH",
         "GGUF file or Hugging Face folder (the same path on every worker host)", true},
        {"listen", CLI_STR, &a->listen, "tcp://127.0.0.1:5555", 0, 0, "ENDPOINT",
         "where clients connect", false},
        {"control", CLI_STR, &a->control, "tcp://127.0.0.1:5556", 0, 0, "ENDPOINT",
         "where worker ranks connect", false},
        {"name", CLI_STR, &a->name, NULL, 0, 0, "NAME",
         "the served model's name (default: the file name)", false},
        {"kv-blocks", CLI_INT, &a->kv_blocks, "0", 0, INT_MAX, "N",
         "KV pool per worker in blocks (0: from --kv-mib)", false},
        {"kv-mib", CLI_INT, &a->kv_mib, "256", 1, 1 << 24, "MIB",
         "KV pool per worker in MiB when --kv-blocks is 0", false},
        {"kv-type", CLI_STR, &a->kv_type, "f32", 0, 0, "f32|f16|bf16",
         "the workers' KV cache element type: f16 and bf16 take half the bytes per block, so "
         "--kv-mib holds twice the blocks (CPU workers: all three; CUDA: f32, bf16)",
         false},
        {"block-size", CLI_INT, &a->block_size, "16", 1, PROTO_MAX_BLOCK_SIZE, "N",
         "tokens per KV block", false},
        {"max-batch-tokens", CLI_INT, &a->max_batch_tokens, "512", 1, PROTO_MAX_STEP_TOKENS, "N",
         "token budget of one step (decodes + prefill chunks)", false},
        {"max-seqs", CLI_INT, &a->max_seqs, "64", 1, PROTO_MAX_STEP_SEQS, "N",
         "sequences running at once per group", false},
        {"max-queue", CLI_INT, &a->max_queue, "1024", 0, 1 << 20, "N",
         "requests waiting at most; more are refused as busy", false},
        {"max-conns", CLI_INT, &a->max_conns, "65536", 1, 1 << 24, "N",
         "client connections remembered at most", false},
        {"heartbeat-timeout-ms", CLI_INT, &a->heartbeat_timeout_ms, "20000", 100, 3600000, "MS",
         "a group silent this long is lost", false},
        {"no-continuous-batching", CLI_FLAG, &a->no_continuous_batching, NULL, 0, 0, NULL,
         "static batches, for comparison: requests are admitted only when the group runs none, "
         "and a batch keeps its shape until its longest request ends (an ended request's slot "
         "goes on decoding, output dropped, as in a fixed-shape batch)",
         false},
        {"static-early-exit", CLI_FLAG, &a->static_early_exit, NULL, 0, 0, NULL,
         "with --no-continuous-batching: an ended request leaves the batch's steps at once", false},
    };
    const char *usage = "cinder-coordinator --model PATH [--listen ENDPOINT] [--control ENDPOINT] "
                        "[--kv-blocks N | --kv-mib MIB] [--kv-type f32|f16|bf16] [--block-size N] "
                        "[--max-batch-tokens N] "
                        "[--no-continuous-batching [--static-early-exit]]";
    cinder_error err = {0};
    int n_pos;
    switch (cli_parse(opts, N_OPTS(opts), argc - 1, argv + 1, NULL, 0, &n_pos, &err)) {
        case CLI_RESULT_HELP:
            cli_print_help(stdout, usage,
                           "Serves a model to clients over ZeroMQ, scheduling every step of the "
                           "worker groups that join it (mpirun ... cinder-worker).",
                           opts, N_OPTS(opts));
            return 0;
        case CLI_RESULT_ERROR:
            fprintf(stderr, "cinder-coordinator: %s\nusage: %s\n", err.msg, usage);
            return 2;
        case CLI_RESULT_OK: break;
    }
    if (a->static_early_exit && !a->no_continuous_batching) {
        fprintf(stderr,
                "cinder-coordinator: --static-early-exit needs --no-continuous-batching\n"
                "usage: %s\n",
                usage);
        return 2;
    }
    if (!kv_cache_type_parse(a->kv_type, &co.kv_type) ||
        !proto_kv_type_from_dtype(co.kv_type, &co.kv_wire)) {
        fprintf(stderr,
                "cinder-coordinator: --kv-type is " KV_CACHE_TYPE_NAMES ", not '%s'\n"
                "usage: %s\n",
                a->kv_type, usage);
        return 2;
    }
    log_init_from_env();
    struct sigaction sa = {0};
    sa.sa_handler = coord_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    co.t_start = wire_now_us();
    if (coord_open(&co, &err)) {
        fprintf(stderr, "cinder-coordinator: %s\n", err.msg);
        goto out;
    }
    LOG_INFO("serving %s on %s; workers join on %s", co.model_name, a->listen, a->control);
    fprintf(stderr, "cinder-coordinator: listening on %s (clients) and %s (workers)\n", a->listen,
            a->control);
    coord_loop(&co);
    LOG_INFO("shutting down");
    co.stopping = true;
    coord_end_all(&co);
    groups_shutdown(&co, "the coordinator is shutting down");
    rc = 0;
out:
    coord_free(&co);
    return rc;
}
