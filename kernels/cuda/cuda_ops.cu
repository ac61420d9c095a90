/* cuda_ops.cu - the CUDA backend's kernel_ops table: context (device, stream, cuBLAS,
 * workspaces), memory hooks, and the ops, which check their arguments, plan, and call the
 * launchers of cuda_kernels.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>

#include "cuda_check.h"
#include "cuda_kernels.h"
extern "C" {
#include "cuda_ops.h"
}

/* Fixed workspaces, allocated once at creation. */
#define CUDA_SPLIT_OUT_BYTES ((size_t)64 << 20) /* F32 [2n, rows] outputs of split GEMMs */
#define CUDA_ATTN_PART_BYTES ((size_t)32 << 20) /* decode attention partials */
#define CUDA_CUBLAS_WS_BYTES ((size_t)32 << 20) /* cuBLAS workspace (graph capture safe) */

/* A captured graph and its key. */
struct cuda_graph {
    uint64_t key;
    cudaGraphExec_t exec;
};

typedef struct cuda_ctx {
    kernel_ops ops;
    char name[64];
    int device, n_sms, cc_major;
    kernel_cuda_gemm gemm;
    bool simt_prefill;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    /* weights placed by prepare_weight, freed at destroy */
    void **weights;
    int n_weights, cap_weights;
    /* F16/BF16 activations for cuBLAS ([2, max_tokens, max_cols] values) */
    void *act;
    size_t act_bytes;
    float *split_out;
    /* attention: descriptors (host pinned copy and device), decode partials */
    cuda_attn_seq *h_seqs, *d_seqs;
    int seqs_cap;
    size_t seqs_bytes_last;
    cudaEvent_t seqs_uploaded;
    int32_t ctx_bound; /* from attention_plan: decode grids sized for contexts up to this */
    float *part;
    /* CUDA graphs by key (the engine's decode batch size) */
    struct cuda_graph *graphs;
    int n_graphs, cap_graphs;
    bool capturing;
} cuda_ctx;

const char *cuda_cublas_status_name(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS:
            return "success";
        case CUBLAS_STATUS_NOT_INITIALIZED:
            return "not initialized";
        case CUBLAS_STATUS_ALLOC_FAILED:
            return "allocation failed";
        case CUBLAS_STATUS_INVALID_VALUE:
            return "invalid value";
        case CUBLAS_STATUS_ARCH_MISMATCH:
            return "architecture mismatch";
        case CUBLAS_STATUS_MAPPING_ERROR:
            return "mapping error";
        case CUBLAS_STATUS_EXECUTION_FAILED:
            return "execution failed";
        case CUBLAS_STATUS_INTERNAL_ERROR:
            return "internal error";
        case CUBLAS_STATUS_NOT_SUPPORTED:
            return "not supported";
        default:
            return "unknown cuBLAS status";
    }
}

/* Every CUDA call of an op is made with the backend's device current. */
static void cu_ctx_device(cuda_ctx *c) {
    CUDA_CHECK(cudaSetDevice(c->device));
}

/* Forgets every captured graph (they hold the addresses of workspaces about to move). */
static void cu_graphs_clear(cuda_ctx *c) {
    for (int i = 0; i < c->n_graphs; i++) CUDA_CHECK(cudaGraphExecDestroy(c->graphs[i].exec));
    c->n_graphs = 0;
}

/* ---- memory hooks ---- */

static void *cu_alloc(void *ctx, size_t bytes, cinder_error *err) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    cu_ctx_device(c);
    void *p = NULL;
    if (CUDA_TRY(cudaMalloc(&p, bytes ? bytes : 1), err)) return NULL;
    /* zeroed, as the interface promises: ordered before every later op on the stream */
    if (CUDA_TRY(cudaMemsetAsync(p, 0, bytes, c->stream), err)) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cu_free_mem(void *ctx, void *p) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    cu_ctx_device(c);
    CUDA_CHECK(cudaFree(p));
}

static void cu_upload(void *ctx, void *dst, const void *src, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!bytes) return;
    /* From pageable memory the call returns once src is staged: the caller may reuse it. */
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
}

