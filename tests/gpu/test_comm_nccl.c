/* The NCCL communicator on one GPU, one rank (NCCL refuses two ranks on one GPU; the multi-rank
 * path runs where there are several GPUs, under mpirun with comm_nccl_create_mpi). Device
 * buffers, poisoned before each call; results copied back and compared exactly with what one
 * rank must give (the sum over one rank is the input; the gather of one rank is its part):
 * F32 and BF16 all-reduce (1, odd, 4M elements), all-gather of one and many rows, broadcast,
 * barrier, on the communicator's own stream and on the caller's. Exits 77 without a GPU. */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdlib.h>

#include "comm_nccl.h"
#include "rng.h"
#include "test.h"

#define CUDA_OK(call)                                                                              \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static void fill(void *p, size_t bytes, uint64_t seed) {
    rng_state r;
    rng_seed(&r, seed);
    unsigned char *b = p;
    for (size_t i = 0; i < bytes; i++) b[i] = (unsigned char)(rng_next(&r) >> 56);
    /* keep F32 values finite and not NaN: clear the top exponent bit of every 4th byte */
    for (size_t i = 3; i < bytes; i += 4) b[i] &= 0x3f;
}

/* Waits for the collective: the caller's stream, or the communicator's own through a barrier
 * (a non-blocking stream, so the legacy default stream would not wait for it). */
static void wait_for(comm *c, cudaStream_t s) {
    if (s) {
        CUDA_OK(cudaStreamSynchronize(s));
    } else {
        cinder_error err = {0};
        CHECK_MSG(comm_barrier(c, &err) == CINDER_OK, "%s", err.msg);
    }
}

static void check_all_reduce(comm *c, cudaStream_t s, int64_t n, comm_dtype type) {
    size_t bytes = (size_t)n * comm_dtype_size(type);
    unsigned char *host = malloc(bytes), *back = malloc(bytes);
    void *dev = NULL;
    CUDA_OK(cudaMalloc(&dev, bytes));
    fill(host, bytes, (uint64_t)n * 3 + type);
    CUDA_OK(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice));
    cinder_error err = {0};
    CHECK_MSG(comm_all_reduce_sum(c, dev, n, type, &err) == CINDER_OK, "%s", err.msg);
    wait_for(c, s);
    CUDA_OK(cudaMemcpy(back, dev, bytes, cudaMemcpyDeviceToHost));
    CHECK_MSG(memcmp(host, back, bytes) == 0, "%s all-reduce of %lld", comm_dtype_name(type),
              (long long)n);
    CUDA_OK(cudaFree(dev));
    free(host);
    free(back);
}

static void check_all_gather(comm *c, cudaStream_t s, int64_t rows, int64_t cols) {
    size_t bytes = (size_t)(rows * cols) * sizeof(float);
    float *host = malloc(bytes), *back = malloc(bytes);
    float *in = NULL, *out = NULL;
    CUDA_OK(cudaMalloc((void **)&in, bytes));
    CUDA_OK(cudaMalloc((void **)&out, bytes));
    for (int64_t i = 0; i < rows * cols; i++) host[i] = (float)i * 0.25f - 7.0f;
    CUDA_OK(cudaMemcpy(in, host, bytes, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(out, 0xff, bytes)); /* NaN poison */
    cinder_error err = {0};
    int64_t cols_per_rank[1] = {cols};
    CHECK_MSG(comm_all_gather(c, out, in, rows, cols_per_rank, &err) == CINDER_OK, "%s", err.msg);
    wait_for(c, s);
    CUDA_OK(cudaMemcpy(back, out, bytes, cudaMemcpyDeviceToHost));
    CHECK_MSG(memcmp(host, back, bytes) == 0, "all-gather of %lld x %lld", (long long)rows,
              (long long)cols);
    CUDA_OK(cudaFree(in));
    CUDA_OK(cudaFree(out));
    free(host);
    free(back);
}

static void check_broadcast(comm *c, cudaStream_t s, size_t bytes) {
    unsigned char *host = malloc(bytes), *back = malloc(bytes);
    void *dev = NULL;
    CUDA_OK(cudaMalloc(&dev, bytes));
    fill(host, bytes, bytes);
    CUDA_OK(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice));
    cinder_error err = {0};
    CHECK_MSG(comm_broadcast(c, dev, bytes, 0, &err) == CINDER_OK, "%s", err.msg);
    wait_for(c, s);
    CUDA_OK(cudaMemcpy(back, dev, bytes, cudaMemcpyDeviceToHost));
    CHECK_MSG(memcmp(host, back, bytes) == 0, "broadcast of %zu bytes", bytes);
    CUDA_OK(cudaFree(dev));
    free(host);
    free(back);
}

static void run(cudaStream_t caller_stream) {
    cinder_error err = {0};
    comm_nccl_id id;
    CHECK_MSG(comm_nccl_unique_id(&id, &err) == CINDER_OK, "%s", err.msg);
    comm *c = comm_nccl_create(&id, 0, 1, 0, caller_stream, &err);
    CHECK_MSG(c != NULL, "%s", err.msg);
    if (!c) return;
    CHECK_STR_EQ(c->name, "nccl");
    CHECK_EQ_INT(comm_rank(c), 0);
    CHECK_EQ_INT(comm_size(c), 1);
    cudaStream_t s = caller_stream;
    int64_t sizes[] = {1, 1001, (int64_t)1 << 22};
    for (int i = 0; i < 3; i++) {
        check_all_reduce(c, s, sizes[i], COMM_DTYPE_F32);
        check_all_reduce(c, s, sizes[i], COMM_DTYPE_BF16);
    }
    check_all_gather(c, s, 1, 576);
    check_all_gather(c, s, 7, 49152);
    check_broadcast(c, s, 13);
    check_broadcast(c, s, (size_t)1 << 22);
    CHECK_MSG(comm_barrier(c, &err) == CINDER_OK, "%s", err.msg);
    comm_free(c);
}

int main(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev < 1) {
        printf("test_comm_nccl: no GPU - skipped\n");
        return 77;
    }
    run(NULL); /* the communicator's own stream */
    cudaStream_t s;
    CUDA_OK(cudaStreamCreate(&s));
    run(s); /* the caller's stream */
    CUDA_OK(cudaStreamDestroy(s));
    return test_summary("test_comm_nccl");
}
