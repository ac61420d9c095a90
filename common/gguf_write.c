/* gguf_write.c - GGUF writer: values are serialized (little-endian) when added; the layout
 * (tensor offsets, padding) is decided when the file is written. */
#define _POSIX_C_SOURCE 200809L
#include "gguf_write.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

typedef struct gguf_writer_kv {
    char *key;
    uint32_t type;
    uint8_t *value; /* the bytes that follow the type in the file */
    size_t value_size;
} gguf_writer_kv;

typedef struct gguf_writer_tensor {
    char *name;
    uint32_t ggml_type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    const void *data; /* the caller's */
    size_t nbytes;
    gguf_tensor_producer produce; /* streamed tensors: data comes from produce(ctx) instead */
    void *ctx;
} gguf_writer_tensor;

struct gguf_writer {
    uint32_t version;
    uint64_t alignment;
    gguf_writer_kv *kv;
    size_t n_kv, kv_cap;
    gguf_writer_tensor *tensors;
    size_t n_tensors, tensors_cap;
    cinder_error err; /* the first failure; status CINDER_OK until then */
};

gguf_writer *gguf_writer_init(void) {
    gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->version = 3;
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].value);
    }
    free(w->kv);
    for (size_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    free(w);
}

/* Records the first failure only: later ones are usually its consequences. */
static cinder_status gguf_writer_fail(gguf_writer *w, cinder_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static cinder_status gguf_writer_fail(gguf_writer *w, cinder_status status, const char *fmt, ...) {
    if (w->err.status != CINDER_OK) return w->err.status;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cinder_error_set(&w->err, status, "gguf writer: %s", msg);
}

cinder_status gguf_writer_set_version(gguf_writer *w, uint32_t version) {
    if (w->err.status) return w->err.status;
    if (version != 2 && version != 3)
        return gguf_writer_fail(w, CINDER_ERR_ARG, "version %u (2 or 3 only)", version);
    w->version = version;
    return CINDER_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Metadata */

static void gguf_put_le(uint8_t *p, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static gguf_writer_kv *gguf_writer_find_kv(gguf_writer *w, const char *key) {
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) return &w->kv[i];
    return NULL;
}

/* Appends key with value bytes that the writer now owns (freed here on failure). */
static cinder_status gguf_writer_push_kv(gguf_writer *w, const char *key, uint32_t type,
                                         uint8_t *value, size_t size) {
    if (w->err.status) goto fail;
    if (!key || !key[0]) {
        gguf_writer_fail(w, CINDER_ERR_ARG, "empty key");
        goto fail;
    }
    if (gguf_writer_find_kv(w, key)) {
        gguf_writer_fail(w, CINDER_ERR_ARG, "key '%s' added twice", key);
        goto fail;
    }
    if (w->n_kv == w->kv_cap) {
        size_t cap = w->kv_cap ? 2 * w->kv_cap : 32;
        gguf_writer_kv *p = realloc(w->kv, cap * sizeof *p);
        if (!p) goto nomem;
        w->kv = p;
        w->kv_cap = cap;
    }
    char *k = strdup(key);
    if (!k) goto nomem;
    w->kv[w->n_kv++] = (gguf_writer_kv){k, type, value, size};
    return CINDER_OK;
nomem:
    gguf_writer_fail(w, CINDER_ERR_NOMEM, "out of memory adding key '%s'", key);
fail:
    free(value);
    return w->err.status;
}

/* A value copied from bytes (size may be 0 for an empty raw value). */
static cinder_status gguf_writer_push_copy(gguf_writer *w, const char *key, uint32_t type,
                                           const void *bytes, size_t size) {
    if (w->err.status) return w->err.status;
    uint8_t *v = malloc(size ? size : 1);
    if (!v) return gguf_writer_fail(w, CINDER_ERR_NOMEM, "out of memory adding key '%s'", key);
    if (size) memcpy(v, bytes, size);
    return gguf_writer_push_kv(w, key, type, v, size);
}

static cinder_status gguf_writer_push_int(gguf_writer *w, const char *key, gguf_type type,
                                          uint64_t bits, size_t n) {
    uint8_t b[8];
    gguf_put_le(b, bits, n);
    return gguf_writer_push_copy(w, key, type, b, n);
}

cinder_status gguf_writer_add_u8(gguf_writer *w, const char *key, uint8_t v) {
    return gguf_writer_push_int(w, key, GGUF_TYPE_UINT8, v, 1);
}
cinder_status gguf_writer_add_i8(gguf_writer *w, const char *key, int8_t v) {
    return gguf_writer_push_int(w, key, GGUF_TYPE_INT8, (uint8_t)v, 1);
}
cinder_status gguf_writer_add_u16(gguf_writer *w, const char *key, uint16_t v) {
    return gguf_writer_push_int(w, key, GGUF_TYPE_UINT16, v, 2);
}
cinder_status gguf_writer_add_i16(gguf_writer *w, const char *key, int16_t v) {
    return gguf_writer_push_int(w, key, GGUF_TYPE_INT16, (uint16_t)v, 2);
}
cinder_status gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v) {
    return gguf_writer_push_int(w, key, GGUF_TYPE_UINT32, v, 4);
}
cinder_status gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v) {
    return gguf_writer_push_int(w, key, GGUF_TYPE_INT32, (uint32_t)v, 4);
}
cinder_status gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v) {
    return gguf_writer_push_int(w, key, GGUF_TYPE_UINT64, v, 8);
}
cinder_status gguf_writer_add_i64(gguf_writer *w, const char *key, int64_t v) {
    return gguf_writer_push_int(w, key, GGUF_TYPE_INT64, (uint64_t)v, 8);
}
cinder_status gguf_writer_add_f32(gguf_writer *w, const char *key, float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    return gguf_writer_push_int(w, key, GGUF_TYPE_FLOAT32, bits, 4);
}
cinder_status gguf_writer_add_f64(gguf_writer *w, const char *key, double v) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    return gguf_writer_push_int(w, key, GGUF_TYPE_FLOAT64, bits, 8);
}
cinder_status gguf_writer_add_bool(gguf_writer *w, const char *key, bool v) {
    return gguf_writer_push_int(w, key, GGUF_TYPE_BOOL, v ? 1 : 0, 1);
}

