#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* ============================================================================================
 * Reader
 * ========================================================================================== */

static const struct {
    const char *name;
    dtype type;
} st_dtypes[] = {
    {"F32", DTYPE_F32},
    {"F16", DTYPE_F16},
    {"BF16", DTYPE_BF16},
};

bool st_dtype_from_name(const char *name, dtype *out) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++) {
        if (strcmp(name, st_dtypes[i].name) == 0) {
            *out = st_dtypes[i].type;
            return true;
        }
    }
    return false;
}

static const char *st_dtype_name(dtype t) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].type == t) return st_dtypes[i].name;
    return NULL;
}

/* A short printable form of a JSON value for messages ("-3", "\"nine\"", "[1,2]..."). */
static const char *st_json_repr(const cJSON *item, char *buf, size_t size) {
    char *s = cJSON_PrintUnformatted(item);
    if (!s) {
        snprintf(buf, size, "(unprintable)");
        return buf;
    }
    if (strlen(s) < size) {
        snprintf(buf, size, "%s", s);
    } else {
        snprintf(buf, size, "%.*s...", (int)(size - 4), s);
    }
    cJSON_free(s);
    return buf;
}

/* True when item is a JSON number holding an exact integer in [0, 2^53]. */
static bool st_json_exact_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return false;
    double d = item->valuedouble;
    if (!isfinite(d) || d < 0 || d > ST_MAX_EXACT_INT || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

static uint64_t st_read_u64_le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static bool st_is_json_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Parses one tensor entry of the header into t (t->name already set). */
static cinder_status st_parse_tensor(const st_file *f, const cJSON *entry, st_tensor *t,
                                     cinder_error *err) {
    const char *what = f->what, *name = t->name;
    char repr[64];
    if (!cJSON_IsObject(entry))
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s': entry must be a JSON object, got %s", what, name,
                                st_json_repr(entry, repr, sizeof repr));

    /* dtype */
    const cJSON *jdtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    if (!jdtype)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s: tensor '%s': missing 'dtype'", what,
                                name);
    if (!cJSON_IsString(jdtype))
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s': 'dtype' must be a string, got %s", what, name,
                                st_json_repr(jdtype, repr, sizeof repr));
    if (!st_dtype_from_name(jdtype->valuestring, &t->type))
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "%s: tensor '%s': dtype %s is not supported (cinder reads F32, "
                                "F16 and BF16)",
                                what, name, st_json_repr(jdtype, repr, sizeof repr));

    /* shape */
    const cJSON *jshape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    if (!jshape)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s: tensor '%s': missing 'shape'", what,
                                name);
    if (!cJSON_IsArray(jshape))
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s': 'shape' must be an array, got %s", what, name,
                                st_json_repr(jshape, repr, sizeof repr));
    int n_dims = cJSON_GetArraySize(jshape);
    if (n_dims > ST_MAX_DIMS)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s': 'shape' has %d dimensions (at most %d)", what,
                                name, n_dims, ST_MAX_DIMS);
    t->n_dims = n_dims;
    bool has_zero = false;
    int d = 0;
    for (const cJSON *jdim = jshape->child; jdim; jdim = jdim->next, d++) {
        uint64_t dim;
        if (!st_json_exact_uint(jdim, &dim))
            return cinder_error_set(err, CINDER_ERR_FORMAT,
                                    "%s: tensor '%s': 'shape'[%d] must be a non-negative integer "
                                    "(at most 2^53), got %s",
                                    what, name, d, st_json_repr(jdim, repr, sizeof repr));
        t->shape[d] = (int64_t)dim;
        if (dim == 0) has_zero = true;
    }

    /* Bytes the shape needs, overflow-checked (dims are <= 2^53, so each fits an int64). */
    uint64_t esize = dtype_block_bytes(t->type), need = has_zero ? 0 : esize;
    for (int i = 0; i < n_dims && !has_zero; i++) {
        uint64_t dim = (uint64_t)t->shape[i];
        if (need > UINT64_MAX / dim)
            return cinder_error_set(err, CINDER_ERR_FORMAT,
                                    "%s: tensor '%s': 'shape' is too large (its byte size "
                                    "overflows 64 bits)",
                                    what, name);
        need *= dim;
    }

    /* data_offsets */
    const cJSON *joff = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!joff)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "%s: tensor '%s': missing 'data_offsets'",
                                what, name);
    uint64_t begin, end;
    if (!cJSON_IsArray(joff) || cJSON_GetArraySize(joff) != 2 ||
        !st_json_exact_uint(joff->child, &begin) || !st_json_exact_uint(joff->child->next, &end))
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s': 'data_offsets' must be [begin, end] with "
                                "non-negative integers (at most 2^53), got %s",
                                what, name, st_json_repr(joff, repr, sizeof repr));
    if (begin > end)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s': data_offsets [%llu, %llu) end before they begin",
                                what, name, (unsigned long long)begin, (unsigned long long)end);
    if (end > f->data_size)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s': data_offsets [%llu, %llu) exceed the data "
                                "section (%llu bytes)",
                                what, name, (unsigned long long)begin, (unsigned long long)end,
                                (unsigned long long)f->data_size);
    if (end - begin != need)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: tensor '%s': data_offsets [%llu, %llu) hold %llu bytes but "
                                "a %s tensor of shape %s needs %llu",
                                what, name, (unsigned long long)begin, (unsigned long long)end,
                                (unsigned long long)(end - begin), jdtype->valuestring,
                                st_json_repr(jshape, repr, sizeof repr), (unsigned long long)need);
    t->offset = begin;
    t->nbytes = need;
    return CINDER_OK;
}

