/* test_model_write.c - the model-writing tool: dtype_from_f32's quantizers, the streamed GGUF
 * and safetensors writers, random models of every type in both formats read back through
 * model_open, determinism, tokenizers, refusals and the `cinder write-model` command. */
#include "model_write.h"

#include <math.h>
#include <stdlib.h>

#include "commands.h"
#include "gguf.h"
#include "gguf_write.h"
#include "hf_test_util.h"
#include "safetensors.h"
#include "test.h"
#include "tokenizer.h"

/* ============================================================================================
 * Quantizers
 * ========================================================================================== */

/* Blocks whose values sit exactly on the grid come back exactly, with the expected bytes. */
static void test_quantize_exact(void) {
    float x[QK], y[QK];

    /* Q8_0: amax = 127 d with d = 0.25 (exact in fp16), so q = x / d. */
    block_q8_0 b8;
    for (int j = 0; j < QK; j++) x[j] = (float)((j * 37) % 255 - 127) * 0.25f;
    x[5] = 127 * 0.25f;
    dtype_from_f32(DTYPE_Q8_0, x, &b8, QK);
    CHECK_EQ_INT(b8.d, f32_to_fp16(0.25f));
    bool same = true;
    for (int j = 0; j < QK; j++) same = same && b8.qs[j] == (int8_t)(x[j] / 0.25f);
    CHECK(same);
    dtype_to_f32(DTYPE_Q8_0, &b8, y, QK);
    CHECK(memcmp(x, y, sizeof x) == 0);

    /* Q4_0: the value of largest magnitude (-8 d, negative) gives d; q = x / d + 8. */
    block_q4_0 b4;
    const float d = 0.5f;
    for (int j = 0; j < QK; j++) x[j] = (float)((j * 7) % 16 - 8) * d; /* q = (7j) mod 16 */
    dtype_from_f32(DTYPE_Q4_0, x, &b4, QK);
    CHECK_EQ_INT(b4.d, f32_to_fp16(d));
    same = true;
    for (int j = 0; j < QK / 2; j++) /* low nibbles: elements 0-15; high: 16-31 */
        same = same && b4.qs[j] == (uint8_t)(((j * 7) % 16) | ((((j + 16) * 7) % 16) << 4));
    CHECK(same);
    dtype_to_f32(DTYPE_Q4_0, &b4, y, QK);
    CHECK(memcmp(x, y, sizeof x) == 0);

    /* Q4_0 with a positive extreme: d is negative, the extreme maps to q = 0. */
    for (int j = 0; j < QK; j++) x[j] = (float)(j % 9) * 0.25f; /* max 2.0 = 8 * 0.25 */
    dtype_from_f32(DTYPE_Q4_0, x, &b4, QK);
    CHECK_EQ_INT(b4.d, f32_to_fp16(-0.25f));
    CHECK_EQ_INT(b4.qs[8] & 0xf, 0); /* x[8] = 2.0 */
    dtype_to_f32(DTYPE_Q4_0, &b4, y, QK);
    same = true;
    for (int j = 0; j < QK; j++) same = same && x[j] == y[j]; /* 0 comes back as -0 */
    CHECK(same);

    /* Q4_1: min -1, d = (max - min) / 15 = 0.125, q = (x - min) / d. */
    block_q4_1 b41;
    for (int j = 0; j < QK; j++) x[j] = -1.0f + (float)((j * 5) % 16) * 0.125f;
    dtype_from_f32(DTYPE_Q4_1, x, &b41, QK);
    CHECK_EQ_INT(b41.d, f32_to_fp16(0.125f));
    CHECK_EQ_INT(b41.m, f32_to_fp16(-1.0f));
    same = true;
    for (int j = 0; j < QK / 2; j++)
        same = same && b41.qs[j] == (uint8_t)(((j * 5) % 16) | ((((j + 16) * 5) % 16) << 4));
    CHECK(same);
    dtype_to_f32(DTYPE_Q4_1, &b41, y, QK);
    CHECK(memcmp(x, y, sizeof x) == 0);

    /* All zeros: d = 0 and every value back to 0. */
    memset(x, 0, sizeof x);
    for (int t = DTYPE_Q8_0; t <= DTYPE_Q4_1; t++) {
        uint8_t blk[64];
        dtype_from_f32((dtype)t, x, blk, QK);
        dtype_to_f32((dtype)t, blk, y, QK);
        same = true;
        for (int j = 0; j < QK; j++) same = same && y[j] == 0.0f;
        CHECK_MSG(same, "%s", dtype_name((dtype)t));
    }
    block_q4_0 z4;
    dtype_from_f32(DTYPE_Q4_0, x, &z4, QK);
    CHECK((z4.d & 0x7fff) == 0 && z4.qs[0] == 0x88); /* d = 0 / -8: ggml stores -0 */

    /* Float types: exactly the rounding helpers; F32 a copy. */
    float f[4] = {1.0f / 3.0f, -65504.0f, 1e-8f, 3.0e38f};
    uint16_t h[4];
    dtype_from_f32(DTYPE_F16, f, h, 4);
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(h[i], f32_to_fp16(f[i]));
    dtype_from_f32(DTYPE_BF16, f, h, 4);
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(h[i], f32_to_bf16(f[i]));
    float g[4];
    dtype_from_f32(DTYPE_F32, f, g, 4);
    CHECK(memcmp(f, g, sizeof f) == 0);
}

