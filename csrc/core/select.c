/* select.c - exact top-k selection in O(n) by a two-level 16-bit radix histogram.
 *
 * Keys come from a callback (the merge kernels compute |delta| or a variance on the fly, so
 * nothing of size n is ever stored). Pass 1 counts the high 16 bits, which fixes the
 * bucket holding the k-th largest key; pass 2 counts the low 16 bits inside that bucket,
 * which fixes the k-th key itself. If that key is tied, pass 3 counts the tied elements per
 * fixed block and finds the element index at which the quota is used up: ties go to the
 * lower index, so the result is unique and independent of the thread count. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "fusechat.h"
#include "merge_internal.h" /* mg_buffer_take: histograms reused between calls */

#define SEL_CHUNK 8192
#define SEL_BLOCK 65536 /* the unit of work handed to threads; fixed, not per thread */

/* The keys of [e, e + len): straight from the array when the caller stored them (fn NULL,
 * ctx the array), else computed into buf. */
static const uint32_t *keys_at(fc_key_fn fn, void *ctx, int64_t e, int64_t len, uint32_t *buf) {
    if (!fn) return (const uint32_t *)ctx + e;
    fn(ctx, e, len, buf);
    return buf;
}

typedef struct {
    fc_key_fn fn;
    void     *ctx;
    int64_t   n, nblocks;
    int       level;     /* 0: high 16 bits; 1: low bits under prefix */
    uint32_t  prefix;    /* high 16 bits fixed in pass 1 */
    uint32_t  key;       /* the k-th key, for pass 3 */
    uint64_t *hists;     /* one 65536-bin histogram per worker */
    uint32_t *subs;      /* SEL_LANES 32-bit sub-histograms per worker */
    uint32_t *store;     /* mg_select_topk_store: pass 1 computes the keys into it, the
                          * later passes read them there */
    int64_t  *counts;    /* pass 3: tied elements per block */
    atomic_int_fast64_t next; /* blocks are handed out dynamically to the workers */
    fc_merge_ctx *pool; /* where histogram buffers are kept (NULL: none) */
} sel_ctx;

#define SEL_LANES 4 /* interleaved sub-histograms (see sel_hist_worker) */

/* Adds the worker's sub-histograms into its total and clears them. */
static void sel_flush(uint32_t *sub, uint64_t *h) {
    for (int b = 0; b < 65536; b++) {
        uint64_t sum = 0;
        for (int l = 0; l < SEL_LANES; l++) {
            sum += sub[(size_t)l * 65536 + b];
            sub[(size_t)l * 65536 + b] = 0;
        }
        h[b] += sum;
    }
}

/* Worker w: histograms the blocks it takes into its own histogram (counts add up the same
 * whichever worker took a block). Neighbouring keys often fall in the same bin (|delta|
 * values cluster in a few exponents), and increments of one counter are a serial chain
 * through memory; four sub-histograms, element i going to sub-histogram i % 4, make four
 * independent chains. They count in 32 bits and are flushed into the 64-bit total before
 * they could overflow. */
static fc_status sel_hist_worker(void *vctx, int64_t w, int64_t w_end) {
    (void)w_end;
    sel_ctx *c = (sel_ctx *)vctx;
    uint32_t buf[SEL_CHUNK];
    uint64_t *h = c->hists + (size_t)w * 65536;
    uint32_t *sub = c->subs + (size_t)w * SEL_LANES * 65536;
    uint32_t *s0 = sub, *s1 = sub + 65536, *s2 = sub + 2 * 65536, *s3 = sub + 3 * 65536;
    uint32_t prefix = c->prefix;
    int64_t counted = 0; /* elements counted by the sub-histograms since the last flush */
    for (;;) {
        int64_t b = atomic_fetch_add(&c->next, 1);
        if (b >= c->nblocks) break;
        int64_t b0 = b * SEL_BLOCK, b1 = b0 + SEL_BLOCK < c->n ? b0 + SEL_BLOCK : c->n;
        if (counted + SEL_BLOCK > (int64_t)UINT32_MAX) {
            sel_flush(sub, h);
            counted = 0;
        }
        counted += b1 - b0;
        for (int64_t e = b0; e < b1; e += SEL_CHUNK) {
            int64_t len = b1 - e < SEL_CHUNK ? b1 - e : SEL_CHUNK, i = 0;
            const uint32_t *k = c->store ? c->store + e : keys_at(c->fn, c->ctx, e, len, buf);
            if (c->store && c->level == 0) c->fn(c->ctx, e, len, c->store + e);
            if (c->level == 0) {
                for (; i + 4 <= len; i += 4) {
                    s0[k[i] >> 16]++;
                    s1[k[i + 1] >> 16]++;
                    s2[k[i + 2] >> 16]++;
                    s3[k[i + 3] >> 16]++;
                }
                for (; i < len; i++) s0[k[i] >> 16]++;
            } else { /* few keys fall under the prefix: compare 16 at a time (vectorises),
                      * count the matches by their bits */
                for (; i + 16 <= len; i += 16) {
                    uint32_t hits = 0;
                    for (int j = 0; j < 16; j++) hits |= (uint32_t)((k[i + j] >> 16) == prefix) << j;
                    for (; hits; hits &= hits - 1) s0[k[i + __builtin_ctz(hits)] & 0xffffu]++;
                }
                for (; i < len; i++)
                    if ((k[i] >> 16) == prefix) s0[k[i] & 0xffffu]++;
            }
        }
    }
    sel_flush(sub, h);
    return FC_OK;
}

