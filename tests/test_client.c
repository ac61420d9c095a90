/* test_client.c - libcinder-client against a coordinator at argv[1].
 *
 *   test_client ENDPOINT mock   the stand-in (tests/cluster/mock_coordinator.py): every path,
 *                               misbehaviour included (bad frames, silence, stray messages)
 *   test_client ENDPOINT real   a real coordinator with SmolLM2: stream equals non-stream,
 *                               cancel, refusals, status and models
 *   test_client ENDPOINT restart  two clients connect and generate, print "connected", wait
 *                               for a line on stdin (the coordinator restarts meanwhile), then
 *                               one generates "Paris", the other asks status and models
 * Run by tests/test_client_mock.py and tests/test_client_cluster.py, which start the server. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cinder_client.h"
#include "test.h"

typedef struct collected {
    char text[65536];
    size_t len;
    int32_t ids[4096];
    size_t n_ids;
    int chunks;
    int cancel_after; /* > 0: return nonzero at this chunk */
} collected;

static int collect(void *user, const cinder_gen_chunk *ch) {
    collected *c = user;
    if (c->len + ch->text_len < sizeof c->text) {
        memcpy(c->text + c->len, ch->text, ch->text_len);
        c->len += ch->text_len;
        c->text[c->len] = 0;
    }
    for (size_t i = 0; i < ch->n_tokens && c->n_ids < 4096; i++)
        c->ids[c->n_ids++] = ch->token_ids[i];
    c->chunks++;
    return c->cancel_after > 0 && c->chunks == c->cancel_after;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Reads a started request's messages with generate_next until the final one (into res),
 * cancelling cancel_id after the first chunk unless it is NULL. Returns the chunks before the
 * final message, or -1 after an error. */
static int step_through(cinder_client *c, const char *cancel_id, cinder_gen_result *res) {
    cinder_error err = {0};
    cinder_gen_chunk chunk;
    bool done = false;
    int n = 0;
    while (!done) {
        cinder_status s = cinder_client_generate_next(c, &chunk, &done, res, &err);
        CHECK_MSG(s == CINDER_OK, "%s", err.msg);
        if (s) return -1;
        if (!done && ++n == 1 && cancel_id)
            CHECK(cinder_client_cancel(c, cancel_id, &err) == CINDER_OK);
    }
    return n;
}

/* Stream and non-stream give the same text and tokens; greedy. */
static void test_stream_equals_whole(cinder_client *c, const char *prompt, int max_tokens) {
    cinder_gen_request req;
    cinder_gen_request_init(&req);
    cinder_chat_msg msg = {"user", prompt};
    req.chat = &msg;
    req.n_chat = 1;
    req.max_tokens = max_tokens;
    cinder_gen_result res;
    cinder_error err = {0};
    static collected a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    CHECK_MSG(cinder_client_generate(c, &req, collect, &a, &res, &err) == CINDER_OK, "%s", err.msg);
    CHECK(res.finish_reason == CINDER_FINISH_STOP || res.finish_reason == CINDER_FINISH_LENGTH);
    CHECK_MSG(res.completion_tokens >= (int)a.n_ids, "%d < %zu", res.completion_tokens, a.n_ids);
    CHECK(a.chunks >= 1);
    req.stream = false;
    CHECK_MSG(cinder_client_generate(c, &req, collect, &b, &res, &err) == CINDER_OK, "%s", err.msg);
    CHECK_EQ_INT(b.chunks, 1);
    CHECK_STR_EQ(a.text, b.text);
    CHECK_EQ_INT(a.n_ids, b.n_ids);
    CHECK(a.n_ids == b.n_ids && !memcmp(a.ids, b.ids, a.n_ids * sizeof a.ids[0]));
    printf("stream == whole: %zu tokens, %d chunks: %.60s\n", a.n_ids, a.chunks, a.text);
}

/* The callback cancels after two chunks; then generate_start/next with an explicit cancel. */
static void test_cancel(cinder_client *c, const char *prompt) {
    cinder_gen_request req;
    cinder_gen_request_init(&req);
    req.text = prompt;
    req.max_tokens = 2000;
    cinder_gen_result res;
    cinder_error err = {0};
    static collected a;
    memset(&a, 0, sizeof a);
    a.cancel_after = 2;
    CHECK_MSG(cinder_client_generate(c, &req, collect, &a, &res, &err) == CINDER_OK, "%s", err.msg);
    CHECK_EQ_INT(res.finish_reason, CINDER_FINISH_CANCELLED);
    CHECK(a.chunks >= 2 && a.chunks < 1000);

    char id[129];
    CHECK(cinder_client_generate_start(c, &req, id, &err) == CINDER_OK);
    CHECK(cinder_client_cancel(c, "not-this-one", &err) == CINDER_ERR_NOT_FOUND);
    int n = step_through(c, id, &res);
    CHECK_EQ_INT(res.finish_reason, CINDER_FINISH_CANCELLED);
    CHECK_STR_EQ(res.request_id, id);
    CHECK(n >= 1 && n < 1000);
    cinder_gen_chunk chunk;
    bool done = false;
    /* Nothing in flight any more. */
    CHECK(cinder_client_cancel(c, id, &err) == CINDER_ERR_NOT_FOUND);
    CHECK(cinder_client_generate_next(c, &chunk, &done, &res, &err) == CINDER_ERR_ARG);
}

/* What the client itself refuses, without sending. */
static void test_local_refusals(cinder_client *c) {
    cinder_gen_request req;
    cinder_gen_request_init(&req);
    cinder_gen_result res;
    cinder_error err = {0};
    CHECK(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "exactly one prompt"));
    req.text = "hi";
    req.top_p = 0;
    CHECK(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_ERR_ARG);
    CHECK_MSG(test_contains(err.msg, "top_p"), "%s", err.msg);
    req.top_p = 1;
    req.max_tokens = 0;
    CHECK(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_ERR_ARG);
    CHECK_MSG(test_contains(err.msg, "max_tokens"), "%s", err.msg);
}

