/* gguf.c - GGUF reader.
 *
 * The file is untrusted: every read goes through gguf_reader, which compares the bytes a field
 * needs with the bytes left (never `pos + n > size`, which a huge n can wrap), and what is
 * allocated for a count is bounded by what the bytes left could hold, never by the count
 * alone. Once gguf_open has accepted a file, the getters can trust it and only assert. */
#include "gguf.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Arrays of arrays are legal GGUF that no known writer produces; they are skipped (kept as
 * opaque values), but only this deep, so a hostile file cannot exhaust the stack. */
#define GGUF_MAX_ARRAY_DEPTH 8

/* The smallest encodings, to bound a count by the bytes left before allocating for it:
 * a key/value is a key length (8), a key (>= 1 byte), a type (4) and a value (>= 1 byte);
 * a tensor info is a name length (8), a name (>= 1), n_dims (4), a dim (8), a type (4) and
 * an offset (8). */
#define GGUF_MIN_KV_BYTES          14
#define GGUF_MIN_TENSOR_INFO_BYTES 33

/* ------------------------------------------------------------------------------------------ */
/* Types */

static const struct {
    const char *name;
    uint64_t size; /* bytes of one value; 0 for string and array */
} gguf_type_info[GGUF_TYPE_COUNT] = {
    [GGUF_TYPE_UINT8] = {"uint8", 1},     [GGUF_TYPE_INT8] = {"int8", 1},
    [GGUF_TYPE_UINT16] = {"uint16", 2},   [GGUF_TYPE_INT16] = {"int16", 2},
    [GGUF_TYPE_UINT32] = {"uint32", 4},   [GGUF_TYPE_INT32] = {"int32", 4},
    [GGUF_TYPE_FLOAT32] = {"float32", 4}, [GGUF_TYPE_BOOL] = {"bool", 1},
    [GGUF_TYPE_STRING] = {"string", 0},   [GGUF_TYPE_ARRAY] = {"array", 0},
    [GGUF_TYPE_UINT64] = {"uint64", 8},   [GGUF_TYPE_INT64] = {"int64", 8},
    [GGUF_TYPE_FLOAT64] = {"float64", 8},
};

const char *gguf_type_name(gguf_type t) {
    return (unsigned)t < GGUF_TYPE_COUNT ? gguf_type_info[t].name : "?";
}

static bool gguf_type_is_int(gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8:
        case GGUF_TYPE_INT8:
        case GGUF_TYPE_UINT16:
        case GGUF_TYPE_INT16:
        case GGUF_TYPE_UINT32:
        case GGUF_TYPE_INT32:
        case GGUF_TYPE_UINT64:
        case GGUF_TYPE_INT64:
            return true;
        default:
            return false;
    }
}

static bool gguf_type_is_float(gguf_type t) {
    return t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64;
}

/* ggml's type ids, including the ones cinder cannot read, so that a refusal can name them.
 * Ids 4, 5 and 31-33, 36-38 belonged to formats ggml has since removed. */
