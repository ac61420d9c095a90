/* cinder_client.c - libcinder-client: one DEALER socket to the coordinator's ROUTER, one
 * Envelope per frame, everything received validated by proto_decode before it is read. */
#include "cinder_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "log.h"
#include "wire.h"
#include "protocol.h"

struct cinder_client {
    void *ctx, *sock;
    char endpoint[256];
    cinder_client_options opts;
    proto_limits limits;
    uint32_t server_minor;
    char server_software[PROTO_MAX_NAME_BYTES + 1];
    uint64_t next_id;
    /* The request in flight (one at a time). */
    bool in_flight;
    bool cancel_sent;
    int wait_ms;
    char cur_id[PROTO_MAX_REQUEST_ID_BYTES + 1];
    Cinder__Envelope *held; /* the chunk handed out by the last generate_next */
    /* The request's encoded GenerateRequest until its first answer: sent again once, after a
     * new Hello, when the coordinator answers HELLO_REQUIRED (it restarted, or forgot the
     * connection, and the socket reconnected by itself). */
    uint8_t *pending;
    size_t pending_len;
    bool resent;
};

static int64_t ccl_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void ccl_copy(char *dst, size_t cap, const char *src) {
    snprintf(dst, cap, "%s", src ? src : "");
}

cinder_client_options cinder_client_options_default(void) {
    return (cinder_client_options){
        .connect_timeout_ms = 5000, .timeout_ms = 60000, .max_frame_bytes = PROTO_MAX_FRAME_BYTES};
}

/* ---- Names ------------------------------------------------------------------------------- */

const char *cinder_finish_reason_name(cinder_finish reason) {
    switch (reason) {
        case CINDER_FINISH_STOP:
            return "stop";
        case CINDER_FINISH_LENGTH:
            return "length";
        case CINDER_FINISH_CANCELLED:
            return "cancelled";
        case CINDER_FINISH_ERROR:
            return "error";
        case CINDER_FINISH_TIMEOUT:
            return "timeout";
        default:
            return "unspecified";
    }
}

const char *cinder_error_code_name(int code) {
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&cinder__error_code__descriptor, code);
    if (!v) return "UNKNOWN";
    return strncmp(v->name, "ERROR_CODE_", 11) ? v->name : v->name + 11;
}

/* The status a coordinator's Error code stands for (see the header). */
static cinder_status ccl_code_status(int code) {
    switch (code) {
        case CINDER__ERROR_CODE__ERROR_CODE_MALFORMED:
            return CINDER_ERR_FORMAT;
        case CINDER__ERROR_CODE__ERROR_CODE_UNSUPPORTED:
            return CINDER_ERR_UNSUPPORTED;
        case CINDER__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT:
            return CINDER_ERR_ARG;
        case CINDER__ERROR_CODE__ERROR_CODE_TOO_LARGE:
            return CINDER_ERR_RANGE;
        case CINDER__ERROR_CODE__ERROR_CODE_NOT_FOUND:
            return CINDER_ERR_NOT_FOUND;
        default:
            return CINDER_ERR_IO;
    }
}

static cinder_status ccl_refused(const Cinder__Error *e, cinder_error *err) {
    return cinder_error_set(err, ccl_code_status(e->code), "the coordinator refused: %s: %s",
                            cinder_error_code_name(e->code), e->message);
}

/* ---- Frames ------------------------------------------------------------------------------ */

static cinder_status ccl_send_bytes(cinder_client *c, const uint8_t *buf, size_t len,
                                    cinder_error *err) {
    if (zmq_send(c->sock, buf, len, 0) < 0) {
        int e = errno;
        return cinder_error_set(err, CINDER_ERR_IO, "zmq_send to %s: %s", c->endpoint,
                                e == EAGAIN ? "timed out (the coordinator is not reading)"
                                            : zmq_strerror(e));
    }
    return CINDER_OK;
}

