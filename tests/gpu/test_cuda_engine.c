/* test_cuda_engine.c - the whole forward pass on CUDA against the CPU engine, on a model made
 * on the spot (tests/gpu/run.sh writes them with `cinder write-model`).
 *
 *   test_cuda_engine MODEL [--max-rel X] [--min-agree F] [--kv bf16] [--positions N]
 *
 * 1. Prefill of N (128) seeded random tokens with every position's logits, CPU and CUDA:
 *    teacher-forced argmax agreement >= min-agree (0.99) and, with --max-rel, every row's
 *    max |gpu - cpu| / max |cpu| <= X (F32 models: 1e-3).
 * 2. The same tokens through CUDA decode steps (a 16-token prefill, then one token per step)
 *    for two sequences at once in scattered blocks; each step's logits against the CPU's
 *    prefill logits of that position, with the same checks.
 * Exits 77 without a CUDA device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"
#include "engine.h"
#include "log.h"
#include "model.h"
#include "test.h"

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static double row_rel(const float *a, const float *b, int n) {
    double d = 0, s = 1e-30;
    for (int i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= d)) d = isnan(e) ? INFINITY : e;
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return d / s;
}

static engine *make(const model *m, engine_backend b, dtype kvt, int32_t blocks) {
    engine_options o = engine_options_default();
    o.backend = b;
    o.kv_type = b == ENGINE_BACKEND_CUDA ? kvt : DTYPE_F32;
    o.kv_blocks = blocks;
    o.max_batch_tokens = 256;
    o.max_seqs = 8;
    cinder_error err;
    engine *e = engine_create(m, &o, &err);
    if (!e) fprintf(stderr, "engine (%s): %s\n", engine_backend_name(b), err.msg);
    return e;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_cuda_engine MODEL [--max-rel X] [--min-agree F] [--kv bf16]"
                        " [--positions N]\n");
        return 2;
    }
    if (kernel_cuda_device_count() == 0) {
        printf("test_cuda_engine: no CUDA device, skipped\n");
        return 77;
    }
    const char *path = argv[1];
    double max_rel = -1, min_agree = 0.99;
    dtype kvt = DTYPE_F32;
    int N = 128;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--max-rel"))
            max_rel = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--min-agree"))
            min_agree = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--kv"))
            kvt = strcmp(argv[i + 1], "bf16") ? DTYPE_F32 : DTYPE_BF16;
        else if (!strcmp(argv[i], "--positions"))
            N = atoi(argv[i + 1]);
    }
    cinder_error err;
    model *m = model_open(path, &err);
    if (!m) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        return 1;
    }
    int V = m->config.vocab_size, bs = 16;
    if (N > m->config.context_len) N = m->config.context_len;
    int32_t nb = (N + bs - 1) / bs, pool = 3 * nb + 4;
    engine *ec = make(m, ENGINE_BACKEND_CPU, DTYPE_F32, pool);
    engine *eg = make(m, ENGINE_BACKEND_CUDA, kvt, pool);
    if (!ec || !eg) return 1;

    int32_t *tok = malloc(N * sizeof *tok);
    uint64_t r = 12345;
    for (int i = 0; i < N; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((r >> 33) % (uint64_t)V);
    }
    /* 1. prefill, every position's logits */
    int32_t *bt = malloc(nb * sizeof *bt);
    for (int i = 0; i < nb; i++) bt[i] = i;
    float *lc = malloc((size_t)N * V * sizeof(float)), *lg = malloc((size_t)N * V * sizeof(float));
    engine_seq s = {tok, N, 0, bt, nb, true};
    CHECK(engine_step(ec, &s, 1, lc, &err) == CINDER_OK);
    memset(lg, 0xff, (size_t)N * V * sizeof(float));
    CHECK(engine_step(eg, &s, 1, lg, &err) == CINDER_OK);
    int agree = 0;
    double worst = 0;
    for (int p = 0; p < N; p++) {
        agree += argmax(lg + (size_t)p * V, V) == argmax(lc + (size_t)p * V, V);
        double e = row_rel(lg + (size_t)p * V, lc + (size_t)p * V, V);
        if (!(e <= worst)) worst = e;
    }
    printf("%s: prefill %d positions: argmax agreement %d/%d, worst row error %.3g\n", path, N,
           agree, N, worst);
    CHECK_MSG(agree >= min_agree * N, "prefill agreement %d/%d", agree, N);
    /* the same step again (it rewrites the same K and V), only each row's argmax coming back:
     * that of the logits above (N rows: past the device's logits buffer, in pieces) */
    int32_t *ids = malloc((size_t)N * sizeof *ids);
    int same = 0;
    CHECK(engine_step_argmax(eg, &s, 1, NULL, ids, &err) == CINDER_OK);
    for (int p = 0; p < N; p++) same += ids[p] == argmax(lg + (size_t)p * V, V);
    CHECK_MSG(same == N, "engine_step_argmax: %d of %d rows as the logits' argmax", same, N);
    if (max_rel >= 0) CHECK_MSG(worst <= max_rel, "prefill error %.3g > %.3g", worst, max_rel);

    /* 2. decode steps, two sequences at once in scattered blocks (interleaved tables) */
    int32_t *bt2[2];
    for (int q = 0; q < 2; q++) {
        bt2[q] = malloc(nb * sizeof(int32_t));
        for (int i = 0; i < nb; i++) bt2[q][i] = pool - 1 - (2 * i + q);
    }
    int pre = N < 16 ? N : 16;
    float *step = malloc(2 * (size_t)V * sizeof(float));
    engine_seq s2[2];
    for (int q = 0; q < 2; q++) s2[q] = (engine_seq){tok, pre, 0, bt2[q], nb, false};
    CHECK(engine_step(eg, s2, 2, step, &err) == CINDER_OK);
    CHECK(engine_step_argmax(eg, s2, 2, NULL, ids, &err) == CINDER_OK);
    int agree2 = 0, total2 = 0, same2 = 0;
    double worst2 = 0;
    for (int p = pre - 1; p < N; p++) {
        for (int q = 0; q < 2; q++) {
            const float *want = lc + (size_t)p * V, *got = step + (size_t)q * V;
            agree2 += argmax(got, V) == argmax(want, V);
            same2 += ids[q] == argmax(got, V);
            total2++;
            double e = row_rel(got, want, V);
            if (!(e <= worst2)) worst2 = e;
        }
        if (p + 1 >= N) break;
        for (int q = 0; q < 2; q++) s2[q] = (engine_seq){tok + p + 1, 1, p + 1, bt2[q], nb, false};
        memset(step, 0xff, 2 * (size_t)V * sizeof(float));
        if (engine_step(eg, s2, 2, step, &err) != CINDER_OK ||
            engine_step_argmax(eg, s2, 2, NULL, ids, &err) != CINDER_OK) {
            CHECK_MSG(0, "decode step at %d: %s", p + 1, err.msg);
            break;
        }
    }
    printf("%s: decode %d steps x 2 sequences: argmax agreement %d/%d, worst row error %.3g\n",
           path, total2 / 2, agree2, total2, worst2);
    CHECK_MSG(agree2 >= min_agree * total2, "decode agreement %d/%d", agree2, total2);
    if (max_rel >= 0) CHECK_MSG(worst2 <= max_rel, "decode error %.3g > %.3g", worst2, max_rel);
    CHECK_MSG(same2 == total2, "engine_step_argmax in decode: %d of %d rows as the logits' argmax",
              same2, total2);

    free(ids), free(step), free(bt2[0]), free(bt2[1]), free(lc), free(lg), free(bt), free(tok);
    engine_free(eg);
    engine_free(ec);
    model_free(m);
    return test_summary("test_cuda_engine");
}