/* Random blocks: every value within the type's step of the original. */
static void test_quantize_bounds(void) {
    enum { N = 64 * QK };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    uint8_t *q = malloc(N * 4);
    uint64_t s = 12345;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        float u = (float)(s >> 40) / (float)(1 << 24); /* [0, 1) */
        x[i] = (u - 0.3f) * (float)(1 + i / QK);       /* blocks of growing scale, off-centre */
    }
    for (int t = 0; t < DTYPE_COUNT; t++) {
        dtype_from_f32((dtype)t, x, q, N);
        dtype_to_f32((dtype)t, q, y, N);
        bool ok = true;
        for (int b = 0; b < N / QK && ok; b++) {
            const float *xb = x + b * QK, *yb = y + b * QK;
            float mn = xb[0], mx = xb[0], amax = 0;
            for (int j = 0; j < QK; j++) {
                mn = fminf(mn, xb[j]);
                mx = fmaxf(mx, xb[j]);
                amax = fmaxf(amax, fabsf(xb[j]));
            }
            for (int j = 0; j < QK && ok; j++) {
                float e = fabsf(xb[j] - yb[j]), bound;
                switch ((dtype)t) {
                    case DTYPE_F32:
                        bound = 0;
                        break;
                    case DTYPE_F16:
                        bound = fabsf(xb[j]) * 0x1p-11f;
                        break;
                    case DTYPE_BF16:
                        bound = fabsf(xb[j]) * 0x1p-8f;
                        break;
                    /* half a step, plus what the fp16 scale's rounding moves the grid */
                    case DTYPE_Q8_0:
                        bound = amax / 127 * 0.5f + amax * 0x1p-10f;
                        break;
                    /* the far end of the range is clamped to 7 d: a whole step */
                    case DTYPE_Q4_0:
                        bound = amax / 8 * 1.0f + amax * 0x1p-10f;
                        break;
                    case DTYPE_Q4_1:
                        bound = (mx - mn) / 15 * 0.5f + (fabsf(mn) + fabsf(mx)) * 0x1p-10f;
                        break;
                    default:
                        bound = 0;
                }
                ok = e <= bound;
                if (!ok)
                    fprintf(stderr, "%s block %d value %d: %g -> %g (bound %g)\n",
                            dtype_name((dtype)t), b, j, xb[j], yb[j], bound);
            }
        }
        CHECK_MSG(ok, "%s", dtype_name((dtype)t));
    }
    free(x);
    free(y);
    free(q);
}

/* ============================================================================================
 * Streamed tensors in the GGUF and safetensors writers
 * ========================================================================================== */

typedef struct stream_src {
    const uint8_t *data;
    size_t size;  /* bytes to hand over */
    size_t piece; /* in pieces of this many */
    bool fail;
} stream_src;

static cinder_status gguf_src_produce(void *ctx, gguf_stream *out, cinder_error *err) {
    stream_src *s = ctx;
    if (s->fail) return cinder_error_set(err, CINDER_ERR_IO, "producer failed on purpose");
    for (size_t off = 0; off < s->size; off += s->piece) {
        size_t n = s->size - off < s->piece ? s->size - off : s->piece;
        cinder_status st = gguf_stream_write(out, s->data + off, n, err);
        if (st) return st;
    }
    return CINDER_OK;
}

static cinder_status st_src_produce(void *ctx, st_stream *out, cinder_error *err) {
    stream_src *s = ctx;
    if (s->fail) return cinder_error_set(err, CINDER_ERR_IO, "producer failed on purpose");
    for (size_t off = 0; off < s->size; off += s->piece) {
        size_t n = s->size - off < s->piece ? s->size - off : s->piece;
        cinder_status st = st_stream_write(out, s->data + off, n, err);
        if (st) return st;
    }
    return CINDER_OK;
}

