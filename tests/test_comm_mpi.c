/* The MPI communicator on real ranks (run under mpirun by tests/comm_mpirun.sh, 2 and 3 ranks;
 * alone it is a one-rank job). Every rank builds every rank's input from the same seeds, so it
 * can compute the expected result on its own and check what the collective gave it:
 *   - fixed-order all-reduce (F32 and BF16) equals the rank-order sum bit for bit, for sizes 1,
 *     fewer elements than ranks, odd, 4M floats, and across pieces of a long message;
 *   - MPI_Allreduce (native) is within rounding of it and bit-identical on every rank;
 *   - uneven all-gather (9 heads over the ranks, a rank with no columns, one and many rows);
 *   - broadcast from every root; barrier; a sub-communicator (MPI_Comm_split); an MPI failure
 *     comes back as a status naming the call, the rank and file:line. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "comm_mpi.h"
#include "comm_check.h"
#include "dtype.h"
#include "rng.h"
#include "test.h"

static int world_rank, world_size;

/* Rank q's input of a test: values of varied sign and magnitude, so that the order of the
 * additions shows in the rounding. */
static void make_f32(float *x, int64_t n, uint64_t seed, int q) {
    rng_state r;
    rng_seed(&r, seed * 1000003u + (uint64_t)q);
    for (int64_t i = 0; i < n; i++) {
        double u = rng_uniform(&r) * 2.0 - 1.0;
        int e = (int)(rng_next(&r) % 21) - 10;
        x[i] = (float)ldexp(u, e);
    }
}

static uint64_t hash_bytes(const void *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Whether every rank of the group holds the same hash. */
static int same_everywhere(MPI_Comm group, uint64_t h) {
    uint64_t lo = h, hi = h;
    MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, group);
    MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, group);
    return lo == hi;
}

/* F32 all-reduce of n elements over c, whose ranks are world ranks members[0..size). */
static void check_reduce_f32(comm *c, MPI_Comm group, const int *members, int64_t n, uint64_t seed,
                             int exact) {
    int size = comm_size(c);
    float *buf = malloc((size_t)n * sizeof(float));
    float *tmp = malloc((size_t)n * sizeof(float));
    float *want = malloc((size_t)n * sizeof(float));
    double *mag = calloc((size_t)n, sizeof(double));
    CHECK(buf && tmp && want && mag);
    if (!buf || !tmp || !want || !mag) goto done;
    /* The expectation: ((x0 + x1) + x2) + ... in float, in rank order. */
    for (int q = 0; q < size; q++) {
        make_f32(tmp, n, seed, members[q]);
        for (int64_t i = 0; i < n; i++) {
            want[i] = q == 0 ? tmp[i] : want[i] + tmp[i];
            mag[i] += fabs(tmp[i]);
        }
    }
    make_f32(buf, n, seed, members[comm_rank(c)]);
    cinder_error err = {0};
    cinder_status st = comm_all_reduce_sum_f32(c, buf, n, &err);
    CHECK_MSG(st == CINDER_OK, "%s", err.msg);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        int ok = exact ? memcmp(&buf[i], &want[i], sizeof(float)) == 0
                       : fabs((double)buf[i] - want[i]) <= 4.0 * size * FLT_EPSILON * mag[i];
        if (!ok && bad++ == 0) first = i;
    }
    CHECK_MSG(bad == 0,
              "%s all-reduce of %lld floats on %d ranks: %lld wrong, first [%lld] = %.9g, "
              "want %.9g",
              c->name, (long long)n, size, (long long)bad, (long long)first,
              first >= 0 ? buf[first] : 0.0, first >= 0 ? want[first] : 0.0);
    CHECK_MSG(same_everywhere(group, hash_bytes(buf, (size_t)n * sizeof(float))),
              "%s all-reduce of %lld floats differs between ranks", c->name, (long long)n);
    if (!exact && world_rank == 0)
        printf("  %s: %lld floats %s the rank-order sum\n", c->name, (long long)n,
               memcmp(buf, want, (size_t)n * sizeof(float)) == 0 ? "bit-equal to"
                                                                 : "within rounding of");
done:
    free(buf);
    free(tmp);
    free(want);
    free(mag);
}

