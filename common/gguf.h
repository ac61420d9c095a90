/* gguf.h - GGUF reader (versions 2 and 3), memory-mapped and bounds-checked.
 *
 * gguf_open() parses the header, every metadata key/value (arrays included) and every tensor
 * info, checking each offset, size and count against the file before use; a truncated or
 * corrupted file gives CINDER_ERR_FORMAT and a message naming the field (and the key or tensor
 * it belongs to), never a crash or an out-of-bounds read. Tensor types other than F32, F16,
 * BF16, Q8_0, Q4_0, Q4_1 are rejected with CINDER_ERR_UNSUPPORTED naming the type.
 *
 * Strings returned point into the mapping and are NOT NUL-terminated: use the length. */
#ifndef CINDER_GGUF_H
#define CINDER_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "mapped_file.h"
#include "status.h"

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

typedef enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT,
} gguf_type;

/* GGML tensor type ids as stored in the file (model-notes.md). */
enum {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_BF16 = 30,
};

typedef struct gguf_str {
    const char *ptr; /* into the mapping; not NUL-terminated */
    uint64_t len;
} gguf_str;

typedef struct gguf_kv {
    gguf_str key;
    gguf_type type;
    gguf_type arr_type;   /* element type when type == GGUF_TYPE_ARRAY */
    uint64_t arr_n;       /* element count when an array */
    const uint8_t *value; /* first byte of the value (for arrays: of the first element) */
    uint64_t value_size;  /* bytes from value on (for arrays: the elements only) */
} gguf_kv;

typedef struct gguf_tensor_info {
    gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the contiguous dimension; unused dims are 1 */
    dtype type;
    uint64_t offset; /* from the start of the data section */
    uint64_t nbytes;
    const uint8_t *data;
} gguf_tensor_info;

/* Open-addressing hash of the key or tensor names, for O(1) lookups and duplicate checks.
 * Private to gguf.c. */
typedef struct gguf_name_index {
    uint64_t *slots; /* entry index + 1; 0 is an empty slot */
    uint64_t mask;   /* slot count - 1 (a power of two) */
} gguf_name_index;

typedef struct gguf_file {
    mapped_file file;
    uint32_t version;
    uint64_t alignment;
    gguf_kv *kv;
    uint64_t n_kv;
    gguf_tensor_info *tensors;
    uint64_t n_tensors;
    uint64_t data_offset; /* start of the data section in the file */
    gguf_name_index kv_index, tensor_index;
    bool file_borrowed; /* file.data is not ours to unmap (gguf_open_memory, gguf_release_file) */
} gguf_file;

/* Parses a GGUF file. Returns NULL and fills err on any problem. */
gguf_file *gguf_open(const char *path, cinder_error *err);
/* Parses a GGUF image already in memory (not copied; must outlive the result). For tests. */
gguf_file *gguf_open_memory(const uint8_t *data, size_t size, cinder_error *err);
void gguf_close(gguf_file *g);
/* Hands the mapping over to the caller (*out), who must keep it mapped while g and anything
 * pointing into the file are in use; gguf_close(g) then leaves it alone. */
void gguf_release_file(gguf_file *g, mapped_file *out);

/* Whether the file at path starts with the "GGUF" magic (false when it cannot be read). */
bool gguf_path_has_magic(const char *path);

/* Looks a key up; NULL when absent. */
const gguf_kv *gguf_kv_find(const gguf_file *g, const char *key);
const char *gguf_type_name(gguf_type t);

/* Typed getters: CINDER_ERR_NOT_FOUND when absent, CINDER_ERR_FORMAT (naming the key) when
 * the stored type does not fit. gguf_get_int accepts any integer type (writers differ) and
 * checks the value fits an int64 (CINDER_ERR_RANGE if not); gguf_get_float accepts float32,
 * float64 and any integer type. */
cinder_status gguf_get_int(const gguf_file *g, const char *key, int64_t *out, cinder_error *err);
cinder_status gguf_get_float(const gguf_file *g, const char *key, double *out, cinder_error *err);
cinder_status gguf_get_bool(const gguf_file *g, const char *key, bool *out, cinder_error *err);
cinder_status gguf_get_str(const gguf_file *g, const char *key, gguf_str *out, cinder_error *err);

/* Array access: element count and type of an array key, then element i. Strings of an array
 * are walked in order: gguf_arr_str_next() advances a cursor (start it at 0) and is O(1). */
cinder_status gguf_get_arr(const gguf_file *g, const char *key, gguf_type *elem_type,
                           uint64_t *n, cinder_error *err);
int64_t gguf_arr_int(const gguf_kv *kv, uint64_t i);   /* integer element i (checked type) */
double gguf_arr_float(const gguf_kv *kv, uint64_t i);  /* float element i */
gguf_str gguf_arr_str_next(const gguf_kv *kv, uint64_t *cursor); /* next string element */
/* (The three above assert on a wrong element type or index: check with gguf_get_arr first.
 * uint64 elements above INT64_MAX come back from gguf_arr_int as INT64_MAX.) */

/* NULL when absent. name is NUL-terminated. */
const gguf_tensor_info *gguf_tensor_find(const gguf_file *g, const char *name);

/* True when s equals the NUL-terminated c. */
bool gguf_str_eq(gguf_str s, const char *c);

/* GGML type ids <-> dtype. gguf_ggml_type_name() knows the ids cinder cannot read too
 * ("Q4_K"); NULL for an id it has never heard of. */
uint32_t gguf_ggml_type_from_dtype(dtype t);
bool gguf_ggml_type_to_dtype(uint32_t ggml_type, dtype *out);
const char *gguf_ggml_type_name(uint32_t ggml_type);

#endif
