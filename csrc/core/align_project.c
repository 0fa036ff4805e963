/* align_project.c - the source's top-K log-probabilities carried to the pivot's next tokens
 * by the chain rule over bytes. The rules, their names and worked examples are in
 * docs/alignment.md ("Projection onto pivot tokens"); tests/reference/project_ref.py is the
 * plain-Python twin, and the masses are summed in the same order in both. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

/* A log-probability built from terms (docs/alignment.md, "Arithmetic"): one term is its own
 * value, so most entries need no exp or log; several terms are summed as probabilities, in
 * the order they come. v is the term while n == 1, the running sum of exp(term) once n >= 2. */
typedef struct lsum { int32_t n; double v; } lsum;

static inline void lsum_add(lsum *a, double x) {
    if (a->n == 0) a->v = x;
    else if (a->n == 1) a->v = exp(a->v) + exp(x);
    else a->v += exp(x);
    a->n++;
}

static inline double lsum_value(const lsum *a) {
    return a->n == 0 ? -INFINITY : a->n == 1 ? a->v : log(a->v);
}

typedef struct entry { int32_t id; lsum m; } entry;

/* An entry as the output orders it: its log-probability as written (float32, largest
 * first) in the high half, its id (lowest first) in the low half, so that one unsigned
 * comparison orders two entries. */
typedef uint64_t sort_key;

/* a slot of the entries' table: taken when gen is the position's generation */
typedef struct ent_slot { uint32_t gen; int32_t e; } ent_slot;

/* one sequence pair, everything the positions share */
typedef struct seq {
    const fc_project_ctx_t *c;
    const int64_t *src, *piv, *tk_ids;
    const float   *tk_lp, *true_lp;
    int64_t        n, m, k;
    const unsigned char *S, *P;
    int64_t        ns, np;
    int64_t       *B, *PB;      /* token start offsets, n + 1 / m + 1 (the end is the next) */
    uint8_t       *ss, *ps;     /* byte states */
    int64_t       *to_src;      /* source byte of a matched pivot byte */
    int64_t       *sdiff;       /* differing source bytes before offset x, ns + 1 */
    int64_t       *next_match;  /* first matched source byte at or after x, ns + 1 */
    int64_t       *cut;         /* m */
    entry         *ent;         /* the position's masses */
    int64_t        n_ent, cap_ent;
    ent_slot      *slot;        /* 2 * cap_ent: see add() */
    sort_key      *sorted;      /* cap_ent: the output's order */
    uint32_t       gen;         /* the position's generation (0 before the first) */
    int64_t        pf_next;     /* the next source position to prefetch */
    int64_t        t_next;      /* first source token ending after the last start (monotone) */
} seq;

/* a stored log-probability, at most 0 (probability at most 1) */
static inline double clamp_lp(float lp) {
    double x = lp;
    return x < 0 ? x : 0.0;
}

static const unsigned char *src_bytes(const seq *q, int64_t id, int64_t *len) {
    const fc_src_tok *t = &q->c->src_tok[id];
    *len = t->len;
    return fc_src_tok_bytes(q->c->src, t);
}

#define PREFETCH_AHEAD 4 /* source positions */

/* The records of the candidates of the source positions up to i + PREFETCH_AHEAD, requested
 * ahead of use: top-K ids are scattered over the vocabulary. */
static void prefetch_candidates(seq *q, int64_t i) {
#if defined(__GNUC__)
    int64_t until = i + PREFETCH_AHEAD < q->n ? i + PREFETCH_AHEAD : q->n - 1;
    if (q->pf_next < i) q->pf_next = i;
    for (; q->pf_next <= until; q->pf_next++) {
        const int64_t *ids = q->tk_ids + q->pf_next * q->k;
        for (int64_t r = 0; r < q->k; r++)
            __builtin_prefetch(&q->c->src_tok[ids[r] > 0 ? ids[r] : 0]);
    }
#else
    (void)q, (void)i;
#endif
}

