/* bench_engine.c - the CPU engine on a real model: prefill and decode speed beside the decode
 * rate the memory bandwidth measured in the same run allows.
 *
 *   bench_engine [--batched] [MODEL] [THREADS...]   defaults: the SmolLM2 Q4_1 file, threads 1, 2
 *
 * --batched runs llama-batched-bench's shape alone (F32 and F16 KV), for rounds paired with it.
 *
 * Decode at small batch reads every weight once per step, so tokens/s <= bandwidth / bytes of
 * weights (design.md §7); the ratio printed is how close the engine gets. The KV cache is F32
 * but for the last row, llama-batched-bench's shape, printed for F32 and F16 KV: at batch 32
 * its attention reads more K/V than weights. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "cpu_pool.h"
#include "engine.h"
#include "log.h"
#include "model.h"

#define PROMPT 512
#define CONTEXT 64 /* tokens already cached before timing decode */
#define STEPS 16
#define NPP 128 /* llama-batched-bench's prompt and generated tokens per sequence */
#define NTG 128

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct bw_job {
    const uint64_t *src;
    uint64_t sums[64];
} bw_job;

static void bw_read(void *arg, int64_t b, int64_t e, int thread) {
    bw_job *j = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int64_t i = b; i < e; i += 4) s0 += j->src[i], s1 += j->src[i + 1], s2 += j->src[i + 2], s3 += j->src[i + 3];
    j->sums[thread & 63] += s0 + s1 + s2 + s3;
}

/* Streaming read bandwidth of n_threads threads over 512 MiB, best of 3, bytes/s. In 2 MiB
 * pages where the kernel gives them, as the CPU backend's prepared weights are: 4 KiB pages
 * read ~1.3x slower here. */
static double read_bandwidth(int n_threads) {
    size_t bytes = (size_t)512 << 20, words = bytes / 8;
    uint64_t *src = aligned_alloc((size_t)2 << 20, bytes);
#ifdef MADV_HUGEPAGE
    if (src) madvise(src, bytes, MADV_HUGEPAGE);
#endif
    cpu_pool *pool = cpu_pool_create(n_threads, NULL);
    if (!src || !pool) {
        free(src);
        cpu_pool_free(pool);
        return 0;
    }
    for (size_t i = 0; i < words; i++) src[i] = i;
    bw_job j = {src, {0}};
    double best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        cpu_pool_run(pool, bw_read, &j, (int64_t)words, (int64_t)words / (4 * n_threads));
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    free(src);
    cpu_pool_free(pool);
    return bytes / best;
}

/* Bytes a decode step reads at batch 1: every layer weight, the output norm and the LM head
 * (token_embd when tied; the embedding lookup itself reads one row). */
static double weight_bytes(const model *m) {
    double b = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, "token_embd.weight") != 0 || m->config.tied_embeddings)
            b += (double)m->tensors[i].nbytes;
    return b;
}

/* llama-batched-bench's shape (-npp NPP -ntg NTG -npl 32, bench/llamacpp.sh): 32 sequences of
 * NPP-token prompts, prefilled PROMPT tokens per step, then NTG decode steps of all 32 at
 * contexts NPP..NPP+NTG. Prints the decode rate, its S_TG. */
static void bench_batched(engine *e, const int32_t *tokens, float *logits) {
    const char *kv_name = dtype_name(engine_kv(e)->type);
    enum { B = 32 };
    kv_cache *kv = engine_kv(e);
    kv_seq seqs[B] = {{0}};
    engine_seq q[B];
    cinder_error err = {0};
    for (int i = 0; i < B; i++) {
        if (kv_seq_reserve(kv, &seqs[i], NPP + NTG, &err) != CINDER_OK) {
            fprintf(stderr, "bench_engine: %s\n", err.msg);
            goto out;
        }
        q[i] = (engine_seq){tokens + i, NPP, 0, seqs[i].blocks, seqs[i].n_blocks, false};
    }
    for (int i = 0; i < B; i += PROMPT / NPP) engine_step(e, q + i, PROMPT / NPP, logits, &err);
    double t0 = now_s();
    for (int step = 0; step < NTG; step++) {
        for (int i = 0; i < B; i++)
            q[i] = (engine_seq){tokens + 200 + step + i, 1, NPP + step, seqs[i].blocks,
                                seqs[i].n_blocks, false};
        engine_step(e, q, B, logits, &err);
    }
    double t = now_s() - t0;
    printf("  decode batch 32, context %d-%d, %-4s KV (llama-batched-bench's S_TG): %6.1f "
           "tokens/s\n",
           NPP, NPP + NTG, kv_name, (double)B * NTG / t);
out:
    for (int i = 0; i < B; i++) kv_seq_free(kv, &seqs[i]);
}

