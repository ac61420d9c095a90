/* comm_nccl.c - collectives over NCCL on device memory. Plain C against the CUDA runtime API. */
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#ifdef CINDER_COMM_MPI
#include <mpi.h>
#endif

#include "comm_check.h"
#include "comm_nccl.h"
#include "log.h"

_Static_assert(sizeof(comm_nccl_id) == sizeof(ncclUniqueId), "comm_nccl_id is an ncclUniqueId");
_Static_assert(sizeof(cudaStream_t) == sizeof(struct CUstream_st *), "cudaStream_t");

typedef struct nccl_ctx {
    ncclComm_t nccl;
    cudaStream_t stream;
    bool own_stream;
    int rank, size, device;
    float *scratch; /* device: the rank-major gather of a multi-row all-gather */
    size_t scratch_bytes;
    float *one; /* device: one float the barrier all-reduces */
} nccl_ctx;

cinder_status comm_nccl_unique_id(comm_nccl_id *id, cinder_error *err) {
    CN_ASSERT(id);
    ncclUniqueId u;
    NCCL_CHECK(ncclGetUniqueId(&u), -1, err, return CINDER_ERR_IO);
    memcpy(id->bytes, u.internal, sizeof u.internal);
    return CINDER_OK;
}

/* A failure NCCL found after a call returned (a peer died, a network error). */
static cinder_status nccl_async_check(nccl_ctx *n, cinder_error *err) {
    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(n->nccl, &async), n->rank, err, return CINDER_ERR_IO);
    NCCL_CHECK(async, n->rank, err, return CINDER_ERR_IO);
    return CINDER_OK;
}

static cinder_status nccl_all_reduce_sum(void *ctx, void *buf, int64_t count, comm_dtype type,
                                         cinder_error *err) {
    nccl_ctx *n = ctx;
    cinder_status st = nccl_async_check(n, err);
    if (st) return st;
    ncclDataType_t t = type == COMM_DTYPE_F32 ? ncclFloat32 : ncclBfloat16;
    NCCL_CHECK(ncclAllReduce(buf, buf, (size_t)count, t, ncclSum, n->nccl, n->stream), n->rank, err,
               return CINDER_ERR_IO);
    return CINDER_OK;
}

/* Uneven counts: NCCL's all-gather wants equal ones, so each rank broadcasts its part, all in
 * one group (one launch). Several rows gather rank-major into scratch, then one strided copy
 * per rank puts each part in its columns. */
static cinder_status nccl_all_gather(void *ctx, float *out, const float *in, int64_t n_rows,
                                     const int64_t *cols, cinder_error *err) {
    nccl_ctx *n = ctx;
    cinder_status st = nccl_async_check(n, err);
    if (st) return st;
    int64_t total = 0;
    for (int r = 0; r < n->size; r++) total += cols[r];
    float *dst = out;
    if (n_rows > 1 && n->size > 1) {
        size_t bytes = (size_t)(n_rows * total) * sizeof(float);
        if (bytes > n->scratch_bytes) {
            CUDA_CHECK(cudaStreamSynchronize(n->stream), n->rank, err, return CINDER_ERR_IO);
            CUDA_CHECK(cudaFree(n->scratch), n->rank, err, return CINDER_ERR_IO);
            n->scratch = NULL;
            n->scratch_bytes = 0;
            CUDA_CHECK(cudaMalloc((void **)&n->scratch, bytes), n->rank, err, return CINDER_ERR_IO);
            n->scratch_bytes = bytes;
        }
        dst = n->scratch;
    }
    NCCL_CHECK(ncclGroupStart(), n->rank, err, return CINDER_ERR_IO);
    int64_t off = 0;
    for (int r = 0; r < n->size; r++) {
        size_t count = (size_t)(n_rows * cols[r]);
        if (count)
            NCCL_CHECK(
                ncclBroadcast(in, dst + off * n_rows, count, ncclFloat32, r, n->nccl, n->stream),
                n->rank, err, {
                    ncclGroupEnd();
                    return CINDER_ERR_IO;
                });
        off += cols[r];
    }
    NCCL_CHECK(ncclGroupEnd(), n->rank, err, return CINDER_ERR_IO);
    if (dst != out) {
        off = 0;
        for (int r = 0; r < n->size; r++) {
            if (cols[r]) {
                size_t w = (size_t)cols[r] * sizeof(float);
                CUDA_CHECK(cudaMemcpy2DAsync(out + off, (size_t)total * sizeof(float),
                                             dst + off * n_rows, w, w, (size_t)n_rows,
                                             cudaMemcpyDeviceToDevice, n->stream),
                           n->rank, err, return CINDER_ERR_IO);
            }
            off += cols[r];
        }
    }
    return CINDER_OK;
}

