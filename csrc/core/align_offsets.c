/* align_offsets.c - exact O(n + m) alignment on the canonical bytes of the tokens.
 *
 * Both token sequences spell a byte string. Walking the two strings together gives every
 * token a span [start, end) in common coordinates (bytes matched on both sides); bytes of
 * ASCII whitespace present on one side only (a SentencePiece dummy prefix, a WordPiece
 * word space) are skipped. A pivot token is aligned with every source token whose span
 * overlaps its span. Tokens with an empty span (special tokens, skipped whitespace) pair
 * with the other side's empty-span special tokens at the same offset, in order, or else
 * with the other side's token covering that offset (the one before it at the very end). */
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

typedef struct side {
    const fc_vocab_t *v;
    const int64_t    *ids;
    int64_t           n;
    int64_t          *start, *end; /* common coordinates per position */
    int64_t           last_nonempty;
} side;

static int is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* the side's canonical bytes in one buffer; tok_at[k] = byte offset of position k */
static int flatten(side *s, fc_buf *bytes, int64_t *tok_at) {
    for (int64_t k = 0; k < s->n; k++) {
        int64_t id = s->ids[k];
        tok_at[k] = (int64_t)bytes->len;
        if (fc_buf_append(bytes, s->v->canonical.data + s->v->can_off[id],
                          (size_t)(s->v->can_off[id + 1] - s->v->can_off[id])))
            return -1;
    }
    tok_at[s->n] = (int64_t)bytes->len;
    return 0;
}

/* Match the two byte strings: equal outside whitespace, whitespace runs matched by
 * fc_match_ws. ma and mb mark matched bytes. 1 on a mismatch (bad_a, bad_b = byte offsets). */
static int match_bytes(const char *a, int64_t na, const char *b, int64_t nb, uint8_t *ma,
                       uint8_t *mb, int64_t *bad_a, int64_t *bad_b) {
    int64_t i = 0, j = 0;
    while (i < na || j < nb) {
        int wa = i < na && is_ws((unsigned char)a[i]), wb = j < nb && is_ws((unsigned char)b[j]);
        if (wa || wb) {
            int64_t i2 = i, j2 = j;
            while (i2 < na && is_ws((unsigned char)a[i2])) i2++;
            while (j2 < nb && is_ws((unsigned char)b[j2])) j2++;
            if (fc_match_ws((const unsigned char *)a + i, i2 - i, (const unsigned char *)b + j,
                            j2 - j, ma + i, mb + j))
                return -1;
            i = i2, j = j2;
            continue;
        }
        if (i < na && j < nb && a[i] == b[j]) { ma[i++] = 1; mb[j++] = 1; continue; }
        *bad_a = i, *bad_b = j;
        return 1;
    }
    return 0;
}

/* token spans in common coordinates (count of matched bytes before each byte) */
static void spans(side *s, const int64_t *tok_at, const uint8_t *matched) {
    int64_t c = 0, k = 0;
    for (int64_t t = 0; t < s->n; t++) {
        s->start[t] = c;
        for (; k < tok_at[t + 1]; k++) c += matched[k];
        s->end[t] = c;
    }
}

/* byte offset -> position holding it */
static int64_t position_of(const int64_t *tok_at, int64_t n, int64_t byte) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (tok_at[mid] <= byte) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* the other side's non-empty position covering common offset c (queries come with c
 * non-decreasing, so the cursor only moves forward); past the end: the last non-empty one */
static int64_t covering(const side *o, int64_t *cur, int64_t c) {
    while (*cur < o->n && (o->start[*cur] == o->end[*cur] || o->end[*cur] <= c)) (*cur)++;
    if (*cur < o->n) return *cur;
    return o->last_nonempty >= 0 ? o->last_nonempty : o->n - 1;
}

/* the k-th empty-span position at or after `first` (all at the same offset) */
static int64_t group_member(const side *g, int64_t first, int64_t k) {
    int64_t t = first;
    for (;; t++) {
        if (g->start[t] == g->end[t] && k-- == 0) return t;
    }
}

/* Pairs (source, pivot) sorted by pivot then source, duplicates removed, in O(pairs + m):
 * a counting sort by pivot position, then an insertion sort inside each pivot's (short,
 * nearly sorted) list. */