static cinder_status st_check_metadata(const st_file *f, const cJSON *meta, cinder_error *err) {
    if (cJSON_IsNull(meta)) return CINDER_OK;
    bool ok = cJSON_IsObject(meta);
    for (const cJSON *kv = ok ? meta->child : NULL; kv && ok; kv = kv->next)
        ok = cJSON_IsString(kv);
    if (!ok)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: '__metadata__' must be an object of strings", f->what);
    return CINDER_OK;
}

static int st_cmp_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int st_cmp_offset(const void *a, const void *b) {
    const st_tensor *ta = *(const st_tensor *const *)a, *tb = *(const st_tensor *const *)b;
    if (ta->offset != tb->offset) return ta->offset < tb->offset ? -1 : 1;
    return strcmp(ta->name, tb->name);
}

/* Names unique, byte ranges disjoint. Sorts f->tensors by name. */
static cinder_status st_check_layout(st_file *f, cinder_error *err) {
    int n = f->n_tensors;
    if (n == 0) return CINDER_OK;
    qsort(f->tensors, (size_t)n, sizeof *f->tensors, st_cmp_name);
    for (int i = 1; i < n; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return cinder_error_set(err, CINDER_ERR_FORMAT, "%s: tensor '%s' appears twice",
                                    f->what, f->tensors[i].name);

    const st_tensor **by_off = malloc((size_t)n * sizeof *by_off);
    if (!by_off) return cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", f->what);
    for (int i = 0; i < n; i++) by_off[i] = &f->tensors[i];
    qsort(by_off, (size_t)n, sizeof *by_off, st_cmp_offset);
    const st_tensor *prev = NULL;
    cinder_status st = CINDER_OK;
    for (int i = 0; i < n && st == CINDER_OK; i++) {
        const st_tensor *t = by_off[i];
        if (t->nbytes == 0) continue;
        if (prev && t->offset < prev->offset + prev->nbytes)
            st = cinder_error_set(err, CINDER_ERR_FORMAT,
                                  "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap",
                                  f->what, prev->name, (unsigned long long)prev->offset,
                                  (unsigned long long)(prev->offset + prev->nbytes), t->name,
                                  (unsigned long long)t->offset,
                                  (unsigned long long)(t->offset + t->nbytes));
        prev = t;
    }
    free(by_off);
    return st;
}

/* Parses data[0, size) into f (whose what is set). */
static cinder_status st_parse(st_file *f, const uint8_t *data, size_t size, cinder_error *err) {
    const char *what = f->what;
    if (size < 8)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: file is %zu bytes, too short for the 8-byte header length",
                                what, size);
    uint64_t n = st_read_u64_le(data);
    if (n > ST_MAX_HEADER_BYTES)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: header length %llu is implausibly large (limit %u bytes): "
                                "not a safetensors file, or corrupted",
                                what, (unsigned long long)n, ST_MAX_HEADER_BYTES);
    if (n > size - 8)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "%s: header length %llu exceeds the %zu bytes that follow it "
                                "(truncated file?)",
                                what, (unsigned long long)n, size - 8);
    if (n == 0) return cinder_error_set(err, CINDER_ERR_FORMAT, "%s: header is empty", what);
    f->header_len = n;
    f->data_start = 8 + n;
    f->data_size = size - f->data_start;

    /* A NUL-terminated copy: cJSON then never has a reason to look past the header. */
    char *text = malloc((size_t)n + 1);
    if (!text) return cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", what);
    memcpy(text, data + 8, (size_t)n);
    text[n] = '\0';

    cinder_status st = CINDER_OK;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, (size_t)n, &end, 0);
    if (!root) {
        size_t at = end && end >= text && end <= text + n ? (size_t)(end - text) : 0;
        st = cinder_error_set(err, CINDER_ERR_FORMAT,
                              "%s: header is not valid JSON (error near byte %zu of %llu)", what,
                              at, (unsigned long long)n);
        goto done;
    }
    for (const char *p = end; p < text + n; p++) {
        if (!st_is_json_space(*p)) {
            st = cinder_error_set(err, CINDER_ERR_FORMAT,
                                  "%s: header has data after its JSON value (byte %zu of %llu)",
                                  what, (size_t)(p - text), (unsigned long long)n);
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        char repr[64];
        st = cinder_error_set(err, CINDER_ERR_FORMAT, "%s: header must be a JSON object, got %s",
                              what, st_json_repr(root, repr, sizeof repr));
        goto done;
    }

    int count = 0;
    for (const cJSON *e = root->child; e; e = e->next) count++;
    if (count > 0) {
        f->tensors = calloc((size_t)count, sizeof *f->tensors);
        if (!f->tensors) {
            st = cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", what);
            goto done;
        }
    }
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            st = st_check_metadata(f, e, err);
            if (st != CINDER_OK) goto done;
            continue;
        }
        if (e->string[0] == '\0') {
            st = cinder_error_set(err, CINDER_ERR_FORMAT, "%s: a tensor has an empty name", what);
            goto done;
        }
        st_tensor *t = &f->tensors[f->n_tensors];
        t->name = strdup(e->string);
        if (!t->name) {
            st = cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", what);
            goto done;
        }
        f->n_tensors++;
        st = st_parse_tensor(f, e, t, err);
        if (st != CINDER_OK) goto done;
        t->data = t->nbytes ? data + f->data_start + t->offset : NULL;
    }
    st = st_check_layout(f, err);

