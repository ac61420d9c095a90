/* test_gguf_fuzz.c - the GGUF reader against broken files: every truncation of a small file,
 * then many deterministic mutations (bytes flipped, counts and lengths overwritten with huge,
 * zero and random values). Each parse reads from a malloc'd buffer of exactly the file's size,
 * so the sanitizer catches any read past it. The reader must never crash: it refuses with a
 * message, or it accepts a file whose every value and tensor lies inside the buffer. */
#include <stdint.h>
#include <stdlib.h>

#include "gguf.h"
#include "gguf_write.h"
#include "test.h"

#define FUZZ_MUTATIONS 200000
#define FUZZ_MAX_SPOTS 512

static uint64_t fuzz_state = 0x853c49e6748fea9bu;

/* A 64-bit LCG (Knuth's MMIX constants); the high bits are the good ones. */
static uint64_t fuzz_rand(void) {
    fuzz_state = fuzz_state * 6364136223846793005u + 1442695040888963407u;
    return fuzz_state ^ (fuzz_state >> 29);
}

static uint64_t fuzz_below(uint64_t n) {
    return n ? (fuzz_rand() >> 11) % n : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The file under test */

static float fuzz_f32[8] = {1, 2, 3, 4, 5, 6, 7, 8};
static uint8_t fuzz_q8[2 * 34];
static uint16_t fuzz_f16[16];

static uint8_t *fuzz_build(size_t *size) {
    static const char *const tokens[] = {
        "<|endoftext|>", "<|im_start|>", "a", "", "\xc4\xa0the", "b", "ab", "\xc4\x8a"};
    static const int32_t types[] = {3, 3, 1, 1, 1, 1, 1, 1};
    static const float scores[] = {0, -1, -2.5f};
    gguf_writer *w = gguf_writer_init();
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_u32(w, "llama.block_count", 2);
    gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false);
    gguf_writer_add_i64(w, "general.size", -7);
    gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", tokens, 8);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, 8);
    gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, 3);
    gguf_writer_add_u8(w, "x.u8", 9);
    gguf_writer_add_f64(w, "x.f64", 0.5);
    for (size_t i = 0; i < sizeof fuzz_q8; i++) fuzz_q8[i] = (uint8_t)(i * 13);
    for (size_t i = 0; i < 16; i++) fuzz_f16[i] = f32_to_fp16((float)i);
    uint64_t ne_a[2] = {4, 2}, ne_b[2] = {32, 2}, ne_c[1] = {16};
    gguf_writer_add_tensor(w, "a.weight", DTYPE_F32, 2, ne_a, fuzz_f32, sizeof fuzz_f32);
    gguf_writer_add_tensor(w, "b.weight", DTYPE_Q8_0, 2, ne_b, fuzz_q8, sizeof fuzz_q8);
    /* 32 bytes, a whole alignment: no padding after it, so the file ends with its data and
     * every truncation must be refused. */
    gguf_writer_add_tensor(w, "c.weight", DTYPE_F16, 1, ne_c, fuzz_f16, sizeof fuzz_f16);
    uint8_t *buf = NULL;
    cinder_error err = {0};
    CHECK_MSG(gguf_writer_write_buffer(w, &buf, size, &err) == CINDER_OK, "%s", err.msg);
    gguf_writer_free(w);
    return buf;
}

/* Offsets of the counts, lengths and type ids in the file, where mutations hurt most. */
typedef struct fuzz_spots {
    size_t u64[FUZZ_MAX_SPOTS], u32[FUZZ_MAX_SPOTS];
    int n_u64, n_u32;
} fuzz_spots;

static void fuzz_spot(fuzz_spots *s, bool wide, size_t at) {
    if (wide && s->n_u64 < FUZZ_MAX_SPOTS) s->u64[s->n_u64++] = at;
    if (!wide && s->n_u32 < FUZZ_MAX_SPOTS) s->u32[s->n_u32++] = at;
}

