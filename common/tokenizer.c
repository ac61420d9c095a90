/* tokenizer.c - byte-level BPE: vocabulary, merges, encode, decode and the streaming decoder.
 *
 * The results follow Hugging Face `tokenizers` (tests/golden/make_tokenizer_refs.py checks them
 * against it): special tokens are cut out of the raw text first (leftmost, longest), each piece
 * between them goes through the pre-tokenizer steps in order, and each final piece is merged
 * from its bytes by rank, lowest rank first and leftmost among equals. */
#define _POSIX_C_SOURCE 200809L /* strdup */

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tokenizer_impl.h"

/* ---------------------------------------------------------------------------------------------
 * UTF-8, the GPT-2 byte-to-unicode map, white space
 * ------------------------------------------------------------------------------------------- */

int tok_utf8_next(const unsigned char *s, size_t n, uint32_t *cp, int *bad) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v;
    unsigned lo = 0x80, hi = 0xBF; /* the second byte's range; E0, ED, F0, F4 narrow it */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *bad = 1;
        return 0;
    }
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return -1;
        unsigned b = s[i];
        if (b < lo || b > hi) {
            *bad = i;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
        v = (v << 6) | (b & 0x3F);
    }
    *cp = v;
    return len;
}

/* Offset of the first invalid UTF-8 sequence, or len when all is valid. */
static size_t utf8_invalid_at(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        int bad;
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int r = tok_utf8_next(u + i, len - i, &cp, &bad);
        if (r <= 0) return i;
        i += (size_t)r;
    }
    return len;
}

static int utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* GPT-2's bytes_to_unicode(): printable bytes stand for themselves, the other 68 (0x00-0x20,
 * 0x7F-0xA0, 0xAD) for U+0100.. in byte order. */
static uint32_t byte_to_cp(unsigned b) {
    if (b <= 0x20) return 256 + b;
    if (b >= 0x7F && b <= 0xA0) return b + 162;
    if (b == 0xAD) return 323;
    return b;
}

/* The byte a code point stands for, or -1. */
static int cp_to_byte(uint32_t cp) {
    if (cp >= 256 && cp <= 288) return (int)(cp - 256);
    if (cp >= 289 && cp <= 322) return (int)(cp - 162);
    if (cp == 323) return 0xAD;
    if (cp < 256 && byte_to_cp(cp) == cp) return (int)cp;
    return -1;
}

/* Unicode White_Space (what tokenizers' char::is_whitespace tests). */
static bool cp_is_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* ---------------------------------------------------------------------------------------------
 * Buffers and hashing
 * ------------------------------------------------------------------------------------------- */

bool tok_buf_append(tok_buf *b, const void *data, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p) return false;
        b->data = p;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return true;
}

bool tok_buf_appendz(tok_buf *b, const char *s) {
    return tok_buf_append(b, s, strlen(s));
}

