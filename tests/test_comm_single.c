/* The single-rank communicator, the checked wrappers (misuse aborts), and the check macro's
 * message. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "comm.h"
#include "comm_check.h"
#include "test.h"

/* A stand-in library for COMM_CHECK: 0 is success. */
#define FAKE_OK(rc) ((rc) == 0)
static const char *fake_what(int rc) {
    return rc == 7 ? "seven went wrong" : "other";
}
static int fake_call(int rc) {
    return rc;
}

static cinder_status checked(int rc, int rank, cinder_error *err) {
    COMM_CHECK(int, fake_call(rc), FAKE_OK, fake_what, rank, err, return err->status);
    return CINDER_OK;
}

static int reached_after_failure;
static cinder_status checked_goto(int rc, cinder_error *err) {
    COMM_CHECK(int, fake_call(rc), FAKE_OK, fake_what, 5, err, goto fail);
    return CINDER_OK;
fail:
    reached_after_failure = 1;
    return err->status;
}

static void test_check_macro(void) {
    cinder_error err = {0};
    CHECK_EQ_INT(checked(0, 3, &err), CINDER_OK);
    CHECK_EQ_INT(checked(7, 3, &err), CINDER_ERR_IO);
    CHECK_EQ_INT(err.status, CINDER_ERR_IO);
    CHECK_MSG(test_contains(err.msg, "fake_call(rc) failed on rank 3 at test_comm_single.c:"), "%s",
              err.msg);
    CHECK_MSG(test_contains(err.msg, ": seven went wrong"), "%s", err.msg);
    CHECK_EQ_INT(checked_goto(1, &err), CINDER_ERR_IO);
    CHECK(reached_after_failure);
    CHECK(test_contains(err.msg, "on rank 5"));
    CHECK(test_contains(err.msg, ": other"));
    /* err may be NULL: the status still comes back. */
    CHECK_EQ_INT(comm_check_fail(NULL, "x()", 0, "a/b/c.c", 9, NULL), CINDER_ERR_IO);
}

static void test_single(void) {
    cinder_error err = {0};
    comm *c = comm_single_create(&err);
    CHECK(c != NULL);
    if (!c) return;
    CHECK_EQ_INT(comm_rank(c), 0);
    CHECK_EQ_INT(comm_size(c), 1);
    CHECK_STR_EQ(c->name, "single");

    float v[5] = {1.5f, -2.0f, 3.25f, 0.0f, 1e30f};
    float w[5];
    memcpy(w, v, sizeof v);
    CHECK_EQ_INT(comm_all_reduce_sum_f32(c, v, 5, &err), CINDER_OK);
    CHECK(memcmp(v, w, sizeof v) == 0);
    uint16_t h[3] = {0x3f80, 0xc000, 0x7fc0};
    CHECK_EQ_INT(comm_all_reduce_sum(c, h, 3, COMM_DTYPE_BF16, &err), CINDER_OK);
    CHECK(h[0] == 0x3f80 && h[1] == 0xc000 && h[2] == 0x7fc0);
    CHECK_EQ_INT(comm_all_reduce_sum_f32(c, NULL, 0, &err), CINDER_OK);

    /* all-gather with one rank: out = in, for one row and for several. */
    float in[12], out[12];
    for (int i = 0; i < 12; i++) in[i] = (float)i * 0.5f - 2.0f;
    for (int rows = 1; rows <= 4; rows++) {
        int64_t cols[1] = {12 / rows};
        memset(out, 0xff, sizeof out);
        CHECK_EQ_INT(comm_all_gather(c, out, in, rows, cols, &err), CINDER_OK);
        CHECK(memcmp(out, in, (size_t)(rows * cols[0]) * sizeof(float)) == 0);
    }
    int64_t zero[1] = {0};
    CHECK_EQ_INT(comm_all_gather(c, NULL, NULL, 3, zero, &err), CINDER_OK);

    char msg[6] = "hello";
    CHECK_EQ_INT(comm_broadcast(c, msg, sizeof msg, 0, &err), CINDER_OK);
    CHECK_STR_EQ(msg, "hello");
    CHECK_EQ_INT(comm_barrier(c, &err), CINDER_OK);
    comm_free(c);
    comm_free(NULL);
}

static void test_dtypes(void) {
    CHECK_EQ_INT(comm_dtype_size(COMM_DTYPE_F32), 4);
    CHECK_EQ_INT(comm_dtype_size(COMM_DTYPE_BF16), 2);
    CHECK_STR_EQ(comm_dtype_name(COMM_DTYPE_F32), "f32");
    CHECK_STR_EQ(comm_dtype_name(COMM_DTYPE_BF16), "bf16");
}

/* Misuse is a bug: the wrapper aborts (in a child process, so the test goes on). */
enum { MISUSE_ROOT, MISUSE_COUNT, MISUSE_NULL_BUF, MISUSE_OVERLAP, MISUSE_NEG_COLS, MISUSE_N };
static const char *misuse_name[MISUSE_N] = {"root outside the group", "negative count",
                                            "NULL buffer", "overlapping gather",
                                            "negative columns"};

static void misuse(int kind) {
    comm *c = comm_single_create(NULL);
    float buf[8] = {0};
    int64_t cols[1] = {4}, neg[1] = {-1};
    switch (kind) {
        case MISUSE_ROOT:
            comm_broadcast(c, buf, 4, 1, NULL);
            break;
        case MISUSE_COUNT:
            comm_all_reduce_sum_f32(c, buf, -1, NULL);
            break;
        case MISUSE_NULL_BUF:
            comm_all_reduce_sum_f32(c, NULL, 4, NULL);
            break;
        case MISUSE_OVERLAP:
            comm_all_gather(c, buf + 2, buf, 1, cols, NULL);
            break;
        case MISUSE_NEG_COLS:
            comm_all_gather(c, buf, buf + 4, 1, neg, NULL);
            break;
    }
    comm_free(c);
}

static void test_misuse_aborts(void) {
    for (int kind = 0; kind < MISUSE_N; kind++) {
        fflush(NULL);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            /* Keep the child's expected FATAL line out of the way of a reader. */
            if (!freopen("/dev/null", "w", stderr)) _exit(2);
            misuse(kind);
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        CHECK_MSG(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "%s: status %d",
                  misuse_name[kind], status);
    }
}

int main(void) {
    test_check_macro();
    test_single();
    test_dtypes();
    test_misuse_aborts();
    return test_summary("test_comm_single");
}
