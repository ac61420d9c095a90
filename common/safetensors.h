/* safetensors.h - safetensors reader (memory-mapped, bounds-checked) and writer.
 *
 * A .safetensors file is: a little-endian u64 N, N bytes of JSON header, then the data section.
 * The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
 * from the start of the data section); an optional "__metadata__" object of strings is ignored.
 *
 * st_open() checks everything before use: the header length against the file, the JSON, every
 * field's type, that numbers are exact non-negative integers (<= 2^53), that each tensor's byte
 * range lies inside the data section, matches its shape and does not overlap another's, and
 * that names are unique. Any problem gives CINDER_ERR_FORMAT and a message naming the file,
 * the tensor and the field; dtypes other than F32, F16 and BF16 give CINDER_ERR_UNSUPPORTED.
 * A corrupted file never causes a crash or an out-of-bounds read.
 *
 * The writer builds the files (tests, and the model-writing tool): tensors are laid out by
 * element size, largest first, after a header padded to 8 bytes, so every tensor's data is
 * aligned to its element size in a mapping (what the Python safetensors library does too). */
#ifndef CINDER_SAFETENSORS_H
#define CINDER_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "mapped_file.h"
#include "status.h"

#define ST_MAX_DIMS         4
#define ST_MAX_HEADER_BYTES (100u * 1000u * 1000u) /* larger headers are refused as corrupt */
#define ST_MAX_EXACT_INT    9007199254740992.0     /* 2^53: larger JSON numbers are refused */

typedef struct st_tensor {
    char *name;                 /* owned, NUL-terminated */
    dtype type;                 /* F32, F16 or BF16 */
    int n_dims;                 /* 0 for a scalar (shape []) */
    int64_t shape[ST_MAX_DIMS]; /* row-major, outermost first */
    uint64_t offset;            /* bytes from the start of the data section */
    uint64_t nbytes;
    const uint8_t *data; /* inside the mapping; NULL when nbytes is 0 */
} st_tensor;

typedef struct st_file {
    mapped_file file;    /* empty for st_open_memory, and after st_file_take_mapping */
    char *what;          /* the path (or name) used in messages; owned */
    uint64_t header_len; /* N */
    uint64_t data_start; /* 8 + N: where the data section starts in the file */
    uint64_t data_size;  /* bytes in the data section */
    st_tensor *tensors;  /* [n_tensors], sorted by name */
    int n_tensors;
} st_file;

/* Maps and parses a .safetensors file. Returns NULL and fills err on any problem. */
st_file *st_open(const char *path, cinder_error *err);
/* Parses an image already in memory (not copied; must outlive the result). what names it in
 * messages. For tests. */
st_file *st_open_memory(const uint8_t *data, size_t size, const char *what, cinder_error *err);
/* Unmaps (unless the mapping was taken) and frees; accepts NULL. */
void st_close(st_file *f);

/* NULL when absent (binary search). */
const st_tensor *st_tensor_find(const st_file *f, const char *name);

/* Moves the mapping out of f into *out (for model_add_file): the tensors' data pointers stay
 * valid as long as *out stays mapped, and st_close no longer unmaps it. */
void st_file_take_mapping(st_file *f, mapped_file *out);

/* Maps a safetensors dtype string ("F32", "BF16", ...) to a dtype; false when cinder does not
 * read it (F64, I8, U8, F8_E4M3, ...). */
bool st_dtype_from_name(const char *name, dtype *out);

/* ---- writer ---- */

typedef struct st_writer st_writer;

st_writer *st_writer_init(void);
void st_writer_free(st_writer *w);
/* Adds a "__metadata__" entry (both strings copied). */
cinder_status st_writer_set_metadata(st_writer *w, const char *key, const char *value,
                                     cinder_error *err);
/* Adds a tensor. The name and shape are copied; data (nbytes, which must equal
 * numel * element size) is NOT copied and must stay valid until st_writer_write. */
cinder_status st_writer_add(st_writer *w, const char *name, dtype type, int n_dims,
                            const int64_t *shape, const void *data, size_t nbytes,
                            cinder_error *err);
/* Streamed tensors, for files larger than memory: the data is produced while the file is
 * written. The producer is called once per streamed tensor, in file order, and hands the bytes
 * to st_stream_write in pieces of any size, exactly nbytes in all; an error it returns (err
 * filled) stops the write, as does a wrong byte count. */
typedef struct st_stream st_stream;
typedef cinder_status (*st_tensor_producer)(void *ctx, st_stream *out, cinder_error *err);
/* Appends n bytes of the tensor being produced (CINDER_ERR_IO when the write failed,
 * CINDER_ERR_RANGE past its nbytes). */
cinder_status st_stream_write(st_stream *s, const void *data, size_t n, cinder_error *err);
/* Like st_writer_add, with the data from produce(ctx, ...) at write time; ctx must stay valid
 * until then. */
cinder_status st_writer_add_stream(st_writer *w, const char *name, dtype type, int n_dims,
                                   const int64_t *shape, size_t nbytes, st_tensor_producer produce,
                                   void *ctx, cinder_error *err);

/* Writes the file (replacing path). The writer can be written again or freed afterwards. */
cinder_status st_writer_write(const st_writer *w, const char *path, cinder_error *err);

#endif