static int64_t piv_len(const seq *q, int64_t id) {
    return q->c->pivot->can_off[id + 1] - q->c->pivot->can_off[id];
}

/* log P_true(i): the given log-probability, else the top-K entry, else an estimate */
static double true_logprob(const seq *q, int64_t i, int64_t true_id) {
    if (q->true_lp && !isnan(q->true_lp[i])) return clamp_lp(q->true_lp[i]);
    const int64_t *ids = q->tk_ids + i * q->k;
    const float *lp = q->tk_lp + i * q->k;
    for (int64_t t = 0; t < q->k; t++)
        if (ids[t] == true_id) return clamp_lp(lp[t]);
    double sum = 0, low = 0;
    int any = 0;
    for (int64_t t = 0; t < q->k; t++) {
        if (ids[t] < 0) continue;
        double p = exp(clamp_lp(lp[t]));
        sum += p;
        if (!any || p < low) low = p;
        any = 1;
    }
    if (!any) return 0.0;
    double rest = 1.0 - sum > 0 ? 1.0 - sum : 0.0;
    return log(low < rest ? low : rest);
}

/* Mass w for pivot id `id`. Entries are found through the open-addressing table `slot`
 * (2 * cap_ent slots); a slot is taken when it carries the position's generation, so the
 * table needs no clearing between positions. */
static uint64_t slot_of(int64_t id, uint64_t mask) {
    return ((uint64_t)id * 0x9E3779B97F4A7C15ull >> 32) & mask;
}

static void clear_slots(ent_slot *t, int64_t n) {
    for (int64_t h = 0; h < n; h++) t[h] = (ent_slot){0, -1};
}

/* a new position: a new generation (the table is cleared when the counter wraps) */
static void next_position(seq *q) {
    q->n_ent = 0;
    if (++q->gen == 0) {
        clear_slots(q->slot, 2 * q->cap_ent);
        q->gen = 1;
    }
}

/* twice the room, the entries placed anew; -1 when out of memory */
static int grow_entries(seq *q) {
    int64_t cap = 2 * q->cap_ent;
    entry *e = realloc(q->ent, (size_t)cap * sizeof *e);
    if (!e) return -1;
    q->ent = e;
    sort_key *o = realloc(q->sorted, (size_t)cap * sizeof *o);
    if (!o) return -1;
    q->sorted = o;
    ent_slot *t = malloc((size_t)(2 * cap) * sizeof *t);
    if (!t) return -1;
    free(q->slot);
    q->slot = t, q->cap_ent = cap;
    uint64_t mask = (uint64_t)cap * 2 - 1;
    clear_slots(t, 2 * cap);
    for (int64_t k = 0; k < q->n_ent; k++) {
        uint64_t y = slot_of(q->ent[k].id, mask);
        while (t[y].gen == q->gen) y = (y + 1) & mask;
        t[y] = (ent_slot){q->gen, (int32_t)k};
    }
    return 0;
}

/* a term of log-probability x for pivot id `id` */
static inline int add(seq *q, int64_t id, double x) {
    uint64_t mask = (uint64_t)q->cap_ent * 2 - 1, h = slot_of(id, mask);
    for (; q->slot[h].gen == q->gen; h = (h + 1) & mask) {
        entry *e = &q->ent[q->slot[h].e];
        if (e->id == id) { lsum_add(&e->m, x); return 0; }
    }
    if (q->n_ent == q->cap_ent) {
        if (grow_entries(q)) return -1;
        mask = (uint64_t)q->cap_ent * 2 - 1;
        for (h = slot_of(id, mask); q->slot[h].gen == q->gen; h = (h + 1) & mask) {}
    }
    q->slot[h] = (ent_slot){q->gen, (int32_t)q->n_ent};
    q->ent[q->n_ent++] = (entry){(int32_t)id, {1, x}};
    return 0;
}

