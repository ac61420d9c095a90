/* comm_mpi.c - collectives over MPI on host memory.
 *
 * Why the fixed-order all-reduce: MPI_Allreduce lets the library choose its algorithm per message
 * size and process count (recursive doubling, ring, Rabenseifner, ...), and each reduces the
 * ranks' values in its own order. Open MPI's algorithms happen to give every rank the same bits
 * today, but the standard only recommends it, and the order (so the rounding) changes with the
 * message size. Tensor-parallel ranks must hold identical activations after every all-reduce,
 * and a test wants one answer it can compute alone, so the default path fixes the order: each
 * rank owns a slice of the elements, receives every rank's values for its slice
 * (MPI_Alltoallv), adds them in rank order, and the slices go back to everyone
 * (MPI_Allgatherv). Only data moves in MPI; all arithmetic is here. The traffic equals a ring
 * all-reduce's: each rank sends and receives (n - 1) / n of the buffer twice. */
#include "comm_mpi.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_check.h"
#include "dtype.h"
#include "log.h"

/* Longest piece of one all-reduce call, in elements: keeps MPI's int counts in range and scratch
 * bounded (64 MiB of F32). The fixed-order sums do not depend on it; the tests shrink it through
 * the environment variable CINDER_COMM_SEGMENT to check that. */
#define COMM_MPI_SEGMENT ((int64_t)1 << 24)
/* Longest broadcast piece, in bytes. */
#define COMM_MPI_BCAST_PIECE ((size_t)1 << 30)

typedef struct mpi_ctx {
    MPI_Comm comm; /* our duplicate of the caller's group, MPI_ERRORS_RETURN */
    int rank, size;
    comm_mpi_reduce reduce;
    int64_t segment;        /* COMM_MPI_SEGMENT or CINDER_COMM_SEGMENT */
    int *counts, *displs;   /* [size] per-rank element counts and offsets of one call */
    int *rcounts, *rdispls; /* [size] the receive side of an Alltoallv */
    void *scratch;          /* grows on first use, then kept */
    size_t scratch_bytes;
} mpi_ctx;

static bool mpi_owned; /* comm_mpi_init started MPI, so comm_mpi_finalize ends it */

const char *comm_mpi_error_string(int code) {
    static _Thread_local char msg[MPI_MAX_ERROR_STRING + 1];
    int len = 0;
    if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) {
        snprintf(msg, sizeof msg, "MPI error %d", code);
        return msg;
    }
    msg[len < 0 ? 0 : len] = '\0';
    return msg;
}

cinder_status comm_mpi_init(int *argc, char ***argv, cinder_error *err) {
    int finalized = 0, initialized = 0;
    MPI_Finalized(&finalized);
    if (finalized)
        return cinder_error_set(err, CINDER_ERR_IO, "comm_mpi_init: MPI was already finalized");
    MPI_Initialized(&initialized);
    if (initialized) {
        int provided = MPI_THREAD_SINGLE;
        MPI_Query_thread(&provided);
        /* A plain MPI_Init gives SINGLE: fine while one thread makes every MPI call. */
        if (provided < MPI_THREAD_SERIALIZED)
            LOG_DEBUG("MPI was initialized with thread level %d: call collectives from the "
                      "thread that initialized it",
                      provided);
        return CINDER_OK;
    }
    int provided = MPI_THREAD_SINGLE;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided), -1, err,
              return CINDER_ERR_IO);
    mpi_owned = true;
    if (provided < MPI_THREAD_SERIALIZED)
        LOG_WARN("MPI gives thread level %d, not SERIALIZED: call collectives from one thread",
                 provided);
    return CINDER_OK;
}

void comm_mpi_finalize(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (mpi_owned && !finalized) MPI_Finalize();
    mpi_owned = false;
}

/* Scratch of at least bytes, kept for later calls. */
static cinder_status mpi_scratch(mpi_ctx *m, size_t bytes, cinder_error *err) {
    if (bytes <= m->scratch_bytes) return CINDER_OK;
    void *p = realloc(m->scratch, bytes);
    if (!p)
        return cinder_error_set(err, CINDER_ERR_NOMEM,
                                "comm_mpi: no memory for %zu bytes of "
                                "scratch on rank %d",
                                bytes, m->rank);
    m->scratch = p;
    m->scratch_bytes = bytes;
    return CINDER_OK;
}

