#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

cinder_status cinder_error_set(cinder_error *err, cinder_status status, const char *fmt, ...) {
    if (!err) return status;
    err->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return status;
}

void cinder_error_prefix(cinder_error *err, const char *fmt, ...) {
    if (!err) return;
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* Shift the message right to make room for "prefix: ", truncating its end if need be. */
    size_t plen = strlen(prefix) + 2, cap = sizeof err->msg;
    size_t mlen = strnlen(err->msg, cap - 1);
    if (plen + mlen > cap - 1) mlen = cap - 1 - plen;
    memmove(err->msg + plen, err->msg, mlen);
    err->msg[plen + mlen] = '\0';
    memcpy(err->msg, prefix, plen - 2);
    memcpy(err->msg + plen - 2, ": ", 2);
}

const char *cinder_status_name(cinder_status status) {
    switch (status) {
        case CINDER_OK: return "ok";
        case CINDER_ERR_IO: return "I/O error";
        case CINDER_ERR_FORMAT: return "format error";
        case CINDER_ERR_UNSUPPORTED: return "unsupported";
        case CINDER_ERR_ARG: return "bad argument";
        case CINDER_ERR_NOMEM: return "out of memory";
        case CINDER_ERR_NOT_FOUND: return "not found";
        case CINDER_ERR_RANGE: return "out of range";
    }
    return "unknown status";
}
