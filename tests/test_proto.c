/* test_proto.c - the wire protocol (proto/protocol.h).
 *
 * Every body type round trips with every field set (a field added to cinder.proto without a
 * value here fails the test); validation refuses bad messages with the right status and names
 * the field; refusals become Error replies that carry the request id; and every truncation and
 * many seeded mutations of every encoded sample decode to a clean error or to a message that
 * passes validation and encodes again - never a crash. Each decode reads a malloc'd buffer of
 * exactly the frame's size, so the sanitizer build catches any read past it. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "protocol.h"
#include "test.h"

#define FUZZ_MUTATIONS_PER_SAMPLE 20000

/* ------------------------------------------------------------------------------------------ */
/* Samples: one envelope per body type (three for the prompt's forms), every field set. Each
 * builder refills its static parts, so a test may change a sample and build it afresh later. */

static void sample_sampling(Cinder__SamplingParams *s) {
    proto_sampling_default(s);
    s->temperature = 0.7f;
    s->top_k = 40;
    s->top_p = 0.9f;
    s->min_p = 0.05f;
    s->repetition_penalty = 1.1f;
    s->seed = 42;
    s->has_seed = 1;
}

static void build_hello(Cinder__Envelope *env) {
    static Cinder__Hello m;
    proto_hello_init(&m, CINDER__ROLE__ROLE_WORKER);
    m.minor = 3; /* a peer with a newer minor is welcome */
    env->body_case = CINDER__ENVELOPE__BODY_HELLO;
    env->hello = &m;
}

static void build_error(Cinder__Envelope *env) {
    static Cinder__Error m;
    cinder__error__init(&m);
    m.request_id = "r1";
    m.code = CINDER__ERROR_CODE__ERROR_CODE_BUSY;
    m.message = "the queue is full";
    env->body_case = CINDER__ENVELOPE__BODY_ERROR;
    env->error = &m;
}

static char *stops[] = {"\n\n", "END"};
static int32_t stop_ids[] = {2, 7};

static Cinder__GenerateRequest *build_request(Cinder__Envelope *env) {
    static Cinder__GenerateRequest m;
    static Cinder__SamplingParams s;
    cinder__generate_request__init(&m);
    sample_sampling(&s);
    m.request_id = "r1";
    m.sampling = &s;
    m.max_tokens = 64;
    m.n_stop = 2;
    m.stop = stops;
    m.n_stop_token_ids = 2;
    m.stop_token_ids = stop_ids;
    m.stream = 1;
    m.logprobs = 1;
    m.timeout_ms = 30000;
    m.ignore_eos = true;
    m.model = "smollm2";
    env->body_case = CINDER__ENVELOPE__BODY_GENERATE_REQUEST;
    env->generate_request = &m;
    return &m;
}

static void build_request_text(Cinder__Envelope *env) {
    Cinder__GenerateRequest *m = build_request(env);
    m->prompt_case = CINDER__GENERATE_REQUEST__PROMPT_TEXT;
    m->text = "The capital of France is";
}

static void build_request_tokens(Cinder__Envelope *env) {
    static int32_t ids[5];
    static Cinder__TokenIds t;
    Cinder__GenerateRequest *m = build_request(env);
    cinder__token_ids__init(&t);
    for (int i = 0; i < 5; i++) ids[i] = 10 + i;
    t.n_ids = 5;
    t.ids = ids;
    m->prompt_case = CINDER__GENERATE_REQUEST__PROMPT_TOKENS;
    m->tokens = &t;
}

static void build_request_chat(Cinder__Envelope *env) {
    static Cinder__ChatMessage msgs[2];
    static Cinder__ChatMessage *ptrs[2];
    static Cinder__ChatMessages chat;
    Cinder__GenerateRequest *m = build_request(env);
    for (int i = 0; i < 2; i++) {
        cinder__chat_message__init(&msgs[i]);
        ptrs[i] = &msgs[i];
    }
    msgs[0].role = "system";
    msgs[0].content = "Answer in one word.";
    msgs[1].role = "user";
    msgs[1].content = "Capitale de la France ? \xc3\xa9\xe2\x82\xac"; /* é€ */
    cinder__chat_messages__init(&chat);
    chat.n_messages = 2;
    chat.messages = ptrs;
    m->prompt_case = CINDER__GENERATE_REQUEST__PROMPT_CHAT;
    m->chat = &chat;
}

static void build_chunk(Cinder__Envelope *env) {
    static Cinder__GenerateChunk m;
    static int32_t ids[2];
    static float lps[2];
    cinder__generate_chunk__init(&m);
    ids[0] = 5, ids[1] = 6;
    lps[0] = -0.5f, lps[1] = -1.25f;
    m.request_id = "r1";
    m.text = " Paris \xf0\x9f\x97\xbc"; /* a four-byte character */
    m.n_token_ids = 2;
    m.token_ids = ids;
    m.n_logprobs = 2;
    m.logprobs = lps;
    env->body_case = CINDER__ENVELOPE__BODY_GENERATE_CHUNK;
    env->generate_chunk = &m;
}

static void build_done(Cinder__Envelope *env) {
    static Cinder__GenerateDone m;
    static Cinder__Usage u;
    static Cinder__Timings t;
    cinder__generate_done__init(&m);
    cinder__usage__init(&u);
    cinder__timings__init(&t);
    u.prompt_tokens = 12;
    u.completion_tokens = 64;
    u.cached_prompt_tokens = 8;
    t.time_to_first_token_us = 1500;
    t.time_per_output_token_us = 20000;
    t.queue_us = 300;
    t.total_us = 900000;
    m.request_id = "r1";
    m.finish_reason = CINDER__FINISH_REASON__FINISH_REASON_LENGTH;
    m.usage = &u;
    m.timings = &t;
    m.message = "max_tokens reached";
    env->body_case = CINDER__ENVELOPE__BODY_GENERATE_DONE;
    env->generate_done = &m;
}

static void build_cancel(Cinder__Envelope *env) {
    static Cinder__Cancel m;
    cinder__cancel__init(&m);
    m.request_id = "r1";
    env->body_case = CINDER__ENVELOPE__BODY_CANCEL;
    env->cancel = &m;
}

static void build_status_request(Cinder__Envelope *env) {
    static Cinder__StatusRequest m;
    cinder__status_request__init(&m);
    env->body_case = CINDER__ENVELOPE__BODY_STATUS_REQUEST;
    env->status_request = &m;
}

static void fill_kv(Cinder__KvUsage *kv) {
    cinder__kv_usage__init(kv);
    kv->blocks_total = 1000;
    kv->blocks_used = 300;
    kv->blocks_free = 700;
    kv->blocks_cached = 50;
    kv->block_size = 16;
    kv->kv_type = CINDER__KV_TYPE__KV_TYPE_F16;
    kv->block_bytes = 368640;
}

static void build_status_reply(Cinder__Envelope *env) {
    static Cinder__StatusReply m;
    static Cinder__GroupStatus g;
    static Cinder__GroupStatus *gs[1];
    static Cinder__RankInfo r;
    static Cinder__RankInfo *rs[1];
    static Cinder__KvUsage kv, gkv;
    cinder__status_reply__init(&m);
    cinder__group_status__init(&g);
    cinder__rank_info__init(&r);
    fill_kv(&kv);
    fill_kv(&gkv);
    r.rank = 1;
    r.host = "node7";
    r.device = "cpu";
    r.mem_bytes = 1u << 30;
    rs[0] = &r;
    g.group = 2;
    g.state = CINDER__GROUP_STATE__GROUP_STATE_READY;
    g.world_size = 2;
    g.n_ranks = 1;
    g.ranks = rs;
    g.kv = &gkv;
    g.running_seqs = 5;
    g.steps = 1234;
    g.heartbeat_age_ms = 250;
    gs[0] = &g;
    m.model = "SmolLM2-135M-Instruct";
    m.uptime_ms = 60000;
    m.n_groups = 1;
    m.groups = gs;
    m.kv = &kv;
    m.prefix_cache_hits = 40;
    m.prefix_cache_queries = 90;
    m.queue_waiting = 3;
    m.running_seqs = 5;
    m.requests_total = 100;
    m.requests_finished = 90;
    m.requests_rejected = 2;
    m.prompt_tokens_total = 5000;
    m.output_tokens_total = 7000;
    m.prompt_tokens_per_s = 800.5;
    m.output_tokens_per_s = 310.25;
    m.requests_per_s = 4.5;
    m.preemptions = 6;
    env->body_case = CINDER__ENVELOPE__BODY_STATUS_REPLY;
    env->status_reply = &m;
}

