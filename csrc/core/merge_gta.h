/* merge_gta.h - what the exact task-arithmetic passes (merge_gta.c) and the streaming TIES
 * top-k (merge_gta_stream.c) share: the merge state of one tensor and the block passes.
 * Internal to the merge component. */
#ifndef FC_MERGE_GTA_H
#define FC_MERGE_GTA_H

#include <stdatomic.h>

#include "merge_internal.h"

typedef enum { SP_NONE, SP_MAGNITUDE, SP_OUTLIERS, SP_RANDOM, SP_DELLA } sparsifier;

#define GTA_TILE 512 /* elements the passes take at a time: (n + 6) rows of a tile fit in L1 */

typedef struct {
    sparsifier sp;
    int consensus, stats;
    int *active;           /* density < 1: this model is sparsified */
    fc_topk *keep, *drop;  /* magnitude: keep; outliers: keep minus drop */
    uint64_t *stream;
    uint8_t *masks;        /* random masks with rescaling: the keep flags the stats pass drew,
                            * [i * numel + e], so the output pass need not draw them again */
    float *scale;          /* rescale factor per model */
    double *partials;      /* stats pass: [block][2n] = the rescale norm's partial (sum |x|,
                            * sum x^2 or max |x|) of delta and of the kept delta */
    int64_t block;
    /* streaming top-k: the band of each model, keys above hi per [block * n + i], and the
     * set-aside elements r (in no particular order): element index rec_idx[r], B at
     * rec_val[r], raw delta_i at rec_val[(i + 1) * rec_cap + r] */
    int streaming;
    uint32_t *lo, *mid, *hi; /* mid: the sample's guess, the provisional threshold */
    int64_t *above, *rec_idx;
    float *rec_val;
    int64_t rec_cap;
    atomic_int_fast64_t rec_used;
    atomic_int overflow;   /* more set-aside elements than rec_cap: streaming abandoned */
} gta_ctx;

typedef struct {
    const mg_tensor *t;
    int i;
} key_ctx;

/* TIES keeps the int(density * n) largest |delta|, and at least one element of a model it
 * sparsifies (density < 1), as mergekit 0.1.5 does: a small tensor (a norm) at a low
 * density keeps its largest delta instead of none. */
static inline int64_t mg_gta_magnitude_k(double density, int64_t numel) {
    int64_t k = (int64_t)(density * (double)numel);
    return k < 1 && numel > 0 ? 1 : k;
}

/* fc_key_fn: the |delta| keys of model ((key_ctx *)ctx)->i (merge_gta.c). */
void mg_gta_delta_keys(void *ctx, int64_t begin, int64_t n, uint32_t *keys);
/* The merge of len elements from s (B, then the sparsified deltas); returns where the
 * float32 results are (merge_gta.c). */
float *mg_gta_output(const mg_tensor *t, const gta_ctx *g, int64_t len, float *s);
/* One block of the stats or output pass (an mg_block_fn over gta_ctx; merge_gta.c). */
fc_status mg_gta_block(const mg_tensor *t, void *user, int64_t begin, int64_t len, float *s,
                       int64_t index);

/* Streaming TIES (merge_gta_stream.c). band_mark: one tile of the output pass applies the
 * sampled guesses; band_set_aside: the block's flagged elements set aside. */
void mg_gta_band_mark(const mg_tensor *t, gta_ctx *g, int64_t off, int64_t len, float *s,
                      int64_t index);
void mg_gta_band_set_aside(const mg_tensor *t, gta_ctx *g, int64_t begin, int64_t len, float *s);
/* The streaming merge of a TIES tensor; *done = 1 when the output is complete; 0 when the
 * caller must run the exact passes. */
fc_status mg_gta_stream(const mg_tensor *t, gta_ctx *g, int *done);

#endif