cinder_status gguf_writer_add_str(gguf_writer *w, const char *key, const char *v) {
    if (w->err.status) return w->err.status;
    size_t len = strlen(v);
    uint8_t *b = malloc(8 + len);
    if (!b) return gguf_writer_fail(w, CINDER_ERR_NOMEM, "out of memory adding key '%s'", key);
    gguf_put_le(b, len, 8);
    memcpy(b + 8, v, len);
    return gguf_writer_push_kv(w, key, GGUF_TYPE_STRING, b, 8 + len);
}

/* Bytes of one element of a fixed-size type; 0 for string and array. */
static size_t gguf_writer_type_size(gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8:
        case GGUF_TYPE_INT8:
        case GGUF_TYPE_BOOL:
            return 1;
        case GGUF_TYPE_UINT16:
        case GGUF_TYPE_INT16:
            return 2;
        case GGUF_TYPE_UINT32:
        case GGUF_TYPE_INT32:
        case GGUF_TYPE_FLOAT32:
            return 4;
        case GGUF_TYPE_UINT64:
        case GGUF_TYPE_INT64:
        case GGUF_TYPE_FLOAT64:
            return 8;
        default:
            return 0;
    }
}

_Static_assert(sizeof(bool) == 1, "bool[] arrays are read as one byte per element");

