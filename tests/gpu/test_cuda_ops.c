/* test_cuda_ops.c - every CUDA op against the CPU op on random inputs (never zeros): odd
 * sizes, every weight type, GQA ratios 1/4/8, block sizes 16/32, contexts 1 to 8192, F32 and
 * BF16 KV pools, both GEMM activation modes. Outputs are poisoned (NaN bytes) before each run,
 * so an element a kernel forgets shows. Error = max |gpu - cpu| / max |cpu| over a tensor.
 * `--quick` (for compute-sanitizer) keeps contexts <= 1024. Exits 77 without a CUDA device. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"
#include "dtype.h"
#include "ops.h"
#include "test.h"

static kernel_ops *cpu, *gpu, *gpu_fast;
static int quick;

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t rnext(void) {
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float runi(float lo, float hi) {
    return lo + (hi - lo) * (float)((rnext() >> 40) * (1.0 / 16777216.0));
}
static void rfill(float *p, size_t n, float a) {
    for (size_t i = 0; i < n; i++) p[i] = runi(-a, a);
}

/* Device buffer helpers (through the op interface, like the engine). */
static void *dev(size_t bytes) {
    cinder_error err;
    void *p = kernel_alloc(gpu, bytes, &err);
    if (!p) {
        fprintf(stderr, "alloc: %s\n", err.msg);
        exit(1);
    }
    return p;
}
static void *dev_from(const void *h, size_t bytes) {
    void *p = dev(bytes);
    kernel_upload(gpu, p, h, bytes);
    return p;
}
static void poison(void *d, size_t bytes) {
    void *h = malloc(bytes);
    memset(h, 0xff, bytes); /* NaN as F32 */
    kernel_upload(gpu, d, h, bytes);
    kernel_sync(gpu);
    free(h);
}
static float *dl(const void *d, size_t count) {
    float *h = malloc(count * sizeof(float));
    kernel_download(gpu, h, d, count * sizeof(float));
    return h;
}
static double rel_err(const float *got, const float *want, size_t n) {
    double md = 0, mw = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double dd = fabs((double)got[i] - want[i]);
        if (!(dd <= md)) md = isnan(dd) ? INFINITY : dd;
        if (fabs(want[i]) > mw) mw = fabs(want[i]);
    }
    return md / mw;
}
#define CHECK_CLOSE(got, want, n, tol, ...)                                                        \
    do {                                                                                           \
        double e_ = rel_err(got, want, n);                                                         \
        test_checks++;                                                                             \
        if (!(e_ <= (tol))) {                                                                      \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: error %.3g > %.3g: ", __FILE__, __LINE__, e_, (double)(tol));  \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* ---- weights ---- */

typedef struct tw {
    kernel_weight h, d; /* host and device views */
} tw;

static tw weight_make(dtype t, int64_t rows, int64_t cols) {
    size_t rb = dtype_row_bytes(t, cols);
    float *f = malloc((size_t)cols * sizeof(float));
    uint8_t *data = malloc((size_t)rows * rb);
    for (int64_t r = 0; r < rows; r++) {
        rfill(f, (size_t)cols, 1.0f);
        dtype_from_f32(t, f, data + r * rb, cols);
    }
    free(f);
    tw w = {{t, rows, cols, data, rb, NULL}, {t, rows, cols, data, rb, NULL}};
    cinder_error err;
    if (kernel_prepare_weight(gpu, &w.d, &err)) {
        fprintf(stderr, "prepare: %s\n", err.msg);
        exit(1);
    }
    return w;
}

static void test_embed(void) {
    for (int t = 0; t < DTYPE_COUNT; t++) {
        int64_t cols = dtype_is_quantized((dtype)t) ? 96 : 67;
        tw w = weight_make((dtype)t, 37, cols);
        int n = 13;
        int32_t ids[13];
        for (int i = 0; i < n; i++) ids[i] = (int32_t)(rnext() % 37);
        ids[0] = 36;
        float *want = malloc(n * cols * sizeof(float));
        kernel_embed(cpu, want, &w.h, ids, n);
        float *dout = dev(n * cols * sizeof(float));
        int32_t *dids = dev_from(ids, sizeof ids);
        poison(dout, n * cols * sizeof(float));
        kernel_embed(gpu, dout, &w.d, dids, n);
        float *got = dl(dout, n * cols);
        CHECK_CLOSE(got, want, (size_t)n * cols, 0, "embed %s", dtype_name((dtype)t));
        free(got), free(want), free((void *)w.h.data), kernel_free(gpu, dout),
            kernel_free(gpu, dids);
    }
}

static void test_rmsnorm_elementwise(void) {
    int ds[] = {64, 577, 2048};
    for (int k = 0; k < 3; k++) {
        int n = 7, d = ds[k];
        size_t c = (size_t)n * d;
        float *x = malloc(c * 4), *w = malloc(d * 4), *want = malloc(c * 4);
        rfill(x, c, 3), rfill(w, d, 1);
        kernel_rmsnorm(cpu, want, x, w, n, d, 1e-5f);
        float *dx = dev_from(x, c * 4), *dw = dev_from(w, d * 4), *dout = dev(c * 4);
        poison(dout, c * 4);
        kernel_rmsnorm(gpu, dout, dx, dw, n, d, 1e-5f);
        float *got = dl(dout, c);
        CHECK_CLOSE(got, want, c, 1e-5, "rmsnorm d=%d", d);
        free(got);
        kernel_rmsnorm(gpu, dx, dx, dw, n, d, 1e-5f); /* aliased */
        got = dl(dx, c);
        CHECK_CLOSE(got, want, c, 1e-5, "rmsnorm in place d=%d", d);
        free(got), free(x), free(w), free(want);
        kernel_free(gpu, dx), kernel_free(gpu, dw), kernel_free(gpu, dout);
    }
    size_t c = 1000003;
    float *a = malloc(c * 4), *b = malloc(c * 4), *want = malloc(c * 4);
    rfill(a, c, 8), rfill(b, c, 8);
    float *da = dev_from(a, c * 4), *db = dev_from(b, c * 4), *dout = dev(c * 4);
    kernel_swiglu(cpu, want, a, b, 1, (int)c);
    poison(dout, c * 4);
    kernel_swiglu(gpu, dout, da, db, 1, (int)c);
    float *got = dl(dout, c);
    CHECK_CLOSE(got, want, c, 1e-6, "swiglu");
    free(got);
    kernel_add(cpu, want, a, b, (int64_t)c);
    poison(dout, c * 4);
    kernel_add(gpu, dout, da, db, (int64_t)c);
    got = dl(dout, c);
    CHECK_CLOSE(got, want, c, 0, "add");
    free(got);
    /* softmax and argmax over rows of 1000 and 128256 */
    int widths[] = {1000, 128256};
    for (int k = 0; k < 2; k++) {
        int n = 5, d = widths[k];
        size_t cc = (size_t)n * d;
        rfill(a, cc, 10);
        a[3] = a[7] = 100.0f;   /* a tie in row 0: the first wins */
        a[(size_t)d + 2] = NAN; /* NaN never wins */
        int32_t wi[5], gi[5];
        kernel_argmax(cpu, wi, a, n, d);
        kernel_upload(gpu, da, a, cc * 4);
        int32_t *dgi = dev(sizeof gi);
        kernel_argmax(gpu, dgi, da, n, d);
        kernel_download(gpu, gi, dgi, sizeof gi);
        for (int i = 0; i < n; i++) CHECK_EQ_INT(gi[i], wi[i]);
        kernel_free(gpu, dgi);
        a[(size_t)d + 2] = 0;
        memcpy(want, a, cc * 4);
        kernel_softmax(cpu, want, n, d);
        kernel_softmax(gpu, da, n, d);
        got = dl(da, cc);
        CHECK_CLOSE(got, want, cc, 1e-5, "softmax d=%d", d);
        free(got);
    }
    free(a), free(b), free(want);
    kernel_free(gpu, da), kernel_free(gpu, db), kernel_free(gpu, dout);
}

static void test_rope(void) {
    for (int layout = 0; layout < 2; layout++)
        for (int hdi = 0; hdi < 2; hdi++)
            for (int part = 0; part < 2; part++) {
                int n = 9, nh = 5, hd = hdi ? 128 : 64, rd = part ? hd / 2 : hd;
                size_t c = (size_t)n * nh * hd;
                float *x = malloc(c * 4), inv[64];
                int32_t pos[9];
                rfill(x, c, 2);
                for (int i = 0; i < n; i++) pos[i] = (int32_t)(rnext() % 8192);
                kernel_rope_inv_freq(inv, rd, 500000.0f, NULL, NULL);
                float *dx = dev_from(x, c * 4), *dinv = dev_from(inv, sizeof inv);
                int32_t *dpos = dev_from(pos, sizeof pos);
                rope_layout lay = layout ? ROPE_LAYOUT_HALF : ROPE_LAYOUT_INTERLEAVED;
                kernel_rope(cpu, x, pos, n, nh, hd, rd, lay, inv);
                kernel_rope(gpu, dx, dpos, n, nh, hd, rd, lay, dinv);
                float *got = dl(dx, c);
                CHECK_CLOSE(got, x, c, 1e-6, "rope layout %d hd %d rope_dim %d", layout, hd, rd);
                free(got), free(x);
                kernel_free(gpu, dx), kernel_free(gpu, dinv), kernel_free(gpu, dpos);
            }
}

static void test_matmul(void) {
    int ns[] = {1, 3, 8, 9, 33, 100};
    int64_t shapes[][2] = {{67, 96}, {300, 256}, {1000, 2048}};
    for (int t = 0; t < DTYPE_COUNT; t++)
        for (int sh = 0; sh < (quick ? 2 : 3); sh++) {
            tw w = weight_make((dtype)t, shapes[sh][0], shapes[sh][1]);
            int64_t rows = w.h.rows, cols = w.h.cols;
            for (int k = 0; k < 6; k++) {
                int n = ns[k];
                float *x = malloc((size_t)n * cols * 4), *want = malloc((size_t)n * rows * 4);
                rfill(x, (size_t)n * cols, 1);
                kernel_matmul(cpu, want, x, &w.h, n);
                float *dx = dev_from(x, (size_t)n * cols * 4), *dout = dev((size_t)n * rows * 4);
                /* quantized: the CPU quantizes activations to 16 bits, the GPU keeps F32 */
                double tol = dtype_is_quantized((dtype)t) ? 2e-3 : 1e-4;
                for (int fast = 0; fast < 2; fast++) {
                    kernel_ops *g = fast ? gpu_fast : gpu;
                    poison(dout, (size_t)n * rows * 4);
                    kernel_matmul(g, dout, dx, &w.d, n);
                    kernel_sync(g); /* two backends, two streams: dl() reads on gpu's */
                    float *got = dl(dout, (size_t)n * rows);
                    /* fast: activations rounded to F16/BF16 in cuBLAS GEMMs */
                    double tl = fast && n > 8 && (t == DTYPE_F16 || t == DTYPE_BF16) ? 2e-2 : tol;
                    CHECK_CLOSE(got, want, (size_t)n * rows, tl, "matmul %s %lldx%lld n=%d %s",
                                dtype_name((dtype)t), (long long)rows, (long long)cols, n,
                                fast ? "fast" : "accurate");
                    free(got);
                }
                free(x), free(want), kernel_free(gpu, dx), kernel_free(gpu, dout);
            }
            free((void *)w.h.data);
        }
}

/* ---- KV write and attention ---- */

static float bf16_round(float f) {
    return bf16_to_f32(f32_to_bf16(f));
}

/* One configuration: sequences with (n_q, n_ctx) pairs over a scattered pool. */
static void attn_case(int bs, int nkv, int g, int hd, dtype kvt, const int *nq, const int *nctx,
                      int n_seqs) {
    int nh = nkv * g;
    int32_t total_blocks = 0;
    for (int i = 0; i < n_seqs; i++) total_blocks += (nctx[i] + bs - 1) / bs;
    int32_t n_blocks = total_blocks + 3;
    size_t pool = (size_t)n_blocks * nkv * bs * hd;
    float *kc = malloc(pool * 4), *vc = malloc(pool * 4);
    rfill(kc, pool, 1), rfill(vc, pool, 1);
    if (kvt == DTYPE_BF16)
        for (size_t i = 0; i < pool; i++) kc[i] = bf16_round(kc[i]), vc[i] = bf16_round(vc[i]);
    /* device pools: the same values in kvt */
    size_t esz = kvt == DTYPE_BF16 ? 2 : 4;
    void *hk = malloc(pool * esz), *hv = malloc(pool * esz);
    if (kvt == DTYPE_BF16)
        for (size_t i = 0; i < pool; i++)
            ((uint16_t *)hk)[i] = f32_to_bf16(kc[i]), ((uint16_t *)hv)[i] = f32_to_bf16(vc[i]);
    else
        memcpy(hk, kc, pool * 4), memcpy(hv, vc, pool * 4);
    float *dk = dev_from(hk, pool * esz), *dv = dev_from(hv, pool * esz);
    kernel_kv_layer kv_c = {kc, vc, n_blocks, bs, nkv, hd, DTYPE_F32};
    kernel_kv_layer kv_g = {dk, dv, n_blocks, bs, nkv, hd, kvt};
    /* scattered block tables: a shuffled pool */
    int32_t *perm = malloc(n_blocks * sizeof *perm);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(rnext() % (uint64_t)(i + 1));
        int32_t tmp = perm[i];
        perm[i] = perm[j], perm[j] = tmp;
    }
    int32_t *dperm = dev_from(perm, n_blocks * sizeof *perm);
    kernel_attn_seq sc[16], sg[16];
    int n_tok = 0, used = 0;
    for (int i = 0; i < n_seqs; i++) {
        sc[i] = (kernel_attn_seq){n_tok, nq[i], nctx[i], perm + used};
        sg[i] = (kernel_attn_seq){n_tok, nq[i], nctx[i], dperm + used};
        n_tok += nq[i];
        used += (nctx[i] + bs - 1) / bs;
    }
    size_t qc = (size_t)n_tok * nh * hd;
    float *q = malloc(qc * 4), *want = malloc(qc * 4);
    rfill(q, qc, 2);
    float scale = 1.0f / sqrtf((float)hd);
    kernel_attention(cpu, want, q, &kv_c, sc, n_seqs, nh, scale, 0);
    float *dq = dev_from(q, qc * 4), *dout = dev(qc * 4);
    bool prefill = false;
    for (int i = 0; i < n_seqs; i++) prefill |= nq[i] > 1;
    for (int b = 0; b < 2; b++) {
        /* gpu: tensor-core prefill on BF16 pools of head dim 64/128 (Q and P rounded to
         * BF16: ~3e-3 of the largest output); gpu_fast: the FP32 SIMT kernels */
        bool tc = b == 0 && prefill && kvt == DTYPE_BF16 && (hd == 64 || hd == 128);
        poison(dout, qc * 4);
        kernel_attention(b ? gpu_fast : gpu, dout, dq, &kv_g, sg, n_seqs, nh, scale, 0);
        kernel_sync(b ? gpu_fast : gpu); /* two backends, two streams */
        float *got = dl(dout, qc);
        CHECK_CLOSE(got, want, qc, tc ? 1.5e-2 : 1e-4,
                    "attention %s bs %d kv %d g %d hd %d %s seqs %d (n_q %d ctx %d)",
                    b ? "simt" : "default", bs, nkv, g, hd, dtype_name(kvt), n_seqs, nq[0],
                    nctx[0]);
        free(got);
    }

    /* kv_write: n_tok new rows into the slots of the first sequence's blocks */
    int nw = n_tok < 40 ? n_tok : 40;
    size_t kc2 = (size_t)nw * nkv * hd;
    float *nk = malloc(kc2 * 4), *nv = malloc(kc2 * 4);
    rfill(nk, kc2, 1), rfill(nv, kc2, 1);
    if (kvt == DTYPE_BF16)
        for (size_t i = 0; i < kc2; i++) nk[i] = bf16_round(nk[i]), nv[i] = bf16_round(nv[i]);
    int32_t slots[40], span = total_blocks * bs / nw; /* distinct positions, >= 1 apart */
    for (int i = 0; i < nw; i++) {
        int32_t p = i * span + (int32_t)(rnext() % (uint64_t)span);
        slots[i] = perm[p / bs] * bs + p % bs;
    }
    kernel_kv_write(cpu, &kv_c, nk, nv, slots, nw);
    float *dnk = dev_from(nk, kc2 * 4), *dnv = dev_from(nv, kc2 * 4);
    int32_t *dslots = dev_from(slots, sizeof slots);
    kernel_kv_write(gpu, &kv_g, dnk, dnv, dslots, nw);
    kernel_download(gpu, hk, dk, pool * esz);
    kernel_download(gpu, hv, dv, pool * esz);
    float *gk = malloc(pool * 4), *gv = malloc(pool * 4);
    for (size_t i = 0; i < pool; i++) {
        gk[i] = kvt == DTYPE_BF16 ? bf16_to_f32(((uint16_t *)hk)[i]) : ((float *)hk)[i];
        gv[i] = kvt == DTYPE_BF16 ? bf16_to_f32(((uint16_t *)hv)[i]) : ((float *)hv)[i];
    }
    CHECK_CLOSE(gk, kc, pool, 0, "kv_write K %s bs %d", dtype_name(kvt), bs);
    CHECK_CLOSE(gv, vc, pool, 0, "kv_write V %s bs %d", dtype_name(kvt), bs);
    free(gk), free(gv), free(nk), free(nv), free(q), free(want), free(kc), free(vc), free(hk),
        free(hv), free(perm);
    void *bufs[] = {dk, dv, dperm, dq, dout, dnk, dnv, dslots};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) kernel_free(gpu, bufs[i]);
}

