/* merge_arcee.c - arcee_fusion (mergekit 0.1.5's "Arcee Fusion"): the base B and one model
 * X; the elements of the delta d = X - B whose importance is an outlier are fused into B.
 *   per row r (last dimension; a 1-D tensor is one row), in float64:
 *     p = softmax(X_r), q = softmax(B_r), KL_r = sum_j p_j (log p_j - log q_j)
 *       = sum_j p_j (d_j - (lse(X_r) - lse(B_r)))
 *   importance  s = |d| * |KL_r|, in float32 (|KL_r| rounded to float32 first)
 *   Q1, median, Q3: quantiles of s over the tensor, linear interpolation between order
 *     statistics (position (n - 1) q, as numpy and torch.quantile), in float64
 *   threshold   T = median + 1.5 (Q3 - Q1)          (Tukey's fence)
 *   out = B + [s > T] d
 * Passes: the row divergences (one per row), the importance keys (kept, 4 bytes an element),
 * six order statistics by the O(n) histogram selection (select.c), the output. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge_internal.h"

#define ARCEE_FENCE 1.5

typedef struct {
    float *kl;        /* [rows] |KL_r| as float32 */
    uint32_t *keys;   /* [numel] the bits of the float32 importance (>= 0: ordered as uint32) */
    double thresh;
    int pass;         /* 0: divergences, 1: keys, 2: output */
} arcee_ctx;

/* log-sum-exp of v[0..len), in float64 */
static double lse(const float *v, int64_t len) {
    double mx = -INFINITY, s = 0.0;
    for (int64_t k = 0; k < len; k++)
        if (v[k] > mx) mx = v[k];
    if (!isfinite(mx)) return mx;
    for (int64_t k = 0; k < len; k++) s += exp((double)v[k] - mx);
    return mx + log(s);
}

/* pass 0 runs one row per call (block = cols); passes 1 and 2 run MG_BLOCK elements. */
static fc_status arcee_block(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                             float *s, int64_t index) {
    arcee_ctx *a = (arcee_ctx *)user;
    float *b = s, *x = s + len;
    mg_load(t->base, t->base_dt, begin, len, b);
    mg_load(t->in[0], t->in_dt[0], begin, len, x);
    if (a->pass == 0) {
        double lx = lse(x, len), lb = lse(b, len), shift = lx - lb, kl = 0.0;
        for (int64_t k = 0; k < len; k++)
            kl += exp((double)x[k] - lx) * (((double)x[k] - (double)b[k]) - shift);
        a->kl[index] = (float)fabs(kl);
        return FC_OK;
    }
    for (int64_t k = 0; k < len; k++) {
        int64_t e = begin + k;
        float d = x[k] - b[k];
        if (a->pass == 1) {
            float imp = fabsf(d) * a->kl[e / t->cols];
            uint32_t bits;
            memcpy(&bits, &imp, sizeof bits);
            a->keys[e] = bits;
        } else {
            float imp;
            memcpy(&imp, &a->keys[e], sizeof imp);
            b[k] += (double)imp > a->thresh ? d : 0.0f;
        }
    }
    if (a->pass == 2) mg_store(t->out, t->out_dt, begin, len, b);
    return FC_OK;
}

/* the value of order statistic `i` (0-based, ascending) of keys[n] */
static fc_status order_stat(const mg_tensor *t, const uint32_t *keys, int64_t i, double *v) {
    uint32_t key;
    fc_status st = mg_select_topk_key(t->ctx, t->numel, t->numel - i, keys, t->nthreads, &key,
                                      t->err);
    float f;
    memcpy(&f, &key, sizeof f);
    *v = f;
    return st;
}

/* numpy's / torch.quantile's linear interpolation at q */
static fc_status quantile(const mg_tensor *t, const uint32_t *keys, double q, double *v) {
    double pos = (double)(t->numel - 1) * q, lo_v, hi_v;
    int64_t lo = (int64_t)floor(pos);
    double frac = pos - (double)lo;
    fc_status st = order_stat(t, keys, lo, &lo_v);
    if (st != FC_OK) return st;
    hi_v = lo_v;
    if (frac > 0.0 && lo + 1 < t->numel && (st = order_stat(t, keys, lo + 1, &hi_v)) != FC_OK)
        return st;
    *v = lo_v + frac * (hi_v - lo_v);
    return FC_OK;
}

fc_status mg_merge_arcee_fusion(const mg_tensor *t) {
    arcee_ctx a = {0};
    a.kl = mg_calloc(t, (size_t)t->rows, sizeof(float));
    if (!a.kl) return FC_ERR_NOMEM;
    a.keys = mg_buffer_take(t->ctx, (size_t)t->numel * sizeof(uint32_t));
    fc_status st = FC_OK;
    if (!a.keys) {
        free(a.kl);
        return fc_error_set(t->err, FC_ERR_NOMEM, "arcee_fusion: %lld importance keys do not fit "
                            "in memory", (long long)t->numel);
    }
    st = mg_for_blocks(t, t->numel, t->cols, 2 * (size_t)t->cols, arcee_block, &a);
    a.pass = 1;
    if (st == FC_OK) st = mg_for_blocks(t, t->numel, MG_BLOCK, 2 * MG_BLOCK, arcee_block, &a);
    double q1 = 0, med = 0, q3 = 0;
    if (st == FC_OK) st = quantile(t, a.keys, 0.25, &q1);
    if (st == FC_OK) st = quantile(t, a.keys, 0.5, &med);
    if (st == FC_OK) st = quantile(t, a.keys, 0.75, &q3);
    a.thresh = med + ARCEE_FENCE * (q3 - q1);
    a.pass = 2;
    if (st == FC_OK) st = mg_for_blocks(t, t->numel, MG_BLOCK, 2 * MG_BLOCK, arcee_block, &a);
    mg_buffer_give(t->ctx, a.keys);
    free(a.kl);
    return st;
}
