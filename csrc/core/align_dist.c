/* align_dist.c - distribution alignment (method.md section 5): the source's top-K at the
 * source positions aligned with each pivot position become a list of (pivot id, logit):
 *   MAP(j)  the top-K of source position j through the map, unique ids, highest logit kept
 *   ONEHOT  [(next pivot token, 1.0)]  (the last position reuses its own token)
 *   EMPTY   []  (the trainer substitutes the pivot's own distribution)
 * chosen by comparing the decoded strings of the aligned tokens. */
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

typedef struct str { const char *s; size_t n; } str;

static str u8_at(const u8_strings *t, int64_t id) {
    return (str){t->buf.data + t->off[id], (size_t)(t->off[id + 1] - t->off[id])};
}

static int ends_with(str a, str b) { return a.n >= b.n && memcmp(a.s + a.n - b.n, b.s, b.n) == 0; }
static int equal(str a, str b) { return a.n == b.n && memcmp(a.s, b.s, a.n) == 0; }

typedef struct out_list {
    int32_t *ids;
    float   *logits;
    int64_t  len;
} out_list;

static fc_status map_position(const fc_align_ctx_t *c, int64_t j, const int64_t *topk_ids,
                              const float *topk_logits, int64_t k, const int32_t *eff_map,
                              out_list *o, int64_t start, fc_error *err) {
    for (int64_t t = 0; t < k; t++) {
        int64_t id = topk_ids[j * k + t];
        if (id < 0 || id >= c->src->V)
            return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "token_id_out_of_range",
                                     "topk_ids[%lld][%lld] = %lld is not a source token id "
                                     "(vocabulary size %lld) (rule token_id_out_of_range)",
                                     (long long)j, (long long)t, (long long)id,
                                     (long long)c->src->V);
        int32_t q = eff_map[id];
        if (q < 0) continue; /* no pivot token: dropped */
        float logit = topk_logits[j * k + t];
        int64_t u = start;
        while (u < o->len && o->ids[u] != q) u++;
        if (u < o->len) {
            if (logit > o->logits[u]) o->logits[u] = logit; /* the highest logit is kept */
            continue;
        }
        o->ids[o->len] = q;
        o->logits[o->len] = logit;
        o->len++;
    }
    return FC_OK;
}

enum { RULE_ONEHOT, RULE_EMPTY, RULE_MAP };

/* the rule for a pivot position aligned with J[0..nj) (method.md section 5) */
static int choose(const fc_align_ctx_t *c, fc_dist_mode mode, int multi_rules,
                  const int64_t *src_ids, int64_t piv_id, const int64_t *J, int64_t nj,
                  const int32_t *map, fc_buf *scratch, int64_t *map_pos) {
    if (nj == 0) return RULE_ONEHOT;
    const fc_vocab_t *pv = c->pivot;
    if (nj == 1) {
        str P = {pv->decoded.data + pv->dec_off[piv_id],
                 (size_t)(pv->dec_off[piv_id + 1] - pv->dec_off[piv_id])};
        str B = u8_at(&c->src_dec_repl, src_ids[J[0]]);
        int ok = mode == FC_DIST_MS ? (ends_with(B, P) || ends_with(P, B))
               : mode == FC_DIST_EM ? equal(P, B)
               : (equal(P, B) || (map && map[src_ids[J[0]]] == piv_id));
        *map_pos = J[0];
        return ok ? RULE_MAP : RULE_ONEHOT;
    }
    if (mode != FC_DIST_MS || !multi_rules) return RULE_ONEHOT;
    str P = u8_at(&c->piv_dec_strip, piv_id);
    /* (a) the first aligned source token sharing an end with the pivot token */
    for (int64_t q = 0; q < nj; q++) {
        str B = u8_at(&c->src_dec_strip, src_ids[J[q]]);
        if (ends_with(P, B) || ends_with(B, P)) { *map_pos = J[q]; return RULE_MAP; }
    }
    /* (b) segment P greedily by the source tokens in order */
    size_t rest = 0;
    int64_t last = -1;
    scratch->len = 0;
    for (int64_t q = 0; q < nj; q++) {
        str B = u8_at(&c->src_dec_strip, src_ids[J[q]]);
        if (P.n - rest >= B.n && memcmp(P.s + rest, B.s, B.n) == 0) { rest += B.n; last = q; }
        if (fc_buf_append(scratch, B.s, B.n)) return -1;
    }
    int segmented = rest == P.n && last >= 0;
    str all = {scratch->data ? scratch->data : "", scratch->len};
    if (segmented) { *map_pos = J[last]; return RULE_MAP; }
    if (ends_with(all, P) || ends_with(P, all)) return RULE_EMPTY;
    return RULE_ONEHOT; /* (c) */
}