static void fuzz_find_spots(const gguf_file *g, const uint8_t *base, fuzz_spots *s) {
    fuzz_spot(s, false, 4); /* version */
    fuzz_spot(s, true, 8);  /* tensor count */
    fuzz_spot(s, true, 16); /* metadata count */
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const gguf_kv *kv = &g->kv[i];
        size_t key = (size_t)((const uint8_t *)kv->key.ptr - base);
        fuzz_spot(s, true, key - 8);
        fuzz_spot(s, false, key + kv->key.len);
        if (kv->type == GGUF_TYPE_STRING) fuzz_spot(s, true, (size_t)(kv->value - base));
        if (kv->type != GGUF_TYPE_ARRAY) continue;
        fuzz_spot(s, false, (size_t)(kv->value - base) - 12);
        fuzz_spot(s, true, (size_t)(kv->value - base) - 8);
        if (kv->arr_type != GGUF_TYPE_STRING) continue;
        uint64_t cursor = 0;
        for (uint64_t e = 0; e < kv->arr_n; e++) {
            fuzz_spot(s, true, (size_t)(kv->value - base) + cursor);
            gguf_arr_str_next(kv, &cursor);
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor_info *t = &g->tensors[i];
        size_t name = (size_t)((const uint8_t *)t->name.ptr - base);
        fuzz_spot(s, true, name - 8);
        size_t at = name + t->name.len;
        fuzz_spot(s, false, at);
        for (uint32_t d = 0; d < t->n_dims; d++) fuzz_spot(s, true, at + 4 + 8 * d);
        fuzz_spot(s, false, at + 4 + 8 * t->n_dims);
        fuzz_spot(s, true, at + 8 + 8 * t->n_dims);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Checking one parse */

static bool fuzz_inside(const uint8_t *base, size_t size, const void *p, uint64_t n) {
    const uint8_t *q = p;
    return q >= base && (size_t)(q - base) <= size && n <= size - (size_t)(q - base);
}

/* Walks everything an accepted file offers, as a user would, checking it lies in the buffer
 * (the sanitizer checks the walking itself). */
static void fuzz_check_accepted(const gguf_file *g, const uint8_t *base, size_t size) {
    cinder_error err;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const gguf_kv *kv = &g->kv[i];
        CHECK(fuzz_inside(base, size, kv->key.ptr, kv->key.len));
        CHECK(fuzz_inside(base, size, kv->value, kv->value_size));
        char key[256];
        if (kv->key.len < sizeof key && !memchr(kv->key.ptr, 0, kv->key.len)) {
            memcpy(key, kv->key.ptr, kv->key.len);
            key[kv->key.len] = 0;
            CHECK(gguf_kv_find(g, key) == kv);
            int64_t iv;
            double fv;
            bool bv;
            gguf_str sv;
            gguf_type et;
            uint64_t n;
            gguf_get_int(g, key, &iv, &err);
            gguf_get_float(g, key, &fv, &err);
            gguf_get_bool(g, key, &bv, &err);
            if (gguf_get_str(g, key, &sv, &err) == CINDER_OK)
                CHECK(fuzz_inside(base, size, sv.ptr, sv.len));
            gguf_get_arr(g, key, &et, &n, &err);
        }
        if (kv->type != GGUF_TYPE_ARRAY) continue;
        int64_t isum = 0;
        double fsum = 0;
        uint64_t cursor = 0;
        for (uint64_t e = 0; e < kv->arr_n; e++) {
            switch (kv->arr_type) {
                case GGUF_TYPE_UINT8:
                case GGUF_TYPE_INT8:
                case GGUF_TYPE_UINT16:
                case GGUF_TYPE_INT16:
                case GGUF_TYPE_UINT32:
                case GGUF_TYPE_INT32:
                case GGUF_TYPE_UINT64:
                case GGUF_TYPE_INT64:
                    isum ^= gguf_arr_int(kv, e);
                    break;
                case GGUF_TYPE_FLOAT32:
                case GGUF_TYPE_FLOAT64:
                    fsum += gguf_arr_float(kv, e);
                    break;
                case GGUF_TYPE_STRING: {
                    gguf_str s = gguf_arr_str_next(kv, &cursor);
                    CHECK(fuzz_inside(base, size, s.ptr, s.len));
                    break;
                }
                default:
                    break;
            }
        }
        if (kv->arr_type == GGUF_TYPE_STRING) CHECK(cursor == kv->value_size);
        (void)isum;
        (void)fsum;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor_info *t = &g->tensors[i];
        CHECK(fuzz_inside(base, size, t->name.ptr, t->name.len));
        CHECK_MSG(fuzz_inside(base, size, t->data, t->nbytes), "tensor %llu data outside",
                  (unsigned long long)i);
        CHECK(t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS && t->offset % g->alignment == 0);
        uint64_t numel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) numel *= t->ne[d];
        CHECK(t->nbytes ==
              numel / (uint64_t)dtype_block_size(t->type) * dtype_block_bytes(t->type));
        /* Touch the first and last byte: the sanitizer would see them outside the buffer. */
        volatile uint8_t touch = t->data[0] ^ t->data[t->nbytes - 1];
        (void)touch;
    }
    CHECK(g->alignment && !(g->alignment & (g->alignment - 1)));
}

