/* vocab_map.c - source id -> pivot id maps (method.md 4): EM, MinED (FuseLLM's definition,
 * done correctly), MS (the reference's statistics map), role overrides, same-vocab test. */
#define _GNU_SOURCE /* memmem */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"
#include "levenshtein.h"

#define PIECE(v, i) ((v)->pieces.data + (v)->piece_off[i])
#define PLEN(v, i) ((size_t)((v)->piece_off[(i) + 1] - (v)->piece_off[i]))

int fc_vocab_same(const fc_vocab_t *src, const fc_vocab_t *pivot) {
    if (src->V > pivot->V) return 0;
    for (int64_t i = 0; i < src->V; i++) {
        if ((src->flags[i] & FC_TOKEN_MISSING) != (pivot->flags[i] & FC_TOKEN_MISSING)) return 0;
        if (PLEN(src, i) != PLEN(pivot, i) || memcmp(PIECE(src, i), PIECE(pivot, i), PLEN(src, i)))
            return 0;
    }
    return 1;
}

/* UTF-8 -> code points; returns the count (out has room for len entries) */
static int64_t to_u32(const char *s, size_t len, uint32_t *out) {
    int64_t n = 0;
    for (size_t k = 0; k < len;) {
        int adv;
        out[n++] = fc_utf8_next((const unsigned char *)s + k, len - k, &adv);
        k += (size_t)adv;
    }
    return n;
}

/* source piece with the source marker replaced by the pivot marker (FuseLLM's lookup key) */
static int em_key(const fc_vocab_t *src, const fc_vocab_t *piv, int64_t s, fc_buf *key) {
    key->len = 0;
    return fc_replace_all(key, PIECE(src, s), PLEN(src, s), src->marker, strlen(src->marker),
                          piv->marker, strlen(piv->marker));
}

/* ------------------------------------------------------------------------------------ */
/* MinED: exact key match, else the smallest edit distance, the lowest pivot id on ties.
 * Pivot pieces are bucketed by length: |len(a) - len(b)| <= lev(a, b), so buckets are
 * visited by growing length difference until it exceeds the best distance found. */

typedef struct mined_job {
    const fc_vocab_t *src, *piv;
    uint32_t         *pdata;    /* pivot pieces as code points */
    int64_t          *poff;
    int64_t          *bucket_ids, *bucket_start; /* ids grouped by code point length */
    int64_t           max_len;
    int32_t          *out;
    int               failed;
} mined_job;

static fc_status mined_range(void *ctx, int64_t begin, int64_t end) {
    mined_job *J = ctx;
    fc_buf key = {0};
    uint32_t *a = NULL;
    size_t acap = 0;
    fc_lev_pattern pat;
    for (int64_t s = begin; s < end; s++) {
        if (J->src->flags[s] & FC_TOKEN_MISSING) { J->out[s] = -1; continue; }
        if (em_key(J->src, J->piv, s, &key)) goto nomem;
        int64_t exact = fc_vocab_find(J->piv, key.data ? key.data : "", key.len);
        if (exact >= 0) { J->out[s] = (int32_t)exact; continue; }
        if (key.len + 1 > acap) {
            free(a);
            acap = 2 * key.len + 16;
            if (!(a = malloc(acap * sizeof *a))) goto nomem;
        }
        int64_t la = to_u32(key.data, key.len, a);
        int use_pat = la <= FC_LEV_WORD;
        if (use_pat) fc_lev_pattern_init(&pat, a, (int)la);
        int64_t best = INT64_MAX, best_id = -1;
        for (int64_t d = 0; d <= J->max_len + la && d <= best; d++) {
            for (int side = 0; side < (d ? 2 : 1); side++) {
                int64_t L = side ? la - d : la + d;
                if (L < 0 || L > J->max_len) continue;
                for (int64_t k = J->bucket_start[L]; k < J->bucket_start[L + 1]; k++) {
                    int64_t p = J->bucket_ids[k];
                    const uint32_t *b = J->pdata + J->poff[p];
                    int64_t dist = use_pat ? fc_lev_pattern_dist(&pat, b, L, best)
                                           : fc_levenshtein(a, la, b, L);
                    if (dist < 0) goto nomem;
                    if (dist < best || (dist == best && p < best_id)) best = dist, best_id = p;
                }
            }
        }
        J->out[s] = (int32_t)best_id;
    }
    fc_buf_free(&key);
    free(a);
    return FC_OK;
nomem:
    fc_buf_free(&key);
    free(a);
    J->failed = 1;
    return FC_ERR_NOMEM;
}

