/* test_gguf.c - the GGUF writer and reader: round trips of every metadata type and tensor
 * type (versions 2 and 3, alignments 32 and 64), typed getters, and the files the reader must
 * refuse, each with a message that names what is wrong. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "gguf.h"
#include "gguf_write.h"
#include "test.h"

/* ------------------------------------------------------------------------------------------ */
/* Helpers */

static uint8_t *test_build(gguf_writer *w, size_t *size) {
    cinder_error err = {0};
    uint8_t *buf = NULL;
    cinder_status s = gguf_writer_write_buffer(w, &buf, size, &err);
    CHECK_MSG(s == CINDER_OK, "write_buffer: %s", err.msg);
    return buf;
}

/* Opens a copy of buf of exactly size bytes, so that the sanitizer sees any over-read. */
static gguf_file *test_open(const uint8_t *buf, size_t size, uint8_t **copy, cinder_error *err) {
    *copy = malloc(size ? size : 1);
    memcpy(*copy, buf, size);
    return gguf_open_memory(*copy, size, err);
}

/* Expects buf to be refused with status and a message holding every needle (NULL-ended). */
static void test_refused(const uint8_t *buf, size_t size, cinder_status status,
                         const char *const *needles, const char *what) {
    cinder_error err = {0};
    uint8_t *copy;
    gguf_file *g = test_open(buf, size, &copy, &err);
    CHECK_MSG(g == NULL, "%s: accepted", what);
    gguf_close(g);
    CHECK_MSG(err.status == status, "%s: status %s, expected %s (%s)", what,
              cinder_status_name(err.status), cinder_status_name(status), err.msg);
    for (const char *const *n = needles; *n; n++)
        CHECK_MSG(test_contains(err.msg, *n), "%s: message \"%s\" lacks \"%s\"", what, err.msg, *n);
    free(copy);
}