static cinder_status ccl_send(cinder_client *c, const Cinder__Envelope *env, cinder_error *err) {
    uint8_t *buf = NULL;
    size_t len = 0;
    cinder_status s = proto_encode_alloc(env, &buf, &len, err);
    if (s != CINDER_OK) return s;
    s = ccl_send_bytes(c, buf, len, err);
    free(buf);
    return s;
}

/* Waits up to wait_ms (0: forever) for one frame and decodes it. */
static cinder_status ccl_recv(cinder_client *c, int wait_ms, Cinder__Envelope **out,
                              cinder_error *err) {
    *out = NULL;
    int64_t deadline = wait_ms > 0 ? ccl_now_ms() + wait_ms : 0;
    for (;;) {
        long left = -1;
        if (wait_ms > 0) {
            left = (long)(deadline - ccl_now_ms());
            if (left < 0) left = 0;
        }
        zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&item, 1, left);
        if (rc < 0) {
            if (errno == EINTR) continue;
            return cinder_error_set(err, CINDER_ERR_IO, "zmq_poll: %s", zmq_strerror(errno));
        }
        if (rc > 0) break;
        if (wait_ms > 0 && ccl_now_ms() >= deadline)
            return cinder_error_set(err, CINDER_ERR_IO, "no answer from %s within %d ms",
                                    c->endpoint, wait_ms);
    }
    wire_msg m;
    cinder_status s = wire_recv(c->sock, false, &c->limits, &m, err);
    if (s == CINDER_OK) {
        *out = m.env;
        m.env = NULL;
    } else if (s == CINDER_ERR_FORMAT || s == CINDER_ERR_ARG || s == CINDER_ERR_RANGE ||
               s == CINDER_ERR_UNSUPPORTED) {
        cinder_error_prefix(err, "the coordinator sent a bad frame");
    } else if (s == CINDER_ERR_NOT_FOUND) {
        s = cinder_error_set(err, CINDER_ERR_IO, "zmq_msg_recv from %s: no message after poll",
                             c->endpoint);
    }
    wire_msg_clear(&m);
    return s;
}

/* ---- Connection -------------------------------------------------------------------------- */

