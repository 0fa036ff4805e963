/* merge_ram.c - Reinforced Agent Merging (ram) and its tensor-local variant (ramplus_tl),
 * elementwise over the task vectors T_i = x_i - B:
 *   active_i = |T_i| > epsilon; c = the number of active models at the position;
 *   ram:        out = B + sum_i active_i T_i * (c == 1 ? 1 : 1 / c)   (c = 0 keeps B)
 *   ramplus_tl: a model's unique contributions (c == 1) are scaled by
 *               lambda_i = 1 + r * clamp(rho_i, 0, alpha), with
 *               rho_i = #(active_i, c > 1) / max(#(active_i, c == 1), epsilon) counted over
 *               the whole tensor (a first pass), so they boost the models whose updates
 *               mostly overlap with others'. */
#include <math.h>
#include <stdlib.h>

#include "merge_internal.h"

typedef struct {
    int counting;      /* first pass of ramplus_tl: counts only */
    int64_t *counts;   /* [block][i][2]: positions where model i is active and shared, unique */
    float *lambda;     /* per model: the factor of its unique contributions */
} ram_ctx;

/* s: B, then the n task vectors, then the active counts c, rows of len floats. */
static fc_status ram_block(const mg_tensor *t, void *user, int64_t begin, int64_t len, float *s,
                           int64_t index) {
    ram_ctx *r = (ram_ctx *)user;
    int n = t->n;
    float eps = (float)t->p->active_eps, *b = s, *c = s + (size_t)(n + 1) * len;
    mg_load(t->base, t->base_dt, begin, len, b);
    for (int64_t k = 0; k < len; k++) c[k] = 0.0f;
    for (int i = 0; i < n; i++) {
        float *d = s + (size_t)(i + 1) * len;
        mg_load(t->in[i], t->in_dt[i], begin, len, d);
        for (int64_t k = 0; k < len; k++) {
            d[k] -= b[k];
            c[k] += fabsf(d[k]) > eps;
        }
    }
    if (r->counting) {
        int64_t *cnt = r->counts + (size_t)index * n * 2;
        for (int i = 0; i < n; i++) {
            const float *d = s + (size_t)(i + 1) * len;
            int64_t shared = 0, unique = 0;
            for (int64_t k = 0; k < len; k++) {
                int act = fabsf(d[k]) > eps;
                shared += act & (c[k] > 1.0f);
                unique += act & (c[k] == 1.0f);
            }
            cnt[2 * i] = shared;
            cnt[2 * i + 1] = unique;
        }
        return FC_OK;
    }
    float *mix = c + len; /* the sum of the active deltas, unique and shared kept apart */
    for (int64_t k = 0; k < len; k++) mix[k] = 0.0f;
    for (int i = 0; i < n; i++) {
        const float *d = s + (size_t)(i + 1) * len;
        float lam = r->lambda[i];
        for (int64_t k = 0; k < len; k++) {
            float act = fabsf(d[k]) > eps ? d[k] : 0.0f;
            mix[k] += c[k] == 1.0f ? lam * act : act / (c[k] > 1.0f ? c[k] : 1.0f);
        }
    }
    for (int64_t k = 0; k < len; k++) b[k] += mix[k];
    mg_store(t->out, t->out_dt, begin, len, b);
    return FC_OK;
}

fc_status mg_merge_ram(const mg_tensor *t) {
    int n = t->n;
    int64_t nblocks = (t->numel + MG_BLOCK - 1) / MG_BLOCK;
    size_t scratch = (size_t)(n + 3) * MG_BLOCK;
    ram_ctx r = {0, NULL, mg_calloc(t, (size_t)n, sizeof(float))};
    if (!r.lambda) return FC_ERR_NOMEM;
    fc_status st = FC_OK;
    for (int i = 0; i < n; i++) r.lambda[i] = 1.0f;
    if (t->p->method == FC_MERGE_RAMPLUS_TL) {
        r.counts = mg_calloc(t, (size_t)nblocks * n * 2, sizeof(int64_t));
        if (!r.counts) {
            free(r.lambda);
            return FC_ERR_NOMEM;
        }
        r.counting = 1;
        st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, ram_block, &r);
        r.counting = 0;
        for (int i = 0; st == FC_OK && i < n; i++) {
            int64_t shared = 0, unique = 0;
            for (int64_t b = 0; b < nblocks; b++) {
                shared += r.counts[((size_t)b * n + i) * 2];
                unique += r.counts[((size_t)b * n + i) * 2 + 1];
            }
            double den = (double)unique > t->p->active_eps ? (double)unique : t->p->active_eps;
            double rho = den > 0 ? (double)shared / den : 0.0;
            rho = rho < 0 ? 0 : rho > t->p->alpha ? t->p->alpha : rho;
            r.lambda[i] = (float)(1.0 + t->p->r * rho);
        }
    }
    if (st == FC_OK) st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, ram_block, &r);
    free(r.counts);
    free(r.lambda);
    return st;
}