static void build_models_request(Cinder__Envelope *env) {
    static Cinder__ModelsRequest m;
    cinder__models_request__init(&m);
    env->body_case = CINDER__ENVELOPE__BODY_MODELS_REQUEST;
    env->models_request = &m;
}

static void build_models_reply(Cinder__Envelope *env) {
    static Cinder__ModelsReply m;
    static Cinder__ModelInfo mi;
    static Cinder__ModelInfo *ms[1];
    static int32_t eos[1];
    cinder__models_reply__init(&m);
    eos[0] = 2;
    cinder__model_info__init(&mi);
    mi.name = "SmolLM2-135M-Instruct";
    mi.architecture = "llama";
    mi.vocab_size = 49152;
    mi.context_length = 8192;
    mi.weight_type = "Q4_1";
    mi.chat = 1;
    mi.n_eos_token_ids = 1;
    mi.eos_token_ids = eos;
    ms[0] = &mi;
    m.n_models = 1;
    m.models = ms;
    env->body_case = CINDER__ENVELOPE__BODY_MODELS_REPLY;
    env->models_reply = &m;
}

static void build_register(Cinder__Envelope *env) {
    static Cinder__Register m;
    cinder__register__init(&m);
    m.rank = 1;
    m.group = 3;
    m.world_size = 2;
    m.host = "node7";
    m.device = "cuda:0 NVIDIA H100";
    m.mem_bytes = 80ull << 30;
    env->body_case = CINDER__ENVELOPE__BODY_REGISTER_RANK;
    env->register_rank = &m;
}

static void build_shard_plan(Cinder__Envelope *env) {
    static Cinder__ShardPlan m;
    static Cinder__Range q, kv, ffn, vocab;
    static int32_t experts[2];
    cinder__shard_plan__init(&m);
    experts[0] = 1, experts[1] = 3;
    Cinder__Range *ranges[4] = {&q, &kv, &ffn, &vocab};
    for (int i = 0; i < 4; i++) cinder__range__init(ranges[i]);
    q.begin = 5, q.count = 4; /* 9 heads on 2 ranks: this one has the last 4 */
    kv.begin = 2, kv.count = 1;
    ffn.begin = 768, ffn.count = 768;
    vocab.begin = 24576, vocab.count = 24576;
    m.group = 3;
    m.rank = 1;
    m.world_size = 2;
    m.model_path = "/models/smollm2.gguf";
    m.tp_size = 2;
    m.tp_rank = 1;
    m.ep_size = 2;
    m.ep_rank = 1;
    m.q_heads = &q;
    m.kv_heads = &kv;
    m.ffn = &ffn;
    m.vocab = &vocab;
    m.n_experts = 2;
    m.experts = experts;
    m.block_size = 16;
    m.kv_blocks = 4096;
    m.kv_mem_bytes = 1u << 30;
    m.max_batch_tokens = 2048;
    m.max_seqs = 256;
    m.kv_type = CINDER__KV_TYPE__KV_TYPE_BF16;
    env->body_case = CINDER__ENVELOPE__BODY_SHARD_PLAN;
    env->shard_plan = &m;
}

static void build_ready(Cinder__Envelope *env) {
    static Cinder__Ready m;
    cinder__ready__init(&m);
    m.group = 3;
    m.rank = 1;
    m.kv_blocks = 4096;
    m.block_size = 16;
    m.max_batch_tokens = 2048;
    m.max_seqs = 256;
    m.vocab_size = 49152;
    m.kv_type = CINDER__KV_TYPE__KV_TYPE_BF16;
    env->body_case = CINDER__ENVELOPE__BODY_READY;
    env->ready = &m;
}

/* Two sequences: seq 7 brings 3 tokens at position 4, seq 9 one token at position 2. */
static void build_step(Cinder__Envelope *env) {
    static Cinder__Step m;
    static Cinder__StepSeq seqs[2];
    static Cinder__StepSeq *sp[2];
    static Cinder__SamplingParams sam[2];
    static Cinder__BlockCopy copy;
    static Cinder__BlockCopy *copies[1];
    static int32_t tokens[4], table0[2], table1[1], hist0[4], hist1[2], frees[1];
    static uint64_t release[1];
    cinder__step__init(&m);
    for (int i = 0; i < 4; i++) tokens[i] = 100 + i, hist0[i] = 50 + i;
    hist1[0] = 60, hist1[1] = 61;
    table0[0] = 0, table0[1] = 1;
    table1[0] = 3;
    frees[0] = 6;
    release[0] = 11;
    for (int i = 0; i < 2; i++) {
        cinder__step_seq__init(&seqs[i]);
        sample_sampling(&sam[i]);
        seqs[i].sampling = &sam[i];
        seqs[i].sample = 1;
        seqs[i].all_logits = 1;
        seqs[i].logprobs = 1;
        sp[i] = &seqs[i];
    }
    seqs[0].seq_id = 7, seqs[0].n_tokens = 3, seqs[0].pos = 4;
    seqs[0].n_block_table = 2, seqs[0].block_table = table0, seqs[0].block_table_from = 1;
    seqs[0].rng_draws = 5, seqs[0].n_history = 4, seqs[0].history = hist0;
    seqs[1].seq_id = 9, seqs[1].n_tokens = 1, seqs[1].pos = 2;
    seqs[1].n_block_table = 1, seqs[1].block_table = table1, seqs[1].block_table_from = 2;
    seqs[1].rng_draws = 1, seqs[1].n_history = 2, seqs[1].history = hist1;
    cinder__block_copy__init(&copy);
    copy.src = 4, copy.dst = 5;
    copies[0] = &copy;
    m.step_id = 77;
    m.n_tokens = 4;
    m.tokens = tokens;
    m.n_seqs = 2;
    m.seqs = sp;
    m.n_copies = 1;
    m.copies = copies;
    m.n_free_blocks = 1;
    m.free_blocks = frees;
    m.n_release_seqs = 1;
    m.release_seqs = release;
    env->body_case = CINDER__ENVELOPE__BODY_STEP;
    env->step = &m;
}

static void build_step_result(Cinder__Envelope *env) {
    static Cinder__StepResult m;
    static Cinder__SeqResult s;
    static Cinder__SeqResult *sp[1];
    static int32_t tok[1];
    static float lp[1];
    cinder__step_result__init(&m);
    tok[0] = 321;
    lp[0] = -0.125f;
    cinder__seq_result__init(&s);
    s.seq_id = 7;
    s.n_tokens = 1;
    s.tokens = tok;
    s.n_logprobs = 1;
    s.logprobs = lp;
    sp[0] = &s;
    m.step_id = 77;
    m.group = 3;
    m.rank = 2;
    m.n_seqs = 1;
    m.seqs = sp;
    m.elapsed_us = 4100;
    m.error = "seq 9: nothing to report";
    env->body_case = CINDER__ENVELOPE__BODY_STEP_RESULT;
    env->step_result = &m;
}

