/* tokenizer_impl.h - the tokenizer's private state, shared by tokenizer.c (vocabulary, merges,
 * encode, decode, stream), tokenizer_load.c (the GGUF and tokenizer.json front ends) and chat.c.
 *
 * A front end builds a tokenizer in four steps:
 *   t = tok_alloc(n_vocab);                      ids 0..n_vocab-1, all empty
 *   tok_set_token(t, id, text, len, type) ...    in any order; holes are allowed
 *   tok_index(t)                                 text -> id map (needed by the merges)
 *   tok_add_merge(t, rank, left, right) ...      then pre-tokenizer steps, BOS/EOS, template
 *   tok_finish(t, err)                           decoded bytes, byte ids, specials, chat format
 */
#ifndef CINDER_TOKENIZER_IMPL_H
#define CINDER_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

/* The GPT-2 pre-tokenizer regex (also ByteLevel's use_regex in tokenizer.json). */
#define TOK_RE_GPT2                                                                                \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
/* Llama-3's. */
#define TOK_RE_LLAMA3                                                                              \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"                       \
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Digits(individual_digits) of tokenizer.json, SmolLM's first step. */
#define TOK_RE_DIGIT "\\p{N}"

/* What a split step does with the pieces its regex matches (tokenizers' SplitDelimiterBehavior). */
typedef enum tok_split_behavior {
    TOK_SPLIT_ISOLATED = 0,         /* every match and every gap is a piece */
    TOK_SPLIT_REMOVED,              /* matches are dropped */
    TOK_SPLIT_MERGED_WITH_PREVIOUS, /* a match joins the gap before it */
    TOK_SPLIT_MERGED_WITH_NEXT,     /* a match joins the gap after it */
    TOK_SPLIT_CONTIGUOUS,           /* runs of adjacent matches form one piece */
} tok_split_behavior;

/* One pre-tokenizer step, applied to every piece the previous step produced. */
typedef struct tok_split {
    pcre2_code *re; /* NULL: no split (a ByteLevel step that only adds the prefix space) */
    char *pattern;  /* as given (before the \s rewrite), for tok_pre_kind and messages */
    tok_split_behavior behavior;
    bool invert;           /* the gaps are the matches */
    bool add_prefix_space; /* ByteLevel(add_prefix_space): a piece not starting with ' ' gets one */
} tok_split;

/* A token matched whole in the raw text before pre-tokenization. */
typedef struct tok_special {
    int32_t id;
    uint32_t len;        /* of its text; filled in by tok_add_special */
    unsigned char first; /* its text's first byte; filled in by tok_add_special */
    bool control;        /* only matched when parse_special (CONTROL; tokenizers' special) */
    bool lstrip;         /* swallows the white space on its left */
    bool rstrip;         /* and on its right */
    bool single_word;    /* only matched when not inside a word */
} tok_special;

typedef struct tok_merge_entry {
    uint64_t key; /* (left id << 32) | right id; TOK_MERGE_EMPTY when unused */
    int32_t rank;
    int32_t id; /* the merged token */
} tok_merge_entry;
#define TOK_MERGE_EMPTY UINT64_MAX

/* A growable byte buffer (chat rendering, the text pool). */
typedef struct tok_buf {
    char *data;
    size_t len, cap;
} tok_buf;

struct tokenizer {
    int32_t n_vocab;
    /* Per token [n_vocab]: its text in the file's form (byte-to-unicode), NUL-terminated in
     * text_pool, and its decoded bytes in bytes_pool. type 0 marks a hole (no such id). */
    uint32_t *text_off, *text_len;
    uint32_t *bytes_off, *bytes_len;
    uint8_t *type;
    tok_buf text_pool;
    unsigned char *bytes_pool;
    size_t max_token_bytes;

    int32_t *vocab_map; /* open addressing over text, -1 empty; [vocab_map_cap] */
    size_t vocab_map_cap;
    tok_merge_entry *merges; /* [merge_map_cap] */
    size_t merge_map_cap, n_merges;

    int32_t byte_id[256]; /* the one-byte token of each byte; -1 when the vocabulary lacks it */
    int32_t unk;          /* stands for a byte without a token (tokenizer.json); -1: dropped */
    bool ignore_merges;   /* a piece that is itself a token is not merged (Llama-3) */

    tok_special *specials; /* sorted by first byte, longest first */
    int n_specials;
    int32_t special_first[256], special_count[256]; /* bucket of each first byte */

    tok_split *splits;
    int n_splits;
    tok_pre pre;
    char pre_name[32];

    int32_t bos, eos, pad;
    bool add_bos;

    char *chat_template;
    chat_format chat_fmt;
    char *chat_default_system; /* ChatML: the system message the template puts first; or NULL */
};

tokenizer *tok_alloc(int32_t n_vocab, cinder_error *err);
cinder_status tok_set_token(tokenizer *t, int32_t id, const char *text, size_t len, tok_type type,
                            cinder_error *err);
cinder_status tok_index(tokenizer *t, size_t n_merges_hint, cinder_error *err);
/* Looks up the token spelled text (len bytes, file form); -1 when none. */
int32_t tok_lookup(const tokenizer *t, const char *text, size_t len);
/* Adds the merge "left right" with the given rank. A merge whose parts or result are not in the
 * vocabulary is skipped (returns false); a repeated pair keeps its first rank. */
bool tok_add_merge(tokenizer *t, int32_t rank, const char *left, size_t left_len, const char *right,
                   size_t right_len);
/* Appends a pre-tokenizer step. pattern NULL: only the prefix space. literal: pattern is a plain
 * string, not a regex. */
cinder_status tok_add_split(tokenizer *t, const char *pattern, bool literal,
                            tok_split_behavior behavior, bool invert, bool add_prefix_space,
                            cinder_error *err);
/* Marks id as matched whole in the text. */
cinder_status tok_add_special(tokenizer *t, tok_special sp, cinder_error *err);
/* Derives the decoded bytes, byte ids, the special-token index, pre_kind and the chat format. */
cinder_status tok_finish(tokenizer *t, cinder_error *err);

/* chat.c: reads t->chat_template and sets chat_fmt and chat_default_system. */
cinder_status chat_detect(tokenizer *t, cinder_error *err);

/* UTF-8 helpers (tokenizer.c). */
/* Length of the valid character at s[0..n) (1..4); 0 when s starts an invalid sequence, and
 * then *bad the length of its maximal valid prefix (>= 1); -1 when truncated (all n valid so
 * far, more bytes needed). */
int tok_utf8_next(const unsigned char *s, size_t n, uint32_t *cp, int *bad);
bool tok_buf_append(tok_buf *b, const void *data, size_t n);
bool tok_buf_appendz(tok_buf *b, const char *s);

#endif