/* The length of the common prefix of a[0..na) and b[0..nb). The first 8 bytes are compared
 * as one word when both are readable that far: b is the text (8 bytes of padding), a when
 * a_wide (a record's head, with a record after the last one, or 8 bytes and more). */
static int64_t common_prefix(const unsigned char *a, int64_t na, int a_wide,
                             const unsigned char *b, int64_t nb) {
    int64_t n = na < nb ? na : nb, k = 0;
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (a_wide) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x ^ y) {
            k = __builtin_ctzll(x ^ y) >> 3;
            return k < n ? k : n;
        }
        k = 8 < n ? 8 : n;
    }
#else
    (void)a_wide;
#endif
    while (k < n && a[k] == b[k]) k++;
    return k;
}

/* whether the two pieces a[0..na) + b[0..nb) start with x[0..nx) */
static int starts_with(const unsigned char *a, int64_t na, const unsigned char *b, int64_t nb,
                       const unsigned char *x, int64_t nx) {
    if (na + nb < nx) return 0;
    int64_t from_a = na < nx ? na : nx;
    return memcmp(a, x, (size_t)from_a) == 0
        && memcmp(b, x + from_a, (size_t)(nx - from_a)) == 0;
}

/* first t in [0, n) with a[t] > x (a non-decreasing), n if none */
static int64_t first_above(const int64_t *a, int64_t n, int64_t x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] > x) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

enum { POS_FALLBACK = -2, POS_NOMEM = -1 };

/* a pivot token without bytes: paired with a source token without bytes near its offset */
static int special_position(seq *q, int64_t j, double *gold_out) {
    int64_t g = q->piv[j + 1], c = q->cut[j];
    int64_t k = 0;
    for (int64_t jj = j; jj >= 0 && piv_len(q, q->piv[jj]) == 0; jj--) k++;
    int64_t c2 = q->next_match[c];
    int64_t u = -1, seen = 0;
    for (int64_t t = first_above(q->B, q->n, c - 1); t < q->n && q->B[t] <= c2; t++) {
        if (q->B[t] != q->B[t + 1]) continue;
        u = t; /* the k-th, else the last */
        if (seen++ == k) break;
    }
    if (u <= 0) return POS_FALLBACK;
    int64_t i = u - 1;
    lsum gold = {0, 0};
    lsum_add(&gold, true_logprob(q, i, q->src[u]));
    const int64_t *ids = q->tk_ids + i * q->k;
    const float *lp = q->tk_lp + i * q->k;
    for (int64_t t = 0; t < q->k; t++) {
        int64_t v = ids[t];
        if (v < 0 || v == q->src[u]) continue;
        double x = clamp_lp(lp[t]);
        int64_t len;
        src_bytes(q, v, &len);
        if (!len) {
            int64_t pv = q->c->role_map[v];
            if (pv == g) lsum_add(&gold, x);
            else if (pv >= 0 && add(q, pv, x)) return POS_NOMEM;
        } else {
            int64_t L = q->c->src_tok[v].piece;
            if (L >= 0 && add(q, L, x)) return POS_NOMEM;
        }
    }
    double gv = lsum_value(&gold);
    if (!(gv > -INFINITY)) return POS_FALLBACK;
    if (add(q, g, gv)) return POS_NOMEM;
    *gold_out = gv;
    return FC_PROJ_EXACT;
}

