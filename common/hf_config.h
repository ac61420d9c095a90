/* hf_config.h - a Hugging Face config.json as a model_config, and HF tensor names as the
 * canonical (GGUF-style) names of model.h.
 *
 * Architectures read: LlamaForCausalLM, MistralForCausalLM (sliding window) and
 * MixtralForCausalLM (MoE); any other is refused by name with CINDER_ERR_UNSUPPORTED, as are
 * an unknown rope_scaling type, a hidden_act other than "silu" and a quantization_config
 * (GPTQ, AWQ, FP8, ... checkpoints). A missing required field, a wrong JSON type or an
 * out-of-range value gives CINDER_ERR_FORMAT and a message naming the field and the value found:
 *   config.json: 'num_attention_heads' must be a positive integer, got "nine"
 *
 * Fields and defaults (those of the transformers config classes where config.json leaves a
 * field out):
 *   required  hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
 *             vocab_size
 *   optional  architectures (else model_type "llama"/"mistral"/"mixtral"),
 *             num_key_value_heads (= heads), head_dim (= hidden / heads),
 *             max_position_embeddings (Llama 2048, Mistral/Mixtral 131072),
 *             rms_norm_eps (1e-6; Mixtral 1e-5), rope_theta (10000; Mixtral 1e6),
 *             rope_scaling (null), tie_word_embeddings (false), partial_rotary_factor (1),
 *             attention_bias, mlp_bias (false),
 *             sliding_window (Mistral/Mixtral; null = 0 = full attention),
 *             num_local_experts (8), num_experts_per_tok (2) (Mixtral only)
 * rope_scaling: {"rope_type" or "type": "linear" | "dynamic" | "llama3" | "yarn" | "default",
 * "factor", and for llama3 "low_freq_factor", "high_freq_factor" and
 * "original_max_position_embeddings" (optional for the others, = max_position_embeddings)};
 * without it the factor is 1. The rope layout is always ROPE_LAYOUT_HALF; config->name is left
 * empty (hf_model_load sets the folder's name). */
#ifndef CINDER_HF_CONFIG_H
#define CINDER_HF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "model.h"
#include "status.h"

/* Parses config.json text (len bytes, need not be NUL-terminated) into *cfg (zeroed first).
 * what names the file in messages. */
cinder_status hf_config_parse(const char *json, size_t len, const char *what, model_config *cfg,
                              cinder_error *err);
/* Reads and parses the file at path. */
cinder_status hf_config_load(const char *path, model_config *cfg, cinder_error *err);

/* Maps an HF tensor name to its canonical name (model.h), writing it to out:
 *   model.embed_tokens.weight -> token_embd.weight    model.norm.weight -> output_norm.weight
 *   lm_head.weight -> output.weight
 *   model.layers.N.input_layernorm.weight -> blk.N.attn_norm.weight
 *   model.layers.N.post_attention_layernorm.weight -> blk.N.ffn_norm.weight
 *   model.layers.N.self_attn.{q,k,v,o}_proj.{weight,bias} -> blk.N.attn_{q,k,v,output}.*
 *   model.layers.N.mlp.{gate,up,down}_proj.{weight,bias} -> blk.N.ffn_{gate,up,down}.*
 *   model.layers.N.block_sparse_moe.gate.weight -> blk.N.ffn_gate_inp.weight
 *   model.layers.N.block_sparse_moe.experts.E.{w1,w3,w2}.weight
 *     -> blk.N.ffn_{gate,up,down}.E.weight
 * *layer and *expert get N and E (-1 where the name has none). Returns false for names with
 * no canonical counterpart (rotary_emb.inv_freq, ...) or when out is too small. */
bool hf_tensor_name_map(const char *hf_name, char *out, size_t out_size, int *layer, int *expert);

#endif
