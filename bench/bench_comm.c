/* bench_comm - all-reduce latency and bandwidth per message size over MPI, for the fixed-order
 * all-reduce (cinder's default) and MPI_Allreduce (native), side by side, plus a plain
 * MPI_Allgather of the same bytes as a data-movement ceiling measured in the same run.
 *
 *   mpirun --allow-run-as-root --oversubscribe -np 2 build/bench/bench_comm [max_floats]
 *
 * Per size: the median of many timed runs after a warm-up, each run's time being the slowest
 * rank's (a collective is done when its last rank is). Bandwidths follow nccl-tests:
 *   algbw = bytes / time;  busbw = algbw * 2 (n - 1) / n  (the bytes each rank's link carries
 * in a bandwidth-optimal all-reduce; comparable across rank counts). Not a test: no checks of
 * results here (tests/test_comm_mpi.c does that). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_mpi.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef enum { RUN_FIXED, RUN_NATIVE, RUN_ALLGATHER } run_kind;

/* Median over iters of the slowest rank's time of one call, in seconds. */
static double time_op(comm *c, run_kind kind, float *buf, float *gather, int64_t n, int iters) {
    double *t = malloc((size_t)iters * sizeof(double));
    if (!t) return -1;
    cinder_error err = {0};
    for (int it = -3; it < iters; it++) { /* three warm-up runs */
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        if (kind == RUN_ALLGATHER) {
            /* every rank's 1/n share to everyone: the second half of a ring all-reduce */
            int share = (int)(n / c->size);
            MPI_Allgather(buf, share, MPI_FLOAT, gather, share, MPI_FLOAT, MPI_COMM_WORLD);
        } else if (comm_all_reduce_sum_f32(c, buf, n, &err)) {
            fprintf(stderr, "bench_comm: %s\n", err.msg);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        double dt = MPI_Wtime() - t0;
        MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (it >= 0) t[it] = dt;
    }
    qsort(t, (size_t)iters, sizeof(double), cmp_double);
    double med = t[iters / 2];
    free(t);
    return med;
}

int main(int argc, char **argv) {
    cinder_error err = {0};
    if (comm_mpi_init(&argc, &argv, &err)) {
        fprintf(stderr, "bench_comm: %s\n", err.msg);
        return 1;
    }
    int64_t max_n = argc > 1 ? atoll(argv[1]) : (int64_t)1 << 24;
    if (max_n < 1) max_n = 1;
    comm *fixed = comm_mpi_create(MPI_COMM_WORLD, COMM_MPI_REDUCE_FIXED, &err);
    comm *native = fixed ? comm_mpi_create(MPI_COMM_WORLD, COMM_MPI_REDUCE_NATIVE, &err) : NULL;
    float *buf = malloc((size_t)max_n * sizeof(float));
    float *gather = malloc((size_t)max_n * sizeof(float));
    if (!fixed || !native || !buf || !gather) {
        fprintf(stderr, "bench_comm: %s\n", err.msg[0] ? err.msg : "out of memory");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    /* zeros: repeated in-place sums stay finite, and an add costs the same whatever the value */
    memset(buf, 0, (size_t)max_n * sizeof(float));
    memset(gather, 0, (size_t)max_n * sizeof(float));
    int rank = fixed->rank, size = fixed->size;
    if (rank == 0) {
        printf("bench_comm: %d ranks, F32 all-reduce, median of the slowest rank's time\n", size);
        printf("%12s %10s | %10s %9s %9s | %10s %9s | %9s\n", "floats", "bytes", "fixed us",
               "algbw", "busbw", "native us", "busbw", "gather bw");
        printf("%12s %10s | %10s %9s %9s | %10s %9s | %9s\n", "", "", "", "GB/s", "GB/s", "",
               "GB/s", "GB/s");
    }
    for (int64_t n = 1; n <= max_n; n *= 4) {
        int iters = n <= 4096 ? 200 : n <= (1 << 20) ? 40 : 10;
        double tf = time_op(fixed, RUN_FIXED, buf, gather, n, iters);
        double tn = time_op(native, RUN_NATIVE, buf, gather, n, iters);
        double tg = n >= size ? time_op(fixed, RUN_ALLGATHER, buf, gather, n, iters) : 0;
        double bytes = (double)n * sizeof(float), bus = 2.0 * (size - 1) / size;
        if (rank == 0) {
            /* the gather moves (n-1)/n of the bytes once: its busbw is bytes * (n-1)/n / t */
            char gbw[32] = "-";
            if (tg > 0) snprintf(gbw, sizeof gbw, "%.3f", bytes * (size - 1) / size / tg / 1e9);
            printf("%12lld %10.0f | %10.1f %9.3f %9.3f | %10.1f %9.3f | %9s\n", (long long)n, bytes,
                   tf * 1e6, bytes / tf / 1e9, bytes / tf / 1e9 * bus, tn * 1e6,
                   bytes / tn / 1e9 * bus, gbw);
        }
    }
    free(buf);
    free(gather);
    comm_free(fixed);
    comm_free(native);
    comm_mpi_finalize();
    return 0;
}