fc_status fc_align_distributions(const fc_align_ctx_t *c, fc_dist_mode mode, int multi_rules,
                                 const int64_t *src_ids, int64_t n, const int64_t *pivot_ids,
                                 int64_t m, const fc_alignment *a, const int64_t *topk_ids,
                                 const float *topk_logits, int64_t k, const int32_t *eff_map,
                                 const int32_t *map, int64_t *out_offsets, int32_t *out_ids,
                                 float *out_logits, fc_error *err) {
    if ((unsigned)mode > FC_DIST_MINED)
        return fc_error_set(err, FC_ERR_VALUE, "unknown distribution alignment mode %d", (int)mode);
    fc_status st = fc_align_check_ids(src_ids, n, c->src, "src_ids", err);
    if (!st) st = fc_align_check_ids(pivot_ids, m, c->pivot, "pivot_ids", err);
    if (st) return st;
    if (a->m != m || a->indptr[0] != 0)
        return fc_error_set(err, FC_ERR_VALUE, "the alignment has %lld pivot positions, the "
                            "pivot sequence %lld", (long long)a->m, (long long)m);
    for (int64_t i = 0; i < m; i++) {
        if (a->indptr[i + 1] < a->indptr[i])
            return fc_error_set(err, FC_ERR_VALUE, "alignment indptr decreases at %lld",
                                (long long)i);
    }
    for (int64_t q = 0; q < a->indptr[m]; q++)
        if (a->indices[q] < 0 || a->indices[q] >= n)
            return fc_error_set(err, FC_ERR_VALUE, "alignment index %lld is outside the source "
                                "sequence (length %lld)", (long long)a->indices[q], (long long)n);
    for (int64_t s = 0; s < c->src->V; s++)
        if (eff_map[s] >= c->pivot->V || (map && map[s] >= c->pivot->V))
            return fc_error_set(err, FC_ERR_VALUE, "the vocabulary map sends source id %lld to "
                                "%d, outside the pivot vocabulary", (long long)s,
                                (int)(map && map[s] >= c->pivot->V ? map[s] : eff_map[s]));
    out_list o = {out_ids, out_logits, 0};
    fc_buf scratch = {0};
    out_offsets[0] = 0;
    for (int64_t i = 0; i < m; i++) {
        int64_t map_pos = -1;
        int rule = choose(c, mode, multi_rules, src_ids, pivot_ids[i], a->indices + a->indptr[i],
                          a->indptr[i + 1] - a->indptr[i], map, &scratch, &map_pos);
        if (rule < 0) { st = fc_error_set(err, FC_ERR_NOMEM, "out of memory"); break; }
        if (rule == RULE_MAP) {
            st = map_position(c, map_pos, topk_ids, topk_logits, k, eff_map, &o, o.len, err);
            if (st) break;
        } else if (rule == RULE_ONEHOT) {
            o.ids[o.len] = (int32_t)pivot_ids[i + 1 < m ? i + 1 : m - 1];
            o.logits[o.len] = 1.0f;
            o.len++;
        }
        out_offsets[i + 1] = o.len;
    }
    fc_buf_free(&scratch);
    return st;
}