/* A failed ZeroMQ call during setup. */
#define CCL_ZMQ_CHECK(call)                                                                        \
    do {                                                                                           \
        if ((call) < 0) {                                                                          \
            cinder_error_set(err, CINDER_ERR_IO, "%s: %s (%s:%d)", #call, zmq_strerror(errno),     \
                             __FILE__, __LINE__);                                                  \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

/* Says Hello and reads the coordinator's: when connecting, and again when a request is answered
 * HELLO_REQUIRED. Messages of earlier requests that arrive first are dropped. */
static cinder_status ccl_hello(cinder_client *c, cinder_error *err) {
    Cinder__Hello hello;
    proto_hello_init(&hello, CINDER__ROLE__ROLE_CLIENT);
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_HELLO;
    env.hello = &hello;
    cinder_status s = ccl_send(c, &env, err);
    if (s != CINDER_OK) return s;
    int64_t deadline = ccl_now_ms() + c->opts.connect_timeout_ms;
    for (;;) {
        int left = (int)(deadline - ccl_now_ms());
        Cinder__Envelope *reply = NULL;
        s = ccl_recv(c, left > 0 ? left : 1, &reply, err);
        if (s != CINDER_OK) {
            if (s == CINDER_ERR_IO)
                cinder_error_set(
                    err, CINDER_ERR_IO,
                    "no answer from %s within %d ms: is a cinder-coordinator listening "
                    "there?",
                    c->endpoint, c->opts.connect_timeout_ms);
            return s;
        }
        const char *id = proto_envelope_request_id(reply);
        if (id && id[0]) {
            LOG_DEBUG("dropping %s for request '%s' while waiting for the hello",
                      proto_body_name(reply->body_case), id);
            proto_envelope_free(reply);
            continue;
        }
        if (reply->body_case == CINDER__ENVELOPE__BODY_ERROR) {
            s = ccl_refused(reply->error, err);
            cinder_error_prefix(err, "hello to %s", c->endpoint);
        } else if (reply->body_case != CINDER__ENVELOPE__BODY_HELLO ||
                   reply->hello->role != CINDER__ROLE__ROLE_COORDINATOR) {
            s = cinder_error_set(err, CINDER_ERR_FORMAT,
                                 "%s answered the hello with %s, not a coordinator's hello",
                                 c->endpoint,
                                 reply->body_case == CINDER__ENVELOPE__BODY_HELLO
                                     ? "another role's hello"
                                     : proto_body_name(reply->body_case));
        } else {
            c->server_minor = reply->hello->minor;
            ccl_copy(c->server_software, sizeof c->server_software, reply->hello->software);
        }
        proto_envelope_free(reply);
        return s;
    }
}

/* After a HELLO_REQUIRED answer: a new Hello, so that the message can be sent again. */
static cinder_status ccl_rehello(cinder_client *c, cinder_error *err) {
    LOG_DEBUG("%s does not know this connection (it restarted?): saying Hello again", c->endpoint);
    cinder_status s = ccl_hello(c, err);
    if (s != CINDER_OK) cinder_error_prefix(err, "saying Hello again");
    return s;
}

cinder_client *cinder_client_connect(const char *endpoint, const cinder_client_options *opts,
                                     cinder_error *err) {
    cinder_client *c = calloc(1, sizeof *c);
    if (!c) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->opts = opts ? *opts : cinder_client_options_default();
    if (c->opts.connect_timeout_ms <= 0) c->opts.connect_timeout_ms = 5000;
    if (c->opts.timeout_ms < 0) c->opts.timeout_ms = 0;
    if (!c->opts.max_frame_bytes) c->opts.max_frame_bytes = PROTO_MAX_FRAME_BYTES;
    c->limits.max_frame_bytes = c->opts.max_frame_bytes;
    if (!endpoint || !*endpoint) endpoint = CINDER_CLIENT_DEFAULT_ENDPOINT;
    if (strlen(endpoint) >= sizeof c->endpoint) {
        cinder_error_set(err, CINDER_ERR_ARG, "endpoint '%.40s...' is too long", endpoint);
        goto fail;
    }
    ccl_copy(c->endpoint, sizeof c->endpoint, endpoint);

    c->ctx = zmq_ctx_new();
    if (!c->ctx) {
        cinder_error_set(err, CINDER_ERR_IO, "zmq_ctx_new: %s", zmq_strerror(errno));
        goto fail;
    }
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock) {
        cinder_error_set(err, CINDER_ERR_IO, "zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int linger = 0, sndtimeo = c->opts.connect_timeout_ms;
    int64_t maxmsg = (int64_t)c->opts.max_frame_bytes;
    CCL_ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger));
    CCL_ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo));
    CCL_ZMQ_CHECK(zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg));
    if (zmq_connect(c->sock, endpoint) < 0) {
        cinder_error_set(err, CINDER_ERR_ARG,
                         "cannot connect to '%s': %s (an endpoint reads tcp://HOST:PORT)", endpoint,
                         zmq_strerror(errno));
        goto fail;
    }

    if (ccl_hello(c, err) != CINDER_OK) goto fail;
    LOG_DEBUG("connected to %s (%s, protocol %u.%u)", endpoint, c->server_software,
              PROTO_VERSION_MAJOR, c->server_minor);
    return c;
fail:
    cinder_client_free(c);
    return NULL;
}

void cinder_client_free(cinder_client *c) {
    if (!c) return;
    proto_envelope_free(c->held);
    free(c->pending);
    if (c->sock) zmq_close(c->sock);
    if (c->ctx) zmq_ctx_term(c->ctx);
    free(c);
}

uint32_t cinder_client_server_minor(const cinder_client *c) {
    return c->server_minor;
}