static void test_status_models(cinder_client *c) {
    Cinder__StatusReply *st = NULL;
    cinder_error err = {0};
    CHECK_MSG(cinder_client_status(c, -1, &st, &err) == CINDER_OK, "%s", err.msg);
    if (st) {
        CHECK(st->n_groups >= 1);
        CHECK(st->n_groups >= 1 && st->groups[0]->state == CINDER__GROUP_STATE__GROUP_STATE_READY);
        CHECK(st->kv && st->kv->blocks_total > 0);
    }
    cinder_client_status_free(st);
    Cinder__ModelsReply *m = NULL;
    CHECK_MSG(cinder_client_models(c, -1, &m, &err) == CINDER_OK, "%s", err.msg);
    if (m) CHECK(m->n_models >= 1 && m->models[0]->vocab_size > 0);
    cinder_client_models_free(m);
}

static void test_dead_endpoint(void) {
    cinder_client_options o = cinder_client_options_default();
    o.connect_timeout_ms = 300;
    cinder_error err = {0};
    double t0 = now_s();
    cinder_client *c = cinder_client_connect("tcp://127.0.0.1:1", &o, &err);
    CHECK(!c);
    CHECK(now_s() - t0 < 3);
    CHECK_EQ_INT(err.status, CINDER_ERR_IO);
    CHECK_MSG(test_contains(err.msg, "no answer from tcp://127.0.0.1:1 within 300 ms"), "%s",
              err.msg);
    CHECK(!cinder_client_connect("nonsense", &o, &err));
    CHECK_MSG(test_contains(err.msg, "tcp://HOST:PORT"), "%s", err.msg);
    cinder_client_free(NULL);
}