static const char *const ggml_type_names[] = {
    [0] = "F32",     [1] = "F16",      [2] = "Q4_0",   [3] = "Q4_1",    [6] = "Q5_0",
    [7] = "Q5_1",    [8] = "Q8_0",     [9] = "Q8_1",   [10] = "Q2_K",   [11] = "Q3_K",
    [12] = "Q4_K",   [13] = "Q5_K",    [14] = "Q6_K",  [15] = "Q8_K",   [16] = "IQ2_XXS",
    [17] = "IQ2_XS", [18] = "IQ3_XXS", [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S",
    [22] = "IQ2_S",  [23] = "IQ4_XS",  [24] = "I8",    [25] = "I16",    [26] = "I32",
    [27] = "I64",    [28] = "F64",     [29] = "IQ1_M", [30] = "BF16",   [34] = "TQ1_0",
    [35] = "TQ2_0",  [39] = "MXFP4",
};

const char *gguf_ggml_type_name(uint32_t ggml_type) {
    if (ggml_type >= sizeof ggml_type_names / sizeof ggml_type_names[0]) return NULL;
    return ggml_type_names[ggml_type];
}

static const uint32_t dtype_to_ggml[DTYPE_COUNT] = {
    [DTYPE_F32] = GGML_TYPE_F32,   [DTYPE_F16] = GGML_TYPE_F16,   [DTYPE_BF16] = GGML_TYPE_BF16,
    [DTYPE_Q8_0] = GGML_TYPE_Q8_0, [DTYPE_Q4_0] = GGML_TYPE_Q4_0, [DTYPE_Q4_1] = GGML_TYPE_Q4_1,
};

uint32_t gguf_ggml_type_from_dtype(dtype t) {
    CN_ASSERT((unsigned)t < DTYPE_COUNT);
    return dtype_to_ggml[t];
}

bool gguf_ggml_type_to_dtype(uint32_t ggml_type, dtype *out) {
    for (int t = 0; t < DTYPE_COUNT; t++) {
        if (dtype_to_ggml[t] == ggml_type) {
            *out = (dtype)t;
            return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Little-endian loads: GGUF is little-endian whatever the host. */

static uint16_t gguf_le16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t gguf_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t gguf_le64(const uint8_t *p) {
    return (uint64_t)gguf_le32(p) | (uint64_t)gguf_le32(p + 4) << 32;
}

/* Reads an integer value of type t at p; false for a non-integer type. A uint64 above
 * INT64_MAX sets *too_big and gives INT64_MAX. */
static bool gguf_load_int(gguf_type t, const uint8_t *p, int64_t *out, bool *too_big) {
    *too_big = false;
    switch (t) {
        case GGUF_TYPE_UINT8:
            *out = p[0];
            return true;
        case GGUF_TYPE_INT8:
            *out = (int8_t)p[0];
            return true;
        case GGUF_TYPE_UINT16:
            *out = gguf_le16(p);
            return true;
        case GGUF_TYPE_INT16:
            *out = (int16_t)gguf_le16(p);
            return true;
        case GGUF_TYPE_UINT32:
            *out = gguf_le32(p);
            return true;
        case GGUF_TYPE_INT32:
            *out = (int32_t)gguf_le32(p);
            return true;
        case GGUF_TYPE_INT64:
            *out = (int64_t)gguf_le64(p);
            return true;
        case GGUF_TYPE_UINT64: {
            uint64_t v = gguf_le64(p);
            *too_big = v > INT64_MAX;
            *out = *too_big ? INT64_MAX : (int64_t)v;
            return true;
        }
        default:
            return false;
    }
}

static double gguf_load_float(gguf_type t, const uint8_t *p) {
    if (t == GGUF_TYPE_FLOAT32) {
        uint32_t bits = gguf_le32(p);
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    CN_ASSERT(t == GGUF_TYPE_FLOAT64);
    uint64_t bits = gguf_le64(p);
    double d;
    memcpy(&d, &bits, 8);
    return d;
}

bool gguf_str_eq(gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.ptr, c, n) == 0;
}

/* A name from the file, fit for a message: at most 64 bytes, non-printable bytes as '?'. */
static void gguf_str_show(char *buf, size_t cap, const char *p, uint64_t len) {
    size_t n = 0, max = cap - 4; /* room for "..." and the NUL */
    if (max > 64) max = 64;
    for (; n < len && n < max; n++) buf[n] = (p[n] >= 0x20 && p[n] < 0x7f) ? p[n] : '?';
    if (n < len) memcpy(buf + n, "...", 3), n += 3;
    buf[n] = '\0';
}

/* ------------------------------------------------------------------------------------------ */
/* Name index */

static uint64_t gguf_hash(const char *p, uint64_t len) {
    uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
    for (uint64_t i = 0; i < len; i++) h = (h ^ (uint8_t)p[i]) * 0x100000001b3u;
    return h;
}

/* Names live in gguf_kv and gguf_tensor_info alike: name_at(i) finds entry i's. */
typedef struct gguf_names {
    const uint8_t *base;
    size_t stride, offset;
} gguf_names;

static const gguf_str *gguf_name_at(gguf_names names, uint64_t i) {
    return (const gguf_str *)(names.base + i * names.stride + names.offset);
}

/* Index of name in ix, or UINT64_MAX. */
static uint64_t gguf_index_find(const gguf_name_index *ix, gguf_names names, const char *p,
                                uint64_t len) {
    if (!ix->slots) return UINT64_MAX;
    for (uint64_t s = gguf_hash(p, len) & ix->mask;; s = (s + 1) & ix->mask) {
        uint64_t e = ix->slots[s];
        if (e == 0) return UINT64_MAX;
        const gguf_str *n = gguf_name_at(names, e - 1);
        if (n->len == len && memcmp(n->ptr, p, len) == 0) return e - 1;
    }
}

/* Indexes n names. On a repeated name returns false with *dup and *first set to the two
 * entries; on allocation failure returns false with *dup = UINT64_MAX. */
static bool gguf_index_build(gguf_name_index *ix, gguf_names names, uint64_t n, uint64_t *dup,
                             uint64_t *first) {
    *dup = UINT64_MAX;
    if (n == 0) return true;
    uint64_t cap = 16;
    while (cap < 2 * n) cap *= 2; /* n is bounded by the file size, so this cannot overflow */
    ix->slots = calloc(cap, sizeof *ix->slots);
    if (!ix->slots) return false;
    ix->mask = cap - 1;
    for (uint64_t i = 0; i < n; i++) {
        const gguf_str *name = gguf_name_at(names, i);
        uint64_t j = gguf_index_find(ix, names, name->ptr, name->len);
        if (j != UINT64_MAX) {
            *dup = i;
            *first = j;
            return false;
        }
        uint64_t s = gguf_hash(name->ptr, name->len) & ix->mask;
        while (ix->slots[s]) s = (s + 1) & ix->mask;
        ix->slots[s] = i + 1;
    }
    return true;
}

static gguf_names gguf_kv_names(const gguf_file *g) {
    return (gguf_names){(const uint8_t *)g->kv, sizeof(gguf_kv), offsetof(gguf_kv, key)};
}

static gguf_names gguf_tensor_names(const gguf_file *g) {
    return (gguf_names){(const uint8_t *)g->tensors, sizeof(gguf_tensor_info),
                        offsetof(gguf_tensor_info, name)};
}

/* ------------------------------------------------------------------------------------------ */
/* Reader */

typedef struct gguf_reader {
    const uint8_t *data;
    size_t size;
    size_t pos; /* always <= size */
    cinder_error *err;
    char ctx[160];  /* what is being read, for messages: "header", "metadata key #5 'x'" */
    char note[128]; /* added to messages while set: a count the file cannot hold */
} gguf_reader;

static bool gguf_fail(gguf_reader *r, cinder_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool gguf_fail(gguf_reader *r, cinder_status status, const char *fmt, ...) {
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (r->note[0])
        cinder_error_set(r->err, status, "gguf: %s: %s; %s", r->ctx, msg, r->note);
    else
        cinder_error_set(r->err, status, "gguf: %s: %s", r->ctx, msg);
    return false;
}

static size_t gguf_left(const gguf_reader *r) {
    return r->size - r->pos;
}

/* Fails unless a fixed-size field of n bytes is there. */
static bool gguf_need(gguf_reader *r, size_t n, const char *what) {
    if (n <= gguf_left(r)) return true;
    return gguf_fail(r, CINDER_ERR_FORMAT, "%s truncated at offset %zu (file is %zu bytes)", what,
                     r->pos, r->size);
}

static bool gguf_read_u32(gguf_reader *r, uint32_t *v, const char *what) {
    if (!gguf_need(r, 4, what)) return false;
    *v = gguf_le32(r->data + r->pos);
    r->pos += 4;
    return true;
}

static bool gguf_read_u64(gguf_reader *r, uint64_t *v, const char *what) {
    if (!gguf_need(r, 8, what)) return false;
    *v = gguf_le64(r->data + r->pos);
    r->pos += 8;
    return true;
}

/* A string: u64 length, then the bytes. */
static bool gguf_read_str(gguf_reader *r, gguf_str *s, const char *what) {
    char len_what[64];
    snprintf(len_what, sizeof len_what, "%s length", what);
    uint64_t len;
    if (!gguf_read_u64(r, &len, len_what)) return false;
    if (len > gguf_left(r))
        return gguf_fail(r, CINDER_ERR_FORMAT,
                         "%s (%" PRIu64 " bytes at offset %zu) runs past the end of the file "
                         "(size %zu)",
                         what, len, r->pos, r->size);
    s->ptr = (const char *)r->data + r->pos;
    s->len = len;
    r->pos += (size_t)len;
    return true;
}

static bool gguf_skip_array(gguf_reader *r, gguf_type elem, uint64_t n, int depth);

/* Checks one value of type t and moves past it. */
static bool gguf_skip_value(gguf_reader *r, gguf_type t, int depth) {
    if (t == GGUF_TYPE_STRING) {
        gguf_str s;
        return gguf_read_str(r, &s, "string value");
    }
    if (t == GGUF_TYPE_ARRAY) {
        uint32_t elem;
        uint64_t n;
        if (!gguf_read_u32(r, &elem, "array element type")) return false;
        if (elem >= GGUF_TYPE_COUNT)
            return gguf_fail(r, CINDER_ERR_FORMAT, "unknown array element type %" PRIu32, elem);
        if (!gguf_read_u64(r, &n, "array count")) return false;
        return gguf_skip_array(r, (gguf_type)elem, n, depth + 1);
    }
    if (!gguf_need(r, gguf_type_info[t].size, "value")) return false;
    if (t == GGUF_TYPE_BOOL && r->data[r->pos] > 1)
        return gguf_fail(r, CINDER_ERR_FORMAT, "bool value %u at offset %zu is neither 0 nor 1",
                         r->data[r->pos], r->pos);
    r->pos += gguf_type_info[t].size;
    return true;
}

/* Checks n elements of type elem and moves past them: O(n), O(1) for fixed-size types. */
static bool gguf_skip_array(gguf_reader *r, gguf_type elem, uint64_t n, int depth) {
    if (depth > GGUF_MAX_ARRAY_DEPTH)
        return gguf_fail(r, CINDER_ERR_FORMAT, "arrays nested more than %d deep at offset %zu",
                         GGUF_MAX_ARRAY_DEPTH, r->pos);
    uint64_t size = gguf_type_info[elem].size;
    if (size) {
        if (n > gguf_left(r) / size)
            return gguf_fail(r, CINDER_ERR_FORMAT,
                             "array of %" PRIu64 " %s elements at offset %zu runs past the end "
                             "of the file (%zu bytes left)",
                             n, gguf_type_name(elem), r->pos, gguf_left(r));
        for (uint64_t i = 0; elem == GGUF_TYPE_BOOL && i < n; i++)
            if (r->data[r->pos + i] > 1)
                return gguf_fail(r, CINDER_ERR_FORMAT,
                                 "bool element #%" PRIu64 " value %u at offset %zu is neither 0 "
                                 "nor 1",
                                 i, r->data[r->pos + i], r->pos + i);
        r->pos += (size_t)(n * size);
        return true;
    }
    /* Strings and arrays are walked one by one, each taking at least 8 (a length) or 12
     * bytes (a type and a count): a count larger than the bytes left can hold fails in the
     * walk where the file runs out, and the message then also names the count. */
    uint64_t min = elem == GGUF_TYPE_STRING ? 8 : 12;
    bool noted = false;
    if (n > gguf_left(r) / min && !r->note[0]) {
        snprintf(r->note, sizeof r->note,
                 "its count %" PRIu64 " cannot fit in the %zu bytes left at offset %zu", n,
                 gguf_left(r), r->pos);
        noted = true;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (elem == GGUF_TYPE_ARRAY) {
            if (!gguf_skip_value(r, elem, depth)) return false;
            continue;
        }
        if (gguf_left(r) < 8)
            return gguf_fail(r, CINDER_ERR_FORMAT,
                             "string element #%" PRIu64 " length truncated at offset %zu "
                             "(file is %zu bytes)",
                             i, r->pos, r->size);
        uint64_t len = gguf_le64(r->data + r->pos);
        if (len > gguf_left(r) - 8)
            return gguf_fail(r, CINDER_ERR_FORMAT,
                             "string element #%" PRIu64 " (%" PRIu64 " bytes at offset %zu) "
                             "runs past the end of the file (size %zu)",
                             i, len, r->pos + 8, r->size);
        r->pos += 8 + (size_t)len;
    }
    if (noted) r->note[0] = '\0';
    return true;
}

static bool gguf_parse_kv(gguf_reader *r, uint64_t i, gguf_kv *kv) {
    snprintf(r->ctx, sizeof r->ctx, "metadata key #%" PRIu64, i);
    if (!gguf_read_str(r, &kv->key, "key")) return false;
    if (kv->key.len == 0) return gguf_fail(r, CINDER_ERR_FORMAT, "empty key");
    char shown[80];
    gguf_str_show(shown, sizeof shown, kv->key.ptr, kv->key.len);
    snprintf(r->ctx, sizeof r->ctx, "metadata key #%" PRIu64 " '%s'", i, shown);

    uint32_t type;
    if (!gguf_read_u32(r, &type, "value type")) return false;
    if (type >= GGUF_TYPE_COUNT)
        return gguf_fail(r, CINDER_ERR_FORMAT, "unknown value type %" PRIu32, type);
    kv->type = (gguf_type)type;
    if (kv->type == GGUF_TYPE_ARRAY) {
        uint32_t elem;
        if (!gguf_read_u32(r, &elem, "array element type")) return false;
        if (elem >= GGUF_TYPE_COUNT)
            return gguf_fail(r, CINDER_ERR_FORMAT, "unknown array element type %" PRIu32, elem);
        kv->arr_type = (gguf_type)elem;
        if (!gguf_read_u64(r, &kv->arr_n, "array count")) return false;
        size_t start = r->pos;
        if (!gguf_skip_array(r, kv->arr_type, kv->arr_n, 1)) return false;
        kv->value = r->data + start;
        kv->value_size = r->pos - start;
    } else {
        size_t start = r->pos;
        if (!gguf_skip_value(r, kv->type, 0)) return false;
        kv->value = r->data + start;
        kv->value_size = r->pos - start;
    }
    return true;
}

static bool gguf_parse_tensor_info(gguf_reader *r, const gguf_file *g, uint64_t i,
                                   gguf_tensor_info *t) {
    snprintf(r->ctx, sizeof r->ctx, "tensor #%" PRIu64, i);
    if (!gguf_read_str(r, &t->name, "name")) return false;
    if (t->name.len == 0) return gguf_fail(r, CINDER_ERR_FORMAT, "empty name");
    char shown[80];
    gguf_str_show(shown, sizeof shown, t->name.ptr, t->name.len);
    snprintf(r->ctx, sizeof r->ctx, "tensor #%" PRIu64 " '%s'", i, shown);

    if (!gguf_read_u32(r, &t->n_dims, "dimension count")) return false;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return gguf_fail(r, CINDER_ERR_FORMAT, "%" PRIu32 " dimensions (1 to %d allowed)",
                         t->n_dims, GGUF_MAX_DIMS);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d >= t->n_dims) continue;
        if (!gguf_read_u64(r, &t->ne[d], "dimension")) return false;
        if (t->ne[d] == 0) return gguf_fail(r, CINDER_ERR_FORMAT, "dimension %" PRIu32 " is 0", d);
        if (t->ne[d] > INT64_MAX / numel)
            return gguf_fail(r, CINDER_ERR_FORMAT, "element count overflows at dimension %" PRIu32,
                             d);
        numel *= t->ne[d];
    }

    uint32_t ggml_type;
    if (!gguf_read_u32(r, &ggml_type, "type")) return false;
    if (!gguf_ggml_type_to_dtype(ggml_type, &t->type)) {
        const char *name = gguf_ggml_type_name(ggml_type);
        if (name)
            return gguf_fail(r, CINDER_ERR_UNSUPPORTED,
                             "type %s (id %" PRIu32 ") is not supported "
                             "(F32, F16, BF16, Q8_0, Q4_0, Q4_1 only)",
                             name, ggml_type);
        return gguf_fail(r, CINDER_ERR_UNSUPPORTED,
                         "type id %" PRIu32 " is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1 "
                         "only)",
                         ggml_type);
    }
    uint64_t bs = (uint64_t)dtype_block_size(t->type), bb = dtype_block_bytes(t->type);
    if (t->ne[0] % bs)
        return gguf_fail(r, CINDER_ERR_FORMAT,
                         "row of %" PRIu64 " values is not a whole number of %s blocks of %" PRIu64,
                         t->ne[0], dtype_name(t->type), bs);
    if (numel / bs > UINT64_MAX / bb)
        return gguf_fail(r, CINDER_ERR_FORMAT, "size in bytes overflows");
    t->nbytes = numel / bs * bb;

    if (!gguf_read_u64(r, &t->offset, "data offset")) return false;
    if (t->offset % g->alignment)
        return gguf_fail(r, CINDER_ERR_FORMAT,
                         "data offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
                         t->offset, g->alignment);
    return true;
}

/* general.alignment: any integer type, a nonzero power of two. */
static bool gguf_parse_alignment(gguf_reader *r, gguf_file *g) {
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    uint64_t i = gguf_index_find(&g->kv_index, gguf_kv_names(g), "general.alignment", 17);
    if (i == UINT64_MAX) return true;
    snprintf(r->ctx, sizeof r->ctx, "metadata key #%" PRIu64 " 'general.alignment'", i);
    int64_t v;
    bool too_big;
    if (!gguf_load_int(g->kv[i].type, g->kv[i].value, &v, &too_big))
        return gguf_fail(r, CINDER_ERR_FORMAT, "is a %s, not an integer",
                         gguf_type_name(g->kv[i].type));
    if (too_big || v <= 0 || (v & (v - 1)))
        return gguf_fail(r, CINDER_ERR_FORMAT, "%s%" PRId64 " is not a nonzero power of two",
                         too_big ? "> " : "", v);
    g->alignment = (uint64_t)v;
    return true;
}

static bool gguf_parse(gguf_reader *r, gguf_file *g) {
    snprintf(r->ctx, sizeof r->ctx, "header");
    if (!gguf_need(r, 4, "magic")) return false;
    if (memcmp(r->data, "GGUF", 4) != 0)
        return gguf_fail(r, CINDER_ERR_FORMAT, "bad magic %02x %02x %02x %02x (not a GGUF file)",
                         r->data[0], r->data[1], r->data[2], r->data[3]);
    r->pos = 4;
    if (!gguf_read_u32(r, &g->version, "version")) return false;
    if (g->version != 2 && g->version != 3)
        return gguf_fail(r, CINDER_ERR_UNSUPPORTED,
                         "version %" PRIu32 " is not supported (2 and 3 only)%s", g->version,
                         (g->version & 0xffff) == 0 ? "; a big-endian file?" : "");
    if (!gguf_read_u64(r, &g->n_tensors, "tensor count")) return false;
    if (!gguf_read_u64(r, &g->n_kv, "metadata count")) return false;

    /* Arrays are sized by what the bytes left could hold, never by the count alone: every
     * parsed entry takes at least its minimum size, so a count past that bound fails at the
     * first entry beyond it, with a message naming the field where the file ran out (and the
     * count, in the note). */
    uint64_t cap = gguf_left(r) / GGUF_MIN_KV_BYTES;
    if (g->n_kv > cap)
        snprintf(r->note, sizeof r->note,
                 "the header's metadata count %" PRIu64 " cannot fit in the %zu bytes after it",
                 g->n_kv, gguf_left(r));
    else
        cap = g->n_kv;
    if (cap && !(g->kv = calloc(cap, sizeof *g->kv)))
        return gguf_fail(r, CINDER_ERR_NOMEM, "out of memory for %" PRIu64 " keys", cap);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        gguf_kv kv = {0};
        if (!gguf_parse_kv(r, i, &kv)) return false;
        CN_ASSERT(i < cap);
        g->kv[i] = kv;
    }
    r->note[0] = '\0';
    uint64_t dup, first;
    if (!gguf_index_build(&g->kv_index, gguf_kv_names(g), g->n_kv, &dup, &first)) {
        snprintf(r->ctx, sizeof r->ctx, "metadata");
        if (dup == UINT64_MAX) return gguf_fail(r, CINDER_ERR_NOMEM, "out of memory");
        char shown[80];
        gguf_str_show(shown, sizeof shown, g->kv[dup].key.ptr, g->kv[dup].key.len);
        return gguf_fail(r, CINDER_ERR_FORMAT, "key #%" PRIu64 " '%s' repeats key #%" PRIu64, dup,
                         shown, first);
    }
    if (!gguf_parse_alignment(r, g)) return false;

    cap = gguf_left(r) / GGUF_MIN_TENSOR_INFO_BYTES;
    if (g->n_tensors > cap)
        snprintf(r->note, sizeof r->note,
                 "the header's tensor count %" PRIu64 " cannot fit in the %zu bytes left at "
                 "offset %zu",
                 g->n_tensors, gguf_left(r), r->pos);
    else
        cap = g->n_tensors;
    if (cap && !(g->tensors = calloc(cap, sizeof *g->tensors)))
        return gguf_fail(r, CINDER_ERR_NOMEM, "out of memory for %" PRIu64 " tensors", cap);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor_info t = {0};
        if (!gguf_parse_tensor_info(r, g, i, &t)) return false;
        CN_ASSERT(i < cap);
        g->tensors[i] = t;
    }
    r->note[0] = '\0';
    if (!gguf_index_build(&g->tensor_index, gguf_tensor_names(g), g->n_tensors, &dup, &first)) {
        snprintf(r->ctx, sizeof r->ctx, "tensor infos");
        if (dup == UINT64_MAX) return gguf_fail(r, CINDER_ERR_NOMEM, "out of memory");
        char shown[80];
        gguf_str_show(shown, sizeof shown, g->tensors[dup].name.ptr, g->tensors[dup].name.len);
        return gguf_fail(r, CINDER_ERR_FORMAT,
                         "tensor #%" PRIu64 " '%s' repeats the name of tensor #%" PRIu64, dup,
                         shown, first);
    }

    /* The data section starts at the end of the infos rounded up to the alignment. A file
     * without tensors may well end before that. */
    uint64_t pad = (g->alignment - r->pos % g->alignment) % g->alignment;
    g->data_offset = pad <= gguf_left(r) ? r->pos + pad : r->size;
    uint64_t avail = r->size - g->data_offset;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor_info *t = &g->tensors[i];
        if (t->offset > avail || t->nbytes > avail - t->offset) {
            char shown[80];
            gguf_str_show(shown, sizeof shown, t->name.ptr, t->name.len);
            snprintf(r->ctx, sizeof r->ctx, "tensor '%s'", shown);
            if (pad > gguf_left(r))
                return gguf_fail(r, CINDER_ERR_FORMAT,
                                 "data section (at offset %zu aligned to %" PRIu64
                                 ") starts past end of file (size %zu)",
                                 r->pos, g->alignment, r->size);
            return gguf_fail(r, CINDER_ERR_FORMAT,
                             "data [offset %" PRIu64 ", %" PRIu64 " bytes) in the data section at "
                             "%" PRIu64 " runs past end of file (size %zu)",
                             t->offset, t->nbytes, g->data_offset, r->size);
        }
        t->data = r->data + g->data_offset + t->offset;
    }
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Open and close */

/* Parses g->file; on failure closes g. */
static gguf_file *gguf_open_parsed(gguf_file *g, cinder_error *err) {
    gguf_reader r = {.data = g->file.data, .size = g->file.size, .err = err};
    if (gguf_parse(&r, g)) return g;
    gguf_close(g);
    return NULL;
}

gguf_file *gguf_open(const char *path, cinder_error *err) {
    gguf_file *g = calloc(1, sizeof *g);
    if (!g) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    if (mapped_file_open(path, &g->file, err) != CINDER_OK) {
        free(g);
        return NULL;
    }
    g = gguf_open_parsed(g, err);
    if (!g) cinder_error_prefix(err, "%s", path);
    return g;
}

gguf_file *gguf_open_memory(const uint8_t *data, size_t size, cinder_error *err) {
    gguf_file *g = calloc(1, sizeof *g);
    if (!g) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "gguf: out of memory");
        return NULL;
    }
    g->file.data = size ? data : NULL;
    g->file.size = size;
    g->file_borrowed = true;
    return gguf_open_parsed(g, err);
}

