#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sampling_bounds.h"

sampler_params sampler_params_default(void) {
    return (sampler_params){.temperature = 0, .top_k = 0, .top_p = 1, .min_p = 0,
                            .repetition_penalty = 1, .seed = 0};
}

cinder_status sampler_params_check(const sampler_params *p, cinder_error *err) {
    /* The negated comparisons also catch NaN. */
    if (!(p->temperature >= 0 && p->temperature <= SAMPLING_TEMPERATURE_MAX))
        return cinder_error_set(err, CINDER_ERR_ARG, "temperature %g is outside [0, %g]",
                                p->temperature, SAMPLING_TEMPERATURE_MAX);
    if (p->top_k < 0)
        return cinder_error_set(err, CINDER_ERR_ARG, "top_k %d is negative", p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return cinder_error_set(err, CINDER_ERR_ARG, "top_p %g is outside (0, 1]", p->top_p);
    if (!(p->min_p >= 0 && p->min_p <= 1))
        return cinder_error_set(err, CINDER_ERR_ARG, "min_p %g is outside [0, 1]", p->min_p);
    if (!(p->repetition_penalty > 0 && p->repetition_penalty <= SAMPLING_REPETITION_PENALTY_MAX))
        return cinder_error_set(err, CINDER_ERR_ARG, "repetition_penalty %g is outside (0, %g]",
                                p->repetition_penalty, SAMPLING_REPETITION_PENALTY_MAX);
    return CINDER_OK;
}

void sampler_rng_seed(sampler_rng *r, uint64_t seed) {
    rng_seed(r, seed);
}

uint64_t sampler_rng_next(sampler_rng *r) {
    return rng_next(r);
}

double sampler_rng_uniform(sampler_rng *r) {
    return rng_uniform(r);
}

sampler *sampler_create(int vocab, cinder_error *err) {
    sampler *s = calloc(1, sizeof *s);
    if (!s || vocab <= 0) goto fail;
    s->vocab = vocab;
    s->probs = malloc((size_t)vocab * sizeof *s->probs);
    s->order = malloc((size_t)vocab * sizeof *s->order);
    s->seen = calloc((size_t)vocab, 1);
    if (!s->probs || !s->order || !s->seen) goto fail;
    return s;
fail:
    cinder_error_set(err, vocab <= 0 ? CINDER_ERR_ARG : CINDER_ERR_NOMEM,
                     "sampler for a vocabulary of %d: %s", vocab,
                     vocab <= 0 ? "must be positive" : "out of memory");
    sampler_free(s);
    return NULL;
}

void sampler_free(sampler *s) {
    if (!s) return;
    free(s->probs);
    free(s->order);
    free(s->seen);
    free(s);
}

/* Hugging Face's RepetitionPenaltyLogitsProcessor: each distinct seen token once. */
static void sampler_penalize(sampler *s, float penalty, float *logits, const int32_t *history,
                             int n_history) {
    if (penalty == 1.0f) return;
    for (int i = 0; i < n_history; i++) {
        int32_t id = history[i];
        if (id < 0 || id >= s->vocab || s->seen[id]) continue;
        s->seen[id] = 1;
        logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
    }
    for (int i = 0; i < n_history; i++)
        if (history[i] >= 0 && history[i] < s->vocab) s->seen[history[i]] = 0;
}

/* The first largest logit; NaN never wins. */
static int32_t sampler_argmax(const float *logits, int vocab) {
    int32_t best = 0;
    for (int32_t i = 1; i < vocab; i++)
        if (logits[i] > logits[best] || isnan(logits[best])) best = i;
    return best;
}

/* Descending by logit, ties by ascending id, NaN last: a total order, so runs repeat. */
static int sampler_cmp(const void *a, const void *b, void *arg) {
    const float *logits = arg;
    int32_t ia = *(const int32_t *)a, ib = *(const int32_t *)b;
    float la = logits[ia], lb = logits[ib];
    if (isnan(la) != isnan(lb)) return isnan(la) ? 1 : -1;
    if (la > lb) return -1;
    if (la < lb) return 1;
    return (ia > ib) - (ia < ib);
}

/* Moves the k best ids of order[0..n) to the front (quickselect), in no particular order. */
static void sampler_select(int32_t *order, int n, int k, const float *logits) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int32_t pivot = order[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (sampler_cmp(&order[i], &pivot, (void *)logits) < 0) i++;
            while (sampler_cmp(&order[j], &pivot, (void *)logits) > 0) j--;
            if (i <= j) {
                int32_t t = order[i];
                order[i++] = order[j];
                order[j--] = t;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

/* Applies penalty, temperature and the filters. Leaves the candidates in s->order[0..n) with
 * their unnormalized probabilities in s->probs[0..n) and returns n (>= 1). */
static int sampler_filter(sampler *s, const sampler_params *p, float *logits,
                          const int32_t *history, int n_history) {
    int vocab = s->vocab;
    sampler_penalize(s, p->repetition_penalty, logits, history, n_history);
    for (int i = 0; i < vocab; i++) logits[i] /= p->temperature;
    int n = vocab;
    for (int i = 0; i < vocab; i++) s->order[i] = i;
    if (p->top_k > 0 && p->top_k < vocab) {
        sampler_select(s->order, vocab, p->top_k, logits);
        n = p->top_k;
    }
    /* Sorted candidates make top-p a prefix; min-p and the draw only need the maximum. */
    if (p->top_p < 1.0f || n < vocab) {
        qsort_r(s->order, (size_t)n, sizeof *s->order, sampler_cmp, logits);
    } else {
        int32_t best = sampler_argmax(logits, vocab);
        s->order[0] = best;
        s->order[best] = 0;
    }
    float max = logits[s->order[0]];
    if (isnan(max) || isinf(max)) {
        /* Degenerate logits (NaN, +inf): the best token wins outright. */
        s->probs[0] = 1;
        return 1;
    }
    double total = 0;
    for (int i = 0; i < n; i++) {
        float v = logits[s->order[i]] - max;
        total += s->probs[i] = isnan(v) ? 0.0f : expf(v);
    }
    if (p->top_p < 1.0f) {
        /* The smallest prefix holding top_p of the probability (at least one token). */
        double cum = 0, need = p->top_p * total;
        int keep = 0;
        while (keep < n && cum < need) cum += s->probs[keep++];
        n = keep > 0 ? keep : 1;
    }
    if (p->min_p > 0) {
        /* probs are relative to the best token's (whose value is 1), so the cut is min_p. */
        int keep = 0;
        for (int i = 0; i < n; i++)
            if (s->probs[i] >= p->min_p) {
                s->order[keep] = s->order[i];
                s->probs[keep++] = s->probs[i];
            }
        n = keep;
    }
    return n;
}

int32_t sampler_sample(sampler *s, const sampler_params *p, sampler_rng *rng, float *logits,
                       const int32_t *history, int n_history) {
    if (p->temperature == 0) {
        sampler_penalize(s, p->repetition_penalty, logits, history, n_history);
        return sampler_argmax(logits, s->vocab);
    }
    int n = sampler_filter(s, p, logits, history, n_history);
    double total = 0;
    for (int i = 0; i < n; i++) total += s->probs[i];
    double u = sampler_rng_uniform(rng) * total, cum = 0;
    for (int i = 0; i < n; i++) {
        cum += s->probs[i];
        if (u < cum) return s->order[i];
    }
    return s->order[n - 1]; /* u rounded up to total */
}

int sampler_candidates(sampler *s, const sampler_params *p, float *logits,
                       const int32_t *history, int n_history, int32_t *out, float *out_probs,
                       int cap) {
    if (p->temperature == 0) {
        sampler_penalize(s, p->repetition_penalty, logits, history, n_history);
        if (cap > 0) {
            out[0] = sampler_argmax(logits, s->vocab);
            if (out_probs) out_probs[0] = 1;
        }
        return 1;
    }
    int n = sampler_filter(s, p, logits, history, n_history);
    double total = 0;
    for (int i = 0; i < n; i++) total += s->probs[i];
    for (int i = 0; i < n && i < cap; i++) {
        out[i] = s->order[i];
        if (out_probs) out_probs[i] = (float)(s->probs[i] / total);
    }
    return n;
}
