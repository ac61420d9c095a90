/* test_tokenizer_golden.c - cinder's tokenizer against Hugging Face `tokenizers`.
 *
 *   test_tokenizer_golden         tokenizer.json front end: SmolLM2, Llama-3 and small variants
 *   test_tokenizer_golden --gguf  GGUF front end on the default model (77, skipped, without it)
 *
 * The references (data/tokenizer/NAME_refs.jsonl, chat_refs.jsonl) come from
 * tests/golden/make_tokenizer_refs.py: every corpus string must encode to exactly the
 * reference ids, with special tokens parsed and not, and decode back to its text. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "gguf.h"
#include "test.h"
#include "tokenizer.h"

#define TOK_DATA    CINDER_TEST_DATA "/tokenizer"
#define MAX_REPORTS 8 /* mismatches printed per reference file */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = '\0';
    fclose(f);
    return s;
}

/* Calls fn on every JSON line of path; returns the line count or -1. */
static int for_each_line(const char *path, void (*fn)(const cJSON *, void *), void *ctx) {
    char *data = slurp(path);
    if (!data) {
        fprintf(stderr, "cannot read %s\n", path);
        return -1;
    }
    int n = 0;
    for (char *line = data, *end; *line; line = end) {
        end = strchr(line, '\n');
        end = end ? end + 1 : line + strlen(line);
        cJSON *j = cJSON_ParseWithLength(line, (size_t)(end - line));
        CHECK_MSG(j != NULL, "%s line %d is not JSON", path, n + 1);
        if (j) fn(j, ctx);
        cJSON_Delete(j);
        n++;
    }
    free(data);
    return n;
}

/* The text with control characters escaped, cut to 70 bytes (for messages). */
static const char *show(const char *s, char *buf, size_t cap) {
    size_t o = 0;
    for (; *s && o + 8 < cap && o < 70; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f)
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    buf[o] = '\0';
    return buf;
}

static size_t json_ids(const cJSON *arr, int32_t *out, size_t cap) {
    size_t n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr) {
        if (n < cap) out[n] = (int32_t)v->valuedouble;
        n++;
    }
    return n;
}

typedef struct golden {
    const tokenizer *t;
    const char *name;
    int lines, reports;
    size_t bytes, ids;
    double seconds;
} golden;

/* Encodes text and compares with the reference ids; prints the first difference. */
static void check_ids(golden *g, const char *text, const cJSON *want_arr, bool parse_special,
                      int32_t *got_out, size_t *n_got_out) {
    enum { CAP = 1 << 15 };
    static int32_t want[CAP], got[CAP];
    size_t nw = json_ids(want_arr, want, CAP), ng = 0;
    cinder_error err = {0};
    double t0 = now_s();
    cinder_status st =
        tok_encode(g->t, text, strlen(text), false, parse_special, got, CAP, &ng, &err);
    g->seconds += now_s() - t0;
    g->bytes += strlen(text);
    g->ids += ng;
    CHECK_MSG(st == CINDER_OK, "%s: encode failed: %s", g->name, err.msg);
    size_t i = 0;
    while (i < nw && i < ng && want[i] == got[i]) i++;
    bool same = st == CINDER_OK && nw == ng && i == nw;
    test_checks++;
    if (!same) {
        test_failures++;
        if (g->reports++ < MAX_REPORTS) {
            char buf[256];
            fprintf(stderr,
                    "%s line %d (special %s) \"%s\": first difference at id %zu of %zu/%zu\n",
                    g->name, g->lines, parse_special ? "on" : "off", show(text, buf, sizeof(buf)),
                    i, nw, ng);
            size_t lo = i > 2 ? i - 2 : 0;
            fprintf(stderr, "  want:");
            for (size_t k = lo; k < nw && k < i + 6; k++)
                fprintf(stderr, " %d'%s'", want[k], tok_token_text(g->t, want[k]));
            fprintf(stderr, "\n  got: ");
            for (size_t k = lo; k < ng && k < i + 6; k++)
                fprintf(stderr, " %d'%s'", got[k], tok_token_text(g->t, got[k]));
            fprintf(stderr, "\n");
        }
    }
    if (got_out) {
        memcpy(got_out, got, (ng < CAP ? ng : CAP) * sizeof(*got));
        *n_got_out = ng;
    }
}

