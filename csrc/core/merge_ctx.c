/* merge_ctx.c - the merge context (fc_merge_ctx): everything a merge keeps between tensor
 * calls, owned by the caller (created with fc_merge_ctx_init, passed to every
 * fc_merge_tensor, freed with fc_merge_ctx_free). No merge state is process-wide: two
 * contexts used at once, in two threads, do not see each other.
 *
 * It holds the instruction set of the hot kernels, the streaming top-k switch, the
 * streaming outcome counters of the tensors merged with it, and the big working buffers
 * (top-k keys, DARE masks, block scratch) kept between the tensors of one merge. A fresh
 * malloc of 100 MB is an mmap whose pages the kernel faults in and zeroes again for every
 * tensor: for TIES on a 1B-parameter model that is 4 GB of page clearing. Keeping is off
 * in a new context; the engine turns it on for its run. A NULL context stands for the
 * defaults (auto, streaming on, nothing kept, nothing counted). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "merge_internal.h"

#define SLOTS 16
#define HEADER 64 /* the size lives in front of the buffer; keeps 64-byte alignment */

struct fc_merge_ctx {
    atomic_int isa;                   /* MG_ISA_*: the choice ("auto" resolved per call) */
    atomic_int streaming;             /* the streaming top-k paths on (1) or off */
    atomic_int_fast64_t outcomes[2];  /* tensors merged in one pass, by the exact passes */
    pthread_mutex_t lock;             /* guards keeping and slots */
    int keeping;
    void *slots[SLOTS];               /* idle buffers (pointing at the header) */
};

fc_merge_ctx *fc_merge_ctx_init(void) {
    fc_merge_ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        return NULL;
    }
    atomic_init(&c->isa, MG_ISA_AUTO);
    atomic_init(&c->streaming, 1);
    atomic_init(&c->outcomes[0], 0);
    atomic_init(&c->outcomes[1], 0);
    return c;
}

void fc_merge_ctx_free(fc_merge_ctx *c) {
    if (!c) return;
    fc_merge_ctx_keep_buffers(c, 0);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- instruction set ---- */

static const char *const isa_names[MG_ISA_COUNT] = {"auto", "portable", "avx2", "avx512"};

static int cpu_has(int isa) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == MG_ISA_AVX2) return __builtin_cpu_supports("avx2");
    if (isa == MG_ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx2");
#endif
    return isa == MG_ISA_AUTO || isa == MG_ISA_PORTABLE;
}

int fc_merge_ctx_set_isa(fc_merge_ctx *c, const char *name) {
    for (int i = 0; c && name && i < MG_ISA_COUNT; i++)
        if (strcmp(name, isa_names[i]) == 0) {
            if (!cpu_has(i)) return -1;
            atomic_store(&c->isa, i);
            return 0;
        }
    return -1;
}

int mg_ctx_isa(const fc_merge_ctx *c) {
    int i = c ? atomic_load(&((fc_merge_ctx *)c)->isa) : MG_ISA_AUTO;
    if (i != MG_ISA_AUTO) return i;
    return cpu_has(MG_ISA_AVX512) ? MG_ISA_AVX512 : cpu_has(MG_ISA_AVX2) ? MG_ISA_AVX2 : MG_ISA_PORTABLE;
}

const char *fc_merge_ctx_isa(const fc_merge_ctx *c) { return isa_names[mg_ctx_isa(c)]; }

/* ---- streaming switch and outcome counters ---- */

void fc_merge_ctx_set_streaming(fc_merge_ctx *c, int on) {
    if (c) atomic_store(&c->streaming, on != 0);
}

int mg_streaming(const mg_tensor *t) {
    return t->ctx ? atomic_load(&t->ctx->streaming) : 1;
}

void mg_stream_outcome(const mg_tensor *t, int streamed) {
    if (t->ctx) atomic_fetch_add(&t->ctx->outcomes[streamed ? 0 : 1], 1);
}

void fc_merge_ctx_stream_counts(const fc_merge_ctx *c, int64_t *streamed, int64_t *fell_back) {
    fc_merge_ctx *m = (fc_merge_ctx *)c; /* atomic_load wants a non-const object */
    *streamed = m ? (int64_t)atomic_load(&m->outcomes[0]) : 0;
    *fell_back = m ? (int64_t)atomic_load(&m->outcomes[1]) : 0;
}

/* ---- working buffers ---- */

static size_t size_of(void *h) { return *(size_t *)h; }

void *mg_buffer_take(fc_merge_ctx *c, size_t bytes) {
    void *h = NULL;
    if (c) {
        pthread_mutex_lock(&c->lock);
        int best = -1; /* the smallest idle buffer that is big enough */
        for (int i = 0; i < SLOTS; i++)
            if (c->slots[i] && size_of(c->slots[i]) >= bytes &&
                (best < 0 || size_of(c->slots[i]) < size_of(c->slots[best])))
                best = i;
        if (best >= 0) {
            h = c->slots[best];
            c->slots[best] = NULL;
        }
        pthread_mutex_unlock(&c->lock);
    }
    if (!h) {
        if (bytes > SIZE_MAX - HEADER || !(h = malloc(bytes + HEADER))) return NULL;
        *(size_t *)h = bytes;
    }
    return (char *)h + HEADER;
}

void mg_buffer_give(fc_merge_ctx *c, void *p) {
    if (!p) return;
    void *h = (char *)p - HEADER;
    if (c) {
        pthread_mutex_lock(&c->lock);
        if (c->keeping) { /* keep it in a free slot, else in place of a smaller one */
            int put = -1;
            for (int i = 0; i < SLOTS && put < 0; i++)
                if (!c->slots[i]) put = i;
            for (int i = 0; i < SLOTS && put < 0; i++)
                if (size_of(c->slots[i]) < size_of(h)) put = i;
            if (put >= 0) {
                void *old = c->slots[put];
                c->slots[put] = h;
                h = old;
            }
        }
        pthread_mutex_unlock(&c->lock);
    }
    free(h);
}

void fc_merge_ctx_keep_buffers(fc_merge_ctx *c, int keep) {
    if (!c) return;
    void *old[SLOTS];
    pthread_mutex_lock(&c->lock);
    c->keeping = keep != 0;
    for (int i = 0; i < SLOTS; i++) {
        old[i] = keep ? NULL : c->slots[i];
        if (!keep) c->slots[i] = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    for (int i = 0; i < SLOTS; i++) free(old[i]);
}