void gguf_close(gguf_file *g) {
    if (!g) return;
    if (!g->file_borrowed) mapped_file_close(&g->file);
    free(g->kv);
    free(g->tensors);
    free(g->kv_index.slots);
    free(g->tensor_index.slots);
    free(g);
}

void gguf_release_file(gguf_file *g, mapped_file *out) {
    CN_ASSERT(!g->file_borrowed);
    *out = g->file;
    g->file.path = NULL; /* now out's; data and size stay for reference */
    g->file_borrowed = true;
}

/* ------------------------------------------------------------------------------------------ */
/* Lookups and getters */

const gguf_kv *gguf_kv_find(const gguf_file *g, const char *key) {
    uint64_t i = gguf_index_find(&g->kv_index, gguf_kv_names(g), key, strlen(key));
    return i == UINT64_MAX ? NULL : &g->kv[i];
}

const gguf_tensor_info *gguf_tensor_find(const gguf_file *g, const char *name) {
    uint64_t i = gguf_index_find(&g->tensor_index, gguf_tensor_names(g), name, strlen(name));
    return i == UINT64_MAX ? NULL : &g->tensors[i];
}

/* Finds key or fills err with CINDER_ERR_NOT_FOUND. */
static const gguf_kv *gguf_kv_need(const gguf_file *g, const char *key, cinder_error *err) {
    const gguf_kv *kv = gguf_kv_find(g, key);
    if (!kv) cinder_error_set(err, CINDER_ERR_NOT_FOUND, "gguf: key '%s' not found", key);
    return kv;
}

