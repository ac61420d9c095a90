/* comm_nccl.h - the NCCL communicator: collectives on device memory, enqueued on one CUDA stream
 * (built when CINDER_NCCL; CINDER_COMM_NCCL is then defined for users of cinder_comm).
 *
 * A plain C header: no CUDA, NCCL or (without CINDER_COMM_MPI) MPI header comes with it. The
 * stream is a cudaStream_t (which is `struct CUstream_st *`); NULL asks the communicator for a
 * stream of its own. Collectives return once enqueued: the result is ready for the next work
 * on that stream, and comm_barrier drains it. Buffers are device pointers on the communicator's
 * device.
 *
 * Determinism: NCCL's ring and tree all-reduce reduce each element once and send the result to
 * every rank, so the ranks get the same bits; the order differs from comm_mpi's rank order, so
 * an NCCL sum is not bit-equal to an MPI one (docs/comm.md).
 *
 * Bootstrap: every rank of a group needs the same unique id from one rank. With MPI,
 * comm_nccl_create_mpi broadcasts it over the group; without MPI (a one-rank test, or an id
 * shipped another way) use comm_nccl_unique_id + comm_nccl_create. */
#ifndef CINDER_COMM_NCCL_H
#define CINDER_COMM_NCCL_H

#include "comm.h"

struct CUstream_st; /* cudaStream_t */

/* An ncclUniqueId's bytes (NCCL_UNIQUE_ID_BYTES). */
typedef struct comm_nccl_id {
    char bytes[128];
} comm_nccl_id;

/* A fresh id (ncclGetUniqueId), made on one rank and handed to all. */
cinder_status comm_nccl_unique_id(comm_nccl_id *id, cinder_error *err);

/* Rank `rank` of `size` (ncclCommInitRank: blocks until every rank has joined). device >= 0 is
 * made current (cudaSetDevice); -1 keeps the current one. Returns NULL and fills err on
 * failure. */
comm *comm_nccl_create(const comm_nccl_id *id, int rank, int size, int device,
                       struct CUstream_st *stream, cinder_error *err);

#ifdef CINDER_COMM_MPI
#include <mpi.h>
/* The same over the ranks of an MPI group: rank 0 of group makes the id and broadcasts it.
 * Collective over group. The caller picks each rank's device (usually its rank on the node). */
comm *comm_nccl_create_mpi(MPI_Comm group, int device, struct CUstream_st *stream,
                           cinder_error *err);
#endif

#endif
