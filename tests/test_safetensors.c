/* test_safetensors.c - the safetensors reader and writer: round trips, every kind of corrupt
 * header, truncations at every length and random header mutations (no crash, clean errors). */
#include "safetensors.h"

#include <math.h>

#include "hf_test_util.h"
#include "test.h"

/* ---- round trip ---- */

static void test_round_trip(const char *dir) {
    float f32[6] = {1.0f, -2.5f, 3.25f, 0.0f, -0.0f, 1e-30f};
    uint16_t f16[5], bf16[8];
    for (int i = 0; i < 5; i++) f16[i] = f32_to_fp16(0.5f * (float)i - 1.0f);
    for (int i = 0; i < 8; i++) bf16[i] = f32_to_bf16((float)i * 3.0f);
    float scalar = 42.0f;

    cinder_error err = {0};
    st_writer *w = st_writer_init();
    CHECK(w != NULL);
    /* An odd-sized F16 tensor first: the writer must still keep the F32 data aligned. */
    CHECK_EQ_INT(st_writer_add(w, "h.f16", DTYPE_F16, 1, (int64_t[]){5}, f16, sizeof f16, &err),
                 CINDER_OK);
    CHECK_EQ_INT(st_writer_add(w, "a.f32", DTYPE_F32, 2, (int64_t[]){2, 3}, f32, sizeof f32, &err),
                 CINDER_OK);
    CHECK_EQ_INT(
        st_writer_add(w, "b.bf16", DTYPE_BF16, 3, (int64_t[]){2, 2, 2}, bf16, sizeof bf16, &err),
        CINDER_OK);
    CHECK_EQ_INT(st_writer_add(w, "scalar", DTYPE_F32, 0, NULL, &scalar, 4, &err), CINDER_OK);
    CHECK_EQ_INT(
        st_writer_add(w, "empty \"quoted\"", DTYPE_F16, 2, (int64_t[]){0, 7}, NULL, 0, &err),
        CINDER_OK);
    CHECK_EQ_INT(st_writer_set_metadata(w, "format", "pt", &err), CINDER_OK);

    /* The writer's own checks. */
    CHECK_EQ_INT(st_writer_add(w, "a.f32", DTYPE_F32, 1, (int64_t[]){1}, f32, 4, &err),
                 CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "added twice"));
    CHECK_EQ_INT(st_writer_add(w, "x", DTYPE_F32, 1, (int64_t[]){3}, f32, 8, &err), CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "shape needs 12"));
    CHECK_EQ_INT(st_writer_add(w, "q", DTYPE_Q8_0, 1, (int64_t[]){32}, f32, 34, &err),
                 CINDER_ERR_UNSUPPORTED);
    CHECK_EQ_INT(st_writer_add(w, "__metadata__", DTYPE_F32, 1, (int64_t[]){1}, f32, 4, &err),
                 CINDER_ERR_ARG);

    const char *path = tu_path(dir, "round.safetensors");
    CHECK_EQ_INT(st_writer_write(w, path, &err), CINDER_OK);
    st_writer_free(w);

    st_file *f = st_open(path, &err);
    CHECK_MSG(f != NULL, "%s", err.msg);
    if (!f) return;
    CHECK_EQ_INT(f->n_tensors, 5);
    CHECK_EQ_INT(f->header_len % 8, 0);

    const st_tensor *t = st_tensor_find(f, "a.f32");
    CHECK(t && t->type == DTYPE_F32 && t->n_dims == 2 && t->shape[0] == 2 && t->shape[1] == 3);
    CHECK(t && t->nbytes == sizeof f32 && memcmp(t->data, f32, sizeof f32) == 0);
    CHECK(t && (uintptr_t)t->data % 4 == 0);
    t = st_tensor_find(f, "h.f16");
    CHECK(t && t->type == DTYPE_F16 && t->n_dims == 1 && t->shape[0] == 5);
    CHECK(t && t->nbytes == sizeof f16 && memcmp(t->data, f16, sizeof f16) == 0);
    t = st_tensor_find(f, "b.bf16");
    CHECK(t && t->type == DTYPE_BF16 && t->n_dims == 3 && t->shape[2] == 2);
    CHECK(t && t->nbytes == sizeof bf16 && memcmp(t->data, bf16, sizeof bf16) == 0);
    CHECK(t && (uintptr_t)t->data % 2 == 0);
    t = st_tensor_find(f, "scalar");
    CHECK(t && t->n_dims == 0 && t->nbytes == 4 && memcmp(t->data, &scalar, 4) == 0);
    t = st_tensor_find(f, "empty \"quoted\"");
    CHECK(t && t->n_dims == 2 && t->shape[0] == 0 && t->shape[1] == 7 && t->nbytes == 0);
    CHECK(t && t->data == NULL);
    CHECK(st_tensor_find(f, "missing") == NULL);
    CHECK(st_tensor_find(f, "") == NULL);

    /* Taking the mapping leaves the data valid and st_close no longer unmaps it. */
    mapped_file mf;
    st_file_take_mapping(f, &mf);
    t = st_tensor_find(f, "a.f32");
    const uint8_t *data = t ? t->data : NULL;
    st_close(f);
    CHECK(mf.data != NULL && data && memcmp(data, f32, sizeof f32) == 0);
    mapped_file_close(&mf);

    /* An empty file and a missing one. */
    const char *empty = tu_path(dir, "empty.safetensors");
    tu_write_file(empty, "", 0);
    CHECK(st_open(empty, &err) == NULL);
    CHECK_EQ_INT(err.status, CINDER_ERR_FORMAT);
    CHECK(test_contains(err.msg, "empty.safetensors") && test_contains(err.msg, "too short"));
    CHECK(st_open(tu_path(dir, "nope.safetensors"), &err) == NULL);
    CHECK_EQ_INT(err.status, CINDER_ERR_IO);
    st_close(NULL);
}