static void golden_line(const cJSON *j, void *ctx) {
    golden *g = ctx;
    g->lines++;
    const char *text = cJSON_GetObjectItem(j, "text")->valuestring;
    const cJSON *decoded = cJSON_GetObjectItem(j, "decoded");
    static int32_t ids[1 << 15];
    size_t n = 0;
    check_ids(g, text, cJSON_GetObjectItem(j, "ids"), true, ids, &n);
    check_ids(g, text, cJSON_GetObjectItem(j, "ids_plain"), false, NULL, NULL);

    /* decode(encode(text)) gives text back (or what tokenizers' decode gave, where a byte has
     * no token). */
    const char *want = decoded ? decoded->valuestring : text;
    size_t cap = strlen(want) * 2 + 64, got_n = 0;
    char *buf = malloc(cap);
    cinder_error err = {0};
    cinder_status st = tok_decode(g->t, ids, n, true, buf, cap, &got_n, &err);
    char b1[256], b2[256];
    CHECK_MSG(st == CINDER_OK && strcmp(buf, want) == 0,
              "%s line %d: decode gave \"%s\", want \"%s\" (%s)", g->name, g->lines,
              st == CINDER_OK ? show(buf, b1, sizeof(b1)) : "-", show(want, b2, sizeof(b2)),
              err.msg);
    free(buf);
}

static void check_refs(const tokenizer *t, const char *name, const char *refs) {
    golden g = {.t = t, .name = name};
    int n = for_each_line(refs, golden_line, &g);
    CHECK_MSG(n >= 200, "%s: only %d reference strings", refs, n);
    printf("%-26s %3d strings, %6zu bytes -> %6zu ids in %.1f ms%s\n", name, n, g.bytes, g.ids,
           g.seconds * 1e3, g.reports ? "  MISMATCHES" : "");
}

typedef struct chat_ctx {
    const tokenizer *t;
    const char *name;
    int n;
} chat_ctx;

static void chat_line(const cJSON *j, void *ctx) {
    chat_ctx *c = ctx;
    if (strcmp(cJSON_GetObjectItem(j, "tokenizer")->valuestring, c->name) != 0) return;
    chat_message msgs[16];
    int n = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItem(j, "messages")) {
        if (n == 16) break;
        msgs[n].role = cJSON_GetObjectItem(m, "role")->valuestring;
        msgs[n].content = cJSON_GetObjectItem(m, "content")->valuestring;
        n++;
    }
    bool gen = cJSON_IsTrue(cJSON_GetObjectItem(j, "add_generation_prompt"));
    const char *want = cJSON_GetObjectItem(j, "text")->valuestring;
    cinder_error err = {0};
    char *got = tok_chat_apply(c->t, msgs, n, gen, &err);
    CHECK_MSG(got && strcmp(got, want) == 0, "%s chat %d: got\n%s\nwant\n%s\n(%s)", c->name, c->n,
              got ? got : "(null)", want, err.msg);
    if (got) {
        golden g = {.t = c->t, .name = c->name, .lines = c->n};
        check_ids(&g, got, cJSON_GetObjectItem(j, "ids"), true, NULL, NULL);
    }
    free(got);
    c->n++;
}

static void check_chat(const tokenizer *t, const char *name) {
    chat_ctx c = {.t = t, .name = name};
    for_each_line(TOK_DATA "/chat_refs.jsonl", chat_line, &c);
    CHECK_MSG(c.n >= 8, "%s: only %d chat references", name, c.n);
}

/* SmolLM2's facts (model-notes.md), whichever front end loaded it. */
static void check_smollm2(const tokenizer *t, const char *name) {
    char label[64];
    snprintf(label, sizeof(label), "smollm2 (%s)", name);
    CHECK_EQ_INT(tok_vocab_size(t), 49152);
    CHECK_EQ_INT(tok_bos(t), 1);
    CHECK_EQ_INT(tok_eos(t), 2);
    CHECK(!tok_add_bos(t));
    CHECK_EQ_INT(tok_pre_kind(t), TOK_PRE_SMOLLM);
    CHECK_STR_EQ(tok_pre_name(t), "smollm");
    CHECK_EQ_INT(tok_chat_format(t), CHAT_FORMAT_CHATML);
    CHECK_EQ_INT(tok_token_type(t, 1), TOK_TYPE_CONTROL);
    CHECK_EQ_INT(tok_token_id(t, "<|im_end|>"), 2);
    int32_t stop[4];
    CHECK_EQ_INT(tok_stop_ids(t, stop, 4), 1);
    CHECK_EQ_INT(stop[0], 2);
    check_refs(t, label, TOK_DATA "/smollm2_refs.jsonl");
    check_chat(t, "smollm2");
}

