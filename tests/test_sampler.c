/* test_sampler.c - seeded sampling repeats, filters keep to their sets, greedy is argmax. */
#include <math.h>
#include <stdlib.h>

#include "sampler.h"
#include "test.h"

#define V 1000

/* Logits whose softmax is probs[i] for the first n ids and ~1e-9 for the rest. */
static void make_logits(float *logits, const double *probs, int n) {
    for (int i = 0; i < V; i++) logits[i] = (float)log(i < n ? probs[i] : 1e-9);
}

static const double P[] = {0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.02};
#define NP 7

/* Draws many tokens with p and checks each lies in allowed[0..n_allowed); returns counts. */
static void draw_within(sampler *s, sampler_params p, const int32_t *allowed, int n_allowed,
                        int *counts, int draws, const char *what) {
    sampler_rng rng;
    sampler_rng_seed(&rng, p.seed);
    float logits[V];
    int outside = 0;
    for (int d = 0; d < draws; d++) {
        make_logits(logits, P, NP);
        int32_t t = sampler_sample(s, &p, &rng, logits, NULL, 0);
        int ok = 0;
        for (int i = 0; i < n_allowed; i++) ok |= t == allowed[i];
        outside += !ok;
        if (t >= 0 && t < V && counts) counts[t]++;
    }
    CHECK_MSG(outside == 0, "%s: %d of %d draws outside the set", what, outside, draws);
}

static void test_filters(sampler *s) {
    sampler_params p = sampler_params_default();
    p.temperature = 1;
    p.seed = 7;
    int counts[V] = {0};
    const int32_t top3[] = {0, 1, 2}, top4[] = {0, 1, 2, 3};

    p.top_k = 3;
    draw_within(s, p, top3, 3, counts, 4000, "top_k=3");
    /* Within the set the draw follows the renormalized probabilities (0.50, 0.3125, 0.1875);
     * with 4000 draws each count is within ~4 standard deviations of its mean. */
    CHECK_MSG(abs(counts[0] - 2000) < 130 && abs(counts[1] - 1250) < 120 && abs(counts[2] - 750) < 100,
              "top_k=3 counts %d %d %d", counts[0], counts[1], counts[2]);
    p.top_k = 0;

    p.top_p = 0.7f; /* 0.40 + 0.25 = 0.65 < 0.7, so the set needs the third token */
    draw_within(s, p, top3, 3, NULL, 2000, "top_p=0.7");
    p.top_p = 0.65f; /* exactly reached by two tokens... but float rounding may need a third */
    draw_within(s, p, top3, 3, NULL, 2000, "top_p=0.65");
    p.top_p = 0.3f;
    draw_within(s, p, top3, 1, NULL, 500, "top_p=0.3");
    p.top_p = 1;

    p.min_p = 0.3f; /* keeps p >= 0.3 * 0.40 = 0.12 */
    draw_within(s, p, top3, 3, NULL, 2000, "min_p=0.3");
    p.min_p = 0.2f; /* keeps p >= 0.08 */
    draw_within(s, p, top4, 4, NULL, 2000, "min_p=0.2");
    p.min_p = 0;

    p.top_k = 4;
    p.top_p = 0.9f; /* within the top 4 (0.4, 0.25, 0.15, 0.1)/0.9: first three reach 0.889 */
    draw_within(s, p, top4, 4, NULL, 2000, "top_k=4 top_p=0.9");

    /* The reported candidate set agrees. */
    int32_t cand[V];
    float probs[V], logits[V];
    sampler_params q = sampler_params_default();
    q.temperature = 1;
    q.top_k = 5;
    q.min_p = 0.2f;
    make_logits(logits, P, NP);
    int n = sampler_candidates(s, &q, logits, NULL, 0, cand, probs, V);
    CHECK_EQ_INT(n, 4);
    for (int i = 0; i < n && i < 4; i++) CHECK_EQ_INT(cand[i], i);
    CHECK(fabsf(probs[0] - 0.40f / 0.90f) < 1e-5);
}