/* ---- corrupt headers ---- */

typedef struct bad_case {
    const char *header;
    size_t data_size;
    cinder_status status;
    const char *expect; /* a piece of the message */
} bad_case;

#define F32_2 "\"dtype\":\"F32\",\"shape\":[2]"

static const bad_case bad_cases[] = {
    {"{\"a\":{\"dtype\":\"F32\"", 8, CINDER_ERR_FORMAT, "not valid JSON"},
    {"", 0, CINDER_ERR_FORMAT, "header is empty"},
    {"[1, 2]", 0, CINDER_ERR_FORMAT, "must be a JSON object, got [1,2]"},
    {"\"str\"", 0, CINDER_ERR_FORMAT, "must be a JSON object"},
    {"{} x", 0, CINDER_ERR_FORMAT, "after its JSON value"},
    {"{}{}", 0, CINDER_ERR_FORMAT, "after its JSON value"},
    {"{\"a\":5}", 0, CINDER_ERR_FORMAT, "tensor 'a': entry must be a JSON object, got 5"},
    {"{\"\":{" F32_2 ",\"data_offsets\":[0,8]}}", 8, CINDER_ERR_FORMAT, "empty name"},
    /* dtype */
    {"{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, CINDER_ERR_UNSUPPORTED,
     "tensor 'w': dtype \"F64\" is not supported"},
    {"{\"w\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 8, CINDER_ERR_UNSUPPORTED,
     "\"I8\""},
    {"{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 8,
     CINDER_ERR_UNSUPPORTED, "F8_E4M3"},
    {"{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, CINDER_ERR_UNSUPPORTED,
     "\"f32\""},
    {"{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 8, CINDER_ERR_FORMAT,
     "'dtype' must be a string, got 32"},
    {"{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 8, CINDER_ERR_FORMAT, "missing 'dtype'"},
    /* shape */
    {"{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 8, CINDER_ERR_FORMAT, "missing 'shape'"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 8, CINDER_ERR_FORMAT,
     "'shape'[0] must be a non-negative integer (at most 2^53), got -1"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,4]}}", 8, CINDER_ERR_FORMAT,
     "'shape'[1] must be a non-negative integer"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,4]}}", 8, CINDER_ERR_FORMAT,
     "'shape'[0]"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[18014398509481984],\"data_offsets\":[0,4]}}", 8,
     CINDER_ERR_FORMAT, "'shape'[0]"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,4]}}", 8, CINDER_ERR_FORMAT,
     "got \"2\""},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1e999],\"data_offsets\":[0,4]}}", 8, CINDER_ERR_FORMAT,
     "'shape'[0]"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 8, CINDER_ERR_FORMAT,
     "'shape' must be an array"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 8,
     CINDER_ERR_FORMAT, "'shape' has 5 dimensions (at most 4)"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,4]}}", 8,
     CINDER_ERR_FORMAT, "overflows"},
    /* data_offsets */
    {"{\"w\":{" F32_2 "}}", 8, CINDER_ERR_FORMAT, "missing 'data_offsets'"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":[0,8]}}", 4, CINDER_ERR_FORMAT,
     "tensor 'w': data_offsets [0, 8) exceed the data section (4 bytes)"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":[8,0]}}", 8, CINDER_ERR_FORMAT, "end before they begin"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":[0,12]}}", 16, CINDER_ERR_FORMAT,
     "hold 12 bytes but a F32 tensor of shape [2] needs 8"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":[-4,4]}}", 8, CINDER_ERR_FORMAT, "got [-4,4]"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":[0.5,8.5]}}", 16, CINDER_ERR_FORMAT, "'data_offsets'"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":[0]}}", 8, CINDER_ERR_FORMAT, "[begin, end]"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":[0,8,16]}}", 16, CINDER_ERR_FORMAT, "[begin, end]"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":[\"0\",\"8\"]}}", 8, CINDER_ERR_FORMAT, "[begin, end]"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":{\"0\":8}}}", 8, CINDER_ERR_FORMAT, "[begin, end]"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":[0,18446744073709551616]}}", 8, CINDER_ERR_FORMAT,
     "at most 2^53"},
    /* the whole set */
    {"{\"w\":{" F32_2 ",\"data_offsets\":[0,8]},\"v\":{" F32_2 ",\"data_offsets\":[4,12]}}", 12,
     CINDER_ERR_FORMAT, "tensors 'w' [0, 8) and 'v' [4, 12) overlap"},
    {"{\"w\":{" F32_2 ",\"data_offsets\":[0,8]},\"w\":{" F32_2 ",\"data_offsets\":[8,16]}}", 16,
     CINDER_ERR_FORMAT, "tensor 'w' appears twice"},
    {"{\"__metadata__\":{\"format\":1}}", 0, CINDER_ERR_FORMAT, "'__metadata__' must be"},
    {"{\"__metadata__\":[]}", 0, CINDER_ERR_FORMAT, "'__metadata__' must be"},
};

