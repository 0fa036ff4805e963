/* loss_fusion.c - the fused sparse fusion loss: gold CE + CE/KL against a sparse target,
 * forward and gradient in one call (formulas in fc_loss.h; losses.md 1.5-1.7, method.md 7.2).
 *
 * Per row, two passes over the V logits and nothing V-sized besides the gradient:
 *   pass 1: online logsumexp in fp32 chunks (max per chunk, rescaled sum of exp);
 *   pass 2: grad_i = softmax_i * s, rounded once to the logits' dtype (may overwrite them);
 * then the <= K+1 sparse corrections (label, target ids) are recomputed in fp32 from the
 * logits gathered before pass 2 and stored, so softmax - 1 never cancels in bf16.
 * Rows are split over threads; every row is independent. Shape letters: N rows, V vocab,
 * K target entries per row. */
#include <math.h>
#include <stdlib.h>

#include "fusechat.h"
#include "loss_row.h"

#define MAX_ENTRIES 1025 /* a row's sparse corrections: K target ids plus the label */

void fc_fusion_loss_opts_init(fc_fusion_loss_opts *o) {
    o->lm_weight = 0.9;
    o->temperature = 1.0;
    o->kind = FC_FUSION_CE;
    o->reduction = FC_REDUCE_MEAN;
    o->normalizer = 1.0;
    o->grad_scale = 1.0;
    o->ignore_index = -100;
    o->validate = 1;
    o->nthreads = 0;
}

/* Ranges (always checked: the kernel indexes with them) and, when `full`, values and
 * duplicates. Padding (-1) may sit anywhere in a row. */
static fc_status check_target(const fc_sparse_target *t, const char *name, int64_t n,
                              int64_t v, int full, fc_error *err) {
    if (!t || t->k == 0) return FC_OK;
    if (t->k < 0 || t->k >= MAX_ENTRIES)
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: %s_ids has %lld entries per row; "
                            "expected 0 to %d", name, (long long)t->k, MAX_ENTRIES - 1);
    if (n > 0 && (!t->ids || !t->values))
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: %s_ids or %s_values is NULL",
                            name, name);
    for (int64_t r = 0; r < n; r++) {
        const int32_t *ids = t->ids + r * t->k;
        const float *val = t->values + r * t->k;
        for (int64_t j = 0; j < t->k; j++) {
            if (ids[j] == -1) continue;
            if (ids[j] < 0 || ids[j] >= v)
                return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: %s_ids row %lld entry %lld: "
                                    "id %d is outside [0, %lld) and not -1 (padding)", name,
                                    (long long)r, (long long)j, ids[j], (long long)v);
            if (!full) continue;
            if (!isfinite(val[j]))
                return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: %s_values row %lld entry "
                                    "%lld (id %d): value %g is not finite", name, (long long)r,
                                    (long long)j, ids[j], (double)val[j]);
            for (int64_t i = 0; i < j; i++)
                if (ids[i] == ids[j])
                    return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: %s_ids row %lld: id %d "
                                        "appears twice (entries %lld and %lld)", name,
                                        (long long)r, ids[j], (long long)i, (long long)j);
        }
    }
    return FC_OK;
}

static fc_status check_opts(const fc_fusion_loss_opts *o, fc_error *err) {
    if (!(o->lm_weight >= 0.0 && o->lm_weight <= 1.0))
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: lm_weight %g is outside [0, 1]",
                            o->lm_weight);
    if (!(o->temperature > 0.0) || !isfinite(o->temperature))
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: temperature %g must be finite and "
                            "> 0", o->temperature);
    if ((unsigned)o->kind > FC_FUSION_KL)
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: unknown kind %d", (int)o->kind);
    if ((unsigned)o->reduction > FC_REDUCE_NORMALIZER)
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: unknown reduction %d",
                            (int)o->reduction);
    if (o->reduction == FC_REDUCE_NORMALIZER && !(o->normalizer > 0.0 && isfinite(o->normalizer)))
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: normalizer %g must be finite and "
                            "> 0", o->normalizer);
    if (!isfinite(o->grad_scale))
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: grad_scale %g is not finite",
                            o->grad_scale);
    return FC_OK;
}

