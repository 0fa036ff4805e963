/* merge_sample.c - where a top-k threshold probably lies, from a sample of the keys.
 *
 * An exact top-k needs the whole tensor before its first output element; computing the
 * threshold first costs a pass over the inputs. Instead the streaming kernels look at a
 * small sample, take a band of keys around the sample's quantile that holds the true
 * threshold with overwhelming probability, and finish in one pass: elements outside the
 * band are decided at once, those inside are kept aside and decided exactly afterwards.
 * When the band misses (the callers check with exact counts), they fall back to the exact
 * multi-pass path, so the result never depends on the sample, only the speed does. */
#include <math.h>
#include <string.h>

#include "merge_internal.h"

/* Evenly spread runs: contiguous (cheap to load) but many (rows of a matrix differ). */
#define SAMPLE_RUNS (MG_SAMPLE_SIZE / MG_SAMPLE_RUN)

/* LSD radix sort of n keys, ascending, in three 11-bit passes (keys end up in keys). */
static void sort_keys(uint32_t *keys, uint32_t *tmp, int64_t n) {
    uint32_t *src = keys, *dst = tmp;
    for (int shift = 0; shift < 33; shift += 11) {
        int64_t count[2049] = {0};
        for (int64_t i = 0; i < n; i++) count[((src[i] >> shift) & 2047u) + 1]++;
        for (int b = 0; b < 2048; b++) count[b + 1] += count[b];
        for (int64_t i = 0; i < n; i++) dst[count[(src[i] >> shift) & 2047u]++] = src[i];
        uint32_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != keys) memcpy(keys, src, (size_t)n * sizeof(uint32_t));
}

void mg_sample_keys(int64_t numel, fc_key_fn fn, void *ctx, uint32_t *keys, uint32_t *tmp) {
    for (int64_t r = 0; r < SAMPLE_RUNS; r++) {
        /* run r centred in the r-th of SAMPLE_RUNS equal slices (numel >= MG_SAMPLE_MIN) */
        int64_t begin = (2 * r + 1) * numel / (2 * SAMPLE_RUNS) - MG_SAMPLE_RUN / 2;
        fn(ctx, begin, MG_SAMPLE_RUN, keys + r * MG_SAMPLE_RUN);
    }
    sort_keys(keys, tmp, MG_SAMPLE_SIZE);
}

void mg_sample_band(const uint32_t *sorted, double rank, double sd, uint32_t *lo, uint32_t *hi) {
    /* 8 standard deviations: a miss costs a second pass, never a wrong result */
    double margin = 8.0 * sd + 4.0;
    double top = (double)MG_SAMPLE_SIZE - rank + margin; /* ascending index of hi */
    double bottom = (double)MG_SAMPLE_SIZE - rank - margin;
    *hi = top >= MG_SAMPLE_SIZE - 1 ? UINT32_MAX : sorted[(int64_t)ceil(top < 0 ? 0 : top)];
    *lo = bottom <= 0 ? 0 : sorted[(int64_t)floor(bottom > MG_SAMPLE_SIZE - 1 ? MG_SAMPLE_SIZE - 1 : bottom)];
}

double mg_sample_fraction(const uint32_t *sorted, uint32_t lo, uint32_t hi) {
    int64_t in = 0;
    for (int64_t i = 0; i < MG_SAMPLE_SIZE; i++) in += sorted[i] >= lo && sorted[i] <= hi;
    return (double)in / MG_SAMPLE_SIZE;
}