static void check_reduce_bf16(comm *c, int64_t n, uint64_t seed) {
    int size = comm_size(c);
    float *tmp = malloc((size_t)n * sizeof(float)), *acc = malloc((size_t)n * sizeof(float));
    uint16_t *buf = malloc((size_t)n * 2);
    CHECK(tmp && acc && buf);
    if (!tmp || !acc || !buf) goto done;
    for (int q = 0; q < size; q++) {
        make_f32(tmp, n, seed, q);
        for (int64_t i = 0; i < n; i++) {
            float v = bf16_to_f32(f32_to_bf16(tmp[i]));
            acc[i] = q == 0 ? v : acc[i] + v;
            if (q == comm_rank(c)) buf[i] = f32_to_bf16(tmp[i]);
        }
    }
    cinder_error err = {0};
    CHECK_MSG(comm_all_reduce_sum(c, buf, n, COMM_DTYPE_BF16, &err) == CINDER_OK, "%s", err.msg);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += buf[i] != f32_to_bf16(acc[i]);
    CHECK_MSG(bad == 0, "bf16 all-reduce of %lld on %d ranks: %lld wrong", (long long)n, size,
              (long long)bad);
done:
    free(tmp);
    free(acc);
    free(buf);
}

static float gather_value(int r, int64_t i, int64_t j) {
    return (float)(r * 1000000 + i * 1000 + j);
}

/* All-gather of n_rows rows, rank r holding cols[r] columns. */
static void check_gather(comm *c, int64_t n_rows, const int64_t *cols) {
    int size = comm_size(c), me = comm_rank(c);
    int64_t total = 0, off_me = 0;
    for (int r = 0; r < size; r++) {
        if (r < me) off_me += cols[r];
        total += cols[r];
    }
    float *in = malloc((size_t)(n_rows * cols[me] + 1) * sizeof(float));
    float *out = malloc((size_t)(n_rows * total + 1) * sizeof(float));
    CHECK(in && out);
    if (!in || !out) goto done;
    for (int64_t i = 0; i < n_rows; i++)
        for (int64_t j = 0; j < cols[me]; j++) in[i * cols[me] + j] = gather_value(me, i, j);
    for (int64_t k = 0; k < n_rows * total; k++) out[k] = NAN; /* poison: unwritten shows */
    cinder_error err = {0};
    CHECK_MSG(comm_all_gather(c, out, in, n_rows, cols, &err) == CINDER_OK, "%s", err.msg);
    int64_t bad = 0;
    for (int64_t i = 0; i < n_rows; i++) {
        int64_t off = 0;
        for (int r = 0; r < size; r++) {
            for (int64_t j = 0; j < cols[r]; j++)
                bad += !(out[i * total + off + j] == gather_value(r, i, j));
            off += cols[r];
        }
    }
    CHECK_MSG(bad == 0,
              "all-gather of %lld rows (this rank %lld of %lld columns at %lld): %lld "
              "wrong",
              (long long)n_rows, (long long)cols[me], (long long)total, (long long)off_me,
              (long long)bad);
done:
    free(in);
    free(out);
}

static void test_all_gather(comm *c) {
    int size = comm_size(c);
    int64_t cols[16];
    CHECK(size <= 16);
    if (size > 16) return;
    /* 9 heads of 64 over the ranks, the first ranks taking one more (2 ranks: 5 and 4). */
    for (int r = 0; r < size; r++) cols[r] = (9 / size + (r < 9 % size)) * 64;
    for (int64_t rows = 1; rows <= 17; rows += 8) check_gather(c, rows, cols);
    /* A rank with nothing to give (the last one), odd widths. */
    for (int r = 0; r < size; r++) cols[r] = r == size - 1 && size > 1 ? 0 : 2 * r + 1;
    check_gather(c, 1, cols);
    check_gather(c, 5, cols);
    /* Large: a vocab-parallel logits gather, 8 rows of 49152 / size (+ the remainder). */
    for (int r = 0; r < size; r++) cols[r] = 49152 / size + (r < 49152 % size);
    check_gather(c, 8, cols);
}

static void test_broadcast(comm *c) {
    size_t sizes[] = {1, 13, (size_t)1 << 22};
    for (int root = 0; root < comm_size(c); root++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            size_t n = sizes[s];
            unsigned char *buf = malloc(n), *want = malloc(n);
            CHECK(buf && want);
            if (!buf || !want) {
                free(buf);
                free(want);
                continue;
            }
            rng_state r;
            rng_seed(&r, 77 + (uint64_t)root * 31 + n);
            for (size_t i = 0; i < n; i++) want[i] = (unsigned char)rng_next(&r);
            if (comm_rank(c) == root)
                memcpy(buf, want, n);
            else
                memset(buf, 0, n);
            cinder_error err = {0};
            CHECK_MSG(comm_broadcast(c, buf, n, root, &err) == CINDER_OK, "%s", err.msg);
            CHECK_MSG(memcmp(buf, want, n) == 0, "broadcast of %zu bytes from root %d", n, root);
            free(buf);
            free(want);
        }
    }
    cinder_error err = {0};
    CHECK_MSG(comm_barrier(c, &err) == CINDER_OK, "%s", err.msg);
}

