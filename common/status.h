/* status.h - runtime failures: a status code plus a message that says what was wrong and where.
 *
 * Two kinds of error in cinder (conventions.md, habit 4): broken invariants abort through
 * CN_ASSERT (log.h); everything a file, the network or a client can cause returns a
 * cinder_status and fills a cinder_error that the caller reports. */
#ifndef CINDER_STATUS_H
#define CINDER_STATUS_H

#include <stddef.h>

typedef enum cinder_status {
    CINDER_OK = 0,
    CINDER_ERR_IO,          /* open/read/mmap failed */
    CINDER_ERR_FORMAT,      /* malformed file or message: bad magic, out-of-range offset, ... */
    CINDER_ERR_UNSUPPORTED, /* well-formed but not something cinder handles (type, arch) */
    CINDER_ERR_ARG,         /* bad argument from the caller or a user */
    CINDER_ERR_NOMEM,       /* allocation failed */
    CINDER_ERR_NOT_FOUND,   /* a named thing (tensor, key, file) is absent */
    CINDER_ERR_RANGE,       /* an output buffer or a numeric value is out of range */
} cinder_status;

/* Holds the message of the last failure of a call that was given it. */
typedef struct cinder_error {
    cinder_status status;
    char msg[512];
} cinder_error;

/* Fills err (may be NULL) with status and a printf-style message; returns status. */
cinder_status cinder_error_set(cinder_error *err, cinder_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to err's message (for adding context such as a file name). */
void cinder_error_prefix(cinder_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A short name for a status ("format error", ...). */
const char *cinder_status_name(cinder_status status);

#endif