static cinder_status gguf_wrong_type(const gguf_kv *kv, const char *key, const char *wanted,
                                     cinder_error *err) {
    if (kv->type == GGUF_TYPE_ARRAY)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "gguf: key '%s' is an array of %s, not %s",
                                key, gguf_type_name(kv->arr_type), wanted);
    return cinder_error_set(err, CINDER_ERR_FORMAT, "gguf: key '%s' is a %s, not %s", key,
                            gguf_type_name(kv->type), wanted);
}

cinder_status gguf_get_int(const gguf_file *g, const char *key, int64_t *out, cinder_error *err) {
    const gguf_kv *kv = gguf_kv_need(g, key, err);
    if (!kv) return CINDER_ERR_NOT_FOUND;
    bool too_big;
    if (!gguf_load_int(kv->type, kv->value, out, &too_big))
        return gguf_wrong_type(kv, key, "an integer", err);
    if (too_big)
        return cinder_error_set(err, CINDER_ERR_RANGE,
                                "gguf: key '%s': uint64 %" PRIu64 " does not fit an int64", key,
                                gguf_le64(kv->value));
    return CINDER_OK;
}

cinder_status gguf_get_float(const gguf_file *g, const char *key, double *out, cinder_error *err) {
    const gguf_kv *kv = gguf_kv_need(g, key, err);
    if (!kv) return CINDER_ERR_NOT_FOUND;
    if (gguf_type_is_float(kv->type)) {
        *out = gguf_load_float(kv->type, kv->value);
        return CINDER_OK;
    }
    int64_t v;
    bool too_big;
    if (!gguf_load_int(kv->type, kv->value, &v, &too_big))
        return gguf_wrong_type(kv, key, "a number", err);
    *out = too_big ? (double)gguf_le64(kv->value) : (double)v;
    return CINDER_OK;
}

