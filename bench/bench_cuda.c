/* bench_cuda.c - GPU figures, each beside the ceiling measured in the same run:
 *
 *   copy      device-to-device copy bandwidth (read + write bytes / time): the memory ceiling
 *   gemm      cuBLAS BF16 GEMM 8192^3 (FP32 accumulation): the matmul ceiling
 *   decode    paged decode attention, batch 64, context 4096, 32 query / 8 KV heads, head dim
 *             128, BF16 KV: K/V bytes read / time, as a fraction of the copy bandwidth
 *   prefill   flash attention, 8 sequences x 2048 tokens, 32/8 heads, head dim 128, causal:
 *             TFLOP/s (4 * heads * hd * causal pairs per sequence)
 *   engine    decode tokens/s (BF16 KV, CUDA graphs) of models given on the command line
 *             (batch 1 and 64, 64 tokens of context), batch 1
 *             against the bound copy bandwidth / bytes of weights one step reads
 *
 *   bench_cuda [--tsv FILE] [--model LABEL=PATH]...
 * --tsv appends "name<TAB>value<TAB>unit<TAB>ratio<TAB>note" lines for tests/gpu/run.sh. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "engine.h"
#include "model.h"

static FILE *tsv;

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,                   \
                    cudaGetErrorString(e_));                                                       \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void report(const char *name, double value, const char *unit, double ratio,
                   const char *note) {
    printf("%-28s %10.2f %-8s", name, value, unit);
    if (ratio >= 0) printf("  %.2f %s", ratio, note);
    printf("\n");
    if (tsv) fprintf(tsv, "%s\t%.2f\t%s\t%.3f\t%s\n", name, value, unit, ratio, note);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median milliseconds of iters timed runs of fn(arg) after warm runs, timed with events on the
 * legacy stream around a device sync (the backend's stream is its own). */
static double median_ms(void (*fn)(void *), void *arg, kernel_ops *k, int warm, int iters) {
    double t[64];
    if (iters > 64) iters = 64;
    for (int i = 0; i < warm; i++) fn(arg);
    kernel_sync(k);
    for (int i = 0; i < iters; i++) {
        double t0 = now_s();
        fn(arg);
        kernel_sync(k);
        t[i] = (now_s() - t0) * 1e3;
    }
    qsort(t, (size_t)iters, sizeof t[0], cmp_d);
    return t[iters / 2];
}

/* ---- ceilings ---- */

static double bench_copy(void) {
    size_t bytes = (size_t)1 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++) CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    double t[15];
    for (int i = 0; i < 15; i++) {
        CK(cudaEventRecord(e0, 0));
        CK(cudaMemcpyAsync(i & 1 ? a : b, i & 1 ? b : a, bytes, cudaMemcpyDeviceToDevice, 0));
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t[i] = ms;
    }
    qsort(t, 15, sizeof t[0], cmp_d);
    double gbs = 2.0 * bytes / (t[7] * 1e-3) / 1e9;
    report("copy bandwidth (r+w)", gbs, "GB/s", -1, "");
    CK(cudaFree(a));
    CK(cudaFree(b));
    return gbs;
}

static double bench_gemm(void) {
    int n = 8192;
    size_t elems = (size_t)n * n;
    void *a, *b, *c;
    CK(cudaMalloc(&a, elems * 2));
    CK(cudaMalloc(&b, elems * 2));
    CK(cudaMalloc(&c, elems * 2));
    CK(cudaMemset(a, 0x3c, elems * 2)); /* bf16 0x3c3c ~ 0.0115: finite values */
    CK(cudaMemset(b, 0x3c, elems * 2));
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasCreate failed\n");
        exit(1);
    }
    float one = 1, zero = 0;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double t[10];
    for (int i = 0; i < 13; i++) {
        CK(cudaEventRecord(e0, 0));
        cublasStatus_t st = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF,
                                         n, b, CUDA_R_16BF, n, &zero, c, CUDA_R_16BF, n,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "cublasGemmEx failed: %d\n", (int)st);
            exit(1);
        }
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 3) t[i - 3] = ms;
    }
    qsort(t, 10, sizeof t[0], cmp_d);
    double tf = 2.0 * n * (double)n * n / (t[5] * 1e-3) / 1e12;
    report("cuBLAS BF16 GEMM 8192^3", tf, "TFLOP/s", -1, "");
    cublasDestroy(h);
    CK(cudaFree(a));
    CK(cudaFree(b));
    CK(cudaFree(c));
    return tf;
}

/* ---- attention through the op interface ---- */