static fc_status check_all(int64_t n, int64_t v, const int64_t *labels,
                           const fc_sparse_target *target, const fc_sparse_target *fallback,
                           const fc_fusion_loss_opts *o, int full, fc_error *err) {
    fc_status st = check_opts(o, err);
    if (st != FC_OK) return st;
    if (n < 0 || v < 1 || v > INT32_MAX)
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: logits shape [%lld, %lld]: need "
                            "N >= 0 and 1 <= V <= 2^31-1", (long long)n, (long long)v);
    if (n > 0 && !labels)
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: labels is NULL");
    for (int64_t r = 0; r < n; r++)
        if (labels[r] != o->ignore_index && (labels[r] < 0 || labels[r] >= v))
            return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: labels row %lld: label %lld "
                                "is outside [0, %lld) and not ignore_index (%lld)",
                                (long long)r, (long long)labels[r], (long long)v,
                                (long long)o->ignore_index);
    st = check_target(target, "target", n, v, full, err);
    if (st == FC_OK) st = check_target(fallback, "fallback", n, v, full, err);
    return st;
}

fc_status fc_fusion_loss_check(int64_t n, int64_t v, const int64_t *labels,
                               const fc_sparse_target *target, const fc_sparse_target *fallback,
                               const fc_fusion_loss_opts *o, fc_error *err) {
    return check_all(n, v, labels, target, fallback, o, 1, err);
}

typedef struct {
    const fc_fusion_loss_opts *o;
    const void *logits;
    fc_dtype dt;
    int64_t v;
    const int64_t *labels;
    const fc_sparse_target *target, *fallback;
    double *row_loss; /* [N] (double, so that the reduced loss of F64 logits is exact) */
    void *grad;
    double gscale;   /* reduction scale x grad_scale */
} loss_ctx;

/* The row's target entries (ids != -1) as (id, probability) after renormalisation at T;
 * returns the count (0 = empty). */
static int row_target(const fc_sparse_target *t, int64_t r, double temperature, int32_t *ids,
                      double *p) {
    if (!t || t->k == 0) return 0;
    const int32_t *ti = t->ids + r * t->k;
    const float *tv = t->values + r * t->k;
    int cnt = 0;
    double mx = -INFINITY;
    for (int64_t j = 0; j < t->k; j++) {
        if (ti[j] < 0) continue;
        ids[cnt] = ti[j];
        p[cnt] = (double)tv[j] / temperature;
        if (p[cnt] > mx) mx = p[cnt];
        cnt++;
    }
    double s = 0.0;
    for (int j = 0; j < cnt; j++) s += (p[j] = exp(p[j] - mx));
    for (int j = 0; j < cnt; j++) p[j] /= s;
    return cnt;
}

