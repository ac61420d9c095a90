#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

log_level log_current_level = LOG_LEVEL_WARN;
static int log_rank = -1;

void log_set_level(log_level level) {
    log_current_level = level;
}

void log_init_from_env(void) {
    const char *v = getenv("CINDER_LOG");
    if (!v) return;
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(v, names[i]) == 0) log_current_level = (log_level)i;
}

void log_set_rank(int rank) {
    log_rank = rank;
}

void log_write(log_level level, const char *func, const char *fmt, ...) {
    static const char tag[] = "EWID";
    char line[2048];
    int n;
    if (log_rank >= 0)
        n = snprintf(line, sizeof line, "[cinder r%d %c %s] ", log_rank, tag[level], func);
    else
        n = snprintf(line, sizeof line, "[cinder %c %s] ", tag[level], func);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}

void cn_abort(const char *file, int line, const char *func, const char *fmt, ...) {
    fprintf(stderr, "[cinder r%d FATAL %s] %s:%d: ", log_rank, func, file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}
