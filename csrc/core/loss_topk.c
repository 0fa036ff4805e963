/* loss_topk.c - stage-1 extraction: per row the top-k logits and their ids plus the token
 * cross-entropy, in one pass over the logits (instead of torch.topk plus a separate CE);
 * then the per-sequence mean CE over supervised tokens (method.md 2.5).
 *
 * Order: a total order on float32 keys (-NaN < -inf < ... < +inf < NaN, every NaN treated as
 * the largest like torch.topk) and, between equal keys, the lower id first. The running top-k
 * is a sorted array; an element enters only when its key beats the current k-th, which after
 * the first few chunks is rare, so the scan costs one compare per element.
 * Shape letters: N rows, V vocab, k kept entries, S sequences. */
#include <math.h>
#include <stdlib.h>

#include "fusechat.h"
#include "loss_row.h"

/* Monotone map float32 -> int32 (ordering as above; all NaNs equal the maximum). */
static inline int32_t order_key(float f) {
    if (f != f) return INT32_MAX;
    int32_t i;
    memcpy(&i, &f, 4);
    return i ^ ((i >> 31) & 0x7fffffff);
}

typedef struct {
    const void *logits;
    fc_dtype dt;
    int64_t v, k;
    const int64_t *labels;
    int64_t ignore_index;
    int32_t *top_ids;
    float *top_logits, *token_ce;
} topk_ctx;

FC_ROW_CLONES
static fc_status topk_rows(void *arg, int64_t begin, int64_t end) {
    const topk_ctx *c = (const topk_ctx *)arg;
    const size_t esz = fc_dtype_size(c->dt);
    const int64_t k = c->k;
    float buf[FC_CHUNK] __attribute__((aligned(32)));
    int32_t *keys = (int32_t *)malloc((size_t)k * sizeof(int32_t));
    if (!keys) return FC_ERR_NOMEM;
    for (int64_t r = begin; r < end; r++) {
        const void *row = (const unsigned char *)c->logits + (size_t)r * c->v * esz;
        int32_t *ids = c->top_ids + r * k;
        float *vals = c->top_logits + r * k;
        int64_t filled = 0;
        int32_t kth = INT32_MIN; /* key of the current k-th entry once filled */
        float m = -INFINITY;
        double d = 0.0;
        int nan_seen = 0;
        for (int64_t off = 0; off < c->v; off += FC_CHUNK) {
            int len = (int)(c->v - off < FC_CHUNK ? c->v - off : FC_CHUNK), n8 = (len + 7) & ~7;
            fc_row_load(row, c->dt, off, len, buf, -INFINITY);
            /* top-k: strict ">" keeps the earlier (lower) id on ties. Once the list is full,
             * 8 lanes at a time are skipped unless one may enter: x >= the k-th value (a
             * superset: -0.0 == +0.0 there) or NaN */
            for (int i = 0; i < len; i++) {
                if (filled == k && (i & 7) == 0 && i + 8 <= len) {
                    fcv_f32 x;
                    memcpy(&x, buf + i, 32);
                    fcv_i32 hit = (x >= fcv_splat(vals[k - 1])) | (x != x);
                    int any = 0;
                    for (int j = 0; j < 8; j++) any |= hit[j];
                    if (!any) {
                        i += 7;
                        continue;
                    }
                }
                int32_t key = order_key(buf[i]);
                if (filled == k && key <= kth) continue;
                int64_t pos = filled < k ? filled++ : k - 1;
                while (pos > 0 && keys[pos - 1] < key) {
                    vals[pos] = vals[pos - 1];
                    ids[pos] = ids[pos - 1];
                    keys[pos] = keys[pos - 1];
                    pos--;
                }
                vals[pos] = buf[i];
                ids[pos] = (int32_t)(off + i);
                keys[pos] = key;
                kth = keys[filled - 1];
            }
            if (!c->token_ce || nan_seen) continue;
            /* online logsumexp, as fc_row_lse */
            float bm = fc_buf_max(buf, n8);
            if (bm != bm) { nan_seen = 1; continue; }
            if (bm == -INFINITY) continue;
            if (bm > m) {
                d = d * exp((double)m - (double)bm);
                m = bm;
            }
            d += fc_buf_expsum(buf, n8, m);
        }
        if (!c->token_ce) continue;
        int64_t y = c->labels[r];
        if (y == c->ignore_index) {
            c->token_ce[r] = 0.0f;
            continue;
        }
        double logd = (nan_seen || m == INFINITY) ? NAN : log(d);
        c->token_ce[r] = (float)(((double)m - fc_row_get(row, c->dt, y)) + logd);
    }
    free(keys);
    return FC_OK;
}