/* Grows *p (elements of size elem) to hold at least n; false when out of memory. */
static bool grow(void *p, size_t *cap, size_t n, size_t elem) {
    if (n <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < n) c *= 2;
    void *q = realloc(*(void **)p, c * elem);
    if (!q) return false;
    *(void **)p = q;
    *cap = c;
    return true;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33; /* murmur3 finalizer */
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

/* ---------------------------------------------------------------------------------------------
 * Building
 * ------------------------------------------------------------------------------------------- */

tokenizer *tok_alloc(int32_t n_vocab, cinder_error *err) {
    if (n_vocab <= 0 || n_vocab > (1 << 24)) {
        cinder_error_set(err, CINDER_ERR_FORMAT, "vocabulary size %d out of range", n_vocab);
        return NULL;
    }
    tokenizer *t = calloc(1, sizeof(*t));
    if (!t) goto fail;
    t->n_vocab = n_vocab;
    t->text_off = calloc((size_t)n_vocab, sizeof(*t->text_off));
    t->text_len = calloc((size_t)n_vocab, sizeof(*t->text_len));
    t->bytes_off = calloc((size_t)n_vocab, sizeof(*t->bytes_off));
    t->bytes_len = calloc((size_t)n_vocab, sizeof(*t->bytes_len));
    t->type = calloc((size_t)n_vocab, sizeof(*t->type));
    if (!t->text_off || !t->text_len || !t->bytes_off || !t->bytes_len || !t->type) goto fail;
    t->bos = t->eos = t->pad = t->unk = -1;
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
    return t;
fail:
    tok_free(t);
    cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for a vocabulary of %d tokens", n_vocab);
    return NULL;
}

void tok_free(tokenizer *t) {
    if (!t) return;
    free(t->text_off);
    free(t->text_len);
    free(t->bytes_off);
    free(t->bytes_len);
    free(t->type);
    free(t->text_pool.data);
    free(t->bytes_pool);
    free(t->vocab_map);
    free(t->merges);
    free(t->specials);
    for (int i = 0; i < t->n_splits; i++) {
        pcre2_code_free(t->splits[i].re);
        free(t->splits[i].pattern);
    }
    free(t->splits);
    free(t->chat_template);
    free(t->chat_default_system);
    free(t);
}

cinder_status tok_set_token(tokenizer *t, int32_t id, const char *text, size_t len, tok_type type,
                            cinder_error *err) {
    CN_ASSERT(id >= 0 && id < t->n_vocab && type >= TOK_TYPE_NORMAL && type <= TOK_TYPE_BYTE);
    if (len > UINT32_MAX / 2 || t->text_pool.len + len + 1 > UINT32_MAX)
        return cinder_error_set(err, CINDER_ERR_FORMAT, "token %d: vocabulary text too large", id);
    uint32_t off = (uint32_t)t->text_pool.len;
    if (!tok_buf_append(&t->text_pool, text, len) || !tok_buf_append(&t->text_pool, "", 1))
        return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for the vocabulary");
    t->text_off[id] = off;
    t->text_len[id] = (uint32_t)len;
    t->type[id] = (uint8_t)type;
    return CINDER_OK;
}

static const char *token_text(const tokenizer *t, int32_t id) {
    return t->text_pool.data + t->text_off[id];
}

int32_t tok_lookup(const tokenizer *t, const char *text, size_t len) {
    if (!t->vocab_map) return -1;
    size_t mask = t->vocab_map_cap - 1;
    for (size_t i = hash_bytes(text, len) & mask;; i = (i + 1) & mask) {
        int32_t id = t->vocab_map[i];
        if (id < 0) return -1;
        if (t->text_len[id] == len && memcmp(token_text(t, id), text, len) == 0) return id;
    }
}

cinder_status tok_index(tokenizer *t, size_t n_merges_hint, cinder_error *err) {
    t->vocab_map_cap = pow2_at_least((size_t)t->n_vocab * 2);
    t->vocab_map = malloc(t->vocab_map_cap * sizeof(*t->vocab_map));
    t->merge_map_cap = pow2_at_least(n_merges_hint * 2);
    t->merges = malloc(t->merge_map_cap * sizeof(*t->merges));
    if (!t->vocab_map || !t->merges)
        return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for the vocabulary index");
    memset(t->vocab_map, 0xff, t->vocab_map_cap * sizeof(*t->vocab_map));
    for (size_t i = 0; i < t->merge_map_cap; i++) t->merges[i].key = TOK_MERGE_EMPTY;
    size_t mask = t->vocab_map_cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!t->type[id]) continue;
        const char *s = token_text(t, id);
        size_t len = t->text_len[id];
        size_t i = hash_bytes(s, len) & mask;
        /* A text spelled twice keeps the later id (as llama.cpp does). */
        for (; t->vocab_map[i] >= 0; i = (i + 1) & mask) {
            int32_t o = t->vocab_map[i];
            if (t->text_len[o] == len && memcmp(token_text(t, o), s, len) == 0) break;
        }
        t->vocab_map[i] = id;
    }
    return CINDER_OK;
}

static const tok_merge_entry *merge_find(const tokenizer *t, int32_t left, int32_t right) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t mask = t->merge_map_cap - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        const tok_merge_entry *m = &t->merges[i];
        if (m->key == key) return m;
        if (m->key == TOK_MERGE_EMPTY) return NULL;
    }
}