/* the walk for pivot position j (predicting pivot token j + 1); returns FC_PROJ_* or POS_* */
static int project_position(seq *q, int64_t j, double *gold_out) {
    int64_t g = q->piv[j + 1];
    int64_t gb = q->PB[j + 1], ge = q->PB[j + 2];
    if (gb == ge) return special_position(q, j, gold_out);
    int64_t first = -1;
    for (int64_t y = gb; y < ge; y++) {
        if (q->ps[y] == FC_BYTE_DIFFERING) return POS_FALLBACK;
        if (q->ps[y] == FC_BYTE_MATCHED && first < 0) first = y;
    }
    if (first < 0) return POS_FALLBACK;
    int64_t c = q->cut[j], d = q->cut[j + 1];
    while (c < d && q->ss[c] == FC_BYTE_DIFFERING) c++; /* they belong to the tokens before */
    if (q->sdiff[d] - q->sdiff[c]) return POS_FALLBACK;
    const unsigned char *X = q->P + gb;
    int64_t nx = first - gb, ny = d - c;
    /* the source token holding byte c: starts never move back, so a pointer walks forward */
    const int64_t *E = q->B + 1;
    while (q->t_next < q->n && E[q->t_next] <= c) q->t_next++;
    int64_t t = q->t_next;
    if (t >= q->n || t == 0) return POS_FALLBACK;
    int64_t i = t - 1, s = c - q->B[t];
    prefetch_candidates(q, i);
    double logD = 0.0;
    if (s > 0) { /* the conditional prefix mass of the start inside token t */
        lsum D = {0, 0};
        lsum_add(&D, true_logprob(q, i, q->src[t]));
        const int64_t *ids = q->tk_ids + i * q->k;
        const float *lp = q->tk_lp + i * q->k;
        for (int64_t r = 0; r < q->k; r++) {
            if (ids[r] < 0 || ids[r] == q->src[t]) continue;
            int64_t len;
            const unsigned char *b = src_bytes(q, ids[r], &len);
            if (len > s && memcmp(b, q->S + q->B[t], (size_t)s) == 0)
                lsum_add(&D, clamp_lp(lp[r]));
        }
        logD = lsum_value(&D);
        if (!(logD > -INFINITY)) return POS_FALLBACK;
    }
    double lw = 0.0; /* log of the true path's mass so far */
    lsum gold = {0, 0};
    int64_t z = c;
    int first_step = 1, at_boundary = s == 0, kind;
    const fc_project_ctx_t *pc = q->c;
    const fc_src_tok *tok = pc->src_tok;
    const unsigned char *S = q->S;
    for (;;) {
        int64_t u = i + 1, true_u = q->src[u];
        if (q->sdiff[q->B[u + 1]] - q->sdiff[q->B[u]]) return POS_FALLBACK;
        double L = first_step ? lw - logD : lw; /* every term of the step is scaled by it */
        fc_trie_walk base[2];
        int have_base[2] = {0, 0};
        const int64_t *ids = q->tk_ids + i * q->k;
        const float *lp = q->tk_lp + i * q->k;
        const unsigned char *Su = S + q->B[u];
        int64_t zc = z - c, room = q->ns - z;
        for (int64_t r = 0; r < q->k; r++) {
            int64_t v = ids[r];
            if (v < 0 || v == true_u) continue;
            const fc_src_tok *T = &tok[v];
            int64_t len = T->len;
            if (!len) {
                if (first_step && at_boundary) {
                    int64_t pv = pc->role_map[v];
                    double x = clamp_lp(lp[r]) + L;
                    if (pv == g) lsum_add(&gold, x);
                    else if (pv >= 0 && add(q, pv, x)) return POS_NOMEM;
                }
                continue;
            }
            const unsigned char *b = fc_src_tok_bytes(pc->src, T);
            if (s > 0) {
                if (len <= s || memcmp(b, Su, (size_t)s) != 0) continue;
                b += s, len -= s;
            }
            /* W = S[c:z] + b: the text up to z, then the candidate's bytes */
            int64_t nw = zc + len;
            int64_t e = zc + common_prefix(b, len, T->len <= FC_TOK_HEAD || len >= 8, S + z,
                                           room < len ? room : len);
            if (e == nw) { /* agrees with the text over all of its length */
                if (nw >= ny) lsum_add(&gold, clamp_lp(lp[r]) + L);
                continue;
            }
            /* leaves the text at e: the pivot piece that spells the longest prefix of
             * X + W (X only when W does not start with it) */
            int prepend = nx && !starts_with(S + c, zc, b, len, X, nx);
            fc_trie_walk t;
            if (!prepend && !zc && !s) { /* W is the whole candidate token */
                t.best = T->piece, t.best_len = T->piece_len;
            } else { /* from the step's shared walk over [X +] S[c:z] */
                if (!have_base[prepend]) {
                    fc_trie_walk_start(&base[prepend]);
                    if (!prepend || fc_trie_walk_feed(pc, &base[prepend], X, nx))
                        fc_trie_walk_feed(pc, &base[prepend], S + c, zc);
                    have_base[prepend] = 1;
                }
                t = base[prepend];
                fc_trie_walk_feed(pc, &t, b, len);
            }
            if (t.best >= 0 && t.best_len > e + (prepend ? nx : 0)) {
                if (add(q, t.best, clamp_lp(lp[r]) + L)) return POS_NOMEM;
            } else if (e >= ny) {
                lsum_add(&gold, clamp_lp(lp[r]) + L);
            }
        }
        double pt = true_logprob(q, i, true_u) + L;
        int64_t z2 = q->B[u + 1];
        if (z2 >= d) {
            lsum_add(&gold, pt);
            kind = at_boundary && z2 == d ? FC_PROJ_EXACT : FC_PROJ_PREFIX;
            break;
        }
        lw = pt, z = z2, i = u, s = 0, first_step = 0;
    }
    double gv = lsum_value(&gold);
    if (!(gv > -INFINITY)) return POS_FALLBACK;
    if (add(q, g, gv)) return POS_NOMEM;
    *gold_out = gv;
    return kind;
}