fc_status fc_topk_ce(const void *logits, fc_dtype dtype, int64_t n, int64_t v, int64_t k,
                     const int64_t *labels, int64_t ignore_index, int32_t *top_ids,
                     float *top_logits, float *token_ce, const int64_t *seq_offsets,
                     int64_t n_seq, float *seq_ce, uint8_t *seq_has, int nthreads,
                     fc_error *err) {
    if (dtype != FC_F32 && dtype != FC_F16 && dtype != FC_BF16)
        return fc_error_set(err, FC_ERR_TYPE, "topk_and_ce: logits dtype %s is not F32, F16 or "
                            "BF16", fc_dtype_name(dtype) ? fc_dtype_name(dtype) : "(invalid)");
    if (n < 0 || v < 1 || v > INT32_MAX)
        return fc_error_set(err, FC_ERR_VALUE, "topk_and_ce: logits shape [%lld, %lld]: need "
                            "N >= 0 and 1 <= V <= 2^31-1", (long long)n, (long long)v);
    if (k < 1 || k > v)
        return fc_error_set(err, FC_ERR_VALUE, "topk_and_ce: k = %lld must be in [1, V = %lld]",
                            (long long)k, (long long)v);
    if (n > 0 && (!logits || !top_ids || !top_logits))
        return fc_error_set(err, FC_ERR_VALUE, "topk_and_ce: logits or an output is NULL");
    if (labels) {
        if (n > 0 && !token_ce)
            return fc_error_set(err, FC_ERR_VALUE, "topk_and_ce: labels given without token_ce");
        for (int64_t r = 0; r < n; r++)
            if (labels[r] != ignore_index && (labels[r] < 0 || labels[r] >= v))
                return fc_error_set(err, FC_ERR_VALUE, "topk_and_ce: labels row %lld: label "
                                    "%lld is outside [0, %lld) and not ignore_index (%lld)",
                                    (long long)r, (long long)labels[r], (long long)v,
                                    (long long)ignore_index);
    }
    if (seq_offsets) {
        if (!labels || n_seq < 0 || !seq_ce || !seq_has)
            return fc_error_set(err, FC_ERR_VALUE, "topk_and_ce: seq_offsets needs labels, "
                                "seq_ce and seq_has");
        if (seq_offsets[0] != 0 || seq_offsets[n_seq] != n)
            return fc_error_set(err, FC_ERR_VALUE, "topk_and_ce: seq_offsets must start at 0 "
                                "and end at N = %lld (got %lld .. %lld)", (long long)n,
                                (long long)seq_offsets[0], (long long)seq_offsets[n_seq]);
        for (int64_t s = 0; s < n_seq; s++)
            if (seq_offsets[s + 1] < seq_offsets[s])
                return fc_error_set(err, FC_ERR_VALUE, "topk_and_ce: seq_offsets decreases at "
                                    "sequence %lld", (long long)s);
    }
    topk_ctx c = {logits, dtype, v, k, labels, ignore_index, top_ids, top_logits,
                  labels ? token_ce : NULL};
    fc_status st = fc_parallel_for(n, 1, nthreads, topk_rows, &c);
    if (st != FC_OK)
        return fc_error_set(err, st, "topk_and_ce: a worker failed (%s)", fc_status_name(st));
    for (int64_t s = 0; seq_offsets && s < n_seq; s++) {
        double sum = 0.0;
        int64_t cnt = 0;
        for (int64_t r = seq_offsets[s]; r < seq_offsets[s + 1]; r++) {
            if (labels[r] == ignore_index) continue;
            sum += token_ce[r];
            cnt++;
        }
        seq_has[s] = cnt > 0;
        seq_ce[s] = cnt > 0 ? (float)(sum / (double)cnt) : 0.0f;
    }
    return FC_OK;
}