static void build_heartbeat(Cinder__Envelope *env) {
    static Cinder__Heartbeat m;
    cinder__heartbeat__init(&m);
    m.group = 3;
    m.rank = 1;
    m.seq = 17;
    m.time_us = 123456789;
    m.steps_done = 4000;
    env->body_case = CINDER__ENVELOPE__BODY_HEARTBEAT;
    env->heartbeat = &m;
}

static void build_migrate(Cinder__Envelope *env) {
    static Cinder__MigrateBlocks m;
    static int32_t blocks[2];
    static uint8_t data[2][8];
    static ProtobufCBinaryData bd[2];
    cinder__migrate_blocks__init(&m);
    blocks[0] = 8, blocks[1] = 9;
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < 8; k++) data[i][k] = (uint8_t)(200 * i + k); /* 200..207 */
        bd[i] = (ProtobufCBinaryData){.len = 8, .data = data[i]};
    }
    m.migration_id = 5;
    m.op = CINDER__MIGRATE_OP__MIGRATE_OP_IMPORT;
    m.seq_id = 7;
    m.rank = 1;
    m.n_blocks = 2;
    m.blocks = blocks;
    m.n_block_data = 2;
    m.block_data = bd;
    env->body_case = CINDER__ENVELOPE__BODY_MIGRATE_BLOCKS;
    env->migrate_blocks = &m;
}

static void build_shutdown(Cinder__Envelope *env) {
    static Cinder__Shutdown m;
    cinder__shutdown__init(&m);
    m.reason = "operator";
    m.drain = 1;
    env->body_case = CINDER__ENVELOPE__BODY_SHUTDOWN;
    env->shutdown = &m;
}

typedef void (*sample_build)(Cinder__Envelope *env);

static const struct {
    const char *name;
    sample_build build;
} samples[] = {
    {"hello", build_hello},
    {"error", build_error},
    {"generate_request(text)", build_request_text},
    {"generate_request(tokens)", build_request_tokens},
    {"generate_request(chat)", build_request_chat},
    {"generate_chunk", build_chunk},
    {"generate_done", build_done},
    {"cancel", build_cancel},
    {"status_request", build_status_request},
    {"status_reply", build_status_reply},
    {"models_request", build_models_request},
    {"models_reply", build_models_reply},
    {"register_rank", build_register},
    {"shard_plan", build_shard_plan},
    {"ready", build_ready},
    {"step", build_step},
    {"step_result", build_step_result},
    {"heartbeat", build_heartbeat},
    {"migrate_blocks", build_migrate},
    {"shutdown", build_shutdown},
};
#define N_SAMPLES ((int)(sizeof samples / sizeof samples[0]))

static Cinder__Envelope sample(int i) {
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    samples[i].build(&env);
    return env;
}

/* ------------------------------------------------------------------------------------------ */
/* Helpers */

/* Packs env as is - no validation, as a broken or hostile peer would - into a malloc'd buffer
 * of exactly its size. */
static uint8_t *pack_raw(const Cinder__Envelope *env, size_t *len) {
    *len = cinder__envelope__get_packed_size(env);
    uint8_t *buf = malloc(*len ? *len : 1);
    cinder__envelope__pack(env, buf);
    return buf;
}

/* A malloc'd copy of exactly n bytes, so that reading past the frame is caught. */
static uint8_t *frame_copy(const uint8_t *src, size_t n) {
    uint8_t *buf = malloc(n ? n : 1);
    if (n) memcpy(buf, src, n);
    return buf;
}

/* Whether every field of m, recursively, holds something other than its default: scalars
 * non-zero, strings and bytes non-empty, messages present, repeated fields non-empty (their
 * strings, bytes and messages checked one by one). Oneof members other than the one set are
 * skipped. Names the first empty field in missing. */
static bool all_fields_set(const ProtobufCMessage *m, const char *path, char *missing, size_t cap) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;
        const void *member = base + f->offset;
        size_t n = 1;
        bool set = true;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)(base + f->quantifier_offset);
            member = *(const void *const *)member;
            set = n > 0;
            if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_BYTES &&
                f->type != PROTOBUF_C_TYPE_MESSAGE)
                n = 0; /* a repeated number may be 0 */
        }
        for (size_t k = 0; k < n && set; k++) {
            switch (f->type) {
                case PROTOBUF_C_TYPE_STRING:
                    set = ((const char *const *)member)[k][0] != 0;
                    break;
                case PROTOBUF_C_TYPE_BYTES:
                    set = ((const ProtobufCBinaryData *)member)[k].len > 0;
                    break;
                case PROTOBUF_C_TYPE_MESSAGE: {
                    const ProtobufCMessage *sub = ((const ProtobufCMessage *const *)member)[k];
                    char sub_path[256];
                    snprintf(sub_path, sizeof sub_path, "%s.%s", path, f->name);
                    if (!sub)
                        set = false;
                    else if (!all_fields_set(sub, sub_path, missing, cap))
                        return false;
                    break;
                }
                case PROTOBUF_C_TYPE_FLOAT:
                    set = ((const float *)member)[k] != 0;
                    break;
                case PROTOBUF_C_TYPE_DOUBLE:
                    set = ((const double *)member)[k] != 0;
                    break;
                case PROTOBUF_C_TYPE_INT64:
                case PROTOBUF_C_TYPE_UINT64:
                case PROTOBUF_C_TYPE_SINT64:
                case PROTOBUF_C_TYPE_FIXED64:
                case PROTOBUF_C_TYPE_SFIXED64:
                    set = ((const uint64_t *)member)[k] != 0;
                    break;
                default: /* 32-bit numbers, bool, enum */
                    set = ((const uint32_t *)member)[k] != 0;
                    break;
            }
        }
        if (!set) {
            snprintf(missing, cap, "%s.%s", path, f->name);
            return false;
        }
    }
    return true;
}

/* Decodes a raw frame expecting a refusal with status want and a message naming field. */
static void expect_frame_refused(const uint8_t *frame, size_t len, const proto_limits *lim,
                                 cinder_status want, const char *field, const char *what) {
    uint8_t *buf = frame_copy(frame, len);
    Cinder__Envelope *out = (Cinder__Envelope *)&out; /* poison: must become NULL */
    cinder_error err = {0};
    cinder_status st = proto_decode(buf, len, lim, &out, &err);
    CHECK_MSG(st == want, "%s: %s (%s), wanted %s", what, cinder_status_name(st), err.msg,
              cinder_status_name(want));
    CHECK_MSG(out == NULL, "%s: a refused frame left a message", what);
    CHECK_MSG(test_contains(err.msg, field), "%s: \"%s\" does not name %s", what, err.msg, field);
    free(buf);
}

/* The same for a message built in memory and packed as is; without limits, proto_encode must
 * refuse it the same way. */
static void expect_refused(const Cinder__Envelope *env, const proto_limits *lim, cinder_status want,
                           const char *field, const char *what) {
    size_t len;
    uint8_t *buf = pack_raw(env, &len);
    expect_frame_refused(buf, len, lim, want, field, what);
    free(buf);
    if (lim) return; /* proto_encode knows no limits */
    cinder_error err = {0};
    uint8_t *enc = NULL;
    cinder_status st = proto_encode_alloc(env, &enc, &len, &err);
    CHECK_MSG(st == want && enc == NULL && test_contains(err.msg, field),
              "%s: proto_encode gave %s (%s)", what, cinder_status_name(st), err.msg);
    free(enc);
}

static void expect_accepted(const Cinder__Envelope *env, const proto_limits *lim,
                            const char *what) {
    size_t len;
    uint8_t *buf = pack_raw(env, &len);
    Cinder__Envelope *out = NULL;
    cinder_error err = {0};
    cinder_status st = proto_decode(buf, len, lim, &out, &err);
    CHECK_MSG(st == CINDER_OK && out, "%s: refused: %s", what, err.msg);
    proto_envelope_free(out);
    free(buf);
}