/* Prefill of a PROMPT-token prompt and decode at batch 1, 8 and 32, beside the bandwidth. */
static void bench_prefill_decode(engine *e, const model *m, int n_threads, const int32_t *tokens,
                                 float *logits) {
    kv_cache *kv = engine_kv(e);
    cinder_error err = {0};
    /* Prefill: one 512-token step, best of 2. */
    kv_seq s = {0};
    kv_seq_reserve(kv, &s, PROMPT, &err);
    double best = 1e9;
    for (int rep = 0; rep < 2; rep++) {
        engine_seq q = {tokens, PROMPT, 0, s.blocks, s.n_blocks, false};
        double t0 = now_s();
        engine_step(e, &q, 1, logits, &err);
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    kv_seq_free(kv, &s);
    double bw = read_bandwidth(n_threads), bytes = weight_bytes(m);
    printf("%d thread%s: memory read %.1f GB/s; weights %.1f MB -> decode bound %.1f tokens/s\n",
           n_threads, n_threads > 1 ? "s" : "", bw / 1e9, bytes / 1e6, bw / bytes);
    printf("  prefill %d tokens: %.1f tokens/s\n", PROMPT, PROMPT / best);

    static const int batches[] = {1, 8, 32};
    for (int bi = 0; bi < 3; bi++) {
        int B = batches[bi];
        kv_seq seqs[32] = {{0}};
        engine_seq q[32];
        for (int i = 0; i < B; i++) {
            kv_seq_reserve(kv, &seqs[i], CONTEXT + STEPS, &err);
            q[i] = (engine_seq){tokens + i, CONTEXT, 0, seqs[i].blocks, seqs[i].n_blocks, false};
        }
        engine_step(e, q, B, logits, &err); /* the context, all sequences at once */
        double t0 = now_s();
        for (int step = 0; step < STEPS; step++) {
            for (int i = 0; i < B; i++)
                q[i] = (engine_seq){tokens + 100 + step + i, 1, CONTEXT + step, seqs[i].blocks,
                                    seqs[i].n_blocks, false};
            engine_step(e, q, B, logits, &err);
        }
        double t = now_s() - t0, rate = (double)B * STEPS / t;
        if (B == 1)
            printf("  decode batch  1: %6.1f tokens/s (%.2f of the bandwidth bound)\n", rate,
                   rate / (bw / bytes));
        else
            printf("  decode batch %2d: %6.1f tokens/s (%.1f steps/s)\n", B, rate, STEPS / t);
        for (int i = 0; i < B; i++) kv_seq_free(kv, &seqs[i]);
    }
}

static void bench_threads(const model *m, int n_threads, bool batched_only) {
    const model_config *c = &m->config;
    int vocab = c->vocab_size;
    engine_options o = engine_options_default();
    o.n_threads = n_threads;
    o.max_batch_tokens = PROMPT;
    o.max_seqs = 32;
    o.kv_blocks = 32 * ((NPP + NTG) / o.block_size + 2) + PROMPT / o.block_size + 2;
    cinder_error err = {0};
    engine *e = engine_create(m, &o, &err);
    if (!e) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return;
    }
    float *logits = malloc((size_t)32 * vocab * sizeof(float));
    int32_t *tokens = malloc(PROMPT * sizeof(int32_t));
    for (int i = 0; i < PROMPT; i++) tokens[i] = (int32_t)((i * 7919u + 13) % (unsigned)vocab);

    if (batched_only)
        printf("%d thread%s:\n", n_threads, n_threads > 1 ? "s" : "");
    else
        bench_prefill_decode(e, m, n_threads, tokens, logits);
    bench_batched(e, tokens, logits);
    engine_free(e);
    o.kv_type = DTYPE_F16;
    e = engine_create(m, &o, &err);
    if (e)
        bench_batched(e, tokens, logits);
    else
        fprintf(stderr, "bench_engine: %s\n", err.msg);
    free(tokens);
    free(logits);
    engine_free(e);
}

int main(int argc, char **argv) {
    log_init_from_env();
    bool batched_only = argc > 1 && strcmp(argv[1], "--batched") == 0;
    if (batched_only) argv++, argc--;
    const char *path = argc > 1 ? argv[1] : CINDER_DEFAULT_MODEL;
    cinder_error err = {0};
    model *m = model_open(path, &err);
    if (!m) {
        fprintf(stderr, "bench_engine: %s\n", err.msg);
        return 1;
    }
    printf("model %s: %d layers, d %d, %d/%d heads\n", path, m->config.n_layers,
           m->config.d_model, m->config.n_heads, m->config.n_kv_heads);
    if (argc > 2)
        for (int i = 2; i < argc; i++) bench_threads(m, atoi(argv[i]), batched_only);
    else
        for (int t = 1; t <= 2; t++) bench_threads(m, t, batched_only);
    model_free(m);
    return 0;
}