typedef struct attn_job {
    kernel_ops *k;
    float *out, *q;
    kernel_kv_layer kv;
    kernel_attn_seq *seqs;
    int n_seqs, n_heads;
    float scale;
} attn_job;

static void attn_run(void *arg) {
    attn_job *j = arg;
    kernel_attention(j->k, j->out, j->q, &j->kv, j->seqs, j->n_seqs, j->n_heads, j->scale, 0);
}

static uint64_t rs = 88172645463325252ull;
static uint32_t rnd(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (uint32_t)(rs >> 16);
}

/* A BF16 pool of n_blocks with random values (uploaded in 64 MiB pieces). */
static void *pool_make(kernel_ops *k, size_t elems) {
    uint16_t *d = kernel_alloc(k, elems * 2, NULL);
    if (!d) {
        fprintf(stderr, "out of device memory\n");
        exit(1);
    }
    size_t piece = (size_t)32 << 20;
    uint16_t *h = malloc(piece * 2);
    for (size_t i = 0; i < piece; i++)
        h[i] = (uint16_t)(0x3c00 | (rnd() & 0x3ff) | (rnd() & 0x8000));
    for (size_t off = 0; off < elems; off += piece)
        kernel_upload(k, d + off, h, (elems - off < piece ? elems - off : piece) * 2);
    kernel_sync(k);
    free(h);
    return d;
}

static void bench_attention(kernel_ops *k, int n_seqs, int n_q, int n_ctx, double copy_gbs,
                            double *prefill_tflops) {
    int nh = 32, nkv = 8, hd = 128, bs = 16;
    int nb = (n_ctx + bs - 1) / bs;
    int32_t n_blocks = n_seqs * nb;
    size_t elems = (size_t)n_blocks * nkv * bs * hd;
    void *kp = pool_make(k, elems), *vp = pool_make(k, elems);
    int32_t *bt = malloc((size_t)n_blocks * sizeof *bt);
    for (int32_t i = 0; i < n_blocks; i++) bt[i] = i;
    for (int32_t i = n_blocks - 1; i > 0; i--) { /* scattered blocks */
        int32_t j = (int32_t)(rnd() % (uint32_t)(i + 1)), t = bt[i];
        bt[i] = bt[j], bt[j] = t;
    }
    int32_t *dbt = kernel_alloc(k, (size_t)n_blocks * sizeof *bt, NULL);
    kernel_upload(k, dbt, bt, (size_t)n_blocks * sizeof *bt);
    size_t qn = (size_t)n_seqs * n_q * nh * hd;
    float *hq = malloc(qn * 4);
    for (size_t i = 0; i < qn; i++) hq[i] = (float)(rnd() % 2001) / 1000.0f - 1.0f;
    float *dq = kernel_alloc(k, qn * 4, NULL), *dout = kernel_alloc(k, qn * 4, NULL);
    kernel_upload(k, dq, hq, qn * 4);
    kernel_attn_seq *seqs = malloc((size_t)n_seqs * sizeof *seqs);
    for (int i = 0; i < n_seqs; i++)
        seqs[i] = (kernel_attn_seq){i * n_q, n_q, n_ctx, dbt + (size_t)i * nb};
    attn_job j = {k,    dout,   dq, {kp, vp, n_blocks, bs, nkv, hd, DTYPE_BF16},
                  seqs, n_seqs, nh, 1.0f / sqrtf((float)hd)};
    char note[96];
    if (n_q == 1) {
        double ms = median_ms(attn_run, &j, k, 3, 20);
        double gbs = 2.0 * n_seqs * (double)n_ctx * nkv * hd * 2 / (ms * 1e-3) / 1e9;
        snprintf(note, sizeof note, "of copy bandwidth (%.3f ms; target 0.80)", ms);
        report("decode attention b64 c4096", gbs, "GB/s", gbs / copy_gbs, note);
    } else {
        double ms = median_ms(attn_run, &j, k, 1, 5);
        double pairs = (double)n_q * (n_q + 1) / 2; /* causal, whole prompts */
        double tf = 4.0 * n_seqs * nh * hd * pairs / (ms * 1e-3) / 1e12;
        snprintf(note, sizeof note, "(%.2f ms; against SDPA: see its line)", ms);
        report("flash prefill 8x2048", tf, "TFLOP/s", -1, note);
        *prefill_tflops = tf;
    }
    kernel_free(k, kp), kernel_free(k, vp), kernel_free(k, dbt), kernel_free(k, dq),
        kernel_free(k, dout);
    free(bt), free(hq), free(seqs);
}