#define REFUSED(buf, size, status, ...)                                                            \
    test_refused(buf, size, status, (const char *const[]){__VA_ARGS__, NULL}, #__VA_ARGS__)

/* Offset of the n-th occurrence (from 0) of needle in buf; the test fails when absent. */
static size_t test_find(const uint8_t *buf, size_t size, const char *needle, int nth) {
    size_t len = strlen(needle);
    for (size_t i = 0; i + len <= size; i++)
        if (memcmp(buf + i, needle, len) == 0 && nth-- == 0) return i;
    CHECK_MSG(0, "'%s' not in the file", needle);
    return 0;
}

static void test_put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void test_put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Where the fields of a tensor info sit, found from its name in the file. */
typedef struct test_info_at {
    size_t n_dims, ne, type, offset;
} test_info_at;

static test_info_at test_info_fields(const uint8_t *buf, size_t size, const char *name,
                                     uint32_t n_dims) {
    /* Tensor names are written after the metadata: the last occurrence is the info. */
    size_t at = 0, len = strlen(name);
    for (size_t i = 0; i + len <= size; i++)
        if (memcmp(buf + i, name, len) == 0 && i >= 8 && buf[i - 8] == len) at = i;
    CHECK_MSG(at, "tensor info '%s' not found", name);
    test_info_at f;
    f.n_dims = at + len;
    f.ne = f.n_dims + 4;
    f.type = f.ne + 8 * n_dims;
    f.offset = f.type + 4;
    return f;
}

/* ------------------------------------------------------------------------------------------ */
/* The round-trip file */

/* One tensor of each type, with a byte pattern of its own. */
static const struct {
    const char *name;
    dtype type;
    int n_dims;
    uint64_t ne[4];
    size_t nbytes;
} test_tensors[] = {
    {"t.f32", DTYPE_F32, 2, {3, 2}, 24},      {"t.f16", DTYPE_F16, 1, {5}, 10},
    {"t.bf16", DTYPE_BF16, 3, {2, 2, 2}, 16}, {"t.q8_0", DTYPE_Q8_0, 2, {64, 2}, 4 * 34},
    {"t.q4_0", DTYPE_Q4_0, 1, {32}, 18},      {"t.q4_1", DTYPE_Q4_1, 4, {32, 1, 1, 2}, 2 * 20},
};
#define TEST_N_TENSORS (sizeof test_tensors / sizeof test_tensors[0])
static uint8_t test_data[TEST_N_TENSORS][256];

static const char *const test_strs[] = {"hello", "", "w\xc3\xb6rld", "\xc4\xa0the", "a b"};
static const uint8_t test_u8s[] = {0, 1, 255};
static const int8_t test_i8s[] = {-128, 0, 127};
static const uint16_t test_u16s[] = {0, 65535};
static const int16_t test_i16s[] = {-32768, 32767, -1};
static const uint32_t test_u32s[] = {0, 4000000000u};
static const int32_t test_i32s[] = {-2147483647 - 1, 2147483647, 3, -5};
static const uint64_t test_u64s[] = {0, 1ull << 40};
static const int64_t test_i64s[] = {INT64_MIN, INT64_MAX};
static const float test_f32s[] = {1.5f, -0.25f, 1e-5f};
static const double test_f64s[] = {3.25, -1e300};
static const bool test_bools[] = {true, false, true};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static gguf_writer *test_writer(uint32_t version, uint32_t alignment) {
    gguf_writer *w = gguf_writer_init();
    gguf_writer_set_version(w, version);
    if (alignment != GGUF_DEFAULT_ALIGNMENT) gguf_writer_set_alignment(w, alignment);
    gguf_writer_add_u8(w, "v.u8", 200);
    gguf_writer_add_i8(w, "v.i8", -100);
    gguf_writer_add_u16(w, "v.u16", 60000);
    gguf_writer_add_i16(w, "v.i16", -30000);
    gguf_writer_add_u32(w, "v.u32", 4000000000u);
    gguf_writer_add_i32(w, "v.i32", -2000000000);
    gguf_writer_add_f32(w, "v.f32", 1.5f);
    gguf_writer_add_bool(w, "v.bool", true);
    gguf_writer_add_str(w, "v.str", "hello, w\xc3\xb6rld");
    gguf_writer_add_u64(w, "v.u64", (1ull << 63) + 5);
    gguf_writer_add_u64(w, "v.u64_small", 1ull << 40);
    gguf_writer_add_i64(w, "v.i64", -(1ll << 40));
    gguf_writer_add_f64(w, "v.f64", 3.25);
    gguf_writer_add_str(w, "v.empty_str", "");
    gguf_writer_add_arr(w, "a.u8", GGUF_TYPE_UINT8, test_u8s, N(test_u8s));
    gguf_writer_add_arr(w, "a.i8", GGUF_TYPE_INT8, test_i8s, N(test_i8s));
    gguf_writer_add_arr(w, "a.u16", GGUF_TYPE_UINT16, test_u16s, N(test_u16s));
    gguf_writer_add_arr(w, "a.i16", GGUF_TYPE_INT16, test_i16s, N(test_i16s));
    gguf_writer_add_arr(w, "a.u32", GGUF_TYPE_UINT32, test_u32s, N(test_u32s));
    gguf_writer_add_arr(w, "a.i32", GGUF_TYPE_INT32, test_i32s, N(test_i32s));
    gguf_writer_add_arr(w, "a.u64", GGUF_TYPE_UINT64, test_u64s, N(test_u64s));
    gguf_writer_add_arr(w, "a.i64", GGUF_TYPE_INT64, test_i64s, N(test_i64s));
    gguf_writer_add_arr(w, "a.f32", GGUF_TYPE_FLOAT32, test_f32s, N(test_f32s));
    gguf_writer_add_arr(w, "a.f64", GGUF_TYPE_FLOAT64, test_f64s, N(test_f64s));
    gguf_writer_add_arr(w, "a.bool", GGUF_TYPE_BOOL, test_bools, N(test_bools));
    gguf_writer_add_arr(w, "a.empty", GGUF_TYPE_INT32, NULL, 0);
    gguf_writer_add_arr_str(w, "a.str", test_strs, N(test_strs));
    for (size_t i = 0; i < TEST_N_TENSORS; i++) {
        for (size_t b = 0; b < sizeof test_data[i]; b++)
            test_data[i][b] = (uint8_t)(b * 7 + i * 31 + 1);
        gguf_writer_add_tensor(w, test_tensors[i].name, test_tensors[i].type,
                               test_tensors[i].n_dims, test_tensors[i].ne, test_data[i],
                               test_tensors[i].nbytes);
    }
    return w;
}

static int64_t test_int(const gguf_file *g, const char *key) {
    int64_t v = 0;
    cinder_error err = {0};
    CHECK_MSG(gguf_get_int(g, key, &v, &err) == CINDER_OK, "%s: %s", key, err.msg);
    return v;
}

static double test_float(const gguf_file *g, const char *key) {
    double v = 0;
    cinder_error err = {0};
    CHECK_MSG(gguf_get_float(g, key, &v, &err) == CINDER_OK, "%s: %s", key, err.msg);
    return v;
}

static const gguf_kv *test_arr(const gguf_file *g, const char *key, gguf_type type, uint64_t n) {
    gguf_type t = GGUF_TYPE_COUNT;
    uint64_t count = 0;
    cinder_error err = {0};
    CHECK_MSG(gguf_get_arr(g, key, &t, &count, &err) == CINDER_OK, "%s: %s", key, err.msg);
    CHECK_MSG(t == type && count == n, "%s: %s[%llu]", key, gguf_type_name(t),
              (unsigned long long)count);
    return gguf_kv_find(g, key);
}

/* Everything test_writer() put in, read back from g (whose file starts at base). */
static void test_check_file(const gguf_file *g, const uint8_t *base, uint32_t version,
                            uint32_t alignment) {
    cinder_error err = {0};
    CHECK_EQ_INT(g->version, version);
    CHECK_EQ_INT(g->alignment, alignment);
    CHECK_EQ_INT(g->n_kv, 27 + (alignment != GGUF_DEFAULT_ALIGNMENT));
    CHECK_EQ_INT(g->n_tensors, TEST_N_TENSORS);
    CHECK_EQ_INT(g->data_offset % alignment, 0);
    if (alignment != GGUF_DEFAULT_ALIGNMENT) {
        CHECK_EQ_INT(test_int(g, "general.alignment"), alignment);
        CHECK(gguf_str_eq(g->kv[0].key, "general.alignment"));
    } else {
        CHECK(gguf_kv_find(g, "general.alignment") == NULL);
        CHECK(gguf_str_eq(g->kv[0].key, "v.u8")); /* in the order written */
    }

    CHECK_EQ_INT(test_int(g, "v.u8"), 200);
    CHECK_EQ_INT(test_int(g, "v.i8"), -100);
    CHECK_EQ_INT(test_int(g, "v.u16"), 60000);
    CHECK_EQ_INT(test_int(g, "v.i16"), -30000);
    CHECK_EQ_INT(test_int(g, "v.u32"), 4000000000u);
    CHECK_EQ_INT(test_int(g, "v.i32"), -2000000000);
    CHECK_EQ_INT(test_int(g, "v.u64_small"), 1ll << 40);
    CHECK_EQ_INT(test_int(g, "v.i64"), -(1ll << 40));
    CHECK(test_float(g, "v.f32") == 1.5);
    CHECK(test_float(g, "v.f64") == 3.25);
    CHECK(test_float(g, "v.u8") == 200.0); /* an integer is a number too */
    bool b = false;
    CHECK(gguf_get_bool(g, "v.bool", &b, &err) == CINDER_OK && b);
    gguf_str s = {0};
    CHECK(gguf_get_str(g, "v.str", &s, &err) == CINDER_OK && gguf_str_eq(s, "hello, w\xc3\xb6rld"));
    CHECK(gguf_get_str(g, "v.empty_str", &s, &err) == CINDER_OK && s.len == 0);
    /* A uint64 above INT64_MAX does not fit gguf_get_int. */
    int64_t v;
    CHECK_EQ_INT(gguf_get_int(g, "v.u64", &v, &err), CINDER_ERR_RANGE);
    CHECK(test_contains(err.msg, "v.u64"));
    CHECK(test_float(g, "v.u64") == ldexp(1, 63) + 5 || test_float(g, "v.u64") == ldexp(1, 63));

    const gguf_kv *kv = test_arr(g, "a.u8", GGUF_TYPE_UINT8, N(test_u8s));
    for (size_t i = 0; kv && i < N(test_u8s); i++) CHECK_EQ_INT(gguf_arr_int(kv, i), test_u8s[i]);
    kv = test_arr(g, "a.i8", GGUF_TYPE_INT8, N(test_i8s));
    for (size_t i = 0; kv && i < N(test_i8s); i++) CHECK_EQ_INT(gguf_arr_int(kv, i), test_i8s[i]);
    kv = test_arr(g, "a.u16", GGUF_TYPE_UINT16, N(test_u16s));
    for (size_t i = 0; kv && i < N(test_u16s); i++) CHECK_EQ_INT(gguf_arr_int(kv, i), test_u16s[i]);
    kv = test_arr(g, "a.i16", GGUF_TYPE_INT16, N(test_i16s));
    for (size_t i = 0; kv && i < N(test_i16s); i++) CHECK_EQ_INT(gguf_arr_int(kv, i), test_i16s[i]);
    kv = test_arr(g, "a.u32", GGUF_TYPE_UINT32, N(test_u32s));
    for (size_t i = 0; kv && i < N(test_u32s); i++) CHECK_EQ_INT(gguf_arr_int(kv, i), test_u32s[i]);
    kv = test_arr(g, "a.i32", GGUF_TYPE_INT32, N(test_i32s));
    for (size_t i = 0; kv && i < N(test_i32s); i++) CHECK_EQ_INT(gguf_arr_int(kv, i), test_i32s[i]);
    kv = test_arr(g, "a.u64", GGUF_TYPE_UINT64, N(test_u64s));
    for (size_t i = 0; kv && i < N(test_u64s); i++) CHECK_EQ_INT(gguf_arr_int(kv, i), test_u64s[i]);
    kv = test_arr(g, "a.i64", GGUF_TYPE_INT64, N(test_i64s));
    for (size_t i = 0; kv && i < N(test_i64s); i++) CHECK(gguf_arr_int(kv, i) == test_i64s[i]);
    kv = test_arr(g, "a.f32", GGUF_TYPE_FLOAT32, N(test_f32s));
    for (size_t i = 0; kv && i < N(test_f32s); i++) CHECK(gguf_arr_float(kv, i) == test_f32s[i]);
    kv = test_arr(g, "a.f64", GGUF_TYPE_FLOAT64, N(test_f64s));
    for (size_t i = 0; kv && i < N(test_f64s); i++) CHECK(gguf_arr_float(kv, i) == test_f64s[i]);
    kv = test_arr(g, "a.bool", GGUF_TYPE_BOOL, N(test_bools));
    for (size_t i = 0; kv && i < N(test_bools); i++) CHECK(kv->value[i] == test_bools[i]);
    kv = test_arr(g, "a.empty", GGUF_TYPE_INT32, 0);
    CHECK(kv && kv->value_size == 0);
    kv = test_arr(g, "a.str", GGUF_TYPE_STRING, N(test_strs));
    uint64_t cursor = 0;
    for (size_t i = 0; kv && i < N(test_strs); i++) {
        s = gguf_arr_str_next(kv, &cursor);
        CHECK_MSG(gguf_str_eq(s, test_strs[i]), "string element %zu", i);
    }
    CHECK(kv && cursor == kv->value_size);

    for (size_t i = 0; i < TEST_N_TENSORS; i++) {
        const gguf_tensor_info *t = gguf_tensor_find(g, test_tensors[i].name);
        CHECK_MSG(t != NULL, "tensor %s", test_tensors[i].name);
        if (!t) continue;
        CHECK(t == &g->tensors[i]);
        CHECK_EQ_INT(t->type, test_tensors[i].type);
        CHECK_EQ_INT(t->n_dims, test_tensors[i].n_dims);
        for (int d = 0; d < GGUF_MAX_DIMS; d++)
            CHECK_EQ_INT(t->ne[d], d < test_tensors[i].n_dims ? test_tensors[i].ne[d] : 1);
        CHECK_EQ_INT(t->nbytes, test_tensors[i].nbytes);
        CHECK_EQ_INT(t->offset % alignment, 0);
        CHECK_EQ_INT((size_t)(t->data - base) % alignment, 0);
        CHECK_MSG(memcmp(t->data, test_data[i], t->nbytes) == 0, "tensor %s bytes",
                  test_tensors[i].name);
    }
    CHECK(gguf_tensor_find(g, "t.f3") == NULL);
    CHECK(gguf_tensor_find(g, "t.f32x") == NULL);
    CHECK(gguf_tensor_find(g, "") == NULL);
    CHECK(gguf_kv_find(g, "v.u") == NULL);
}

static void test_round_trip(uint32_t version, uint32_t alignment) {
    gguf_writer *w = test_writer(version, alignment);
    size_t size = 0;
    uint8_t *buf = test_build(w, &size);
    cinder_error err = {0};
    uint8_t *copy;
    gguf_file *g = test_open(buf, size, &copy, &err);
    CHECK_MSG(g != NULL, "v%u align %u: %s", version, alignment, err.msg);
    if (g) test_check_file(g, copy, version, alignment);
    gguf_close(g);
    free(copy);

    /* The same through a file on disk. */
    char path[64];
    snprintf(path, sizeof path, "/tmp/cinder_test_gguf_%d.gguf", (int)getpid());
    CHECK_MSG(gguf_writer_write_file(w, path, &err) == CINDER_OK, "%s", err.msg);
    g = gguf_open(path, &err);
    CHECK_MSG(g != NULL, "%s", err.msg);
    if (g) {
        CHECK_EQ_INT(g->file.size, size);
        CHECK(memcmp(g->file.data, buf, size) == 0);
        test_check_file(g, g->file.data, version, alignment);
    }
    gguf_close(g);
    remove(path);
    free(buf);
    gguf_writer_free(w);
}

/* ------------------------------------------------------------------------------------------ */
/* Getters and refusals */

static void test_getter_errors(void) {
    gguf_writer *w = test_writer(3, 32);
    size_t size;
    uint8_t *buf = test_build(w, &size), *copy;
    cinder_error err = {0};
    gguf_file *g = test_open(buf, size, &copy, &err);
    CHECK(g != NULL);
    if (g) {
        int64_t i;
        double f;
        bool b;
        gguf_str s;
        gguf_type t;
        uint64_t n;
        CHECK_EQ_INT(gguf_get_int(g, "v.str", &i, &err), CINDER_ERR_FORMAT);
        CHECK(test_contains(err.msg, "'v.str'") && test_contains(err.msg, "string"));
        CHECK_EQ_INT(gguf_get_int(g, "v.f32", &i, &err), CINDER_ERR_FORMAT);
        CHECK(test_contains(err.msg, "'v.f32'"));
        CHECK_EQ_INT(gguf_get_int(g, "a.i32", &i, &err), CINDER_ERR_FORMAT);
        CHECK(test_contains(err.msg, "'a.i32'") && test_contains(err.msg, "array"));
        CHECK_EQ_INT(gguf_get_int(g, "v.bool", &i, &err), CINDER_ERR_FORMAT);
        CHECK_EQ_INT(gguf_get_float(g, "v.str", &f, &err), CINDER_ERR_FORMAT);
        CHECK(test_contains(err.msg, "'v.str'"));
        CHECK_EQ_INT(gguf_get_bool(g, "v.u8", &b, &err), CINDER_ERR_FORMAT);
        CHECK(test_contains(err.msg, "'v.u8'"));
        CHECK_EQ_INT(gguf_get_str(g, "v.i32", &s, &err), CINDER_ERR_FORMAT);
        CHECK(test_contains(err.msg, "'v.i32'"));
        CHECK_EQ_INT(gguf_get_str(g, "a.str", &s, &err), CINDER_ERR_FORMAT);
        CHECK_EQ_INT(gguf_get_arr(g, "v.str", &t, &n, &err), CINDER_ERR_FORMAT);
        CHECK(test_contains(err.msg, "'v.str'") && test_contains(err.msg, "not an array"));
        CHECK_EQ_INT(gguf_get_int(g, "no.such.key", &i, &err), CINDER_ERR_NOT_FOUND);
        CHECK(test_contains(err.msg, "'no.such.key'"));
        CHECK_EQ_INT(gguf_get_str(g, "no.such.key", &s, NULL), CINDER_ERR_NOT_FOUND);
    }
    gguf_close(g);
    free(copy);
    free(buf);
    gguf_writer_free(w);
}

/* A one-tensor file with the given GGML type id (patched in after writing). */
static uint8_t *test_one_tensor(uint32_t ggml_type, size_t *size) {
    static float data[32];
    gguf_writer *w = gguf_writer_init();
    gguf_writer_add_str(w, "general.architecture", "llama");
    uint64_t ne[2] = {32, 1};
    gguf_writer_add_tensor_ggml(w, "blk.0.attn_q.weight", ggml_type, 2, ne, data, sizeof data);
    uint8_t *buf = test_build(w, size);
    gguf_writer_free(w);
    return buf;
}

static void test_unsupported_types(void) {
    struct {
        uint32_t id;
        const char *name;
    } cases[] = {{12, "Q4_K"},    {14, "Q6_K"},       {6, "Q5_0"},     {9, "Q8_1"},
                 {16, "IQ2_XXS"}, {99, "type id 99"}, {4, "type id 4"}};
    for (size_t i = 0; i < N(cases); i++) {
        size_t size;
        uint8_t *buf = test_one_tensor(cases[i].id, &size);
        REFUSED(buf, size, CINDER_ERR_UNSUPPORTED, cases[i].name, "'blk.0.attn_q.weight'",
                "not supported");
        free(buf);
    }
    CHECK(strcmp(gguf_ggml_type_name(12), "Q4_K") == 0);
    CHECK(gguf_ggml_type_name(5) == NULL && gguf_ggml_type_name(1000) == NULL);
    dtype t;
    for (int d = 0; d < DTYPE_COUNT; d++)
        CHECK(gguf_ggml_type_to_dtype(gguf_ggml_type_from_dtype((dtype)d), &t) && t == (dtype)d);
}

static void test_bad_header(void) {
    size_t size;
    uint8_t *buf = test_one_tensor(GGML_TYPE_F32, &size);
    REFUSED(buf, 0, CINDER_ERR_FORMAT, "header", "magic", "truncated");
    uint8_t *bad = malloc(size);
    memcpy(bad, buf, size);
    bad[0] = 'X';
    REFUSED(bad, size, CINDER_ERR_FORMAT, "magic");
    memcpy(bad, buf, size);
    test_put_u32(bad + 4, 1);
    REFUSED(bad, size, CINDER_ERR_UNSUPPORTED, "version 1");
    test_put_u32(bad + 4, 4);
    REFUSED(bad, size, CINDER_ERR_UNSUPPORTED, "version 4");
    test_put_u32(bad + 4, 3u << 24); /* version 3 written big-endian */
    REFUSED(bad, size, CINDER_ERR_UNSUPPORTED, "big-endian");
    memcpy(bad, buf, size);
    test_put_u64(bad + 8, 1ull << 60);
    REFUSED(bad, size, CINDER_ERR_FORMAT, "tensor count");
    memcpy(bad, buf, size);
    test_put_u64(bad + 16, UINT64_MAX);
    REFUSED(bad, size, CINDER_ERR_FORMAT, "metadata count");
    memcpy(bad, buf, size);
    test_put_u64(bad + 24, 1ull << 62); /* the first key's length */
    REFUSED(bad, size, CINDER_ERR_FORMAT, "metadata key #0", "key", "past the end");
    memcpy(bad, buf, size);
    test_put_u64(bad + 24, 0);
    REFUSED(bad, size, CINDER_ERR_FORMAT, "metadata key #0", "empty key");
    free(bad);
    free(buf);
}

static void test_bad_alignment(void) {
    struct {
        const char *what;
        uint32_t type;
        uint8_t value[8];
        size_t size;
        const char *needle;
    } cases[] = {
        {"48", GGUF_TYPE_UINT32, {48}, 4, "48 is not a nonzero power of two"},
        {"0", GGUF_TYPE_UINT32, {0}, 4, "0 is not a nonzero power of two"},
        {"-32", GGUF_TYPE_INT32, {0xe0, 0xff, 0xff, 0xff}, 4, "-32 is not"},
        {"string", GGUF_TYPE_STRING, {0, 0, 0, 0, 0, 0, 0, 0}, 8, "string, not an integer"},
        {"f32", GGUF_TYPE_FLOAT32, {0, 0, 0, 0x42}, 4, "float32, not an integer"},
    };
    static float data[8];
    uint64_t ne[1] = {8};
    for (size_t i = 0; i < N(cases); i++) {
        gguf_writer *w = gguf_writer_init();
        gguf_writer_add_raw(w, "general.alignment", cases[i].type, cases[i].value, cases[i].size);
        gguf_writer_add_tensor(w, "x", DTYPE_F32, 1, ne, data, sizeof data);
        size_t size;
        uint8_t *buf = test_build(w, &size);
        REFUSED(buf, size, CINDER_ERR_FORMAT, "general.alignment", cases[i].needle);
        free(buf);
        gguf_writer_free(w);
    }
    /* Any integer type will do for a good value. */
    gguf_writer *w = gguf_writer_init();
    uint8_t v16[2] = {32, 0};
    gguf_writer_add_raw(w, "general.alignment", GGUF_TYPE_UINT16, v16, 2);
    gguf_writer_add_tensor(w, "x", DTYPE_F32, 1, ne, data, sizeof data);
    size_t size;
    uint8_t *buf = test_build(w, &size), *copy;
    cinder_error err = {0};
    gguf_file *g = test_open(buf, size, &copy, &err);
    CHECK_MSG(g && g->alignment == 32, "%s", err.msg);
    gguf_close(g);
    free(copy);
    free(buf);
    gguf_writer_free(w);
}

static void test_duplicates(void) {
    static float data[8];
    uint64_t ne[1] = {8};
    gguf_writer *w = gguf_writer_init();
    gguf_writer_add_u32(w, "dup.aa", 1);
    gguf_writer_add_u32(w, "dup.ab", 2);
    gguf_writer_add_tensor(w, "t.aa", DTYPE_F32, 1, ne, data, sizeof data);
    gguf_writer_add_tensor(w, "t.ab", DTYPE_F32, 1, ne, data, sizeof data);
    size_t size;
    uint8_t *buf = test_build(w, &size);
    gguf_writer_free(w);

    size_t at = test_find(buf, size, "dup.ab", 0);
    buf[at + 5] = 'a';
    REFUSED(buf, size, CINDER_ERR_FORMAT, "key #1 'dup.aa' repeats key #0");
    buf[at + 5] = 'b';
    at = test_find(buf, size, "t.ab", 0);
    buf[at + 3] = 'a';
    REFUSED(buf, size, CINDER_ERR_FORMAT, "tensor #1 't.aa' repeats", "tensor #0");
    free(buf);

    /* The writer refuses them in the first place, and remembers. */
    w = gguf_writer_init();
    CHECK_EQ_INT(gguf_writer_add_u32(w, "k", 1), CINDER_OK);
    CHECK_EQ_INT(gguf_writer_add_u32(w, "k", 2), CINDER_ERR_ARG);
    CHECK_EQ_INT(gguf_writer_add_u32(w, "other", 2), CINDER_ERR_ARG);
    cinder_error err = {0};
    uint8_t *out;
    CHECK_EQ_INT(gguf_writer_write_buffer(w, &out, &size, &err), CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "'k' added twice") && out == NULL);
    gguf_writer_free(w);
    w = gguf_writer_init();
    uint64_t ne2[2] = {48, 2};
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "q", DTYPE_Q8_0, 2, ne2, data, 102), CINDER_ERR_ARG);
    gguf_writer_free(w);
    w = gguf_writer_init();
    CHECK_EQ_INT(gguf_writer_add_tensor(w, "f", DTYPE_F32, 1, ne, data, 4), CINDER_ERR_ARG);
    CHECK_EQ_INT(gguf_writer_set_alignment(w, 24), CINDER_ERR_ARG);
    gguf_writer_free(w);
}