static int run_gguf(void) {
    FILE *f = fopen(CINDER_DEFAULT_MODEL, "rb");
    if (!f) {
        printf("test_tokenizer_golden: %s not found, skipping the GGUF front end\n",
               CINDER_DEFAULT_MODEL);
        return 77;
    }
    fclose(f);
    cinder_error err = {0};
    gguf_file *g = gguf_open(CINDER_DEFAULT_MODEL, &err);
    CHECK_MSG(g != NULL, "gguf_open: %s", err.msg);
    if (!g) return test_summary("test_tokenizer_golden --gguf");
    double t0 = now_s();
    tokenizer *t = tok_from_gguf(g, &err);
    printf("tok_from_gguf: %.1f ms\n", (now_s() - t0) * 1e3);
    CHECK_MSG(t != NULL, "tok_from_gguf: %s", err.msg);
    if (t) check_smollm2(t, "gguf");
    tok_free(t);
    gguf_close(g);
    return test_summary("test_tokenizer_golden --gguf");
}

static tokenizer *load_json(const char *path) {
    cinder_error err = {0};
    double t0 = now_s();
    tokenizer *t = tok_from_json(path, &err);
    CHECK_MSG(t != NULL, "tok_from_json(%s): %s", path, err.msg);
    if (t) printf("tok_from_json %s: %.1f ms\n", strrchr(path, '/') + 1, (now_s() - t0) * 1e3);
    return t;
}

/* Meta's Llama-3 tokenizer (fetched by scripts/fetch-test-data.sh); 77 when absent. */
static int run_llama3(void) {
    FILE *f = fopen(CINDER_TOK_LLAMA3_DIR "/tokenizer.json", "rb");
    if (!f) {
        printf("test_tokenizer_golden: %s/tokenizer.json not found (scripts/fetch-test-data.sh "
               "fetches it), skipping\n", CINDER_TOK_LLAMA3_DIR);
        return 77;
    }
    fclose(f);
    tokenizer *t = load_json(CINDER_TOK_LLAMA3_DIR "/tokenizer.json");
    if (t) {
        CHECK_EQ_INT(tok_vocab_size(t), 128256);
        CHECK_EQ_INT(tok_bos(t), 128000);
        CHECK_EQ_INT(tok_eos(t), 128001);
        CHECK(tok_add_bos(t));
        CHECK_EQ_INT(tok_pre_kind(t), TOK_PRE_LLAMA3);
        CHECK_EQ_INT(tok_chat_format(t), CHAT_FORMAT_LLAMA3);
        int32_t stop[4];
        CHECK_EQ_INT(tok_stop_ids(t, stop, 4), 2);
        CHECK(stop[0] == 128001 && stop[1] == 128009);
        int32_t ids[8];
        size_t n = 0;
        cinder_error err = {0};
        CHECK(tok_encode(t, "Hi", 2, true, true, ids, 8, &n, &err) == CINDER_OK);
        CHECK(n == 2 && ids[0] == 128000);
        check_refs(t, "llama3 (json)", TOK_DATA "/llama3_refs.jsonl");
        check_chat(t, "llama3");
    }
    tok_free(t);

    return test_summary("test_tokenizer_golden --llama3");
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--gguf") == 0) return run_gguf();
    if (argc > 1 && strcmp(argv[1], "--llama3") == 0) return run_llama3();

    tokenizer *t = load_json(TOK_DATA "/smollm2/tokenizer.json");
    if (t) check_smollm2(t, "json");
    tok_free(t);

    static const char *const variants[] = {
        "split_removed",     "merged_previous", "merged_next", "contiguous_invert",
        "digits_contiguous", "prefix_space",    "added_flags",
    };
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        char path[512], refs[512];
        snprintf(path, sizeof(path), TOK_DATA "/variants/%s.json", variants[i]);
        snprintf(refs, sizeof(refs), TOK_DATA "/variants/%s_refs.jsonl", variants[i]);
        t = load_json(path);
        if (t) check_refs(t, variants[i], refs);
        tok_free(t);
    }
    return test_summary("test_tokenizer_golden");
}
