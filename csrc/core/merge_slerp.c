/* merge_slerp.c - spherical interpolation between two tensors.
 *   slerp (base = v0, input = v1, global t): on the whole flattened tensor,
 *     dot = <v0/|v0|, v1/|v1|> (a norm <= 1e-8 is not divided by);
 *     |dot| > 0.9995: out = (1 - t) v0 + t v1;
 *     else theta = acos(dot), out = (sin((1 - t) theta) v0 + sin(t theta) v1) / sin(theta).
 *   nuslerp (two inputs, optional base; t = w1 / (w0 + w1), 0.5 if |w0 + w1| < 1e-6):
 *     vectors are the whole tensor (nuslerp_flatten), its rows (last dimension) or its
 *     columns (nuslerp_row_wise); with a base the deltas x_i - B are interpolated and B is
 *     added back. cos = <v0, v1> / (max(|v0|, 1e-7) max(|v1|, 1e-7)) clamped to [-1, 1];
 *     lerp only where |sin(theta)| < 1e-8.
 * Both are combinations of the inputs with per-vector coefficients from a Gram matrix. */
#include <math.h>
#include <stdlib.h>

#include "merge_internal.h"

fc_status mg_merge_slerp(const mg_tensor *t) {
    float coef[2] = {0.0f, 1.0f}; /* [x, base] */
    if (t->n == 1) {
        double G[4], tt = t->p->t;
        fc_status st = mg_gram(t, MG_FLAT, 0, 1, G); /* m = 2: index 0 = x, 1 = base */
        if (st != FC_OK) return st;
        double n1 = sqrt(G[0]), n0 = sqrt(G[3]);
        double dot = G[1] / ((n0 > 1e-8 ? n0 : 1.0) * (n1 > 1e-8 ? n1 : 1.0));
        if (fabs(dot) > 0.9995) {
            coef[0] = (float)tt;
            coef[1] = (float)(1.0 - tt);
        } else {
            double th = acos(dot), s = sin(th);
            coef[0] = (float)(sin(tt * th) / s);
            coef[1] = (float)(sin((1.0 - tt) * th) / s);
        }
    }
    return mg_combine(t, MG_FLAT, coef);
}

fc_status mg_merge_nuslerp(const mg_tensor *t) {
    const fc_merge_params *p = t->p;
    double w0 = p->models[0].weight, w1 = p->models[1].weight;
    double tt = fabs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1);
    mg_layout lay = p->nuslerp_flatten || t->ndim < 2 ? MG_FLAT
                    : p->nuslerp_row_wise           ? MG_COLS : MG_ROWS;
    int64_t nvec = mg_vector_count(t, lay);
    double *gram = mg_calloc(t, (size_t)nvec * 4, sizeof(double));
    float *coef = mg_calloc(t, (size_t)nvec * 3, sizeof(float));
    fc_status st = FC_ERR_NOMEM;
    if (gram && coef && (st = mg_gram(t, lay, 1, 0, gram)) == FC_OK) {
        for (int64_t v = 0; v < nvec; v++) {
            const double *G = gram + (size_t)v * 4;
            double n0 = sqrt(G[0]), n1 = sqrt(G[3]);
            double c = G[1] / ((n0 > 1e-7 ? n0 : 1e-7) * (n1 > 1e-7 ? n1 : 1e-7));
            c = c < -1 ? -1 : c > 1 ? 1 : c;
            double th = acos(c), s = sin(th), a0, a1;
            if (fabs(s) < 1e-8) {
                a0 = 1.0 - tt;
                a1 = tt;
            } else {
                a0 = sin((1.0 - tt) * th) / s;
                a1 = sin(tt * th) / s;
            }
            coef[v * 3 + 0] = (float)a0;
            coef[v * 3 + 1] = (float)a1;
            coef[v * 3 + 2] = t->base ? (float)(1.0 - a0 - a1) : 0.0f;
        }
        st = mg_combine(t, lay, coef);
    }
    free(gram);
    free(coef);
    return st;
}
