/* comm.c - the checked wrappers every caller goes through, and the single-rank communicator. */
#include "comm.h"

#include <stdlib.h>
#include <string.h>

#include "comm_check.h"
#include "log.h"

cinder_status comm_check_fail(cinder_error *err, const char *call, int rank, const char *file,
                              int line, const char *what) {
    /* Only the file's base name: build paths are long and say nothing. */
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    cinder_error_set(err, CINDER_ERR_IO, "%s failed on rank %d at %s:%d: %s", call, rank, base,
                     line, what ? what : "(no message)");
    return CINDER_ERR_IO;
}

size_t comm_dtype_size(comm_dtype type) {
    switch (type) {
        case COMM_DTYPE_F32:
            return 4;
        case COMM_DTYPE_BF16:
            return 2;
        case COMM_DTYPE_COUNT:
            break;
    }
    CN_ABORT("bad comm_dtype %d", (int)type);
}

const char *comm_dtype_name(comm_dtype type) {
    switch (type) {
        case COMM_DTYPE_F32:
            return "f32";
        case COMM_DTYPE_BF16:
            return "bf16";
        case COMM_DTYPE_COUNT:
            break;
    }
    return "?";
}

void comm_free(comm *c) {
    if (c) c->destroy(c);
}

/* ---- the wrappers: misuse aborts here, so no backend sees it ---- */

cinder_status comm_all_reduce_sum(comm *c, void *buf, int64_t count, comm_dtype type,
                                  cinder_error *err) {
    CN_ASSERT(c);
    CN_ASSERT(count >= 0);
    CN_ASSERT(buf || count == 0);
    CN_ASSERT(type >= 0 && type < COMM_DTYPE_COUNT);
    if (count == 0) return CINDER_OK;
    return c->all_reduce_sum(c->ctx, buf, count, type, err);
}

cinder_status comm_all_gather(comm *c, float *out, const float *in, int64_t n_rows,
                              const int64_t *cols, cinder_error *err) {
    CN_ASSERT(c);
    CN_ASSERT(cols);
    CN_ASSERT(n_rows >= 0);
    int64_t total = 0;
    for (int r = 0; r < c->size; r++) {
        CN_ASSERT(cols[r] >= 0);
        total += cols[r];
    }
    int64_t in_count = n_rows * cols[c->rank], out_count = n_rows * total;
    CN_ASSERT(in || in_count == 0);
    CN_ASSERT(out || out_count == 0);
    if (in_count && out_count) {
        /* No overlap: [in, in + in_count) and [out, out + out_count) are disjoint. Plain
         * integers, so this holds for device pointers too. */
        uintptr_t a = (uintptr_t)in, b = (uintptr_t)out;
        CN_ASSERT(a + (uintptr_t)in_count * sizeof(float) <= b ||
                  b + (uintptr_t)out_count * sizeof(float) <= a);
    }
    if (out_count == 0) return CINDER_OK;
    return c->all_gather(c->ctx, out, in, n_rows, cols, err);
}

cinder_status comm_broadcast(comm *c, void *buf, size_t bytes, int root, cinder_error *err) {
    CN_ASSERT(c);
    CN_ASSERT(root >= 0 && root < c->size);
    CN_ASSERT(buf || bytes == 0);
    if (bytes == 0) return CINDER_OK;
    return c->broadcast(c->ctx, buf, bytes, root, err);
}

cinder_status comm_barrier(comm *c, cinder_error *err) {
    CN_ASSERT(c);
    return c->barrier(c->ctx, err);
}

/* ---- single rank ---- */

static cinder_status single_all_reduce_sum(void *ctx, void *buf, int64_t count, comm_dtype type,
                                           cinder_error *err) {
    return CINDER_OK; /* the sum over one rank is the buffer itself */
}

static cinder_status single_all_gather(void *ctx, float *out, const float *in, int64_t n_rows,
                                       const int64_t *cols, cinder_error *err) {
    memcpy(out, in, (size_t)(n_rows * cols[0]) * sizeof(float));
    return CINDER_OK;
}

static cinder_status single_broadcast(void *ctx, void *buf, size_t bytes, int root,
                                      cinder_error *err) {
    return CINDER_OK;
}

static cinder_status single_barrier(void *ctx, cinder_error *err) {
    return CINDER_OK;
}

static void single_destroy(comm *c) {
    free(c);
}

comm *comm_single_create(cinder_error *err) {
    comm *c = calloc(1, sizeof *c);
    if (!c) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "comm_single_create: out of memory");
        return NULL;
    }
    c->name = "single";
    c->rank = 0;
    c->size = 1;
    c->all_reduce_sum = single_all_reduce_sum;
    c->all_gather = single_all_gather;
    c->broadcast = single_broadcast;
    c->barrier = single_barrier;
    c->destroy = single_destroy;
    return c;
}
