/* comm_check.h - the check macros for transport calls (MPI, CUDA, NCCL), all built from one.
 *
 * COMM_CHECK evaluates a call once; when its result is not a success it fills err with
 *   "<call> failed on rank R at file:line: <the library's own message>"
 * and CINDER_ERR_IO, then runs the caller's failure action (`return err->status`, `goto fail`).
 * A failed transport call is something a peer or the network can cause, so it is a status, not
 * an abort (conventions.md, habits 4 and 5).
 *
 *   MPI_CHECK(MPI_Bcast(...), c->rank, err, return CINDER_ERR_IO);
 *   CUDA_CHECK(cudaMalloc(&p, n), rank, err, goto fail);
 *
 * MPI_CHECK needs <mpi.h> and the communicator's error handler set to MPI_ERRORS_RETURN (the
 * default handler aborts before the macro sees the code); CUDA_CHECK and NCCL_CHECK need
 * <cuda_runtime_api.h> and <nccl.h>. Each family is defined only where its header is in. */
#ifndef CINDER_COMM_CHECK_H
#define CINDER_COMM_CHECK_H

#include "status.h"

/* Fills err: "<call> failed on rank <rank> at <file>:<line>: <what>". Returns CINDER_ERR_IO. */
cinder_status comm_check_fail(cinder_error *err, const char *call, int rank, const char *file,
                              int line, const char *what);

/* The generic check. T: the call's result type; ok(rc): success test; what(rc): a message. */
#define COMM_CHECK(T, call, ok, what, rank, err, on_fail)                                          \
    COMM_CHECK_NAMED(T, call, #call, ok, what, rank, err, on_fail)
/* The same with the call's text given (the family macros stringize their argument themselves,
 * before MPI_BYTE and friends expand into casts). */
#define COMM_CHECK_NAMED(T, call, name, ok, what, rank, err, on_fail)                              \
    do {                                                                                           \
        T comm_rc_ = (call);                                                                       \
        if (!(ok(comm_rc_))) {                                                                     \
            comm_check_fail((err), (name), (rank), __FILE__, __LINE__, what(comm_rc_));            \
            on_fail;                                                                               \
        }                                                                                          \
    } while (0)

#if defined(MPI_VERSION)
/* MPI's message for an error code (a static per-thread buffer; good until the next call). */
const char *comm_mpi_error_string(int code);
#define COMM_MPI_OK(rc) ((rc) == MPI_SUCCESS)
#define MPI_CHECK(call, rank, err, on_fail)                                                        \
    COMM_CHECK_NAMED(int, call, #call, COMM_MPI_OK, comm_mpi_error_string, rank, err, on_fail)
#endif

#if defined(CUDART_VERSION)
#define COMM_CUDA_OK(rc) ((rc) == cudaSuccess)
#define CUDA_CHECK(call, rank, err, on_fail)                                                       \
    COMM_CHECK_NAMED(cudaError_t, call, #call, COMM_CUDA_OK, cudaGetErrorString, rank, err, on_fail)
#endif

#if defined(NCCL_MAJOR)
#define COMM_NCCL_OK(rc) ((rc) == ncclSuccess)
#define NCCL_CHECK(call, rank, err, on_fail)                                                       \
    COMM_CHECK_NAMED(ncclResult_t, call, #call, COMM_NCCL_OK, ncclGetErrorString, rank, err,       \
                     on_fail)
#endif

#endif
