/* test_tokenizer.c - the tokenizer beyond the golden references: the streaming decoder, chat
 * templates, errors (bad ids, invalid UTF-8, unknown roles, small buffers, refused files),
 * the GGUF front end on small generated files, and long inputs that must not be quadratic. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gguf.h"
#include "gguf_write.h"
#include "test.h"
#include "tokenizer.h"

#define TOK_DATA CINDER_TEST_DATA "/tokenizer"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The id of the one-byte token of byte b (its GPT-2 byte-to-unicode spelling). */
static int32_t byte_token(const tokenizer *t, unsigned b) {
    unsigned cp = b;
    if (b <= 0x20)
        cp = 256 + b;
    else if (b >= 0x7F && b <= 0xA0)
        cp = b + 162;
    else if (b == 0xAD)
        cp = 323;
    char s[3] = {0};
    if (cp < 0x80) {
        s[0] = (char)cp;
    } else {
        s[0] = (char)(0xC0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3F));
    }
    return tok_token_id(t, s);
}

/* Encodes s (special tokens parsed); returns the count, ids in out. */
static size_t enc(const tokenizer *t, const char *s, int32_t *out, size_t cap) {
    size_t n = 0;
    cinder_error err = {0};
    cinder_status st = tok_encode(t, s, strlen(s), false, true, out, cap, &n, &err);
    CHECK_MSG(st == CINDER_OK, "encode \"%.40s\": %s", s, err.msg);
    return n;
}

static void test_stream(const tokenizer *t) {
    char out[256], all[1024];
    cinder_error err = {0};
    tok_stream s;

    /* An emoji fed as its four byte tokens comes out once, whole, with the fourth. */
    const unsigned char smile[] = {0xF0, 0x9F, 0x98, 0x80};
    tok_stream_init(&s, t, true);
    for (int i = 0; i < 4; i++) {
        int32_t id = byte_token(t, smile[i]);
        CHECK(id >= 0);
        int n = tok_stream_feed(&s, id, out, sizeof(out), &err);
        CHECK_EQ_INT(n, i < 3 ? 0 : 4);
        if (i == 3) CHECK_STR_EQ(out, "\xF0\x9F\x98\x80");
    }
    CHECK_EQ_INT(tok_stream_flush(&s, out, sizeof(out)), 0);

    /* Real text: every piece is whole UTF-8 and the pieces add up to the decode. */
    const char *text = "Emoji 👨‍👩‍👧‍👦 🇫🇷 😀! Ελληνικά 中文 नमस्ते "
                       "<|im_end|>";
    int32_t ids[256];
    size_t n = enc(t, text, ids, 256);
    tok_stream_init(&s, t, true);
    all[0] = '\0';
    bool whole = true;
    for (size_t i = 0; i < n; i++) {
        int k = tok_stream_feed(&s, ids[i], out, sizeof(out), &err);
        CHECK(k >= 0);
        /* a piece never ends inside a character */
        for (int j = 0; j < k; j++) {
            unsigned char c = (unsigned char)out[j];
            int len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
            if (len == 0 || j + len > k) whole = false;
            if (len) j += len - 1;
        }
        strcat(all, out);
    }
    CHECK(whole);
    CHECK_EQ_INT(tok_stream_flush(&s, out, sizeof(out)), 0);
    CHECK_STR_EQ(all, text);

    /* Without special tokens, a control token gives nothing. */
    tok_stream_init(&s, t, false);
    CHECK_EQ_INT(tok_stream_feed(&s, 2, out, sizeof(out), &err), 0);
    CHECK_STR_EQ(out, "");
    tok_stream_init(&s, t, true);
    CHECK_EQ_INT(tok_stream_feed(&s, 2, out, sizeof(out), &err), 10);
    CHECK_STR_EQ(out, "<|im_end|>");

    /* Invalid UTF-8 becomes U+FFFD: a lead byte cut off by 'A', and one left at the end. */
    tok_stream_init(&s, t, true);
    CHECK_EQ_INT(tok_stream_feed(&s, byte_token(t, 0xE4), out, sizeof(out), &err), 0);
    CHECK_EQ_INT(tok_stream_feed(&s, byte_token(t, 'A'), out, sizeof(out), &err), 4);
    CHECK_STR_EQ(out, "\xEF\xBF\xBD"
                      "A");
    CHECK_EQ_INT(tok_stream_feed(&s, byte_token(t, 0xF0), out, sizeof(out), &err), 0);
    CHECK_EQ_INT(tok_stream_feed(&s, byte_token(t, 0x9F), out, sizeof(out), &err), 0);
    CHECK_EQ_INT(tok_stream_flush(&s, out, sizeof(out)), 3);
    CHECK_STR_EQ(out, "\xEF\xBF\xBD");
    CHECK_EQ_INT(tok_stream_feed(&s, byte_token(t, 0x80), out, sizeof(out), &err), 3);
    CHECK_STR_EQ(out, "\xEF\xBF\xBD"); /* a lone continuation byte */

    /* A buffer too small fails and leaves the stream as it was. */
    tok_stream_init(&s, t, true);
    for (int i = 0; i < 3; i++)
        tok_stream_feed(&s, byte_token(t, smile[i]), out, sizeof(out), &err);
    CHECK_EQ_INT(tok_stream_feed(&s, byte_token(t, smile[3]), out, 4, &err), -1);
    CHECK_EQ_INT(err.status, CINDER_ERR_RANGE);
    CHECK_EQ_INT(tok_stream_feed(&s, byte_token(t, smile[3]), out, 5, &err), 4);
    CHECK_STR_EQ(out, "\xF0\x9F\x98\x80");
    CHECK_EQ_INT(tok_stream_feed(&s, 49152, out, sizeof(out), &err), -1);
    CHECK_EQ_INT(err.status, CINDER_ERR_ARG);
    CHECK(tok_max_token_bytes(t) > 0 && tok_max_token_bytes(t) < 256);
}