/* Only the stand-in does these. */
static void test_mock_only(const char *endpoint) {
    cinder_error err = {0};
    cinder_client *c = cinder_client_connect(endpoint, NULL, &err);
    CHECK_MSG(c, "%s", err.msg);
    if (!c) return;
    CHECK_STR_EQ(cinder_client_server_software(c), "mock-coordinator");
    cinder_gen_request req;
    cinder_gen_request_init(&req);
    cinder_gen_result res;
    static collected a;

    /* A refusal: the code and the message. */
    req.text = "!busy";
    CHECK(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_ERR_IO);
    CHECK_EQ_INT(res.error_code, CINDER__ERROR_CODE__ERROR_CODE_BUSY);
    CHECK_MSG(test_contains(err.msg, "BUSY: the queue is full"), "%s", err.msg);
    /* An Error about the connection ends the call too. */
    req.text = "!connerr";
    CHECK(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_ERR_IO);
    CHECK_EQ_INT(res.error_code, CINDER__ERROR_CODE__ERROR_CODE_INTERNAL);
    /* Messages of another request are dropped; the answer is whole. */
    memset(&a, 0, sizeof a);
    req.text = "!stray";
    req.max_tokens = 3;
    CHECK(cinder_client_generate(c, &req, collect, &a, &res, &err) == CINDER_OK);
    CHECK_STR_EQ(a.text, "w0 w1 w2");
    CHECK_EQ_INT(res.finish_reason, CINDER_FINISH_LENGTH);
    /* Stop strings and usage. */
    memset(&a, 0, sizeof a);
    const char *stops[] = {" w3"};
    req.text = "count";
    req.max_tokens = 10;
    req.stop = stops;
    req.n_stop = 1;
    CHECK(cinder_client_generate(c, &req, collect, &a, &res, &err) == CINDER_OK);
    CHECK_STR_EQ(a.text, "w0 w1 w2");
    CHECK_EQ_INT(res.finish_reason, CINDER_FINISH_STOP);
    CHECK_EQ_INT(res.prompt_tokens, 1);
    CHECK(res.total_us > 0);
    req.n_stop = 0;
    /* A frame that does not decode: a clear error, no crash. */
    req.text = "!garbage";
    CHECK(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_ERR_FORMAT);
    CHECK_MSG(test_contains(err.msg, "the coordinator sent a bad frame"), "%s", err.msg);
    /* Silence: the wait ends the call (and cancels). */
    req.text = "!silent";
    req.wait_ms = 200;
    double t0 = now_s();
    CHECK(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_ERR_IO);
    CHECK(now_s() - t0 < 2);
    CHECK_MSG(test_contains(err.msg, "within 200 ms"), "%s", err.msg);
    /* The client goes on working after all that. */
    memset(&a, 0, sizeof a);
    req.text = "again";
    req.wait_ms = -1;
    req.max_tokens = 2;
    CHECK(cinder_client_generate(c, &req, collect, &a, &res, &err) == CINDER_OK);
    CHECK_STR_EQ(a.text, "w0 w1");
    /* The stand-in forgets the connection after a request (as a restarted coordinator would
     * not know it): generate, status and models each say Hello again by themselves. */
    cinder_gen_request_init(&req);
    req.max_tokens = 2;
    req.text = "!amnesia";
    CHECK_MSG(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_OK, "%s", err.msg);
    memset(&a, 0, sizeof a);
    req.text = "after amnesia";
    CHECK_MSG(cinder_client_generate(c, &req, collect, &a, &res, &err) == CINDER_OK, "%s", err.msg);
    CHECK_STR_EQ(a.text, "w0 w1");
    CHECK_EQ_INT(res.error_code, 0);
    req.text = "!amnesia";
    CHECK_MSG(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_OK, "%s", err.msg);
    Cinder__StatusReply *st = NULL;
    CHECK_MSG(cinder_client_status(c, -1, &st, &err) == CINDER_OK, "%s", err.msg);
    CHECK(st && !strcmp(st->model, "mock-model"));
    cinder_client_status_free(st);
    CHECK_MSG(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_OK, "%s", err.msg);
    Cinder__ModelsReply *mr = NULL;
    CHECK_MSG(cinder_client_models(c, -1, &mr, &err) == CINDER_OK, "%s", err.msg);
    CHECK(mr && mr->n_models == 1);
    cinder_client_models_free(mr);
    /* Step by step too: the resent request's chunks come through generate_next. */
    req.text = "!amnesia";
    CHECK(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_OK);
    req.text = "stepwise";
    char sid[129];
    CHECK(cinder_client_generate_start(c, &req, sid, &err) == CINDER_OK);
    CHECK_EQ_INT(step_through(c, NULL, &res), 2);
    CHECK_STR_EQ(res.request_id, sid);
    /* HELLO_REQUIRED again after the new Hello: an error, not a loop; the next call works. */
    req.text = "!forget";
    CHECK(cinder_client_generate(c, &req, NULL, NULL, &res, &err) == CINDER_ERR_IO);
    CHECK_EQ_INT(res.error_code, CINDER__ERROR_CODE__ERROR_CODE_HELLO_REQUIRED);
    CHECK_MSG(test_contains(err.msg, "HELLO_REQUIRED"), "%s", err.msg);
    memset(&a, 0, sizeof a);
    req.text = "after forget";
    CHECK_MSG(cinder_client_generate(c, &req, collect, &a, &res, &err) == CINDER_OK, "%s", err.msg);
    CHECK_STR_EQ(a.text, "w0 w1");
    /* Logprobs, token prompt. */
    int32_t toks[] = {1, 2, 3};
    cinder_gen_request_init(&req);
    req.tokens = toks;
    req.n_tokens = 3;
    req.max_tokens = 2;
    req.logprobs = true;
    memset(&a, 0, sizeof a);
    CHECK(cinder_client_generate(c, &req, collect, &a, &res, &err) == CINDER_OK);
    CHECK_EQ_INT(a.n_ids, 2);
    CHECK_EQ_INT(res.prompt_tokens, 3);
    cinder_client_free(c);
}

