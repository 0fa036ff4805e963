/* levenshtein.c - unit-cost edit distance (insert, delete, substitute) over code points. */
#include <stdlib.h>
#include <string.h>

#include "fusechat.h"
#include "levenshtein.h"

void fc_lev_pattern_init(fc_lev_pattern *p, const uint32_t *a, int len) {
    memset(p->ascii, 0, sizeof p->ascii);
    p->n_other = 0;
    p->len = len;
    for (int i = 0; i < len; i++) {
        uint64_t bit = 1ull << i;
        if (a[i] < 128) { p->ascii[a[i]] |= bit; continue; }
        int k = 0;
        while (k < p->n_other && p->other[k] != a[i]) k++;
        if (k == p->n_other) { p->other[k] = a[i]; p->other_mask[k] = 0; p->n_other++; }
        p->other_mask[k] |= bit;
    }
}

static inline uint64_t peq(const fc_lev_pattern *p, uint32_t c) {
    if (c < 128) return p->ascii[c];
    for (int k = 0; k < p->n_other; k++)
        if (p->other[k] == c) return p->other_mask[k];
    return 0;
}

int64_t fc_lev_pattern_dist(const fc_lev_pattern *p, const uint32_t *t, int64_t nt,
                            int64_t cutoff) {
    int m = p->len;
    if (m == 0) return nt;
    uint64_t top = 1ull << (m - 1);
    uint64_t pv = ~0ull, mv = 0;
    int64_t score = m;
    for (int64_t k = 0; k < nt; k++) {
        uint64_t eq = peq(p, t[k]);
        uint64_t xv = eq | mv;
        uint64_t xh = (((eq & pv) + pv) ^ pv) | eq;
        uint64_t ph = mv | ~(xh | pv);
        uint64_t mh = pv & xh;
        if (ph & top) score++;
        else if (mh & top) score--;
        ph = (ph << 1) | 1; /* row 0 of the DP grows by one per text char */
        mh <<= 1;
        pv = mh | ~(xv | ph);
        mv = ph & xv;
        /* each remaining char lowers the score by at most one */
        if (cutoff >= 0 && score - (nt - 1 - k) > cutoff) return cutoff + 1;
    }
    return score;
}

/* the textbook one-row DP, for two strings both longer than 64 */
static int64_t lev_dp(const uint32_t *a, int64_t na, const uint32_t *b, int64_t nb) {
    int64_t *row = malloc((size_t)(nb + 1) * sizeof *row);
    if (!row) return -1;
    for (int64_t j = 0; j <= nb; j++) row[j] = j;
    for (int64_t i = 1; i <= na; i++) {
        int64_t diag = row[0];
        row[0] = i;
        for (int64_t j = 1; j <= nb; j++) {
            int64_t up = row[j];
            int64_t v = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < v) v = up + 1;
            if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
            row[j] = v;
            diag = up;
        }
    }
    int64_t d = row[nb];
    free(row);
    return d;
}

int64_t fc_levenshtein(const uint32_t *a, int64_t na, const uint32_t *b, int64_t nb) {
    if (na > nb) { const uint32_t *t = a; a = b; b = t; int64_t tn = na; na = nb; nb = tn; }
    if (na > FC_LEV_WORD) return lev_dp(a, na, b, nb);
    fc_lev_pattern p;
    fc_lev_pattern_init(&p, a, (int)na);
    return fc_lev_pattern_dist(&p, b, nb, -1);
}