/* Element p of es bytes in host order, as an integer to store little-endian. */
static uint64_t gguf_host_elem(gguf_type t, const uint8_t *p, size_t es) {
    if (t == GGUF_TYPE_BOOL) return *(const bool *)p ? 1 : 0;
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    switch (es) {
        case 1:
            memcpy(&u8, p, 1);
            return u8;
        case 2:
            memcpy(&u16, p, 2);
            return u16;
        case 4:
            memcpy(&u32, p, 4);
            return u32;
        default:
            memcpy(&u64, p, 8);
            return u64;
    }
}

cinder_status gguf_writer_add_arr(gguf_writer *w, const char *key, gguf_type elem_type,
                                  const void *elems, uint64_t n) {
    if (w->err.status) return w->err.status;
    size_t es = gguf_writer_type_size(elem_type);
    if (es == 0)
        return gguf_writer_fail(w, CINDER_ERR_ARG,
                                "key '%s': gguf_writer_add_arr takes fixed-size elements, not %s",
                                key, gguf_type_name(elem_type));
    if (n > (SIZE_MAX - 12) / es)
        return gguf_writer_fail(w, CINDER_ERR_ARG, "key '%s': array too large", key);
    size_t size = 12 + (size_t)n * es;
    uint8_t *b = malloc(size);
    if (!b) return gguf_writer_fail(w, CINDER_ERR_NOMEM, "out of memory adding key '%s'", key);
    gguf_put_le(b, (uint32_t)elem_type, 4);
    gguf_put_le(b + 4, n, 8);
    const uint8_t *src = elems;
    for (uint64_t i = 0; i < n; i++)
        gguf_put_le(b + 12 + i * es, gguf_host_elem(elem_type, src + i * es, es), es);
    return gguf_writer_push_kv(w, key, GGUF_TYPE_ARRAY, b, size);
}

cinder_status gguf_writer_add_arr_str(gguf_writer *w, const char *key, const char *const *strs,
                                      uint64_t n) {
    if (w->err.status) return w->err.status;
    size_t size = 12;
    for (uint64_t i = 0; i < n; i++) size += 8 + strlen(strs[i]);
    uint8_t *b = malloc(size);
    if (!b) return gguf_writer_fail(w, CINDER_ERR_NOMEM, "out of memory adding key '%s'", key);
    gguf_put_le(b, GGUF_TYPE_STRING, 4);
    gguf_put_le(b + 4, n, 8);
    size_t pos = 12;
    for (uint64_t i = 0; i < n; i++) {
        size_t len = strlen(strs[i]);
        gguf_put_le(b + pos, len, 8);
        memcpy(b + pos + 8, strs[i], len);
        pos += 8 + len;
    }
    return gguf_writer_push_kv(w, key, GGUF_TYPE_ARRAY, b, size);
}

cinder_status gguf_writer_add_raw(gguf_writer *w, const char *key, uint32_t type, const void *value,
                                  size_t size) {
    return gguf_writer_push_copy(w, key, type, value, size);
}

cinder_status gguf_writer_set_alignment(gguf_writer *w, uint32_t alignment) {
    if (w->err.status) return w->err.status;
    if (alignment == 0 || (alignment & (alignment - 1)))
        return gguf_writer_fail(w, CINDER_ERR_ARG, "alignment %u is not a power of two", alignment);
    gguf_writer_kv *kv = gguf_writer_find_kv(w, "general.alignment");
    if (kv && (kv->type != GGUF_TYPE_UINT32 || kv->value_size != 4))
        return gguf_writer_fail(w, CINDER_ERR_ARG,
                                "general.alignment was added by hand with another type");
    w->alignment = alignment;
    if (kv) {
        gguf_put_le(kv->value, alignment, 4);
        return CINDER_OK;
    }
    return gguf_writer_add_u32(w, "general.alignment", alignment);
}

/* ------------------------------------------------------------------------------------------ */
/* Tensors */

