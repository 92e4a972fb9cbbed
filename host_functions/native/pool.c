/* A persistent thread pool: workers live as long as the library and wait for the next job.
 *
 * A decode step makes ~75 short matmul calls with a little Python between them, so waking sleeping
 * threads every call (a futex round trip each) would cost more than the work. Workers spin on the job
 * counter for a short while after each job, then sleep on a condition variable.
 *
 * Jobs share their work out dynamically (the job function claims chunks from an atomic counter), and
 * the caller works on every job itself, so a worker the OS has not scheduled yet delays nothing: the
 * caller does its part. A worker joins a job only while it is open; the caller closes it when its own
 * claims run dry and then waits only for the workers inside. One job at a time: concurrent callers
 * (several Python threads) take turns.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "realm_native.h"

#define MAX_THREADS 256
#define SPIN_ROUNDS (1 << 14)
/* Spinning yields the core every YIELD_EVERY rounds: on a machine with more runnable threads than
 * cores, a spinner would otherwise hold the core that the thread it waits for (a worker still in the
 * job, or the Python thread preparing the next call) needs. On an idle machine the yield returns at
 * once. */
#define YIELD_EVERY 64

static inline void cpu_relax(void) {  /* the spin-wait hint: lets a sibling hyperthread (or core) run */
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void spin_wait(int spin) {
    if (spin % YIELD_EVERY == YIELD_EVERY - 1) sched_yield();
    else cpu_relax();
}

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;  /* one job at a time */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_t workers[MAX_THREADS];
static int n_threads = 1;
static atomic_uint generation;  /* bumped once per job (and once to stop) */
static atomic_int inside;       /* workers that joined the current job and have not left it */
static atomic_int closed = 1;   /* the current job takes no more workers */
static atomic_int stopping;
static unsigned start_generation;  /* the generation workers are created in (a late starter waits from it) */
static pool_fn job_fn;
static void *job_arg;


static void *worker_main(void *arg) {
    const int ith = (int)(intptr_t)arg;
    /* Not the current generation: a worker that starts running only after the pool began stopping it
     * must see that change, or its join would wait forever. */
    unsigned seen = start_generation;
    for (;;) {
        for (int spin = 0; spin < SPIN_ROUNDS && atomic_load_explicit(&generation, memory_order_acquire) == seen; spin++)
            spin_wait(spin);
        if (atomic_load_explicit(&generation, memory_order_acquire) == seen) {
            pthread_mutex_lock(&wake_lock);
            while (atomic_load(&generation) == seen) pthread_cond_wait(&wake, &wake_lock);
            pthread_mutex_unlock(&wake_lock);
        }
        seen = atomic_load(&generation);
        if (atomic_load(&stopping)) return NULL;
        atomic_fetch_add(&inside, 1);
        if (!atomic_load(&closed)) job_fn(job_arg, ith, n_threads);  /* a late wake-up finds it closed */
        atomic_fetch_sub(&inside, 1);
    }
}

static void bump_generation(void) {
    pthread_mutex_lock(&wake_lock);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&wake_lock);
}

static void stop_workers(void) {
    atomic_store(&stopping, 1);
    bump_generation();
    for (int i = 1; i < n_threads; i++) pthread_join(workers[i], NULL);
    atomic_store(&stopping, 0);
    n_threads = 1;
}

/* Returns the thread count in effect (n clamped to 1..MAX_THREADS; fewer if threads cannot start). */
EXPORT int realm_set_threads(int n) {
    n = n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : n;
    pthread_mutex_lock(&call_lock);
    if (n != n_threads) {
        stop_workers();
        start_generation = atomic_load(&generation);
        for (int i = 1; i < n; i++) {
            if (pthread_create(&workers[i], NULL, worker_main, (void *)(intptr_t)i) != 0) break;
            n_threads = i + 1;
        }
    }
    n = n_threads;
    pthread_mutex_unlock(&call_lock);
    return n;
}

EXPORT int realm_threads(void) { return n_threads; }

HIDDEN int pool_threads(void) { return n_threads; }

HIDDEN void pool_run(pool_fn fn, void *arg) {
    pthread_mutex_lock(&call_lock);
    const int nth = n_threads;
    job_fn = fn, job_arg = arg;
    atomic_store(&closed, 0);  /* publishes job_fn and job_arg to the workers that see it open */
    if (nth > 1) bump_generation();
    fn(arg, 0, nth);
    atomic_store(&closed, 1);
    for (int spin = 0; atomic_load(&inside) > 0; spin++) spin_wait(spin);
    pthread_mutex_unlock(&call_lock);
}

/* pool_run_rows: the rows of a row-wise kernel claimed in chunks by every thread. */
typedef struct {
    rows_fn fn;
    const void *arg;
    int64_t n_rows, chunk;
    _Atomic int64_t next;  /* the next unclaimed chunk */
} rows_job;

static void rows_share(void *arg, int ith, int nth) {
    (void)ith, (void)nth;
    rows_job *j = arg;
    for (;;) {
        const int64_t first = atomic_fetch_add(&j->next, 1) * j->chunk;
        if (first >= j->n_rows) return;
        j->fn(j->arg, first, first + j->chunk < j->n_rows ? first + j->chunk : j->n_rows);
    }
}

/* Waking the workers costs a few microseconds: a call with less work than this runs on the caller. */
#define ROWS_MIN_SPLIT_FLOATS (1 << 15)

HIDDEN void pool_run_rows(rows_fn fn, const void *arg, int64_t n_rows, int64_t row_floats) {
    if (n_rows <= 0) return;
    const int nth = pool_threads();
    if (nth == 1 || n_rows == 1 || n_rows * row_floats < ROWS_MIN_SPLIT_FLOATS) {
        fn(arg, 0, n_rows);
        return;
    }
    int64_t chunk = n_rows / (4 * (int64_t)nth);  /* about 4 claims per thread */
    rows_job job = {.fn = fn, .arg = arg, .n_rows = n_rows, .chunk = chunk > 0 ? chunk : 1};
    pool_run(rows_share, &job);
}