FC_ROW_CLONES
static fc_status loss_rows(void *arg, int64_t begin, int64_t end) {
    const loss_ctx *c = (const loss_ctx *)arg;
    const fc_fusion_loss_opts *o = c->o;
    const double w = o->lm_weight;
    const size_t esz = fc_dtype_size(c->dt);
    float buf[FC_CHUNK] __attribute__((aligned(32)));
    int32_t ids[MAX_ENTRIES];
    double p[MAX_ENTRIES];
    double zk[MAX_ENTRIES];
    for (int64_t r = begin; r < end; r++) {
        const void *row = (const unsigned char *)c->logits + (size_t)r * c->v * esz;
        void *grow = c->grad ? (unsigned char *)c->grad + (size_t)r * c->v * esz : NULL;
        int64_t y = c->labels[r];
        if (y == o->ignore_index) {
            c->row_loss[r] = 0.0;
            if (grow) memset(grow, 0, (size_t)c->v * esz);
            continue;
        }
        int cnt = row_target(c->target, r, o->temperature, ids, p);
        if (cnt == 0) cnt = row_target(c->fallback, r, o->temperature, ids, p);
        if (cnt == 0) { /* the gold one-hot: the fusion term is the gold CE */
            ids[0] = (int32_t)y;
            p[0] = 1.0;
            cnt = 1;
        }
        /* gather before pass 2 may overwrite the logits */
        double zy = fc_row_get(row, c->dt, y);
        for (int j = 0; j < cnt; j++) zk[j] = fc_row_get(row, c->dt, ids[j]);

        double m;
        double logd = fc_row_lse(row, c->dt, c->v, buf, &m);
        /* -log q_i = (m - z_i) + log d, in double */
        double ce_gold = (m - zy) + logd, cross = 0.0, negent = 0.0;
        for (int j = 0; j < cnt; j++) {
            cross += p[j] * ((m - zk[j]) + logd);
            if (p[j] > 0.0) negent += p[j] * log(p[j]);
        }
        double fusion = o->kind == FC_FUSION_KL ? cross + negent : cross;
        c->row_loss[r] = w * ce_gold + (1.0 - w) * fusion;
        if (!grow) continue;

        /* pass 2: dense softmax part, exp(z - m) * (s / d) */
        fc_row_softmax_store(row, grow, c->dt, c->v, m, c->gscale * exp(-logd), buf);
        /* sparse corrections in double, rounded once: label (weight w) and target ids
         * (weight (1 - w) p), from the logits gathered before pass 2 */
        int label_in_target = 0;
        for (int j = 0; j < cnt; j++) {
            double coef = (1.0 - w) * p[j];
            if (ids[j] == y) {
                coef += w;
                label_in_target = 1;
            }
            double q = exp((zk[j] - m) - logd);
            fc_row_put(grow, c->dt, ids[j], (q - coef) * c->gscale);
        }
        if (!label_in_target) {
            double q = exp((zy - m) - logd);
            fc_row_put(grow, c->dt, y, (q - w) * c->gscale);
        }
    }
    return FC_OK;
}

fc_status fc_fusion_loss(const void *logits, fc_dtype dtype, int64_t n, int64_t v,
                         const int64_t *labels, const fc_sparse_target *target,
                         const fc_sparse_target *fallback, const fc_fusion_loss_opts *opts,
                         double *loss, double *row_loss, void *grad, int64_t *n_supervised,
                         fc_error *err) {
    fc_fusion_loss_opts defaults;
    if (!opts) {
        fc_fusion_loss_opts_init(&defaults);
        opts = &defaults;
    }
    if (dtype != FC_F32 && dtype != FC_F16 && dtype != FC_BF16 && dtype != FC_F64)
        return fc_error_set(err, FC_ERR_TYPE, "fusion_loss: logits dtype %s is not F32, F16, "
                            "BF16 or F64",
                            fc_dtype_name(dtype) ? fc_dtype_name(dtype) : "(invalid)");
    fc_status st = check_all(n, v, labels, target, fallback, opts, opts->validate, err);
    if (st != FC_OK) return st;
    if (n > 0 && !logits) return fc_error_set(err, FC_ERR_VALUE, "fusion_loss: logits is NULL");

    int64_t nsup = 0;
    for (int64_t r = 0; r < n; r++) nsup += labels[r] != opts->ignore_index;
    double scale = 1.0;
    if (opts->reduction == FC_REDUCE_MEAN) scale = nsup > 0 ? 1.0 / (double)nsup : 0.0;
    if (opts->reduction == FC_REDUCE_NORMALIZER) scale = 1.0 / opts->normalizer;

    double *rl = row_loss ? row_loss : (double *)malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    if (!rl) return fc_error_set(err, FC_ERR_NOMEM, "fusion_loss: cannot allocate %lld row "
                                 "losses", (long long)n);
    loss_ctx c = {opts, logits, dtype, v, labels, target, fallback, rl, grad,
                  scale * opts->grad_scale};
    st = fc_parallel_for(n, 1, opts->nthreads, loss_rows, &c);
    double total = 0.0;
    for (int64_t r = 0; r < n; r++) total += rl[r];
    if (rl != row_loss) free(rl);
    if (st != FC_OK)
        return fc_error_set(err, st, "fusion_loss: a worker failed (%s)", fc_status_name(st));
    if (loss) *loss = opts->reduction == FC_REDUCE_NONE ? total : total * scale;
    if (n_supervised) *n_supervised = nsup;
    return FC_OK;
}
