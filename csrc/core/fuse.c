/* fuse.c - the fusion rules of stage 1 over aligned ragged sparse distributions
 * (method.md 6): MinCE (FuseChat: per sequence the model with the lowest CE, ties to the
 * pivot, compared in float32 where the reference compared exp(-CE) in bf16) and AvgCE
 * (FuseLLM: softmax over the rewards exp(-CE), mixture on the union of the supports).
 * Either per sequence (level 0) or per position (level 1, the token-level variant).
 * Shape letters: M models (0 = pivot), T positions, S sequences. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fusechat.h"

static fc_status check_dists(const fc_ragged_dists *d, const int64_t *seq_offsets, int64_t n_seq,
                             const float *const *ce, int level, const char *fn, fc_error *err) {
    if (!d || d->n_models < 1 || d->n_pos < 0 || !d->indptr || !d->ids || !d->values || !ce)
        return fc_error_set(err, FC_ERR_VALUE, "%s: need at least one model (the pivot)", fn);
    if (level != 0 && level != 1)
        return fc_error_set(err, FC_ERR_VALUE, "%s: level %d is not 0 (sequence) or 1 (token)",
                            fn, level);
    for (int64_t m = 0; m < d->n_models; m++) {
        const int64_t *ip = d->indptr[m];
        if (!ip || !ce[m] || ip[0] != 0)
            return fc_error_set(err, FC_ERR_VALUE, "%s: model %lld: indptr must start at 0",
                                fn, (long long)m);
        for (int64_t t = 0; t < d->n_pos; t++)
            if (ip[t + 1] < ip[t])
                return fc_error_set(err, FC_ERR_VALUE, "%s: model %lld: indptr decreases at "
                                    "position %lld", fn, (long long)m, (long long)t);
        for (int64_t j = 0; j < ip[d->n_pos]; j++) {
            if (d->ids[m][j] < 0)
                return fc_error_set(err, FC_ERR_VALUE, "%s: model %lld: negative id %d at entry "
                                    "%lld", fn, (long long)m, d->ids[m][j], (long long)j);
            if (!isfinite(d->values[m][j]))
                return fc_error_set(err, FC_ERR_VALUE, "%s: model %lld: value %g at entry %lld "
                                    "is not finite", fn, (long long)m, (double)d->values[m][j],
                                    (long long)j);
        }
    }
    if (level == 0) {
        if (!seq_offsets || n_seq < 0 || seq_offsets[0] != 0 || seq_offsets[n_seq] != d->n_pos)
            return fc_error_set(err, FC_ERR_VALUE, "%s: seq_offsets must run from 0 to the "
                                "number of positions (%lld)", fn, (long long)d->n_pos);
        for (int64_t s = 0; s < n_seq; s++)
            if (seq_offsets[s + 1] < seq_offsets[s])
                return fc_error_set(err, FC_ERR_VALUE, "%s: seq_offsets decreases at sequence "
                                    "%lld", fn, (long long)s);
    }
    return FC_OK;
}

/* Groups are sequences (level 0) or single positions (level 1): count and range. */
static int64_t n_groups(int level, int64_t n_seq, int64_t n_pos) {
    return level == 0 ? n_seq : n_pos;
}

static void group_range(int level, const int64_t *seq_offsets, int64_t g, int64_t *b,
                        int64_t *e) {
    *b = level == 0 ? seq_offsets[g] : g;
    *e = level == 0 ? seq_offsets[g + 1] : g + 1;
}

fc_status fc_fuse_min_ce(const fc_ragged_dists *d, const int64_t *seq_offsets, int64_t n_seq,
                         const float *const *ce, int level, int fill_empty, int32_t *choice,
                         fc_error *err) {
    fc_status st = check_dists(d, seq_offsets, n_seq, ce, level, "fuse_min_ce", err);
    if (st != FC_OK) return st;
    for (int64_t g = 0; g < n_groups(level, n_seq, d->n_pos); g++) {
        int64_t b, e;
        group_range(level, seq_offsets, g, &b, &e);
        int32_t best = 0;
        float bv = ce[0][g];
        for (int64_t m = 1; m < d->n_models; m++) {
            float v = ce[m][g];
            if (v < bv || (bv != bv && v == v)) { /* strict: ties stay with the lower index */
                best = (int32_t)m;
                bv = v;
            }
        }
        for (int64_t t = b; t < e; t++) {
            const int64_t *ip = d->indptr[best];
            choice[t] = (fill_empty && ip[t + 1] == ip[t]) ? 0 : best;
        }
    }
    return FC_OK;
}

typedef struct {
    int32_t id;
    double p;
} id_prob;

static int by_id(const void *a, const void *b) {
    int32_t x = ((const id_prob *)a)->id, y = ((const id_prob *)b)->id;
    return (x > y) - (x < y);
}