static void test_streamed_writers(const char *dir) {
    float a[3 * 5], b[7];
    for (int i = 0; i < 15; i++) a[i] = (float)i * 0.5f;
    for (int i = 0; i < 7; i++) b[i] = -(float)i;
    const uint64_t ne_a[2] = {5, 3}, ne_b[1] = {7};
    cinder_error err = {0};

    /* GGUF: streamed and plain tensors give the same bytes, in a buffer and in a file. */
    uint8_t *plain = NULL, *streamed = NULL;
    size_t plain_n = 0, streamed_n = 0;
    gguf_writer *w = gguf_writer_init();
    gguf_writer_add_str(w, "general.architecture", "test");
    gguf_writer_add_tensor(w, "a", DTYPE_F32, 2, ne_a, a, sizeof a);
    gguf_writer_add_tensor(w, "b", DTYPE_F32, 1, ne_b, b, sizeof b);
    CHECK_EQ_INT(gguf_writer_write_buffer(w, &plain, &plain_n, &err), CINDER_OK);
    gguf_writer_free(w);

    stream_src sa = {(const uint8_t *)a, sizeof a, 7, false},
               sb = {(const uint8_t *)b, sizeof b, 100, false};
    w = gguf_writer_init();
    gguf_writer_add_str(w, "general.architecture", "test");
    gguf_writer_add_tensor_stream(w, "a", DTYPE_F32, 2, ne_a, sizeof a, gguf_src_produce, &sa);
    gguf_writer_add_tensor_stream(w, "b", DTYPE_F32, 1, ne_b, sizeof b, gguf_src_produce, &sb);
    CHECK_EQ_INT(gguf_writer_write_buffer(w, &streamed, &streamed_n, &err), CINDER_OK);
    CHECK(plain && streamed && plain_n == streamed_n && !memcmp(plain, streamed, plain_n));
    const char *path = tu_path(dir, "streamed.gguf");
    CHECK_EQ_INT(gguf_writer_write_file(w, path, &err), CINDER_OK);
    mapped_file mf;
    CHECK_EQ_INT(mapped_file_open(path, &mf, &err), CINDER_OK);
    CHECK(mf.size == plain_n && plain && !memcmp(mf.data, plain, plain_n));
    mapped_file_close(&mf);

    /* A producer that fails, gives too little or too much: the write fails, no file stays. */
    sb.fail = true;
    CHECK_EQ_INT(gguf_writer_write_file(w, path, &err), CINDER_ERR_IO);
    CHECK(test_contains(err.msg, "on purpose"));
    CHECK(access(path, F_OK) != 0);
    sb.fail = false;
    sb.size = sizeof b - 4;
    CHECK_EQ_INT(gguf_writer_write_file(w, path, &err), CINDER_ERR_RANGE);
    CHECK(test_contains(err.msg, "gave 24 of its 28 bytes"));
    CHECK(access(path, F_OK) != 0);
    sa.size = sizeof a + 4;
    uint8_t *buf = NULL;
    size_t buf_n;
    CHECK_EQ_INT(gguf_writer_write_buffer(w, &buf, &buf_n, &err), CINDER_ERR_RANGE);
    CHECK(test_contains(err.msg, "more than its 60 bytes"));
    CHECK(buf == NULL);
    gguf_writer_free(w);
    /* The usual checks apply to streamed tensors too. */
    w = gguf_writer_init();
    gguf_writer_add_tensor_stream(w, "a", DTYPE_F32, 2, ne_a, 8, gguf_src_produce, &sa);
    CHECK_EQ_INT(gguf_writer_write_file(w, path, &err), CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "its shape needs 60"));
    gguf_writer_free(w);
    free(plain);
    free(streamed);

    /* safetensors: the same. */
    sa = (stream_src){(const uint8_t *)a, sizeof a, 9, false};
    sb = (stream_src){(const uint8_t *)b, sizeof b, 4, false};
    const int64_t sh_a[2] = {3, 5}, sh_b[1] = {7};
    st_writer *sw = st_writer_init();
    CHECK_EQ_INT(
        st_writer_add_stream(sw, "a", DTYPE_F32, 2, sh_a, sizeof a, st_src_produce, &sa, &err),
        CINDER_OK);
    CHECK_EQ_INT(st_writer_add(sw, "b", DTYPE_F32, 1, sh_b, b, sizeof b, &err), CINDER_OK);
    CHECK_EQ_INT(st_writer_add_stream(sw, "c", DTYPE_F32, 1, sh_b, 8, st_src_produce, &sb, &err),
                 CINDER_ERR_ARG);
    path = tu_path(dir, "streamed.safetensors");
    CHECK_EQ_INT(st_writer_write(sw, path, &err), CINDER_OK);
    st_file *f = st_open(path, &err);
    CHECK_MSG(f != NULL, "%s", err.msg);
    const st_tensor *t = f ? st_tensor_find(f, "a") : NULL;
    CHECK(t && t->nbytes == sizeof a && !memcmp(t->data, a, sizeof a));
    t = f ? st_tensor_find(f, "b") : NULL;
    CHECK(t && t->nbytes == sizeof b && !memcmp(t->data, b, sizeof b));
    st_close(f);
    sa.size -= 4;
    CHECK_EQ_INT(st_writer_write(sw, path, &err), CINDER_ERR_RANGE);
    CHECK(test_contains(err.msg, "gave 56 of its 60 bytes"));
    CHECK(access(path, F_OK) != 0);
    sa.size += 4;
    sa.fail = true;
    CHECK_EQ_INT(st_writer_write(sw, path, &err), CINDER_ERR_IO);
    CHECK(access(path, F_OK) != 0);
    st_writer_free(sw);
}

/* ============================================================================================
 * Random models
 * ========================================================================================== */