static void cu_download(void *ctx, void *dst, const void *src, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

static void cu_sync(void *ctx) {
    CUDA_CHECK(cudaStreamSynchronize(((cuda_ctx *)ctx)->stream));
}

static cinder_status cu_prepare_weight(void *ctx, kernel_weight *w, cinder_error *err) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (w->prepared) return CINDER_OK; /* already on the device (w->data points there) */
    size_t bytes = (size_t)w->rows * w->row_bytes;
    if (c->n_weights == c->cap_weights) {
        int cap = c->cap_weights ? 2 * c->cap_weights : 64;
        void **p = (void **)realloc(c->weights, (size_t)cap * sizeof *p);
        if (!p) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        c->weights = p;
        c->cap_weights = cap;
    }
    void *d = cu_alloc(c, bytes, err);
    if (!d) return err ? err->status : CINDER_ERR_NOMEM;
    /* on the backend's stream, after the zeroing cu_alloc queued there */
    cinder_status s =
        CUDA_TRY(cudaMemcpyAsync(d, w->data, bytes, cudaMemcpyHostToDevice, c->stream), err);
    if (!s) s = CUDA_TRY(cudaStreamSynchronize(c->stream), err);
    if (s) {
        cudaFree(d);
        return s;
    }
    c->weights[c->n_weights++] = d;
    w->data = d;
    w->prepared = d;
    return CINDER_OK;
}

static cinder_status cu_mem_info(void *ctx, size_t *free_b, size_t *total_b, cinder_error *err) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    cu_ctx_device(c);
    return CUDA_TRY(cudaMemGetInfo(free_b, total_b), err);
}

static bool cu_supports_kv(void *ctx, dtype t) {
    return t == DTYPE_F32 || t == DTYPE_BF16;
}

/* ---- ops ---- */

static cinder_status cu_reserve(void *ctx, int max_tokens, int64_t max_cols, cinder_error *err) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (max_tokens < 0 || max_cols < 0)
        return cinder_error_set(err, CINDER_ERR_ARG, "reserve: %d tokens of %lld columns",
                                max_tokens, (long long)max_cols);
    size_t bytes = 2 * (size_t)max_tokens * (size_t)max_cols * 2;
    if (bytes <= c->act_bytes) return CINDER_OK;
    cu_sync(c);
    void *p = cu_alloc(c, bytes, err);
    if (!p) return err ? err->status : CINDER_ERR_NOMEM;
    cu_graphs_clear(c);
    if (c->act) CUDA_CHECK(cudaFree(c->act));
    c->act = p;
    c->act_bytes = bytes;
    return CINDER_OK;
}

static bool cu_supports(void *ctx, dtype type) {
    return (unsigned)type < DTYPE_COUNT;
}

static void cu_embed(void *ctx, float *out, const kernel_weight *table, const int32_t *ids, int n) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CN_ASSERT(n >= 0);
    CUDA_CHECK(cuda_embed(out, table->data, table->type, table->cols, table->row_bytes, ids, n,
                          c->stream));
}

static void cu_rmsnorm(void *ctx, float *out, const float *x, const float *weight, int n, int d,
                       float eps) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CN_ASSERT(n >= 0 && d > 0);
    CUDA_CHECK(cuda_rmsnorm(out, x, weight, n, d, eps, c->stream));
}

static void cu_rope(void *ctx, float *x, const int32_t *pos, int n, int n_heads, int head_dim,
                    int rope_dim, rope_layout layout, const float *inv_freq) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CN_ASSERT(n >= 0 && n_heads > 0 && rope_dim > 0 && rope_dim % 2 == 0 && rope_dim <= head_dim);
    CN_ASSERT(layout == ROPE_LAYOUT_INTERLEAVED || layout == ROPE_LAYOUT_HALF);
    CUDA_CHECK(cuda_rope(x, pos, n, n_heads, head_dim, rope_dim, layout, inv_freq, c->stream));
}

static void cu_swiglu(void *ctx, float *out, const float *gate, const float *up, int n, int f) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CN_ASSERT(n >= 0 && f >= 0);
    CUDA_CHECK(cuda_swiglu(out, gate, up, (int64_t)n * f, c->stream));
}

static void cu_add(void *ctx, float *out, const float *a, const float *b, int64_t count) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CN_ASSERT(count >= 0);
    CUDA_CHECK(cuda_add(out, a, b, count, c->stream));
}

static void cu_softmax(void *ctx, float *x, int n, int d) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CN_ASSERT(n >= 0 && d > 0);
    CUDA_CHECK(cuda_softmax(x, n, d, c->stream));
}

static void cu_argmax(void *ctx, int32_t *out, const float *x, int n, int d) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CN_ASSERT(n >= 0 && d > 0);
    CUDA_CHECK(cuda_argmax(out, x, n, d, c->stream));
}