/* Two clients outlive a coordinator restart (tests/cluster/test_serving.py restart): each says
 * Hello again by itself when its next request reaches the new coordinator. */
static void test_restart(const char *endpoint) {
    cinder_error err = {0};
    cinder_client_options o = cinder_client_options_default();
    o.timeout_ms = 300000;
    cinder_client *a = cinder_client_connect(endpoint, &o, &err);
    CHECK_MSG(a, "connect: %s", err.msg);
    cinder_client *b = cinder_client_connect(endpoint, &o, &err);
    CHECK_MSG(b, "connect: %s", err.msg);
    if (!a || !b) goto out;
    cinder_gen_request req;
    cinder_gen_request_init(&req);
    cinder_chat_msg msg = {"user", "What is the capital of France?"};
    req.chat = &msg;
    req.n_chat = 1;
    req.max_tokens = 16;
    cinder_gen_result res;
    static collected got;
    CHECK_MSG(cinder_client_generate(a, &req, NULL, NULL, &res, &err) == CINDER_OK, "%s", err.msg);
    CHECK_MSG(cinder_client_generate(b, &req, NULL, NULL, &res, &err) == CINDER_OK, "%s", err.msg);
    printf("connected\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) goto out;
    memset(&got, 0, sizeof got);
    CHECK_MSG(cinder_client_generate(a, &req, collect, &got, &res, &err) == CINDER_OK, "%s",
              err.msg);
    CHECK_MSG(strstr(got.text, "Paris"), "after the restart: %s", got.text);
    printf("after the restart: %s\n", got.text);
    Cinder__StatusReply *st = NULL;
    CHECK_MSG(cinder_client_status(b, -1, &st, &err) == CINDER_OK, "%s", err.msg);
    /* The new coordinator has served a's request only. */
    if (st)
        CHECK_MSG(st->requests_total == 1, "requests_total %llu",
                  (unsigned long long)st->requests_total);
    cinder_client_status_free(st);
    Cinder__ModelsReply *m = NULL;
    CHECK_MSG(cinder_client_models(b, -1, &m, &err) == CINDER_OK, "%s", err.msg);
    cinder_client_models_free(m);
out:
    cinder_client_free(a);
    cinder_client_free(b);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_client ENDPOINT mock|real|restart\n");
        return 2;
    }
    const char *endpoint = argv[1];
    if (!strcmp(argv[2], "restart")) {
        test_restart(endpoint);
        return test_summary("test_client");
    }
    bool mock = !strcmp(argv[2], "mock");
    test_dead_endpoint();
    cinder_error err = {0};
    cinder_client_options o = cinder_client_options_default();
    o.timeout_ms = 120000;
    cinder_client *c = cinder_client_connect(endpoint, &o, &err);
    CHECK_MSG(c, "connect: %s", err.msg);
    if (c) {
        test_stream_equals_whole(c, "What is the capital of France?", mock ? 12 : 64);
        test_cancel(c, "1, 2, 3, 4, 5, 6, 7,");
        test_local_refusals(c);
        test_status_models(c);
        cinder_client_free(c);
    }
    if (mock) test_mock_only(endpoint);
    return test_summary("test_client");
}
