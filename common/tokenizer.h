/* tokenizer.h - byte-level BPE (GPT-2 family) from GGUF metadata or tokenizer.json.
 *
 * Encode: special and control tokens are matched in the text first; the rest is split by the
 * model's pre-tokenizer (GPT-2, SmolLM digit split, Llama-3 patterns), each piece mapped to
 * the byte-to-unicode alphabet and merged by rank; the result is looked up. Decode maps token
 * strings back to bytes. tok_stream emits only whole UTF-8 characters. */
#ifndef CINDER_TOKENIZER_H
#define CINDER_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

struct gguf_file;
typedef struct tokenizer tokenizer;

typedef enum tok_pre {
    TOK_PRE_GPT2 = 0, /* 's|'t|... ?\p{L}+| ?\p{N}+|... */
    TOK_PRE_SMOLLM,   /* every digit alone, then GPT-2 */
    TOK_PRE_LLAMA3,   /* (?i:'s|'t|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|... */
    TOK_PRE_CUSTOM,   /* regexes taken from tokenizer.json */
} tok_pre;

typedef enum tok_type {
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
} tok_type;

/* From a GGUF file's tokenizer.ggml.* keys (model "gpt2"). NULL + err when absent or bad. */
tokenizer *tok_from_gguf(const struct gguf_file *g, cinder_error *err);
/* From a Hugging Face tokenizer.json (BPE model, ByteLevel); tokenizer_config.json next to it,
 * when present, supplies the chat template and the BOS/EOS tokens. */
tokenizer *tok_from_json(const char *path, cinder_error *err);
void tok_free(tokenizer *t);

int tok_vocab_size(const tokenizer *t);
int32_t tok_bos(const tokenizer *t); /* -1 when none */
int32_t tok_eos(const tokenizer *t); /* -1 when none */
bool tok_add_bos(const tokenizer *t);
tok_pre tok_pre_kind(const tokenizer *t);
const char *tok_pre_name(const tokenizer *t); /* "smollm", "llama-bpe", ... */
/* The token's string in the file's own (byte-to-unicode) form; NULL when id is out of range. */
const char *tok_token_text(const tokenizer *t, int32_t id);
tok_type tok_token_type(const tokenizer *t, int32_t id);
/* -1 when the string is not exactly one token. */
int32_t tok_token_id(const tokenizer *t, const char *text);
/* Ids that end generation (EOS and, for chat models, the end-of-turn token). */
int tok_stop_ids(const tokenizer *t, int32_t *out, int cap);
/* The most bytes one token decodes to (sizes tok_stream_feed's buffer). */
size_t tok_max_token_bytes(const tokenizer *t);

/* Encodes len bytes of text. Special tokens in the text are recognized when parse_special.
 * BOS is prepended when add_bos and the tokenizer asks for it. Writes up to cap ids; *n_out
 * is the number the text needs (so a call with cap 0 sizes the buffer). Returns
 * CINDER_ERR_RANGE when cap is too small, CINDER_ERR_ARG on invalid UTF-8 (offset named). */
cinder_status tok_encode(const tokenizer *t, const char *text, size_t len, bool add_bos,
                         bool parse_special, int32_t *out, size_t cap, size_t *n_out,
                         cinder_error *err);

/* Decodes ids to bytes (special tokens included as their text when with_special). Writes up
 * to cap bytes plus a NUL when room; *n_out is the byte count needed (without the NUL).
 * Returns CINDER_ERR_RANGE when cap < *n_out + 1 (call with out NULL, cap 0 to size it). An id
 * out of range is CINDER_ERR_ARG naming its index. The bytes are not checked: ids cut from
 * the middle of a character give invalid UTF-8 (tok_stream replaces it). */
cinder_status tok_decode(const tokenizer *t, const int32_t *ids, size_t n, bool with_special,
                         char *out, size_t cap, size_t *n_out, cinder_error *err);

/* Streaming decoder: feed one id at a time, get back only complete UTF-8 characters. */
typedef struct tok_stream {
    const tokenizer *t;
    bool with_special;
    unsigned char pending[8]; /* bytes of an incomplete character */
    int n_pending;
} tok_stream;

void tok_stream_init(tok_stream *s, const tokenizer *t, bool with_special);
/* Writes the text completed by id to out (cap bytes, NUL-terminated); returns bytes written
 * or -1 (err filled, the stream unchanged) for a bad id or a too small buffer (CINDER_ERR_RANGE;
 * cap >= 3 * (tok_max_token_bytes(t) + 4) is always enough). Invalid UTF-8 becomes U+FFFD, as
 * a lossy UTF-8 conversion of the whole decode would give. */
int tok_stream_feed(tok_stream *s, int32_t id, char *out, size_t cap, cinder_error *err);
/* Flushes what is pending at the end of a stream (an incomplete character becomes U+FFFD);
 * -1 when cap < 4. */
int tok_stream_flush(tok_stream *s, char *out, size_t cap);

/* Chat templates. */
typedef struct chat_message {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} chat_message;

typedef enum chat_format {
    CHAT_FORMAT_NONE = 0, /* the model has no template */
    CHAT_FORMAT_CHATML,   /* <|im_start|>role\ncontent<|im_end|>\n (SmolLM2, Qwen) */
    CHAT_FORMAT_LLAMA3,   /* <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> */
} chat_format;

chat_format tok_chat_format(const tokenizer *t);
/* Applies the model's chat template to the messages, with the assistant generation prompt at
 * the end when add_generation_prompt. Returns a malloc'd NUL-terminated string (the caller
 * frees it) or NULL + err (no template, unknown role). */
char *tok_chat_apply(const tokenizer *t, const chat_message *msgs, int n_msgs,
                     bool add_generation_prompt, cinder_error *err);

#endif