static void test_errors(const tokenizer *t) {
    cinder_error err = {0};
    int32_t ids[64];
    size_t n = 0;
    char buf[64];

    /* Invalid UTF-8 names the byte offset. */
    static const struct {
        const char *s;
        const char *at;
    } bad[] = {
        {"ab\xff"
         "cd",
         "offset 2"},
        {"\xc0\xaf", "offset 0"},
        {"ok\xed\xa0\x80", "offset 2"},
        {"abc\xe2\x82", "offset 3"},
        {"\xf4\x90\x80\x80", "offset 0"},
        {"x\xe2\x28\xa1", "offset 1"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cinder_status st =
            tok_encode(t, bad[i].s, strlen(bad[i].s), false, true, ids, 64, &n, &err);
        CHECK_EQ_INT(st, CINDER_ERR_ARG);
        CHECK_MSG(test_contains(err.msg, bad[i].at), "case %zu: %s", i, err.msg);
    }

    /* Output too small: CINDER_ERR_RANGE with the size needed; NULL/0 sizes the call. */
    const char *text = "The capital of France is";
    CHECK_EQ_INT(tok_encode(t, text, strlen(text), false, true, ids, 2, &n, &err),
                 CINDER_ERR_RANGE);
    CHECK_EQ_INT(n, 5);
    CHECK(ids[0] == 504 && ids[1] == 3575);
    CHECK_EQ_INT(tok_encode(t, text, strlen(text), false, true, NULL, 0, &n, &err),
                 CINDER_ERR_RANGE);
    CHECK_EQ_INT(n, 5);
    CHECK_EQ_INT(tok_encode(t, "", 0, true, true, ids, 0, &n, &err), CINDER_OK);
    CHECK_EQ_INT(n, 0); /* SmolLM2 adds no BOS */

    int32_t good[] = {504, 3575, 282, 4649, 314};
    CHECK_EQ_INT(tok_decode(t, good, 5, true, buf, 10, &n, &err), CINDER_ERR_RANGE);
    CHECK_EQ_INT(n, 24);
    CHECK(test_contains(err.msg, "24"));
    CHECK_EQ_INT(tok_decode(t, good, 5, true, NULL, 0, &n, &err), CINDER_ERR_RANGE);
    CHECK_EQ_INT(n, 24);
    CHECK_EQ_INT(tok_decode(t, good, 5, true, buf, 25, &n, &err), CINDER_OK);
    CHECK_STR_EQ(buf, text);

    /* Bad ids name their index. */
    int32_t bad_ids[] = {504, -1, 49152};
    CHECK_EQ_INT(tok_decode(t, bad_ids, 3, true, buf, sizeof(buf), &n, &err), CINDER_ERR_ARG);
    CHECK_MSG(test_contains(err.msg, "index 1"), "%s", err.msg);
    CHECK_EQ_INT(tok_decode(t, bad_ids + 2, 1, true, buf, sizeof(buf), &n, &err), CINDER_ERR_ARG);
    CHECK(tok_token_text(t, 49152) == NULL && tok_token_text(t, -3) == NULL);

    /* Special tokens without with_special are left out. */
    int32_t chat[] = {1, 4093, 198, 2};
    CHECK_EQ_INT(tok_decode(t, chat, 4, false, buf, sizeof(buf), &n, &err), CINDER_OK);
    CHECK_STR_EQ(buf, "user\n");
    CHECK_EQ_INT(tok_decode(t, chat, 4, true, buf, sizeof(buf), &n, &err), CINDER_OK);
    CHECK_STR_EQ(buf, "<|im_start|>user\n<|im_end|>");

    /* Special tokens are matched only when asked. */
    CHECK_EQ_INT(tok_encode(t, "<|im_start|>", 12, false, true, ids, 64, &n, &err), CINDER_OK);
    CHECK(n == 1 && ids[0] == 1);
    CHECK_EQ_INT(tok_encode(t, "<|im_start|>", 12, false, false, ids, 64, &n, &err), CINDER_OK);
    CHECK(n > 1);
}

static void test_chat(const tokenizer *t) {
    cinder_error err = {0};
    chat_message m1[] = {{"user", "Hi"}};
    char *s = tok_chat_apply(t, m1, 1, true, &err);
    CHECK_STR_EQ(s,
                 "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                 "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(s);
    chat_message m2[] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}};
    s = tok_chat_apply(t, m2, 3, false, &err);
    CHECK_STR_EQ(s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello.<|im_end|>\n");
    free(s);

    chat_message bad[] = {{"user", "Hi"}, {"tool", "{}"}};
    CHECK(tok_chat_apply(t, bad, 2, true, &err) == NULL);
    CHECK_EQ_INT(err.status, CINDER_ERR_ARG);
    CHECK_MSG(test_contains(err.msg, "message 1") && test_contains(err.msg, "'tool'"), "%s",
              err.msg);
    CHECK(tok_chat_apply(t, bad, 0, true, &err) == NULL);
    CHECK_EQ_INT(err.status, CINDER_ERR_ARG);
    chat_message null_content[] = {{"user", NULL}};
    CHECK(tok_chat_apply(t, null_content, 1, true, &err) == NULL);
    CHECK_EQ_INT(err.status, CINDER_ERR_ARG);
}

/* Writes text to dir/name. */
static void write_file(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* tokenizer.json files cinder refuses, each by name; a template it doesn't know. */
static void test_json_refusals(void) {
    char dir[] = "/tmp/cinder_tok_XXXXXX", path[512];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    cinder_error err = {0};
    static const struct {
        const char *json;
        cinder_status st;
        const char *says;
    } cases[] = {
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", CINDER_ERR_UNSUPPORTED,
         "WordPiece"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], "
         "\"byte_fallback\": "
         "true}}",
         CINDER_ERR_UNSUPPORTED, "byte_fallback"},
        {"{\"normalizer\": {\"type\": \"Lowercase\"}, \"model\": {\"type\": \"BPE\", \"vocab\": "
         "{\"a\": 0}, \"merges\": []}}",
         CINDER_ERR_UNSUPPORTED, "Lowercase"},
        {"{\"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"model\": {\"type\": \"BPE\", \"vocab\": "
         "{\"a\": 0}, \"merges\": []}}",
         CINDER_ERR_UNSUPPORTED, "Metaspace"},
        {"{\"pre_tokenizer\": null, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
         "\"merges\": []}}",
         CINDER_ERR_UNSUPPORTED, "ByteLevel"},
        {"{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(unclosed\"}, "
         "\"behavior\": \"Isolated\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
         "\"merges\": []}}",
         CINDER_ERR_UNSUPPORTED, "(unclosed"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -4}, \"merges\": []}}",
         CINDER_ERR_FORMAT, "bad id"},
        {"{\"model\": ", CINDER_ERR_FORMAT, "JSON"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_file(dir, "tokenizer.json", cases[i].json);
        tokenizer *t = tok_from_json(path, &err);
        CHECK_MSG(t == NULL && err.status == cases[i].st && test_contains(err.msg, cases[i].says),
                  "case %zu: %s", i, err.msg);
        tok_free(t);
    }
    CHECK(tok_from_json("/nonexistent/tokenizer.json", &err) == NULL);
    CHECK_EQ_INT(err.status, CINDER_ERR_IO);

    /* A minimal byte-level tokenizer with an unknown template: chat is refused, not guessed. */
    write_file(dir, "tokenizer.json",
               "{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}, "
               "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
               "\"merges\": [\"a b\"]}}");
    write_file(dir, "tokenizer_config.json", "{\"chat_template\": \"{{ messages }}\"}");
    tokenizer *t = tok_from_json(path, &err);
    CHECK_MSG(t != NULL, "%s", err.msg);
    if (t) {
        CHECK_EQ_INT(tok_chat_format(t), CHAT_FORMAT_NONE);
        chat_message m[] = {{"user", "x"}};
        CHECK(tok_chat_apply(t, m, 1, true, &err) == NULL);
        CHECK_EQ_INT(err.status, CINDER_ERR_UNSUPPORTED);
        int32_t ids[8];
        size_t n;
        CHECK_EQ_INT(tok_encode(t, "abba", 4, true, true, ids, 8, &n, &err), CINDER_OK);
        CHECK(n == 3 && ids[0] == 2 && ids[1] == 1 && ids[2] == 0);
        CHECK_EQ_INT(tok_bos(t), -1);
        CHECK(!tok_add_bos(t));
        CHECK_EQ_INT(tok_pre_kind(t), TOK_PRE_GPT2);
    }
    tok_free(t);
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    unlink(path);
    rmdir(dir);
}

