/* model.h - one description of a model, whatever file it came from.
 *
 * model_open() reads a GGUF file or a Hugging Face folder (config.json + *.safetensors, maybe
 * sharded, + tokenizer.json) and produces the same thing: a model_config, a list of named
 * tensors (type, shape, bytes in a read-only mapping) and a tokenizer. The engine uses it
 * without caring where it came from.
 *
 * Tensor names are canonical, GGUF style, whatever the source:
 *   token_embd.weight, output_norm.weight, output.weight (absent when tied),
 *   blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}.weight,
 *   MoE: blk.N.ffn_gate_inp.weight [n_experts, d_model] and
 *        blk.N.{ffn_gate_exps,ffn_up_exps,ffn_down_exps}.weight [n_experts, rows, cols]
 *        (an HF Mixtral folder's per-expert tensors keep their own names:
 *        blk.N.ffn_{gate,up,down}.E.weight).
 * Shapes are row-major, outermost first, like PyTorch: a linear weight is [out, in] and its
 * rows are contiguous (GGUF's ne[] order reversed). */
#ifndef CINDER_MODEL_H
#define CINDER_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"
#include "mapped_file.h"
#include "status.h"

#define MODEL_MAX_DIMS 4

typedef enum model_arch {
    MODEL_ARCH_LLAMA = 0, /* GGUF "llama", HF LlamaForCausalLM */
    MODEL_ARCH_MISTRAL,   /* HF MistralForCausalLM (sliding window) */
    MODEL_ARCH_MIXTRAL,   /* HF MixtralForCausalLM (MoE); GGUF llama with experts */
} model_arch;

/* Which elements RoPE rotates together (model-notes.md, "RoPE layout"). */
typedef enum rope_layout {
    ROPE_LAYOUT_INTERLEAVED = 0, /* pairs (x[2i], x[2i+1]): llama GGUF files */
    ROPE_LAYOUT_HALF,            /* pairs (x[i], x[i + d/2]): HF checkpoints (rotate_half) */
} rope_layout;

typedef enum rope_scaling_type {
    ROPE_SCALING_NONE = 0,
    ROPE_SCALING_LINEAR,  /* positions divided by factor */
    ROPE_SCALING_DYNAMIC, /* dynamic NTK */
    ROPE_SCALING_LLAMA3,  /* Llama 3.1 frequency bands */
    ROPE_SCALING_YARN,
} rope_scaling_type;

typedef struct model_config {
    model_arch arch;
    char arch_name[64]; /* as the file says: "llama", "LlamaForCausalLM", ... */
    char name[128];     /* general.name or the folder name; may be empty */
    int n_layers;
    int d_model;    /* hidden size */
    int n_heads;    /* query heads */
    int n_kv_heads; /* key/value heads (GQA when < n_heads) */
    int head_dim;   /* d_model / n_heads unless the file says otherwise */
    int d_ff;       /* feed-forward (intermediate) size; per expert for MoE */
    int vocab_size;
    int context_len; /* max positions the model was trained for */
    float norm_eps;  /* RMSNorm epsilon */
    float rope_theta;
    int rope_dim; /* dimensions rotated per head; a reader may leave 0, meaning head_dim */
    rope_layout rope_layout;
    rope_scaling_type rope_scaling;
    float rope_scaling_factor;
    float rope_low_freq_factor;  /* llama3 */
    float rope_high_freq_factor; /* llama3 */
    int rope_original_context;   /* llama3 / yarn original_max_position_embeddings */
    bool tied_embeddings;        /* LM head is token_embd */
    int sliding_window;          /* 0: full attention */
    int n_experts;               /* 0: dense MLP */
    int n_experts_used;          /* top-k */
    bool attention_bias;         /* q/k/v/o biases present (refused by the engine for now) */
    bool mlp_bias;
} model_config;

typedef struct model_tensor {
    char name[96];
    dtype type;
    int n_dims;
    int64_t shape[MODEL_MAX_DIMS]; /* row-major, outermost first */
    const uint8_t *data;           /* inside a read-only mapping */
    size_t nbytes;
} model_tensor;

struct tokenizer;

typedef enum model_format {
    MODEL_FORMAT_GGUF = 0,
    MODEL_FORMAT_HF,
} model_format;

typedef struct model {
    model_format format;
    char *path;
    model_config config;
    model_tensor *tensors; /* [n_tensors] */
    int n_tensors;
    int tensors_cap;
    struct tokenizer *tok; /* NULL when the source has no tokenizer */
    mapped_file *files;    /* [n_files] the mappings the tensor data points into */
    int n_files;
    void *source; /* the format's own reader state (gguf_file *), or NULL */
} model;

/* Opens a GGUF file or a Hugging Face folder (a directory, or the path of its config.json).
 * Returns NULL and fills err when anything is wrong with it. */
model *model_open(const char *path, cinder_error *err);
void model_free(model *m);

/* NULL when absent. */
const model_tensor *model_tensor_find(const model *m, const char *name);
/* Number of elements. */
int64_t model_tensor_numel(const model_tensor *t);
/* Elements in one row (the innermost dimension). */
int64_t model_tensor_row_len(const model_tensor *t);
/* Number of rows: the product of all dimensions but the innermost. */
int64_t model_tensor_n_rows(const model_tensor *t);

/* A view of rows [r0, r0 + n) along the outermost dimension (for a 3-D expert tensor, a
 * range of experts), without copying: rows are contiguous. */
cinder_status model_tensor_slice_rows(const model_tensor *t, int64_t r0, int64_t n,
                                      model_tensor *view, cinder_error *err);
/* Copies columns [c0, c0 + n) of every row (the innermost dimension) into dst, row after row.
 * For quantized types c0 and n must be multiples of the block size (32). dst_size is checked. */
cinder_status model_tensor_copy_cols(const model_tensor *t, int64_t c0, int64_t n, void *dst,
                                     size_t dst_size, cinder_error *err);

/* Checks the config for values a forward pass could not use (zero sizes, heads that do not
 * divide, ...) and that the tensors the architecture needs are present with the right shapes. */
cinder_status model_validate(const model *m, cinder_error *err);

const char *model_arch_name(model_arch arch);

/* For the readers: append a tensor (copied); grows the array. */
cinder_status model_add_tensor(model *m, const model_tensor *t, cinder_error *err);
/* For the readers: take ownership of a mapping; returns its index or -1. */
int model_add_file(model *m, mapped_file *mf);

/* Format readers (gguf_model.c, hf_model.c): fill an allocated, zeroed model. */
cinder_status gguf_model_load(model *m, const char *path, cinder_error *err);
cinder_status hf_model_load(model *m, const char *dir, cinder_error *err);

#endif
