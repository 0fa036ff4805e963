/* align_dtw.c - the reference's DTW token alignment (method.md 3.2-3.3), exact, fast.
 *
 * D[i][j] = cost(s_i, p_j) + min(D[i-1][j], D[i][j-1], D[i-1][j-1]) over n x m cells,
 * then a backtrack from (n-1, m-1) taking the first minimum of [diag, left, up]. The
 * backtrack's choice at (i, j) is the argmin of the same three predecessors the forward
 * pass minimises, so it is recorded then (2 bits per cell, align_dtw_dp.c) and only two
 * rows of values are kept. Costs depend only on the (source id, pivot id) pair: they are
 * computed here once per distinct pair of the sequence, with a bit-parallel Levenshtein
 * (short pivot strings packed 16 or 8 to a 128-bit pattern, levenshtein.c). */
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"
#include "levenshtein.h"


/* positions -> dense index of their distinct id (open addressing on the id) */
static int64_t distinct(const int64_t *ids, int64_t n, int64_t *slot_of, int64_t **uniq) {
    size_t cap = 16;
    while (cap < (size_t)(2 * n + 2)) cap <<= 1;
    int64_t *keys = malloc(cap * sizeof *keys), *vals = malloc(cap * sizeof *vals);
    *uniq = malloc((size_t)(n ? n : 1) * sizeof **uniq);
    if (!keys || !vals || !*uniq) { free(keys); free(vals); free(*uniq); *uniq = NULL; return -1; }
    for (size_t k = 0; k < cap; k++) keys[k] = -1;
    int64_t nu = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t h = (size_t)((uint64_t)ids[i] * 0x9e3779b97f4a7c15ull >> 20) & (cap - 1);
        while (keys[h] >= 0 && keys[h] != ids[i]) h = (h + 1) & (cap - 1);
        if (keys[h] < 0) { keys[h] = ids[i]; vals[h] = nu; (*uniq)[nu++] = ids[i]; }
        slot_of[i] = vals[h];
    }
    free(keys);
    free(vals);
    return nu;
}

#define LEN(s, id) ((s)->off[(id) + 1] - (s)->off[id])
#define PTR(s, id) ((s)->data + (s)->off[id])

/* packing class of a pivot token by its stripped length: 0 = 1..8 code points (16 to a
 * pack), 1 = 9..16 (8 to a pack), 2 = the rest (one pair at a time) */
static int pivot_class(const fc_align_ctx_t *c, int64_t p) {
    int64_t n = LEN(&c->piv_strip, p);
    return (n >= 1 && n <= 8) ? 0 : (n >= 9 && n <= 16) ? 1 : 2;
}

/* Renumber the distinct pivot tokens by class so that every pack covers consecutive
 * indices (a contiguous run of a cost row); pj follows. n_cls gets the class sizes. */
static int order_pivots(const fc_align_ctx_t *c, int64_t *up, int64_t nup, int64_t *pj,
                        int64_t m, int64_t n_cls[3]) {
    int64_t *new_of = malloc((size_t)nup * sizeof *new_of);
    int64_t *sorted = malloc((size_t)nup * sizeof *sorted);
    if (!new_of || !sorted) { free(new_of); free(sorted); return -1; }
    int64_t k = 0;
    for (int cls = 0; cls < 3; cls++) {
        n_cls[cls] = 0;
        for (int64_t b = 0; b < nup; b++)
            if (pivot_class(c, up[b]) == cls) new_of[b] = k, sorted[k++] = up[b], n_cls[cls]++;
    }
    memcpy(up, sorted, (size_t)nup * sizeof *up);
    for (int64_t j = 0; j < m; j++) pj[j] = new_of[pj[j]];
    free(new_of);
    free(sorted);
    return 0;
}

/* the pair cost when one stripped string is empty (method.md 3.2): a.replace(sm, pm) vs b */
static int64_t raw_cost(const fc_align_ctx_t *c, int64_t s, int64_t p) {
    const u32_strings *sr = &c->src_repl, *pr = &c->piv_raw;
    return fc_levenshtein(PTR(sr, s), LEN(sr, s), PTR(pr, p), LEN(pr, p));
}

