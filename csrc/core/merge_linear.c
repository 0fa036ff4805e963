/* merge_linear.c - the methods whose output is a combination of the inputs with
 * coefficients known up front or from Gram matrices: linear, passthrough, model_stock;
 * and nearswap (elementwise).
 *   linear:      out = sum w_i x_i (/ sum w_i if normalize)
 *   passthrough: out = scale * x
 *   model_stock: o_i = x_i - B; c = mean over pairs i < j of cos(o_i, o_j) (whole tensor,
 *                or per row if filter_wise); t = N c / (1 + (N - 1) c);
 *                out = t mean(x_i) + (1 - t) B
 *   nearswap:    w = clamp(t / max(|B - x|, 1e-6), 0, 1); out = w x + (1 - w) B */
#include <math.h>
#include <stdlib.h>

#include "merge_internal.h"

fc_status mg_merge_linear(const mg_tensor *t) {
    const fc_merge_params *p = t->p;
    double sum = 0;
    for (int i = 0; i < t->n; i++) sum += p->models[i].weight;
    if (p->normalize && sum == 0.0)
        return fc_error_set_rule(t->err, FC_ERR_VALUE, NULL, "zero_weight_sum",
                                 "linear: the weights sum to 0 and normalize is true");
    float *coef = mg_calloc(t, (size_t)t->n + 1, sizeof(float));
    if (!coef) return FC_ERR_NOMEM;
    for (int i = 0; i < t->n; i++)
        coef[i] = (float)(p->normalize ? p->models[i].weight / sum : p->models[i].weight);
    fc_status st = mg_combine(t, MG_FLAT, coef);
    free(coef);
    return st;
}

fc_status mg_merge_passthrough(const mg_tensor *t) {
    float coef[2] = {(float)t->p->models[0].scale, 0.0f};
    return mg_combine(t, MG_FLAT, coef);
}

fc_status mg_merge_model_stock(const mg_tensor *t) {
    int n = t->n;
    mg_layout lay = t->p->filter_wise ? MG_ROWS : MG_FLAT;
    int64_t nvec = mg_vector_count(t, lay);
    double *gram = mg_calloc(t, (size_t)nvec * n * n, sizeof(double));
    float *coef = mg_calloc(t, (size_t)nvec * (n + 1), sizeof(float));
    fc_status st = FC_ERR_NOMEM;
    if (gram && coef && (st = mg_gram(t, lay, 1, 0, gram)) == FC_OK) {
        for (int64_t v = 0; v < nvec; v++) {
            const double *G = gram + (size_t)v * n * n;
            double c = 0;
            int pairs = 0;
            for (int i = 0; i < n; i++)
                for (int j = i + 1; j < n; j++) {
                    double d = sqrt(G[i * n + i]) * sqrt(G[j * n + j]);
                    double cs = G[i * n + j] / (d > 1e-6 ? d : 1e-6);
                    c += cs < -1 ? -1 : cs > 1 ? 1 : cs;
                    pairs++;
                }
            c /= pairs;
            double tt = n * c / (1.0 + (n - 1) * c);
            for (int i = 0; i < n; i++) coef[(size_t)v * (n + 1) + i] = (float)(tt / n);
            coef[(size_t)v * (n + 1) + n] = (float)(1.0 - tt);
        }
        st = mg_combine(t, lay, coef);
    }
    free(gram);
    free(coef);
    return st;
}

static fc_status nearswap_block(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                                float *s, int64_t index) {
    (void)user;
    (void)index;
    float *b = s, *x = s + len, tt = (float)t->p->t;
    mg_load(t->base, t->base_dt, begin, len, b);
    mg_load(t->in[0], t->in_dt[0], begin, len, x);
    for (int64_t k = 0; k < len; k++) {
        float diff = fabsf(b[k] - x[k]);
        float w = tt / (diff > 1e-6f ? diff : 1e-6f);
        w = w < 0.0f ? 0.0f : w > 1.0f ? 1.0f : w;
        x[k] = w * x[k] + (1.0f - w) * b[k];
    }
    mg_store(t->out, t->out_dt, begin, len, x);
    return FC_OK;
}

fc_status mg_merge_nearswap(const mg_tensor *t) {
    return mg_for_blocks(t, t->numel, MG_BLOCK, 2 * MG_BLOCK, nearswap_block, NULL);
}
