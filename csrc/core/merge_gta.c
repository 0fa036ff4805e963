/* merge_gta.c - the task-arithmetic family: task_arithmetic, ties, dare_ties, dare_linear,
 * breadcrumbs, breadcrumbs_ties, della, della_linear.
 *
 * For the N non-base inputs: delta_i = x_i - B; delta_i <- sparsify(delta_i) (top-k
 * magnitude, magnitude outliers, Bernoulli(density), or DELLA's rank-dependent Bernoulli),
 * optionally rescaled (its l1, l2 or linf norm kept); D_i = w_i * delta_i; with sign
 * consensus only the D_i whose sign matches sign(sum D) count; mix = sum D_i (/ sum of the
 * counted w_i if normalize) * lambda; out = B + mix. The work is done in passes over the
 * inputs, never storing a whole delta:
 *   1. top-k thresholds (select.c) for the magnitude sparsifiers,
 *   2. norm partials per fixed block when rescaling,
 *   3. the output pass.
 * Each pass hands out fixed blocks of MG_BLOCK elements to threads and takes a block in
 * tiles of GTA_TILE, so the rows of one tile stay in L1 between the steps of the merge.
 * TIES on a big tensor skips pass 1: its streaming top-k is merge_gta_stream.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fp_convert.h"
#include "merge_gta.h"
#include "rng.h"

void mg_gta_delta_keys(void *vctx, int64_t begin, int64_t n, uint32_t *keys) {
    key_ctx *k = (key_ctx *)vctx;
    float b[8192], x[8192]; /* select.c asks for at most 8192 keys at a time */
    mg_load(k->t->base, k->t->base_dt, begin, n, b);
    mg_load(k->t->in[k->i], k->t->in_dt[k->i], begin, n, x);
    for (int64_t j = 0; j < n; j++) keys[j] = fc_float_key(fabsf(x[j] - b[j]));
}

/* The top k of model kc->i's |delta| keys. With a keys array (NULL: out of memory, keys
 * recomputed in every pass) the keys are computed once, in the selection's first pass,
 * and stored there for its later passes. */
static fc_status select_delta_keys(const mg_tensor *t, key_ctx *kc, uint32_t *keys, int64_t k,
                                   fc_topk *out) {
    if (keys) return mg_select_topk_store(t->ctx, t->numel, k, mg_gta_delta_keys, kc, keys, t->nthreads, out, t->err);
    return mg_select_topk(t->ctx, t->numel, k, mg_gta_delta_keys, kc, t->nthreads, out, t->err);
}

typedef struct {
    float mag;
    int64_t idx;
} ranked;

