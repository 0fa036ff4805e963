/* align_dtw.c - the reference's DTW token alignment (method.md 3.2-3.3), exact, fast.
 *
 * D[i][j] = cost(s_i, p_j) + min(D[i-1][j], D[i][j-1], D[i-1][j-1]) over n x m cells,
 * then a backtrack from (n-1, m-1) taking the first minimum of [diag, left, up]. The
 * backtrack's choice at (i, j) is the argmin of the same three predecessors the forward
 * pass minimises, so it is recorded then (one byte per cell) and only a few rows of values
 * are kept. Costs depend only on the (source id, pivot id) pair: they are computed once
 * per distinct pair of the sequence, with a bit-parallel Levenshtein (short source strings
 * packed 8 or 4 to a word). */
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"
#include "levenshtein.h"

enum { MOVE_DIAG = 0, MOVE_LEFT = 1, MOVE_UP = 2 };

#define DTW_INF 0x3fffffff

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

#define STR(s, id) ((s)->data + (s)->off[id]), ((s)->off[(id) + 1] - (s)->off[id])
#define LEN(s, id) ((s)->off[(id) + 1] - (s)->off[id])

/* one cost, from the pattern of source token s (prepared by the caller when short) */
static int64_t pair_cost(const fc_align_ctx_t *c, int64_t s, int64_t p, const fc_lev_pattern *ps1,
                         const fc_lev_pattern *ps2) {
    const u32_strings *ss = &c->src_strip, *sr = &c->src_repl;
    const u32_strings *pst = &c->piv_strip, *pr = &c->piv_raw;
    int64_t n1 = LEN(ss, s), n2 = LEN(sr, s), np1 = LEN(pst, p);
    if (n1 > 0 && np1 > 0) {
        const uint32_t *t = pst->data + pst->off[p];
        return n1 <= FC_LEV_WORD ? fc_lev_pattern_dist(ps1, t, np1, -1)
                                 : fc_levenshtein(ss->data + ss->off[s], n1, t, np1);
    }
    const uint32_t *t = pr->data + pr->off[p];
    return n2 <= FC_LEV_WORD ? fc_lev_pattern_dist(ps2, t, LEN(pr, p), -1)
                             : fc_levenshtein(sr->data + sr->off[s], n2, t, LEN(pr, p));
}

/* cost table [n_src_distinct x n_piv_distinct]. Source tokens whose stripped string has 1..8
 * (or 9..16) code points are packed 8 (4) at a time and compared with every pivot token whose
 * stripped string is non-empty in one bit-parallel pass; the other pairs one by one. */
static int fill_costs(const fc_align_ctx_t *c, const int64_t *us, int64_t nus, const int64_t *up,
                      int64_t nup, int32_t *cost) {
    const u32_strings *ss = &c->src_strip, *sr = &c->src_repl, *pst = &c->piv_strip;
    fc_lev_pattern pat_strip, pat_repl;
    fc_lev_pack pack;
    int64_t *order = malloc((size_t)(nus ? nus : 1) * sizeof *order);
    if (!order) return -1;
    /* source rows by packing class: 8-wide, 4-wide, then the rest */
    int64_t no = 0;
    for (int cls = 0; cls < 3; cls++)
        for (int64_t a = 0; a < nus; a++) {
            int64_t n1 = LEN(ss, us[a]);
            int k = (n1 >= 1 && n1 <= 8) ? 0 : (n1 >= 9 && n1 <= 16) ? 1 : 2;
            if (k == cls) order[no++] = a;
        }
    for (int64_t o = 0; o < nus;) {
        int64_t a0 = order[o], n0 = LEN(ss, us[a0]);
        int width = (n0 >= 1 && n0 <= 8) ? 8 : (n0 >= 9 && n0 <= 16) ? 16 : 0;
        if (width) {
            const uint32_t *pats[8];
            int64_t lens[8], rows[8];
            int cnt = 0;
            while (cnt < 64 / width && o < nus) {
                int64_t a = order[o], n1 = LEN(ss, us[a]);
                int w = (n1 >= 1 && n1 <= 8) ? 8 : (n1 >= 9 && n1 <= 16) ? 16 : 0;
                if (w != width) break;
                pats[cnt] = ss->data + ss->off[us[a]];
                lens[cnt] = n1;
                rows[cnt++] = a;
                o++;
            }
            fc_lev_pack_init(&pack, pats, lens, cnt, width);
            int32_t d[8], *row[8];
            for (int k = 0; k < cnt; k++) row[k] = cost + rows[k] * nup;
            for (int64_t b = 0; b < nup; b++) {
                int64_t p = up[b];
                if (LEN(pst, p) > 0) {
                    fc_lev_pack_dist(&pack, pst->data + pst->off[p], LEN(pst, p), d);
                    for (int k = 0; k < cnt; k++) row[k][b] = d[k];
                } else {
                    for (int k = 0; k < cnt; k++) {
                        int64_t s = us[rows[k]], n2 = LEN(sr, s);
                        if (n2 <= FC_LEV_WORD)
                            fc_lev_pattern_init(&pat_repl, sr->data + sr->off[s], (int)n2);
                        int64_t v = pair_cost(c, s, p, NULL, &pat_repl);
                        if (v < 0) { free(order); return -1; }
                        cost[rows[k] * nup + b] = (int32_t)v;
                    }
                }
            }
            continue;
        }
        int64_t s = us[a0], n1 = LEN(ss, s), n2 = LEN(sr, s);
        if (n1 > 0 && n1 <= FC_LEV_WORD)
            fc_lev_pattern_init(&pat_strip, ss->data + ss->off[s], (int)n1);
        if (n2 <= FC_LEV_WORD) fc_lev_pattern_init(&pat_repl, sr->data + sr->off[s], (int)n2);
        for (int64_t b = 0; b < nup; b++) {
            int64_t v = pair_cost(c, s, up[b], &pat_strip, &pat_repl);
            if (v < 0) { free(order); return -1; }
            cost[a0 * nup + b] = (int32_t)v;
        }
        o++;
    }
    free(order);
    return 0;
}

