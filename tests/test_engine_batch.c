/* test_engine_batch.c - what serving relies on: a flattened batch of sequences gives each the
 * logits it gets alone; a prompt fed in chunks gives the logits of one piece; block sizes 1, 16
 * and 32 agree; blocks scattered through the pool give what contiguous ones give; the KV pool
 * is poisoned with NaN so a read of an unwritten slot shows; bad plans are refused by name.
 *
 * Models: the tiny F32 HF model of the golden test and a generated Q4_1 GGUF (the quantized
 * kernels, the interleaved RoPE layout); the tiny model also with an F16 and a BF16 KV cache. */
#include <string.h>
#include <unistd.h>

#include "engine_test_util.h"
#include "log.h"
#include "model.h"
#include "model_write.h"

static uint64_t rng_state = 12345;
static int32_t rnd(int32_t n) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((rng_state >> 33) % (uint64_t)n);
}

/* The KV cache type of the engines made (F32 but for the 16-bit passes). */
static dtype kv_type = DTYPE_F32;

static engine *make_engine_f32(const model *m, int block_size, bool f32) {
    engine_options o = engine_options_default();
    o.f32_weights = f32;
    o.kv_type = kv_type;
    o.n_threads = 2;
    o.block_size = block_size;
    o.kv_blocks = 4096 / block_size + 64;
    cinder_error err = {0};
    engine *e = engine_create(m, &o, &err);
    CHECK_MSG(e != NULL, "engine_create: %s", err.msg);
    if (!e) return NULL;
    /* Poison: any slot read before it is written turns the logits into NaN. */
    kv_cache *kv = engine_kv(e);
    size_t n = (size_t)kv->n_layers * kv->n_blocks * kv->n_kv_heads * kv->block_size * kv->head_dim;
    if (kv->type == DTYPE_F32) {
        for (size_t i = 0; i < n; i++) kv->k[i] = kv->v[i] = NAN;
    } else {
        uint16_t nan16 = kv->type == DTYPE_F16 ? 0x7e00 : 0x7fc0;
        uint16_t *k16 = (uint16_t *)kv->k, *v16 = (uint16_t *)kv->v;
        for (size_t i = 0; i < n; i++) k16[i] = v16[i] = nan16;
    }
    return e;
}

static engine *make_engine(const model *m, int block_size) {
    return make_engine_f32(m, block_size, false);
}

/* Largest relative error of rows [0, n) of a against b. */
static double rows_err(const float *a, const float *b, int n, int vocab) {
    double worst = 0;
    for (int r = 0; r < n; r++) {
        double e = etu_rel_err(a + (size_t)r * vocab, b + (size_t)r * vocab, vocab);
        if (e > worst || isnan(e)) worst = e;
    }
    return worst;
}

static void test_batch(const model *m, const char *name) {
    enum { S = 8 };
    static const int lens[S] = {1, 3, 5, 8, 13, 17, 29, 40};
    int vocab = m->config.vocab_size, total = 0;
    int32_t *tok[S];
    for (int i = 0; i < S; i++) {
        tok[i] = malloc(41 * sizeof(int32_t));
        for (int t = 0; t < 41; t++) tok[i][t] = rnd(vocab);
        total += lens[i];
    }
    float *alone = malloc((size_t)(total + S) * vocab * sizeof(float));
    float *batch = malloc((size_t)(total + S) * vocab * sizeof(float));
    engine *e = make_engine(m, 16);
    if (!e) goto out;
    /* Each alone: its prompt (every row), then one decode token. */
    int row = 0;
    for (int i = 0; i < S; i++) {
        etu_seq s = {0};
        etu_feed(e, &s, tok[i], lens[i], true, alone + (size_t)row * vocab);
        row += lens[i];
        etu_seq_free(e, &s);
    }
    int decode_row = row;
    for (int i = 0; i < S; i++) {
        etu_seq s = {0};
        float *tmp = malloc((size_t)lens[i] * vocab * sizeof(float));
        etu_feed(e, &s, tok[i], lens[i], true, tmp);
        etu_feed(e, &s, tok[i] + lens[i], 1, false, alone + (size_t)(decode_row + i) * vocab);
        etu_seq_free(e, &s);
        free(tmp);
    }
    /* All together: one prefill step, then one decode step of all eight. */
    kv_seq kv[S] = {{0}};
    engine_seq q[S];
    cinder_error err = {0};
    for (int i = 0; i < S; i++) {
        CHECK(kv_seq_reserve(engine_kv(e), &kv[i], lens[i] + 1, &err) == CINDER_OK);
        q[i] = (engine_seq){tok[i], lens[i], 0, kv[i].blocks, kv[i].n_blocks, true};
    }
    CHECK_EQ_INT(engine_logit_rows(q, S), total);
    CHECK_MSG(engine_step(e, q, S, batch, &err) == CINDER_OK, "%s", err.msg);
    for (int i = 0; i < S; i++) q[i] = (engine_seq){tok[i] + lens[i], 1, lens[i], kv[i].blocks,
                                                    kv[i].n_blocks, false};
    CHECK_MSG(engine_step(e, q, S, batch + (size_t)decode_row * vocab, &err) == CINDER_OK, "%s",
              err.msg);
    /* Greedy on the backend: both steps again (they rewrite the same K and V), each row's
     * argmax alone coming back, equal to the argmax of its logits. */
    int32_t *ids = malloc((size_t)total * sizeof *ids);
    float *scratch = malloc((size_t)total * vocab * sizeof(float));
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < S; i++) {
            engine_seq prefill = {tok[i], lens[i], 0, kv[i].blocks, kv[i].n_blocks, true};
            engine_seq decode = {tok[i] + lens[i], 1, lens[i], kv[i].blocks, kv[i].n_blocks, false};
            q[i] = pass == 0 ? prefill : decode;
        }
        int n_rows = engine_logit_rows(q, S), same = 0;
        const float *want = batch + (pass == 0 ? 0 : (size_t)decode_row * vocab);
        CHECK_MSG(engine_step_argmax(e, q, S, scratch, ids, &err) == CINDER_OK, "%s", err.msg);
        for (int r = 0; r < n_rows; r++)
            same += ids[r] == etu_argmax(want + (size_t)r * vocab, vocab);
        CHECK_MSG(same == n_rows, "%s: engine_step_argmax agrees on %d of %d rows", name, same,
                  n_rows);
    }
    free(ids);
    free(scratch);
    double prefill = rows_err(batch, alone, total, vocab);
    double decode = rows_err(batch + (size_t)decode_row * vocab,
                             alone + (size_t)decode_row * vocab, S, vocab);
    printf("%s: batch of %d vs alone: prefill %.2e, decode %.2e\n", name, S, prefill, decode);
    CHECK_MSG(prefill <= 1e-6 && decode <= 1e-6, "%s: batched logits differ (%.3g, %.3g)", name,
              prefill, decode);
    for (int i = 0; i < S; i++) kv_seq_free(engine_kv(e), &kv[i]);
    CHECK_EQ_INT(engine_kv(e)->n_free, engine_kv(e)->n_blocks);