static void test_repeatable(sampler *s) {
    sampler_params p = sampler_params_default();
    p.temperature = 0.8f;
    p.top_p = 0.95f;
    int32_t a[200], b[200], c[200];
    float logits[V];
    for (int run = 0; run < 3; run++) {
        sampler_rng rng;
        p.seed = run == 2 ? 43 : 42;
        sampler_rng_seed(&rng, p.seed);
        for (int i = 0; i < 200; i++) {
            for (int j = 0; j < V; j++) logits[j] = (float)((j * 7919) % 1000) / 250.0f;
            int32_t t = sampler_sample(s, &p, &rng, logits, NULL, 0);
            (run == 0 ? a : run == 1 ? b : c)[i] = t;
        }
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0); /* another seed, another stream */
}

static void test_greedy(sampler *s) {
    float logits[V], copy[V];
    srand(3);
    for (int i = 0; i < V; i++) logits[i] = (float)rand() / RAND_MAX;
    logits[617] = 5;
    memcpy(copy, logits, sizeof logits);
    sampler_params p = sampler_params_default();
    sampler_rng rng;
    sampler_rng_seed(&rng, 1);
    CHECK_EQ_INT(sampler_sample(s, &p, &rng, logits, NULL, 0), 617);
    /* A tiny temperature is greedy in effect. */
    p.temperature = 1e-4f;
    memcpy(logits, copy, sizeof logits);
    CHECK_EQ_INT(sampler_sample(s, &p, &rng, logits, NULL, 0), 617);
    /* First of equal maxima; NaN never wins. */
    p.temperature = 0;
    for (int i = 0; i < V; i++) logits[i] = 0;
    logits[0] = NAN;
    logits[10] = logits[20] = 1;
    CHECK_EQ_INT(sampler_sample(s, &p, &rng, logits, NULL, 0), 10);
}

static void test_penalty(sampler *s) {
    float logits[V];
    for (int i = 0; i < V; i++) logits[i] = 0;
    logits[1] = 2.0f;  /* positive: divided */
    logits[2] = -1.0f; /* negative: multiplied */
    logits[3] = 1.9f;
    int32_t history[] = {1, 2, 1, 1, -5, V + 3}; /* repeats count once; bad ids are ignored */
    sampler_params p = sampler_params_default();
    p.repetition_penalty = 2.0f;
    sampler_rng rng;
    sampler_rng_seed(&rng, 1);
    CHECK_EQ_INT(sampler_sample(s, &p, &rng, logits, history, 6), 3);
    CHECK(logits[1] == 1.0f);
    CHECK(logits[2] == -2.0f);
    CHECK(logits[3] == 1.9f);
}

static void test_params_check(void) {
    cinder_error err = {0};
    sampler_params p = sampler_params_default();
    CHECK_EQ_INT(sampler_params_check(&p, &err), CINDER_OK);
    p.temperature = -1;
    CHECK_EQ_INT(sampler_params_check(&p, &err), CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "temperature"));
    p = sampler_params_default();
    p.top_p = 0;
    CHECK_EQ_INT(sampler_params_check(&p, &err), CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "top_p"));
    p = sampler_params_default();
    p.min_p = NAN;
    CHECK_EQ_INT(sampler_params_check(&p, &err), CINDER_ERR_ARG);
    p = sampler_params_default();
    p.top_k = -2;
    CHECK_EQ_INT(sampler_params_check(&p, &err), CINDER_ERR_ARG);
    p = sampler_params_default();
    p.repetition_penalty = 0;
    CHECK_EQ_INT(sampler_params_check(&p, &err), CINDER_ERR_ARG);
    CHECK(sampler_create(0, &err) == NULL);
}

int main(void) {
    cinder_error err = {0};
    sampler *s = sampler_create(V, &err);
    CHECK(s != NULL);
    if (!s) return test_summary("test_sampler");
    test_filters(s);
    test_repeatable(s);
    test_greedy(s);
    test_penalty(s);
    test_params_check();
    sampler_free(s);
    return test_summary("test_sampler");
}
