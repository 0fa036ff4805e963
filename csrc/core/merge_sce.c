/* merge_sce.c - SCE (FuseChat-2.0: select, calculate, erase) and VaRM (FuseChat-1.0).
 *
 * SCE with T_i = x_i - B:
 *   select:    if select_topk < 1, mask = the k = int(#nonzero(var) * select_topk) positions
 *              of largest population variance of T over the models (exact top-k, ties by
 *              index); select_topk <= 0 masks everything out.
 *   calculate: w_i = mean((mask T_i)^2) / sum_j mean((mask T_j)^2).
 *   erase:     m_i = [sign(T_i) == sign(sum_j T_j)] (zeros never agree).
 *   out = B + sum_i w_i m_i T_i / sum_i w_i m_i.
 * mask_deltas = 1 (mergekit): T_i <- mask T_i before erase and merge, uniform weights when
 * the sum is below 1e-6, divisor clamped to >= 1e-6. mask_deltas = 0 (FuseChat's fork):
 * the mask only feeds the weights, uniform weights when the sum is 0, zero divisor -> 1.
 *
 * VaRM: w_i = mean(T_i^2) / sum_j mean(T_j^2) (uniform if the sum is 0); out = B + sum w_i T_i.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge_internal.h"

typedef struct {
    int masked;        /* a variance mask is in force */
    int mask_none;     /* select_topk <= 0: the mask removes everything */
    fc_topk top;
    int pass;          /* 0: count nonzero variance, 1: weights, 2: output */
    double *partials;  /* per block: pass 0 one count, pass 1 n sums of squares */
    float *w;
} sce_ctx;

/* Loads B into s, T_i into s + (i + 1) * len, and the variance over models into var. */
static void sce_load(const mg_tensor *t, int64_t begin, int64_t len, float *s, float *var) {
    mg_load(t->base, t->base_dt, begin, len, s);
    for (int i = 0; i < t->n; i++) {
        float *d = s + (size_t)(i + 1) * len;
        mg_load(t->in[i], t->in_dt[i], begin, len, d);
        for (int64_t k = 0; k < len; k++) d[k] -= s[k];
    }
    if (!var) return;
    for (int64_t k = 0; k < len; k++) {
        double mean = 0, v = 0;
        for (int i = 0; i < t->n; i++) mean += s[(size_t)(i + 1) * len + k];
        mean /= t->n;
        for (int i = 0; i < t->n; i++) {
            double d = s[(size_t)(i + 1) * len + k] - mean;
            v += d * d;
        }
        var[k] = (float)(v / t->n);
    }
}

static void var_keys(void *vctx, int64_t begin, int64_t n, uint32_t *keys) {
    const mg_tensor *t = (const mg_tensor *)vctx;
    float *s = malloc((size_t)(t->n + 2) * n * sizeof(float));
    if (!s) { /* cannot happen for small chunks in practice; rank nothing then */
        memset(keys, 0, (size_t)n * sizeof(uint32_t));
        return;
    }
    float *var = s + (size_t)(t->n + 1) * n;
    sce_load(t, begin, n, s, var);
    for (int64_t k = 0; k < n; k++) keys[k] = fc_float_key(var[k]);
    free(s);
}

static fc_status sce_block(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                           float *s, int64_t index) {
    sce_ctx *c = (sce_ctx *)user;
    int n = t->n;
    float *var = s + (size_t)(n + 1) * len;
    sce_load(t, begin, len, s, c->masked ? var : NULL);
    if (c->pass == 0) {
        double nz = 0;
        for (int64_t k = 0; k < len; k++) nz += var[k] != 0.0f;
        c->partials[index] = nz;
        return FC_OK;
    }
    /* keep[k]: the position survives the variance mask */
    uint8_t *keep = (uint8_t *)(var + len);
    for (int64_t k = 0; k < len; k++)
        keep[k] = !c->mask_none &&
                  (!c->masked || fc_topk_has(&c->top, fc_float_key(var[k]), begin + k));
    if (c->pass == 1) {
        for (int i = 0; i < n; i++) {
            const float *d = s + (size_t)(i + 1) * len;
            double sq = 0;
            for (int64_t k = 0; k < len; k++)
                if (keep[k]) sq += (double)d[k] * d[k];
            c->partials[(size_t)index * n + i] = sq;
        }
        return FC_OK;
    }
    int mask_deltas = t->p->mask_deltas;
    float *out = var; /* var is no longer needed */
    for (int64_t k = 0; k < len; k++) {
        double sum = 0.0; /* float64: a sum that is exactly zero is seen as zero */
        int zero = mask_deltas && !keep[k];
        for (int i = 0; i < n; i++) sum += zero ? 0.0 : (double)s[(size_t)(i + 1) * len + k];
        float num = 0.0f, den = 0.0f;
        for (int i = 0; i < n; i++) {
            float d = zero ? 0.0f : s[(size_t)(i + 1) * len + k];
            int agree = sum >= 0.0 ? d > 0.0f : d < 0.0f;
            if (!agree) continue;
            num += c->w[i] * d;
            den += c->w[i];
        }
        if (mask_deltas) den = den < 1e-6f ? 1e-6f : den;
        else if (den == 0.0f) den = 1.0f;
        out[k] = s[k] + num / den;
    }
    mg_store(t->out, t->out_dt, begin, len, out);
    return FC_OK;
}

