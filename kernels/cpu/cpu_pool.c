/* cpu_pool.c - the persistent thread pool behind every CPU op.
 *
 * A job is published by writing its fields, then `next` = (generation << 32 | 0), then
 * bumping `gen` (release). Workers watch `gen` (acquire) and claim ranges by compare-and-swap
 * on `next`, which fails once the generation in it is not the one they woke for: a worker
 * that wakes late (descheduled on a busy machine) finds nothing to do and touches nothing.
 * The caller counts finished ranges (`done`), not workers: it never waits for a worker that
 * took no range, so an op costs one timeslice of a preempted worker only when that worker
 * holds a range. A job's fields are not rewritten until all its ranges are done, and a range
 * can only be claimed while its job is current, so a claimed range always reads its own job. */
#include "cpu_pool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* How long an idle worker spins before it sleeps: long enough to cover the gap between two
 * ops of a forward pass (microseconds), short enough not to burn a core between requests. */
#define POOL_SPIN_NS 200000
/* Spins with the pause instruction only, before also yielding the core: when there are more
 * threads than cores (tests, a busy machine) a spinning thread must let the others run. */
#define POOL_PAUSE_SPINS 2000

struct cpu_pool {
    int n_threads;
    pthread_t *threads; /* [n_threads - 1] workers; thread 0 is the caller */
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    _Atomic unsigned gen;   /* bumped once per job */
    _Atomic int n_sleeping; /* workers in (or entering) pthread_cond_wait */
    _Atomic uint64_t next;  /* the current job's generation << 32 | next range to hand out */
    _Atomic int64_t done;   /* ranges of the current job finished */
    _Atomic bool stop;
    /* the current job, written by the caller before gen is bumped */
    cpu_pool_fn fn;
    void *arg;
    int64_t n, grain, n_ranges;
};

typedef struct pool_worker_arg {
    cpu_pool *pool;
    int thread;
} pool_worker_arg;

static inline void pool_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t pool_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Runs ranges of job `gen` until none is left (or another job is current). */
static void pool_work(cpu_pool *p, unsigned gen, int thread) {
    for (;;) {
        uint64_t v = atomic_load_explicit(&p->next, memory_order_acquire);
        do {
            /* n_ranges may already be a later job's here: the CAS then fails, as the caller
             * changed next before writing the job, and the generation check returns */
            if ((unsigned)(v >> 32) != gen || (int64_t)(v & 0xffffffffu) >= p->n_ranges) return;
        } while (!atomic_compare_exchange_weak_explicit(&p->next, &v, v + 1, memory_order_acq_rel,
                                                        memory_order_acquire));
        int64_t begin = (int64_t)(v & 0xffffffffu) * p->grain, end = begin + p->grain;
        p->fn(p->arg, begin, end < p->n ? end : p->n, thread);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

/* Waits until gen differs from seen or stop is set; returns the new gen. */
static unsigned pool_wait_job(cpu_pool *p, unsigned seen) {
    int64_t spins = 0, deadline = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen || atomic_load(&p->stop)) return g;
        spins++;
        if (spins < POOL_PAUSE_SPINS) {
            pool_pause();
            continue;
        }
        if (spins == POOL_PAUSE_SPINS) deadline = pool_now_ns() + POOL_SPIN_NS;
        if (spins % 64 != 0 || pool_now_ns() < deadline) {
            sched_yield();
            continue;
        }
        /* Sleep. n_sleeping is raised before gen is read again (both seq_cst) and the caller
         * bumps gen before it reads n_sleeping, so either this thread sees the new job or the
         * caller sees a sleeper and broadcasts under the mutex. */
        pthread_mutex_lock(&p->mu);
        atomic_fetch_add(&p->n_sleeping, 1);
        while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop))
            pthread_cond_wait(&p->wake, &p->mu);
        atomic_fetch_sub(&p->n_sleeping, 1);
        pthread_mutex_unlock(&p->mu);
        spins = 0;
    }
}

static void *pool_worker_main(void *argp) {
    pool_worker_arg a = *(pool_worker_arg *)argp;
    free(argp);
    cpu_pool *p = a.pool;
    unsigned seen = 0;
    for (;;) {
        seen = pool_wait_job(p, seen);
        if (atomic_load(&p->stop)) return NULL;
        pool_work(p, seen, a.thread);
    }
}

int cpu_count_online(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

cpu_pool *cpu_pool_create(int n_threads, cinder_error *err) {
    CN_ASSERT(n_threads >= 1);
    cpu_pool *p = calloc(1, sizeof *p);
    if (!p) goto nomem;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof *p->threads);
        if (!p->threads) goto nomem;
    }
    for (int i = 1; i < n_threads; i++) {
        pool_worker_arg *a = malloc(sizeof *a);
        if (!a) goto nomem;
        *a = (pool_worker_arg){p, i};
        int rc = pthread_create(&p->threads[i - 1], NULL, pool_worker_main, a);
        if (rc != 0) {
            free(a);
            cinder_error_set(err, CINDER_ERR_NOMEM, "cannot start thread %d of %d: %s", i,
                             n_threads, strerror(rc));
            goto fail;
        }
        p->n_started++;
    }
    return p;
nomem:
    cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for a pool of %d threads", n_threads);
fail:
    cpu_pool_free(p);
    return NULL;
}

void cpu_pool_free(cpu_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

int cpu_pool_n_threads(const cpu_pool *p) {
    return p->n_threads;
}

void cpu_pool_run(cpu_pool *p, cpu_pool_fn fn, void *arg, int64_t n, int64_t grain) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int64_t n_ranges = (n + grain - 1) / grain;
    if (p->n_threads == 1 || n_ranges == 1) {
        for (int64_t b = 0; b < n; b += grain) fn(arg, b, b + grain < n ? b + grain : n, 0);
        return;
    }
    CN_ASSERT(n_ranges <= 0xffffffffu);
    unsigned gen = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1; /* only we write it */
    /* First retire the last job's claims: a worker that read its `next` just before that job
     * ran out, and then compares with the n_ranges written below, must see its CAS fail here
     * rather than claim a range of a job still being written (and count it in `done`). */
    atomic_store(&p->next, (uint64_t)gen << 32 | 0xffffffffu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->grain = grain;
    p->n_ranges = n_ranges;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->next, (uint64_t)gen << 32, memory_order_release);
    atomic_store(&p->gen, gen); /* seq_cst: publishes the job, then n_sleeping is read */
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    pool_work(p, gen, 0);
    for (int64_t spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < n_ranges;
         spins++) {
        if (spins < POOL_PAUSE_SPINS)
            pool_pause();
        else
            sched_yield();
    }
}