const char *cinder_client_server_software(const cinder_client *c) {
    return c->server_software;
}

/* ---- Generation -------------------------------------------------------------------------- */

void cinder_gen_request_init(cinder_gen_request *r) {
    memset(r, 0, sizeof *r);
    r->top_p = 1;
    r->repetition_penalty = 1;
    r->max_tokens = 256;
    r->stream = true;
    r->wait_ms = -1;
}

static void ccl_result_reset(cinder_gen_result *res, const char *id) {
    memset(res, 0, sizeof *res);
    ccl_copy(res->request_id, sizeof res->request_id, id);
}

cinder_status cinder_client_generate_start(cinder_client *c, const cinder_gen_request *req,
                                           char *request_id, cinder_error *err) {
    if (c->in_flight)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "request '%s' is still in flight on this client", c->cur_id);
    int n_prompts = (req->text != NULL) + (req->n_tokens > 0) + (req->n_chat > 0);
    if (n_prompts != 1)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "a request needs exactly one prompt (text, tokens or chat); it has "
                                "%d",
                                n_prompts);
    char id[PROTO_MAX_REQUEST_ID_BYTES + 1];
    if (req->request_id)
        ccl_copy(id, sizeof id, req->request_id);
    else
        snprintf(id, sizeof id, "c%ld-%llu", (long)getpid(), (unsigned long long)++c->next_id);

    Cinder__GenerateRequest g = CINDER__GENERATE_REQUEST__INIT;
    Cinder__SamplingParams sp;
    Cinder__TokenIds toks = CINDER__TOKEN_IDS__INIT;
    Cinder__ChatMessages chat = CINDER__CHAT_MESSAGES__INIT;
    Cinder__ChatMessage *msgs = NULL, **msg_ptrs = NULL;
    g.request_id = id;
    if (req->text) {
        g.prompt_case = CINDER__GENERATE_REQUEST__PROMPT_TEXT;
        g.text = (char *)req->text;
    } else if (req->n_tokens) {
        g.prompt_case = CINDER__GENERATE_REQUEST__PROMPT_TOKENS;
        toks.n_ids = req->n_tokens;
        toks.ids = (int32_t *)req->tokens;
        g.tokens = &toks;
    } else {
        msgs = calloc(req->n_chat, sizeof *msgs);
        msg_ptrs = calloc(req->n_chat, sizeof *msg_ptrs);
        if (!msgs || !msg_ptrs) {
            free(msgs);
            free(msg_ptrs);
            return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        }
        for (size_t i = 0; i < req->n_chat; i++) {
            cinder__chat_message__init(&msgs[i]);
            msgs[i].role = (char *)(req->chat[i].role ? req->chat[i].role : "");
            msgs[i].content = (char *)(req->chat[i].content ? req->chat[i].content : "");
            msg_ptrs[i] = &msgs[i];
        }
        chat.n_messages = req->n_chat;
        chat.messages = msg_ptrs;
        g.prompt_case = CINDER__GENERATE_REQUEST__PROMPT_CHAT;
        g.chat = &chat;
    }
    proto_sampling_default(&sp);
    sp.temperature = req->temperature;
    sp.top_k = req->top_k;
    sp.top_p = req->top_p;
    sp.min_p = req->min_p;
    sp.repetition_penalty = req->repetition_penalty;
    sp.has_seed = req->has_seed;
    sp.seed = req->has_seed ? req->seed : 0;
    g.sampling = &sp;
    g.max_tokens = req->max_tokens;
    g.n_stop = req->n_stop;
    g.stop = (char **)req->stop;
    g.n_stop_token_ids = req->n_stop_token_ids;
    g.stop_token_ids = (int32_t *)req->stop_token_ids;
    g.stream = req->stream;
    g.logprobs = req->logprobs;
    g.timeout_ms = req->timeout_ms;
    g.model = (char *)(req->model ? req->model : "");

    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_GENERATE_REQUEST;
    env.generate_request = &g;
    free(c->pending);
    c->pending = NULL;
    /* proto_encode refuses what the server would. */
    cinder_status s = proto_encode_alloc(&env, &c->pending, &c->pending_len, err);
    free(msgs);
    free(msg_ptrs);
    if (s == CINDER_OK) s = ccl_send_bytes(c, c->pending, c->pending_len, err);
    if (s != CINDER_OK) {
        free(c->pending);
        c->pending = NULL;
        return s;
    }
    c->resent = false;
    c->in_flight = true;
    c->cancel_sent = false;
    c->wait_ms = req->wait_ms < 0 ? c->opts.timeout_ms : req->wait_ms;
    ccl_copy(c->cur_id, sizeof c->cur_id, id);
    if (request_id) ccl_copy(request_id, PROTO_MAX_REQUEST_ID_BYTES + 1, id);
    return CINDER_OK;
}