/* the key of (float32 log-probability lp, not NaN, id >= 0); -0 counts as +0 */
static inline sort_key key_of(float lp, int32_t id) {
    uint32_t u;
    lp += 0.0f;
    memcpy(&u, &lp, 4);
    uint32_t desc = u >> 31 ? u : ~u & 0x7fffffffu; /* larger values, smaller keys */
    return (sort_key)desc << 32 | (uint32_t)id;
}

static inline float lp_of(sort_key k) {
    uint32_t desc = (uint32_t)(k >> 32), u = desc >> 31 ? desc : ~desc & 0x7fffffffu;
    float lp;
    memcpy(&lp, &u, 4);
    return lp;
}

/* The position's entries with positive mass, largest log-probability first (ties: lower id),
 * at most out_k of them, as ids and log-probabilities at out_ids / out_lp; returns how many.
 * An insertion sort: a position has few entries, and top-K lists come mostly in order. */
static int64_t write_entries(const entry *e, int64_t n, int64_t out_k, sort_key *buf,
                             int32_t *out_ids, float *out_lp) {
    int64_t kept = 0;
    for (int64_t a = 0; a < n; a++) {
        float lp = (float)lsum_value(&e[a].m);
        if (!(lp > -INFINITY)) continue;
        sort_key x = key_of(lp, e[a].id);
        int64_t b = kept;
        for (; b > 0 && x < buf[b - 1]; b--) buf[b] = buf[b - 1];
        buf[b] = x;
        kept++;
    }
    if (kept > out_k) kept = out_k;
    for (int64_t a = 0; a < kept; a++) out_ids[a] = (int32_t)(uint32_t)buf[a], out_lp[a] = lp_of(buf[a]);
    return kept;
}