static int sort_pairs(const int64_t *pairs, int64_t np, int64_t m, int64_t *ps, int64_t *pp,
                      int64_t *out_len) {
    int64_t *start = calloc((size_t)m + 1, sizeof *start);
    if (!start) return -1;
    for (int64_t k = 0; k < np; k++) start[pairs[2 * k + 1] + 1]++;
    for (int64_t j = 0; j < m; j++) start[j + 1] += start[j];
    for (int64_t k = 0; k < np; k++) {
        int64_t j = pairs[2 * k + 1];
        int64_t at = start[j]++;
        ps[at] = pairs[2 * k];
        pp[at] = j;
    }
    int64_t len = 0, lo = 0;
    for (int64_t j = 0; j < m; j++) { /* start[j] is now the end of j's list */
        int64_t hi = start[j];
        for (int64_t a = lo + 1; a < hi; a++)
            for (int64_t b = a; b > lo && ps[b - 1] > ps[b]; b--) {
                int64_t t = ps[b]; ps[b] = ps[b - 1]; ps[b - 1] = t;
            }
        for (int64_t a = lo; a < hi; a++)
            if (a == lo || ps[a] != ps[a - 1]) ps[len] = ps[a], pp[len] = j, len++;
        lo = hi;
    }
    free(start);
    *out_len = len;
    return 0;
}

