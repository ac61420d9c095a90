/* hf_test_util.h - temp folders and raw files for the safetensors / Hugging Face tests. */
#ifndef CINDER_HF_TEST_UTIL_H
#define CINDER_HF_TEST_UTIL_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A fresh folder under /tmp; the path lives in a static buffer. Aborts on failure. */
static inline const char *tu_mkdtemp(void) {
    static char dir[64];
    snprintf(dir, sizeof dir, "/tmp/cinder_hf_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        abort();
    }
    return dir;
}

static inline int tu_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* rm -rf dir */
static inline void tu_rmtree(const char *dir) {
    nftw(dir, tu_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* dir/name in a static ring of buffers (a few can be alive at once). */
static inline const char *tu_path(const char *dir, const char *name) {
    static char bufs[8][512];
    static int next;
    char *p = bufs[next++ % 8];
    snprintf(p, sizeof bufs[0], "%s/%s", dir, name);
    return p;
}

static inline void tu_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

static inline void tu_write_text(const char *path, const char *text) {
    tu_write_file(path, text, strlen(text));
}

/* A safetensors image in a malloc'd buffer of exactly its size (so ASan sees any overread):
 * the header length (given, or strlen(header) when len_override is UINT64_MAX), the header,
 * then data_size bytes of data (0, 1, 2, ...). */
static inline uint8_t *tu_st_image(const char *header, uint64_t len_override, size_t data_size,
                                   size_t *size_out) {
    size_t hlen = strlen(header), size = 8 + hlen + data_size;
    uint8_t *buf = malloc(size);
    if (!buf) abort();
    uint64_t n = len_override == UINT64_MAX ? hlen : len_override;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(buf + 8, header, hlen);
    for (size_t i = 0; i < data_size; i++) buf[8 + hlen + i] = (uint8_t)i;
    *size_out = size;
    return buf;
}

#endif