/* Turn per-block sums of squares into normalised weights. */
static void weights_from_partials(const mg_tensor *t, const double *partials, int64_t nblocks,
                                  double uniform_below, float *w) {
    int n = t->n;
    double total = 0;
    double *sq = calloc((size_t)n, sizeof(double));
    if (!sq) { /* n doubles: fall back to uniform rather than fail */
        for (int i = 0; i < n; i++) w[i] = 1.0f / n;
        return;
    }
    for (int64_t b = 0; b < nblocks; b++)
        for (int i = 0; i < n; i++) sq[i] += partials[(size_t)b * n + i];
    for (int i = 0; i < n; i++) total += sq[i] / (double)t->numel;
    for (int i = 0; i < n; i++)
        w[i] = fabs(total) < uniform_below || total == 0
                   ? 1.0f / n : (float)(sq[i] / (double)t->numel / total);
    free(sq);
}

fc_status mg_merge_sce(const mg_tensor *t) {
    const fc_merge_params *p = t->p;
    int n = t->n;
    size_t scratch = (size_t)(n + 3) * MG_BLOCK;
    int64_t nblocks = (t->numel + MG_BLOCK - 1) / MG_BLOCK;
    sce_ctx c = {0};
    c.masked = p->select_topk < 1.0 && p->select_topk > 0.0;
    c.mask_none = p->select_topk <= 0.0;
    c.partials = mg_calloc(t, (size_t)nblocks * n, sizeof(double));
    c.w = mg_calloc(t, (size_t)n, sizeof(float));
    fc_status st = FC_ERR_NOMEM;
    if (!c.partials || !c.w) goto done;
    if (c.masked) {
        c.pass = 0;
        st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, sce_block, &c);
        if (st != FC_OK) goto done;
        double nz = 0;
        for (int64_t b = 0; b < nblocks; b++) nz += c.partials[b];
        int64_t k = (int64_t)(nz * p->select_topk);
        if (k == 0) c.mask_none = 1;
        else if ((st = fc_select_topk(t->numel, k, var_keys, (void *)t, t->nthreads, &c.top,
                                      t->err)) != FC_OK)
            goto done;
    }
    c.pass = 1;
    st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, sce_block, &c);
    if (st != FC_OK) goto done;
    weights_from_partials(t, c.partials, nblocks, p->mask_deltas ? 1e-6 : 0.0, c.w);
    c.pass = 2;
    st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, sce_block, &c);
done:
    free(c.partials);
    free(c.w);
    return st;
}

/* VaRM: weights from mean squared deltas (the SCE weight pass with no mask), then
 * out = B + sum w_i T_i, i.e. a combination with coefficients w_i on x_i and 1 - sum w on B. */
fc_status mg_merge_varm(const mg_tensor *t) {
    int n = t->n;
    int64_t nblocks = (t->numel + MG_BLOCK - 1) / MG_BLOCK;
    sce_ctx c = {0};
    c.pass = 1;
    c.partials = mg_calloc(t, (size_t)nblocks * n, sizeof(double));
    c.w = mg_calloc(t, (size_t)n, sizeof(float));
    float *coef = mg_calloc(t, (size_t)n + 1, sizeof(float));
    fc_status st = FC_ERR_NOMEM;
    if (c.partials && c.w && coef) {
        st = mg_for_blocks(t, t->numel, MG_BLOCK, (size_t)(n + 3) * MG_BLOCK, sce_block, &c);
        if (st == FC_OK) {
            weights_from_partials(t, c.partials, nblocks, 0.0, c.w);
            float rest = 1.0f;
            for (int i = 0; i < n; i++) {
                coef[i] = c.w[i];
                rest -= c.w[i];
            }
            coef[n] = rest;
            st = mg_combine(t, MG_FLAT, coef);
        }
    }
    free(c.partials);
    free(c.w);
    free(coef);
    return st;
}