static model_write_options tiny_options(model_format format, dtype type) {
    model_write_options o;
    memset(&o, 0, sizeof o);
    o.cfg.n_layers = 2;
    o.cfg.d_model = 64;
    o.cfg.n_heads = 4;
    o.cfg.n_kv_heads = 2;
    o.cfg.d_ff = 96;
    o.cfg.vocab_size = 300;
    o.cfg.context_len = 128;
    o.cfg.rope_theta = 50000.0f;
    o.cfg.norm_eps = 1e-6f;
    snprintf(o.cfg.name, sizeof o.cfg.name, "tiny-test");
    o.type = type;
    o.embed_type = dtype_is_quantized(type) ? DTYPE_Q8_0 : type;
    o.format = format;
    o.seed = 7;
    o.init_std = 0.05f;
    return o;
}

/* Every tensor's bytes are exactly the generated values converted to its type, and the values
 * look like what was asked for (mean, spread). */
static void check_tensor_values(const model_write_options *o, const model_tensor *t) {
    int64_t rows = model_tensor_n_rows(t), cols = model_tensor_row_len(t), n = rows * cols;
    float *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)n * sizeof *got);
    uint8_t *bytes = malloc(dtype_row_bytes(t->type, cols) * (size_t)rows);
    cinder_error err = {0};
    CHECK_EQ_INT(model_write_values(o, t->name, 0, rows, want, &err), CINDER_OK);
    dtype_from_f32(t->type, want, bytes, n);
    CHECK_MSG(t->nbytes == dtype_row_bytes(t->type, cols) * (size_t)rows &&
                  memcmp(bytes, t->data, t->nbytes) == 0,
              "%s (%s): bytes differ from the generated values", t->name, dtype_name(t->type));

    dtype_to_f32(t->type, t->data, got, n);
    double sum = 0, sum2 = 0, err2 = 0;
    for (int64_t i = 0; i < n; i++) {
        sum += want[i];
        sum2 += (double)want[i] * want[i];
        err2 += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
    }
    double mean = sum / (double)n, sd = sqrt(sum2 / (double)n - mean * mean),
           rel = sqrt(err2 / sum2);
    bool norm = t->n_dims == 1;
    if (norm) {
        CHECK_MSG(fabs(mean - 1) < 0.01 && sd > 0.005 && sd < 0.04, "%s: mean %g sd %g", t->name,
                  mean, sd);
    } else {
        CHECK_MSG(fabs(mean) < 4 * o->init_std / sqrt((double)n) + 1e-4 &&
                      fabs(sd / o->init_std - 1) < 0.1,
                  "%s: mean %g sd %g", t->name, mean, sd);
    }
    static const double max_rel[DTYPE_COUNT] = {
        [DTYPE_F32] = 0,     [DTYPE_F16] = 0x1p-11, [DTYPE_BF16] = 0x1p-8,
        [DTYPE_Q8_0] = 0.01, [DTYPE_Q4_0] = 0.2,    [DTYPE_Q4_1] = 0.2};
    CHECK_MSG(rel <= max_rel[t->type], "%s (%s): relative error %g", t->name, dtype_name(t->type),
              rel);
    free(want);
    free(got);
    free(bytes);
}

static void check_model(const model *m, const model_write_options *o) {
    const model_config *c = &m->config, *w = &o->cfg;
    bool gguf = o->format == MODEL_FORMAT_GGUF;
    CHECK_EQ_INT(m->format, o->format);
    CHECK_EQ_INT(c->arch, MODEL_ARCH_LLAMA);
    CHECK_EQ_INT(c->n_layers, w->n_layers);
    CHECK_EQ_INT(c->d_model, w->d_model);
    CHECK_EQ_INT(c->n_heads, w->n_heads);
    CHECK_EQ_INT(c->n_kv_heads, w->n_kv_heads ? w->n_kv_heads : w->n_heads);
    CHECK_EQ_INT(c->head_dim, w->head_dim ? w->head_dim : w->d_model / w->n_heads);
    CHECK_EQ_INT(c->rope_dim, c->head_dim);
    CHECK_EQ_INT(c->d_ff, w->d_ff);
    CHECK_EQ_INT(c->vocab_size, w->vocab_size);
    CHECK_EQ_INT(c->context_len, w->context_len);
    CHECK(c->norm_eps == w->norm_eps);
    CHECK(c->rope_theta == w->rope_theta);
    CHECK_EQ_INT(c->tied_embeddings, w->tied_embeddings);
    CHECK_EQ_INT(c->rope_layout, gguf ? ROPE_LAYOUT_INTERLEAVED : ROPE_LAYOUT_HALF);
    CHECK_EQ_INT(c->rope_scaling, ROPE_SCALING_NONE);
    if (gguf) CHECK_STR_EQ(c->name, w->name);
    CHECK_EQ_INT(m->n_tensors, 2 + !w->tied_embeddings + 9 * w->n_layers);
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        bool embed = !strcmp(t->name, "token_embd.weight") || !strcmp(t->name, "output.weight");
        dtype want = t->n_dims == 1 ? DTYPE_F32 : embed ? o->embed_type : o->type;
        CHECK_MSG(t->type == want, "%s: %s, expected %s", t->name, dtype_name(t->type),
                  dtype_name(want));
        check_tensor_values(o, t);
    }
    /* model_validate already checked every shape; spot-check two. */
    const model_tensor *t = model_tensor_find(m, "blk.0.attn_k.weight");
    CHECK(t && t->n_dims == 2 && t->shape[0] == (int64_t)c->n_kv_heads * c->head_dim &&
          t->shape[1] == c->d_model);
    t = model_tensor_find(m, "blk.0.ffn_down.weight");
    CHECK(t && t->shape[0] == c->d_model && t->shape[1] == c->d_ff);
    CHECK(m->tok != NULL);
}