static void test_bad_headers(void) {
    cinder_error err = {0};
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        size_t size;
        uint8_t *img = tu_st_image(c->header, UINT64_MAX, c->data_size, &size);
        err.msg[0] = '\0';
        st_file *f = st_open_memory(img, size, "bad.safetensors", &err);
        CHECK_MSG(f == NULL, "case %zu was accepted: %s", i, c->header);
        st_close(f);
        CHECK_MSG(err.status == c->status, "case %zu: status %d, expected %d (%s)", i, err.status,
                  c->status, err.msg);
        CHECK_MSG(test_contains(err.msg, c->expect), "case %zu: '%s' lacks '%s'", i, err.msg,
                  c->expect);
        CHECK_MSG(strncmp(err.msg, "bad.safetensors: ", 17) == 0, "case %zu: '%s'", i, err.msg);
        free(img);
    }

    /* The message from the brief, word for word. */
    size_t size;
    uint8_t *img = tu_st_image("{\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[1024],"
                               "\"data_offsets\":[0,4096]}}",
                               UINT64_MAX, 2048, &size);
    CHECK(st_open_memory(img, size, "model.safetensors", &err) == NULL);
    CHECK_STR_EQ(err.msg, "model.safetensors: tensor 'model.norm.weight': data_offsets [0, 4096) "
                          "exceed the data section (2048 bytes)");
    free(img);

    /* Header lengths that do not fit the file. */
    img = tu_st_image("{}", 1000, 10, &size);
    CHECK(st_open_memory(img, size, "x", &err) == NULL);
    CHECK(test_contains(err.msg, "header length 1000 exceeds the 12 bytes"));
    free(img);
    img = tu_st_image("{}", UINT64_MAX - 1, 10, &size);
    CHECK(st_open_memory(img, size, "x", &err) == NULL);
    CHECK(test_contains(err.msg, "implausibly large"));
    free(img);
    img = tu_st_image("{}", (uint64_t)ST_MAX_HEADER_BYTES + 1, 10, &size);
    CHECK(st_open_memory(img, size, "x", &err) == NULL);
    CHECK(test_contains(err.msg, "implausibly large"));
    free(img);

    /* Accepted oddities: padding, metadata, gaps, zero-size tensors at any offset. */
    img =
        tu_st_image("{\"__metadata__\":{\"format\":\"pt\"},\"z\":{\"dtype\":\"BF16\",\"shape\":[0],"
                    "\"data_offsets\":[4,4]},\"w\":{" F32_2 ",\"data_offsets\":[0,8]},"
                    "\"v\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[10,12]}}   \n",
                    UINT64_MAX, 16, &size);
    st_file *f = st_open_memory(img, size, "ok", &err);
    CHECK_MSG(f != NULL, "%s", err.msg);
    if (f) {
        CHECK_EQ_INT(f->n_tensors, 3);
        const st_tensor *v = st_tensor_find(f, "v");
        CHECK(v && v->n_dims == 0 && v->nbytes == 2 && v->data == img + size - 16 + 10);
    }
    st_close(f);
    free(img);
}

/* ---- robustness ---- */

