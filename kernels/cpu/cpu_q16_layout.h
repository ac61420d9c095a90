/* cpu_q16_layout.h - private to kernels/cpu: reading the 16-bit path's group blocks (the
 * prepared layout of cpu_simd.h, or the file's rows transposed into it block by block), shared
 * by the AVX2 and AVX-512 kernels. Plain C: each includer compiles it for its own target. */
#ifndef CINDER_CPU_Q16_LAYOUT_H
#define CINDER_CPU_Q16_LAYOUT_H

#include <string.h>

#include "cpu_simd.h"

/* Group blocks prefetched ahead (4-6 KB): a cold Q4_1 GEMV on one core streams at ~12 GB/s
 * with 6, ~15-16 with 16 to 96 (bench_kernels, AMD EPYC). Past the group's end it is the next
 * group: the prepared layout is one stream. */
#define CPU_Q16_PREFETCH 32

typedef struct q16_group {
    const uint8_t *packed;             /* the group's block 0 in the prepared layout, or NULL */
    const uint8_t *row[CPU_PACK_ROWS]; /* else each row's block 0 in the file's layout */
} q16_group;

/* value chunks (pairs of columns) in a group block */
static inline int q16_chunks(dtype type) {
    return type == DTYPE_Q8_0 ? QK / 2 : QK / 4;
}

/* cpu_pack_group_block_bytes, as a constant the compiler sees */
static inline size_t q16_group_block_bytes(dtype type) {
    return 16 * (size_t)q16_chunks(type) + (type == DTYPE_Q4_1 ? 32 : 16);
}

/* Blocks widened at a time out of nb, at most max_blocks, in equal parts: 18 blocks with 16
 * at most as 9 + 9, not 16 + 2. */
static inline int64_t q16_part_blocks(int64_t nb, int64_t max_blocks) {
    const int64_t parts = (nb + max_blocks - 1) / max_blocks;
    return (nb + parts - 1) / parts;
}

/* The group of rows from rg (a multiple of CPU_PACK_ROWS) of w with nb blocks a row: in the
 * prepared layout, or the file's rows (rows past the end repeat the last). */
static inline q16_group q16_group_at(const kernel_weight *w, bool packed, int64_t rg, int64_t nb,
                                     dtype type) {
    q16_group g = {0};
    if (packed) {
        g.packed = (const uint8_t *)w->prepared +
                   (size_t)(rg / CPU_PACK_ROWS) * nb * q16_group_block_bytes(type);
    } else {
        for (int i = 0; i < CPU_PACK_ROWS; i++)
            g.row[i] =
                (const uint8_t *)w->data + (rg + i < w->rows ? rg + i : w->rows - 1) * w->row_bytes;
    }
    return g;
}

/* Group block b from the file's rows, transposed as cpu_pack_weight does, into tmp. */
static inline const uint8_t *q16_transpose(dtype type, const q16_group *g, int64_t b,
                                           uint8_t *tmp) {
    const size_t bb = type == DTYPE_Q8_0   ? sizeof(block_q8_0)
                      : type == DTYPE_Q4_1 ? sizeof(block_q4_1)
                                           : sizeof(block_q4_0);
    const int head = type == DTYPE_Q4_1 ? 4 : 2, nc = q16_chunks(type);
    for (int i = 0; i < CPU_PACK_ROWS; i++) {
        const uint8_t *blk = g->row[i] + b * bb;
        for (int c = 0; c < nc; c++) memcpy(tmp + 16 * c + 2 * i, blk + head + 2 * c, 2);
        memcpy(tmp + 16 * nc + 2 * i, blk, 2);
        if (type == DTYPE_Q4_1) memcpy(tmp + 16 * nc + 16 + 2 * i, blk + 2, 2);
    }
    return tmp;
}

/* Group block b: from the prepared layout (prefetching ahead) or transposed into tmp (at least
 * 16 * QK / 2 + 32 bytes). */
static inline __attribute__((always_inline)) const uint8_t *
q16_group_block(dtype type, bool packed, const q16_group *g, int64_t b, uint8_t *tmp) {
    if (!packed) return q16_transpose(type, g, b, tmp);
    const size_t gb = q16_group_block_bytes(type);
    const uint8_t *gbk = g->packed + b * gb;
    const uint8_t *ahead = gbk + CPU_Q16_PREFETCH * gb;
    __builtin_prefetch(ahead, 0, 3);
    __builtin_prefetch(ahead + 64, 0, 3);
    if (gb > 128) __builtin_prefetch(ahead + 128, 0, 3);
    if (gb > 192) __builtin_prefetch(ahead + 192, 0, 3);
    return gbk;
}

#endif