/* Writes o to path, reads it back, checks it; returns the model (NULL on failure). */
static model *write_and_open(const model_write_options *o, const char *path) {
    cinder_error err = {0};
    cinder_status s = model_write_random(o, path, &err);
    CHECK_MSG(s == CINDER_OK, "%s: %s", path, err.msg);
    if (s) return NULL;
    model *m = model_open(path, &err);
    CHECK_MSG(m != NULL, "%s: %s", path, err.msg);
    return m;
}

static void test_every_type(const char *dir) {
    for (int f = 0; f < 2; f++)
        for (int t = 0; t < DTYPE_COUNT; t++) {
            model_format format = f ? MODEL_FORMAT_HF : MODEL_FORMAT_GGUF;
            if (format == MODEL_FORMAT_HF && dtype_is_quantized((dtype)t)) continue;
            model_write_options o = tiny_options(format, (dtype)t);
            o.cfg.tied_embeddings = t % 2; /* both ways across the types */
            char name[64];
            snprintf(name, sizeof name, "every_%s_%s%s", dtype_name((dtype)t), f ? "hf" : "gguf",
                     f ? "" : ".gguf");
            model *m = write_and_open(&o, tu_path(dir, name));
            if (m) check_model(m, &o);
            model_free(m);
        }
}

/* Odd shapes: head dim not hidden / heads, MHA, one layer, Q4_0 everywhere. */
static void test_shapes(const char *dir) {
    model_write_options o = tiny_options(MODEL_FORMAT_GGUF, DTYPE_Q4_0);
    o.cfg.head_dim = 32; /* 4 x 32 = 128 != 64 */
    o.cfg.n_kv_heads = 0;
    o.cfg.n_layers = 1;
    o.embed_type = DTYPE_Q4_0;
    model *m = write_and_open(&o, tu_path(dir, "shapes.gguf"));
    if (m) {
        check_model(m, &o);
        CHECK_EQ_INT(m->config.n_kv_heads, 4);
        const model_tensor *t = model_tensor_find(m, "blk.0.attn_output.weight");
        CHECK(t && t->shape[0] == 64 && t->shape[1] == 128);
    }
    model_free(m);
    o.format = MODEL_FORMAT_HF;
    o.type = o.embed_type = DTYPE_F16;
    m = write_and_open(&o, tu_path(dir, "shapes_hf"));
    if (m) check_model(m, &o);
    model_free(m);
}

/* The two formats hold the same model: HF Q/K rows are GGUF's in rotate_half order (llama.cpp's
 * permute: HF rows [head][2][head_dim/2] are GGUF rows [head][head_dim/2][2]), the rest equal. */
static void test_formats_agree(const char *dir) {
    model_write_options og = tiny_options(MODEL_FORMAT_GGUF, DTYPE_F32),
                        oh = tiny_options(MODEL_FORMAT_HF, DTYPE_F32);
    model *g = write_and_open(&og, tu_path(dir, "agree.gguf"));
    model *h = write_and_open(&oh, tu_path(dir, "agree_hf"));
    if (!g || !h) goto done;
    CHECK_EQ_INT(g->n_tensors, h->n_tensors);
    int hd = g->config.head_dim, permuted = 0;
    for (int i = 0; i < g->n_tensors; i++) {
        const model_tensor *tg = &g->tensors[i], *th = model_tensor_find(h, tg->name);
        CHECK_MSG(th != NULL, "%s missing from the HF folder", tg->name);
        if (!th) continue;
        CHECK(tg->n_dims == th->n_dims && tg->shape[0] == th->shape[0] && tg->nbytes == th->nbytes);
        if (!strstr(tg->name, "attn_q") && !strstr(tg->name, "attn_k")) {
            CHECK_MSG(!memcmp(tg->data, th->data, tg->nbytes), "%s differs", tg->name);
            continue;
        }
        size_t row = (size_t)tg->shape[1] * 4;
        bool same = true;
        for (int64_t head = 0; head < tg->shape[0] / hd; head++)
            for (int j = 0; j < 2; j++)
                for (int k = 0; k < hd / 2; k++) {
                    int64_t rh = head * hd + j * (hd / 2) + k, rg = head * hd + 2 * k + j;
                    same = same && !memcmp(th->data + rh * row, tg->data + rg * row, row);
                }
        CHECK_MSG(same, "%s: HF rows are not GGUF's permuted", tg->name);
        permuted++;
    }
    CHECK_EQ_INT(permuted, 2 * og.cfg.n_layers);
done:
    model_free(g);
    model_free(h);
}