static cinder_status ccl_send_cancel(cinder_client *c, cinder_error *err) {
    Cinder__Cancel cancel = CINDER__CANCEL__INIT;
    cancel.request_id = c->cur_id;
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    env.body_case = CINDER__ENVELOPE__BODY_CANCEL;
    env.cancel = &cancel;
    cinder_status s = ccl_send(c, &env, err);
    if (s == CINDER_OK) c->cancel_sent = true;
    return s;
}

cinder_status cinder_client_cancel(cinder_client *c, const char *request_id, cinder_error *err) {
    if (!c->in_flight || !request_id || strcmp(request_id, c->cur_id))
        return cinder_error_set(err, CINDER_ERR_NOT_FOUND,
                                "request '%s' is not in flight on this client",
                                request_id ? request_id : "(null)");
    if (c->cancel_sent) return CINDER_OK;
    return ccl_send_cancel(c, err);
}

cinder_status cinder_client_generate_next(cinder_client *c, cinder_gen_chunk *chunk, bool *done,
                                          cinder_gen_result *res, cinder_error *err) {
    proto_envelope_free(c->held);
    c->held = NULL;
    *done = false;
    memset(chunk, 0, sizeof *chunk);
    if (!c->in_flight)
        return cinder_error_set(err, CINDER_ERR_ARG, "no request in flight on this client");
    for (;;) {
        Cinder__Envelope *env = NULL;
        cinder_status s = ccl_recv(c, c->wait_ms, &env, err);
        if (s != CINDER_OK) {
            /* Nothing came in time, the socket failed or a frame did not decode: give the
             * request up (asking the coordinator to end it too); whatever it still sends for
             * the request is dropped as stale. */
            if (!c->cancel_sent) {
                cinder_error e2;
                ccl_send_cancel(c, &e2);
            }
            if (s == CINDER_ERR_IO)
                cinder_error_prefix(err, "request '%s' (the client cancelled it)", c->cur_id);
            c->in_flight = false;
            ccl_result_reset(res, c->cur_id);
            *done = true;
            return s;
        }
        const char *id = proto_envelope_request_id(env);
        bool mine = id && !strcmp(id, c->cur_id);
        if (mine && env->body_case == CINDER__ENVELOPE__BODY_ERROR &&
            env->error->code == CINDER__ERROR_CODE__ERROR_CODE_HELLO_REQUIRED && c->pending &&
            !c->resent && !c->cancel_sent) {
            /* The coordinator does not know this connection: Hello, then the same request
             * once more. A second HELLO_REQUIRED ends the request like any refusal. */
            proto_envelope_free(env);
            c->resent = true;
            s = ccl_rehello(c, err);
            if (s == CINDER_OK) s = ccl_send_bytes(c, c->pending, c->pending_len, err);
            if (s == CINDER_OK) continue;
            c->in_flight = false;
            ccl_result_reset(res, c->cur_id);
            *done = true;
            return s;
        }
        if (mine) {
            free(c->pending);
            c->pending = NULL;
        }
        switch (env->body_case) {
            case CINDER__ENVELOPE__BODY_GENERATE_CHUNK:
                if (!mine) break;
                {
                    Cinder__GenerateChunk *g = env->generate_chunk;
                    chunk->request_id = g->request_id;
                    chunk->text = g->text;
                    chunk->text_len = strlen(g->text);
                    chunk->token_ids = g->token_ids;
                    chunk->n_tokens = g->n_token_ids;
                    chunk->logprobs = g->n_logprobs ? g->logprobs : NULL;
                    chunk->n_logprobs = g->n_logprobs;
                    c->held = env;
                    return CINDER_OK;
                }
            case CINDER__ENVELOPE__BODY_GENERATE_DONE:
                if (!mine) break;
                {
                    Cinder__GenerateDone *d = env->generate_done;
                    ccl_result_reset(res, c->cur_id);
                    res->finish_reason = (cinder_finish)d->finish_reason;
                    if (d->usage) {
                        res->prompt_tokens = d->usage->prompt_tokens;
                        res->completion_tokens = d->usage->completion_tokens;
                        res->cached_prompt_tokens = d->usage->cached_prompt_tokens;
                    }
                    if (d->timings) {
                        res->time_to_first_token_us = d->timings->time_to_first_token_us;
                        res->time_per_output_token_us = d->timings->time_per_output_token_us;
                        res->queue_us = d->timings->queue_us;
                        res->total_us = d->timings->total_us;
                    }
                    ccl_copy(res->message, sizeof res->message, d->message);
                    proto_envelope_free(env);
                    c->in_flight = false;
                    *done = true;
                    return CINDER_OK;
                }
            case CINDER__ENVELOPE__BODY_ERROR: {
                Cinder__Error *e = env->error;
                /* Ours, or about the connection (no id): the request is over. An Error for
                 * another id answers an old request or a late Cancel. */
                if (!mine && e->request_id[0]) break;
                if (!mine && c->cancel_sent && e->code == CINDER__ERROR_CODE__ERROR_CODE_NOT_FOUND)
                    break;
                ccl_result_reset(res, c->cur_id);
                res->error_code = e->code;
                ccl_copy(res->message, sizeof res->message, e->message);
                s = ccl_refused(e, err);
                proto_envelope_free(env);
                c->in_flight = false;
                *done = true;
                return s;
            }
            default:
                LOG_DEBUG("dropping %s while waiting for request '%s'",
                          proto_body_name(env->body_case), c->cur_id);
                break;
        }
        if (id && !mine)
            LOG_DEBUG("dropping %s for request '%s' (not in flight)",
                      proto_body_name(env->body_case), id);
        proto_envelope_free(env);
    }
}