static fc_status check_inputs(const fc_project_ctx_t *c, const int64_t *src_ids, int64_t n,
                              const int64_t *pivot_ids, int64_t m, const int64_t *topk_ids,
                              const float *topk_lp, int64_t k, const float *true_lp,
                              int64_t out_k, fc_error *err) {
    fc_status st = fc_align_check_ids(src_ids, n, c->src, "src_ids", err);
    if (!st) st = fc_align_check_ids(pivot_ids, m, c->pivot, "pivot_ids", err);
    if (st) return st;
    if (out_k < 1 || k < 0)
        return fc_error_set(err, FC_ERR_VALUE, "k must be >= 1 (got %lld) and the top-K width "
                            ">= 0 (got %lld)", (long long)out_k, (long long)k);
    /* Passes without branches find whether anything may be wrong (a pad's log-probability
     * is not checked, so one above 0.1 only costs the second pass); the second names it. */
    uint64_t top = 0, v1 = (uint64_t)c->src->V;
    for (int64_t x = 0; x < n * k; x++) {
        uint64_t v = (uint64_t)topk_ids[x] + 1; /* -1 pads: 0 */
        top = v > top ? v : top;
    }
    int bad = top > v1;
    for (int64_t x = 0; x < n * k; x++) bad |= !(topk_lp[x] <= 0.1f);
    if (true_lp)
        for (int64_t i = 0; i < n; i++) bad |= true_lp[i] > 0.1f;
    if (!bad) return FC_OK;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t t = 0; t < k; t++) {
            int64_t v = topk_ids[i * k + t];
            if (v < -1 || v >= c->src->V)
                return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "token_id_out_of_range",
                                         "topk_ids[%lld][%lld] = %lld is not a source token id "
                                         "(vocabulary size %lld; -1 pads) (rule "
                                         "token_id_out_of_range)", (long long)i, (long long)t,
                                         (long long)v, (long long)c->src->V);
            float lp = topk_lp[i * k + t];
            if (v >= 0 && (isnan(lp) || lp > 0.1f))
                return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "not_log_probability",
                                         "topk_logprobs[%lld][%lld] = %g is not a log-probability "
                                         "(NaN, +inf or above 0.1; -inf is probability 0) (rule "
                                         "not_log_probability)", (long long)i, (long long)t,
                                         (double)lp);
        }
        if (true_lp && (true_lp[i] > 0.1f))
            return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "not_log_probability",
                                     "src_true_logprobs[%lld] = %g is not a log-probability "
                                     "(+inf or above 0.1; NaN means unknown) (rule "
                                     "not_log_probability)", (long long)i, (double)true_lp[i]);
    }
    return FC_OK;
}

static void free_seq(seq *q) {
    free((void *)q->S); free((void *)q->P); free(q->B); free(q->PB); free(q->ss); free(q->ps);
    free(q->to_src); free(q->sdiff); free(q->next_match); free(q->cut); free(q->ent);
    free(q->slot); free(q->sorted);
}