/* A small valid file image, built by the writer. */
static uint8_t *valid_image(const char *dir, size_t *size) {
    float a[12];
    uint16_t b[6];
    for (int i = 0; i < 12; i++) a[i] = (float)i;
    for (int i = 0; i < 6; i++) b[i] = f32_to_bf16((float)-i);
    cinder_error err = {0};
    st_writer *w = st_writer_init();
    st_writer_add(w, "model.layers.0.self_attn.q_proj.weight", DTYPE_F32, 2, (int64_t[]){3, 4}, a,
                  sizeof a, &err);
    st_writer_add(w, "model.norm.weight", DTYPE_BF16, 1, (int64_t[]){6}, b, sizeof b, &err);
    st_writer_add(w, "s", DTYPE_F16, 0, NULL, b, 2, &err);
    const char *path = tu_path(dir, "valid.safetensors");
    CHECK_EQ_INT(st_writer_write(w, path, &err), CINDER_OK);
    st_writer_free(w);
    FILE *fp = fopen(path, "rb");
    uint8_t *buf = malloc(4096);
    *size = fp ? fread(buf, 1, 4096, fp) : 0;
    if (fp) fclose(fp);
    return buf;
}

/* Every tensor a successful parse returns lies inside the image. */
static void check_inside(const st_file *f, const uint8_t *img, size_t size) {
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (!t->nbytes) continue;
        CHECK(t->data >= img && t->nbytes <= size &&
              t->data - img <= (ptrdiff_t)(size - t->nbytes));
    }
}

static void test_truncations(const char *dir) {
    size_t size;
    uint8_t *full = valid_image(dir, &size);
    CHECK(size > 100);
    cinder_error err = {0};
    st_file *f = st_open_memory(full, size, "full", &err);
    CHECK_MSG(f != NULL, "%s", err.msg);
    st_close(f);
    int rejected = 0;
    for (size_t len = 0; len < size; len++) {
        uint8_t *cut = malloc(len ? len : 1); /* exactly len bytes: ASan sees any overread */
        memcpy(cut, full, len);
        err.msg[0] = '\0';
        f = st_open_memory(cut, len, "cut", &err);
        if (f) {
            check_inside(f, cut, len);
            st_close(f);
        } else {
            rejected++;
            CHECK_MSG(err.msg[0] != '\0' && err.status == CINDER_ERR_FORMAT, "len %zu", len);
        }
        free(cut);
    }
    CHECK_EQ_INT(rejected, (int)size); /* the data runs to the end, so every cut loses some */

    /* The same through a real file at a few lengths. */
    const char *path = tu_path(dir, "cut.safetensors");
    for (size_t len = 0; len < size; len += 37) {
        tu_write_file(path, full, len);
        f = st_open(path, &err);
        CHECK(f == NULL && test_contains(err.msg, "cut.safetensors"));
        st_close(f);
    }
    free(full);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng_next(void) { /* xorshift64*, seeded: the same run every time */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static void test_mutations(const char *dir) {
    size_t size;
    uint8_t *full = valid_image(dir, &size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | full[i];
    static const char alphabet[] = "{}[]\",:-.0123456789eE \\u00FBFI_";
    int accepted = 0, rejected = 0;
    cinder_error err = {0};
    for (int iter = 0; iter < 20000; iter++) {
        uint8_t *img = malloc(size);
        memcpy(img, full, size);
        int n_mut = 1 + (int)(rng_next() % 4);
        for (int k = 0; k < n_mut; k++) {
            uint64_t r = rng_next();
            size_t at = (r & 0xff) == 0 ? (size_t)(r >> 8) % 8 : 8 + (size_t)((r >> 8) % hlen);
            img[at] = (r >> 40) & 1 ? (uint8_t)alphabet[(r >> 48) % (sizeof alphabet - 1)]
                                    : (uint8_t)(r >> 48);
        }
        st_file *f = st_open_memory(img, size, "mut", &err);
        if (f) {
            accepted++;
            check_inside(f, img, size);
            st_close(f);
        } else {
            rejected++;
            CHECK(err.msg[0] != '\0');
        }
        free(img);
    }
    printf("mutations: %d accepted, %d rejected\n", accepted, rejected);
    CHECK(rejected > 0);
    free(full);
}

static void test_dtype_names(void) {
    dtype t;
    CHECK(st_dtype_from_name("BF16", &t) && t == DTYPE_BF16);
    CHECK(st_dtype_from_name("F16", &t) && t == DTYPE_F16);
    CHECK(st_dtype_from_name("F32", &t) && t == DTYPE_F32);
    CHECK(!st_dtype_from_name("F64", &t));
    CHECK(!st_dtype_from_name("U8", &t));
    CHECK(!st_dtype_from_name("", &t));
}

int main(void) {
    const char *dir = tu_mkdtemp();
    char dir_copy[64];
    snprintf(dir_copy, sizeof dir_copy, "%s", dir);
    test_dtype_names();
    test_round_trip(dir_copy);
    test_bad_headers();
    test_truncations(dir_copy);
    test_mutations(dir_copy);
    tu_rmtree(dir_copy);
    return test_summary("test_safetensors");
}