static void cu_kv_write(void *ctx, const kernel_kv_layer *kv, const float *k, const float *v,
                        const int32_t *slots, int n) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CN_ASSERT(kv->type == DTYPE_F32 || kv->type == DTYPE_BF16);
    CUDA_CHECK(cuda_kv_write(kv->k, kv->v, kv->type, kv->n_blocks, kv->block_size, kv->n_kv_heads,
                             kv->head_dim, k, v, slots, n, c->stream));
}

/* out [n, rows] = x [n, cols] . W^T, W dense F32/F16/BF16, through cuBLAS (column-major:
 * C[rows, n] = W^T-view[rows, cols] . x-view[cols, n]). */
static void cu_gemm_dense(cuda_ctx *c, float *out, const float *x, const kernel_weight *w, int n) {
    const float one = 1.0f, zero = 0.0f;
    int64_t elem = w->type == DTYPE_F32 ? 4 : 2;
    CN_ASSERT(w->row_bytes % elem == 0);
    int lda = (int)(w->row_bytes / elem), m = (int)w->rows, k = (int)w->cols;
    if (w->type == DTYPE_F32) {
        CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, w->data,
                                  CUDA_R_32F, lda, x, CUDA_R_32F, k, &zero, out, CUDA_R_32F, m,
                                  CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT));
        return;
    }
    cudaDataType wt = w->type == DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    bool split = c->gemm == KERNEL_CUDA_GEMM_ACCURATE;
    /* Tokens per GEMM: the activations fit act, the split outputs fit split_out. */
    int64_t per = c->act_bytes / ((split ? 2 : 1) * (size_t)k * 2);
    if (split && (int64_t)(CUDA_SPLIT_OUT_BYTES / (2 * (size_t)m * 4)) < per)
        per = CUDA_SPLIT_OUT_BYTES / (2 * (size_t)m * 4);
    CN_ASSERT(per >= 1); /* reserve() sized act for the widest input */
    for (int t0 = 0; t0 < n; t0 += (int)per) {
        int nt = n - t0 < per ? n - t0 : (int)per;
        const float *xs = x + (size_t)t0 * k;
        float *os = out + (size_t)t0 * m;
        CUDA_CHECK(cuda_split_act(c->act, xs, (int64_t)nt * k, w->type, split, c->stream));
        /* split: B = [hi rows; lo rows] as 2nt columns, C = [2nt, m], then out = top + bottom */
        int cols_b = split ? 2 * nt : nt;
        float *cout = split ? c->split_out : os;
        CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, cols_b, k, &one, w->data,
                                  wt, lda, c->act, wt, k, &zero, cout, CUDA_R_32F, m,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        if (split) CUDA_CHECK(cuda_add_halves(os, c->split_out, nt, m, c->stream));
    }
}

static void cu_matmul(void *ctx, float *out, const float *x, const kernel_weight *w, int n) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CN_ASSERT(n >= 0 && w->rows > 0 && w->cols > 0 && (unsigned)w->type < DTYPE_COUNT);
    CN_ASSERT(w->rows <= INT32_MAX && w->cols <= INT32_MAX);
    if (n == 0) return;
    if (n <= CUDA_GEMV_MAX_TOKENS) {
        CUDA_CHECK(
            cuda_gemv(out, x, w->data, w->type, w->rows, w->cols, w->row_bytes, n, c->stream));
    } else if (dtype_is_quantized(w->type)) {
        CUDA_CHECK(cuda_gemm_quant(out, x, w->data, w->type, w->rows, w->cols, w->row_bytes, n,
                                   c->stream));
    } else {
        cu_gemm_dense(c, out, x, w, n);
    }
}

/* Whether prefill attention over kv runs on tensor cores. */
static bool cu_prefill_tc(const cuda_ctx *c, const kernel_kv_layer *kv) {
    return !c->simt_prefill && c->cc_major >= 8 &&
           cuda_attention_prefill_tc_fits(kv->type, kv->head_dim);
}

/* Builds the descriptors of seqs (decode sequences first, then the prefill ones with their
 * first work items) and uploads them unless the device already holds the same ones (every
 * layer of a step shares them). Returns the counts through the pointers. */