/* dst[k] = ((src[0][k] + src[1][k]) + src[2][k]) + ...; src is n rows of len. */
static void sum_rows_f32(float *dst, const float *src, int n, int len) {
    if (len == 0) return; /* a rank owns nothing when there are fewer elements than ranks */
    memcpy(dst, src, (size_t)len * sizeof(float));
    for (int i = 1; i < n; i++) {
        const float *s = src + (size_t)i * len;
        for (int k = 0; k < len; k++) dst[k] += s[k];
    }
}

/* The same on BF16 values: summed in F32, rounded to BF16 once. */
static void sum_rows_bf16(uint16_t *dst, const uint16_t *src, int n, int len) {
    enum { TILE = 512 };
    float acc[TILE];
    for (int k0 = 0; k0 < len; k0 += TILE) {
        int t = len - k0 < TILE ? len - k0 : TILE;
        for (int k = 0; k < t; k++) acc[k] = bf16_to_f32(src[k0 + k]);
        for (int i = 1; i < n; i++) {
            const uint16_t *s = src + (size_t)i * len + k0;
            for (int k = 0; k < t; k++) acc[k] += bf16_to_f32(s[k]);
        }
        for (int k = 0; k < t; k++) dst[k0 + k] = f32_to_bf16(acc[k]);
    }
}

/* The fixed-order all-reduce of one segment of m_count (<= segment) elements. */
static cinder_status mpi_reduce_fixed(mpi_ctx *m, void *buf, int m_count, comm_dtype type,
                                      cinder_error *err) {
    int n = m->size, es = (int)comm_dtype_size(type);
    MPI_Datatype t = type == COMM_DTYPE_F32 ? MPI_FLOAT : MPI_UINT16_T;
    int base = m_count / n, extra = m_count % n;
    for (int j = 0; j < n; j++) {
        m->counts[j] = base + (j < extra); /* rank j owns elements [displs[j], + counts[j]) */
        m->displs[j] = j * base + (j < extra ? j : extra);
    }
    int mine = m->counts[m->rank];
    for (int i = 0; i < n; i++) {
        m->rcounts[i] = mine;
        m->rdispls[i] = i * mine;
    }
    cinder_status st = mpi_scratch(m, (size_t)n * (size_t)mine * (size_t)es, err);
    if (st) return st;
    MPI_CHECK(
        MPI_Alltoallv(buf, m->counts, m->displs, t, m->scratch, m->rcounts, m->rdispls, t, m->comm),
        m->rank, err, return CINDER_ERR_IO);
    char *slice = (char *)buf + (size_t)m->displs[m->rank] * es;
    if (type == COMM_DTYPE_F32)
        sum_rows_f32((float *)slice, m->scratch, n, mine);
    else
        sum_rows_bf16((uint16_t *)slice, m->scratch, n, mine);
    MPI_CHECK(
        MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, m->counts, m->displs, t, m->comm),
        m->rank, err, return CINDER_ERR_IO);
    return CINDER_OK;
}

static cinder_status mpi_all_reduce_sum(void *ctx, void *buf, int64_t count, comm_dtype type,
                                        cinder_error *err) {
    mpi_ctx *m = ctx;
    if (m->size == 1) return CINDER_OK;
    size_t es = comm_dtype_size(type);
    for (int64_t off = 0; off < count; off += m->segment) {
        int seg = (int)(count - off < m->segment ? count - off : m->segment);
        char *p = (char *)buf + (size_t)off * es;
        if (m->reduce == COMM_MPI_REDUCE_NATIVE && type == COMM_DTYPE_F32) {
            MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p, seg, MPI_FLOAT, MPI_SUM, m->comm), m->rank,
                      err, return CINDER_ERR_IO);
        } else {
            cinder_status st = mpi_reduce_fixed(m, p, seg, type, err);
            if (st) return st;
        }
    }
    return CINDER_OK;
}

static cinder_status mpi_all_gather(void *ctx, float *out, const float *in, int64_t n_rows,
                                    const int64_t *cols, cinder_error *err) {
    mpi_ctx *m = ctx;
    int64_t total = 0;
    for (int r = 0; r < m->size; r++) {
        /* MPI counts are int; an activation gather of 2^31 floats is a sizing bug. */
        CN_ASSERT(n_rows * (total + cols[r]) <= INT_MAX);
        m->counts[r] = (int)(n_rows * cols[r]);
        m->displs[r] = (int)(n_rows * total);
        total += cols[r];
    }
    /* One row: rank-major is already the output layout. */
    float *dst = out;
    if (n_rows > 1 && m->size > 1) {
        cinder_status st = mpi_scratch(m, (size_t)(n_rows * total) * sizeof(float), err);
        if (st) return st;
        dst = m->scratch;
    }
    MPI_CHECK(MPI_Allgatherv(in, m->counts[m->rank], MPI_FLOAT, dst, m->counts, m->displs,
                             MPI_FLOAT, m->comm),
              m->rank, err, return CINDER_ERR_IO);
    if (dst != out) {
        /* [size][n_rows, cols[r]] -> [n_rows, total] */
        int64_t off = 0;
        for (int r = 0; r < m->size; r++) {
            const float *part = dst + m->displs[r];
            for (int64_t i = 0; i < n_rows; i++)
                memcpy(out + i * total + off, part + i * cols[r], (size_t)cols[r] * sizeof(float));
            off += cols[r];
        }
    }
    return CINDER_OK;
}