static fc_status map_mined(const fc_vocab_t *src, const fc_vocab_t *piv, int nthreads,
                           int32_t *out, fc_error *err) {
    mined_job J = {src, piv, NULL, NULL, NULL, NULL, 0, out, 0};
    int64_t V = piv->V;
    J.pdata = malloc((piv->pieces.len + 1) * sizeof *J.pdata);
    J.poff = calloc((size_t)V + 1, sizeof *J.poff);
    if (!J.pdata || !J.poff) goto nomem;
    for (int64_t p = 0; p < V; p++) {
        J.poff[p + 1] = J.poff[p] + to_u32(PIECE(piv, p), PLEN(piv, p), J.pdata + J.poff[p]);
        if (!(piv->flags[p] & FC_TOKEN_MISSING) && J.poff[p + 1] - J.poff[p] > J.max_len)
            J.max_len = J.poff[p + 1] - J.poff[p];
    }
    J.bucket_start = calloc((size_t)J.max_len + 2, sizeof *J.bucket_start);
    J.bucket_ids = malloc((size_t)V * sizeof *J.bucket_ids);
    if (!J.bucket_start || !J.bucket_ids) goto nomem;
    for (int64_t p = 0; p < V; p++)
        if (!(piv->flags[p] & FC_TOKEN_MISSING)) J.bucket_start[J.poff[p + 1] - J.poff[p] + 1]++;
    for (int64_t L = 0; L <= J.max_len; L++) J.bucket_start[L + 1] += J.bucket_start[L];
    {
        int64_t *fill = malloc(((size_t)J.max_len + 1) * sizeof *fill);
        if (!fill) goto nomem;
        memcpy(fill, J.bucket_start, ((size_t)J.max_len + 1) * sizeof *fill);
        for (int64_t p = 0; p < V; p++) /* ascending ids within each bucket */
            if (!(piv->flags[p] & FC_TOKEN_MISSING))
                J.bucket_ids[fill[J.poff[p + 1] - J.poff[p]]++] = p;
        free(fill);
    }
    fc_status st = fc_parallel_for(src->V, 64, nthreads, mined_range, &J);
    free(J.pdata); free(J.poff); free(J.bucket_start); free(J.bucket_ids);
    if (st || J.failed) return fc_error_set(err, FC_ERR_NOMEM, "out of memory in the MinED map");
    return FC_OK;
nomem:
    free(J.pdata); free(J.poff); free(J.bucket_start); free(J.bucket_ids);
    return fc_error_set(err, FC_ERR_NOMEM, "out of memory in the MinED map");
}

/* ------------------------------------------------------------------------------------ */
/* MS (method.md 4.2) */

/* the reference's dist_fn(source piece, pivot piece) x w, in double as numpy computes it */
static double ms_dist(const fc_vocab_t *src, const fc_vocab_t *piv, int64_t s, int64_t p,
                      fc_buf *aa, fc_buf *bb, uint32_t *ua, uint32_t *ub) {
    aa->len = bb->len = 0;
    fc_replace_all(aa, PIECE(src, s), PLEN(src, s), src->marker, strlen(src->marker), "", 0);
    fc_replace_all(bb, PIECE(piv, p), PLEN(piv, p), piv->marker, strlen(piv->marker), "", 0);
    if (aa->len == 0 || bb->len == 0) {
        aa->len = bb->len = 0;
        fc_replace_all(aa, PIECE(src, s), PLEN(src, s), src->marker, strlen(src->marker),
                       piv->marker, strlen(piv->marker));
        fc_buf_append(bb, PIECE(piv, p), PLEN(piv, p));
    }
    const char *a = aa->data ? aa->data : "", *b = bb->data ? bb->data : "";
    int contained = (aa->len <= bb->len && (aa->len == 0 || memmem(b, bb->len, a, aa->len)))
                 || (bb->len <= aa->len && (bb->len == 0 || memmem(a, aa->len, b, bb->len)));
    int64_t na = to_u32(a, aa->len, ua), nb = to_u32(b, bb->len, ub);
    double d = (double)fc_levenshtein(ua, na, ub, nb);
    return contained ? d * 0.1 : d;
}