static void test_bad_tensor_infos(void) {
    static uint8_t data[2 * 34];
    gguf_writer *w = gguf_writer_init();
    uint64_t ne[2] = {64, 1};
    gguf_writer_add_tensor(w, "first", DTYPE_Q8_0, 2, ne, data, sizeof data);
    gguf_writer_add_tensor(w, "second", DTYPE_Q8_0, 2, ne, data, sizeof data);
    size_t size;
    uint8_t *buf = test_build(w, &size);
    gguf_writer_free(w);
    test_info_at f = test_info_fields(buf, size, "second", 2);
    uint8_t *bad = malloc(size);

#define PATCH(put, field, value, status, ...)                                                      \
    do {                                                                                           \
        memcpy(bad, buf, size);                                                                    \
        put(bad + (field), value);                                                                 \
        REFUSED(bad, size, status, __VA_ARGS__);                                                   \
    } while (0)
    PATCH(test_put_u32, f.n_dims, 0, CINDER_ERR_FORMAT, "tensor #1 'second'", "0 dimensions");
    PATCH(test_put_u32, f.n_dims, 5, CINDER_ERR_FORMAT, "tensor #1 'second'", "5 dimensions");
    PATCH(test_put_u64, f.ne, 0, CINDER_ERR_FORMAT, "'second'", "dimension 0 is 0");
    PATCH(test_put_u64, f.ne, 48, CINDER_ERR_FORMAT, "'second'", "48 values", "Q8_0 blocks");
    PATCH(test_put_u64, f.ne + 8, 1ull << 62, CINDER_ERR_FORMAT, "'second'", "overflows");
    PATCH(test_put_u64, f.ne + 8, 1ull << 40, CINDER_ERR_FORMAT, "tensor 'second'",
          "past end of file");
    PATCH(test_put_u32, f.type, 12, CINDER_ERR_UNSUPPORTED, "'second'", "Q4_K");
    PATCH(test_put_u64, f.offset, 8, CINDER_ERR_FORMAT, "'second'", "data offset 8",
          "alignment 32");
    PATCH(test_put_u64, f.offset, 128, CINDER_ERR_FORMAT, "tensor 'second'", "data [offset 128",
          "past end of file");
    PATCH(test_put_u64, f.offset, UINT64_MAX - 31, CINDER_ERR_FORMAT, "tensor 'second'",
          "past end of file");
    PATCH(test_put_u64, f.n_dims - 6 - 8, 0, CINDER_ERR_FORMAT, "tensor #1", "empty name");
#undef PATCH
    /* Truncated inside the data of the last tensor (68 bytes, then 28 of padding). */
    REFUSED(buf, size - 29, CINDER_ERR_FORMAT, "tensor 'second'", "past end of file");
    size_t trimmed = size - 28; /* without the padding after the last tensor it is still good */
    cinder_error err = {0};
    uint8_t *copy;
    gguf_file *g = test_open(buf, trimmed, &copy, &err);
    CHECK_MSG(g != NULL, "%s", err.msg);
    gguf_close(g);
    free(copy);
    free(bad);
    free(buf);
}

