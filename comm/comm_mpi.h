/* comm_mpi.h - the MPI communicator: collectives on host memory over an MPI communicator
 * (built when CINDER_MPI; CINDER_COMM_MPI is then defined for users of cinder_comm).
 *
 * The group is any MPI communicator: MPI_COMM_WORLD for one worker group per MPI job, or a
 * sub-communicator (MPI_Comm_split) for a tensor-parallel group inside a larger job. The
 * communicator duplicates it, so its traffic never matches the caller's own messages, and sets
 * MPI_ERRORS_RETURN on the duplicate, so a transport failure comes back as a status.
 *
 * All-reduce (docs/comm.md, "Determinism"): COMM_MPI_REDUCE_FIXED, the default, sums each
 * element in rank order, ((x0 + x1) + x2) + ..., whatever the message size or MPI's algorithm
 * choice: every rank gets the same bits, and the same bits as a plain loop over the ranks'
 * buffers. It moves as many bytes as a ring all-reduce (a reduce-scatter by MPI_Alltoallv, the
 * sums, an MPI_Allgatherv). COMM_MPI_REDUCE_NATIVE calls MPI_Allreduce (F32 only; BF16 always
 * takes the fixed path): MPI picks the order by size and process count. */
#ifndef CINDER_COMM_MPI_H
#define CINDER_COMM_MPI_H

#include <mpi.h>
#include <stdbool.h>

#include "comm.h"

typedef enum comm_mpi_reduce {
    COMM_MPI_REDUCE_FIXED = 0, /* rank-order sums, bit-identical everywhere (the default) */
    COMM_MPI_REDUCE_NATIVE,    /* MPI_Allreduce with MPI_SUM */
} comm_mpi_reduce;

/* Initializes MPI if nobody has (MPI_Init_thread, MPI_THREAD_SERIALIZED: one thread at a time
 * may call MPI) and does nothing if the program or a library already did. argc/argv may be
 * NULL. Fails with CINDER_ERR_IO when MPI cannot start, or when MPI was already finalized. */
cinder_status comm_mpi_init(int *argc, char ***argv, cinder_error *err);

/* Finalizes MPI if comm_mpi_init initialized it (and nobody has finalized it since); otherwise
 * leaves MPI to whoever started it. Free every MPI communicator first. */
void comm_mpi_finalize(void);

/* A communicator over the ranks of group (initializing MPI first if needed, as comm_mpi_init
 * with no arguments). Collective over group: every rank of it calls this. Returns NULL and
 * fills err on failure. */
comm *comm_mpi_create(MPI_Comm group, comm_mpi_reduce reduce, cinder_error *err);

#endif