static fc_status sel_tie_worker(void *vctx, int64_t w, int64_t w_end) {
    (void)w;
    (void)w_end;
    sel_ctx *c = (sel_ctx *)vctx;
    uint32_t buf[SEL_CHUNK];
    for (;;) {
        int64_t r = atomic_fetch_add(&c->next, 1);
        if (r >= c->nblocks) break;
        int64_t b0 = r * SEL_BLOCK, b1 = b0 + SEL_BLOCK < c->n ? b0 + SEL_BLOCK : c->n;
        int64_t cnt = 0;
        for (int64_t e = b0; e < b1; e += SEL_CHUNK) {
            int64_t len = b1 - e < SEL_CHUNK ? b1 - e : SEL_CHUNK;
            const uint32_t *k = c->store ? c->store + e : keys_at(c->fn, c->ctx, e, len, buf);
            for (int64_t i = 0; i < len; i++) cnt += k[i] == c->key;
        }
        c->counts[r] = cnt;
    }
    return FC_OK;
}

static int sel_workers(const sel_ctx *c, int nthreads) {
    if (nthreads <= 0) nthreads = fc_default_threads();
    return c->nblocks < nthreads ? (int)c->nblocks : nthreads;
}

/* Histogram all elements at c->level; returns the summed histogram in hist[65536]. */
static fc_status sel_histogram(sel_ctx *c, int nthreads, uint64_t *hist, fc_error *err) {
    int workers = sel_workers(c, nthreads);
    size_t per_worker = 65536 * (sizeof(uint64_t) + SEL_LANES * sizeof(uint32_t));
    void *mem = mg_buffer_take(c->pool, (size_t)workers * per_worker);
    if (!mem) return fc_error_set(err, FC_ERR_NOMEM, "top-k select: out of memory");
    memset(mem, 0, (size_t)workers * per_worker);
    c->hists = (uint64_t *)mem;
    c->subs = (uint32_t *)(c->hists + (size_t)workers * 65536);
    atomic_store(&c->next, 0);
    fc_parallel_for(workers, 1, workers, sel_hist_worker, c);
    memset(hist, 0, 65536 * sizeof(uint64_t));
    for (int w = 0; w < workers; w++)
        for (int b = 0; b < 65536; b++) hist[b] += c->hists[(size_t)w * 65536 + b];
    mg_buffer_give(c->pool, mem);
    c->hists = NULL;
    c->subs = NULL;
    return FC_OK;
}

/* The bucket, scanning from the top, in which the k-th element falls; *above = elements in
 * higher buckets. */
static uint32_t sel_bucket(const uint64_t *hist, int64_t k, int64_t *above) {
    int64_t acc = 0;
    for (int b = 65535; b >= 0; b--) {
        if (acc + (int64_t)hist[b] >= k) {
            *above = acc;
            return (uint32_t)b;
        }
        acc += (int64_t)hist[b];
    }
    *above = acc;
    return 0;
}

/* fc_select_topk; with store, the keys are computed once (fused with the first histogram
 * pass) into store[n], which later passes, and the caller afterwards, read. */