cinder_status gguf_get_bool(const gguf_file *g, const char *key, bool *out, cinder_error *err) {
    const gguf_kv *kv = gguf_kv_need(g, key, err);
    if (!kv) return CINDER_ERR_NOT_FOUND;
    if (kv->type != GGUF_TYPE_BOOL) return gguf_wrong_type(kv, key, "a bool", err);
    *out = kv->value[0] != 0;
    return CINDER_OK;
}

cinder_status gguf_get_str(const gguf_file *g, const char *key, gguf_str *out, cinder_error *err) {
    const gguf_kv *kv = gguf_kv_need(g, key, err);
    if (!kv) return CINDER_ERR_NOT_FOUND;
    if (kv->type != GGUF_TYPE_STRING) return gguf_wrong_type(kv, key, "a string", err);
    out->len = gguf_le64(kv->value);
    out->ptr = (const char *)kv->value + 8;
    return CINDER_OK;
}

cinder_status gguf_get_arr(const gguf_file *g, const char *key, gguf_type *elem_type, uint64_t *n,
                           cinder_error *err) {
    const gguf_kv *kv = gguf_kv_need(g, key, err);
    if (!kv) return CINDER_ERR_NOT_FOUND;
    if (kv->type != GGUF_TYPE_ARRAY)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "gguf: key '%s' is a %s, not an array", key,
                                gguf_type_name(kv->type));
    *elem_type = kv->arr_type;
    *n = kv->arr_n;
    return CINDER_OK;
}

