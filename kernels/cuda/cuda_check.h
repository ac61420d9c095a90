/* cuda_check.h - the one family of check macros for CUDA and cuBLAS calls (private).
 *
 *   CUDA_CHECK(call)    aborts naming the call, file:line and the error (in ops: a device
 *                       fault mid-step leaves nothing to recover)
 *   CUBLAS_CHECK(call)  the same for cuBLAS
 *   CUDA_TRY(call, err) for setup code that reports: fills err, evaluates to the status
 *   CUDA_CHECK_LAUNCH() after a kernel launch: the launch error (never a device sync) */
#ifndef CINDER_CUDA_CHECK_H
#define CINDER_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

/* log.h is C11 (_Noreturn): C++ spells it [[noreturn]]. */
#ifndef _Noreturn
#define _Noreturn [[noreturn]]
#define CINDER_UNDEF_NORETURN
#endif
extern "C" {
#include "log.h"
#include "status.h"
}
#ifdef CINDER_UNDEF_NORETURN
#undef _Noreturn
#undef CINDER_UNDEF_NORETURN
#endif

const char *cuda_cublas_status_name(cublasStatus_t s);

#define CINDER_GPU_CHECK(ok, call, what)                                                           \
    do {                                                                                           \
        if (!(ok)) cn_abort(__FILE__, __LINE__, __func__, "%s failed: %s", call, what);            \
    } while (0)

#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        CINDER_GPU_CHECK(e_ == cudaSuccess, #call, cudaGetErrorString(e_));                        \
    } while (0)

#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        CINDER_GPU_CHECK(s_ == CUBLAS_STATUS_SUCCESS, #call, cuda_cublas_status_name(s_));         \
    } while (0)

#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

/* Setup code: returns a status instead of aborting. */
#define CUDA_TRY(call, err) cuda_try_((call), #call, __FILE__, __LINE__, (err))

static inline cinder_status cuda_try_(cudaError_t e, const char *call, const char *file, int line,
                                      cinder_error *err) {
    if (e == cudaSuccess) return CINDER_OK;
    return cinder_error_set(
        err, e == cudaErrorMemoryAllocation ? CINDER_ERR_NOMEM : CINDER_ERR_UNSUPPORTED,
        "%s failed at %s:%d: %s", call, file, line, cudaGetErrorString(e));
}

#endif