static void cu_attn_descriptors(cuda_ctx *c, const kernel_attn_seq *seqs, int n_seqs, int n_heads,
                                const kernel_kv_layer *kv, int *n_dec_out, int *n_pre_out,
                                int *items_out, int *max_ctx_out) {
    CN_ASSERT(n_seqs > 0 && kv->n_kv_heads > 0 && n_heads % kv->n_kv_heads == 0);
    if (n_seqs > c->seqs_cap) {
        /* outside the steady state: the first step of a larger batch */
        CN_ASSERT(!c->capturing);
        int cap = n_seqs > 256 ? n_seqs : 256;
        cu_sync(c);
        cu_graphs_clear(c);
        if (c->h_seqs) CUDA_CHECK(cudaFreeHost(c->h_seqs));
        if (c->d_seqs) CUDA_CHECK(cudaFree(c->d_seqs));
        CUDA_CHECK(cudaMallocHost((void **)&c->h_seqs, 2 * (size_t)cap * sizeof(cuda_attn_seq)));
        CUDA_CHECK(cudaMalloc((void **)&c->d_seqs, (size_t)cap * sizeof(cuda_attn_seq)));
        c->seqs_cap = cap;
        c->seqs_bytes_last = 0;
    }
    /* The pinned buffer holds two halves: the plan being built (second) and the one last
     * uploaded (first), so a repeated plan costs a memcmp. */
    cuda_attn_seq *plan = c->h_seqs + c->seqs_cap;
    int n_dec = 0, n_pre = 0, max_ctx = 0, g = n_heads / kv->n_kv_heads;
    bool tc = cu_prefill_tc(c, kv);
    int q_tile = tc ? CUDA_ATTN_TC_ROWS : cuda_attn_q_tile(g), items = 0;
    int per_tile = tc ? n_heads : kv->n_kv_heads;   /* items per query tile */
    memset(plan, 0, (size_t)n_seqs * sizeof *plan); /* padding bytes too, for memcmp */
    for (int i = 0; i < n_seqs; i++)
        if (seqs[i].n_q == 1) {
            CN_ASSERT(seqs[i].n_ctx >= 1);
            cuda_attn_seq *d = &plan[n_dec++];
            d->q_start = seqs[i].q_start, d->n_q = 1, d->n_ctx = seqs[i].n_ctx;
            d->block_table = seqs[i].block_table;
            if (seqs[i].n_ctx > max_ctx) max_ctx = seqs[i].n_ctx;
        }
    for (int i = 0; i < n_seqs; i++)
        if (seqs[i].n_q != 1) {
            CN_ASSERT(seqs[i].n_q > 0 && seqs[i].n_q <= seqs[i].n_ctx);
            cuda_attn_seq *d = &plan[n_dec + n_pre++];
            d->q_start = seqs[i].q_start, d->n_q = seqs[i].n_q, d->n_ctx = seqs[i].n_ctx;
            d->item_start = items, d->block_table = seqs[i].block_table;
            items += per_tile * ((seqs[i].n_q + q_tile - 1) / q_tile);
        }
    size_t bytes = (size_t)n_seqs * sizeof(cuda_attn_seq);
    if (bytes != c->seqs_bytes_last || memcmp(plan, c->h_seqs, bytes) != 0) {
        /* a graph replays the descriptors it was captured with: plan before capturing */
        CN_ASSERT(!c->capturing);
        CUDA_CHECK(cudaEventSynchronize(c->seqs_uploaded)); /* the last upload has read it */
        memcpy(c->h_seqs, plan, bytes);
        CUDA_CHECK(cudaMemcpyAsync(c->d_seqs, c->h_seqs, bytes, cudaMemcpyHostToDevice, c->stream));
        CUDA_CHECK(cudaEventRecord(c->seqs_uploaded, c->stream));
        c->seqs_bytes_last = bytes;
    }
    *n_dec_out = n_dec, *n_pre_out = n_pre, *items_out = items, *max_ctx_out = max_ctx;
}

static void cu_attention_plan(void *ctx, const kernel_attn_seq *seqs, int n_seqs, int n_heads,
                              const kernel_kv_layer *kv, int32_t ctx_bound) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    int n_dec, n_pre, items, max_ctx;
    cu_attn_descriptors(c, seqs, n_seqs, n_heads, kv, &n_dec, &n_pre, &items, &max_ctx);
    c->ctx_bound = ctx_bound;
}

