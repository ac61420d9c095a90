/* sampler.h - turns one sequence's logits into the next token.
 *
 * The order is Hugging Face's (and vLLM's): repetition penalty on the tokens seen so far, then
 * temperature, then top-k, top-p and min-p on the resulting distribution, then a draw from what
 * is left with the request's own random stream. Temperature 0 is greedy (argmax of the
 * penalized logits) and draws nothing. The same seed and the same logits give the same tokens. */
#ifndef CINDER_SAMPLER_H
#define CINDER_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "rng.h"
#include "status.h"

typedef struct sampler_params {
    float temperature;        /* 0: greedy; else logits / temperature */
    int top_k;                /* 0: off; else keep the k most likely */
    float top_p;              /* 1: off; else the smallest set with probability >= top_p */
    float min_p;              /* 0: off; else drop tokens below min_p * p(most likely) */
    float repetition_penalty; /* 1: off; else seen tokens' logits / p when > 0, * p when < 0 */
    uint64_t seed;
} sampler_params;

/* temperature 0 (greedy), no top-k/top-p/min-p, no penalty, seed 0. */
sampler_params sampler_params_default(void);
/* Checks the ranges of common/sampling_bounds.h (the protocol checks the same); err names the
 * bad field and its value. */
cinder_status sampler_params_check(const sampler_params *p, cinder_error *err);

/* A request's random stream (xoshiro256**, seeded through splitmix64: common/rng.h). */
typedef rng_state sampler_rng;

void sampler_rng_seed(sampler_rng *r, uint64_t seed);
uint64_t sampler_rng_next(sampler_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double sampler_rng_uniform(sampler_rng *r);

/* Scratch for one vocabulary size, reused for every call (nothing allocated per token). */
typedef struct sampler {
    int vocab;
    float *probs;   /* [vocab] */
    int32_t *order; /* [vocab] candidate ids */
    uint8_t *seen;  /* [vocab] marks for the repetition penalty */
} sampler;

sampler *sampler_create(int vocab, cinder_error *err);
void sampler_free(sampler *s);

/* Picks the next token from logits [vocab] (modified in place by the penalty and the
 * temperature). history [n_history] are the tokens the penalty applies to (prompt and
 * output so far). rng advances by one draw unless greedy. */
int32_t sampler_sample(sampler *s, const sampler_params *p, sampler_rng *rng, float *logits,
                       const int32_t *history, int n_history);

/* The candidate set sampling would draw from, for tests: writes the ids with nonzero
 * probability after every filter into out (up to cap) with their probabilities (may be NULL)
 * and returns the count. Consumes no randomness. */
int sampler_candidates(sampler *s, const sampler_params *p, float *logits,
                       const int32_t *history, int n_history, int32_t *out, float *out_probs,
                       int cap);

#endif