static fc_status map_ms(const fc_vocab_t *src, const fc_vocab_t *piv, const fc_counts_t *counts,
                        int32_t *out, fc_error *err) {
    int64_t nnz = fc_counts_nnz(counts);
    int64_t *pid = malloc((size_t)(nnz ? nnz : 1) * sizeof *pid);
    int64_t *sid = malloc((size_t)(nnz ? nnz : 1) * sizeof *sid);
    uint64_t *cnt = malloc((size_t)(nnz ? nnz : 1) * sizeof *cnt);
    size_t maxp = 0;
    for (int64_t p = 0; p < piv->V; p++) if (PLEN(piv, p) > maxp) maxp = PLEN(piv, p);
    size_t maxs = 0;
    for (int64_t s = 0; s < src->V; s++) if (PLEN(src, s) > maxs) maxs = PLEN(src, s);
    size_t room = (maxs + 1) * (strlen(piv->marker) + 1) + maxp + 16;
    uint32_t *ua = malloc(room * sizeof *ua), *ub = malloc(room * sizeof *ub);
    fc_buf aa = {0}, bb = {0};
    fc_status st = FC_OK;
    if (!pid || !sid || !cnt || !ua || !ub || fc_buf_reserve(&aa, room)
        || fc_buf_reserve(&bb, room)) {
        st = fc_error_set(err, FC_ERR_NOMEM, "out of memory in the MS map");
        goto done;
    }
    if ((st = fc_counts_export(counts, 1, pid, sid, cnt, err))) goto done;
    int64_t fallback = piv->roles[FC_ROLE_UNK] >= 0 ? piv->roles[FC_ROLE_UNK]
                                                    : piv->roles[FC_ROLE_EOS];
    for (int64_t s = 0; s < src->V; s++) out[s] = (int32_t)fallback;
    for (int64_t k = 0; k < nnz;) {
        int64_t s = sid[k], e = k;
        while (e < nnz && sid[e] == s) e++;
        if (s >= src->V) {
            st = fc_error_set(err, FC_ERR_VALUE, "the counts hold source id %lld, outside the "
                              "source vocabulary (size %lld)", (long long)s, (long long)src->V);
            goto done;
        }
        if (!(src->flags[s] & FC_TOKEN_MISSING)) {
            double best = INFINITY;
            int64_t best_p = -1;
            for (int64_t q = k; q < e; q++) {
                int64_t p = pid[q];
                if (p >= piv->V) {
                    st = fc_error_set(err, FC_ERR_VALUE, "the counts hold pivot id %lld, outside "
                                      "the pivot vocabulary (size %lld)", (long long)p,
                                      (long long)piv->V);
                    goto done;
                }
                if (cnt[q] == 0) continue;
                double w = 1.0 / (1.0 + exp(-(double)cnt[q]));
                double score = ms_dist(src, piv, s, p, &aa, &bb, ua, ub) * w;
                if (best_p < 0 || score < best) best = score, best_p = p;
            }
            if (best_p >= 0) out[s] = (int32_t)best_p;
        }
        k = e;
    }
done:
    free(pid); free(sid); free(cnt); free(ua); free(ub);
    fc_buf_free(&aa); fc_buf_free(&bb);
    return st;
}

/* ------------------------------------------------------------------------------------ */

static void map_role(const fc_vocab_t *src, const fc_vocab_t *piv, fc_role r, int32_t *out) {
    if (src->roles[r] >= 0 && piv->roles[r] >= 0) out[src->roles[r]] = (int32_t)piv->roles[r];
}

fc_status fc_vocab_map(const fc_vocab_t *src, const fc_vocab_t *piv, fc_map_mode mode,
                       const fc_counts_t *counts, int roles, int nthreads, int32_t *out,
                       fc_error *err) {
    if (piv->V > INT32_MAX)
        return fc_error_set(err, FC_ERR_VALUE, "the pivot vocabulary is too large");
    fc_status st = FC_OK;
    if (fc_vocab_same(src, piv)) {
        for (int64_t s = 0; s < src->V; s++)
            out[s] = (src->flags[s] & FC_TOKEN_MISSING) ? -1 : (int32_t)s;
        if (roles == 0) roles = 1;
    } else if (mode == FC_MAP_EM) {
        fc_buf key = {0};
        for (int64_t s = 0; s < src->V && !st; s++) {
            if (src->flags[s] & FC_TOKEN_MISSING) { out[s] = -1; continue; }
            if (em_key(src, piv, s, &key))
                st = fc_error_set(err, FC_ERR_NOMEM, "out of memory in the EM map");
            else out[s] = (int32_t)fc_vocab_find(piv, key.data ? key.data : "", key.len);
        }
        fc_buf_free(&key);
    } else if (mode == FC_MAP_MINED) {
        st = map_mined(src, piv, nthreads, out, err);
    } else if (mode == FC_MAP_MS) {
        if (!counts)
            return fc_error_set(err, FC_ERR_VALUE, "mode \"ms\" needs alignment counts");
        st = map_ms(src, piv, counts, out, err);
    } else {
        return fc_error_set(err, FC_ERR_VALUE, "unknown vocabulary map mode %d", (int)mode);
    }
    if (st || roles < 0) return st;
    map_role(src, piv, FC_ROLE_BOS, out);
    map_role(src, piv, FC_ROLE_EOS, out);
    if (roles > 0) {
        map_role(src, piv, FC_ROLE_UNK, out);
        map_role(src, piv, FC_ROLE_PAD, out);
        map_role(src, piv, FC_ROLE_EOT, out);
    }
    return FC_OK;
}