/* Parses a copy of buf[0, size) in a buffer of exactly that size. Returns 1 when accepted,
 * 0 when refused (with a message, checked here), and copies the message to msg. */
static int fuzz_parse(const uint8_t *buf, size_t size, char *msg, size_t msg_size) {
    uint8_t *copy = malloc(size ? size : 1);
    memcpy(copy, buf, size);
    cinder_error err = {0};
    gguf_file *g = gguf_open_memory(copy, size, &err);
    int accepted = g != NULL;
    if (g) {
        fuzz_check_accepted(g, copy, size);
        gguf_close(g);
    } else {
        CHECK_MSG(err.msg[0] != '\0', "refused without a message (size %zu)", size);
        CHECK_MSG(err.status == CINDER_ERR_FORMAT || err.status == CINDER_ERR_UNSUPPORTED,
                  "status %s: %s", cinder_status_name(err.status), err.msg);
        CHECK_MSG(strncmp(err.msg, "gguf: ", 6) == 0, "%s", err.msg);
    }
    if (msg) snprintf(msg, msg_size, "%s", err.msg);
    free(copy);
    return accepted;
}

/* ------------------------------------------------------------------------------------------ */
/* The two campaigns */

static void fuzz_truncations(const uint8_t *buf, size_t size, const gguf_file *g) {
    char msg[512];
    for (size_t len = 0; len < size; len++)
        CHECK_MSG(fuzz_parse(buf, len, msg, sizeof msg) == 0, "truncated to %zu: accepted", len);

    /* Some cuts, and what their messages must name. */
    size_t key0 = (size_t)((const uint8_t *)g->kv[0].key.ptr - buf);
    const gguf_kv *tokens = gguf_kv_find(g, "tokenizer.ggml.tokens");
    size_t tok = (size_t)(tokens->value - buf);
    const gguf_tensor_info *last = &g->tensors[g->n_tensors - 1];
    size_t name0 = (size_t)((const uint8_t *)g->tensors[0].name.ptr - buf);
    struct {
        size_t len;
        const char *needles[3];
    } cuts[] = {
        {2, {"header", "magic"}},
        {6, {"header", "version"}},
        {12, {"header", "tensor count", "truncated at offset 8"}},
        {20, {"header", "metadata count"}},
        {key0 - 4, {"metadata key #0", "key length"}},
        {key0 + 3, {"metadata key #0", "key ("}},
        {key0 + g->kv[0].key.len + 2, {"'general.architecture'", "value type"}},
        {tok - 10, {"'tokenizer.ggml.tokens'", "array element type"}},
        {tok - 4, {"'tokenizer.ggml.tokens'", "array count"}},
        {tok + 4, {"'tokenizer.ggml.tokens'", "string element #0 length"}},
        {tok + 25, {"'tokenizer.ggml.tokens'", "string element #1"}},
        {tok + 30, {"'tokenizer.ggml.tokens'", "string element #1 (12 bytes"}},
        {name0 + 2, {"tensor #0", "name"}},
        {name0 + g->tensors[0].name.len + 6, {"tensor #0 'a.weight'", "dimension"}},
        {size - 1, {"tensor 'c.weight'", "past end of file"}},
        {(size_t)(last->data - buf) - 1, {"tensor 'c.weight'", "past end of file"}},
    };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        fuzz_parse(buf, cuts[i].len, msg, sizeof msg);
        for (int n = 0; n < 3 && cuts[i].needles[n]; n++)
            CHECK_MSG(test_contains(msg, cuts[i].needles[n]), "cut at %zu: \"%s\" lacks \"%s\"",
                      cuts[i].len, msg, cuts[i].needles[n]);
    }
}