/* ------------------------------------------------------------------------------------------ */
/* Round trips */

static void test_round_trips(void) {
    bool seen_body[64] = {0}, seen_prompt[8] = {0};
    for (int i = 0; i < N_SAMPLES; i++) {
        Cinder__Envelope env = sample(i);
        uint8_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        cinder_error err = {0};
        CHECK_MSG(proto_encode_alloc(&env, &a, &na, &err) == CINDER_OK, "%s: %s", samples[i].name,
                  err.msg);
        CHECK_EQ_INT(na, proto_encoded_size(&env));
        uint8_t *frame = frame_copy(a, na);
        Cinder__Envelope *out = NULL;
        CHECK_MSG(proto_decode(frame, na, NULL, &out, &err) == CINDER_OK, "%s: %s", samples[i].name,
                  err.msg);
        free(frame);
        if (!out) {
            free(a);
            continue;
        }
        CHECK_EQ_INT(out->body_case, env.body_case);
        CHECK(protobuf_c_message_check(&out->base));
        char missing[256] = "";
        CHECK_MSG(all_fields_set(&out->base, "envelope", missing, sizeof missing),
                  "%s: %s is not set by the sample, or did not survive", samples[i].name, missing);
        /* Re-encoding the decoded message gives the same bytes: nothing was lost or changed. */
        CHECK_MSG(proto_encode_alloc(out, &b, &nb, &err) == CINDER_OK, "%s: %s", samples[i].name,
                  err.msg);
        CHECK_MSG(nb == na && b && memcmp(a, b, na) == 0, "%s: %zu bytes became %zu",
                  samples[i].name, na, nb);
        if (out->body_case < 64) seen_body[out->body_case] = true;
        if (out->body_case == CINDER__ENVELOPE__BODY_GENERATE_REQUEST)
            seen_prompt[out->generate_request->prompt_case] = true;
        proto_envelope_free(out);
        free(a);
        free(b);
    }
    /* Every body type and every form of the prompt has a sample. */
    const ProtobufCMessageDescriptor *ed = &cinder__envelope__descriptor;
    for (unsigned i = 0; i < ed->n_fields; i++)
        CHECK_MSG(ed->fields[i].id < 64 && seen_body[ed->fields[i].id], "no sample of %s",
                  ed->fields[i].name);
    CHECK(seen_prompt[CINDER__GENERATE_REQUEST__PROMPT_TEXT]);
    CHECK(seen_prompt[CINDER__GENERATE_REQUEST__PROMPT_TOKENS]);
    CHECK(seen_prompt[CINDER__GENERATE_REQUEST__PROMPT_CHAT]);
}

/* A few values read back explicitly, beyond the byte-equality of the re-encoding. */
static void test_round_trip_values(void) {
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    build_request_chat(&env);
    uint8_t *buf = NULL;
    size_t len = 0;
    Cinder__Envelope *out = NULL;
    cinder_error err = {0};
    CHECK(proto_encode_alloc(&env, &buf, &len, &err) == CINDER_OK);
    CHECK(proto_decode(buf, len, NULL, &out, &err) == CINDER_OK);
    if (out) {
        const Cinder__GenerateRequest *r = out->generate_request;
        CHECK_STR_EQ(r->request_id, "r1");
        CHECK_EQ_INT(r->chat->n_messages, 2);
        CHECK_STR_EQ(r->chat->messages[1]->role, "user");
        CHECK_STR_EQ(r->chat->messages[1]->content, "Capitale de la France ? \xc3\xa9\xe2\x82\xac");
        CHECK(r->sampling->temperature == 0.7f && r->sampling->top_p == 0.9f);
        CHECK(r->sampling->has_seed && r->sampling->seed == 42);
        CHECK_EQ_INT(r->max_tokens, 64);
        CHECK_STR_EQ(r->stop[0], "\n\n");
        CHECK_EQ_INT(r->stop_token_ids[1], 7);
        CHECK(r->stream && r->logprobs);
        CHECK_EQ_INT(r->timeout_ms, 30000);
        CHECK_STR_EQ(proto_envelope_request_id(out), "r1");
    }
    proto_envelope_free(out);
    free(buf);

    build_migrate(&env);
    CHECK(proto_encode_alloc(&env, &buf, &len, &err) == CINDER_OK);
    CHECK(proto_decode(buf, len, NULL, &out, &err) == CINDER_OK);
    if (out) {
        const Cinder__MigrateBlocks *m = out->migrate_blocks;
        CHECK_EQ_INT(m->n_block_data, 2);
        CHECK(m->block_data[1].len == 8 && m->block_data[1].data[4] == 204);
        CHECK_EQ_INT(m->blocks[1], 9);
    }
    proto_envelope_free(out);
    free(buf);

    build_step(&env);
    CHECK(proto_encode_alloc(&env, &buf, &len, &err) == CINDER_OK);
    CHECK(proto_decode(buf, len, NULL, &out, &err) == CINDER_OK);
    if (out) {
        const Cinder__Step *s = out->step;
        CHECK_EQ_INT(s->n_tokens, 4);
        CHECK_EQ_INT(s->tokens[3], 103);
        CHECK_EQ_INT(s->seqs[1]->seq_id, 9);
        CHECK_EQ_INT(s->seqs[0]->history[3], 53);
        CHECK_EQ_INT(s->copies[0]->dst, 5);
        CHECK(s->seqs[0]->sampling->repetition_penalty == 1.1f);
    }
    proto_envelope_free(out);
    free(buf);

    /* The defaults and the Hello helpers. */
    Cinder__SamplingParams sp;
    proto_sampling_default(&sp);
    CHECK(sp.temperature == 0 && sp.top_k == 0 && sp.top_p == 1 && sp.min_p == 0 &&
          sp.repetition_penalty == 1 && !sp.has_seed);
    Cinder__Hello h;
    proto_hello_init(&h, CINDER__ROLE__ROLE_CLIENT);
    CHECK(h.major == PROTO_VERSION_MAJOR && h.minor == PROTO_VERSION_MINOR);
    CHECK(test_contains(h.software, "cinder"));
    CHECK_STR_EQ(proto_body_name(CINDER__ENVELOPE__BODY_STEP), "step");
    CHECK_STR_EQ(proto_body_name(CINDER__ENVELOPE__BODY__NOT_SET), "none");

    /* A buffer one byte short is refused; one of the exact size is enough. */
    build_cancel(&env);
    uint8_t small[64];
    size_t need = proto_encoded_size(&env);
    CHECK(proto_encode(&env, small, need - 1, &len, &err) == CINDER_ERR_RANGE);
    CHECK(proto_encode(&env, small, need, &len, &err) == CINDER_OK && len == need);
}

/* ------------------------------------------------------------------------------------------ */
/* Validation */

