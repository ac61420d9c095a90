/* comm.h - the communicator interface the executor calls for every collective, whatever moves
 * the bytes.
 *
 * A communicator is a struct of function pointers plus a context (like kernels/ops.h): one rank,
 * no traffic (comm_single_create, always built); MPI on CPU memory (comm_mpi.h, CINDER_MPI);
 * NCCL on GPU memory (comm_nccl.h, CINDER_NCCL). The executor calls the comm_* wrappers at the
 * bottom of this file and never MPI or NCCL directly.
 *
 * Conventions shared by every collective:
 *   - every rank of the group calls it, in the same order, with the same counts, types and root
 *     (the usual MPI rule: a mismatch cannot be seen locally; it hangs or fails in the
 *     transport);
 *   - buffers are in the backend's memory: host memory for single and MPI, device memory for
 *     NCCL;
 *   - CPU backends return when the result is in place; NCCL enqueues on its stream (the
 *     executor's stream), so the result is ready for the next op on that stream;
 *   - a failure a peer or the network can cause (a dead rank, a transport error) returns a
 *     cinder_status (CINDER_ERR_IO) with a message naming the call, the rank and file:line;
 *     misuse (NULL buffers, negative counts, a root outside the group) is a bug and aborts
 *     through CN_ASSERT;
 *   - all-reduce results are bit-identical on every rank (docs/comm.md, "Determinism");
 *   - one caller at a time: a communicator is not re-entrant (it owns scratch).
 * Scratch grows on first use and is then kept, so the steady state allocates nothing. */
#ifndef CINDER_COMM_H
#define CINDER_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Element types an all-reduce sums. */
typedef enum comm_dtype {
    COMM_DTYPE_F32 = 0,
    COMM_DTYPE_BF16, /* uint16_t bit patterns; summed in F32, rounded to BF16 once at the end */
    COMM_DTYPE_COUNT,
} comm_dtype;

typedef struct comm comm;

struct comm {
    const char *name; /* "single", "mpi", "mpi-native", "nccl" (for logs) */
    void *ctx;        /* the backend's state, passed back as the first argument of every call */
    int rank, size;   /* this rank in [0, size) */

    /* buf[i] = the sum over ranks of every rank's buf[i], in place.  buf [count] of type. */
    cinder_status (*all_reduce_sum)(void *ctx, void *buf, int64_t count, comm_dtype type,
                                    cinder_error *err);

    /* Concatenates every rank's columns, row by row:
     *   in  [n_rows, cols[rank]]  (this rank's part)
     *   out [n_rows, sum(cols)]   out[i, off(r) + j] = rank r's in[i, j], off(r) = sum(cols[<r])
     * cols [size] may be uneven (9 heads on 2 ranks: 5 and 4) and may hold zeros. n_rows = 1 is
     * the plain uneven all-gather of vectors. in and out do not overlap. */
    cinder_status (*all_gather)(void *ctx, float *out, const float *in, int64_t n_rows,
                                const int64_t *cols, cinder_error *err);

    /* Copies root's buf [bytes] into every rank's buf. */
    cinder_status (*broadcast)(void *ctx, void *buf, size_t bytes, int root, cinder_error *err);

    /* Returns once every rank has entered it (NCCL: and this rank's stream is drained). */
    cinder_status (*barrier)(void *ctx, cinder_error *err);

    /* Frees the context and the struct (not a collective: no traffic). */
    void (*destroy)(comm *c);
};

/* One rank, no traffic: all-reduce and broadcast leave the buffer as it is, all-gather copies
 * in to out. Host memory. Returns NULL (CINDER_ERR_NOMEM in err) only when malloc fails. */
comm *comm_single_create(cinder_error *err);

/* Frees a communicator; accepts NULL. */
void comm_free(comm *c);

/* Bytes of one element. */
size_t comm_dtype_size(comm_dtype type);
/* "f32", "bf16". */
const char *comm_dtype_name(comm_dtype type);

/* The executor's calls. They check the arguments (CN_ASSERT) and dispatch, so backends get
 * only well-formed calls. */
static inline int comm_rank(const comm *c) {
    return c->rank;
}
static inline int comm_size(const comm *c) {
    return c->size;
}
cinder_status comm_all_reduce_sum(comm *c, void *buf, int64_t count, comm_dtype type,
                                  cinder_error *err);
/* The F32 all-reduce, the common case. */
static inline cinder_status comm_all_reduce_sum_f32(comm *c, float *buf, int64_t count,
                                                    cinder_error *err) {
    return comm_all_reduce_sum(c, buf, count, COMM_DTYPE_F32, err);
}
cinder_status comm_all_gather(comm *c, float *out, const float *in, int64_t n_rows,
                              const int64_t *cols, cinder_error *err);
cinder_status comm_broadcast(comm *c, void *buf, size_t bytes, int root, cinder_error *err);
cinder_status comm_barrier(comm *c, cinder_error *err);

#endif
