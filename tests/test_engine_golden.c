/* test_engine_golden.c - the forward pass against Hugging Face transformers.
 *
 * The tiny random Llama models of tests/data/models (MHA, GQA 4:1, tied embeddings, BF16
 * weights, llama3 RoPE scaling) with the logits transformers computed for every prompt
 * position and its 32 greedy tokens (tests/golden/make_model_refs.py). The engine must match
 * the logits within 1e-4 relative error and the greedy tokens exactly. */
#include <string.h>

#include "engine_test_util.h"
#include "log.h"
#include "model.h"

#define MODELS CINDER_TEST_DATA "/models"

static void golden_model(const char *name, kernel_simd simd) {
    char path[512];
    snprintf(path, sizeof path, MODELS "/%s/refs.json", name);
    cJSON *refs = etu_json(path);
    CHECK_MSG(refs != NULL, "%s", path);
    if (!refs) return;
    snprintf(path, sizeof path, MODELS "/%s", name);
    cinder_error err = {0};
    model *m = model_open(path, &err);
    CHECK_MSG(m != NULL, "%s: %s", name, err.msg);
    engine_options o = engine_options_default();
    o.n_threads = 2;
    o.kv_blocks = 64;
    o.simd = simd;
    engine *e = m ? engine_create(m, &o, &err) : NULL;
    CHECK_MSG(e != NULL, "%s: %s", name, err.msg);
    if (!e) goto out;
    int vocab = m->config.vocab_size;
    double worst = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(refs, "cases")) {
        int n_prompt, n_greedy;
        int32_t *prompt = etu_ints(c, "prompt", &n_prompt);
        int32_t *greedy = etu_ints(c, "greedy", &n_greedy);
        const char *file = cJSON_GetObjectItemCaseSensitive(c, "logits_file")->valuestring;
        snprintf(path, sizeof path, MODELS "/%s/%s", name, file);
        size_t bytes;
        float *ref = (float *)etu_read(path, &bytes);
        CHECK_MSG(ref && bytes == (size_t)n_prompt * vocab * sizeof(float), "%s", path);
        float *logits = malloc((size_t)n_prompt * vocab * sizeof(float));
        etu_seq s = {0};
        if (ref && etu_feed(e, &s, prompt, n_prompt, true, logits) == CINDER_OK) {
            for (int p = 0; p < n_prompt; p++) {
                double r = etu_rel_err(logits + (size_t)p * vocab, ref + (size_t)p * vocab, vocab);
                if (r > worst) worst = r;
                CHECK_MSG(r <= 1e-4, "%s %s position %d: relative error %.3g", name, file, p, r);
            }
            /* Greedy: the argmax of the last prompt row, then one token per step. */
            int32_t next = etu_argmax(logits + (size_t)(n_prompt - 1) * vocab, vocab);
            for (int i = 0; i < n_greedy; i++) {
                CHECK_MSG(next == greedy[i], "%s %s greedy token %d: %d, transformers %d", name,
                          file, i, next, greedy[i]);
                if (next != greedy[i] || i == n_greedy - 1) break;
                if (etu_feed(e, &s, &next, 1, false, logits)) break;
                next = etu_argmax(logits, vocab);
            }
        }
        etu_seq_free(e, &s);
        free(logits);
        free(ref);
        free(prompt);
        free(greedy);
    }
    printf("%-22s %-7s worst relative logit error %.2e\n", name, kernel_simd_name(simd), worst);
    CHECK_EQ_INT(engine_kv(e)->n_free, engine_kv(e)->n_blocks); /* every block came back */
out:
    engine_free(e);
    model_free(m);
    cJSON_Delete(refs);
}

int main(void) {
    log_init_from_env();
    static const char *models[] = {"tiny-mha-f32", "tiny-gqa-f32", "tiny-tied-f32",
                                   "tiny-gqa-bf16", "tiny-llama3rope-f32"};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        golden_model(models[i], KERNEL_SIMD_AUTO);
        golden_model(models[i], KERNEL_SIMD_SCALAR);
    }
    return test_summary("test_engine_golden");
}