fc_status fc_align_offsets(const fc_align_ctx_t *c, const int64_t *src_ids, int64_t n,
                           const int64_t *pivot_ids, int64_t m, int fallback_dtw,
                           int *used_fallback, fc_alignment *out, fc_error *err) {
    memset(out, 0, sizeof *out);
    if (used_fallback) *used_fallback = 0;
    fc_status st = fc_align_check_ids(src_ids, n, c->src, "src_ids", err);
    if (!st) st = fc_align_check_ids(pivot_ids, m, c->pivot, "pivot_ids", err);
    if (st) return st;
    if (n == 0 || m == 0) return fc_alignment_from_path(NULL, NULL, 0, m, out, err);
    side s = {c->src, src_ids, n, NULL, NULL, -1}, p = {c->pivot, pivot_ids, m, NULL, NULL, -1};
    s.start = malloc((size_t)n * 2 * sizeof(int64_t));
    p.start = malloc((size_t)m * 2 * sizeof(int64_t));
    int64_t *pairs = malloc((size_t)(n + m) * 2 * 2 * sizeof(int64_t)); /* (src, piv) */
    int64_t *ps = NULL, *pp = NULL;
    if (!s.start || !p.start || !pairs) goto nomem;
    s.end = s.start + n;
    p.end = p.start + m;
    int64_t bad_i = 0, bad_j = 0;
    int rc = -1;
    fc_buf sb = {0}, pb = {0};
    int64_t *s_at = malloc((size_t)(n + 1) * sizeof *s_at);
    int64_t *p_at = malloc((size_t)(m + 1) * sizeof *p_at);
    uint8_t *sm = NULL, *pm = NULL;
    if (s_at && p_at && !flatten(&s, &sb, s_at) && !flatten(&p, &pb, p_at)
        && (sm = calloc(sb.len + 1, 1)) && (pm = calloc(pb.len + 1, 1)))
        rc = match_bytes(sb.data, (int64_t)sb.len, pb.data, (int64_t)pb.len, sm, pm, &bad_i,
                         &bad_j);
    if (rc == 0) {
        spans(&s, s_at, sm);
        spans(&p, p_at, pm);
    } else if (rc == 1) {
        bad_i = position_of(s_at, n, bad_i);
        bad_j = position_of(p_at, m, bad_j);
    }
    fc_buf_free(&sb); fc_buf_free(&pb); free(s_at); free(p_at); free(sm); free(pm);
    if (rc < 0) goto nomem;
    if (rc == 1) {
        free(s.start); free(p.start); free(pairs);
        if (fallback_dtw) {
            if (used_fallback) *used_fallback = 1;
            return fc_align_dtw(c, src_ids, n, pivot_ids, m, out, err);
        }
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "offsets_text_mismatch",
                                 "the sequences spell different texts (source position %lld, "
                                 "pivot position %lld differ beyond whitespace); offsets "
                                 "alignment needs lossless tokenizations of the same text, "
                                 "use method=\"dtw\" or fallback=\"dtw\" (rule "
                                 "offsets_text_mismatch)", (long long)bad_i, (long long)bad_j);
    }
    for (int64_t i = 0; i < n; i++) if (s.start[i] < s.end[i]) s.last_nonempty = i;
    for (int64_t j = 0; j < m; j++) if (p.start[j] < p.end[j]) p.last_nonempty = j;
    int64_t np = 0;
    /* 1. overlaps of non-empty spans, a merge of two sorted interval lists */
    for (int64_t i = 0, j = 0; i < n && j < m;) {
        if (s.start[i] == s.end[i]) { i++; continue; }
        if (p.start[j] == p.end[j]) { j++; continue; }
        if (s.start[i] < p.end[j] && p.start[j] < s.end[i]) {
            pairs[2 * np] = i, pairs[2 * np + 1] = j, np++;
        }
        if (s.end[i] < p.end[j]) i++;
        else if (p.end[j] < s.end[i]) j++;
        else i++, j++;
    }
    /* 2. empty spans (special tokens, one-sided whitespace), grouped by offset: groups at
     * the same offset on both sides pair diagonally (k-th with k-th, the rest of the longer
     * group with the other's last); a group alone goes to the other side's covering token */
    int64_t cs = 0, cp = 0;
    for (int64_t i = 0, j = 0;;) {
        while (i < n && s.start[i] != s.end[i]) i++;
        while (j < m && p.start[j] != p.end[j]) j++;
        if (i >= n && j >= m) break;
        int64_t c = i >= n ? p.start[j] : j >= m ? s.start[i]
                  : (s.start[i] < p.start[j] ? s.start[i] : p.start[j]);
        int64_t gs[2] = {0, 0}, gp[2] = {0, 0}; /* [first, count) of each group */
        for (int64_t k = i; k < n && s.start[k] == c; k++)
            if (s.start[k] == s.end[k]) { if (!gs[1]) gs[0] = k; gs[1]++; }
        for (int64_t k = j; k < m && p.start[k] == c; k++)
            if (p.start[k] == p.end[k]) { if (!gp[1]) gp[0] = k; gp[1]++; }
        if (gs[1] && gp[1]) {
            for (int64_t k = 0; k < gs[1] || k < gp[1]; k++) {
                int64_t x = k < gs[1] ? k : gs[1] - 1, y = k < gp[1] ? k : gp[1] - 1;
                pairs[2 * np] = group_member(&s, gs[0], x);
                pairs[2 * np + 1] = group_member(&p, gp[0], y);
                np++;
            }
        } else if (gs[1]) {
            for (int64_t k = 0; k < gs[1]; k++) {
                pairs[2 * np] = group_member(&s, gs[0], k);
                pairs[2 * np + 1] = covering(&p, &cp, c);
                np++;
            }
        } else {
            for (int64_t k = 0; k < gp[1]; k++) {
                pairs[2 * np] = covering(&s, &cs, c);
                pairs[2 * np + 1] = group_member(&p, gp[0], k);
                np++;
            }
        }
        /* move past both groups */
        while (i < n && (s.start[i] < c || (s.start[i] == c && s.start[i] == s.end[i]))) i++;
        while (j < m && (p.start[j] < c || (p.start[j] == c && p.start[j] == p.end[j]))) j++;
    }
    ps = malloc((size_t)(np ? np : 1) * sizeof *ps);
    pp = malloc((size_t)(np ? np : 1) * sizeof *pp);
    int64_t k2 = 0;
    if (!ps || !pp || sort_pairs(pairs, np, m, ps, pp, &k2)) goto nomem;
    st = fc_alignment_from_path(ps, pp, k2, m, out, err);
    free(s.start); free(p.start); free(pairs); free(ps); free(pp);
    return st;
nomem:
    free(s.start); free(p.start); free(pairs); free(ps); free(pp);
    return fc_error_set(err, FC_ERR_NOMEM, "out of memory aligning %lld x %lld tokens",
                        (long long)n, (long long)m);
}