/* Cost table [n_src_distinct x n_piv_distinct], pivots ordered by class. Pivot tokens of
 * class 0 and 1 are packed 16 or 8 at a time and every source string runs against each
 * pack in one bit-parallel pass; the class-2 pivots (long or empty) pair by pair, their
 * pattern prepared once. */
static int fill_costs(const fc_align_ctx_t *c, const int64_t *us, int64_t nus, const int64_t *up,
                      int64_t nup, const int64_t n_cls[3], int32_t *cost) {
    const u32_strings *ss = &c->src_strip, *pst = &c->piv_strip;
    int64_t npack = (n_cls[0] + 15) / 16 + (n_cls[1] + 7) / 8, packed = n_cls[0] + n_cls[1];
    fc_lev_pack *packs = malloc((size_t)(npack ? npack : 1) * sizeof *packs);
    int64_t *first = malloc((size_t)(npack ? npack : 1) * sizeof *first);
    fc_lev_pattern *pat = malloc(sizeof *pat);
    if (!packs || !first || !pat) { free(packs); free(first); free(pat); return -1; }
    int rc = -1;
    int64_t k = 0;
    for (int64_t b = 0; b < packed; k++) {
        int width = b < n_cls[0] ? 8 : 16;
        int64_t end = b < n_cls[0] ? n_cls[0] : packed, cnt = 128 / width;
        if (cnt > end - b) cnt = end - b;
        const uint32_t *pats[16];
        int64_t lens[16];
        for (int64_t q = 0; q < cnt; q++)
            pats[q] = PTR(pst, up[b + q]), lens[q] = LEN(pst, up[b + q]);
        fc_lev_pack_init(&packs[k], pats, lens, (int)cnt, width);
        first[k] = b;
        b += cnt;
    }
    int simd = fc_align_simd();
    for (int64_t a = 0; a < nus; a++) {
        int64_t s = us[a], n1 = LEN(ss, s);
        int32_t *row = cost + a * nup;
        if (n1 > 0) {
            for (k = 0; k + 1 < npack; k += 2)
                fc_lev_pack_dist(&packs[k], &packs[k + 1], PTR(ss, s), n1, row + first[k],
                                 row + first[k + 1], simd);
            if (k < npack)
                fc_lev_pack_dist(&packs[k], NULL, PTR(ss, s), n1, row + first[k], NULL, simd);
            continue;
        }
        for (int64_t b = 0; b < packed; b++) { /* empty stripped source: raw strings */
            int64_t v = raw_cost(c, s, up[b]);
            if (v < 0) goto done;
            row[b] = (int32_t)v;
        }
    }
    for (int64_t b = packed; b < nup; b++) {
        int64_t p = up[b], np = LEN(pst, p);
        if (np > 0 && np <= FC_LEV_WORD) fc_lev_pattern_init(pat, PTR(pst, p), (int)np);
        for (int64_t a = 0; a < nus; a++) {
            int64_t s = us[a], n1 = LEN(ss, s), v;
            if (n1 == 0 || np == 0) v = raw_cost(c, s, p);
            else if (np <= FC_LEV_WORD) v = fc_lev_pattern_dist(pat, PTR(ss, s), n1, -1);
            else v = fc_levenshtein(PTR(ss, s), n1, PTR(pst, p), np);
            if (v < 0) goto done;
            cost[a * nup + b] = (int32_t)v;
        }
    }
    rc = 0;
done:
    free(packs);
    free(first);
    free(pat);
    return rc;
}

fc_status fc_alignment_from_path(const int64_t *src_pos, const int64_t *piv_pos, int64_t len,
                                 int64_t m, fc_alignment *out, fc_error *err) {
    out->m = m;
    out->indptr = calloc((size_t)m + 1, sizeof(int64_t));
    out->indices = malloc((size_t)(len ? len : 1) * sizeof(int64_t));
    if (!out->indptr || !out->indices) {
        fc_alignment_free(out);
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory for an alignment");
    }
    for (int64_t k = 0; k < len; k++) out->indptr[piv_pos[k] + 1]++;
    for (int64_t j = 0; j < m; j++) out->indptr[j + 1] += out->indptr[j];
    /* pairs arrive sorted by pivot position, then source position */
    for (int64_t k = 0; k < len; k++) out->indices[k] = src_pos[k];
    return FC_OK;
}