static bool files_equal(const char *a, const char *b) {
    mapped_file fa, fb;
    cinder_error err;
    if (mapped_file_open(a, &fa, &err)) return false;
    if (mapped_file_open(b, &fb, &err)) {
        mapped_file_close(&fa);
        return false;
    }
    bool eq = fa.size == fb.size && (fa.size == 0 || !memcmp(fa.data, fb.data, fa.size));
    mapped_file_close(&fa);
    mapped_file_close(&fb);
    return eq;
}

static void test_deterministic(const char *dir) {
    cinder_error err = {0};
    model_write_options o = tiny_options(MODEL_FORMAT_GGUF, DTYPE_Q4_1);
    const char *a = tu_path(dir, "det_a.gguf"), *b = tu_path(dir, "det_b.gguf"),
               *c = tu_path(dir, "det_c.gguf");
    CHECK_EQ_INT(model_write_random(&o, a, &err), CINDER_OK);
    CHECK_EQ_INT(model_write_random(&o, b, &err), CINDER_OK);
    CHECK(files_equal(a, b));
    o.seed++;
    CHECK_EQ_INT(model_write_random(&o, c, &err), CINDER_OK);
    CHECK(!files_equal(a, c));

    o = tiny_options(MODEL_FORMAT_HF, DTYPE_BF16);
    const char *ha = tu_path(dir, "det_hf_a"), *hb = tu_path(dir, "det_hf_b");
    CHECK_EQ_INT(model_write_random(&o, ha, &err), CINDER_OK);
    CHECK_EQ_INT(model_write_random(&o, hb, &err), CINDER_OK);
    static const char *const files[] = {"model.safetensors", "config.json", "tokenizer.json",
                                        "tokenizer_config.json"};
    for (int i = 0; i < 4; i++) {
        char pa[512], pb[512];
        snprintf(pa, sizeof pa, "%s/%s", ha, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", hb, files[i]);
        CHECK_MSG(files_equal(pa, pb), "%s", files[i]);
    }

    /* Values of a row range are the same rows of the whole. */
    float all[300 * 64], part[5 * 64];
    CHECK_EQ_INT(model_write_values(&o, "token_embd.weight", 0, 300, all, &err), CINDER_OK);
    CHECK_EQ_INT(model_write_values(&o, "token_embd.weight", 100, 5, part, &err), CINDER_OK);
    CHECK(!memcmp(all + 100 * 64, part, sizeof part));
    CHECK_EQ_INT(model_write_values(&o, "blk.0.attn_q.weight", 60, 5, part, &err),
                 CINDER_ERR_RANGE);
    CHECK(test_contains(err.msg, "outside the 64"));
    CHECK_EQ_INT(model_write_values(&o, "blk.9.attn_q.weight", 0, 1, part, &err),
                 CINDER_ERR_NOT_FOUND);
    CHECK_EQ_INT(model_write_values(&o, "output.weight", 0, 1, part, &err), CINDER_OK);
    o.cfg.tied_embeddings = true;
    CHECK_EQ_INT(model_write_values(&o, "output.weight", 0, 1, part, &err), CINDER_ERR_NOT_FOUND);

    int64_t params, bytes;
    o = tiny_options(MODEL_FORMAT_GGUF, DTYPE_F32);
    CHECK_EQ_INT(model_write_size(&o, &params, &bytes, &err), CINDER_OK);
    int64_t per_layer = 2 * 64 + 64 * 64 * 2 + 32 * 64 * 2 + 3 * 96 * 64;
    CHECK_EQ_INT(params, 2 * 300 * 64 + 64 + 2 * per_layer);
    CHECK_EQ_INT(bytes, 4 * params);
}

static void test_tokenizers(const char *dir) {
    cinder_error err = {0};
    /* The built-in one: bytes as ids, ChatML specials. */
    model_write_options o = tiny_options(MODEL_FORMAT_GGUF, DTYPE_F32);
    const char *src = tu_path(dir, "tok_src.gguf");
    model *m = write_and_open(&o, src);
    if (m) {
        CHECK_EQ_INT(tok_vocab_size(m->tok), MODEL_WRITE_BUILTIN_VOCAB);
        int32_t ids[16];
        size_t n = 0;
        CHECK_EQ_INT(tok_encode(m->tok, "Hi <|im_end|>", 13, false, true, ids, 16, &n, &err),
                     CINDER_OK);
        CHECK(n == 4 && ids[0] == 'H' && ids[1] == 'i' && ids[2] == ' ' && ids[3] == 258);
        CHECK_EQ_INT(tok_bos(m->tok), 257);
        CHECK_EQ_INT(tok_eos(m->tok), 258);
    }
    model_free(m);

    /* Copied from a GGUF file into a GGUF model of another shape. */
    o.cfg.d_model = 32;
    o.cfg.n_heads = 2;
    o.cfg.n_kv_heads = 1;
    o.tokenizer_from = src;
    m = write_and_open(&o, tu_path(dir, "tok_copy.gguf"));
    if (m) {
        CHECK_EQ_INT(tok_vocab_size(m->tok), MODEL_WRITE_BUILTIN_VOCAB);
        CHECK_STR_EQ(tok_token_text(m->tok, 'a'), "a");
        CHECK_STR_EQ(tok_token_text(m->tok, ' '), "\xc4\xa0"); /* Ġ */
        CHECK_STR_EQ(tok_token_text(m->tok, 257), "<|im_start|>");
    }
    model_free(m);
    int n_tok = 0;
    CHECK_EQ_INT(model_write_tokenizer_vocab(src, &n_tok, &err), CINDER_OK);
    CHECK_EQ_INT(n_tok, MODEL_WRITE_BUILTIN_VOCAB);

    /* From an HF folder (SmolLM2's tokenizer.json) into an HF model. */
    const char *hf_src = CINDER_TEST_DATA "/tokenizer/smollm2";
    o = tiny_options(MODEL_FORMAT_HF, DTYPE_BF16);
    o.tokenizer_from = hf_src;
    CHECK_EQ_INT(model_write_check(&o, &err), CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "49152 tokens, more than the vocab size 300"));
    o.cfg.vocab_size = 49152;
    o.cfg.n_layers = 1;
    m = write_and_open(&o, tu_path(dir, "tok_copy_hf"));
    if (m) {
        CHECK_EQ_INT(tok_vocab_size(m->tok), 49152);
        int32_t ids[8];
        size_t n = 0;
        CHECK_EQ_INT(
            tok_encode(m->tok, "The capital of France is", 24, false, true, ids, 8, &n, &err),
            CINDER_OK);
        CHECK(n == 5 && ids[0] == 504 && ids[1] == 3575 && ids[4] == 314);
    }
    model_free(m);

    /* Sources that do not fit the format. */
    o.tokenizer_from = src;
    CHECK_EQ_INT(model_write_check(&o, &err), CINDER_ERR_UNSUPPORTED);
    CHECK(test_contains(err.msg, "cannot be copied into an HF model"));
    o = tiny_options(MODEL_FORMAT_GGUF, DTYPE_F32);
    o.tokenizer_from = hf_src;
    CHECK_EQ_INT(model_write_check(&o, &err), CINDER_ERR_UNSUPPORTED);
    o.tokenizer_from = tu_path(dir, "nothing-here");
    o.format = MODEL_FORMAT_HF;
    CHECK_EQ_INT(model_write_check(&o, &err), CINDER_ERR_NOT_FOUND);
    CHECK(test_contains(err.msg, "nothing-here"));

    /* None at all: fine for an HF folder, and vocab may then be small. */
    o = tiny_options(MODEL_FORMAT_HF, DTYPE_F32);
    o.no_tokenizer = true;
    o.cfg.vocab_size = 10;
    m = write_and_open(&o, tu_path(dir, "no_tok_hf"));
    CHECK(m && m->tok == NULL);
    model_free(m);
}

