/* test_base.c - the small shared pieces: error messages, option tables, fp16/bf16, dequant. */
#include <math.h>

#include "cli.h"
#include "dtype.h"
#include "status.h"
#include "stop_text.h"
#include "test.h"

static void test_error_prefix(void) {
    cinder_error err = {0};
    CHECK_EQ_INT(cinder_error_set(&err, CINDER_ERR_FORMAT, "bad %s", "magic"), CINDER_ERR_FORMAT);
    cinder_error_prefix(&err, "%s", "model.gguf");
    CHECK_STR_EQ(err.msg, "model.gguf: bad magic");
    CHECK_EQ_INT(err.status, CINDER_ERR_FORMAT);
    /* A long message is cut at the end, never overflowing. */
    char long_msg[600];
    memset(long_msg, 'x', sizeof long_msg - 1);
    long_msg[sizeof long_msg - 1] = 0;
    cinder_error_set(&err, CINDER_ERR_IO, "%s", long_msg);
    cinder_error_prefix(&err, "file");
    CHECK(strncmp(err.msg, "file: xxx", 9) == 0);
    CHECK_EQ_INT(strlen(err.msg), sizeof err.msg - 1);
    CHECK(cinder_error_set(NULL, CINDER_ERR_ARG, "ignored") == CINDER_ERR_ARG);
}