static void test_refusals_request(void) {
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    Cinder__GenerateRequest *r;
    const cinder_status ARG = CINDER_ERR_ARG, FMT = CINDER_ERR_FORMAT, RNG = CINDER_ERR_RANGE;

    build_request_tokens(&env);
    env.generate_request->tokens->ids[1] = -3;
    expect_refused(&env, NULL, ARG, "generate_request.tokens.ids[1]", "negative prompt token");

    build_request_tokens(&env);
    proto_limits vocab100 = {.vocab_size = 100};
    env.generate_request->tokens->ids[0] = 100;
    expect_refused(&env, &vocab100, ARG, "generate_request.tokens.ids[0]", "token >= vocab");
    expect_accepted(&env, NULL, "token 100 with the vocabulary unknown");
    env.generate_request->tokens->ids[0] = 99;
    expect_accepted(&env, &vocab100, "token 99 in a vocabulary of 100");

    const float bad_temps[] = {NAN, -1.0f, 1e6f, INFINITY, -0.0001f, 100.5f};
    for (size_t i = 0; i < sizeof bad_temps / sizeof bad_temps[0]; i++) {
        build_request_text(&env);
        env.generate_request->sampling->temperature = bad_temps[i];
        char what[64];
        snprintf(what, sizeof what, "temperature %g", bad_temps[i]);
        expect_refused(&env, NULL, ARG, "generate_request.sampling.temperature", what);
    }
    build_request_text(&env);
    env.generate_request->sampling->temperature = 100;
    expect_accepted(&env, NULL, "temperature 100");

    build_request_text(&env);
    env.generate_request->sampling->top_p = 0;
    expect_refused(&env, NULL, ARG, "generate_request.sampling.top_p", "top_p 0");
    build_request_text(&env);
    env.generate_request->sampling->top_p = 1.01f;
    expect_refused(&env, NULL, ARG, "generate_request.sampling.top_p", "top_p 1.01");
    build_request_text(&env);
    env.generate_request->sampling->top_k = -1;
    expect_refused(&env, NULL, ARG, "generate_request.sampling.top_k", "top_k -1");
    build_request_text(&env);
    env.generate_request->sampling->min_p = 1.5f;
    expect_refused(&env, NULL, ARG, "generate_request.sampling.min_p", "min_p 1.5");
    build_request_text(&env);
    env.generate_request->sampling->repetition_penalty = 0;
    expect_refused(&env, NULL, ARG, "generate_request.sampling.repetition_penalty",
                   "repetition_penalty 0");
    /* No sampling at all: the defaults. */
    build_request_text(&env);
    env.generate_request->sampling = NULL;
    expect_accepted(&env, NULL, "no sampling parameters");

    build_request_text(&env);
    env.generate_request->request_id = "";
    expect_refused(&env, NULL, ARG, "generate_request.request_id", "empty request id");
    char long_id[PROTO_MAX_REQUEST_ID_BYTES + 2];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    build_request_text(&env);
    env.generate_request->request_id = long_id;
    expect_refused(&env, NULL, RNG, "generate_request.request_id", "request id over the bound");

    /* A prompt one byte over the bound (the frame itself is under the frame bound). */
    char *huge = malloc(PROTO_MAX_PROMPT_BYTES + 2);
    memset(huge, 'a', PROTO_MAX_PROMPT_BYTES + 1);
    huge[PROTO_MAX_PROMPT_BYTES + 1] = '\0';
    build_request_text(&env);
    env.generate_request->text = huge;
    expect_refused(&env, NULL, RNG, "generate_request.text", "huge prompt text");
    huge[PROTO_MAX_PROMPT_BYTES] = '\0';
    expect_accepted(&env, NULL, "prompt text of exactly the bound");
    free(huge);

    int32_t *many = calloc(PROTO_MAX_CONTEXT + 1, sizeof *many);
    build_request_tokens(&env);
    env.generate_request->tokens->ids = many;
    env.generate_request->tokens->n_ids = PROTO_MAX_CONTEXT + 1;
    expect_refused(&env, NULL, RNG, "generate_request.tokens.ids", "huge prompt of tokens");
    free(many);

    build_request_text(&env);
    env.generate_request->text = "";
    expect_refused(&env, NULL, ARG, "generate_request.text", "empty prompt");
    build_request_text(&env);
    env.generate_request->prompt_case = CINDER__GENERATE_REQUEST__PROMPT__NOT_SET;
    expect_refused(&env, NULL, FMT, "generate_request.prompt", "no prompt");
    build_request_text(&env);
    env.generate_request->text = "caf\xc3";
    expect_refused(&env, NULL, FMT, "generate_request.text", "prompt cut inside a character");
    build_request_text(&env);
    env.generate_request->text = "\xed\xa0\x80"; /* a surrogate */
    expect_refused(&env, NULL, FMT, "generate_request.text", "surrogate in UTF-8");
    build_request_text(&env);
    env.generate_request->text = "\xc0\xaf"; /* overlong '/' */
    expect_refused(&env, NULL, FMT, "generate_request.text", "overlong UTF-8");

    build_request_chat(&env);
    env.generate_request->chat->messages[1]->role = "";
    expect_refused(&env, NULL, ARG, "generate_request.chat.messages[1].role", "empty role");
    build_request_chat(&env);
    env.generate_request->chat->messages[0]->content = "\xff";
    expect_refused(&env, NULL, FMT, "generate_request.chat.messages[0].content",
                   "chat content not UTF-8");
    build_request_chat(&env);
    env.generate_request->chat->n_messages = 0;
    expect_refused(&env, NULL, FMT, "generate_request.chat.messages", "chat without messages");

    r = build_request(&env);
    r->prompt_case = CINDER__GENERATE_REQUEST__PROMPT_TEXT;
    r->text = "hi";
    r->max_tokens = 0;
    expect_refused(&env, NULL, ARG, "generate_request.max_tokens", "max_tokens 0");
    r->max_tokens = -5;
    expect_refused(&env, NULL, ARG, "generate_request.max_tokens", "max_tokens -5");
    r->max_tokens = PROTO_MAX_NEW_TOKENS + 1;
    expect_refused(&env, NULL, ARG, "generate_request.max_tokens", "max_tokens over the bound");
    r->max_tokens = 1;
    expect_accepted(&env, NULL, "max_tokens 1");

    char *bad_stops[] = {"ok", ""};
    r->stop = bad_stops;
    expect_refused(&env, NULL, ARG, "generate_request.stop[1]", "empty stop string");
    char *lots[PROTO_MAX_STOP_STRINGS + 1];
    for (int i = 0; i <= PROTO_MAX_STOP_STRINGS; i++) lots[i] = "x";
    r->stop = lots;
    r->n_stop = PROTO_MAX_STOP_STRINGS + 1;
    expect_refused(&env, NULL, RNG, "generate_request.stop", "too many stop strings");
    r->n_stop = 0;
    int32_t bad_ids[] = {2, -1};
    r->stop_token_ids = bad_ids;
    expect_refused(&env, NULL, ARG, "generate_request.stop_token_ids[1]", "negative stop id");
}