static void test_refusals(const char *dir) {
    cinder_error err;
    const char *path = tu_path(dir, "refused.gguf");
    model_write_options o;
#define REFUSE(setup, want_status, want_msg)                                                       \
    do {                                                                                           \
        o = tiny_options(MODEL_FORMAT_GGUF, DTYPE_F32);                                            \
        setup;                                                                                     \
        memset(&err, 0, sizeof err);                                                               \
        CHECK_EQ_INT(model_write_random(&o, path, &err), want_status);                             \
        CHECK_MSG(test_contains(err.msg, want_msg), "'%s' lacks '%s'", err.msg, want_msg);         \
        CHECK_MSG(access(path, F_OK) != 0, "%s written anyway", path);                             \
        CHECK_EQ_INT(model_write_check(&o, &err), want_status);                                    \
    } while (0)
    REFUSE((o.format = MODEL_FORMAT_HF, o.type = DTYPE_Q4_0), CINDER_ERR_UNSUPPORTED,
           "Q4_0 cannot be written to a Hugging Face folder");
    REFUSE((o.format = MODEL_FORMAT_HF, o.embed_type = DTYPE_Q8_0), CINDER_ERR_UNSUPPORTED,
           "embedding type Q8_0");
    REFUSE(o.cfg.n_heads = 5, CINDER_ERR_ARG, "5 heads are not a multiple of 2 KV heads");
    REFUSE((o.cfg.n_heads = 6, o.cfg.n_kv_heads = 3), CINDER_ERR_ARG,
           "hidden size 64 is not a multiple of 6 heads");
    REFUSE(o.cfg.head_dim = 15, CINDER_ERR_ARG, "head dim 15 must be even");
    REFUSE(o.cfg.n_layers = 0, CINDER_ERR_ARG, "layers is 0");
    REFUSE(o.cfg.d_ff = -3, CINDER_ERR_ARG, "feed-forward size is -3");
    REFUSE((o.type = DTYPE_Q4_1, o.cfg.d_ff = 80), CINDER_ERR_ARG,
           "Q4_1 rows are blocks of 32 values, but the feed-forward size is 80");
    REFUSE((o.embed_type = DTYPE_Q8_0, o.cfg.d_model = 48, o.cfg.n_heads = 3, o.cfg.n_kv_heads = 1),
           CINDER_ERR_ARG, "Q8_0 rows are blocks of 32 values, but the hidden size is 48");
    REFUSE(o.cfg.vocab_size = 100, CINDER_ERR_ARG, "smaller than the 259 tokens");
    REFUSE(o.cfg.n_experts = 4, CINDER_ERR_UNSUPPORTED, "no experts");
    REFUSE(o.cfg.rope_scaling = ROPE_SCALING_LINEAR, CINDER_ERR_UNSUPPORTED, "RoPE scaling");
    REFUSE(o.cfg.rope_dim = 8, CINDER_ERR_UNSUPPORTED, "partial RoPE");
    REFUSE(o.init_std = -1, CINDER_ERR_ARG, "init std -1");
    REFUSE(o.cfg.norm_eps = -1, CINDER_ERR_ARG, "norm eps");
    REFUSE(o.type = (dtype)99, CINDER_ERR_ARG, "bad weight type 99");
#undef REFUSE

    /* Where it cannot write. */
    o = tiny_options(MODEL_FORMAT_GGUF, DTYPE_F32);
    CHECK_EQ_INT(model_write_random(&o, tu_path(dir, "no/such/dir.gguf"), &err), CINDER_ERR_IO);
    o.format = MODEL_FORMAT_HF;
    CHECK_EQ_INT(model_write_random(&o, tu_path(dir, "no/such/dir"), &err), CINDER_ERR_IO);
    CHECK(test_contains(err.msg, "cannot create the folder"));
    FILE *f = fopen(tu_path(dir, "a_file"), "w");
    if (f) fclose(f);
    CHECK_EQ_INT(model_write_random(&o, tu_path(dir, "a_file"), &err), CINDER_ERR_IO);
    CHECK(test_contains(err.msg, "not a folder"));
}

