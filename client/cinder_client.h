/* cinder_client.h - libcinder-client: talks to a cinder coordinator over ZeroMQ.
 *
 *   cinder_error err;
 *   cinder_client *c = cinder_client_connect("tcp://127.0.0.1:5555", NULL, &err);
 *   if (!c) { fprintf(stderr, "%s\n", err.msg); ... }
 *   cinder_gen_request req;
 *   cinder_gen_request_init(&req);
 *   req.text = "Once upon a time";
 *   req.max_tokens = 64;
 *   cinder_gen_result res;
 *   if (cinder_client_generate(c, &req, print_chunk, NULL, &res, &err) != CINDER_OK)
 *       fprintf(stderr, "%s\n", err.msg);   // refused (res.error_code) or no answer
 *   else
 *       printf("finished: %s\n", cinder_finish_reason_name(res.finish_reason));
 *   cinder_client_free(c);
 *
 * One client is one DEALER socket and one Hello handshake; its calls are synchronous and it
 * is not thread-safe (use one client per thread). Generation is available whole
 * (cinder_client_generate, a callback per chunk) or step by step (generate_start, then
 * generate_next until it reports the end), one request at a time per client.
 *
 * ZeroMQ reconnects the socket by itself when the coordinator restarts on the same endpoint; a
 * request (generate, status, models) that then reaches a coordinator which has not seen this
 * client's Hello is answered HELLO_REQUIRED, and the client says Hello again and sends the same
 * request once more, without the caller seeing it. A second HELLO_REQUIRED in a row, or a
 * refused Hello, fails the call. A request whose coordinator dies while it runs is not resumed:
 * the wait for its next message runs out (CINDER_ERR_IO).
 *
 * Every frame received is decoded and validated by proto_decode before it is read; a frame
 * that does not pass fails the call with CINDER_ERR_FORMAT. Status and models replies are
 * handed out as the wire types of proto/cinder.proto (cinder.pb-c.h), already validated.
 *
 * Return values: CINDER_OK, or a status with err->msg saying why:
 *   - the coordinator refused (an Error reply): the status from the error code
 *     (INVALID_ARGUMENT -> CINDER_ERR_ARG, TOO_LARGE -> RANGE, MALFORMED -> FORMAT,
 *     UNSUPPORTED -> UNSUPPORTED, NOT_FOUND -> NOT_FOUND, others -> CINDER_ERR_IO), and the
 *     code itself in result->error_code where the call has a result;
 *   - nothing arrived within the timeout, or the socket failed: CINDER_ERR_IO. */
#ifndef CINDER_CLIENT_H
#define CINDER_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cinder.pb-c.h"
#include "status.h"

#define CINDER_CLIENT_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"

typedef struct cinder_client cinder_client;

typedef struct cinder_client_options {
    int connect_timeout_ms; /* the Hello handshake (default 5000) */
    int timeout_ms;         /* default per call: the longest wait for the next message
                               (default 60000; 0: wait forever) */
    size_t max_frame_bytes; /* frames over it are refused (0: PROTO_MAX_FRAME_BYTES) */
} cinder_client_options;

/* The defaults above. */
cinder_client_options cinder_client_options_default(void);

/* Connects to a coordinator and says Hello (opts NULL: the defaults). NULL with err set when
 * the endpoint is bad, nothing answers within connect_timeout_ms, or the coordinator refuses. */
cinder_client *cinder_client_connect(const char *endpoint, const cinder_client_options *opts,
                                     cinder_error *err);
/* Closes the socket at once (queued messages are dropped). NULL is fine. */
void cinder_client_free(cinder_client *c);

/* What the coordinator said in its Hello: protocol minor and software name. */
uint32_t cinder_client_server_minor(const cinder_client *c);
const char *cinder_client_server_software(const cinder_client *c);

/* ---- Generation ------------------------------------------------------------------------ */

typedef struct cinder_chat_msg {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} cinder_chat_msg;

/* One request. The prompt is exactly one of text, tokens (n_tokens > 0) or chat (n_chat > 0).
 * Pointers are borrowed for the duration of the call. */
typedef struct cinder_gen_request {
    const char *request_id; /* NULL: the client makes one (see cinder_gen_result.request_id) */
    const char *text;
    const int32_t *tokens;
    size_t n_tokens;
    const cinder_chat_msg *chat;
    size_t n_chat;
    /* Sampling, sent as given (init: greedy, filters off, no seed). */
    float temperature;        /* [0, 100]; 0: greedy */
    int32_t top_k;            /* >= 0; 0: off */
    float top_p;              /* (0, 1]; 1: off */
    float min_p;              /* [0, 1]; 0: off */
    float repetition_penalty; /* (0, 100]; 1: off */
    bool has_seed;
    uint64_t seed;
    int32_t max_tokens; /* >= 1 (init: 256) */
    const char *const *stop;
    size_t n_stop;
    const int32_t *stop_token_ids;
    size_t n_stop_token_ids;
    bool stream;         /* init: true */
    bool logprobs;       /* a log-probability per generated token */
    uint32_t timeout_ms; /* the coordinator ends the request with TIMEOUT after this (0: none) */
    const char *model;   /* NULL or "": the served model */
    int wait_ms;         /* client side: the longest wait for the next message
                            (init -1: the client's timeout_ms; 0: forever) */
} cinder_gen_request;