static int by_magnitude(const void *a, const void *b) {
    const ranked *x = (const ranked *)a, *y = (const ranked *)b;
    if (x->mag != y->mag) return x->mag < y->mag ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* DELLA: per row, keep with probability density - eps + 2 eps * (rank - 1) / (cols - 1),
 * rank of |delta| ascending (ties by index). d holds whole rows starting at element e0. */
static fc_status della_mask(const mg_tensor *t, const gta_ctx *g, int i, int64_t e0,
                            int64_t len, float *d) {
    const fc_merge_model_params *mp = &t->p->models[i];
    int64_t cols = t->cols;
    ranked *r = malloc((size_t)cols * sizeof(ranked));
    if (!r) return FC_ERR_NOMEM;
    for (int64_t row0 = 0; row0 < len; row0 += cols) {
        float *dr = d + row0;
        for (int64_t c = 0; c < cols; c++) r[c] = (ranked){fabsf(dr[c]), c};
        qsort(r, (size_t)cols, sizeof(ranked), by_magnitude);
        for (int64_t rank = 0; rank < cols; rank++) {
            int64_t c = r[rank].idx;
            double norm = cols > 1 ? (double)rank / (double)(cols - 1) : 0.5;
            float p = (float)(mp->density - mp->epsilon + 2.0 * mp->epsilon * norm);
            dr[c] = fcx_keep_or_zero(dr[c], fcx_rng_uniform(g->stream[i], (uint64_t)(e0 + row0 + c)) < p);
        }
    }
    free(r);
    return FC_OK;
}

/* Zero the elements of d[0, len) (element index begin + k) outside the top-k set `keep`,
 * and inside `drop` if given (breadcrumbs). Branch-free, 32-bit compares: vectorises. */
static void keep_topk(int64_t len, int64_t begin, float *restrict d, const fc_topk *keep,
                      const fc_topk *drop) {
    int64_t lk = keep->cut - begin, ld = drop ? drop->cut - begin : -1;
    int32_t cut_k = (int32_t)(lk < -1 ? -1 : lk > len ? len : lk);
    int32_t cut_d = (int32_t)(ld < -1 ? -1 : ld > len ? len : ld);
    uint32_t key_k = keep->key, key_d = drop ? drop->key : UINT32_MAX;
    for (int32_t k = 0; k < (int32_t)len; k++) {
        uint32_t b;
        memcpy(&b, d + k, 4);
        uint32_t key = (b & 0x7fffffffu) | 0x80000000u; /* fc_float_key(|d|) */
        int in_k = (key > key_k) | ((key == key_k) & (k < cut_k));
        int in_d = (key > key_d) | ((key == key_d) & (k < cut_d));
        b &= (uint32_t)0 - (uint32_t)(in_k & !in_d);
        memcpy(d + k, &b, 4);
    }
}

/* The rescale norm's partial over d[0, len): sum |d| (l1), sum d^2 (l2) or max |d| (linf). */
static double norm_part(const float *d, int64_t len, int norm) {
    if (norm == FC_RESCALE_L2) return mg_dot(d, d, len);
    if (norm == FC_RESCALE_L1) return mg_sum_abs(d, len);
    float m = 0.0f;
    for (int64_t k = 0; k < len; k++) m = fabsf(d[k]) > m ? fabsf(d[k]) : m;
    return m;
}

/* Partials of one norm combined: summed, or for linf the maximum. */
static double norm_add(double acc, double part, int norm) {
    return norm == FC_RESCALE_LINF ? (part > acc ? part : acc) : acc + part;
}

/* Loads B into s and the sparsified deltas of model i into s + (i + 1) * len; with part
 * (the stats pass), adds the rescale norm's partials of delta_i and of the kept delta_i to
 * part[2i], part[2i + 1]. */
static fc_status gta_deltas(const mg_tensor *t, const gta_ctx *g, int64_t begin, int64_t len,
                            float *s, double *part) {
    float *b = s;
    mg_load(t->base, t->base_dt, begin, len, b);
    for (int i = 0; i < t->n; i++) {
        float *d = s + (size_t)(i + 1) * len;
        mg_load(t->in[i], t->in_dt[i], begin, len, d);
        for (int64_t k = 0; k < len; k++) d[k] -= b[k];
        int norm = t->p->rescale_norm;
        double all = part ? norm_part(d, len, norm) : 0.0;
        if (!g->active[i]) continue;
        const fc_merge_model_params *mp = &t->p->models[i];
        switch (g->sp) {
        case SP_MAGNITUDE:
        case SP_OUTLIERS:
            if (g->streaming) break; /* band_mark applies the guess instead */
            keep_topk(len, begin, d, &g->keep[i], g->sp == SP_OUTLIERS ? &g->drop[i] : NULL);
            break;
        case SP_RANDOM: {
            float p = (float)mp->density;
            uint64_t stream = g->stream[i];
            uint8_t *m = g->masks ? g->masks + (size_t)i * t->numel + begin : NULL;
            if (m && !part) { /* output pass: the flags drawn by the stats pass */
                for (int64_t k = 0; k < len; k++) d[k] = fcx_keep_or_zero(d[k], m[k]);
            } else if (m) {
                for (int64_t k = 0; k < len; k++) {
                    m[k] = fcx_rng_uniform(stream, (uint64_t)(begin + k)) < p;
                    d[k] = fcx_keep_or_zero(d[k], m[k]);
                }
            } else {
                for (int64_t k = 0; k < len; k++)
                    d[k] = fcx_keep_or_zero(d[k], fcx_rng_uniform(stream, (uint64_t)(begin + k)) < p);
            }
            break;
        }
        case SP_DELLA:
            if (della_mask(t, g, i, begin, len, d) != FC_OK) return FC_ERR_NOMEM;
            break;
        case SP_NONE: break;
        }
        if (part) {
            part[2 * i] = norm_add(part[2 * i], all, norm);
            part[2 * i + 1] = norm_add(part[2 * i + 1], norm_part(d, len, norm), norm);
        }
    }
    return FC_OK;
}

/* The merge of len elements from s (B, then the sparsified deltas, rows of len; the mix,
 * divisor, float64 sum and sign rows follow them); returns where the float32 results are.
 * Model-outer loops without branches, so each vectorises; in the order of the definition:
 * D_i = w_i * (scale_i * delta_i); with consensus only the D_i whose sign matches the
 * elected one count; mix = their sum in model order; out = B + lambda * mix / (their w_i). */
float *mg_gta_output(const mg_tensor *t, const gta_ctx *g, int64_t len, float *s) {
    const fc_merge_params *p = t->p;
    float *b = s, *mix = s + (size_t)(t->n + 1) * len, *div = mix + len;
    double *sum = mg_doubles_at(s, (size_t)(t->n + 3) * len);
    for (int64_t k = 0; k < len; k++) {
        mix[k] = 0.0f;
        div[k] = 0.0f;
    }
    if (g->consensus)
        for (int64_t k = 0; k < len; k++) sum[k] = 0.0;
    for (int i = 0; i < t->n; i++) {
        float *d = s + (size_t)(i + 1) * len, w = (float)p->models[i].weight, sc = g->scale[i];
        if (g->consensus) {
            for (int64_t k = 0; k < len; k++) {
                float ds = d[k] * sc;
                /* float64 election: each product of two floats is exact there, so a sum
                 * that is exactly zero (common with bf16 inputs) is seen as zero */
                sum[k] += (double)w * (double)ds;
                d[k] = w * ds;
            }
        } else {
            for (int64_t k = 0; k < len; k++) d[k] = w * (d[k] * sc);
        }
    }
    float *sign = (float *)(sum + len); /* the elected sign, +1 where the sum is >= 0 */
    if (g->consensus)
        for (int64_t k = 0; k < len; k++) sign[k] = sum[k] >= 0.0 ? 1.0f : -1.0f;
    for (int i = 0; i < t->n; i++) {
        const float *d = s + (size_t)(i + 1) * len;
        float w = (float)p->models[i].weight;
        if (g->consensus) {
            mg_add_agreeing(len, d, sign, 1.0f, w, mix, div);
        } else {
            for (int64_t k = 0; k < len; k++) {
                mix[k] += d[k];
                div[k] += w;
            }
        }
    }
    if (p->normalize) {
        /* the divisor is 1 where it is 0 (consensus) or |div| < 1e-8 (else): bit tests,
         * since a float compare feeding a division would not vectorise */
        uint32_t tiny = fcx_f32_bits(1e-8f);
        for (int64_t k = 0; k < len; k++) {
            uint32_t v = fcx_f32_bits(div[k]);
            uint32_t one = g->consensus ? (v << 1) == 0 : (v & 0x7fffffffu) < tiny;
            div[k] = fcx_bits_f32(one ? 0x3f800000u : v);
        }
        for (int64_t k = 0; k < len; k++) mix[k] /= div[k];
    }
    if (p->lambda != 1.0) {
        float lambda = (float)p->lambda;
        for (int64_t k = 0; k < len; k++) mix[k] *= lambda;
    }
    for (int64_t k = 0; k < len; k++) mix[k] = b[k] + mix[k];
    return mix;
}

fc_status mg_gta_block(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                           float *s, int64_t index) {
    gta_ctx *g = (gta_ctx *)user;
    if (g->streaming && atomic_load(&g->overflow)) return FC_OK; /* merged again anyway */
    double *part = g->stats ? g->partials + (size_t)index * 2 * t->n : NULL;
    for (int i = 0; part && i < 2 * t->n; i++) part[i] = 0.0;
    if (g->streaming)
        for (int i = 0; i < t->n; i++) g->above[(size_t)index * t->n + i] = 0;
    /* the passes run over tiles of the block, whose rows stay in L1 (DELLA ranks whole rows:
     * it takes the block at once); the stats pass sums each block's tiles in order */
    int64_t tile = g->sp == SP_DELLA ? len : GTA_TILE;
    for (int64_t off = 0; off < len; off += tile) {
        int64_t tl = len - off < tile ? len - off : tile;
        if (gta_deltas(t, g, begin + off, tl, s, part) != FC_OK) return FC_ERR_NOMEM;
        if (g->stats) continue;
        if (g->streaming) mg_gta_band_mark(t, g, off, tl, s, index);
        mg_store(t->out, t->out_dt, begin + off, tl, mg_gta_output(t, g, tl, s));
    }
    if (g->streaming) mg_gta_band_set_aside(t, g, begin, len, s);
    return FC_OK;
}

fc_status mg_merge_gta(const mg_tensor *t) {
    const fc_merge_params *p = t->p;
    int n = t->n;
    gta_ctx g = {0};
    uint32_t *keys = NULL; /* |delta| keys of one model at a time; NULL: recomputed */
    switch (p->method) {
    case FC_MERGE_TIES: g.sp = SP_MAGNITUDE; g.consensus = 1; break;
    case FC_MERGE_DARE_TIES: g.sp = SP_RANDOM; g.consensus = 1; break;
    case FC_MERGE_DARE_LINEAR: g.sp = SP_RANDOM; break;
    case FC_MERGE_BREADCRUMBS: g.sp = SP_OUTLIERS; break;
    case FC_MERGE_BREADCRUMBS_TIES: g.sp = SP_OUTLIERS; g.consensus = 1; break;
    case FC_MERGE_DELLA: g.sp = SP_DELLA; g.consensus = 1; break;
    case FC_MERGE_DELLA_LINEAR: g.sp = SP_DELLA; break;
    default: g.sp = SP_NONE; break;
    }
    g.block = MG_BLOCK;
    if (g.sp == SP_DELLA) { /* blocks of whole rows */
        int64_t r = MG_BLOCK / t->cols;
        g.block = (r < 1 ? 1 : r) * t->cols;
    }
    fc_status st = FC_ERR_NOMEM;
    g.active = mg_calloc(t, (size_t)n, sizeof(int));
    g.keep = mg_calloc(t, (size_t)n, sizeof(fc_topk));
    g.drop = mg_calloc(t, (size_t)n, sizeof(fc_topk));
    g.stream = mg_calloc(t, (size_t)n, sizeof(uint64_t));
    g.scale = mg_calloc(t, (size_t)n, sizeof(float));
    if (!g.active || !g.keep || !g.drop || !g.stream || !g.scale) goto done;
    int any_rescale = 0, any_active = 0;
    for (int i = 0; i < n; i++) {
        g.scale[i] = 1.0f;
        g.stream[i] = fcx_rng_stream(p->seed, p->tensor_key, (uint64_t)i);
        g.active[i] = g.sp != SP_NONE && p->models[i].density < 1.0;
        any_active |= g.active[i];
        any_rescale |= g.active[i] && p->rescale;
    }
    if (g.sp == SP_MAGNITUDE && any_active && !any_rescale && t->numel >= MG_SAMPLE_MIN &&
        mg_streaming(t)) {
        int done;
        st = mg_gta_stream(t, &g, &done);
        mg_stream_outcome(t, done);
        if (st != FC_OK || done) goto done;
    }
    keys = g.sp == SP_MAGNITUDE || g.sp == SP_OUTLIERS
                         ? mg_buffer_take(t->ctx, (size_t)t->numel * sizeof(uint32_t)) : NULL;
    for (int i = 0; i < n; i++) {
        const fc_merge_model_params *mp = &p->models[i];
        if (!g.active[i]) continue;
        int64_t N = t->numel;
        key_ctx kc = {t, i};
        if (g.sp == SP_MAGNITUDE) {
            int64_t k = mg_gta_magnitude_k(mp->density, N);
            st = select_delta_keys(t, &kc, keys, k, &g.keep[i]);
            if (st != FC_OK) goto done;
        } else if (g.sp == SP_OUTLIERS) {
            int64_t target = (int64_t)(mp->density * (double)N);
            int64_t n_top = (int64_t)(mp->gamma * (double)N);
            int64_t n_bot = N - target - n_top;
            if (n_bot < 0) {
                n_top += n_bot;
                n_bot = 0;
            }
            st = select_delta_keys(t, &kc, keys, N - n_bot, &g.keep[i]);
            if (st == FC_OK) /* the same keys again: stored by the first selection if kept */
                st = mg_select_topk(t->ctx, N, n_top, keys ? NULL : mg_gta_delta_keys, keys ? (void *)keys : &kc,
                                    t->nthreads, &g.drop[i], t->err);
            if (st != FC_OK) goto done;
        }
    }
    /* keep the random flags for the output pass where they take at most 512 MiB (else draw
     * them again) */
    if (any_rescale && g.sp == SP_RANDOM && (uint64_t)t->numel * (uint64_t)n <= (1u << 29))
        g.masks = mg_buffer_take(t->ctx, (size_t)t->numel * (size_t)n);
    if (any_rescale) {
        int64_t nblocks = (t->numel + g.block - 1) / g.block;
        g.partials = mg_calloc(t, (size_t)nblocks * 2 * (n ? n : 1), sizeof(double));
        if (!g.partials) goto done;
        g.stats = 1;
        st = mg_for_blocks(t, t->numel, g.block, (size_t)(n + 6) * g.block + 2, mg_gta_block, &g);
        if (st != FC_OK) goto done;
        g.stats = 0;
        for (int i = 0; i < n; i++) {
            double all = 0, kept = 0;
            int norm = p->rescale_norm;
            for (int64_t b = 0; b < nblocks; b++) {
                all = norm_add(all, g.partials[(size_t)b * 2 * n + 2 * i], norm);
                kept = norm_add(kept, g.partials[(size_t)b * 2 * n + 2 * i + 1], norm);
            }
            if (norm == FC_RESCALE_L2) {
                all = sqrt(all);
                kept = sqrt(kept);
            }
            if (g.active[i] && all >= 1e-7 && kept >= 1e-7) g.scale[i] = (float)(all / kept);
        }
    }
    st = mg_for_blocks(t, t->numel, g.block, (size_t)(n + 6) * g.block + 2, mg_gta_block, &g);
done:
    mg_buffer_give(t->ctx, keys);
    mg_buffer_give(t->ctx, g.masks);
    free(g.active);
    free(g.keep);
    free(g.drop);
    free(g.stream);
    free(g.scale);
    free(g.partials);
    return st;
}