static void test_attention(void) {
    /* quick (under compute-sanitizer): GQA 1 and 8, head dims 64 and 16 */
    int gs[] = {1, 8, 4}, bss[] = {16, 32}, hds[] = {64, 16, 128};
    int max_ctx = quick ? 1024 : 8192, n_g = quick ? 2 : 3, n_hd = quick ? 2 : 3;
    for (int kt = 0; kt < 2; kt++)
        for (int bi = 0; bi < 2; bi++)
            for (int gi = 0; gi < n_g; gi++)
                for (int hi = 0; hi < n_hd; hi++) {
                    dtype kvt = kt ? DTYPE_BF16 : DTYPE_F32;
                    int bs = bss[bi], g = gs[gi], hd = hds[hi], nkv = 2;
                    /* decode: contexts 1 .. max */
                    int dq[6] = {1, 1, 1, 1, 1, 1}, dc[6] = {1, 17, 300, 1000, 4097, max_ctx};
                    attn_case(bs, nkv, g, hd, kvt, dq, dc, quick ? 4 : 6);
                    /* a long single decode (many splits) */
                    int one_q = 1, one_c = max_ctx;
                    attn_case(bs, nkv, g, hd, kvt, &one_q, &one_c, 1);
                    /* prefill: whole prompts, chunks after context, mixed with decodes */
                    int pq[4] = {5, 64, 1, 37}, pc[4] = {5, 64 + 100, 77, 37 + 500};
                    attn_case(bs, nkv, g, hd, kvt, pq, pc, 4);
                    int lq = quick ? 300 : 1000, lc = quick ? 300 : 2000;
                    attn_case(bs, nkv, g, hd, kvt, &lq, &lc, 1);
                }
}

int main(int argc, char **argv) {
    quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (kernel_cuda_device_count() == 0) {
        printf("test_cuda_ops: no CUDA device, skipped\n");
        return 77;
    }
    cinder_error err;
    cpu = kernel_cpu_create(0, &err);
    kernel_cuda_options o = kernel_cuda_options_default();
    o.gemm = KERNEL_CUDA_GEMM_ACCURATE;
    gpu = kernel_cuda_create(&o, &err);
    o.gemm = KERNEL_CUDA_GEMM_FAST;
    o.simt_prefill = true; /* the second backend checks the SIMT flash prefill on BF16 too */
    gpu_fast = gpu ? kernel_cuda_create(&o, &err) : NULL;
    if (!cpu || !gpu || !gpu_fast) {
        fprintf(stderr, "test_cuda_ops: %s\n", err.msg);
        return 1;
    }
    kernel_reserve(gpu, 128, 4096, NULL);
    kernel_reserve(gpu_fast, 128, 4096, NULL);
    test_embed();
    test_rmsnorm_elementwise();
    test_rope();
    test_matmul();
    test_attention();
    kernel_ops_free(gpu_fast);
    kernel_ops_free(gpu);
    kernel_ops_free(cpu);
    return test_summary("test_cuda_ops");
}