/* Fills r with the defaults (greedy, max_tokens 256, stream on, no prompt). */
void cinder_gen_request_init(cinder_gen_request *r);

/* New output of a request, valid during the callback only. */
typedef struct cinder_gen_chunk {
    const char *request_id;
    const char *text; /* NUL-terminated UTF-8 (whole characters) */
    size_t text_len;
    const int32_t *token_ids; /* [n_tokens] */
    size_t n_tokens;
    const float *logprobs; /* [n_tokens] when the request asked, else NULL */
    size_t n_logprobs;
} cinder_gen_chunk;

/* Called per chunk; returning nonzero cancels the request (the client sends Cancel and goes on
 * reading until the coordinator's GenerateDone, normally CANCELLED). */
typedef int (*cinder_gen_chunk_fn)(void *user, const cinder_gen_chunk *chunk);

/* Values of cinder.FinishReason. */
typedef enum cinder_finish {
    CINDER_FINISH_UNSPECIFIED = 0,
    CINDER_FINISH_STOP = 1, /* a stop string, a stop id or end of sequence */
    CINDER_FINISH_LENGTH = 2,
    CINDER_FINISH_CANCELLED = 3,
    CINDER_FINISH_ERROR = 4, /* message says why */
    CINDER_FINISH_TIMEOUT = 5,
} cinder_finish;

/* How a request ended: the GenerateDone's contents, or the Error's code. */
typedef struct cinder_gen_result {
    char request_id[129];
    cinder_finish finish_reason;
    int error_code; /* cinder.ErrorCode of a refusal (the call's status is then not OK), else 0 */
    int32_t prompt_tokens, completion_tokens, cached_prompt_tokens;
    uint64_t time_to_first_token_us, time_per_output_token_us, queue_us, total_us;
    char message[512]; /* GenerateDone.message (FINISH_REASON_ERROR), or the Error's message */
} cinder_gen_result;

/* Sends req and reads its chunks (on_chunk may be NULL) until the GenerateDone (CINDER_OK;
 * res says how it finished) or an Error (not OK; res->error_code and err say why). When
 * nothing arrives within the wait, the client sends Cancel and returns CINDER_ERR_IO. */
cinder_status cinder_client_generate(cinder_client *c, const cinder_gen_request *req,
                                     cinder_gen_chunk_fn on_chunk, void *user,
                                     cinder_gen_result *res, cinder_error *err);

/* Step by step: start sends the request (its id goes to request_id [129] when not NULL)... */
cinder_status cinder_client_generate_start(cinder_client *c, const cinder_gen_request *req,
                                           char *request_id, cinder_error *err);
/* ...then each next waits for the request's next message: a chunk (*done false; chunk valid
 * until the next call on c) or the end (*done true, res filled; the call's status tells Done
 * (CINDER_OK) from a refusal). After the end, another request may start. */
cinder_status cinder_client_generate_next(cinder_client *c, cinder_gen_chunk *chunk, bool *done,
                                          cinder_gen_result *res, cinder_error *err);

/* Asks the coordinator to end the request in flight on c (the one started last); its
 * GenerateDone(CANCELLED) then comes through generate_next. Sends nothing and returns
 * CINDER_ERR_NOT_FOUND when request_id is not the request in flight. */
cinder_status cinder_client_cancel(cinder_client *c, const char *request_id, cinder_error *err);

/* ---- Status and models ------------------------------------------------------------------ */

/* The coordinator's StatusReply (timeout_ms < 0: the client's timeout_ms). *out is the caller's
 * (cinder_client_status_free). Not while a generation is in flight on c. */
cinder_status cinder_client_status(cinder_client *c, int timeout_ms, Cinder__StatusReply **out,
                                   cinder_error *err);
void cinder_client_status_free(Cinder__StatusReply *reply);

/* The coordinator's ModelsReply; *out is the caller's (cinder_client_models_free). */
cinder_status cinder_client_models(cinder_client *c, int timeout_ms, Cinder__ModelsReply **out,
                                   cinder_error *err);
void cinder_client_models_free(Cinder__ModelsReply *reply);

/* ---- Names ------------------------------------------------------------------------------- */

/* "stop", "length", "cancelled", "error", "timeout", "unspecified". */
const char *cinder_finish_reason_name(cinder_finish reason);
/* "INVALID_ARGUMENT", "BUSY", ... (the ErrorCode without its prefix), or "UNKNOWN". */
const char *cinder_error_code_name(int code);

#endif