static void test_world(comm *c, int exact) {
    int members[64];
    for (int i = 0; i < world_size && i < 64; i++) members[i] = i;
    int64_t sizes[] = {1, 2, 7, 1001, 65537, (int64_t)1 << 22};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        check_reduce_f32(c, MPI_COMM_WORLD, members, sizes[s], 1 + s, exact);
}

/* A sub-communicator: the even and the odd world ranks each form a group. */
static void test_split(void) {
    MPI_Comm half;
    MPI_Comm_split(MPI_COMM_WORLD, world_rank % 2, world_rank, &half);
    cinder_error err = {0};
    comm *c = comm_mpi_create(half, COMM_MPI_REDUCE_FIXED, &err);
    CHECK_MSG(c != NULL, "%s", err.msg);
    if (c) {
        int members[64], n = 0;
        for (int r = world_rank % 2; r < world_size && n < 64; r += 2) members[n++] = r;
        CHECK_EQ_INT(comm_size(c), n);
        CHECK_EQ_INT(comm_rank(c), world_rank / 2);
        check_reduce_f32(c, half, members, 100003, 42, 1);
        comm_free(c);
    }
    MPI_Comm_free(&half);
}

/* A failing MPI call (a negative count) through MPI_CHECK: a status naming call, rank, place. */
static cinder_status bad_bcast(cinder_error *err) {
    char b = 0;
    MPI_CHECK(MPI_Bcast(&b, -1, MPI_BYTE, 0, MPI_COMM_WORLD), world_rank, err, return err->status);
    return CINDER_OK;
}

static void test_mpi_error(void) {
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    cinder_error err = {0};
    CHECK_EQ_INT(bad_bcast(&err), CINDER_ERR_IO);
    char want[64];
    snprintf(want, sizeof want, "failed on rank %d at test_comm_mpi.c:", world_rank);
    CHECK_MSG(test_contains(err.msg, "MPI_Bcast(&b, -1") && test_contains(err.msg, want), "%s",
              err.msg);
    CHECK_MSG(test_contains(err.msg, "MPI_ERR_COUNT") || test_contains(err.msg, "count"), "%s",
              err.msg);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
}

int main(int argc, char **argv) {
    cinder_error err = {0};
    /* Twice: the second call finds MPI running and leaves it be. */
    if (comm_mpi_init(&argc, &argv, &err) || comm_mpi_init(NULL, NULL, &err)) {
        fprintf(stderr, "test_comm_mpi: %s\n", err.msg);
        return 1;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    if (world_rank == 0) printf("test_comm_mpi: %d ranks\n", world_size);

    comm *fixed = comm_mpi_create(MPI_COMM_WORLD, COMM_MPI_REDUCE_FIXED, &err);
    CHECK_MSG(fixed != NULL, "%s", err.msg);
    comm *native = comm_mpi_create(MPI_COMM_WORLD, COMM_MPI_REDUCE_NATIVE, &err);
    CHECK_MSG(native != NULL, "%s", err.msg);
    if (fixed && native) {
        CHECK_EQ_INT(comm_rank(fixed), world_rank);
        CHECK_EQ_INT(comm_size(fixed), world_size);
        test_world(fixed, 1);
        test_world(native, 0);
        int64_t bf[] = {1, 7, 100003};
        for (int s = 0; s < 3; s++) check_reduce_bf16(fixed, bf[s], 90 + s);
        test_all_gather(fixed);
        test_broadcast(fixed);
        test_split();
        test_mpi_error();
    }
    comm_free(fixed);
    comm_free(native);

    /* Long messages go in pieces (CINDER_COMM_SEGMENT shrinks them); the sums do not change. */
    setenv("CINDER_COMM_SEGMENT", "1000", 1);
    comm *pieces = comm_mpi_create(MPI_COMM_WORLD, COMM_MPI_REDUCE_FIXED, &err);
    CHECK_MSG(pieces != NULL, "%s", err.msg);
    if (pieces) {
        int members[64];
        for (int i = 0; i < world_size && i < 64; i++) members[i] = i;
        check_reduce_f32(pieces, MPI_COMM_WORLD, members, 123457, 5, 1);
        check_reduce_bf16(pieces, 4321, 6);
        comm_free(pieces);
    }

    char name[64];
    snprintf(name, sizeof name, "test_comm_mpi rank %d of %d", world_rank, world_size);
    int rc = test_summary(name);
    comm_mpi_finalize();
    return rc;
}
