#include "kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

size_t kv_cache_block_bytes_type(int n_layers, int n_kv_heads, int head_dim, int block_size,
                                 dtype type) {
    size_t elem = dtype_row_bytes(type, 1); /* F32, or F16 / BF16 */
    return 2 * (size_t)n_layers * (size_t)n_kv_heads * (size_t)block_size * (size_t)head_dim *
           elem;
}

size_t kv_cache_block_bytes(int n_layers, int n_kv_heads, int head_dim, int block_size) {
    return kv_cache_block_bytes_type(n_layers, n_kv_heads, head_dim, block_size, DTYPE_F32);
}

bool kv_cache_type_parse(const char *name, dtype *out) {
    static const struct {
        const char *name;
        dtype type;
    } types[] = {{"f32", DTYPE_F32}, {"f16", DTYPE_F16}, {"bf16", DTYPE_BF16}};
    for (size_t i = 0; name && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(name, types[i].name) == 0) {
            *out = types[i].type;
            return true;
        }
    return false;
}

kv_cache *kv_cache_create(int n_layers, int n_kv_heads, int head_dim, int block_size,
                          int32_t n_blocks, cinder_error *err) {
    return kv_cache_create_on(NULL, n_layers, n_kv_heads, head_dim, block_size, n_blocks,
                              DTYPE_F32, err);
}

/* Zeroed backend memory for a pool (calloc on the host). */
static float *kv_pool_alloc(kernel_ops *b, size_t bytes, cinder_error *err) {
    if (!b) return calloc(1, bytes);
    return kernel_alloc(b, bytes, err); /* zeroed */
}

static void kv_pool_free(kernel_ops *b, float *p) {
    if (!b) free(p);
    else kernel_free(b, p);
}

kv_cache *kv_cache_create_on(kernel_ops *backend, int n_layers, int n_kv_heads, int head_dim,
                             int block_size, int32_t n_blocks, dtype type, cinder_error *err) {
    if (type != DTYPE_F32 && type != DTYPE_F16 && type != DTYPE_BF16) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "KV cache of type %s", dtype_name(type));
        return NULL;
    }
    if (type != DTYPE_F32 && (!backend || !kernel_supports_kv(backend, type))) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED, "the %s backend has no %s KV cache",
                         backend ? backend->name : "host", dtype_name(type));
        return NULL;
    }
    if (n_layers <= 0 || n_kv_heads <= 0 || head_dim <= 0 || block_size <= 0 || n_blocks <= 0) {
        cinder_error_set(err, CINDER_ERR_ARG,
                         "KV cache of %d layers, %d KV heads, head dim %d, %d blocks of %d "
                         "tokens: every size must be positive",
                         n_layers, n_kv_heads, head_dim, n_blocks, block_size);
        return NULL;
    }
    kv_cache *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->n_layers = n_layers;
    c->n_kv_heads = n_kv_heads;
    c->head_dim = head_dim;
    c->block_size = block_size;
    c->n_blocks = n_blocks;
    c->type = type;
    c->backend = backend;
    size_t elem = type == DTYPE_F32 ? sizeof(float) : 2;
    size_t per_layer = (size_t)n_blocks * (size_t)n_kv_heads * (size_t)block_size * (size_t)head_dim;
    size_t bytes = per_layer * (size_t)n_layers * elem;
    /* Calloc, not malloc: pages are touched only when used, and a bug that reads an unwritten
     * slot reads zeros rather than garbage (the tests poison on purpose where it matters). */
    c->k = kv_pool_alloc(backend, bytes, err);
    c->v = kv_pool_alloc(backend, bytes, err);
    c->layers = calloc((size_t)n_layers, sizeof *c->layers);
    c->free_list = malloc((size_t)n_blocks * sizeof *c->free_list);
    c->is_free = malloc((size_t)n_blocks);
    if (!c->k || !c->v || !c->layers || !c->free_list || !c->is_free) goto nomem;
    memset(c->is_free, 1, (size_t)n_blocks);
    for (int l = 0; l < n_layers; l++)
        c->layers[l] = (kernel_kv_layer){.k = (float *)((uint8_t *)c->k + l * per_layer * elem),
                                         .v = (float *)((uint8_t *)c->v + l * per_layer * elem),
                                         .n_blocks = n_blocks,
                                         .block_size = block_size,
                                         .n_kv_heads = n_kv_heads,
                                         .head_dim = head_dim,
                                         .type = type};
    /* Lowest ids on top of the stack: a fresh cache hands out 0, 1, 2, ... */
    for (int32_t i = 0; i < n_blocks; i++) c->free_list[i] = n_blocks - 1 - i;
    c->n_free = n_blocks;
    return c;