/* byte streams, token offsets, byte states and the per-offset tables */
static int prepare(seq *q) {
    const fc_vocab_t *sv = q->c->src, *pv = q->c->pivot;
    q->B = malloc((size_t)(q->n + 1) * sizeof *q->B);
    q->PB = malloc((size_t)(q->m + 2) * sizeof *q->PB);
    if (!q->B || !q->PB) return -1;
    q->B[0] = 0;
    for (int64_t t = 0; t < q->n; t++)
        q->B[t + 1] = q->B[t] + sv->can_off[q->src[t] + 1] - sv->can_off[q->src[t]];
    q->PB[0] = 0;
    for (int64_t j = 0; j < q->m; j++)
        q->PB[j + 1] = q->PB[j] + pv->can_off[q->piv[j] + 1] - pv->can_off[q->piv[j]];
    q->PB[q->m + 1] = q->PB[q->m];
    q->ns = q->B[q->n], q->np = q->PB[q->m];
    unsigned char *S = malloc((size_t)q->ns + 8), *P = malloc((size_t)q->np + 1);
    if (S) memset(S + q->ns, 0, 8); /* a word read at the end stays inside, on zeros */
    q->S = S, q->P = P;
    q->ss = malloc((size_t)q->ns + 1);
    q->ps = malloc((size_t)q->np + 1);
    q->to_src = malloc((size_t)(q->np + 1) * sizeof *q->to_src);
    q->sdiff = malloc((size_t)(q->ns + 1) * sizeof *q->sdiff);
    q->next_match = malloc((size_t)(q->ns + 1) * sizeof *q->next_match);
    q->cut = malloc((size_t)(q->m + 1) * sizeof *q->cut);
    q->cap_ent = 32;
    q->ent = malloc((size_t)q->cap_ent * sizeof *q->ent);
    q->slot = malloc((size_t)(2 * q->cap_ent) * sizeof *q->slot);
    q->sorted = malloc((size_t)q->cap_ent * sizeof *q->sorted);
    if (!q->ent || !q->slot || !q->sorted) return -1;
    clear_slots(q->slot, 2 * q->cap_ent);
    if (!S || !P || !q->ss || !q->ps || !q->to_src || !q->sdiff || !q->next_match || !q->cut)
        return -1;
    for (int64_t t = 0; t < q->n; t++)
        memcpy(S + q->B[t], sv->canonical.data + sv->can_off[q->src[t]],
               (size_t)(q->B[t + 1] - q->B[t]));
    for (int64_t j = 0; j < q->m; j++)
        memcpy(P + q->PB[j], pv->canonical.data + pv->can_off[q->piv[j]],
               (size_t)(q->PB[j + 1] - q->PB[j]));
    if (fc_bytes_match(S, q->ns, P, q->np, q->ss, q->ps, q->to_src)) return -1;
    q->sdiff[0] = 0;
    for (int64_t x = 0; x < q->ns; x++) q->sdiff[x + 1] = q->sdiff[x] + (q->ss[x] == FC_BYTE_DIFFERING);
    q->next_match[q->ns] = q->ns;
    for (int64_t x = q->ns - 1; x >= 0; x--)
        q->next_match[x] = q->ss[x] == FC_BYTE_MATCHED ? x : q->next_match[x + 1];
    int64_t last = 0;
    for (int64_t j = 0; j < q->m; j++) {
        for (int64_t y = q->PB[j]; y < q->PB[j + 1]; y++)
            if (q->to_src[y] >= 0) last = q->to_src[y] + 1;
        q->cut[j] = last;
    }
    return 0;
}

fc_status fc_align_project(const fc_project_ctx_t *c, const int64_t *src_ids, int64_t n,
                           const int64_t *pivot_ids, int64_t m, const int64_t *topk_ids,
                           const float *topk_logprobs, int64_t k, const float *true_logprobs,
                           int64_t out_k, int64_t *out_offsets, int32_t *out_ids,
                           float *out_logprobs, float *gold_logprob, uint8_t *resolution,
                           fc_error *err) {
    fc_status st = check_inputs(c, src_ids, n, pivot_ids, m, topk_ids, topk_logprobs, k,
                                true_logprobs, out_k, err);
    if (st) return st;
    seq q = {c, src_ids, pivot_ids, topk_ids, topk_logprobs, true_logprobs, n, m, k};
    out_offsets[0] = 0;
    if (prepare(&q)) goto nomem;
    for (int64_t j = 0; j < m; j++) {
        int64_t at = out_offsets[j];
        gold_logprob[j] = NAN;
        if (j == m - 1) {
            resolution[j] = FC_PROJ_LAST;
            out_offsets[j + 1] = at;
            continue;
        }
        next_position(&q);
        double gold = -INFINITY;
        int kind = project_position(&q, j, &gold);
        if (kind == POS_NOMEM) goto nomem;
        if (kind == POS_FALLBACK) {
            resolution[j] = FC_PROJ_FALLBACK;
            out_offsets[j + 1] = at;
            continue;
        }
        resolution[j] = (uint8_t)kind;
        gold_logprob[j] = (float)gold;
        out_offsets[j + 1] = at + write_entries(q.ent, q.n_ent, out_k, q.sorted, out_ids + at,
                                                out_logprobs + at);
    }
    free_seq(&q);
    return FC_OK;
nomem:
    free_seq(&q);
    return fc_error_set(err, FC_ERR_NOMEM, "out of memory projecting %lld x %lld tokens",
                        (long long)n, (long long)m);
}
