/* gguf_write.h - builds a GGUF file (version 3 unless told otherwise) and writes it out.
 *
 * Add metadata and tensors in the order they should appear in the file, then write it to a
 * path or to a malloc'd buffer. Tensor data is NOT copied: it must stay valid until the file
 * is written. Each tensor's data starts on the alignment (32, or gguf_writer_set_alignment)
 * and is padded to it, as llama.cpp writes them.
 *
 * The first failure (a bad argument, a repeated name, out of memory) is remembered: later
 * adds do nothing and the write functions return it with its message, so a builder may
 * check only at the end. */
#ifndef CINDER_GGUF_WRITE_H
#define CINDER_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "gguf.h"
#include "status.h"

typedef struct gguf_writer gguf_writer;

/* NULL when out of memory. */
gguf_writer *gguf_writer_init(void);
void gguf_writer_free(gguf_writer *w);

/* 2 or 3 (the layouts are the same). */
cinder_status gguf_writer_set_version(gguf_writer *w, uint32_t version);
/* A nonzero power of two: stored as the uint32 key general.alignment (added, or updated in
 * place when set before) and used to place the tensor data. */
cinder_status gguf_writer_set_alignment(gguf_writer *w, uint32_t alignment);

/* Metadata, one function per value type. Keys must be unique. */
cinder_status gguf_writer_add_u8(gguf_writer *w, const char *key, uint8_t v);
cinder_status gguf_writer_add_i8(gguf_writer *w, const char *key, int8_t v);
cinder_status gguf_writer_add_u16(gguf_writer *w, const char *key, uint16_t v);
cinder_status gguf_writer_add_i16(gguf_writer *w, const char *key, int16_t v);
cinder_status gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v);
cinder_status gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v);
cinder_status gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v);
cinder_status gguf_writer_add_i64(gguf_writer *w, const char *key, int64_t v);
cinder_status gguf_writer_add_f32(gguf_writer *w, const char *key, float v);
cinder_status gguf_writer_add_f64(gguf_writer *w, const char *key, double v);
cinder_status gguf_writer_add_bool(gguf_writer *w, const char *key, bool v);
cinder_status gguf_writer_add_str(gguf_writer *w, const char *key, const char *v);
/* An array of n fixed-size elements in host layout: uint8_t[] for GGUF_TYPE_UINT8, ...,
 * float[] for FLOAT32, double[] for FLOAT64, bool[] for BOOL. */
cinder_status gguf_writer_add_arr(gguf_writer *w, const char *key, gguf_type elem_type,
                                  const void *elems, uint64_t n);
cinder_status gguf_writer_add_arr_str(gguf_writer *w, const char *key, const char *const *strs,
                                      uint64_t n);
/* Any type id with value bytes exactly as they follow the type in the file (for tests that
 * need odd files: nested arrays, bad bools, unknown types). */
cinder_status gguf_writer_add_raw(gguf_writer *w, const char *key, uint32_t type, const void *value,
                                  size_t size);

/* A tensor: ne[0..n_dims) in GGUF order (ne[0] is the contiguous dimension), nbytes must be
 * the size its type and shape give. Names must be unique. */
cinder_status gguf_writer_add_tensor(gguf_writer *w, const char *name, dtype type, int n_dims,
                                     const uint64_t *ne, const void *data, size_t nbytes);
/* The same with a raw GGML type id and no check of nbytes (for tests of unsupported types). */
cinder_status gguf_writer_add_tensor_ggml(gguf_writer *w, const char *name, uint32_t ggml_type,
                                          int n_dims, const uint64_t *ne, const void *data,
                                          size_t nbytes);

/* ---- Streamed tensors: data produced while the file is written, for files larger than memory.
 *
 * A producer is called once per streamed tensor, in file order, when the file is written (the
 * counting pass of gguf_writer_write_buffer does not call it). It hands the tensor's bytes to
 * gguf_stream_write in pieces of any size, exactly nbytes in all, and returns CINDER_OK; an
 * error it returns (err filled) stops the write, as does a wrong byte count. */
typedef struct gguf_stream gguf_stream;
typedef cinder_status (*gguf_tensor_producer)(void *ctx, gguf_stream *out, cinder_error *err);

/* Appends n bytes of the tensor being produced. CINDER_ERR_IO when the file write failed,
 * CINDER_ERR_RANGE past the tensor's nbytes (err filled). */
cinder_status gguf_stream_write(gguf_stream *s, const void *data, size_t n, cinder_error *err);

/* Like gguf_writer_add_tensor, with the data from produce(ctx, ...) at write time; ctx must
 * stay valid until then. */
cinder_status gguf_writer_add_tensor_stream(gguf_writer *w, const char *name, dtype type,
                                            int n_dims, const uint64_t *ne, size_t nbytes,
                                            gguf_tensor_producer produce, void *ctx);

/* Writes the file (removed again if writing fails). */
cinder_status gguf_writer_write_file(gguf_writer *w, const char *path, cinder_error *err);
/* Writes into a malloc'd buffer (*out, *size bytes) that the caller frees. */
cinder_status gguf_writer_write_buffer(gguf_writer *w, uint8_t **out, size_t *size,
                                       cinder_error *err);

#endif
