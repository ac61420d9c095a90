/* test_engine_smollm2.c - the real SmolLM2-135M-Instruct Q4_1 file against transformers, which
 * dequantized the same file (tests/data/models/smollm2/refs.json):
 *   - with every weight dequantized to F32, last-position logits within 1e-3 relative error
 *     and the 32 greedy tokens of each prompt equal;
 *   - with the quantized kernels (16-bit activations), argmax agreement on a teacher-forced
 *     256-token text of at least 98%, and the chat answer to "What is the capital of
 *     France?" names Paris; the same with an F16 KV cache.
 * Exit 77 (skipped) when the model is not downloaded. */
#include <string.h>

#include "engine_test_util.h"
#include "log.h"
#include "model.h"
#include "tokenizer.h"

#define REFS CINDER_TEST_DATA "/models/smollm2"

static engine *make_engine(const model *m, bool f32, dtype kv_type) {
    engine_options o = engine_options_default();
    o.f32_weights = f32;
    o.kv_type = kv_type;
    o.kv_blocks = 64;
    cinder_error err = {0};
    engine *e = engine_create(m, &o, &err);
    CHECK_MSG(e != NULL, "engine_create: %s", err.msg);
    return e;
}

static void check_f32(const model *m, const cJSON *refs) {
    engine *e = make_engine(m, true, DTYPE_F32);
    if (!e) return;
    int vocab = m->config.vocab_size;
    float *logits = malloc((size_t)vocab * sizeof(float));
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(refs, "cases")) {
        int n_prompt, n_greedy;
        int32_t *prompt = etu_ints(c, "prompt", &n_prompt);
        int32_t *greedy = etu_ints(c, "greedy", &n_greedy);
        char path[512];
        snprintf(path, sizeof path, REFS "/%s",
                 cJSON_GetObjectItemCaseSensitive(c, "logits_file")->valuestring);
        size_t bytes;
        float *ref = (float *)etu_read(path, &bytes);
        CHECK_MSG(ref && bytes == (size_t)vocab * sizeof(float), "%s", path);
        etu_seq s = {0};
        if (ref && etu_feed(e, &s, prompt, n_prompt, false, logits) == CINDER_OK) {
            double r = etu_rel_err(logits, ref, vocab);
            printf("F32 %-40.40s relative logit error %.2e\n",
                   cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring, r);
            CHECK_MSG(r <= 1e-3, "%s: relative error %.3g", path, r);
            int32_t next = etu_argmax(logits, vocab);
            int agree = 0;
            for (int i = 0; i < n_greedy; i++) {
                if (next != greedy[i]) break;
                agree++;
                if (i == n_greedy - 1 || etu_feed(e, &s, &next, 1, false, logits)) break;
                next = etu_argmax(logits, vocab);
            }
            CHECK_MSG(agree == n_greedy, "%s: greedy tokens agree for %d of %d", path, agree,
                      n_greedy);
        }
        etu_seq_free(e, &s);
        free(ref);
        free(prompt);
        free(greedy);
    }
    free(logits);
    engine_free(e);
}

static void check_quantized(const model *m, const cJSON *refs, dtype kv_type) {
    engine *e = make_engine(m, false, kv_type);
    if (!e) return;
    int vocab = m->config.vocab_size;
    const cJSON *tf = cJSON_GetObjectItemCaseSensitive(refs, "teacher_forced");
    int n, n_arg;
    int32_t *ids = etu_ints(tf, "ids", &n);
    int32_t *argmax = etu_ints(tf, "argmax", &n_arg);
    CHECK_EQ_INT(n, 256);
    float *logits = malloc((size_t)n * vocab * sizeof(float));
    etu_seq s = {0};
    if (etu_feed(e, &s, ids, n, true, logits) == CINDER_OK) {
        const cJSON *gaps = cJSON_GetObjectItemCaseSensitive(tf, "gaps");
        int agree = 0;
        for (int p = 0; p < n; p++) {
            const float *row = logits + (size_t)p * vocab;
            int32_t got = etu_argmax(row, vocab);
            agree += got == argmax[p];
            if (got != argmax[p]) /* how close the reference's top two were, and ours */
                printf("  position %d: %d, transformers %d (its top-2 gap %.3f; our logits "
                       "%.3f vs %.3f)\n",
                       p, got, argmax[p], cJSON_GetArrayItem(gaps, p)->valuedouble, row[got],
                       row[argmax[p]]);
        }
        printf("Q4_1, %s KV: teacher-forced argmax agreement %d/%d (%.1f%%)\n", dtype_name(kv_type),
               agree, n, 100.0 * agree / n);
        CHECK_MSG(agree >= 0.98 * n, "%s KV: argmax agreement %d/%d below 98%%",
                  dtype_name(kv_type), agree, n);
    }
    etu_seq_free(e, &s);

    /* The chat question, greedy, until <|im_end|>. */
    const cJSON *chat = cJSON_GetObjectItemCaseSensitive(refs, "chat");
    int n_prompt;
    int32_t *prompt = etu_ints(chat, "prompt", &n_prompt);
    int32_t out[64];
    int n_out = 0;
    if (etu_feed(e, &s, prompt, n_prompt, false, logits) == CINDER_OK) {
        int32_t next = etu_argmax(logits, vocab);
        while (next != tok_eos(m->tok) && n_out < 48) {
            out[n_out++] = next;
            if (etu_feed(e, &s, &next, 1, false, logits)) break;
            next = etu_argmax(logits, vocab);
        }
    }
    char text[1024];
    size_t len = 0;
    cinder_error err = {0};
    CHECK(tok_decode(m->tok, out, (size_t)n_out, false, text, sizeof text, &len, &err) == CINDER_OK);
    printf("Q4_1, %s KV: chat answer: %s\n", dtype_name(kv_type), text);
    CHECK_MSG(strstr(text, "Paris") != NULL, "%s KV: the answer does not name Paris: '%s'",
              dtype_name(kv_type), text);
    etu_seq_free(e, &s);
    free(prompt);
    free(logits);
    free(ids);
    free(argmax);
    engine_free(e);
}

int main(void) {
    log_init_from_env();
    FILE *f = fopen(CINDER_DEFAULT_MODEL, "rb");
    if (!f) {
        printf("test_engine_smollm2: %s not found, skipping\n", CINDER_DEFAULT_MODEL);
        return 77;
    }
    fclose(f);
    cinder_error err = {0};
    model *m = model_open(CINDER_DEFAULT_MODEL, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    cJSON *refs = etu_json(REFS "/refs.json");
    CHECK(refs != NULL);
    if (m && refs) {
        check_f32(m, refs);
        check_quantized(m, refs, DTYPE_F32);
        check_quantized(m, refs, DTYPE_F16);
    }
    cJSON_Delete(refs);
    model_free(m);
    return test_summary("test_engine_smollm2");
}
