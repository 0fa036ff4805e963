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

/* the byte at (token i, offset b) after skipping exhausted tokens; -1 at the end */
static int peek(side *s, int64_t *i, int64_t *b, int64_t c) {
    while (*i < s->n) {
        int64_t id = s->ids[*i];
        int64_t len = s->v->can_off[id + 1] - s->v->can_off[id];
        if (*b < len) return (unsigned char)s->v->canonical.data[s->v->can_off[id] + *b];
        s->end[*i] = c;
        (*i)++;
        *b = 0;
        if (*i < s->n) s->start[*i] = c;
    }
    return -1;
}

/* Walk both byte strings; 0 on success, else -1 with the positions of the mismatch. */
static int walk(side *s, side *p, int64_t *total, int64_t *bad_i, int64_t *bad_j) {
    int64_t i = 0, bi = 0, j = 0, bj = 0, c = 0;
    if (s->n) s->start[0] = 0;
    if (p->n) p->start[0] = 0;
    for (;;) {
        int x = peek(s, &i, &bi, c), y = peek(p, &j, &bj, c);
        if (x < 0 && y < 0) break;
        if (x >= 0 && x == y) { bi++, bj++, c++; }
        else if (x >= 0 && is_ws((unsigned char)x)) bi++;
        else if (y >= 0 && is_ws((unsigned char)y)) bj++;
        else { *bad_i = i; *bad_j = j; return -1; }
    }
    *total = c;
    return 0;
}

/* the other side's non-empty position covering common offset c (queries come with c
 * non-decreasing, so the cursor only moves forward); past the end: the last non-empty one */
static int64_t covering(const side *o, int64_t *cur, int64_t c) {
    while (*cur < o->n && (o->start[*cur] == o->end[*cur] || o->end[*cur] <= c)) (*cur)++;
    if (*cur < o->n) return *cur;
    return o->last_nonempty >= 0 ? o->last_nonempty : o->n - 1;
}

static int cmp_pair(const void *a, const void *b) {
    const int64_t *x = a, *y = b;
    if (x[1] != y[1]) return x[1] < y[1] ? -1 : 1;
    return x[0] < y[0] ? -1 : x[0] > y[0];
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
    int64_t total, bad_i = 0, bad_j = 0;
    if (walk(&s, &p, &total, &bad_i, &bad_j)) {
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
    /* 2. empty spans: specials at the same offset pair in order; others take the cover */
    uint8_t *paired = calloc((size_t)(n + m), 1);
    if (!paired) goto nomem;
    for (int64_t i = 0, j = 0; i < n || j < m;) {
        while (i < n && !(s.start[i] == s.end[i] && (s.v->flags[src_ids[i]] & FC_TOKEN_SPECIAL))) i++;
        while (j < m && !(p.start[j] == p.end[j] && (p.v->flags[pivot_ids[j]] & FC_TOKEN_SPECIAL))) j++;
        if (i >= n || j >= m) break;
        if (s.start[i] < p.start[j]) i++;
        else if (p.start[j] < s.start[i]) j++;
        else {
            pairs[2 * np] = i, pairs[2 * np + 1] = j, np++;
            paired[i] = paired[n + j] = 1;
            i++, j++;
        }
    }
    int64_t cur = 0;
    for (int64_t i = 0; i < n; i++) {
        if (s.start[i] != s.end[i] || paired[i]) continue;
        pairs[2 * np] = i, pairs[2 * np + 1] = covering(&p, &cur, s.start[i]), np++;
    }
    cur = 0;
    for (int64_t j = 0; j < m; j++) {
        if (p.start[j] != p.end[j] || paired[n + j]) continue;
        pairs[2 * np] = covering(&s, &cur, p.start[j]), pairs[2 * np + 1] = j, np++;
    }
    free(paired);
    qsort(pairs, (size_t)np, 2 * sizeof(int64_t), cmp_pair);
    ps = malloc((size_t)np * sizeof *ps);
    pp = malloc((size_t)np * sizeof *pp);
    if (!ps || !pp) goto nomem;
    int64_t k2 = 0;
    for (int64_t k = 0; k < np; k++) {
        if (k2 && ps[k2 - 1] == pairs[2 * k] && pp[k2 - 1] == pairs[2 * k + 1]) continue;
        ps[k2] = pairs[2 * k], pp[k2] = pairs[2 * k + 1], k2++;
    }
    (void)total;
    st = fc_alignment_from_path(ps, pp, k2, m, out, err);
    free(s.start); free(p.start); free(pairs); free(ps); free(pp);
    return st;
nomem:
    free(s.start); free(p.start); free(pairs); free(ps); free(pp);
    return fc_error_set(err, FC_ERR_NOMEM, "out of memory aligning %lld x %lld tokens",
                        (long long)n, (long long)m);
}