cinder_status cinder_client_generate(cinder_client *c, const cinder_gen_request *req,
                                     cinder_gen_chunk_fn on_chunk, void *user,
                                     cinder_gen_result *res, cinder_error *err) {
    char id[PROTO_MAX_REQUEST_ID_BYTES + 1];
    cinder_status s = cinder_client_generate_start(c, req, id, err);
    if (s != CINDER_OK) {
        ccl_result_reset(res, req->request_id);
        return s;
    }
    for (;;) {
        cinder_gen_chunk chunk;
        bool done;
        s = cinder_client_generate_next(c, &chunk, &done, res, err);
        if (done) return s;
        if (on_chunk && on_chunk(user, &chunk) && !c->cancel_sent) {
            s = ccl_send_cancel(c, err);
            if (s != CINDER_OK) {
                c->in_flight = false;
                ccl_result_reset(res, id);
                return s;
            }
        }
    }
}

/* ---- Status and models ------------------------------------------------------------------- */

/* Sends a body-less request and waits for the reply of the wanted kind. */
static cinder_status ccl_query(cinder_client *c, Cinder__Envelope *req,
                               Cinder__Envelope__BodyCase want, int timeout_ms,
                               Cinder__Envelope **out, cinder_error *err) {
    *out = NULL;
    if (c->in_flight)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "request '%s' is in flight on this client; finish it first",
                                c->cur_id);
    cinder_status s = ccl_send(c, req, err);
    if (s != CINDER_OK) return s;
    int wait = timeout_ms < 0 ? c->opts.timeout_ms : timeout_ms;
    int64_t deadline = ccl_now_ms() + wait;
    bool resent = false;
    for (;;) {
        int left = 0;
        if (wait > 0) {
            left = (int)(deadline - ccl_now_ms());
            if (left <= 0) left = 1;
        }
        Cinder__Envelope *env = NULL;
        s = ccl_recv(c, left, &env, err);
        if (s != CINDER_OK) return s;
        if (env->body_case == want) {
            *out = env;
            return CINDER_OK;
        }
        if (env->body_case == CINDER__ENVELOPE__BODY_ERROR && !env->error->request_id[0] &&
            env->error->code == CINDER__ERROR_CODE__ERROR_CODE_HELLO_REQUIRED && !resent) {
            /* As for a GenerateRequest: Hello, then the same query once more. */
            proto_envelope_free(env);
            resent = true;
            if ((s = ccl_rehello(c, err)) != CINDER_OK || (s = ccl_send(c, req, err)) != CINDER_OK)
                return s;
            continue;
        }
        if (env->body_case == CINDER__ENVELOPE__BODY_ERROR && !env->error->request_id[0]) {
            s = ccl_refused(env->error, err);
            proto_envelope_free(env);
            return s;
        }
        LOG_DEBUG("dropping %s while waiting for %s", proto_body_name(env->body_case),
                  proto_body_name(want));
        proto_envelope_free(env);
    }
}