nomem:
    cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for a KV cache of %d blocks (%zu MiB)",
                     n_blocks,
                     kv_cache_block_bytes_type(n_layers, n_kv_heads, head_dim, block_size, type) *
                         (size_t)n_blocks >> 20);
    kv_cache_free(c);
    return NULL;
}

void kv_cache_free(kv_cache *c) {
    if (!c) return;
    kv_pool_free(c->backend, c->k);
    kv_pool_free(c->backend, c->v);
    free(c->layers);
    free(c->free_list);
    free(c->is_free);
    free(c);
}

cinder_status kv_cache_alloc(kv_cache *c, int32_t n, int32_t *out, cinder_error *err) {
    if (n > c->n_free)
        return cinder_error_set(err, CINDER_ERR_NOMEM, "KV cache: %d blocks wanted, %d free of %d",
                                n, c->n_free, c->n_blocks);
    for (int32_t i = 0; i < n; i++) {
        out[i] = c->free_list[--c->n_free];
        c->is_free[out[i]] = 0;
    }
    return CINDER_OK;
}

void kv_cache_release(kv_cache *c, const int32_t *blocks, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        CN_ASSERT(blocks[i] >= 0 && blocks[i] < c->n_blocks);
        CN_ASSERT(!c->is_free[blocks[i]]);
        c->is_free[blocks[i]] = 1;
        c->free_list[c->n_free++] = blocks[i];
    }
}

cinder_status kv_seq_reserve(kv_cache *c, kv_seq *s, int32_t n_positions, cinder_error *err) {
    int32_t need = (int32_t)(((int64_t)n_positions + c->block_size - 1) / c->block_size);
    if (need <= s->n_blocks) return CINDER_OK;
    if (need > s->cap) {
        int32_t cap = s->cap ? s->cap : 8;
        while (cap < need) cap *= 2;
        int32_t *p = realloc(s->blocks, (size_t)cap * sizeof *p);
        if (!p) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for a block table");
        s->blocks = p;
        s->cap = cap;
    }
    cinder_status st = kv_cache_alloc(c, need - s->n_blocks, s->blocks + s->n_blocks, err);
    if (st == CINDER_OK) s->n_blocks = need;
    return st;
}

void kv_seq_release(kv_cache *c, kv_seq *s) {
    kv_cache_release(c, s->blocks, s->n_blocks);
    s->n_blocks = 0;
}

void kv_seq_free(kv_cache *c, kv_seq *s) {
    if (c && s->n_blocks) kv_seq_release(c, s);
    free(s->blocks);
    memset(s, 0, sizeof *s);
}

void kv_cache_copy_block(kv_cache *c, int32_t src, int32_t dst) {
    CN_ASSERT(src >= 0 && src < c->n_blocks && dst >= 0 && dst < c->n_blocks);
    /* Through the host, so that any backend's pools work: copy-on-write is rare (forked
     * sequences only), and one block is small. */
    size_t elem = dtype_row_bytes(c->type, 1);
    size_t bytes = (size_t)c->n_kv_heads * (size_t)c->block_size * (size_t)c->head_dim * elem;
    uint8_t *stage = malloc(bytes);
    CN_ASSERT(stage);
    for (int l = 0; l < c->n_layers; l++)
        for (int kv = 0; kv < 2; kv++) {
            uint8_t *pool = (uint8_t *)(kv ? c->layers[l].v : c->layers[l].k);
            if (!c->backend) {
                memcpy(pool + (size_t)dst * bytes, pool + (size_t)src * bytes, bytes);
                continue;
            }
            kernel_download(c->backend, stage, pool + (size_t)src * bytes, bytes);
            kernel_upload(c->backend, pool + (size_t)dst * bytes, stage, bytes);
        }
    free(stage);
}