out:
    engine_free(e);
    for (int i = 0; i < S; i++) free(tok[i]);
    free(alone);
    free(batch);
}

/* A prompt in chunks equals the prompt in one piece, at every position. */
static void test_chunks(const model *m, const char *name) {
    enum { N = 60 };
    int vocab = m->config.vocab_size;
    int32_t tok[N];
    for (int t = 0; t < N; t++) tok[t] = rnd(vocab);
    float *one = malloc((size_t)N * vocab * sizeof(float));
    float *chunked = malloc((size_t)N * vocab * sizeof(float));
    engine *e = make_engine(m, 16);
    if (e) {
        etu_seq s = {0};
        etu_feed(e, &s, tok, N, true, one);
        etu_seq_free(e, &s);
        static const int cuts[] = {0, 7, 23, 60};
        for (int c = 0; c < 3; c++)
            etu_feed(e, &s, tok + cuts[c], cuts[c + 1] - cuts[c], true,
                     chunked + (size_t)cuts[c] * vocab);
        etu_seq_free(e, &s);
        double err = rows_err(chunked, one, N, vocab);
        printf("%s: chunked prefill (7 + 16 + 37) vs one piece: %.2e\n", name, err);
        CHECK_MSG(err <= 1e-6, "%s: chunked prefill differs by %.3g", name, err);
    }
    engine_free(e);
    free(one);
    free(chunked);
}

/* Prompt then decode steps; logits of every step into out [steps + 1, vocab]. */
static void run_sequence(engine *e, const int32_t *tok, int n_prompt, int steps,
                         const int32_t *table, float *out) {
    int vocab = engine_config(e)->vocab_size, bs = engine_kv(e)->block_size;
    cinder_error err = {0};
    int32_t n_blocks = (n_prompt + steps + bs - 1) / bs;
    engine_seq q = {tok, n_prompt, 0, table, n_blocks, false};
    CHECK_MSG(engine_step(e, &q, 1, out, &err) == CINDER_OK, "%s", err.msg);
    for (int i = 0; i < steps; i++) {
        q = (engine_seq){tok + n_prompt + i, 1, n_prompt + i, table, n_blocks, false};
        CHECK_MSG(engine_step(e, &q, 1, out + (size_t)(i + 1) * vocab, &err) == CINDER_OK, "%s",
                  err.msg);
    }
}