bool tok_add_merge(tokenizer *t, int32_t rank, const char *left, size_t left_len, const char *right,
                   size_t right_len) {
    CN_ASSERT(t->merges);
    /* Keep the table at most half full (the hint may have been low). */
    if ((t->n_merges + 1) * 2 > t->merge_map_cap) {
        size_t old_cap = t->merge_map_cap, cap = old_cap * 2;
        tok_merge_entry *old = t->merges, *m = malloc(cap * sizeof(*m));
        if (!m) return false;
        for (size_t i = 0; i < cap; i++) m[i].key = TOK_MERGE_EMPTY;
        for (size_t i = 0; i < old_cap; i++) {
            if (old[i].key == TOK_MERGE_EMPTY) continue;
            size_t j = hash_u64(old[i].key) & (cap - 1);
            while (m[j].key != TOK_MERGE_EMPTY) j = (j + 1) & (cap - 1);
            m[j] = old[i];
        }
        free(old);
        t->merges = m;
        t->merge_map_cap = cap;
    }
    int32_t l = tok_lookup(t, left, left_len), r = tok_lookup(t, right, right_len);
    if (l < 0 || r < 0) return false;
    char stack[256], *joined = stack;
    if (left_len + right_len > sizeof(stack)) {
        joined = malloc(left_len + right_len);
        if (!joined) return false;
    }
    memcpy(joined, left, left_len);
    memcpy(joined + left_len, right, right_len);
    int32_t id = tok_lookup(t, joined, left_len + right_len);
    if (joined != stack) free(joined);
    if (id < 0) return false;

    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    size_t mask = t->merge_map_cap - 1;
    size_t i = hash_u64(key) & mask;
    for (; t->merges[i].key != TOK_MERGE_EMPTY; i = (i + 1) & mask)
        if (t->merges[i].key == key) return false; /* a repeated pair keeps its first rank */
    t->merges[i] = (tok_merge_entry){.key = key, .rank = rank, .id = id};
    t->n_merges++;
    return true;
}

/* Rewrites \s and \S to Unicode White_Space, which is what Oniguruma (used by `tokenizers`)
 * matches; PCRE2's \s differs in a few characters (U+180E). Inside a class only \s is
 * rewritten. */
#define WS_CLASS                                                                                   \
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"  \
    "\\x{205F}\\x{3000}"

static char *regex_rewrite(const char *pat, size_t len, bool literal) {
    tok_buf b = {0};
    bool ok = true, in_class = false;
    for (size_t i = 0; i < len && ok; i++) {
        char c = pat[i];
        if (literal) { /* quote every ASCII punctuation character */
            if ((unsigned char)c < 0x80 && !(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') &&
                !(c >= 'A' && c <= 'Z') && c != ' ')
                ok = tok_buf_append(&b, "\\", 1);
            ok = ok && tok_buf_append(&b, &c, 1);
            continue;
        }
        if (c == '\\' && i + 1 < len) {
            char d = pat[++i];
            if (d == 's')
                ok = tok_buf_appendz(&b, in_class ? WS_CLASS : "[" WS_CLASS "]");
            else if (d == 'S' && !in_class)
                ok = tok_buf_appendz(&b, "[^" WS_CLASS "]");
            else
                ok = tok_buf_append(&b, pat + i - 1, 2);
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            ok = tok_buf_append(&b, &c, 1);
            /* A ']' right after '[' or '[^' is a literal. */
            if (i + 1 < len && pat[i + 1] == '^') ok = ok && tok_buf_append(&b, pat + ++i, 1);
            if (i + 1 < len && pat[i + 1] == ']') ok = ok && tok_buf_append(&b, pat + ++i, 1);
            continue;
        }
        if (c == ']' && in_class) in_class = false;
        ok = tok_buf_append(&b, &c, 1);
    }
    if (!ok || !b.data) ok = ok && tok_buf_append(&b, "", 0);
    if (!ok) {
        free(b.data);
        return NULL;
    }
    return b.data;
}

cinder_status tok_add_split(tokenizer *t, const char *pattern, bool literal,
                            tok_split_behavior behavior, bool invert, bool add_prefix_space,
                            cinder_error *err) {
    tok_split sp = {.behavior = behavior, .invert = invert, .add_prefix_space = add_prefix_space};
    char *rewritten = NULL;
    if (pattern) {
        sp.pattern = strdup(pattern);
        rewritten = regex_rewrite(pattern, strlen(pattern), literal);
        if (!sp.pattern || !rewritten) goto nomem;
        int code;
        PCRE2_SIZE at;
        sp.re = pcre2_compile((PCRE2_SPTR)rewritten, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                              &code, &at, NULL);
        if (!sp.re) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(code, msg, sizeof(msg));
            cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                             "pre-tokenizer regex '%s': %s at offset %zu", pattern, (char *)msg,
                             (size_t)at);
            free(sp.pattern);
            free(rewritten);
            return CINDER_ERR_UNSUPPORTED;
        }
        (void)pcre2_jit_compile(sp.re, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
        free(rewritten);
        rewritten = NULL;
    }
    tok_split *s = realloc(t->splits, (size_t)(t->n_splits + 1) * sizeof(*s));
    if (!s) goto nomem;
    t->splits = s;
    t->splits[t->n_splits++] = sp;
    return CINDER_OK;
nomem:
    pcre2_code_free(sp.re);
    free(sp.pattern);
    free(rewritten);
    return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for the pre-tokenizer");
}

