/* merge_sphere.c - means of many tensors on the hypersphere: multislerp and karcher.
 * Both only ever form linear combinations of the inputs, so each is computed from the
 * Gram matrix G_ij = <x_i, x_j> (one pass over the data) and one output pass.
 *
 * multislerp (weights w, optional base subtracted first): n_i = |x_i|, u_i = x_i/(n_i+eps),
 *   w normalised to sum 1 if normalize_weights, m = sum w_i u_i. If |m| < eps: with two
 *   inputs out = w0 x0 + w1 x1, else an error. Otherwise the tangent
 *   T = sum w_i (u_i - <u_i, m^> m^) equals m - |m| m^ = 0 exactly, so
 *   out = m^ cos(eps) * sum w_i n_i (+ B): mergekit's formula with its rounding noise removed.
 * karcher (no weights, alpha = 1/N): iterate u <- exp_u(sum alpha_i theta_i/sin theta_i
 *   (u_i - cos theta_i u)) from the normalised mean of the unit inputs, at most max_iter
 *   times, stopping when the tangent norm is below tol; inputs with norm <= tol are left out
 *   of the iteration; out = (sum_i alpha_i n_i) u. u is kept as coefficients over the x_i. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge_internal.h"

fc_status mg_merge_multislerp(const mg_tensor *t) {
    const fc_merge_params *p = t->p;
    int n = t->n;
    double eps = p->eps, wsum = 0;
    double *G = mg_calloc(t, (size_t)n * n, sizeof(double));
    double *w = mg_calloc(t, (size_t)n, sizeof(double)), *nrm = mg_calloc(t, (size_t)n, sizeof(double));
    float *coef = mg_calloc(t, (size_t)n + 1, sizeof(float));
    fc_status st = FC_ERR_NOMEM;
    if (!G || !w || !nrm || !coef) goto done;
    if ((st = mg_gram(t, MG_FLAT, 1, 0, G)) != FC_OK) goto done;
    for (int i = 0; i < n; i++) wsum += (w[i] = p->models[i].weight);
    if (p->normalize_weights) {
        if (wsum == 0.0) {
            st = fc_error_set_rule(t->err, FC_ERR_VALUE, NULL, "zero_weight_sum",
                                   "multislerp: the weights sum to 0 and normalize_weights is true");
            goto done;
        }
        for (int i = 0; i < n; i++) w[i] /= wsum;
    }
    double m2 = 0, scale = 0, total = 0;
    for (int i = 0; i < n; i++) nrm[i] = sqrt(G[i * n + i]);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            m2 += w[i] * w[j] * G[i * n + j] / ((nrm[i] + eps) * (nrm[j] + eps));
    double mn = sqrt(m2 > 0 ? m2 : 0);
    if (mn < eps) {
        if (n != 2) {
            st = fc_error_set_rule(t->err, FC_ERR_VALUE, NULL, "degenerate_mean",
                                   "multislerp: the weighted mean direction has norm < eps "
                                   "(%g) with %d inputs", eps, n);
            goto done;
        }
        for (int i = 0; i < n; i++) coef[i] = (float)w[i];
    } else {
        for (int i = 0; i < n; i++) scale += w[i] * nrm[i];
        for (int i = 0; i < n; i++)
            coef[i] = (float)(w[i] / (nrm[i] + eps) / mn * cos(eps) * scale);
    }
    for (int i = 0; i < n; i++) total += coef[i];
    coef[n] = t->base ? (float)(1.0 - total) : 0.0f;
    st = mg_combine(t, MG_FLAT, coef);
done:
    free(G);
    free(w);
    free(nrm);
    free(coef);
    return st;
}

/* a^T G b */
static double quad(int n, const double *G, const double *a, const double *b) {
    double s = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) s += a[i] * G[i * n + j] * b[j];
    return s;
}

fc_status mg_merge_karcher(const mg_tensor *t) {
    const fc_merge_params *p = t->p;
    int n = t->n;
    double tol = p->tol;
    double *G = mg_calloc(t, (size_t)n * n, sizeof(double));
    double *a = mg_calloc(t, (size_t)n, sizeof(double)), *tan = mg_calloc(t, (size_t)n, sizeof(double));
    double *nrm = mg_calloc(t, (size_t)n, sizeof(double));
    float *coef = mg_calloc(t, (size_t)n + 1, sizeof(float));
    fc_status st = FC_ERR_NOMEM;
    if (!G || !a || !tan || !nrm || !coef) goto done;
    if (n == 1) { /* a single input passes through */
        coef[0] = 1.0f;
        st = mg_combine(t, MG_FLAT, coef);
        goto done;
    }
    if ((st = mg_gram(t, MG_FLAT, 0, 0, G)) != FC_OK) goto done;
    int valid = 0, first = -1;
    double scale = 0;
    for (int i = 0; i < n; i++) {
        nrm[i] = sqrt(G[i * n + i]);
        scale += nrm[i] / n;
        if (nrm[i] > tol) {
            valid++;
            if (first < 0) first = i;
        }
    }
    if (valid > 0) {
        double alpha = 1.0 / valid;
        for (int i = 0; i < n; i++) a[i] = nrm[i] > tol ? alpha / nrm[i] : 0.0;
        double un = sqrt(quad(n, G, a, a));
        if (un < tol) {
            memset(a, 0, (size_t)n * sizeof(double));
            a[first] = 1.0 / nrm[first];
        } else {
            for (int i = 0; i < n; i++) a[i] /= un;
        }
        for (int it = 0; it < p->max_iter; it++) {
            memset(tan, 0, (size_t)n * sizeof(double));
            for (int i = 0; i < n; i++) {
                if (nrm[i] <= tol) continue;
                double dot = 0; /* <u, u_i> */
                for (int j = 0; j < n; j++) dot += a[j] * G[j * n + i];
                dot /= nrm[i];
                dot = dot < -1 ? -1 : dot > 1 ? 1 : dot;
                double th = acos(dot);
                if (th < tol) continue;
                double f = alpha * th / sin(th);
                tan[i] += f / nrm[i];
                for (int j = 0; j < n; j++) tan[j] -= f * dot * a[j];
            }
            double tn = sqrt(fmax(quad(n, G, tan, tan), 0.0));
            if (tn < tol) break;
            for (int j = 0; j < n; j++) a[j] = cos(tn) * a[j] + sin(tn) * tan[j] / tn;
            double un2 = sqrt(fmax(quad(n, G, a, a), 0.0));
            if (un2 > tol)
                for (int j = 0; j < n; j++) a[j] /= un2;
        }
    }
    for (int i = 0; i < n; i++) coef[i] = (float)(scale * a[i]);
    st = mg_combine(t, MG_FLAT, coef);
done:
    free(G);
    free(a);
    free(tan);
    free(nrm);
    free(coef);
    return st;
}
