/* merge_buffers.c - big working buffers (top-k keys, DARE masks, block scratch) kept between
 * the tensors of one merge. A fresh malloc of 100 MB is an mmap whose pages the kernel
 * faults in and zeroes again for every tensor: for TIES on a 1B-parameter model that is 4 GB
 * of page clearing. Off by default (a single merge_tensors call keeps nothing); the engine
 * turns it on for a merge and off (freeing the buffers) at its end. */
#include <pthread.h>
#include <stdlib.h>

#include "merge_internal.h"

#define SLOTS 16
#define HEADER 64 /* the size lives in front of the buffer; keeps 64-byte alignment */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int keeping;
static void *slots[SLOTS]; /* idle buffers (pointing at the header) */

static size_t size_of(void *h) { return *(size_t *)h; }

void *mg_buffer_take(size_t bytes) {
    void *h = NULL;
    pthread_mutex_lock(&lock);
    int best = -1; /* the smallest idle buffer that is big enough */
    for (int i = 0; i < SLOTS; i++)
        if (slots[i] && size_of(slots[i]) >= bytes &&
            (best < 0 || size_of(slots[i]) < size_of(slots[best])))
            best = i;
    if (best >= 0) {
        h = slots[best];
        slots[best] = NULL;
    }
    pthread_mutex_unlock(&lock);
    if (!h) {
        if (bytes > SIZE_MAX - HEADER || !(h = malloc(bytes + HEADER))) return NULL;
        *(size_t *)h = bytes;
    }
    return (char *)h + HEADER;
}

void mg_buffer_give(void *p) {
    if (!p) return;
    void *h = (char *)p - HEADER;
    pthread_mutex_lock(&lock);
    if (keeping) { /* keep it in a free slot, else in place of a smaller one */
        int put = -1;
        for (int i = 0; i < SLOTS && put < 0; i++)
            if (!slots[i]) put = i;
        for (int i = 0; i < SLOTS && put < 0; i++)
            if (size_of(slots[i]) < size_of(h)) put = i;
        if (put >= 0) {
            void *old = slots[put];
            slots[put] = h;
            h = old;
        }
    }
    pthread_mutex_unlock(&lock);
    free(h);
}

void fc_merge_keep_buffers(int keep) {
    void *old[SLOTS];
    pthread_mutex_lock(&lock);
    keeping = keep != 0;
    for (int i = 0; i < SLOTS; i++) {
        old[i] = keep ? NULL : slots[i];
        if (!keep) slots[i] = NULL;
    }
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < SLOTS; i++) free(old[i]);
}