/* Values whose bytes the writer does not check: nested arrays, bad bools, unknown types. */
static void test_odd_values(void) {
    /* [[1, 2, 3] as uint8, ["hi"]]: an array of two arrays, kept as an opaque value. */
    uint8_t nested[] = {GGUF_TYPE_ARRAY,
                        0,
                        0,
                        0,
                        2,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        GGUF_TYPE_UINT8,
                        0,
                        0,
                        0,
                        3,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        1,
                        2,
                        3,
                        GGUF_TYPE_STRING,
                        0,
                        0,
                        0,
                        1,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        2,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        'h',
                        'i'};
    gguf_writer *w = gguf_writer_init();
    gguf_writer_add_raw(w, "nested", GGUF_TYPE_ARRAY, nested, sizeof nested);
    gguf_writer_add_u32(w, "after", 7);
    size_t size;
    uint8_t *buf = test_build(w, &size), *copy;
    gguf_writer_free(w);
    cinder_error err = {0};
    gguf_file *g = test_open(buf, size, &copy, &err);
    CHECK_MSG(g != NULL, "%s", err.msg);
    if (g) {
        gguf_type t;
        uint64_t n;
        CHECK(gguf_get_arr(g, "nested", &t, &n, &err) == CINDER_OK && t == GGUF_TYPE_ARRAY &&
              n == 2);
        CHECK_EQ_INT(gguf_kv_find(g, "nested")->value_size, sizeof nested - 12);
        CHECK_EQ_INT(test_int(g, "after"), 7);
    }
    gguf_close(g);
    free(copy);
    /* Patch the inner string's length past the end. */
    test_put_u64(buf + test_find(buf, size, "hi", 0) - 8, 1000);
    REFUSED(buf, size, CINDER_ERR_FORMAT, "'nested'", "past the end");
    free(buf);

    /* Ten arrays deep. */
    uint8_t deep[10 * 12 + 12];
    for (int i = 0; i < 10; i++) {
        test_put_u32(deep + 12 * i, GGUF_TYPE_ARRAY);
        test_put_u64(deep + 12 * i + 4, 1);
    }
    test_put_u32(deep + 120, GGUF_TYPE_UINT8);
    test_put_u64(deep + 124, 0);
    w = gguf_writer_init();
    gguf_writer_add_raw(w, "deep", GGUF_TYPE_ARRAY, deep, sizeof deep);
    buf = test_build(w, &size);
    gguf_writer_free(w);
    REFUSED(buf, size, CINDER_ERR_FORMAT, "'deep'", "nested");
    free(buf);

    struct {
        uint32_t type;
        uint8_t value[16];
        size_t size;
        const char *needle;
    } cases[] = {
        {GGUF_TYPE_BOOL, {2}, 1, "bool value 2"},
        {GGUF_TYPE_ARRAY,
         {GGUF_TYPE_BOOL, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 7},
         14,
         "bool element #1 value 7"},
        {13, {0}, 1, "unknown value type 13"},
        {GGUF_TYPE_ARRAY, {13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 12, "unknown array element type"},
        {GGUF_TYPE_ARRAY,
         {GGUF_TYPE_UINT32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10},
         12,
         "uint32 elements at offset 51 runs past the end"},
        {GGUF_TYPE_ARRAY,
         {GGUF_TYPE_STRING, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10},
         12,
         "its count 1152921504606846976 cannot fit"},
        {GGUF_TYPE_STRING, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 8, "past the end"},
    };
    for (size_t i = 0; i < N(cases); i++) {
        w = gguf_writer_init();
        gguf_writer_add_raw(w, "odd", cases[i].type, cases[i].value, cases[i].size);
        buf = test_build(w, &size);
        gguf_writer_free(w);
        REFUSED(buf, size, CINDER_ERR_FORMAT, "metadata key #0 'odd'", cases[i].needle);
        free(buf);
    }
    /* A value cut short by the end of the file (the writer pads the end of the metadata, so
     * cut the file right after the 3 bytes: header 24, key 8 + 3, type 4). */
    w = gguf_writer_init();
    gguf_writer_add_raw(w, "odd", GGUF_TYPE_UINT64, "\1\2\3", 3);
    buf = test_build(w, &size);
    gguf_writer_free(w);
    REFUSED(buf, 42, CINDER_ERR_FORMAT, "metadata key #0 'odd'",
            "value truncated at offset 39 (file is 42 bytes)");
    free(buf);
}

/* A file without tensors may end right after its metadata (no padding). */
static void test_no_tensors(void) {
    gguf_writer *w = gguf_writer_init();
    gguf_writer_add_u32(w, "k", 1);
    size_t size;
    uint8_t *buf = test_build(w, &size), *copy;
    gguf_writer_free(w);
    cinder_error err = {0};
    gguf_file *g = test_open(buf, size, &copy, &err);
    CHECK_MSG(g && g->n_tensors == 0 && g->n_kv == 1, "%s", err.msg);
    gguf_close(g);
    free(copy);
    free(buf);
    g = gguf_open("/nonexistent/cinder.gguf", &err);
    CHECK(g == NULL && err.status == CINDER_ERR_IO && test_contains(err.msg, "/nonexistent"));
}

/* The real model, when it is here: every tokenizer string walked in O(n). */
static void test_real_file(void) {
    cinder_error err = {0};
    gguf_file *g = gguf_open(CINDER_DEFAULT_MODEL, &err);
    if (!g) {
        printf("test_gguf: %s not here (%s); skipping the real-file check\n", CINDER_DEFAULT_MODEL,
               err.msg);
        return;
    }
    CHECK_EQ_INT(g->version, 3);
    CHECK_EQ_INT(g->n_tensors, 272);
    gguf_str s;
    CHECK(gguf_get_str(g, "general.architecture", &s, &err) == CINDER_OK &&
          gguf_str_eq(s, "llama"));
    const gguf_kv *kv = test_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, 49152);
    uint64_t cursor = 0, total = 0;
    for (uint64_t i = 0; kv && i < kv->arr_n; i++) {
        s = gguf_arr_str_next(kv, &cursor);
        if (i == 1) CHECK(gguf_str_eq(s, "<|im_start|>"));
        total += s.len;
    }
    CHECK(kv && cursor == kv->value_size && total > 0);
    const gguf_tensor_info *t = gguf_tensor_find(g, "token_embd.weight");
    CHECK(t && t->type == DTYPE_Q8_0 && t->ne[0] == 576 && t->ne[1] == 49152);
    gguf_close(g);
}

int main(void) {
    test_round_trip(3, 32);
    test_round_trip(3, 64);
    test_round_trip(2, 32);
    test_round_trip(2, 64);
    test_getter_errors();
    test_unsupported_types();
    test_bad_header();
    test_bad_alignment();
    test_duplicates();
    test_bad_tensor_infos();
    test_odd_values();
    test_no_tensors();
    test_real_file();
    return test_summary("test_gguf");
}