/* ---- engine decode ---- */

typedef struct dec_job {
    engine *e;
    engine_seq *seqs;
    int n;
    float *logits;
    int32_t pos;
} dec_job;

static void dec_run(void *arg) {
    dec_job *j = arg;
    for (int i = 0; i < j->n; i++) j->seqs[i].pos = j->pos;
    cinder_error err;
    if (engine_step(j->e, j->seqs, j->n, j->logits, &err)) {
        fprintf(stderr, "step: %s\n", err.msg);
        exit(1);
    }
    j->pos++;
}

static void bench_engine(const char *label, const char *path, double copy_gbs) {
    cinder_error err;
    model *m = model_open(path, &err);
    if (!m) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        return;
    }
    /* bytes one decode step reads at batch 1: every weight, the embedding table once when
     * tied (as LM head), only a row of it when not */
    double bytes = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, "token_embd.weight") != 0 || m->config.tied_embeddings)
            bytes += (double)m->tensors[i].nbytes;
    int B = 64, ctx0 = 64, steps = 32, bs = 16;
    int nb = (ctx0 + steps * 2 + 8 + bs - 1) / bs + 1;
    engine_options o = engine_options_default();
    o.backend = ENGINE_BACKEND_CUDA;
    o.kv_type = DTYPE_BF16;
    o.kv_blocks = B * nb;
    o.max_seqs = B;
    o.max_batch_tokens = B * ctx0;
    engine *e = engine_create(m, &o, &err);
    if (!e) {
        fprintf(stderr, "%s: %s\n", path, err.msg);
        model_free(m);
        return;
    }
    int V = m->config.vocab_size;
    int32_t *tok = malloc((size_t)B * ctx0 * sizeof *tok),
            *bt = malloc((size_t)B * nb * sizeof *bt);
    for (int i = 0; i < B * ctx0; i++) tok[i] = (int32_t)(rnd() % (uint32_t)V);
    for (int i = 0; i < B * nb; i++) bt[i] = i;
    engine_seq *seqs = malloc((size_t)B * sizeof *seqs);
    float *logits = malloc((size_t)B * V * sizeof(float));
    for (int i = 0; i < B; i++)
        seqs[i] = (engine_seq){tok + (size_t)i * ctx0, ctx0, 0, bt + (size_t)i * nb, nb, false};
    if (engine_step(e, seqs, B, logits, &err)) fprintf(stderr, "prefill: %s\n", err.msg);
    for (int i = 0; i < B; i++) seqs[i].n_tokens = 1;
    char name[64], note[128];
    for (int pass = 0; pass < 2; pass++) {
        int n = pass ? B : 1;
        dec_job j = {e, seqs, n, logits, pass ? ctx0 + steps + 4 : ctx0};
        double ms = median_ms(dec_run, &j, engine_backend_ops(e), 3, steps);
        double tps = n * 1e3 / ms;
        snprintf(name, sizeof name, "decode %s b%d", label, n);
        if (n == 1) {
            double bound = copy_gbs * 1e9 / bytes;
            snprintf(note, sizeof note, "of bound %.0f tok/s (%.2f GB weights; target 0.70)", bound,
                     bytes / 1e9);
            report(name, tps, "tok/s", tps / bound, note);
        } else {
            report(name, tps, "tok/s", -1, "");
        }
    }
    free(tok), free(bt), free(seqs), free(logits);
    engine_free(e);
    model_free(m);
}

int main(int argc, char **argv) {
    if (kernel_cuda_device_count() == 0) {
        printf("bench_cuda: no CUDA device\n");
        return 77;
    }
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--tsv")) tsv = fopen(argv[++i], "a");
    struct cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("bench_cuda on %s (%d SMs, %.0f GiB)\n", p.name, p.multiProcessorCount,
           p.totalGlobalMem / 1073741824.0);
    double copy = bench_copy();
    bench_gemm();
    cinder_error err;
    kernel_ops *k = kernel_cuda_create(NULL, &err);
    if (!k) {
        fprintf(stderr, "bench_cuda: %s\n", err.msg);
        return 1;
    }
    double pf = 0;
    bench_attention(k, 64, 1, 4096, copy, &pf);
    bench_attention(k, 8, 2048, 2048, copy, &pf);
    kernel_ops_free(k);
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--model")) {
            char *spec = argv[++i], *eq = strchr(spec, '=');
            if (!eq) continue;
            *eq = 0;
            bench_engine(spec, eq + 1, copy);
        }
    if (tsv) fclose(tsv);
    return 0;
}