static void test_cli(void) {
    const char *path = NULL, *pos[4];
    int64_t n = 0;
    double t = 0;
    bool chat = false;
    cli_option opts[] = {
        {"model", CLI_STR, &path, NULL, 0, 0, "PATH", "model", true},
        {"max-tokens", CLI_INT, &n, "256", 1, 1000, "N", "tokens", false},
        {"temperature", CLI_FLOAT, &t, "0.7", 0, 5, "T", "temperature", false},
        {"chat", CLI_FLAG, &chat, NULL, 0, 0, NULL, "chat", false},
    };
    cinder_error err = {0};
    int n_pos;
    char *ok_args[] = {"--model", "m.gguf", "hello", "--max-tokens=12", "--chat", "--", "--x"};
    CHECK_EQ_INT(cli_parse(opts, 4, 7, ok_args, pos, 4, &n_pos, &err), CLI_RESULT_OK);
    CHECK_STR_EQ(path, "m.gguf");
    CHECK_EQ_INT(n, 12);
    CHECK(fabs(t - 0.7) < 1e-12); /* the default, parsed */
    CHECK(chat);
    CHECK_EQ_INT(n_pos, 2);
    CHECK_STR_EQ(pos[0], "hello");
    CHECK_STR_EQ(pos[1], "--x"); /* after "--" everything is positional */

    struct {
        int argc;
        char *argv[3];
        const char *expect; /* a piece of the error message */
    } bad[] = {
        {1, {"--max-tokens=0"}, "outside"},        {2, {"--model", "m"}, ""},
        {2, {"--max-tokens", "12x"}, "not an integer"}, {1, {"--temperature=nan"}, "finite"},
        {1, {"--nope"}, "unknown option '--nope'"}, {1, {"--model"}, "needs a value"},
        {1, {"--chat=1"}, "takes no value"},        {1, {"-x"}, "unknown option '-x'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err.msg[0] = 0;
        cli_result r = cli_parse(opts, 4, bad[i].argc, bad[i].argv, pos, 0, &n_pos, &err);
        if (bad[i].argc == 2 && !strcmp(bad[i].argv[0], "--model")) {
            CHECK_EQ_INT(r, CLI_RESULT_OK); /* required option given, nothing else */
            continue;
        }
        CHECK_EQ_INT(r, CLI_RESULT_ERROR);
        CHECK_MSG(test_contains(err.msg, bad[i].expect), "case %zu: '%s'", i, err.msg);
    }
    char *missing[] = {"--chat"};
    CHECK_EQ_INT(cli_parse(opts, 4, 1, missing, pos, 0, &n_pos, &err), CLI_RESULT_ERROR);
    CHECK(test_contains(err.msg, "--model PATH is required"));
    char *extra[] = {"--model", "m", "a", "b"};
    CHECK_EQ_INT(cli_parse(opts, 4, 4, extra, pos, 1, &n_pos, &err), CLI_RESULT_ERROR);
    CHECK(test_contains(err.msg, "unexpected argument 'b'"));
    char *help[] = {"--model", "m", "--help"};
    CHECK_EQ_INT(cli_parse(opts, 4, 3, help, pos, 0, &n_pos, &err), CLI_RESULT_HELP);
}

static void test_half_floats(void) {
    /* Bit patterns from IEEE 754 binary16 and bfloat16. */
    CHECK(fp16_to_f32(0x3c00) == 1.0f);
    CHECK(fp16_to_f32(0xc000) == -2.0f);
    CHECK(fp16_to_f32(0x7bff) == 65504.0f);
    CHECK(fp16_to_f32(0x0001) == ldexpf(1, -24)); /* smallest subnormal */
    CHECK(isinf(fp16_to_f32(0x7c00)));
    CHECK(isnan(fp16_to_f32(0x7e00)));
    CHECK_EQ_INT(f32_to_fp16(1.0f), 0x3c00);
    CHECK_EQ_INT(f32_to_fp16(65520.0f), 0x7c00); /* rounds up to infinity */
    CHECK_EQ_INT(f32_to_fp16(ldexpf(1, -25) * 1.5f), 0x0001);
    CHECK_EQ_INT(f32_to_fp16(1.0f + ldexpf(1, -11)), 0x3c00); /* tie to even */
    CHECK_EQ_INT(f32_to_fp16(1.0f + 3 * ldexpf(1, -11)), 0x3c02);
    for (uint32_t h = 0; h < 0x10000; h++) { /* every finite half survives the round trip */
        if ((h & 0x7c00) == 0x7c00) continue;
        CHECK_MSG(f32_to_fp16(fp16_to_f32((uint16_t)h)) == h, "0x%04x", h);
    }
    CHECK(bf16_to_f32(0x3f80) == 1.0f);
    CHECK_EQ_INT(f32_to_bf16(1.0f), 0x3f80);
    CHECK_EQ_INT(f32_to_bf16(1.00390625f), 0x3f80); /* 1 + 2^-8 is a tie: to even */
    CHECK_EQ_INT(f32_to_bf16(1.01171875f), 0x3f82); /* 1 + 3 * 2^-8: tie, up to even */
}

static void test_dequant(void) {
    block_q4_1 b41 = {f32_to_fp16(0.5f), f32_to_fp16(-1.0f), {0}};
    block_q4_0 b40 = {f32_to_fp16(0.25f), {0}};
    block_q8_0 b80 = {f32_to_fp16(0.125f), {0}};
    for (int j = 0; j < 16; j++) b41.qs[j] = b40.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    for (int j = 0; j < 32; j++) b80.qs[j] = (int8_t)(j * 8 - 128);
    float out[32];
    dtype_to_f32(DTYPE_Q4_1, &b41, out, 32);
    for (int j = 0; j < 16; j++) {
        CHECK(out[j] == j * 0.5f - 1.0f);           /* low nibbles: elements 0-15 */
        CHECK(out[j + 16] == (15 - j) * 0.5f - 1.0f); /* high nibbles: 16-31 */
    }
    dtype_to_f32(DTYPE_Q4_0, &b40, out, 32);
    for (int j = 0; j < 16; j++) {
        CHECK(out[j] == (j - 8) * 0.25f);
        CHECK(out[j + 16] == (7 - j) * 0.25f);
    }
    dtype_to_f32(DTYPE_Q8_0, &b80, out, 32);
    for (int j = 0; j < 32; j++) CHECK(out[j] == (j * 8 - 128) * 0.125f);
    CHECK_EQ_INT(dtype_row_bytes(DTYPE_Q4_1, 576), 18 * 20);
    CHECK_EQ_INT(dtype_row_bytes(DTYPE_Q4_1, 33), 0); /* not whole blocks */
    CHECK_EQ_INT(dtype_row_bytes(DTYPE_BF16, 3), 6);
}

/* Feeds pieces one by one; returns everything released, and whether it stopped. */
static int stop_run(const char *const *stops, int n, const char *const *pieces, char *out) {
    stop_text st;
    CHECK(stop_text_init(&st, stops, n, NULL) == CINDER_OK);
    out[0] = 0;
    int hit = 0;
    for (int i = 0; pieces[i] && !hit; i++) {
        const char *o;
        size_t len;
        hit = stop_text_feed(&st, pieces[i], strlen(pieces[i]), &o, &len);
        strncat(out, o, len);
    }
    if (!hit) {
        const char *o;
        size_t len;
        stop_text_finish(&st, &o, &len);
        strncat(out, o, len);
    }
    stop_text_free(&st);
    return hit;
}

static void test_stop_text(void) {
    char out[256];
    const char *stops[] = {"\n\nUser:", "STOP"};
    const char *p1[] = {"Hello", " world.\n", "\nUs", "er: more", NULL};
    CHECK(stop_run(stops, 2, p1, out));
    CHECK_STR_EQ(out, "Hello world.");
    const char *p2[] = {"no st", "op here\n", "\nU", NULL}; /* a prefix at the end is released */
    CHECK(!stop_run(stops, 2, p2, out));
    CHECK_STR_EQ(out, "no stop here\n\nU");
    const char *p3[] = {"xxSTO", "Pyy", NULL};
    CHECK(stop_run(stops, 2, p3, out));
    CHECK_STR_EQ(out, "xx");
    const char *p4[] = {"ST", "OR", "STOP", NULL}; /* a false start, then the real one */
    CHECK(stop_run(stops, 2, p4, out));
    CHECK_STR_EQ(out, "STOR");
    /* Nothing is released that could still become a stop string. */
    stop_text st;
    stop_text_init(&st, stops, 2, NULL);
    const char *o;
    size_t len;
    CHECK(!stop_text_feed(&st, "abc\n", 4, &o, &len));
    CHECK(len == 3 && memcmp(o, "abc", 3) == 0);
    stop_text_free(&st);
    const char *empty[] = {"ok", ""};
    cinder_error err = {0};
    CHECK_EQ_INT(stop_text_init(&st, empty, 2, &err), CINDER_ERR_ARG);
    CHECK(test_contains(err.msg, "stop string 1 is empty"));
    const char *p5[] = {"plain", " text", NULL}; /* no stop strings: everything at once */
    CHECK(!stop_run(NULL, 0, p5, out));
    CHECK_STR_EQ(out, "plain text");
}

int main(void) {
    test_stop_text();
    test_error_prefix();
    test_cli();
    test_half_floats();
    test_dequant();
    return test_summary("test_base");
}