cinder_status tok_add_special(tokenizer *t, tok_special sp, cinder_error *err) {
    CN_ASSERT(sp.id >= 0 && sp.id < t->n_vocab && t->type[sp.id]);
    if (t->text_len[sp.id] == 0) return CINDER_OK; /* an empty token can't be matched */
    tok_special *s = realloc(t->specials, (size_t)(t->n_specials + 1) * sizeof(*s));
    if (!s) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for special tokens");
    t->specials = s;
    sp.len = t->text_len[sp.id];
    sp.first = (unsigned char)token_text(t, sp.id)[0];
    t->specials[t->n_specials++] = sp;
    return CINDER_OK;
}

/* Orders special tokens by first byte, longest first (the first that matches is the longest). */
static int special_cmp(const void *a, const void *b) {
    const tok_special *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* A token's bytes: each character mapped back through the byte map, or, when one of them is not
 * in it (special tokens like "<jupyter output>"), the text itself (tokenizers' ByteLevel
 * decoder does the same). */
static size_t token_bytes(const tokenizer *t, int32_t id, unsigned char *out) {
    const unsigned char *s = (const unsigned char *)token_text(t, id);
    size_t len = t->text_len[id], n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int bad, r = tok_utf8_next(s + i, len - i, &cp, &bad);
        int b = r > 0 ? cp_to_byte(cp) : -1;
        if (b < 0) {
            memcpy(out, s, len);
            return len;
        }
        out[n++] = (unsigned char)b;
        i += (size_t)r;
    }
    return n;
}

cinder_status tok_finish(tokenizer *t, cinder_error *err) {
    CN_ASSERT(t->vocab_map);
    t->bytes_pool = malloc(t->text_pool.len + 1);
    if (!t->bytes_pool) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
    size_t used = 0;
    t->max_token_bytes = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!t->type[id]) continue;
        size_t n = token_bytes(t, id, t->bytes_pool + used);
        t->bytes_off[id] = (uint32_t)used;
        t->bytes_len[id] = (uint32_t)n;
        used += n;
        if (n > t->max_token_bytes) t->max_token_bytes = n;
    }
    for (unsigned b = 0; b < 256; b++) {
        char s[4];
        int n = utf8_put(byte_to_cp(b), s);
        t->byte_id[b] = tok_lookup(t, s, (size_t)n);
    }

    if (t->n_specials) qsort(t->specials, (size_t)t->n_specials, sizeof(*t->specials), special_cmp);
    memset(t->special_count, 0, sizeof(t->special_count));
    for (int i = t->n_specials - 1; i >= 0; i--) {
        t->special_first[t->specials[i].first] = i;
        t->special_count[t->specials[i].first]++;
    }

    const struct {
        int32_t id;
        const char *what;
    } ids[] = {{t->bos, "BOS"}, {t->eos, "EOS"}, {t->pad, "padding"}, {t->unk, "unknown"}};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
        if (ids[i].id >= t->n_vocab || (ids[i].id >= 0 && !t->type[ids[i].id]))
            return cinder_error_set(err, CINDER_ERR_FORMAT,
                                    "%s token id %d is not in the vocabulary", ids[i].what,
                                    ids[i].id);
    return chat_detect(t, err);
}

/* ---------------------------------------------------------------------------------------------
 * Accessors
 * ------------------------------------------------------------------------------------------- */

static bool id_ok(const tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->type[id];
}

int tok_vocab_size(const tokenizer *t) {
    return t->n_vocab;
}
int32_t tok_bos(const tokenizer *t) {
    return t->bos;
}
int32_t tok_eos(const tokenizer *t) {
    return t->eos;
}
bool tok_add_bos(const tokenizer *t) {
    return t->add_bos && t->bos >= 0;
}
tok_pre tok_pre_kind(const tokenizer *t) {
    return t->pre;
}
const char *tok_pre_name(const tokenizer *t) {
    return t->pre_name;
}
size_t tok_max_token_bytes(const tokenizer *t) {
    return t->max_token_bytes;
}

const char *tok_token_text(const tokenizer *t, int32_t id) {
    return id_ok(t, id) ? token_text(t, id) : NULL;
}

tok_type tok_token_type(const tokenizer *t, int32_t id) {
    return id_ok(t, id) ? (tok_type)t->type[id] : TOK_TYPE_UNUSED;
}