static fc_status select_topk(fc_merge_ctx *pool, int64_t n, int64_t k, fc_key_fn fn, void *ctx,
                             uint32_t *store, int with_cut, int nthreads, fc_topk *out,
                             fc_error *err) {
    if (store && (k <= 0 || k >= n)) { /* no histogram pass: the keys are still wanted */
        for (int64_t e = 0; e < n; e += SEL_CHUNK) fn(ctx, e, n - e < SEL_CHUNK ? n - e : SEL_CHUNK, store + e);
    }
    if (k <= 0) { /* nothing: no key exceeds UINT32_MAX and no index is below 0 */
        out->key = UINT32_MAX;
        out->cut = 0;
        return FC_OK;
    }
    if (k >= n) {
        out->key = 0;
        out->cut = n;
        return FC_OK;
    }
    uint64_t *hist = malloc(65536 * sizeof(uint64_t));
    if (!hist) return fc_error_set(err, FC_ERR_NOMEM, "top-k select: out of memory");
    sel_ctx c = {.fn = fn, .ctx = ctx, .n = n, .level = 0, .store = store, .pool = pool};
    c.nblocks = (n + SEL_BLOCK - 1) / SEL_BLOCK;
    fc_status st = sel_histogram(&c, nthreads, hist, err);
    if (st != FC_OK) goto done;
    int64_t above_hi, above_lo;
    c.prefix = sel_bucket(hist, k, &above_hi);
    c.level = 1;
    st = sel_histogram(&c, nthreads, hist, err);
    if (st != FC_OK) goto done;
    uint32_t lo = sel_bucket(hist, k - above_hi, &above_lo);
    c.key = (c.prefix << 16) | lo;
    int64_t quota = k - above_hi - above_lo; /* tied elements to keep, lowest index first */
    out->key = c.key;
    if (quota >= (int64_t)hist[lo] || !with_cut) {
        out->cut = n;
        goto done;
    }
    int64_t blocks = c.nblocks;
    c.counts = malloc((size_t)blocks * sizeof(int64_t));
    if (!c.counts) {
        st = fc_error_set(err, FC_ERR_NOMEM, "top-k select: out of memory");
        goto done;
    }
    atomic_store(&c.next, 0);
    fc_parallel_for(sel_workers(&c, nthreads), 1, sel_workers(&c, nthreads), sel_tie_worker, &c);
    int64_t b = 0;
    while (b < blocks && quota > c.counts[b]) quota -= c.counts[b++];
    /* the quota-th tied element lies in block b (quota >= 1 here is guaranteed by
     * quota < total ties; quota == 0 means the cut is at the block's start) */
    int64_t cut = b * SEL_BLOCK;
    if (quota > 0) {
        uint32_t buf[SEL_CHUNK];
        int64_t b1 = cut + SEL_BLOCK < n ? cut + SEL_BLOCK : n;
        for (int64_t e = cut; e < b1 && quota > 0; e += SEL_CHUNK) {
            int64_t len = b1 - e < SEL_CHUNK ? b1 - e : SEL_CHUNK;
            const uint32_t *k = store ? store + e : keys_at(fn, ctx, e, len, buf);
            for (int64_t i = 0; i < len; i++)
                if (k[i] == c.key && --quota == 0) {
                    cut = e + i + 1;
                    break;
                }
        }
    }
    out->cut = cut;
    free(c.counts);
done:
    free(hist);
    return st;
}

fc_status fc_select_topk(int64_t n, int64_t k, fc_key_fn fn, void *ctx, int nthreads,
                         fc_topk *out, fc_error *err) {
    return select_topk(NULL, n, k, fn, ctx, NULL, 1, nthreads, out, err);
}

fc_status mg_select_topk(fc_merge_ctx *pool, int64_t n, int64_t k, fc_key_fn fn, void *ctx,
                         int nthreads, fc_topk *out, fc_error *err) {
    return select_topk(pool, n, k, fn, ctx, NULL, 1, nthreads, out, err);
}

fc_status mg_select_topk_store(fc_merge_ctx *pool, int64_t n, int64_t k, fc_key_fn fn, void *ctx,
                               uint32_t *store, int nthreads, fc_topk *out, fc_error *err) {
    return select_topk(pool, n, k, fn, ctx, store, 1, nthreads, out, err);
}

fc_status mg_select_topk_key(fc_merge_ctx *pool, int64_t n, int64_t k, const uint32_t *keys,
                             int nthreads, uint32_t *key, fc_error *err) {
    fc_topk out;
    fc_status st = select_topk(pool, n, k, NULL, (void *)keys, NULL, 0, nthreads, &out, err);
    *key = out.key;
    return st;
}
