/* ops.c - the backend-independent helpers of the op interface: weight views, RoPE frequencies,
 * the host-memory defaults of the memory hooks. */
#include "ops.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

cinder_status kernel_weight_from_tensor(const model_tensor *t, kernel_weight *w,
                                        cinder_error *err) {
    if (t->n_dims < 1 || t->n_dims > 3)
        return cinder_error_set(err, CINDER_ERR_ARG, "%s: %d dimensions, a weight has 1 to 3",
                                t->name, t->n_dims);
    int64_t cols = t->shape[t->n_dims - 1], rows = 1;
    for (int i = 0; i < t->n_dims - 1; i++) rows *= t->shape[i];
    size_t row_bytes = dtype_row_bytes(t->type, cols);
    if (cols <= 0 || rows <= 0 || row_bytes == 0)
        return cinder_error_set(
            err, CINDER_ERR_ARG, "%s: %s rows of %lld values do not fit its %lld-value blocks",
            t->name, dtype_name(t->type), (long long)cols, (long long)dtype_block_size(t->type));
    if ((uint64_t)rows * row_bytes != t->nbytes)
        return cinder_error_set(err, CINDER_ERR_ARG, "%s: %zu bytes for %lld rows of %zu bytes",
                                t->name, t->nbytes, (long long)rows, row_bytes);
    *w = (kernel_weight){t->type, rows, cols, t->data, row_bytes, NULL};
    return CINDER_OK;
}

kernel_rope_scaling kernel_rope_scaling_from_config(const model_config *cfg) {
    return (kernel_rope_scaling){
        .type = cfg->rope_scaling,
        .factor = cfg->rope_scaling_factor,
        .low_freq_factor = cfg->rope_low_freq_factor,
        .high_freq_factor = cfg->rope_high_freq_factor,
        .original_context = cfg->rope_original_context,
    };
}

cinder_status kernel_rope_inv_freq(float *inv_freq, int rope_dim, float theta,
                                   const kernel_rope_scaling *scaling, cinder_error *err) {
    if (rope_dim <= 0 || rope_dim % 2 != 0)
        return cinder_error_set(err, CINDER_ERR_ARG, "rope dimension %d is not even and positive",
                                rope_dim);
    if (!(theta > 1.0f) || !isfinite(theta))
        return cinder_error_set(err, CINDER_ERR_ARG, "rope theta %g is not above 1", theta);
    rope_scaling_type type = scaling ? scaling->type : ROPE_SCALING_NONE;
    double factor = scaling ? scaling->factor : 1.0;
    switch (type) {
        case ROPE_SCALING_NONE:
            break;
        case ROPE_SCALING_LINEAR:
        case ROPE_SCALING_LLAMA3:
            if (!(factor > 0) || !isfinite(factor))
                return cinder_error_set(err, CINDER_ERR_ARG, "rope scaling factor %g", factor);
            break;
        case ROPE_SCALING_DYNAMIC:
            return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                    "dynamic NTK rope scaling is not supported yet");
        case ROPE_SCALING_YARN:
            return cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                                    "YaRN rope scaling is not supported yet");
        default:
            return cinder_error_set(err, CINDER_ERR_ARG, "rope scaling type %d", (int)type);
    }
    /* llama3 bands (HF _compute_llama3_parameters): wavelengths shorter than
     * original_context / high_freq_factor keep their frequency, longer than
     * original_context / low_freq_factor are divided by factor, and the band between blends
     * the two linearly in original_context / wavelength. */
    double low = 0, high = 0, old_ctx = 0;
    if (type == ROPE_SCALING_LLAMA3) {
        low = scaling->low_freq_factor;
        high = scaling->high_freq_factor;
        old_ctx = scaling->original_context;
        if (!(old_ctx > 0) || !(low > 0) || !(high > low))
            return cinder_error_set(err, CINDER_ERR_ARG,
                                    "llama3 rope scaling needs original context > 0 and "
                                    "0 < low_freq_factor < high_freq_factor (got %g, %g, %g)",
                                    old_ctx, low, high);
    }
    for (int i = 0; i < rope_dim / 2; i++) {
        double f = 1.0 / pow(theta, (double)(2 * i) / rope_dim);
        if (type == ROPE_SCALING_LINEAR) {
            f /= factor;
        } else if (type == ROPE_SCALING_LLAMA3) {
            double wavelen = 2 * M_PI / f;
            if (wavelen > old_ctx / low) {
                f /= factor;
            } else if (!(wavelen < old_ctx / high)) {
                double smooth = (old_ctx / wavelen - low) / (high - low);
                f = (1 - smooth) * f / factor + smooth * f;
            }
        }
        inv_freq[i] = (float)f;
    }
    return CINDER_OK;
}