int32_t tok_token_id(const tokenizer *t, const char *text) {
    return text ? tok_lookup(t, text, strlen(text)) : -1;
}

/* ---------------------------------------------------------------------------------------------
 * Encode
 * ------------------------------------------------------------------------------------------- */

typedef struct tok_span {
    size_t off, len;
    bool match;
} tok_span;

typedef struct tok_sym {
    int32_t id; /* -1 once merged into its left neighbour */
    int32_t prev, next;
} tok_sym;

typedef struct tok_heap_item {
    int32_t rank, pos, id; /* merge the symbols at pos and next[pos] into id */
} tok_heap_item;

/* An encode call's output and scratch (grown as needed, freed at the end of the call). */
typedef struct tok_enc {
    const tokenizer *t;
    int32_t *out;
    size_t cap, n;
    cinder_error *err;
    pcre2_match_data *md;
    tok_span **spans; /* per split step */
    size_t *spans_cap;
    tok_buf *prefixed; /* per split step: the piece with a space put in front */
    tok_sym *sym;      /* the symbols of the piece being merged */
    size_t sym_cap;
    tok_heap_item *heap;
    size_t heap_cap, heap_n;
    tok_buf word; /* a piece in the file's form, for ignore_merges */
} tok_enc;

static void enc_push(tok_enc *e, int32_t id) {
    if (e->n < e->cap) e->out[e->n] = id;
    e->n++;
}

static bool heap_less(const tok_heap_item *a, const tok_heap_item *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(tok_enc *e, tok_heap_item it) {
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&it, &e->heap[p])) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = it;
}

static tok_heap_item heap_pop(tok_enc *e) {
    tok_heap_item top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!heap_less(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

static void bpe_try_pair(tok_enc *e, int32_t pos) {
    int32_t r = e->sym[pos].next;
    if (r < 0) return;
    const tok_merge_entry *m = merge_find(e->t, e->sym[pos].id, e->sym[r].id);
    if (m) heap_push(e, (tok_heap_item){.rank = m->rank, .pos = pos, .id = m->id});
}

/* Merges one pre-tokenized piece and appends its ids. */
static cinder_status enc_bpe(tok_enc *e, const unsigned char *s, size_t n) {
    const tokenizer *t = e->t;
    if (t->ignore_merges) {
        e->word.len = 0;
        for (size_t i = 0; i < n; i++) {
            char u[4];
            if (!tok_buf_append(&e->word, u, (size_t)utf8_put(byte_to_cp(s[i]), u))) goto nomem;
        }
        int32_t id = tok_lookup(t, e->word.data, e->word.len);
        if (id >= 0 && t->type[id] == TOK_TYPE_NORMAL) {
            enc_push(e, id);
            return CINDER_OK;
        }
    }
    if (n > INT32_MAX / 4)
        return cinder_error_set(e->err, CINDER_ERR_RANGE, "a %zu-byte word is too long", n);
    if (!grow(&e->sym, &e->sym_cap, n, sizeof(*e->sym))) goto nomem;
    if (!grow(&e->heap, &e->heap_cap, 3 * n, sizeof(*e->heap))) goto nomem;

    /* One symbol per byte; a byte without a token becomes unk or is dropped (as tokenizers
     * does), and its neighbours meet. */
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]] >= 0 ? t->byte_id[s[i]] : t->unk;
        if (id >= 0) {
            e->sym[m] = (tok_sym){.id = id, .prev = m - 1, .next = m + 1};
            m++;
        }
    }
    if (m == 0) return CINDER_OK;
    e->sym[m - 1].next = -1;
    e->heap_n = 0;
    for (int32_t i = 0; i + 1 < m; i++) bpe_try_pair(e, i);
    while (e->heap_n) {
        tok_heap_item it = heap_pop(e);
        tok_sym *l = &e->sym[it.pos];
        if (l->id < 0 || l->next < 0) continue;
        tok_sym *r = &e->sym[l->next];
        const tok_merge_entry *mg = merge_find(t, l->id, r->id);
        if (!mg || mg->id != it.id) continue; /* stale: a neighbour has changed since */
        l->id = it.id;
        r->id = -1;
        l->next = r->next;
        if (r->next >= 0) e->sym[r->next].prev = it.pos;
        if (l->prev >= 0) bpe_try_pair(e, l->prev);
        bpe_try_pair(e, it.pos);
    }
    for (int32_t i = 0; i >= 0; i = e->sym[i].next) enc_push(e, e->sym[i].id);
    return CINDER_OK;
