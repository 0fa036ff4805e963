/* threads.c - a minimal parallel-for over pthreads.
 *
 * Threads are created per call and joined before returning: no global pool, nothing to
 * tear down at fork or interpreter exit. Kernels that use this move megabytes per call, so
 * the ~20 us a thread costs to start is noise. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include "fusechat.h"

#define FC_MAX_THREADS 256

static int env_threads(const char *name) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (*end != '\0' || v < 1) return 0;
    return v > FC_MAX_THREADS ? FC_MAX_THREADS : (int)v;
}

int fc_default_threads(void) {
    int n = env_threads("FUSECHAT_NUM_THREADS");
    if (n) return n;
    n = env_threads("OMP_NUM_THREADS");
    if (n) return n;
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        n = CPU_COUNT(&set);
        if (n > 0) return n > FC_MAX_THREADS ? FC_MAX_THREADS : n;
    }
#endif
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c < 1 ? 1 : (c > FC_MAX_THREADS ? FC_MAX_THREADS : (int)c);
}

typedef struct {
    fc_range_fn fn;
    void       *ctx;
    int64_t     begin, end;
    fc_status   status;
} range_job;

static void *run_job(void *arg) {
    range_job *j = (range_job *)arg;
    j->status = j->fn(j->ctx, j->begin, j->end);
    return NULL;
}

fc_status fc_parallel_for(int64_t n, int64_t grain, int nthreads, fc_range_fn fn, void *ctx) {
    if (n <= 0) return FC_OK;
    if (grain < 1) grain = 1;
    if (nthreads <= 0) nthreads = fc_default_threads();
    if (nthreads > FC_MAX_THREADS) nthreads = FC_MAX_THREADS;
    int64_t max_by_grain = (n + grain - 1) / grain;
    int t = (int)(max_by_grain < nthreads ? max_by_grain : nthreads);
    if (t <= 1) return fn(ctx, 0, n);

    range_job jobs[FC_MAX_THREADS];
    pthread_t tids[FC_MAX_THREADS];
    int started[FC_MAX_THREADS];
    int64_t per = (n + t - 1) / t;
    for (int i = 0; i < t; i++) {
        jobs[i].fn = fn;
        jobs[i].ctx = ctx;
        jobs[i].begin = (int64_t)i * per;
        jobs[i].end = jobs[i].begin + per < n ? jobs[i].begin + per : n;
        jobs[i].status = FC_OK;
        started[i] = 0;
    }
    /* job 0 runs on the calling thread; a job whose thread cannot start runs here too */
    for (int i = 1; i < t; i++) {
        if (jobs[i].begin >= jobs[i].end) continue;
        started[i] = pthread_create(&tids[i], NULL, run_job, &jobs[i]) == 0;
    }
    run_job(&jobs[0]);
    for (int i = 1; i < t; i++) {
        if (jobs[i].begin >= jobs[i].end) continue;
        if (started[i]) pthread_join(tids[i], NULL);
        else run_job(&jobs[i]);
    }
    for (int i = 0; i < t; i++)
        if (jobs[i].status != FC_OK) return jobs[i].status;
    return FC_OK;
}
