/* log.h - levelled logging that carries the rank and the function, and the assert macro.
 *
 * The level is checked before the arguments are formatted, so a disabled LOG_DEBUG costs a
 * compare. Messages go to stderr: "[cinder r0 I gguf_open] message". */
#ifndef CINDER_LOG_H
#define CINDER_LOG_H

typedef enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARN,
    LOG_LEVEL_INFO,
    LOG_LEVEL_DEBUG,
} log_level;

extern log_level log_current_level;

void log_set_level(log_level level);
/* Reads CINDER_LOG (error|warn|info|debug) from the environment, if set. */
void log_init_from_env(void);
/* -1 (the default) means "not a rank" (the coordinator, the CLI). */
void log_set_rank(int rank);
void log_write(log_level level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_AT(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= log_current_level) log_write((level), __func__, __VA_ARGS__);               \
    } while (0)
#define LOG_ERROR(...) LOG_AT(LOG_LEVEL_ERROR, __VA_ARGS__)
#define LOG_WARN(...)  LOG_AT(LOG_LEVEL_WARN, __VA_ARGS__)
#define LOG_INFO(...)  LOG_AT(LOG_LEVEL_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) LOG_AT(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* A broken invariant (a bug, never bad input): print file:line and abort. */
_Noreturn void cn_abort(const char *file, int line, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define CN_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) cn_abort(__FILE__, __LINE__, __func__, "assertion failed: %s", #cond);        \
    } while (0)
#define CN_ABORT(...) cn_abort(__FILE__, __LINE__, __func__, __VA_ARGS__)

#endif