static void test_refusals_other(void) {
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    const cinder_status ARG = CINDER_ERR_ARG, FMT = CINDER_ERR_FORMAT;

    /* Versions: another major is refused as unsupported, another minor is welcome. */
    build_hello(&env);
    env.hello->major = PROTO_VERSION_MAJOR + 1;
    expect_refused(&env, NULL, CINDER_ERR_UNSUPPORTED, "hello.major", "next major");
    env.hello->major = 0;
    expect_refused(&env, NULL, CINDER_ERR_UNSUPPORTED, "hello.major", "major 0");
    env.hello->major = PROTO_VERSION_MAJOR + 1;
    env.hello->role = CINDER__ROLE__ROLE_UNSPECIFIED; /* the version is reported first */
    expect_refused(&env, NULL, CINDER_ERR_UNSUPPORTED, "hello.major", "next major, no role");
    build_hello(&env);
    env.hello->minor = 99;
    expect_accepted(&env, NULL, "another minor");
    env.hello->role = CINDER__ROLE__ROLE_UNSPECIFIED;
    expect_refused(&env, NULL, FMT, "hello.role", "hello without a role");

    /* Steps. */
    build_step(&env);
    env.step->seqs[1]->n_tokens = 2;
    expect_refused(&env, NULL, FMT, "step.tokens", "step whose counts do not add up");
    build_step(&env);
    env.step->n_tokens = 3;
    expect_refused(&env, NULL, FMT, "step.tokens", "step with a token missing");
    build_step(&env);
    env.step->seqs[1]->n_tokens = 0;
    expect_refused(&env, NULL, ARG, "step.seqs[1].n_tokens", "sequence without tokens");
    build_step(&env);
    env.step->seqs[0]->pos = -1;
    expect_refused(&env, NULL, ARG, "step.seqs[0].pos", "negative position");
    build_step(&env);
    env.step->seqs[0]->block_table[1] = -1;
    expect_refused(&env, NULL, ARG, "step.seqs[0].block_table[1]", "negative block");
    build_step(&env);
    proto_limits pool = {.kv_blocks = 6};
    expect_refused(&env, &pool, ARG, "step.free_blocks[0]", "block outside a pool of 6");
    pool.kv_blocks = 7;
    expect_accepted(&env, &pool, "every block inside a pool of 7");
    build_step(&env);
    env.step->seqs[0]->block_table_from = 0;
    env.step->seqs[0]->n_block_table = 0;
    expect_refused(&env, NULL, FMT, "step.seqs[0].block_table", "empty whole block table");
    build_step(&env);
    env.step->seqs[1]->seq_id = 7;
    expect_refused(&env, NULL, ARG, "step.seqs", "a sequence twice in a step");
    build_step(&env);
    env.step->release_seqs[0] = 9;
    expect_refused(&env, NULL, ARG, "step.release_seqs[0]", "a stepped sequence released");
    build_step(&env);
    env.step->seqs[0]->n_history = 3;
    expect_refused(&env, NULL, FMT, "step.seqs[0].history", "history of the wrong length");
    build_step(&env);
    env.step->seqs[1]->n_history = 0;
    expect_accepted(&env, NULL, "no history (the worker holds it)");
    build_step(&env);
    env.step->tokens[2] = -7;
    expect_refused(&env, NULL, ARG, "step.tokens[2]", "negative token in a step");
    build_step(&env);
    env.step->seqs[1]->sampling->top_p = 0;
    expect_refused(&env, NULL, ARG, "step.seqs[1].sampling.top_p", "step sampling top_p 0");
    build_step(&env);
    env.step->copies[0]->dst = 4;
    expect_refused(&env, NULL, ARG, "step.copies[0]", "a block copied onto itself");

    /* Results and replies. */
    build_step_result(&env);
    env.step_result->seqs[0]->logprobs[0] = 0.5f;
    expect_refused(&env, NULL, ARG, "step_result.seqs[0].logprobs[0]", "positive logprob");
    build_step_result(&env);
    env.step_result->seqs[0]->logprobs[0] = NAN;
    expect_refused(&env, NULL, ARG, "logprobs", "NaN logprob");
    build_chunk(&env);
    env.generate_chunk->n_logprobs = 1;
    expect_refused(&env, NULL, FMT, "generate_chunk.logprobs", "logprobs for half the tokens");
    build_done(&env);
    env.generate_done->finish_reason = CINDER__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
    expect_refused(&env, NULL, FMT, "generate_done.finish_reason", "done without a reason");
    build_done(&env);
    env.generate_done->usage->cached_prompt_tokens = 13;
    expect_refused(&env, NULL, ARG, "generate_done.usage.cached_prompt_tokens",
                   "more cached tokens than prompt tokens");
    build_error(&env);
    env.error->code = CINDER__ERROR_CODE__ERROR_CODE_UNSPECIFIED;
    expect_refused(&env, NULL, FMT, "error.code", "error without a code");
    build_cancel(&env);
    env.cancel->request_id = "";
    expect_refused(&env, NULL, ARG, "cancel.request_id", "cancel without an id");
    build_status_reply(&env);
    env.status_reply->output_tokens_per_s = NAN;
    expect_refused(&env, NULL, ARG, "status_reply.output_tokens_per_s", "NaN throughput");
    build_status_reply(&env);
    env.status_reply->groups[0]->ranks[0]->rank = -1;
    expect_refused(&env, NULL, ARG, "status_reply.groups[0].ranks[0].rank", "negative rank");
    build_models_reply(&env);
    env.models_reply->models[0]->eos_token_ids[0] = 49152;
    expect_refused(&env, NULL, ARG, "models_reply.models[0].eos_token_ids[0]",
                   "eos id outside the model's vocabulary");

    /* Control. */
    build_register(&env);
    env.register_rank->rank = 2;
    expect_refused(&env, NULL, ARG, "register_rank.rank", "rank >= world_size");
    build_register(&env);
    env.register_rank->world_size = 0;
    expect_refused(&env, NULL, ARG, "register_rank.world_size", "world_size 0");
    build_register(&env);
    env.register_rank->host = "";
    expect_refused(&env, NULL, ARG, "register_rank.host", "register without a host");
    build_shard_plan(&env);
    env.shard_plan->tp_rank = 2;
    expect_refused(&env, NULL, ARG, "shard_plan.tp_rank", "tp_rank >= tp_size");
    build_shard_plan(&env);
    env.shard_plan->q_heads->count = -1;
    expect_refused(&env, NULL, ARG, "shard_plan.q_heads", "negative head count");
    build_shard_plan(&env);
    env.shard_plan->block_size = 0;
    expect_refused(&env, NULL, ARG, "shard_plan.block_size", "block_size 0");
    build_shard_plan(&env);
    env.shard_plan->kv_blocks = 0;
    env.shard_plan->kv_mem_bytes = 0;
    expect_refused(&env, NULL, ARG, "kv_blocks", "no KV pool size");
    /* A KV type this side does not know (a newer coordinator's): refused by name, so the
     * worker's refusal tells the coordinator what it could not follow. */
    build_shard_plan(&env);
    env.shard_plan->kv_type = (Cinder__KvType)9;
    expect_refused(&env, NULL, FMT, "shard_plan.kv_type", "unknown KV type");
    build_ready(&env);
    env.ready->kv_type = (Cinder__KvType)-1;
    expect_refused(&env, NULL, FMT, "ready.kv_type", "negative KV type");
    build_ready(&env);
    env.ready->kv_blocks = 0;
    expect_refused(&env, NULL, ARG, "ready.kv_blocks", "ready without blocks");
    build_heartbeat(&env);
    env.heartbeat->group = -2;
    expect_refused(&env, NULL, ARG, "heartbeat.group", "negative group");
    build_migrate(&env);
    env.migrate_blocks->n_block_data = 1;
    expect_refused(&env, NULL, FMT, "migrate_blocks.block_data", "data for one of two blocks");
    build_migrate(&env);
    env.migrate_blocks->block_data[1].len = 7;
    expect_refused(&env, NULL, FMT, "migrate_blocks.block_data[1]", "blocks of two sizes");
    build_migrate(&env);
    env.migrate_blocks->op = CINDER__MIGRATE_OP__MIGRATE_OP_EXPORT;
    expect_refused(&env, NULL, FMT, "migrate_blocks.block_data", "export carrying data");
    env.migrate_blocks->n_block_data = 0;
    expect_accepted(&env, NULL, "export");

    /* A body set but NULL (only a message built in memory can be like that). */
    Cinder__Envelope hollow = CINDER__ENVELOPE__INIT;
    hollow.body_case = CINDER__ENVELOPE__BODY_STEP;
    cinder_error err = {0};
    CHECK(proto_validate(&hollow, NULL, &err) == FMT && test_contains(err.msg, "step"));
}