/* A small GGUF: the 256 byte tokens, "ab", "abc", two control tokens and a user-defined one. */
static gguf_file *small_gguf(const char *model, const char *pre, bool mismatched_types, int32_t bos,
                             uint8_t **buf) {
    static char bytes[256][3];
    const char *tokens[262];
    int32_t types[262];
    for (unsigned b = 0; b < 256; b++) {
        unsigned cp = b <= 0x20                  ? 256 + b
                      : (b >= 0x7F && b <= 0xA0) ? b + 162
                      : b == 0xAD                ? 323
                                                 : b;
        if (cp < 0x80) {
            bytes[b][0] = (char)cp;
            bytes[b][1] = 0;
        } else {
            bytes[b][0] = (char)(0xC0 | (cp >> 6));
            bytes[b][1] = (char)(0x80 | (cp & 0x3F));
            bytes[b][2] = 0;
        }
        tokens[b] = bytes[b];
        types[b] = TOK_TYPE_NORMAL;
    }
    const char *extra[] = {"ab", "abc", "<s>", "</s>", "<tool>", "Ġab"};
    tok_type extra_types[] = {TOK_TYPE_NORMAL,  TOK_TYPE_NORMAL,       TOK_TYPE_CONTROL,
                              TOK_TYPE_CONTROL, TOK_TYPE_USER_DEFINED, TOK_TYPE_NORMAL};
    for (int i = 0; i < 6; i++) {
        tokens[256 + i] = extra[i];
        types[256 + i] = (int32_t)extra_types[i];
    }
    const char *merges[] = {"a b", "ab c"}; /* no "Ġ ab": only ignore_merges gives Ġab */
    gguf_writer *w = gguf_writer_init();
    gguf_writer_add_str(w, "general.architecture", "llama");
    if (model) gguf_writer_add_str(w, "tokenizer.ggml.model", model);
    if (pre) gguf_writer_add_str(w, "tokenizer.ggml.pre", pre);
    gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", tokens, 262);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types,
                        mismatched_types ? 200 : 262);
    gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, 2);
    gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 259);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true);
    gguf_writer_add_str(w, "tokenizer.chat_template",
                        "{{ '<|start_header_id|>' + message['role'] }}");
    size_t size = 0;
    cinder_error err = {0};
    CHECK(gguf_writer_write_buffer(w, buf, &size, &err) == CINDER_OK);
    gguf_writer_free(w);
    gguf_file *g = gguf_open_memory(*buf, size, &err);
    CHECK_MSG(g != NULL, "%s", err.msg);
    return g;
}