/* One DP cell from its diag, up and left neighbours and its cost: ties go to diag, then
 * left, then up (the first minimum of [diag, left, up]); the move is stored in *move.
 * Written with selects of computed values so that it compiles to conditional moves. */
static inline int32_t cell(int32_t dg, int32_t up_v, int32_t left, int32_t cost, uint8_t *move) {
    int32_t is_up = up_v < dg;
    int32_t best = is_up ? up_v : dg;
    int lw = left < best + is_up; /* left beats diag only if smaller, up if not larger */
    *move = lw ? (uint8_t)MOVE_LEFT : (uint8_t)(is_up ? MOVE_UP : MOVE_DIAG);
    return (lw ? left : best) + cost;
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
    if ((n + m) > (int64_t)DTW_INF / bound || n > ((int64_t)1 << 40) / m)
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "dtw_too_long",
                                 "sequences of %lld x %lld tokens are too long for DTW; use "
                                 "method=\"offsets\" (rule dtw_too_long)", (long long)n,
                                 (long long)m);
    int64_t *si = malloc((size_t)n * sizeof *si), *pj = malloc((size_t)m * sizeof *pj);
    int64_t *us = NULL, *up = NULL, *path_s = NULL, *path_p = NULL;
    int32_t *cost = NULL, *prev = malloc((size_t)m * 4), *cur = malloc((size_t)m * 4);
    int32_t *crow = malloc((size_t)m * 4), *crow2 = malloc((size_t)m * 4);
    int32_t *cur2 = malloc((size_t)m * 4);
    uint8_t *dir = malloc((size_t)n * (size_t)m);
    st = FC_ERR_NOMEM;
    if (!si || !pj || !prev || !cur || !crow || !crow2 || !cur2 || !dir) goto done;
    int64_t nus = distinct(src_ids, n, si, &us), nup = distinct(pivot_ids, m, pj, &up);
    if (nus < 0 || nup < 0) goto done;
    cost = malloc((size_t)nus * (size_t)nup * sizeof *cost);
    if (!cost || fill_costs(c, us, nus, up, nup, cost)) goto done;

    /* row 0: only moves left */
    for (int64_t j = 0; j < m; j++) crow[j] = cost[si[0] * nup + pj[j]];
    prev[0] = cost[si[0] * nup + pj[0]];
    dir[0] = MOVE_DIAG;
    for (int64_t j = 1; j < m; j++) { prev[j] = crow[j] + prev[j - 1]; dir[j] = MOVE_LEFT; }
    /* then two rows at a time: the second row's serial chain runs beside the first's */
    for (int64_t i = 1; i < n; i += 2) {
        int two = i + 1 < n;
        const int32_t *ca = cost + si[i] * nup, *cb = cost + si[two ? i + 1 : i] * nup;
        for (int64_t j = 0; j < m; j++) crow[j] = ca[pj[j]], crow2[j] = cb[pj[j]];
        uint8_t *da = dir + i * m, *db = dir + (i + 1) * m;
        int32_t la = crow[0] + prev[0], lb = crow2[0] + la;
        cur[0] = la, cur2[0] = lb;
        da[0] = MOVE_UP;
        if (two) db[0] = MOVE_UP;
        for (int64_t j = 1; j < m; j++) {
            int32_t dg = prev[j - 1], up_v = prev[j];
            int32_t va = cell(dg, up_v, la, crow[j], da + j);
            if (two) {
                int32_t vb = cell(la, va, lb, crow2[j], db + j);
                cur2[j] = lb = vb;
            }
            cur[j] = la = va;
        }
        int32_t *t = prev;
        if (two) { prev = cur2; cur2 = t; }
        else { prev = cur; cur = t; }
    }
    /* backtrack; the path has at most n + m - 1 cells */
    path_s = malloc((size_t)(n + m) * sizeof *path_s);
    path_p = malloc((size_t)(n + m) * sizeof *path_p);
    if (!path_s || !path_p) goto done;
    int64_t i = n - 1, j = m - 1, len = 0;
    while (i > 0 || j > 0) {
        path_s[len] = i, path_p[len] = j, len++;
        uint8_t mv = dir[i * m + j];
        if (mv == MOVE_DIAG) i--, j--;
        else if (mv == MOVE_LEFT) j--;
        else i--;
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
    free(si); free(pj); free(us); free(up); free(cost); free(prev); free(cur); free(crow);
    free(crow2); free(cur2);
    free(dir); free(path_s); free(path_p);
    return st;
}