int64_t gguf_arr_int(const gguf_kv *kv, uint64_t i) {
    CN_ASSERT(kv->type == GGUF_TYPE_ARRAY && gguf_type_is_int(kv->arr_type) && i < kv->arr_n);
    int64_t v;
    bool too_big;
    gguf_load_int(kv->arr_type, kv->value + i * gguf_type_info[kv->arr_type].size, &v, &too_big);
    return v;
}

double gguf_arr_float(const gguf_kv *kv, uint64_t i) {
    CN_ASSERT(kv->type == GGUF_TYPE_ARRAY && gguf_type_is_float(kv->arr_type) && i < kv->arr_n);
    return gguf_load_float(kv->arr_type, kv->value + i * gguf_type_info[kv->arr_type].size);
}

gguf_str gguf_arr_str_next(const gguf_kv *kv, uint64_t *cursor) {
    CN_ASSERT(kv->type == GGUF_TYPE_ARRAY && kv->arr_type == GGUF_TYPE_STRING);
    /* gguf_open checked every element, so a cursor short of the end starts a whole one. */
    CN_ASSERT(*cursor < kv->value_size && kv->value_size - *cursor >= 8);
    gguf_str s = {.ptr = (const char *)kv->value + *cursor + 8,
                  .len = gguf_le64(kv->value + *cursor)};
    *cursor += 8 + s.len;
    return s;
}

bool gguf_path_has_magic(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char magic[4];
    bool yes = fread(magic, 1, 4, f) == 4 && memcmp(magic, "GGUF", 4) == 0;
    fclose(f);
    return yes;
}