static void cu_attention(void *ctx, float *out, const float *q, const kernel_kv_layer *kv,
                         const kernel_attn_seq *seqs, int n_seqs, int n_heads, float scale,
                         int window) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CN_ASSERT(kv->type == DTYPE_F32 || kv->type == DTYPE_BF16);
    int n_dec, n_pre, items, max_ctx;
    cu_attn_descriptors(c, seqs, n_seqs, n_heads, kv, &n_dec, &n_pre, &items, &max_ctx);
    cuda_kv_view view = {kv->k, kv->v, kv->type, kv->block_size, kv->n_kv_heads, kv->head_dim};
    if (n_dec) {
        /* splits empty for a sequence shorter than the bound write nothing that counts */
        int bound = c->ctx_bound > max_ctx ? c->ctx_bound : max_ctx;
        cuda_decode_plan dp =
            cuda_decode_plan_make(n_dec, kv->n_kv_heads, n_heads, kv->head_dim, bound, c->n_sms,
                                  CUDA_ATTN_PART_BYTES / sizeof(float));
        CUDA_CHECK(cuda_attention_decode(out, q, view, c->d_seqs, n_dec, n_heads, scale, window, dp,
                                         c->part, c->stream));
    }
    if (n_pre && cu_prefill_tc(c, kv))
        CUDA_CHECK(cuda_attention_prefill_tc(out, q, view, c->d_seqs + n_dec, n_pre, items, n_heads,
                                             scale, window, c->stream));
    else if (n_pre)
        CUDA_CHECK(cuda_attention_prefill(out, q, view, c->d_seqs + n_dec, n_pre, items, n_heads,
                                          scale, window, c->stream));
}

/* ---- graphs ---- */

#define CUDA_MAX_GRAPHS 256

static cinder_status cu_graph_run(void *ctx, uint64_t key, void (*body)(void *arg), void *arg,
                                  cinder_error *err) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    for (int i = 0; i < c->n_graphs; i++)
        if (c->graphs[i].key == key) {
            CUDA_CHECK(cudaGraphLaunch(c->graphs[i].exec, c->stream));
            return CINDER_OK;
        }
    if (c->n_graphs == CUDA_MAX_GRAPHS) { /* enough kept: run op by op */
        body(arg);
        return CINDER_OK;
    }
    if (c->n_graphs == c->cap_graphs) {
        int cap = c->cap_graphs ? 2 * c->cap_graphs : 16;
        void *p = realloc(c->graphs, (size_t)cap * sizeof *c->graphs);
        if (!p) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for CUDA graphs");
        c->graphs = (struct cuda_graph *)p;
        c->cap_graphs = cap;
    }
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = true;
    body(arg);
    c->capturing = false;
    CUDA_CHECK(cudaStreamEndCapture(c->stream, &graph));
    cinder_status s = CUDA_TRY(cudaGraphInstantiate(&exec, graph, 0), err);
    CUDA_CHECK(cudaGraphDestroy(graph));
    if (s) return s;
    c->graphs[c->n_graphs].key = key;
    c->graphs[c->n_graphs++].exec = exec;
    LOG_DEBUG("%s: captured a graph for key %llu (%d kept)", c->name, (unsigned long long)key,
              c->n_graphs);
    CUDA_CHECK(cudaGraphLaunch(exec, c->stream));
    return CINDER_OK;
}

/* ---- creation ---- */

static void cu_destroy(kernel_ops *ops) {
    if (!ops) return;
    cuda_ctx *c = (cuda_ctx *)ops->ctx;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    for (int i = 0; i < c->n_graphs; i++) cudaGraphExecDestroy(c->graphs[i].exec);
    free(c->graphs);
    for (int i = 0; i < c->n_weights; i++) cudaFree(c->weights[i]);
    free(c->weights);
    if (c->act) cudaFree(c->act);
    if (c->split_out) cudaFree(c->split_out);
    if (c->part) cudaFree(c->part);
    if (c->d_seqs) cudaFree(c->d_seqs);
    if (c->h_seqs) cudaFreeHost(c->h_seqs);
    if (c->seqs_uploaded) cudaEventDestroy(c->seqs_uploaded);
    if (c->blas) cublasDestroy(c->blas);
    if (c->blas_ws) cudaFree(c->blas_ws);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

extern "C" kernel_cuda_options kernel_cuda_options_default(void) {
    kernel_cuda_options o;
    o.device = 0;
    o.gemm = KERNEL_CUDA_GEMM_DEFAULT;
    o.simt_prefill = false;
    return o;
}

extern "C" int kernel_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" error */
        return 0;
    }
    return n;
}