static int by_prob_desc(const void *a, const void *b) {
    const id_prob *x = (const id_prob *)a, *y = (const id_prob *)b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

fc_status fc_fuse_avg_ce(const fc_ragged_dists *d, const int64_t *seq_offsets, int64_t n_seq,
                         const float *const *ce, int level, double temperature,
                         int64_t *out_indptr, int32_t *out_ids, float *out_logp,
                         fc_error *err) {
    fc_status st = check_dists(d, seq_offsets, n_seq, ce, level, "fuse_avg_ce", err);
    if (st != FC_OK) return st;
    if (!(temperature > 0.0) || !isfinite(temperature))
        return fc_error_set(err, FC_ERR_VALUE, "fuse_avg_ce: temperature %g must be finite and "
                            "> 0", temperature);
    int64_t M = d->n_models, cap = 0;
    for (int64_t m = 0; m < M; m++) {
        int64_t maxlen = 0;
        for (int64_t t = 0; t < d->n_pos; t++) {
            int64_t len = d->indptr[m][t + 1] - d->indptr[m][t];
            if (len > maxlen) maxlen = len;
        }
        cap += maxlen;
    }
    id_prob *acc = (id_prob *)malloc((size_t)(cap > 0 ? cap : 1) * sizeof(id_prob));
    double *w = (double *)malloc((size_t)M * sizeof(double));
    if (!acc || !w) {
        free(acc);
        free(w);
        return fc_error_set(err, FC_ERR_NOMEM, "fuse_avg_ce: out of memory");
    }
    out_indptr[0] = 0;
    int64_t nnz = 0;
    for (int64_t g = 0; g < n_groups(level, n_seq, d->n_pos); g++) {
        int64_t b, e;
        group_range(level, seq_offsets, g, &b, &e);
        for (int64_t t = b; t < e; t++) {
            /* weights: softmax of exp(-ce) over the models present here */
            double wmax = -INFINITY, wsum = 0.0;
            for (int64_t m = 0; m < M; m++) {
                float c = ce[m][g];
                int present = isfinite(c) && d->indptr[m][t + 1] > d->indptr[m][t];
                w[m] = present ? exp(-(double)c) : -INFINITY;
                if (w[m] > wmax) wmax = w[m];
            }
            for (int64_t m = 0; m < M; m++) {
                w[m] = w[m] == -INFINITY ? 0.0 : exp(w[m] - wmax);
                wsum += w[m];
            }
            int64_t n = 0;
            for (int64_t m = 0; m < M && wsum > 0.0; m++) {
                if (w[m] == 0.0) continue;
                int64_t lo = d->indptr[m][t], hi = d->indptr[m][t + 1];
                double vmax = -INFINITY, vsum = 0.0;
                for (int64_t j = lo; j < hi; j++)
                    if (d->values[m][j] / temperature > vmax) vmax = d->values[m][j] / temperature;
                for (int64_t j = lo; j < hi; j++) vsum += exp(d->values[m][j] / temperature - vmax);
                for (int64_t j = lo; j < hi; j++) {
                    acc[n].id = d->ids[m][j];
                    acc[n].p = w[m] / wsum * exp(d->values[m][j] / temperature - vmax) / vsum;
                    n++;
                }
            }
            qsort(acc, (size_t)n, sizeof *acc, by_id);
            int64_t u = 0;
            for (int64_t j = 0; j < n; j++) {
                if (u > 0 && acc[u - 1].id == acc[j].id) acc[u - 1].p += acc[j].p;
                else acc[u++] = acc[j];
            }
            qsort(acc, (size_t)u, sizeof *acc, by_prob_desc);
            for (int64_t j = 0; j < u; j++) {
                out_ids[nnz + j] = acc[j].id;
                out_logp[nnz + j] = (float)log(acc[j].p);
            }
            nnz += u;
            out_indptr[t + 1] = nnz;
        }
    }
    free(acc);
    free(w);
    return FC_OK;
}

fc_status fc_fuse_gather(const fc_ragged_dists *d, const int32_t *choice, int64_t *out_indptr,
                         int32_t *out_ids, float *out_values, fc_error *err) {
    out_indptr[0] = 0;
    for (int64_t t = 0; t < d->n_pos; t++) {
        if (choice[t] < 0 || choice[t] >= d->n_models)
            return fc_error_set(err, FC_ERR_VALUE, "fuse_gather: choice %d at position %lld is "
                                "not a model index", choice[t], (long long)t);
        const int64_t *ip = d->indptr[choice[t]];
        int64_t len = ip[t + 1] - ip[t];
        if (out_ids) {
            memcpy(out_ids + out_indptr[t], d->ids[choice[t]] + ip[t], (size_t)len * 4);
            memcpy(out_values + out_indptr[t], d->values[choice[t]] + ip[t], (size_t)len * 4);
        }
        out_indptr[t + 1] = out_indptr[t] + len;
    }
    return FC_OK;
}