static uint64_t fuzz_value(size_t size) {
    switch (fuzz_below(10)) {
        case 0:
            return 0;
        case 1:
            return UINT64_MAX;
        case 2:
            return 1ull << 60;
        case 3:
            return fuzz_rand();
        case 4:
            return fuzz_below(2 * size);
        case 5:
            return size;
        case 6:
            return UINT64_MAX - fuzz_below(64);
        case 7:
            return 1ull << fuzz_below(64);
        case 8:
            return (uint64_t)INT64_MAX + fuzz_below(3);
        default:
            return fuzz_below(40);
    }
}

static void fuzz_put(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void fuzz_mutations(const uint8_t *buf, size_t size, const fuzz_spots *spots) {
    uint8_t *m = malloc(size);
    int accepted = 0;
    for (int iter = 0; iter < FUZZ_MUTATIONS; iter++) {
        memcpy(m, buf, size);
        size_t len = size;
        int n_edits = 1 + (int)fuzz_below(3);
        for (int e = 0; e < n_edits; e++) {
            switch (fuzz_below(6)) {
                case 0: /* a few random bytes */
                    for (int k = 1 + (int)fuzz_below(4); k > 0; k--)
                        m[fuzz_below(size)] = (uint8_t)fuzz_rand();
                    break;
                case 1: /* one bit */
                    m[fuzz_below(size)] ^= (uint8_t)(1u << fuzz_below(8));
                    break;
                case 2: /* a count or length */
                case 3:
                    fuzz_put(m + spots->u64[fuzz_below((uint64_t)spots->n_u64)], fuzz_value(size),
                             8);
                    break;
                case 4: /* a type id or a dimension count */
                    fuzz_put(m + spots->u32[fuzz_below((uint64_t)spots->n_u32)],
                             fuzz_below(4) ? fuzz_below(40) : fuzz_value(size), 4);
                    break;
                default: { /* any 8 bytes */
                    size_t at = fuzz_below(size - 7);
                    fuzz_put(m + at, fuzz_value(size), 8);
                    break;
                }
            }
        }
        if (fuzz_below(8) == 0) len = fuzz_below(size);
        accepted += fuzz_parse(m, len, NULL, 0);
    }
    printf("test_gguf_fuzz: %d mutations, %d still parsed\n", FUZZ_MUTATIONS, accepted);
    free(m);
}

int main(void) {
    size_t size = 0;
    uint8_t *buf = fuzz_build(&size);
    if (!buf) return test_summary("test_gguf_fuzz");
    cinder_error err = {0};
    gguf_file *g = gguf_open_memory(buf, size, &err);
    CHECK_MSG(g != NULL, "the unmutated file: %s", err.msg);
    if (g) {
        CHECK_EQ_INT(g->n_tensors, 3);
        const gguf_tensor_info *last = &g->tensors[2];
        CHECK_EQ_INT((size_t)(last->data - buf) + last->nbytes, size);
        fuzz_check_accepted(g, buf, size);
        fuzz_truncations(buf, size, g);
        fuzz_spots spots = {0};
        fuzz_find_spots(g, buf, &spots);
        fuzz_mutations(buf, size, &spots);
    }
    gguf_close(g);
    free(buf);
    return test_summary("test_gguf_fuzz");
}
