/* engine_test_util.h - running sequences through the engine in tests: reference files from
 * tests/golden/make_model_refs.py, a sequence with its own blocks, logits comparison. */
#ifndef CINDER_ENGINE_TEST_UTIL_H
#define CINDER_ENGINE_TEST_UTIL_H

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine.h"
#include "test.h"

/* Reads a whole file; NULL when absent. */
static inline char *etu_read(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (len) *len = (size_t)n;
    return buf;
}

static inline cJSON *etu_json(const char *path) {
    char *text = etu_read(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!j) fprintf(stderr, "cannot read %s\n", path);
    return j;
}

/* An int array of a JSON key into a malloc'd buffer; *n its length. */
static inline int32_t *etu_ints(const cJSON *obj, const char *key, int *n) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, key);
    *n = cJSON_GetArraySize(a);
    int32_t *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, a) v[i++] = (int32_t)it->valuedouble;
    return v;
}

/* max_i |a_i - b_i| / max_i |b_i| over one row of n logits. */
static inline double etu_rel_err(const float *a, const float *b, int n) {
    double diff = 0, scale = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > diff || isnan(d)) diff = d;
        if (fabs(b[i]) > scale) scale = fabs(b[i]);
    }
    return scale > 0 ? diff / scale : diff;
}

static inline int32_t etu_argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* One sequence with its own blocks: feeds tokens, keeps its position. */
typedef struct etu_seq {
    kv_seq kv;
    int32_t pos;
} etu_seq;

/* Runs n tokens of s as one step (all_logits or the last row) into logits. */
static inline cinder_status etu_feed(engine *e, etu_seq *s, const int32_t *tokens, int n,
                                     bool all_logits, float *logits) {
    cinder_error err = {0};
    cinder_status st = kv_seq_reserve(engine_kv(e), &s->kv, s->pos + n, &err);
    if (st == CINDER_OK) {
        engine_seq q = {.tokens = tokens, .n_tokens = n, .pos = s->pos,
                        .block_table = s->kv.blocks, .n_blocks = s->kv.n_blocks,
                        .all_logits = all_logits};
        st = engine_step(e, &q, 1, logits, &err);
    }
    CHECK_MSG(st == CINDER_OK, "step: %s", err.msg);
    if (st == CINDER_OK) s->pos += n;
    return st;
}

static inline void etu_seq_free(engine *e, etu_seq *s) {
    kv_seq_free(engine_kv(e), &s->kv);
    s->pos = 0;
}

#endif