done:
    cJSON_Delete(root);
    free(text);
    return st;
}

static st_file *st_new(const char *what, cinder_error *err) {
    st_file *f = calloc(1, sizeof *f);
    if (f) f->what = strdup(what);
    if (!f || !f->what) {
        free(f);
        cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", what);
        return NULL;
    }
    return f;
}

st_file *st_open_memory(const uint8_t *data, size_t size, const char *what, cinder_error *err) {
    st_file *f = st_new(what, err);
    if (!f) return NULL;
    if (st_parse(f, data, size, err) != CINDER_OK) {
        st_close(f);
        return NULL;
    }
    return f;
}

st_file *st_open(const char *path, cinder_error *err) {
    st_file *f = st_new(path, err);
    if (!f) return NULL;
    if (mapped_file_open(path, &f->file, err) != CINDER_OK) goto fail;
    if (st_parse(f, f->file.data, f->file.size, err) != CINDER_OK) goto fail;
    LOG_DEBUG("%s: %d tensors, header %llu bytes, data %llu bytes", path, f->n_tensors,
              (unsigned long long)f->header_len, (unsigned long long)f->data_size);
    return f;
fail:
    st_close(f);
    return NULL;
}

void st_close(st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    mapped_file_close(&f->file);
    free(f->what);
    free(f);
}

const st_tensor *st_tensor_find(const st_file *f, const char *name) {
    if (!f || f->n_tensors == 0) return NULL;
    st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, st_cmp_name);
}

void st_file_take_mapping(st_file *f, mapped_file *out) {
    *out = f->file;
    memset(&f->file, 0, sizeof f->file);
}

/* ============================================================================================
 * Writer
 * ========================================================================================== */

typedef struct st_writer_tensor {
    char *name;
    dtype type;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
    size_t nbytes;
    st_tensor_producer produce; /* streamed tensors: data comes from produce(ctx) instead */
    void *ctx;
} st_writer_tensor;

struct st_writer {
    st_writer_tensor *tensors; /* [n_tensors], in the order added */
    int n_tensors, cap_tensors;
    char **meta; /* [2 * n_meta]: key, value, key, value, ... */
    int n_meta, cap_meta;
};

st_writer *st_writer_init(void) {
    return calloc(1, sizeof(st_writer));
}

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    for (int i = 0; i < 2 * w->n_meta; i++) free(w->meta[i]);
    free(w->meta);
    free(w);
}