cinder_status cinder_client_status(cinder_client *c, int timeout_ms, Cinder__StatusReply **out,
                                   cinder_error *err) {
    Cinder__StatusRequest sr = CINDER__STATUS_REQUEST__INIT;
    Cinder__Envelope req = CINDER__ENVELOPE__INIT, *env;
    req.body_case = CINDER__ENVELOPE__BODY_STATUS_REQUEST;
    req.status_request = &sr;
    *out = NULL;
    cinder_status s =
        ccl_query(c, &req, CINDER__ENVELOPE__BODY_STATUS_REPLY, timeout_ms, &env, err);
    if (s != CINDER_OK) return s;
    /* Detach the reply: free_unpacked frees each part on its own (default allocator). */
    *out = env->status_reply;
    env->status_reply = NULL;
    env->body_case = CINDER__ENVELOPE__BODY__NOT_SET;
    proto_envelope_free(env);
    return CINDER_OK;
}

void cinder_client_status_free(Cinder__StatusReply *reply) {
    if (reply) cinder__status_reply__free_unpacked(reply, NULL);
}

cinder_status cinder_client_models(cinder_client *c, int timeout_ms, Cinder__ModelsReply **out,
                                   cinder_error *err) {
    Cinder__ModelsRequest mr = CINDER__MODELS_REQUEST__INIT;
    Cinder__Envelope req = CINDER__ENVELOPE__INIT, *env;
    req.body_case = CINDER__ENVELOPE__BODY_MODELS_REQUEST;
    req.models_request = &mr;
    *out = NULL;
    cinder_status s =
        ccl_query(c, &req, CINDER__ENVELOPE__BODY_MODELS_REPLY, timeout_ms, &env, err);
    if (s != CINDER_OK) return s;
    *out = env->models_reply;
    env->models_reply = NULL;
    env->body_case = CINDER__ENVELOPE__BODY__NOT_SET;
    proto_envelope_free(env);
    return CINDER_OK;
}

void cinder_client_models_free(Cinder__ModelsReply *reply) {
    if (reply) cinder__models_reply__free_unpacked(reply, NULL);
}
