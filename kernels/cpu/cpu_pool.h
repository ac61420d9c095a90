/* cpu_pool.h - a persistent thread pool with one operation: a parallel for over [0, n).
 *
 * Every op runs once per layer per step, often for tens of microseconds, so threads are made
 * once: workers spin briefly after a job (the next op usually follows at once) and then sleep
 * on a condition variable. The calling thread works too, as thread 0.
 *
 * Ranges are handed out dynamically (an atomic counter), so which thread computes what varies
 * from run to run: a job must make each output depend only on its index, never on the range
 * or the thread, for results to be identical whatever the thread count. */
#ifndef CINDER_CPU_POOL_H
#define CINDER_CPU_POOL_H

#include <stdint.h>

#include "status.h"

typedef struct cpu_pool cpu_pool;

/* Processes [begin, end); thread is in [0, n_threads) (0 = the caller), for per-thread scratch. */
typedef void (*cpu_pool_fn)(void *arg, int64_t begin, int64_t end, int thread);

/* n_threads >= 1 (the caller included). Returns NULL and fills err on failure. */
cpu_pool *cpu_pool_create(int n_threads, cinder_error *err);
/* Stops and joins the workers; accepts NULL. */
void cpu_pool_free(cpu_pool *p);
int cpu_pool_n_threads(const cpu_pool *p);

/* Calls fn over [0, n) split into ranges of grain items (the last one shorter) and returns
 * when all are done. One caller at a time; fn must not call cpu_pool_run on the same pool. */
void cpu_pool_run(cpu_pool *p, cpu_pool_fn fn, void *arg, int64_t n, int64_t grain);

/* Online CPUs (at least 1). */
int cpu_count_online(void);

#endif
