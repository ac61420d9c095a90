/* mapped_file.h - a whole file mapped read-only into memory. */
#ifndef CINDER_MAPPED_FILE_H
#define CINDER_MAPPED_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct mapped_file {
    char *path;          /* owned copy of the path */
    const uint8_t *data; /* NULL for an empty file */
    size_t size;         /* bytes */
} mapped_file;

/* Maps path read-only. On failure returns a status, fills err and leaves *mf empty. */
cinder_status mapped_file_open(const char *path, mapped_file *mf, cinder_error *err);
/* Unmaps; accepts an empty or already closed mapped_file. */
void mapped_file_close(mapped_file *mf);

#endif