extern "C" kernel_ops *kernel_cuda_create(const kernel_cuda_options *opts, cinder_error *err) {
    kernel_cuda_options o = opts ? *opts : kernel_cuda_options_default();
    kernel_cuda_gemm gemm = o.gemm;
    if (gemm == KERNEL_CUDA_GEMM_DEFAULT) {
        const char *env = getenv("CINDER_CUDA_GEMM");
        gemm = KERNEL_CUDA_GEMM_ACCURATE;
        if (env && *env) {
            if (strcmp(env, "fast") == 0)
                gemm = KERNEL_CUDA_GEMM_FAST;
            else if (strcmp(env, "accurate") != 0) {
                cinder_error_set(err, CINDER_ERR_ARG,
                                 "CINDER_CUDA_GEMM=%s: expected accurate or fast", env);
                return NULL;
            }
        }
    }
    if (gemm != KERNEL_CUDA_GEMM_ACCURATE && gemm != KERNEL_CUDA_GEMM_FAST) {
        cinder_error_set(err, CINDER_ERR_ARG, "CUDA GEMM mode %d", (int)gemm);
        return NULL;
    }
    int n_dev = kernel_cuda_device_count();
    if (o.device < 0 || o.device >= n_dev) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "CUDA device %d asked for, %d present",
                         o.device, n_dev);
        return NULL;
    }
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    if (!c) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for the CUDA backend");
        return NULL;
    }
    c->ops.ctx = c; /* before anything that may fail into cu_destroy */
    c->device = o.device;
    c->gemm = gemm;
    {
        const char *env = getenv("CINDER_CUDA_PREFILL");
        c->simt_prefill = o.simt_prefill || (env && strcmp(env, "simt") == 0);
    }
    cudaDeviceProp prop;
    if (CUDA_TRY(cudaSetDevice(o.device), err)) goto fail;
    if (CUDA_TRY(cudaGetDeviceProperties(&prop, o.device), err)) goto fail;
    c->n_sms = prop.multiProcessorCount;
    c->cc_major = prop.major;
    snprintf(c->name, sizeof c->name, "cuda%d-sm%d%d%s%s", o.device, prop.major, prop.minor,
             gemm == KERNEL_CUDA_GEMM_FAST ? "-fast" : "", c->simt_prefill ? "-simt" : "");
    if (CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), err)) goto fail;
    if (CUDA_TRY(cudaEventCreateWithFlags(&c->seqs_uploaded, cudaEventDisableTiming), err))
        goto fail;
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "cublasCreate failed");
        c->blas = NULL;
        goto fail;
    }
    if (CUDA_TRY(cudaMalloc(&c->blas_ws, CUDA_CUBLAS_WS_BYTES), err)) goto fail;
    if (cublasSetStream(c->blas, c->stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(c->blas, c->blas_ws, CUDA_CUBLAS_WS_BYTES) != CUBLAS_STATUS_SUCCESS) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "cuBLAS stream/workspace setup failed");
        goto fail;
    }
    if (CUDA_TRY(cudaMalloc((void **)&c->split_out, CUDA_SPLIT_OUT_BYTES), err)) goto fail;
    if (CUDA_TRY(cudaMalloc((void **)&c->part, CUDA_ATTN_PART_BYTES), err)) goto fail;
    if (cu_reserve(c, 64, 8192, err)) goto fail;
    c->ops.name = c->name;
    c->ops.reserve = cu_reserve;
    c->ops.supports = cu_supports;
    c->ops.embed = cu_embed;
    c->ops.rmsnorm = cu_rmsnorm;
    c->ops.rope = cu_rope;
    c->ops.matmul = cu_matmul;
    c->ops.swiglu = cu_swiglu;
    c->ops.add = cu_add;
    c->ops.kv_write = cu_kv_write;
    c->ops.attention = cu_attention;
    c->ops.softmax = cu_softmax;
    c->ops.argmax = cu_argmax;
    c->ops.destroy = cu_destroy;
    c->ops.alloc = cu_alloc;
    c->ops.free_mem = cu_free_mem;
    c->ops.upload = cu_upload;
    c->ops.download = cu_download;
    c->ops.sync = cu_sync;
    c->ops.prepare_weight = cu_prepare_weight;
    c->ops.mem_info = cu_mem_info;
    c->ops.supports_kv = cu_supports_kv;
    c->ops.attention_plan = cu_attention_plan;
    c->ops.graph_run = cu_graph_run;
    LOG_INFO("%s: %s, %d SMs, %zu MiB, %s GEMM activations", c->name, prop.name, c->n_sms,
             prop.totalGlobalMem >> 20, gemm == KERNEL_CUDA_GEMM_FAST ? "fast" : "accurate");
    return &c->ops;
fail:
    cu_destroy(&c->ops);
    return NULL;
}