/* Frames written byte by byte: what no encoder here would produce. */
static void test_refusals_raw(void) {
    /* generate_done (field 12) {request_id "r1", finish_reason 99}. */
    const uint8_t unknown_reason[] = {0x62, 0x06, 0x0a, 0x02, 'r', '1', 0x10, 0x63};
    expect_frame_refused(unknown_reason, sizeof unknown_reason, NULL, CINDER_ERR_FORMAT,
                         "generate_done.finish_reason", "unknown finish reason");
    /* error (field 2) {code -1}: a negative enum value is ten bytes of varint. */
    const uint8_t negative_code[] = {0x12, 0x0b, 0x10, 0xff, 0xff, 0xff, 0xff,
                                     0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    expect_frame_refused(negative_code, sizeof negative_code, NULL, CINDER_ERR_FORMAT, "error.code",
                         "negative error code");
    /* hello (field 1) {major 1, role 7}. */
    const uint8_t unknown_role[] = {0x0a, 0x04, 0x08, 0x01, 0x18, 0x07};
    expect_frame_refused(unknown_role, sizeof unknown_role, NULL, CINDER_ERR_FORMAT, "hello.role",
                         "unknown role");
    /* hello {major 2}: the version is checked before anything else. */
    const uint8_t major2[] = {0x0a, 0x02, 0x08, 0x02};
    expect_frame_refused(major2, sizeof major2, NULL, CINDER_ERR_UNSUPPORTED, "hello.major",
                         "raw major 2");
    /* Nothing at all, and only an unknown varint field: no body. */
    expect_frame_refused(NULL, 0, NULL, CINDER_ERR_FORMAT, "no body", "empty frame");
    /* Field 200, length 0: a body type from a newer protocol. */
    const uint8_t future_body[] = {0xc2, 0x0c, 0x00};
    expect_frame_refused(future_body, sizeof future_body, NULL, CINDER_ERR_UNSUPPORTED, "field 200",
                         "unknown body type");
    /* status_request, then field 0 with its tag in two bytes (protobuf-c lets it through). */
    const uint8_t field0[] = {0x72, 0x00, 0x82, 0x00, 0x00};
    expect_frame_refused(field0, sizeof field0, NULL, CINDER_ERR_FORMAT, "field numbered 0",
                         "field number 0");
    const uint8_t garbage[] = {0xff, 0xff, 0xff};
    expect_frame_refused(garbage, sizeof garbage, NULL, CINDER_ERR_FORMAT, "Envelope", "garbage");
    /* cancel (field 13) {request_id "r" + 0xff}. */
    const uint8_t bad_utf8[] = {0x6a, 0x04, 0x0a, 0x02, 'r', 0xff};
    expect_frame_refused(bad_utf8, sizeof bad_utf8, NULL, CINDER_ERR_FORMAT, "cancel.request_id",
                         "request id not UTF-8");
    /* A frame over the receiver's bound is refused before unpacking. */
    proto_limits tiny = {.max_frame_bytes = 4};
    expect_frame_refused(unknown_reason, sizeof unknown_reason, &tiny, CINDER_ERR_RANGE, "frame",
                         "frame over the bound");

    /* Unknown fields inside a known message, and beside the body, are skipped (a newer minor). */
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    build_request_text(&env);
    size_t inner = cinder__generate_request__get_packed_size(env.generate_request);
    uint8_t *frame = malloc(inner + 16);
    size_t n = 0;
    frame[n++] = 0x52; /* field 10, length-delimited */
    size_t body_len = inner + 3;
    CHECK(body_len < 128 * 128);
    frame[n++] = (uint8_t)(0x80 | (body_len & 0x7f));
    frame[n++] = (uint8_t)(body_len >> 7);
    n += cinder__generate_request__pack(env.generate_request, frame + n);
    frame[n++] = 0x98, frame[n++] = 0x06, frame[n++] = 0x01; /* field 99 = 1 in the request */
    frame[n++] = 0x98, frame[n++] = 0x06, frame[n++] = 0x05; /* field 99 = 5 in the envelope */
    Cinder__Envelope *out = NULL;
    cinder_error err = {0};
    CHECK_MSG(proto_decode(frame, n, NULL, &out, &err) == CINDER_OK, "unknown fields: %s", err.msg);
    CHECK(out && out->generate_request && out->generate_request->max_tokens == 64);
    proto_envelope_free(out);
    free(frame);
}

static void test_error_replies(void) {
    Cinder__Envelope env = CINDER__ENVELOPE__INIT;
    cinder_error err = {0};
    Cinder__Envelope *out = NULL;

    /* A refused request gets an Error with its request id and a message naming the field. */
    build_request_text(&env);
    env.generate_request->request_id = "req-42";
    env.generate_request->sampling->temperature = -2;
    size_t len;
    uint8_t *buf = pack_raw(&env, &len);
    CHECK(proto_decode(buf, len, NULL, &out, &err) == CINDER_ERR_ARG && !out);
    Cinder__Envelope *reply = proto_refusal_reply(buf, len, NULL, &err);
    CHECK(reply && reply->body_case == CINDER__ENVELOPE__BODY_ERROR);
    if (reply) {
        CHECK_STR_EQ(reply->error->request_id, "req-42");
        CHECK_EQ_INT(reply->error->code, CINDER__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT);
        CHECK(test_contains(reply->error->message, "temperature"));
        uint8_t *enc = NULL;
        size_t n;
        CHECK(proto_encode_alloc(reply, &enc, &n, &err) == CINDER_OK);
        free(enc);
    }
    proto_envelope_free(reply);
    free(buf);

    /* A request id that is itself bad is not echoed. */
    build_request_text(&env);
    env.generate_request->request_id = "bad\xff";
    buf = pack_raw(&env, &len);
    CHECK(proto_decode(buf, len, NULL, &out, &err) == CINDER_ERR_FORMAT);
    reply = proto_refusal_reply(buf, len, NULL, &err);
    CHECK(reply && reply->error->request_id[0] == '\0' &&
          reply->error->code == CINDER__ERROR_CODE__ERROR_CODE_MALFORMED);
    proto_envelope_free(reply);
    free(buf);

    /* Garbage and a wrong major. */
    const uint8_t garbage[] = {0xff, 0xff};
    CHECK(proto_decode(garbage, sizeof garbage, NULL, &out, &err) == CINDER_ERR_FORMAT);
    reply = proto_refusal_reply(garbage, sizeof garbage, NULL, &err);
    CHECK(reply && reply->error->request_id[0] == '\0');
    proto_envelope_free(reply);
    const uint8_t major2[] = {0x0a, 0x02, 0x08, 0x02};
    CHECK(proto_decode(major2, sizeof major2, NULL, &out, &err) == CINDER_ERR_UNSUPPORTED);
    reply = proto_refusal_reply(major2, sizeof major2, NULL, &err);
    CHECK(reply && reply->error->code == CINDER__ERROR_CODE__ERROR_CODE_UNSUPPORTED);
    proto_envelope_free(reply);

    /* proto_error_reply cuts and cleans what it is given, so the Error always encodes. */
    char longmsg[PROTO_MAX_MESSAGE_BYTES + 100];
    memset(longmsg, 'm', sizeof longmsg - 1);
    longmsg[sizeof longmsg - 1] = '\0';
    reply = proto_error_reply("id\xc3", CINDER__ERROR_CODE__ERROR_CODE_BUSY, "bad \xff byte %s",
                              longmsg);
    CHECK(reply != NULL);
    if (reply) {
        CHECK_STR_EQ(reply->error->request_id, "id?");
        CHECK(strncmp(reply->error->message, "bad ? byte mmm", 14) == 0);
        CHECK_EQ_INT(strlen(reply->error->message), PROTO_MAX_MESSAGE_BYTES);
        uint8_t *enc = NULL;
        size_t n;
        CHECK(proto_encode_alloc(reply, &enc, &n, &err) == CINDER_OK);
        free(enc);
    }
    proto_envelope_free(reply);
    reply = proto_error_reply(NULL, CINDER__ERROR_CODE__ERROR_CODE_INTERNAL, "x");
    CHECK(reply && reply->error->request_id[0] == '\0');
    proto_envelope_free(reply);
    proto_envelope_free(NULL);

    CHECK_EQ_INT(proto_error_code(CINDER_ERR_FORMAT), CINDER__ERROR_CODE__ERROR_CODE_MALFORMED);
    CHECK_EQ_INT(proto_error_code(CINDER_ERR_RANGE), CINDER__ERROR_CODE__ERROR_CODE_TOO_LARGE);
    CHECK_EQ_INT(proto_error_code(CINDER_ERR_NOMEM), CINDER__ERROR_CODE__ERROR_CODE_INTERNAL);
}

/* ------------------------------------------------------------------------------------------ */
/* Fuzzing */

static uint64_t fuzz_state = 0x9e3779b97f4a7c15u;

/* A 64-bit LCG (Knuth's MMIX constants), high bits mixed down. */
static uint64_t fuzz_rand(void) {
    fuzz_state = fuzz_state * 6364136223846793005u + 1442695040888963407u;
    return fuzz_state ^ (fuzz_state >> 29);
}

static size_t fuzz_below(size_t n) {
    return n ? (size_t)((fuzz_rand() >> 11) % n) : 0;
}

static long fuzz_accepted, fuzz_refused;

/* Decodes frame [len] from a buffer of exactly that size. A refusal must say why; an accepted
 * message must pass validation again and encode, and its encoding must decode. */
static void fuzz_one(const uint8_t *frame, size_t len, const proto_limits *lim, const char *what) {
    uint8_t *buf = frame_copy(frame, len);
    Cinder__Envelope *env = NULL;
    cinder_error err = {0};
    cinder_status st = proto_decode(buf, len, lim, &env, &err);
    if (st != CINDER_OK) {
        fuzz_refused++;
        CHECK_MSG(env == NULL && err.msg[0], "%s: refusal without a message", what);
        free(buf);
        return;
    }
    fuzz_accepted++;
    CHECK_MSG(proto_validate(env, lim, &err) == CINDER_OK, "%s: %s", what, err.msg);
    uint8_t *enc = NULL;
    size_t n = 0;
    if (proto_encode_alloc(env, &enc, &n, &err) != CINDER_OK) {
        CHECK_MSG(0, "%s: an accepted message does not encode: %s", what, err.msg);
    } else {
        Cinder__Envelope *again = NULL;
        CHECK_MSG(proto_decode(enc, n, lim, &again, &err) == CINDER_OK, "%s: re-decode: %s", what,
                  err.msg);
        proto_envelope_free(again);
    }
    free(enc);
    proto_envelope_free(env);
    free(buf);
}

/* One random change to frame [*len] (capacity cap). */
static void fuzz_mutate(uint8_t *frame, size_t *len, size_t cap) {
    size_t n = *len;
    switch (fuzz_below(7)) {
        case 0: /* flip a bit */
            if (n) frame[fuzz_below(n)] ^= (uint8_t)(1u << fuzz_below(8));
            break;
        case 1: /* a random byte */
            if (n) frame[fuzz_below(n)] = (uint8_t)fuzz_rand();
            break;
        case 2: { /* an interesting byte: varint continuation, max, zero, small */
            static const uint8_t hot[] = {0x80, 0xff, 0x00, 0x01, 0x7f, 0x0a, 0x12};
            if (n) frame[fuzz_below(n)] = hot[fuzz_below(sizeof hot)];
            break;
        }
        case 3: { /* a long varint (a huge length or count) */
            if (n < 2) break;
            size_t at = fuzz_below(n - 1), k = 1 + fuzz_below(9);
            for (size_t i = 0; i < k && at + i < n; i++) frame[at + i] = 0xff;
            if (at + k < n) frame[at + k] = (uint8_t)(fuzz_below(2) ? 0x01 : 0x7f);
            break;
        }
        case 4: { /* delete a run */
            if (!n) break;
            size_t at = fuzz_below(n), k = 1 + fuzz_below(n - at < 8 ? n - at : 8);
            memmove(frame + at, frame + at + k, n - at - k);
            *len = n - k;
            break;
        }
        case 5: { /* insert random bytes */
            size_t k = 1 + fuzz_below(4);
            if (n + k > cap) break;
            size_t at = fuzz_below(n + 1);
            memmove(frame + at + k, frame + at, n - at);
            for (size_t i = 0; i < k; i++) frame[at + i] = (uint8_t)fuzz_rand();
            *len = n + k;
            break;
        }
        default: { /* repeat a slice (fields given twice, oneof members replaced) */
            if (!n) break;
            size_t at = fuzz_below(n), k = 1 + fuzz_below(n - at);
            if (n + k > cap) break;
            memmove(frame + at + k, frame + at, n - at);
            *len = n + k;
            break;
        }
    }
}

static void test_fuzz(void) {
    proto_limits lims[2] = {{0}, {.vocab_size = 120, .kv_blocks = 10}};
    long truncations = 0, mutations = 0;
    for (int s = 0; s < N_SAMPLES; s++) {
        Cinder__Envelope env = sample(s);
        uint8_t *orig = NULL;
        size_t n = 0;
        cinder_error err = {0};
        CHECK_MSG(proto_encode_alloc(&env, &orig, &n, &err) == CINDER_OK, "%s: %s", samples[s].name,
                  err.msg);
        if (!orig) continue;
        /* Every truncation. */
        for (size_t len = 0; len < n; len++, truncations++)
            fuzz_one(orig, len, &lims[len & 1], samples[s].name);
        /* Seeded mutations, one to four changes each, of a frame with room to grow. */
        size_t cap = 2 * n + 16;
        uint8_t *frame = malloc(cap);
        for (int i = 0; i < FUZZ_MUTATIONS_PER_SAMPLE; i++, mutations++) {
            memcpy(frame, orig, n);
            size_t len = n;
            for (size_t k = 1 + fuzz_below(4); k > 0; k--) fuzz_mutate(frame, &len, cap);
            fuzz_one(frame, len, &lims[i & 1], samples[s].name);
        }
        free(frame);
        free(orig);
    }
    /* Random frames of random bytes. */
    uint8_t junk[64];
    long randoms = 0;
    for (int i = 0; i < 20000; i++, randoms++) {
        size_t len = fuzz_below(sizeof junk + 1);
        for (size_t k = 0; k < len; k++) junk[k] = (uint8_t)fuzz_rand();
        fuzz_one(junk, len, NULL, "random bytes");
    }
    printf("fuzz: %ld truncations, %ld mutations, %ld random frames: %ld accepted, %ld refused\n",
           truncations, mutations, randoms, fuzz_accepted, fuzz_refused);
    CHECK(fuzz_accepted > 0 && fuzz_refused > 0);
}

/* The wire's KV types and the engine's dtypes map one to one; nothing else maps. */
static void test_kv_types(void) {
    const Cinder__KvType wire[] = {CINDER__KV_TYPE__KV_TYPE_F32, CINDER__KV_TYPE__KV_TYPE_F16,
                                   CINDER__KV_TYPE__KV_TYPE_BF16};
    const dtype types[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16};
    for (int i = 0; i < 3; i++) {
        dtype d = DTYPE_COUNT;
        Cinder__KvType w = (Cinder__KvType)-1;
        CHECK(proto_kv_type_to_dtype(wire[i], &d) && d == types[i]);
        CHECK(proto_kv_type_from_dtype(types[i], &w) && w == wire[i]);
    }
    dtype d = DTYPE_COUNT;
    Cinder__KvType w = CINDER__KV_TYPE__KV_TYPE_F16;
    CHECK(!proto_kv_type_to_dtype((Cinder__KvType)9, &d) && d == DTYPE_COUNT);
    CHECK(!proto_kv_type_from_dtype(DTYPE_Q8_0, &w) && w == CINDER__KV_TYPE__KV_TYPE_F16);
    /* Absent (a peer before 1.3) reads as F32. */
    Cinder__ShardPlan p = CINDER__SHARD_PLAN__INIT;
    CHECK(p.kv_type == CINDER__KV_TYPE__KV_TYPE_F32);
}

int main(void) {
    test_kv_types();
    test_round_trips();
    test_round_trip_values();
    test_refusals_request();
    test_refusals_other();
    test_refusals_raw();
    test_error_replies();
    test_fuzz();
    return test_summary("test_proto");
}