static void test_gguf_small(void) {
    cinder_error err = {0};
    uint8_t *buf = NULL;
    gguf_file *g = small_gguf("gpt2", "llama-bpe", false, 258, &buf);
    tokenizer *t = g ? tok_from_gguf(g, &err) : NULL;
    CHECK_MSG(t != NULL, "%s", err.msg);
    if (t) {
        CHECK_EQ_INT(tok_vocab_size(t), 262);
        CHECK_EQ_INT(tok_pre_kind(t), TOK_PRE_LLAMA3);
        CHECK_STR_EQ(tok_pre_name(t), "llama-bpe");
        CHECK(tok_add_bos(t));
        CHECK_EQ_INT(tok_chat_format(t), CHAT_FORMAT_LLAMA3);
        int32_t ids[16];
        size_t n = 0;
        /* BOS, "abc" merged, the control token only when parsing specials, the user-defined
         * token always. */
        CHECK_EQ_INT(tok_encode(t, "abc<s><tool>", 12, true, true, ids, 16, &n, &err), CINDER_OK);
        CHECK(n == 4 && ids[0] == 258 && ids[1] == 257 && ids[2] == 258 && ids[3] == 260);
        CHECK_EQ_INT(tok_encode(t, "abc<s><tool>", 12, false, false, ids, 16, &n, &err), CINDER_OK);
        CHECK(n == 5 && ids[0] == 257 && ids[1] == '<' && ids[3] == '>' && ids[4] == 260);
        /* ignore_merges (Llama-3): " ab" is a token and is taken whole */
        CHECK_EQ_INT(tok_encode(t, " ab", 3, false, true, ids, 16, &n, &err), CINDER_OK);
        CHECK(n == 1 && ids[0] == 261);
    }
    tok_free(t);
    gguf_close(g);
    free(buf);

    static const struct {
        const char *model, *pre;
        bool mismatched;
        int32_t bos;
        cinder_status st;
        const char *says;
    } cases[] = {
        {"llama", "default", false, 1, CINDER_ERR_UNSUPPORTED, "SentencePiece"},
        {"gpt2", "qwen2", false, 1, CINDER_ERR_UNSUPPORTED, "qwen2"},
        {NULL, NULL, false, 1, CINDER_ERR_NOT_FOUND, "tokenizer.ggml.model"},
        {"gpt2", NULL, true, 1, CINDER_ERR_FORMAT, "token_type"},
        {"gpt2", "smollm", false, 999, CINDER_ERR_FORMAT, "BOS"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        g = small_gguf(cases[i].model, cases[i].pre, cases[i].mismatched, cases[i].bos, &buf);
        t = g ? tok_from_gguf(g, &err) : NULL;
        CHECK_MSG(t == NULL && err.status == cases[i].st && test_contains(err.msg, cases[i].says),
                  "case %zu: %s (%s)", i, err.msg, cinder_status_name(err.status));
        tok_free(t);
        gguf_close(g);
        free(buf);
    }
}

/* Long pieces must not be quadratic: 10k spaces, a 100 KB word, 100 KB of digits, 1 MB of text. */
static void test_long(const tokenizer *t, const char *name) {
    enum { N = 100000 };
    char *s = malloc(1 << 20 | 1);
    int32_t *ids = malloc(sizeof(int32_t) * (1 << 20));
    char *back = malloc((1 << 20) + 1);
    cinder_error err = {0};
    uint32_t rng = 12345;
    for (int kind = 0; kind < 5; kind++) {
        size_t len = kind == 0 ? 10000 : kind == 4 ? (1 << 20) : N;
        const char *para = "The quick brown fox, 1234 times, said \"héllo\" 😀\n\tif (x) { y(); }  ";
        for (size_t i = 0; i < len; i++) {
            rng = rng * 1103515245u + 12345u;
            s[i] = kind == 0   ? ' '
                   : kind == 1 ? (char)('a' + (rng >> 16) % 26)
                   : kind == 2 ? 'a'
                   : kind == 3 ? (char)('0' + (rng >> 16) % 10)
                               : para[i % strlen(para)];
        }
        if (kind == 4) len -= len % strlen(para); /* whole characters only */
        s[len] = '\0';
        size_t n = 0, nb = 0;
        double t0 = now_s();
        cinder_status st = tok_encode(t, s, len, false, true, ids, 1 << 20, &n, &err);
        double dt = now_s() - t0;
        CHECK_MSG(st == CINDER_OK, "%s: %s", name, err.msg);
        CHECK(tok_decode(t, ids, n, true, back, (1 << 20) + 1, &nb, &err) == CINDER_OK);
        CHECK(nb == len && memcmp(back, s, len) == 0);
        static const char *const what[] = {"10k spaces", "100 KB random word", "100 KB of 'a'",
                                           "100 KB of digits", "1 MB of text"};
        printf("%s: %-18s %8zu bytes -> %7zu ids in %6.1f ms\n", name, what[kind], len, n,
               dt * 1e3);
        CHECK_MSG(dt < 5.0, "%s: %s took %.2f s", name, what[kind], dt);
    }
    free(s);
    free(ids);
    free(back);
}

int main(void) {
    cinder_error err = {0};
    tokenizer *t = tok_from_json(TOK_DATA "/smollm2/tokenizer.json", &err);
    CHECK_MSG(t != NULL, "%s", err.msg);
    if (!t) return test_summary("test_tokenizer");
    test_stream(t);
    test_errors(t);
    test_chat(t);
    test_long(t, "smollm2");
    tok_free(t);

    /* Meta's Llama-3 tokenizer, when scripts/fetch-test-data.sh has fetched it (its golden
     * test, test_tokenizer_golden_llama3, reports as skipped otherwise). */
    FILE *f = fopen(CINDER_TOK_LLAMA3_DIR "/tokenizer.json", "rb");
    if (f) {
        fclose(f);
        t = tok_from_json(CINDER_TOK_LLAMA3_DIR "/tokenizer.json", &err);
        CHECK_MSG(t != NULL, "%s", err.msg);
        if (t) test_long(t, "llama3");
        tok_free(t);
    }

    test_json_refusals();
    test_gguf_small();
    return test_summary("test_tokenizer");
}
