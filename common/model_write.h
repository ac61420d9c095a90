/* model_write.h - random-weight Llama-family models of any shape, written as a GGUF file or a
 * Hugging Face folder, for tests and benchmarks.
 *
 * Weights are deterministic: every row of every tensor has its own random stream, seeded from
 * the seed, the tensor's canonical name and the row, so the same options write byte-identical
 * files and any row can be made again on its own (model_write_values). 2-D weights are
 * N(0, init_std^2) (a sum of four uniforms: close to normal, bounded at 3.5 sigma), norm weights
 * 1 + N(0, 0.02^2).
 *
 * Both formats hold the same model: the GGUF file stores Q and K rows in the order of its
 * interleaved RoPE, the HF folder in the order of rotate_half (llama.cpp's converter permutes
 * them the same way), so both compute the same function. Every other tensor holds the same
 * values in both.
 *
 * GGUF: general.* and llama.* keys as llama.cpp writes them, canonical tensor names (model.h),
 * 2-D weights in o->type, token_embd and output in o->embed_type, norms F32, alignment 32.
 * HF: config.json (LlamaForCausalLM) and model.safetensors (F32, F16 or BF16 only).
 *
 * Tokenizer: the one of o->tokenizer_from (every tokenizer.* key of a GGUF file for GGUF output;
 * tokenizer.json, tokenizer_config.json and special_tokens_map.json of an HF folder for HF
 * output), else a built-in byte-level BPE tokenizer of 259 tokens: id b < 256 is byte b,
 * 256 <|endoftext|>, 257 <|im_start|> (BOS), 258 <|im_end|> (EOS), with a ChatML template and
 * no merges (text encodes to one token per byte). model_open() needs a tokenizer in a GGUF file.
 *
 * Memory: the file is produced tensor by tensor, a few MB of rows at a time, whatever its size. */
#ifndef CINDER_MODEL_WRITE_H
#define CINDER_MODEL_WRITE_H

#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"
#include "model.h"
#include "status.h"

#define MODEL_WRITE_DEFAULT_STD   0.02f
#define MODEL_WRITE_BUILTIN_VOCAB 259 /* tokens of the built-in tokenizer */

typedef struct model_write_options {
    /* The shape. Read: name (general.name; "" gives "random-llama"), n_layers, d_model,
     * n_heads, n_kv_heads (0: n_heads), head_dim (0: d_model / n_heads), d_ff, vocab_size,
     * context_len (0: 2048), norm_eps (0: 1e-5), rope_theta (0: 10000), rope_dim (0 or
     * head_dim), tied_embeddings. Experts, RoPE scaling, sliding windows and biases are
     * refused; arch must be MODEL_ARCH_LLAMA. */
    model_config cfg;
    dtype type;       /* the 2-D weights of the layers; norms are always F32 */
    dtype embed_type; /* token_embd (and output when not tied) */
    model_format format;
    uint64_t seed;
    float init_std;             /* 0: MODEL_WRITE_DEFAULT_STD */
    const char *tokenizer_from; /* a GGUF file or an HF folder (or its tokenizer.json); NULL:
                                   the built-in tokenizer */
    bool no_tokenizer;          /* write none (such a GGUF file cannot be model_open'ed) */
} model_write_options;

/* Writes the model to path: a GGUF file, or an HF folder (created when absent; files in it
 * replaced). Bad options give CINDER_ERR_ARG or CINDER_ERR_UNSUPPORTED and a message naming
 * the option; nothing is written then. */
cinder_status model_write_random(const model_write_options *o, const char *path, cinder_error *err);

/* Checks the options as model_write_random does, without writing. */
cinder_status model_write_check(const model_write_options *o, cinder_error *err);

/* Parameters (elements of all tensors) and bytes of tensor data the options give. */
cinder_status model_write_size(const model_write_options *o, int64_t *params, int64_t *bytes,
                               cinder_error *err);

/* The values model_write_random stores in tensor `name` (canonical name, model.h) before their
 * conversion to the tensor's type: rows [row0, row0 + n_rows) of its [rows, cols] shape (a norm
 * is one row), in the row order of the o->format file, into dst [n_rows, cols].
 * CINDER_ERR_NOT_FOUND for a tensor the model has not; CINDER_ERR_RANGE for rows outside it. */
cinder_status model_write_values(const model_write_options *o, const char *name, int64_t row0,
                                 int64_t n_rows, float *dst, cinder_error *err);

/* Tokens of the tokenizer in a GGUF file or HF folder (to size vocab_size for it). */
cinder_status model_write_tokenizer_vocab(const char *path, int *n_tokens, cinder_error *err);

#endif