/* Grows *arr (of elem-sized items) so that it holds at least n + 1. */
static bool st_grow(void **arr, int *cap, int n, size_t elem) {
    if (n < *cap) return true;
    int new_cap = *cap ? 2 * *cap : 16;
    void *p = realloc(*arr, (size_t)new_cap * elem);
    if (!p) return false;
    *arr = p;
    *cap = new_cap;
    return true;
}

cinder_status st_writer_set_metadata(st_writer *w, const char *key, const char *value,
                                     cinder_error *err) {
    if (!st_grow((void **)&w->meta, &w->cap_meta, 2 * w->n_meta + 1, sizeof *w->meta))
        return cinder_error_set(err, CINDER_ERR_NOMEM, "safetensors writer: out of memory");
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return cinder_error_set(err, CINDER_ERR_NOMEM, "safetensors writer: out of memory");
    }
    w->meta[2 * w->n_meta] = k;
    w->meta[2 * w->n_meta + 1] = v;
    w->n_meta++;
    return CINDER_OK;
}

cinder_status st_writer_add(st_writer *w, const char *name, dtype type, int n_dims,
                            const int64_t *shape, const void *data, size_t nbytes,
                            cinder_error *err) {
    if (!name[0] || strcmp(name, "__metadata__") == 0)
        return cinder_error_set(err, CINDER_ERR_ARG, "safetensors writer: bad tensor name '%s'",
                                name);
    if (!st_dtype_name(type))
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                "safetensors writer: tensor '%s': dtype %s cannot be written", name,
                                dtype_name(type));
    if (n_dims < 0 || n_dims > ST_MAX_DIMS)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "safetensors writer: tensor '%s': %d dimensions (at most %d)", name,
                                n_dims, ST_MAX_DIMS);
    uint64_t need = dtype_block_bytes(type);
    for (int i = 0; i < n_dims; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > (uint64_t)ST_MAX_EXACT_INT)
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "safetensors writer: tensor '%s': bad dimension %lld", name,
                                    (long long)shape[i]);
        if (shape[i] && need > UINT64_MAX / (uint64_t)shape[i])
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "safetensors writer: tensor '%s': shape too large", name);
        need *= (uint64_t)shape[i];
    }
    if (need != nbytes)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "safetensors writer: tensor '%s': %zu bytes given, shape needs "
                                "%llu",
                                name, nbytes, (unsigned long long)need);
    for (int i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "safetensors writer: tensor '%s' added twice", name);
    if (!st_grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors, sizeof *w->tensors))
        return cinder_error_set(err, CINDER_ERR_NOMEM, "safetensors writer: out of memory");
    st_writer_tensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name)
        return cinder_error_set(err, CINDER_ERR_NOMEM, "safetensors writer: out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (int i = 0; i < n_dims; i++) t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = nbytes;
    w->n_tensors++;
    return CINDER_OK;
}

cinder_status st_writer_add_stream(st_writer *w, const char *name, dtype type, int n_dims,
                                   const int64_t *shape, size_t nbytes, st_tensor_producer produce,
                                   void *ctx, cinder_error *err) {
    if (!produce)
        return cinder_error_set(err, CINDER_ERR_ARG, "safetensors writer: tensor '%s': no producer",
                                name);
    /* st_writer_add only keeps the data pointer: add with none, then attach the producer. */
    cinder_status s = st_writer_add(w, name, type, n_dims, shape, NULL, nbytes, err);
    if (s) return s;
    w->tensors[w->n_tensors - 1].produce = produce;
    w->tensors[w->n_tensors - 1].ctx = ctx;
    return CINDER_OK;
}

struct st_stream {
    FILE *fp;
    const st_writer_tensor *t;
    size_t left; /* bytes the producer still owes */
};

cinder_status st_stream_write(st_stream *s, const void *data, size_t n, cinder_error *err) {
    if (n > s->left)
        return cinder_error_set(err, CINDER_ERR_RANGE,
                                "safetensors writer: tensor '%s': producer gave more than its %zu "
                                "bytes",
                                s->t->name, s->t->nbytes);
    if (n && fwrite(data, 1, n, s->fp) != n)
        return cinder_error_set(err, CINDER_ERR_IO, "safetensors writer: tensor '%s': %s",
                                s->t->name, strerror(errno));
    s->left -= n;
    return CINDER_OK;
}

