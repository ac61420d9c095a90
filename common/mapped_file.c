#include "mapped_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

cinder_status mapped_file_open(const char *path, mapped_file *mf, cinder_error *err) {
    memset(mf, 0, sizeof *mf);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return cinder_error_set(err, CINDER_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        cinder_error_set(err, CINDER_ERR_IO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        cinder_error_set(err, CINDER_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    mf->size = (size_t)st.st_size;
    if (mf->size > 0) {
        void *p = mmap(NULL, mf->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            cinder_error_set(err, CINDER_ERR_IO, "%s: mmap: %s", path, strerror(errno));
            goto fail;
        }
        mf->data = p;
    }
    close(fd);
    mf->path = strdup(path);
    if (!mf->path) {
        mapped_file_close(mf);
        return cinder_error_set(err, CINDER_ERR_NOMEM, "%s: out of memory", path);
    }
    return CINDER_OK;
fail:
    close(fd);
    memset(mf, 0, sizeof *mf);
    return err ? err->status : CINDER_ERR_IO;
}

void mapped_file_close(mapped_file *mf) {
    if (!mf) return;
    if (mf->data) munmap((void *)mf->data, mf->size);
    free(mf->path);
    memset(mf, 0, sizeof *mf);
}