static cinder_status mpi_broadcast(void *ctx, void *buf, size_t bytes, int root,
                                   cinder_error *err) {
    mpi_ctx *m = ctx;
    for (size_t off = 0; off < bytes; off += COMM_MPI_BCAST_PIECE) {
        size_t piece = bytes - off < COMM_MPI_BCAST_PIECE ? bytes - off : COMM_MPI_BCAST_PIECE;
        MPI_CHECK(MPI_Bcast((char *)buf + off, (int)piece, MPI_BYTE, root, m->comm), m->rank, err,
                  return CINDER_ERR_IO);
    }
    return CINDER_OK;
}

static cinder_status mpi_barrier(void *ctx, cinder_error *err) {
    mpi_ctx *m = ctx;
    MPI_CHECK(MPI_Barrier(m->comm), m->rank, err, return CINDER_ERR_IO);
    return CINDER_OK;
}

static void mpi_destroy(comm *c) {
    mpi_ctx *m = c->ctx;
    if (m) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized && m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
        free(m->counts);
        free(m->scratch);
        free(m);
    }
    free(c);
}

comm *comm_mpi_create(MPI_Comm group, comm_mpi_reduce reduce, cinder_error *err) {
    CN_ASSERT(group != MPI_COMM_NULL);
    CN_ASSERT(reduce == COMM_MPI_REDUCE_FIXED || reduce == COMM_MPI_REDUCE_NATIVE);
    if (comm_mpi_init(NULL, NULL, err)) return NULL;
    comm *c = calloc(1, sizeof *c);
    mpi_ctx *m = calloc(1, sizeof *m);
    if (!c || !m) {
        free(c);
        free(m);
        cinder_error_set(err, CINDER_ERR_NOMEM, "comm_mpi_create: out of memory");
        return NULL;
    }
    c->ctx = m;
    c->destroy = mpi_destroy;
    m->comm = MPI_COMM_NULL;
    m->reduce = reduce;
    m->segment = COMM_MPI_SEGMENT;
    const char *env = getenv("CINDER_COMM_SEGMENT");
    if (env && *env) {
        char *end;
        long long v = strtoll(env, &end, 10);
        if (*end || v < 1 || v > COMM_MPI_SEGMENT) {
            cinder_error_set(err, CINDER_ERR_ARG,
                             "CINDER_COMM_SEGMENT=%s: want a count of "
                             "elements in [1, %lld]",
                             env, (long long)COMM_MPI_SEGMENT);
            goto fail;
        }
        m->segment = v;
    }
    int world_rank = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_CHECK(MPI_Comm_dup(group, &m->comm), world_rank, err, goto fail);
    MPI_CHECK(MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN), world_rank, err, goto fail);
    MPI_CHECK(MPI_Comm_rank(m->comm, &m->rank), world_rank, err, goto fail);
    MPI_CHECK(MPI_Comm_size(m->comm, &m->size), world_rank, err, goto fail);
    m->counts = calloc((size_t)4 * (size_t)m->size, sizeof(int));
    if (!m->counts) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "comm_mpi_create: out of memory");
        goto fail;
    }
    m->displs = m->counts + m->size;
    m->rcounts = m->displs + m->size;
    m->rdispls = m->rcounts + m->size;
    c->name = reduce == COMM_MPI_REDUCE_FIXED ? "mpi" : "mpi-native";
    c->rank = m->rank;
    c->size = m->size;
    c->all_reduce_sum = mpi_all_reduce_sum;
    c->all_gather = mpi_all_gather;
    c->broadcast = mpi_broadcast;
    c->barrier = mpi_barrier;
    LOG_DEBUG("rank %d of %d (%s)", c->rank, c->size, c->name);
    return c;
fail:
    mpi_destroy(c);
    return NULL;
}