fc_status fc_align_dtw(const fc_align_ctx_t *c, const int64_t *src_ids, int64_t n,
                       const int64_t *pivot_ids, int64_t m, fc_alignment *out, fc_error *err) {
    memset(out, 0, sizeof *out);
    fc_status st = fc_align_check_ids(src_ids, n, c->src, "src_ids", err);
    if (!st) st = fc_align_check_ids(pivot_ids, m, c->pivot, "pivot_ids", err);
    if (st) return st;
    if (n == 0 || m == 0) return fc_alignment_from_path(NULL, NULL, 0, m, out, err);
    int64_t bound = (c->src_repl.max_len + c->piv_raw.max_len + 1);
    if ((n + m) > (int64_t)FC_DTW_INF / bound || n > ((int64_t)1 << 40) / m)
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "dtw_too_long",
                                 "sequences of %lld x %lld tokens are too long for DTW; use "
                                 "method=\"offsets\" (rule dtw_too_long)", (long long)n,
                                 (long long)m);
    int64_t *si = malloc((size_t)n * sizeof *si), *pj = malloc((size_t)m * sizeof *pj);
    int64_t *us = NULL, *up = NULL, *path_s = NULL, *path_p = NULL;
    int32_t *cost = NULL, *pj32 = malloc((size_t)m * sizeof *pj32);
    fc_dtw_moves mv = {0};
    st = FC_ERR_NOMEM;
    if (!si || !pj || !pj32) goto done;
    int64_t nus = distinct(src_ids, n, si, &us), nup = distinct(pivot_ids, m, pj, &up);
    if (nus < 0 || nup < 0) goto done;
    int64_t n_cls[3];
    cost = malloc((size_t)nus * (size_t)nup * sizeof *cost);
    if (!cost || order_pivots(c, up, nup, pj, m, n_cls)
        || fill_costs(c, us, nus, up, nup, n_cls, cost))
        goto done;
    for (int64_t j = 0; j < m; j++) pj32[j] = (int32_t)pj[j];
    int32_t max_cost = 0;
    for (int64_t k = 0; k < nus * nup; k++) max_cost = cost[k] > max_cost ? cost[k] : max_cost;
    if (fc_dtw_forward(cost, nus, nup, max_cost, si, n, pj32, m, &mv)) goto done;

    /* backtrack; the path has at most n + m - 1 cells */
    path_s = malloc((size_t)(n + m) * sizeof *path_s);
    path_p = malloc((size_t)(n + m) * sizeof *path_p);
    if (!path_s || !path_p) goto done;
    int64_t i = n - 1, j = m - 1, len = 0;
    while (i > 0 || j > 0) {
        path_s[len] = i, path_p[len] = j, len++;
        int64_t w = i * mv.stride + (j >> 4), bit = j & 15;
        if (mv.left[w] >> bit & 1) j--;
        else if (mv.up[w] >> bit & 1) i--;
        else i--, j--;
    }
    path_s[len] = 0, path_p[len] = 0, len++;
    for (int64_t a = 0, b = len - 1; a < b; a++, b--) { /* into path order */
        int64_t t = path_s[a]; path_s[a] = path_s[b]; path_s[b] = t;
        t = path_p[a]; path_p[a] = path_p[b]; path_p[b] = t;
    }
    st = fc_alignment_from_path(path_s, path_p, len, m, out, err);
    goto finish;
done:
    fc_error_set(err, FC_ERR_NOMEM, "out of memory aligning %lld x %lld tokens", (long long)n,
                 (long long)m);
finish:
    free(si); free(pj); free(pj32); free(us); free(up); free(cost);
    free(mv.left); free(mv.up); free(path_s); free(path_p);
    return st;
}