static cinder_status gguf_writer_push_tensor(gguf_writer *w, const char *name, uint32_t ggml_type,
                                             int n_dims, const uint64_t *ne, const void *data,
                                             size_t nbytes, gguf_tensor_producer produce,
                                             void *ctx) {
    if (w->err.status) return w->err.status;
    if (!name || !name[0]) return gguf_writer_fail(w, CINDER_ERR_ARG, "empty tensor name");
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return gguf_writer_fail(w, CINDER_ERR_ARG, "tensor '%s': %d dimensions (1 to %d)", name,
                                n_dims, GGUF_MAX_DIMS);
    for (int d = 0; d < n_dims; d++)
        if (ne[d] == 0)
            return gguf_writer_fail(w, CINDER_ERR_ARG, "tensor '%s': dimension %d is 0", name, d);
    if (!data && !produce && nbytes)
        return gguf_writer_fail(w, CINDER_ERR_ARG, "tensor '%s': no data", name);
    for (size_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return gguf_writer_fail(w, CINDER_ERR_ARG, "tensor '%s' added twice", name);
    if (w->n_tensors == w->tensors_cap) {
        size_t cap = w->tensors_cap ? 2 * w->tensors_cap : 64;
        gguf_writer_tensor *p = realloc(w->tensors, cap * sizeof *p);
        if (!p) return gguf_writer_fail(w, CINDER_ERR_NOMEM, "out of memory adding '%s'", name);
        w->tensors = p;
        w->tensors_cap = cap;
    }
    gguf_writer_tensor *t = &w->tensors[w->n_tensors];
    *t = (gguf_writer_tensor){.ggml_type = ggml_type,
                              .n_dims = (uint32_t)n_dims,
                              .data = data,
                              .nbytes = nbytes,
                              .produce = produce,
                              .ctx = ctx};
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->name = strdup(name);
    if (!t->name) return gguf_writer_fail(w, CINDER_ERR_NOMEM, "out of memory adding '%s'", name);
    w->n_tensors++;
    return CINDER_OK;
}

/* Checks that nbytes is the size type and shape ne[0..n_dims) give. */
static cinder_status gguf_writer_check_size(gguf_writer *w, const char *name, dtype type,
                                            int n_dims, const uint64_t *ne, size_t nbytes) {
    if (w->err.status) return w->err.status;
    if ((unsigned)type >= DTYPE_COUNT)
        return gguf_writer_fail(w, CINDER_ERR_ARG, "tensor '%s': bad dtype %d", name, (int)type);
    /* The size the reader will expect; dims > 0 is checked by push_tensor. */
    uint64_t numel = 1;
    for (int d = 0; d < n_dims && d < GGUF_MAX_DIMS; d++) {
        if (ne[d] && numel > UINT64_MAX / ne[d])
            return gguf_writer_fail(w, CINDER_ERR_ARG, "tensor '%s': too many elements", name);
        numel *= ne[d];
    }
    uint64_t bs = (uint64_t)dtype_block_size(type);
    if (n_dims >= 1 && ne[0] % bs)
        return gguf_writer_fail(w, CINDER_ERR_ARG,
                                "tensor '%s': row of %llu values is not whole %s blocks", name,
                                (unsigned long long)ne[0], dtype_name(type));
    if (numel / bs * dtype_block_bytes(type) != nbytes)
        return gguf_writer_fail(
            w, CINDER_ERR_ARG, "tensor '%s' (%s): %zu bytes, its shape needs %llu", name,
            dtype_name(type), nbytes, (unsigned long long)(numel / bs * dtype_block_bytes(type)));
    return CINDER_OK;
}

cinder_status gguf_writer_add_tensor(gguf_writer *w, const char *name, dtype type, int n_dims,
                                     const uint64_t *ne, const void *data, size_t nbytes) {
    cinder_status s = gguf_writer_check_size(w, name, type, n_dims, ne, nbytes);
    if (s) return s;
    return gguf_writer_push_tensor(w, name, gguf_ggml_type_from_dtype(type), n_dims, ne, data,
                                   nbytes, NULL, NULL);
}

cinder_status gguf_writer_add_tensor_stream(gguf_writer *w, const char *name, dtype type,
                                            int n_dims, const uint64_t *ne, size_t nbytes,
                                            gguf_tensor_producer produce, void *ctx) {
    if (w->err.status) return w->err.status;
    if (!produce)
        return gguf_writer_fail(w, CINDER_ERR_ARG, "tensor '%s': no producer", name ? name : "");
    cinder_status s = gguf_writer_check_size(w, name, type, n_dims, ne, nbytes);
    if (s) return s;
    return gguf_writer_push_tensor(w, name, gguf_ggml_type_from_dtype(type), n_dims, ne, NULL,
                                   nbytes, produce, ctx);
}

cinder_status gguf_writer_add_tensor_ggml(gguf_writer *w, const char *name, uint32_t ggml_type,
                                          int n_dims, const uint64_t *ne, const void *data,
                                          size_t nbytes) {
    return gguf_writer_push_tensor(w, name, ggml_type, n_dims, ne, data, nbytes, NULL, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Output */

/* Where the bytes go: a FILE, a buffer of known size, or nowhere (to count them). */
typedef struct gguf_sink {
    FILE *f;
    uint8_t *buf;
    size_t cap;
    size_t pos;
    bool failed; /* a write failed or the size overflowed */
} gguf_sink;

static void gguf_sink_put(gguf_sink *s, const void *p, size_t n) {
    if (s->failed || n == 0) return;
    if (n > SIZE_MAX - s->pos) {
        s->failed = true;
        return;
    }
    if (s->f) {
        if (fwrite(p, 1, n, s->f) != n) s->failed = true;
    } else if (s->buf) {
        CN_ASSERT(n <= s->cap - s->pos); /* the counting pass sized it */
        memcpy(s->buf + s->pos, p, n);
    }
    s->pos += n;
}

static void gguf_sink_le(gguf_sink *s, uint64_t v, size_t n) {
    uint8_t b[8];
    gguf_put_le(b, v, n);
    gguf_sink_put(s, b, n);
}

static void gguf_sink_pad(gguf_sink *s, uint64_t alignment) {
    static const uint8_t zeros[64];
    size_t pad = (size_t)((alignment - s->pos % alignment) % alignment);
    while (pad > 0) {
        size_t n = pad < sizeof zeros ? pad : sizeof zeros;
        gguf_sink_put(s, zeros, n);
        pad -= n;
    }
}

static uint64_t gguf_pad_to(uint64_t n, uint64_t alignment) {
    return (n + alignment - 1) / alignment * alignment;
}

struct gguf_stream {
    gguf_sink *sink;
    const gguf_writer_tensor *t;
    size_t left; /* bytes the producer still owes */
};

cinder_status gguf_stream_write(gguf_stream *s, const void *data, size_t n, cinder_error *err) {
    if (n > s->left)
        return cinder_error_set(err, CINDER_ERR_RANGE,
                                "gguf writer: tensor '%s': producer gave more than its %zu bytes",
                                s->t->name, s->t->nbytes);
    gguf_sink_put(s->sink, data, n);
    s->left -= n;
    if (s->sink->failed)
        return cinder_error_set(err, CINDER_ERR_IO, "gguf writer: tensor '%s': write failed",
                                s->t->name);
    return CINDER_OK;
}

/* A tensor's data: its buffer, or what its producer makes (not called when only counting). */
static cinder_status gguf_writer_emit_data(const gguf_writer_tensor *t, gguf_sink *s,
                                           cinder_error *err) {
    if (!t->produce) {
        gguf_sink_put(s, t->data, t->nbytes);
        return CINDER_OK;
    }
    if (!s->f && !s->buf) {
        gguf_sink_put(s, NULL, t->nbytes);
        return CINDER_OK;
    }
    gguf_stream stream = {s, t, t->nbytes};
    cinder_status st = t->produce(t->ctx, &stream, err);
    if (st == CINDER_OK && stream.left)
        st = cinder_error_set(err, CINDER_ERR_RANGE,
                              "gguf writer: tensor '%s': producer gave %zu of its %zu bytes",
                              t->name, t->nbytes - stream.left, t->nbytes);
    return st;
}

/* Emits the whole file; fails only when a producer does (sink failures set s->failed). */
static cinder_status gguf_writer_emit(const gguf_writer *w, gguf_sink *s, cinder_error *err) {
    gguf_sink_put(s, "GGUF", 4);
    gguf_sink_le(s, w->version, 4);
    gguf_sink_le(s, w->n_tensors, 8);
    gguf_sink_le(s, w->n_kv, 8);
    for (size_t i = 0; i < w->n_kv; i++) {
        const gguf_writer_kv *kv = &w->kv[i];
        size_t len = strlen(kv->key);
        gguf_sink_le(s, len, 8);
        gguf_sink_put(s, kv->key, len);
        gguf_sink_le(s, kv->type, 4);
        gguf_sink_put(s, kv->value, kv->value_size);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        const gguf_writer_tensor *t = &w->tensors[i];
        size_t len = strlen(t->name);
        gguf_sink_le(s, len, 8);
        gguf_sink_put(s, t->name, len);
        gguf_sink_le(s, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) gguf_sink_le(s, t->ne[d], 8);
        gguf_sink_le(s, t->ggml_type, 4);
        gguf_sink_le(s, offset, 8);
        offset += gguf_pad_to(t->nbytes, w->alignment);
    }
    gguf_sink_pad(s, w->alignment);
    for (size_t i = 0; i < w->n_tensors; i++) {
        cinder_status st = gguf_writer_emit_data(&w->tensors[i], s, err);
        if (st) return st;
        gguf_sink_pad(s, w->alignment);
    }
    return CINDER_OK;
}

/* The first failure of the build, copied out. */
static cinder_status gguf_writer_check(const gguf_writer *w, cinder_error *err) {
    if (w->err.status == CINDER_OK) return CINDER_OK;
    if (err) *err = w->err;
    return w->err.status;
}

cinder_status gguf_writer_write_buffer(gguf_writer *w, uint8_t **out, size_t *size,
                                       cinder_error *err) {
    *out = NULL;
    *size = 0;
    cinder_status s = gguf_writer_check(w, err);
    if (s) return s;
    gguf_sink count = {0};
    gguf_writer_emit(w, &count, err); /* counting calls no producer: cannot fail */
    if (count.failed) return cinder_error_set(err, CINDER_ERR_RANGE, "gguf writer: file too large");
    gguf_sink sink = {.buf = malloc(count.pos ? count.pos : 1), .cap = count.pos};
    if (!sink.buf)
        return cinder_error_set(err, CINDER_ERR_NOMEM, "gguf writer: out of memory for %zu bytes",
                                count.pos);
    s = gguf_writer_emit(w, &sink, err);
    if (s) {
        free(sink.buf);
        return s;
    }
    CN_ASSERT(!sink.failed && sink.pos == count.pos);
    *out = sink.buf;
    *size = sink.pos;
    return CINDER_OK;
}

cinder_status gguf_writer_write_file(gguf_writer *w, const char *path, cinder_error *err) {
    cinder_status s = gguf_writer_check(w, err);
    if (s) return s;
    gguf_sink sink = {.f = fopen(path, "wb")};
    if (!sink.f) return cinder_error_set(err, CINDER_ERR_IO, "%s: %s", path, strerror(errno));
    s = gguf_writer_emit(w, &sink, err);
    int e = sink.failed ? errno : 0;
    if (fclose(sink.f) != 0 && !e) e = errno ? errno : EIO;
    if (s) {
        remove(path);
        return s;
    }
    if (sink.failed || e) {
        remove(path);
        return cinder_error_set(err, CINDER_ERR_IO, "%s: write failed: %s", path,
                                strerror(e ? e : EIO));
    }
    return CINDER_OK;
}