static void test_blocks(const model *m, const char *name) {
    enum { N = 45, STEPS = 6 };
    int vocab = m->config.vocab_size;
    int32_t tok[N + STEPS];
    for (int t = 0; t < N + STEPS; t++) tok[t] = rnd(vocab);
    float *ref = malloc((size_t)(STEPS + 1) * vocab * sizeof(float));
    float *got = malloc((size_t)(STEPS + 1) * vocab * sizeof(float));
    static const int sizes[] = {16, 1, 32};
    for (int k = 0; k < 3; k++) {
        /* F32 weights: another block size changes the attention's summation order by float
         * rounding, which the 16-bit activations of quantized weights may amplify to 1e-4;
         * what is checked here is the paged attention, not the quantization. */
        engine *e = make_engine_f32(m, sizes[k], true);
        if (!e) continue;
        kv_cache *kv = engine_kv(e);
        int32_t n_blocks = (N + STEPS + sizes[k] - 1) / sizes[k];
        int32_t *table = malloc((size_t)kv->n_blocks * sizeof *table);
        /* Contiguous blocks 0, 1, 2, ... */
        CHECK(kv_cache_alloc(kv, kv->n_blocks, table, NULL) == CINDER_OK);
        run_sequence(e, tok, N, STEPS, table, k == 0 ? ref : got);
        if (k > 0) {
            double err = rows_err(got, ref, STEPS + 1, vocab);
            printf("%s: block size %d vs 16: %.2e\n", name, sizes[k], err);
            CHECK_MSG(err <= 1e-5, "%s: block size %d differs by %.3g", name, sizes[k], err);
        } else {
            /* The same blocks shuffled through the pool: the same arithmetic, bit for bit. */
            for (int32_t i = kv->n_blocks - 1; i > 0; i--) {
                int32_t j = rnd(i + 1), t = table[i];
                table[i] = table[j];
                table[j] = t;
            }
            CHECK(table[0] != 0 || table[1] != 1); /* really scattered */
            run_sequence(e, tok, N, STEPS, table, got);
            CHECK_MSG(memcmp(got, ref, (size_t)(STEPS + 1) * vocab * sizeof(float)) == 0,
                      "%s: scattered blocks change the logits (%.3g)", name,
                      rows_err(got, ref, STEPS + 1, vocab));
            (void)n_blocks;
        }
        kv_cache_release(kv, table, kv->n_blocks);
        free(table);
        engine_free(e);
    }
    free(ref);
    free(got);
}

/* A plan that does not fit is refused, naming what is wrong, and nothing runs. */
static void test_bad_plans(const model *m) {
    engine *e = make_engine(m, 16);
    if (!e) return;
    int vocab = m->config.vocab_size, ctx = m->config.context_len;
    int32_t tok[4] = {1, 2, 3, 4}, bad_tok[1] = {vocab}, table[2] = {0, 1}, far[1] = {1 << 30};
    float *logits = malloc((size_t)4 * vocab * sizeof(float));
    struct {
        engine_seq q;
        const char *expect;
    } cases[] = {
        {{bad_tok, 1, 0, table, 2, false}, "token 0 is id"},
        {{tok, 4, ctx - 2, table, 2, false}, "outside the context"},
        {{tok, 4, 30, table, 2, false}, "blocks cover"},
        {{tok, 4, 0, far, 1, false}, "block table entry 0 is block"},
        {{tok, 0, 0, table, 2, false}, "0 new tokens"},
        {{tok, 4, -1, table, 2, false}, "outside the context"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cinder_error err = {0};
        CHECK_EQ_INT(engine_step(e, &cases[i].q, 1, logits, &err), CINDER_ERR_ARG);
        CHECK_MSG(test_contains(err.msg, cases[i].expect), "case %zu: '%s'", i, err.msg);
    }
    cinder_error err = {0};
    CHECK_EQ_INT(engine_step(e, cases[0].q.tokens ? &cases[0].q : NULL, 0, logits, &err),
                 CINDER_ERR_ARG);
    engine_free(e);
    free(logits);
}

static void run_all(const model *m, const char *name) {
    test_batch(m, name);
    test_chunks(m, name);
    test_blocks(m, name);
}

int main(void) {
    log_init_from_env();
    cinder_error err = {0};
    model *m = model_open(CINDER_TEST_DATA "/models/tiny-gqa-f32", &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        run_all(m, "tiny-gqa-f32");
        kv_type = DTYPE_F16;
        run_all(m, "tiny-gqa-f32, F16 KV");
        kv_type = DTYPE_BF16;
        run_all(m, "tiny-gqa-f32, BF16 KV");
        kv_type = DTYPE_F32;
        test_bad_plans(m);
    }
    model_free(m);

    /* A generated Q4_1 GGUF: d 128, GQA 8:2, head dim 16. */
    char path[64];
    snprintf(path, sizeof path, "/tmp/cinder_test_batch_%d.gguf", (int)getpid());
    model_write_options o = {0};
    o.cfg = (model_config){.arch = MODEL_ARCH_LLAMA, .n_layers = 2, .d_model = 128, .n_heads = 8,
                           .n_kv_heads = 2, .d_ff = 256, .vocab_size = 320, .context_len = 512};
    o.type = DTYPE_Q4_1;
    o.embed_type = DTYPE_Q8_0;
    o.format = MODEL_FORMAT_GGUF;
    o.seed = 7;
    o.init_std = 0.08f;
    CHECK_MSG(model_write_random(&o, path, &err) == CINDER_OK, "%s", err.msg);
    m = model_open(path, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) run_all(m, "generated-q4_1");
    model_free(m);
    unlink(path);
    return test_summary("test_engine_batch");
}