static cinder_status nccl_broadcast(void *ctx, void *buf, size_t bytes, int root,
                                    cinder_error *err) {
    nccl_ctx *n = ctx;
    cinder_status st = nccl_async_check(n, err);
    if (st) return st;
    NCCL_CHECK(ncclBroadcast(buf, buf, bytes, ncclUint8, root, n->nccl, n->stream), n->rank, err,
               return CINDER_ERR_IO);
    return CINDER_OK;
}

/* Nobody leaves an all-reduce before everyone has entered it; draining the stream then waits
 * for ours to finish. */
static cinder_status nccl_barrier(void *ctx, cinder_error *err) {
    nccl_ctx *n = ctx;
    NCCL_CHECK(ncclAllReduce(n->one, n->one, 1, ncclFloat32, ncclSum, n->nccl, n->stream), n->rank,
               err, return CINDER_ERR_IO);
    CUDA_CHECK(cudaStreamSynchronize(n->stream), n->rank, err, return CINDER_ERR_IO);
    return nccl_async_check(n, err);
}

static void nccl_destroy(comm *c) {
    nccl_ctx *n = c->ctx;
    if (n) {
        if (n->stream) cudaStreamSynchronize(n->stream);
        if (n->nccl) ncclCommDestroy(n->nccl);
        cudaFree(n->scratch);
        cudaFree(n->one);
        if (n->own_stream && n->stream) cudaStreamDestroy(n->stream);
        free(n);
    }
    free(c);
}

comm *comm_nccl_create(const comm_nccl_id *id, int rank, int size, int device,
                       struct CUstream_st *stream, cinder_error *err) {
    CN_ASSERT(id);
    CN_ASSERT(size >= 1 && rank >= 0 && rank < size);
    comm *c = calloc(1, sizeof *c);
    nccl_ctx *n = calloc(1, sizeof *n);
    if (!c || !n) {
        free(c);
        free(n);
        cinder_error_set(err, CINDER_ERR_NOMEM, "comm_nccl_create: out of memory");
        return NULL;
    }
    c->ctx = n;
    c->destroy = nccl_destroy;
    n->rank = rank;
    n->size = size;
    if (device >= 0) CUDA_CHECK(cudaSetDevice(device), rank, err, goto fail);
    CUDA_CHECK(cudaGetDevice(&n->device), rank, err, goto fail);
    if (stream) {
        n->stream = stream;
    } else {
        CUDA_CHECK(cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking), rank, err,
                   goto fail);
        n->own_stream = true;
    }
    CUDA_CHECK(cudaMalloc((void **)&n->one, sizeof(float)), rank, err, goto fail);
    CUDA_CHECK(cudaMemsetAsync(n->one, 0, sizeof(float), n->stream), rank, err, goto fail);
    ncclUniqueId u;
    memcpy(u.internal, id->bytes, sizeof u.internal);
    NCCL_CHECK(ncclCommInitRank(&n->nccl, size, u, rank), rank, err, goto fail);
    c->name = "nccl";
    c->rank = rank;
    c->size = size;
    c->all_reduce_sum = nccl_all_reduce_sum;
    c->all_gather = nccl_all_gather;
    c->broadcast = nccl_broadcast;
    c->barrier = nccl_barrier;
    LOG_DEBUG("rank %d of %d on device %d", rank, size, n->device);
    return c;
fail:
    nccl_destroy(c);
    return NULL;
}

#ifdef CINDER_COMM_MPI
comm *comm_nccl_create_mpi(MPI_Comm group, int device, struct CUstream_st *stream,
                           cinder_error *err) {
    int rank = -1, size = 0;
    MPI_CHECK(MPI_Comm_rank(group, &rank), -1, err, return NULL);
    MPI_CHECK(MPI_Comm_size(group, &size), rank, err, return NULL);
    /* Rank 0 sends whether it made an id, so that on failure the peers fail too instead of
     * waiting in ncclCommInitRank for a rank that never comes. */
    struct {
        int ok;
        comm_nccl_id id;
    } msg;
    memset(&msg, 0, sizeof msg);
    cinder_error local;
    if (rank == 0) msg.ok = comm_nccl_unique_id(&msg.id, &local) == CINDER_OK;
    MPI_CHECK(MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, 0, group), rank, err, return NULL);
    if (!msg.ok) {
        if (rank == 0)
            cinder_error_set(err, local.status, "%s", local.msg);
        else
            cinder_error_set(err, CINDER_ERR_IO,
                             "comm_nccl_create_mpi: rank 0 of the group "
                             "could not make an NCCL unique id");
        return NULL;
    }
    return comm_nccl_create(&msg.id, rank, size, device, stream, err);
}
#endif