nomem:
    return cinder_error_set(e->err, CINDER_ERR_NOMEM, "out of memory encoding a %zu-byte piece", n);
}

static cinder_status enc_pre(tok_enc *e, int step, const char *s, size_t n);

/* Splits s by step's regex into e->spans[step] (pieces, behavior applied), *count of them.
 * A regex failure (PCRE2 match or JIT stack limit) is an error. */
static cinder_status split_piece(tok_enc *e, int step, const char *s, size_t n, size_t *count) {
    const tok_split *sp = &e->t->splits[step];
    size_t k = 0, pos = 0, prev = 0;
    *count = 0;
    for (;;) {
        if (pos >= n) break;
        int rc = pcre2_match(sp->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return cinder_error_set(e->err, CINDER_ERR_ARG,
                                    "pre-tokenizer regex failed on a %zu-byte piece: %s", n,
                                    (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* an empty match splits nothing: step over one character */
            pos = ms + 1;
            while (pos < n && ((unsigned char)s[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (!grow(&e->spans[step], &e->spans_cap[step], k + 2, sizeof(tok_span))) goto nomem;
        if (ms > prev) e->spans[step][k++] = (tok_span){prev, ms - prev, false};
        e->spans[step][k++] = (tok_span){ms, me - ms, true};
        prev = pos = me;
    }
    if (!grow(&e->spans[step], &e->spans_cap[step], k + 1, sizeof(tok_span))) goto nomem;
    if (prev < n) e->spans[step][k++] = (tok_span){prev, n - prev, false};

    /* The behaviours, as tokenizers' NormalizedString::split applies them. */
    tok_span *v = e->spans[step];
    size_t out = 0;
    bool prev_match = false;
    if (sp->behavior == TOK_SPLIT_MERGED_WITH_NEXT) {
        size_t j = k; /* written backwards into v[j..k) */
        for (size_t i = k; i-- > 0;) {
            tok_span x = v[i];
            bool m = x.match != sp->invert;
            if (m && !prev_match && j < k) {
                v[j].len += v[j].off - x.off;
                v[j].off = x.off;
            } else {
                v[--j] = x;
            }
            prev_match = m;
        }
        memmove(v, v + j, (k - j) * sizeof(*v));
        *count = k - j;
        return CINDER_OK;
    }
    for (size_t i = 0; i < k; i++) {
        tok_span x = v[i];
        bool m = x.match != sp->invert;
        switch (sp->behavior) {
            case TOK_SPLIT_REMOVED:
                if (!m) v[out++] = x;
                break;
            case TOK_SPLIT_MERGED_WITH_PREVIOUS:
                if (m && !prev_match && out > 0)
                    v[out - 1].len = x.off + x.len - v[out - 1].off;
                else
                    v[out++] = x;
                break;
            case TOK_SPLIT_CONTIGUOUS:
                if (m == prev_match && out > 0)
                    v[out - 1].len = x.off + x.len - v[out - 1].off;
                else
                    v[out++] = x;
                break;
            default:
                v[out++] = x;
                break;
        }
        prev_match = m;
    }
    *count = out;
    return CINDER_OK;
nomem:
    return cinder_error_set(e->err, CINDER_ERR_NOMEM, "out of memory pre-tokenizing");
}

/* Runs pre-tokenizer steps step.. on the piece s, then BPE on each final piece. */
static cinder_status enc_pre(tok_enc *e, int step, const char *s, size_t n) {
    if (n == 0) return CINDER_OK;
    if (step == e->t->n_splits) return enc_bpe(e, (const unsigned char *)s, n);
    const tok_split *sp = &e->t->splits[step];
    if (sp->add_prefix_space && s[0] != ' ') {
        tok_buf *b = &e->prefixed[step];
        b->len = 0;
        if (!tok_buf_append(b, " ", 1) || !tok_buf_append(b, s, n))
            return cinder_error_set(e->err, CINDER_ERR_NOMEM, "out of memory pre-tokenizing");
        s = b->data;
        n = b->len;
    }
    if (!sp->re) return enc_pre(e, step + 1, s, n);
    size_t count;
    cinder_status st = split_piece(e, step, s, n, &count);
    for (size_t i = 0; i < count && st == CINDER_OK; i++) {
        tok_span x = e->spans[step][i];
        st = enc_pre(e, step + 1, s + x.off, x.len);
    }
    return st;
}

static bool is_word_byte(unsigned char c) {
    return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z');
}

/* The white space character ending just before s[at] (from >= lo), its start in *start. */
static bool space_before(const char *s, size_t lo, size_t at, size_t *start) {
    if (at <= lo) return false;
    size_t i = at - 1;
    while (i > lo && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    uint32_t cp;
    int bad;
    if (tok_utf8_next((const unsigned char *)s + i, at - i, &cp, &bad) != (int)(at - i) ||
        !cp_is_space(cp))
        return false;
    *start = i;
    return true;
}

static size_t space_len_at(const char *s, size_t at, size_t n) {
    uint32_t cp;
    int bad;
    if (at >= n) return 0;
    int r = tok_utf8_next((const unsigned char *)s + at, n - at, &cp, &bad);
    return r > 0 && cp_is_space(cp) ? (size_t)r : 0;
}

/* Finds the leftmost, longest special token in s[from..n) and the span it takes (with the
 * white space its lstrip/rstrip swallow). */
static bool find_special(const tokenizer *t, const char *s, size_t from, size_t n,
                         bool parse_special, size_t *ms, size_t *me, int32_t *id) {
    for (size_t i = from; i < n; i++) {
        unsigned char f = (unsigned char)s[i];
        int32_t first = t->special_first[f], cnt = t->special_count[f];
        for (int32_t k = first; k < first + cnt; k++) {
            const tok_special *sp = &t->specials[k];
            size_t len = sp->len;
            if ((sp->control && !parse_special) || len > n - i ||
                memcmp(s + i, token_text(t, sp->id), len) != 0)
                continue;
            if (sp->single_word && ((i > 0 && is_word_byte((unsigned char)s[i - 1])) ||
                                    (i + len < n && is_word_byte((unsigned char)s[i + len]))))
                continue;
            size_t a = i, b = i + len, w;
            if (sp->lstrip)
                while (space_before(s, from, a, &w)) a = w;
            if (sp->rstrip)
                while ((w = space_len_at(s, b, n)) > 0) b += w;
            *ms = a;
            *me = b;
            *id = sp->id;
            return true;
        }
    }
    return false;
}

cinder_status tok_encode(const tokenizer *t, const char *text, size_t len, bool add_bos,
                         bool parse_special, int32_t *out, size_t cap, size_t *n_out,
                         cinder_error *err) {
    *n_out = 0;
    if (!text && len) return cinder_error_set(err, CINDER_ERR_ARG, "tok_encode: text is NULL");
    size_t bad = utf8_invalid_at(text, len);
    if (bad < len)
        return cinder_error_set(err, CINDER_ERR_ARG,
                                "invalid UTF-8 in the text at byte offset %zu (byte 0x%02x)", bad,
                                (unsigned char)text[bad]);

    cinder_status st = CINDER_OK;
    int ns = t->n_splits;
    tok_enc e = {.t = t, .out = out, .cap = out ? cap : 0, .err = err};
    e.md = pcre2_match_data_create(1, NULL);
    e.spans = calloc((size_t)ns + 1, sizeof(*e.spans));
    e.spans_cap = calloc((size_t)ns + 1, sizeof(*e.spans_cap));
    e.prefixed = calloc((size_t)ns + 1, sizeof(*e.prefixed));
    if (!e.md || !e.spans || !e.spans_cap || !e.prefixed) {
        st = cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory encoding");
        goto done;
    }

    if (add_bos && tok_add_bos(t)) enc_push(&e, t->bos);
    for (size_t pos = 0; pos < len;) {
        size_t ms = len, me = len;
        int32_t id = -1;
        bool found =
            t->n_specials > 0 && find_special(t, text, pos, len, parse_special, &ms, &me, &id);
        st = enc_pre(&e, 0, text + pos, ms - pos);
        if (st != CINDER_OK) goto done;
        if (!found) break;
        enc_push(&e, id);
        pos = me;
    }
    *n_out = e.n;
    if (e.n > e.cap)
        st = cinder_error_set(err, CINDER_ERR_RANGE, "the text needs %zu ids, the buffer holds %zu",
                              e.n, cap);
done:
    pcre2_match_data_free(e.md);
    for (int i = 0; e.spans && i <= ns; i++) free(e.spans[i]);
    for (int i = 0; e.prefixed && i <= ns; i++) free(e.prefixed[i].data);
    free(e.spans);
    free(e.spans_cap);
    free(e.prefixed);
    free(e.sym);
    free(e.heap);
    free(e.word.data);
    return st;
}

/* ---------------------------------------------------------------------------------------------
 * Decode
 * ------------------------------------------------------------------------------------------- */

cinder_status tok_decode(const tokenizer *t, const int32_t *ids, size_t n, bool with_special,
                         char *out, size_t cap, size_t *n_out, cinder_error *err) {
    size_t need = 0;
    *n_out = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (!id_ok(t, id))
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "token id %d at index %zu is not in the vocabulary (size %d)",
                                    id, i, t->n_vocab);
        if (!with_special && t->type[id] == TOK_TYPE_CONTROL) continue;
        size_t len = t->bytes_len[id];
        if (out && need + len < cap) memcpy(out + need, t->bytes_pool + t->bytes_off[id], len);
        need += len;
    }
    *n_out = need;
    if (!out || need + 1 > cap) {
        if (out && cap) out[cap - 1] = '\0';
        return cinder_error_set(err, CINDER_ERR_RANGE,
                                "decoding needs %zu bytes plus the NUL, the buffer holds %zu", need,
                                cap);
    }
    out[need] = '\0';
    return CINDER_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Streaming decoder
 * ------------------------------------------------------------------------------------------- */

void tok_stream_init(tok_stream *s, const tokenizer *t, bool with_special) {
    memset(s, 0, sizeof(*s));
    s->t = t;
    s->with_special = with_special;
}

static const char REPLACEMENT[] = "\xEF\xBF\xBD"; /* U+FFFD */

typedef struct stream_out {
    char *p;
    size_t cap, n;
    bool full;
} stream_out;

static void sout_put(stream_out *o, const void *data, size_t n) {
    if (o->n + n + 1 > o->cap) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->n, data, n);
    o->n += n;
}

/* Emits the whole characters of pending[0..*np) (replacing invalid sequences) and keeps an
 * incomplete tail. */
static void stream_drain(unsigned char *pending, int *np, stream_out *o, bool final) {
    int i = 0;
    while (i < *np && !o->full) {
        uint32_t cp;
        int bad, r = tok_utf8_next(pending + i, (size_t)(*np - i), &cp, &bad);
        if (r > 0) {
            sout_put(o, pending + i, (size_t)r);
            i += r;
        } else if (r == 0) {
            sout_put(o, REPLACEMENT, 3);
            i += bad;
        } else if (final) {
            sout_put(o, REPLACEMENT, 3);
            i = *np;
        } else {
            break;
        }
    }
    memmove(pending, pending + i, (size_t)(*np - i));
    *np -= i;
}

int tok_stream_feed(tok_stream *s, int32_t id, char *out, size_t cap, cinder_error *err) {
    const tokenizer *t = s->t;
    if (!id_ok(t, id)) {
        cinder_error_set(err, CINDER_ERR_ARG, "token id %d is not in the vocabulary (size %d)", id,
                         t->n_vocab);
        return -1;
    }
    stream_out o = {.p = out, .cap = cap};
    unsigned char saved[sizeof(s->pending)];
    int saved_n = s->n_pending;
    memcpy(saved, s->pending, sizeof(saved));
    if (s->with_special || t->type[id] != TOK_TYPE_CONTROL) {
        const unsigned char *b = t->bytes_pool + t->bytes_off[id];
        size_t len = t->bytes_len[id], i = 0;
        /* Complete the pending character a byte at a time, then go through the token in place. */
        while (s->n_pending > 0 && i < len && !o.full) {
            s->pending[s->n_pending++] = b[i++];
            stream_drain(s->pending, &s->n_pending, &o, false);
        }
        while (i < len && !o.full) {
            uint32_t cp;
            int bad, r = tok_utf8_next(b + i, len - i, &cp, &bad);
            if (r > 0) {
                sout_put(&o, b + i, (size_t)r);
                i += (size_t)r;
            } else if (r == 0) {
                sout_put(&o, REPLACEMENT, 3);
                i += (size_t)bad;
            } else {
                memcpy(s->pending, b + i, len - i); /* < 4 bytes */
                s->n_pending = (int)(len - i);
                i = len;
            }
        }
    }
    if (o.full || cap == 0) {
        s->n_pending = saved_n;
        memcpy(s->pending, saved, sizeof(saved));
        cinder_error_set(err, CINDER_ERR_RANGE,
                         "stream output buffer of %zu bytes too small for token %d", cap, id);
        return -1;
    }
    out[o.n] = '\0';
    return (int)o.n;
}

int tok_stream_flush(tok_stream *s, char *out, size_t cap) {
    stream_out o = {.p = out, .cap = cap};
    stream_drain(s->pending, &s->n_pending, &o, true);
    if (o.full || cap == 0) return -1;
    out[o.n] = '\0';
    return (int)o.n;
}