/* ============================================================================================
 * `cinder write-model`
 * ========================================================================================== */

static int run_cmd(const char *const *args) {
    char *argv[32];
    int argc = 0;
    for (; args[argc]; argc++) argv[argc] = (char *)args[argc];
    argv[argc] = NULL;
    return cmd_write_model(argc, argv);
}

static void test_cli(const char *dir) {
    const char *path = tu_path(dir, "cli.gguf");
    CHECK_EQ_INT(run_cmd((const char *[]){"--out", path, "--type", "q4_0", "--layers", "3",
                                          "--seed", "5", NULL}),
                 0);
    cinder_error err = {0};
    model *m = model_open(path, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        CHECK_EQ_INT(m->config.n_layers, 3);
        CHECK_EQ_INT(m->config.d_model, 64); /* the tiny preset */
        CHECK_STR_EQ(m->config.name, "random-tiny");
        const model_tensor *t = model_tensor_find(m, "token_embd.weight");
        CHECK(t && t->type == DTYPE_Q8_0); /* q4_* embeddings default to q8_0 */
        t = model_tensor_find(m, "blk.2.ffn_up.weight");
        CHECK(t && t->type == DTYPE_Q4_0);
    }
    model_free(m);

    path = tu_path(dir, "cli_hf");
    CHECK_EQ_INT(run_cmd((const char *[]){"--out", path, "--format", "hf", "--type", "BF16",
                                          "--hidden", "128", "--heads", "4", "--kv-heads", "1",
                                          "--tied", "--name", "mine", NULL}),
                 0);
    m = model_open(path, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        CHECK_EQ_INT(m->config.d_model, 128);
        CHECK_EQ_INT(m->config.n_kv_heads, 1);
        CHECK_EQ_INT(m->config.head_dim, 32);
        CHECK(m->config.tied_embeddings);
        CHECK(model_tensor_find(m, "output.weight") == NULL);
    }
    model_free(m);

    const char *bad = tu_path(dir, "cli_bad");
    CHECK_EQ_INT(run_cmd((const char *[]){"--out", bad, "--format", "hf", "--type", "q4_0", NULL}),
                 2);
    CHECK_EQ_INT(run_cmd((const char *[]){"--out", bad, "--heads", "5", NULL}), 2);
    CHECK_EQ_INT(run_cmd((const char *[]){"--out", bad, "--preset", "huge", NULL}), 2);
    CHECK_EQ_INT(run_cmd((const char *[]){"--out", bad, "--type", "q5_k", NULL}), 2);
    CHECK_EQ_INT(run_cmd((const char *[]){"--out", bad, "--tied", "--untied", NULL}), 2);
    CHECK_EQ_INT(run_cmd((const char *[]){"--format", "gguf", NULL}), 2); /* no --out */
    CHECK(access(bad, F_OK) != 0);
}

int main(void) {
    const char *dir = tu_mkdtemp();
    test_quantize_exact();
    test_quantize_bounds();
    test_streamed_writers(dir);
    test_every_type(dir);
    test_shapes(dir);
    test_formats_agree(dir);
    test_deterministic(dir);
    test_tokenizers(dir);
    test_refusals(dir);
    test_cli(dir);
    tu_rmtree(dir);
    return test_summary("test_model_write");
}