const char *kernel_simd_name(kernel_simd simd) {
    switch (simd) {
        case KERNEL_SIMD_AUTO:
            return "auto";
        case KERNEL_SIMD_SCALAR:
            return "scalar";
        case KERNEL_SIMD_AVX2:
            return "avx2";
        case KERNEL_SIMD_AVX512:
            return "avx512";
        default:
            return "?";
    }
}

void kernel_ops_free(kernel_ops *ops) {
    if (ops) ops->destroy(ops);
}

const char *kernel_act_name(kernel_act_precision act) {
    switch (act) {
        case KERNEL_ACT_DEFAULT:
            return "default";
        case KERNEL_ACT_ACCURATE:
            return "accurate";
        case KERNEL_ACT_INT8:
            return "int8";
        default:
            return "?";
    }
}

/* ---- memory hooks: host memory where a backend leaves them NULL ---- */

#define KERNEL_HUGE_PAGE ((uintptr_t)2 << 20)

void kernel_advise_huge_pages(void *p, size_t bytes) {
#ifdef MADV_HUGEPAGE
    uintptr_t b = ((uintptr_t)p + KERNEL_HUGE_PAGE - 1) & ~(KERNEL_HUGE_PAGE - 1);
    uintptr_t e = ((uintptr_t)p + bytes) & ~(KERNEL_HUGE_PAGE - 1);
    if (e > b) madvise((void *)b, e - b, MADV_HUGEPAGE); /* a hint: failure changes nothing */
#else
    (void)p, (void)bytes;
#endif
}

/* Host memory: zeroed and touched only where used (calloc). Regions of a few MiB and more
 * (KV pools) ask for 2 MiB pages: decode attention reads each sequence's K/V rows from blocks
 * scattered through the pool, a new 4 KiB page every 2 KiB or so, and with small pages most
 * of those reads miss the TLB as well (batch-32 decode attention over an F16 pool: 0-13% less
 * time on an AMD EPYC, by the profile). */
void *kernel_alloc(kernel_ops *k, size_t bytes, cinder_error *err) {
    if (k->alloc) return k->alloc(k->ctx, bytes, err);
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for %zu bytes", bytes);
        return NULL;
    }
    if (bytes >= 2 * KERNEL_HUGE_PAGE) kernel_advise_huge_pages(p, bytes);
    return p;
}

void kernel_free(kernel_ops *k, void *p) {
    if (!p) return;
    if (k->free_mem) k->free_mem(k->ctx, p);
    else free(p);
}

void kernel_upload(kernel_ops *k, void *dst, const void *src, size_t bytes) {
    if (k->upload) k->upload(k->ctx, dst, src, bytes);
    else if (bytes) memmove(dst, src, bytes);
}

void kernel_download(kernel_ops *k, void *dst, const void *src, size_t bytes) {
    if (k->download) k->download(k->ctx, dst, src, bytes);
    else if (bytes) memmove(dst, src, bytes);
}

void kernel_sync(kernel_ops *k) {
    if (k->sync) k->sync(k->ctx);
}

cinder_status kernel_prepare_weight(kernel_ops *k, kernel_weight *w, cinder_error *err) {
    return k->prepare_weight ? k->prepare_weight(k->ctx, w, err) : CINDER_OK;
}

cinder_status kernel_mem_info(kernel_ops *k, size_t *free_bytes, size_t *total_bytes,
                              cinder_error *err) {
    if (!k->mem_info)
        return cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "%s cannot report its memory",
                                k->name);
    return k->mem_info(k->ctx, free_bytes, total_bytes, err);
}

bool kernel_supports_kv(kernel_ops *k, dtype type) {
    return k->supports_kv ? k->supports_kv(k->ctx, type) : type == DTYPE_F32;
}