/* Runs a streamed tensor's producer into fp. */
static cinder_status st_writer_produce(const st_writer_tensor *t, FILE *fp, cinder_error *err) {
    st_stream stream = {fp, t, t->nbytes};
    cinder_status s = t->produce(t->ctx, &stream, err);
    if (s == CINDER_OK && stream.left)
        s = cinder_error_set(err, CINDER_ERR_RANGE,
                             "safetensors writer: tensor '%s': producer gave %zu of its %zu bytes",
                             t->name, t->nbytes - stream.left, t->nbytes);
    return s;
}

/* A growable string for building the header. */
typedef struct st_buf {
    char *p;
    size_t len, cap;
    bool oom;
} st_buf;

static void st_buf_put(st_buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void st_buf_str(st_buf *b, const char *s) {
    st_buf_put(b, s, strlen(s));
}

/* A JSON string literal, quoted and escaped. */
static void st_buf_json_string(st_buf *b, const char *s) {
    st_buf_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*c;
            st_buf_put(b, esc, 2);
        } else if (*c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            st_buf_str(b, esc);
        } else {
            st_buf_put(b, (const char *)c, 1);
        }
    }
    st_buf_put(b, "\"", 1);
}

static void st_buf_u64(st_buf *b, uint64_t v) {
    char num[32];
    snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    st_buf_str(b, num);
}

/* Write order: element size descending, then the order added (keeps every tensor aligned). */
static int st_cmp_write_order(const void *a, const void *b) {
    const st_writer_tensor *ta = *(const st_writer_tensor *const *)a;
    const st_writer_tensor *tb = *(const st_writer_tensor *const *)b;
    size_t ea = dtype_block_bytes(ta->type), eb = dtype_block_bytes(tb->type);
    if (ea != eb) return ea > eb ? -1 : 1;
    return ta < tb ? -1 : ta > tb;
}

cinder_status st_writer_write(const st_writer *w, const char *path, cinder_error *err) {
    cinder_status st = CINDER_OK;
    FILE *fp = NULL;
    st_buf hdr = {0};
    int n = w->n_tensors;
    const st_writer_tensor **order = malloc((size_t)(n ? n : 1) * sizeof *order);
    if (!order) return cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) order[i] = &w->tensors[i];
    qsort(order, (size_t)n, sizeof *order, st_cmp_write_order);

    st_buf_str(&hdr, "{");
    if (w->n_meta) {
        st_buf_str(&hdr, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) st_buf_str(&hdr, ",");
            st_buf_json_string(&hdr, w->meta[2 * i]);
            st_buf_str(&hdr, ":");
            st_buf_json_string(&hdr, w->meta[2 * i + 1]);
        }
        st_buf_str(&hdr, "}");
    }
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const st_writer_tensor *t = order[i];
        if (i || w->n_meta) st_buf_str(&hdr, ",");
        st_buf_json_string(&hdr, t->name);
        st_buf_str(&hdr, ":{\"dtype\":\"");
        st_buf_str(&hdr, st_dtype_name(t->type));
        st_buf_str(&hdr, "\",\"shape\":[");
        for (int d = 0; d < t->n_dims; d++) {
            if (d) st_buf_str(&hdr, ",");
            st_buf_u64(&hdr, (uint64_t)t->shape[d]);
        }
        st_buf_str(&hdr, "],\"data_offsets\":[");
        st_buf_u64(&hdr, offset);
        st_buf_str(&hdr, ",");
        offset += t->nbytes;
        st_buf_u64(&hdr, offset);
        st_buf_str(&hdr, "]}");
    }
    st_buf_str(&hdr, "}");
    while (!hdr.oom && hdr.len % 8 != 0) st_buf_str(&hdr, " ");
    if (hdr.oom) {
        st = cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }

    fp = fopen(path, "wb");
    if (!fp) {
        st = cinder_error_set(err, CINDER_ERR_IO, "%s: %s", path, strerror(errno));
        goto done;
    }
    uint8_t len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (uint8_t)((uint64_t)hdr.len >> (8 * i));
    bool ok = fwrite(len_le, 1, 8, fp) == 8 && fwrite(hdr.p, 1, hdr.len, fp) == hdr.len;
    for (int i = 0; i < n && ok && st == CINDER_OK; i++)
        if (order[i]->produce)
            st = st_writer_produce(order[i], fp, err);
        else if (order[i]->nbytes)
            ok = fwrite(order[i]->data, 1, order[i]->nbytes, fp) == order[i]->nbytes;
    if (fclose(fp) != 0) ok = false;
    fp = NULL;
    if (st != CINDER_OK) {
        remove(path);
    } else if (!ok) {
        st = cinder_error_set(err, CINDER_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        remove(path);
    }

done:
    free(hdr.p);
    free(order);
    return st;
}
