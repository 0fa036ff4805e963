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

void fc_lev_pack_init(fc_lev_pack *p, const uint32_t *const *a, const int64_t *len, int count,
                      int width) {
    memset(p->ascii, 0, sizeof p->ascii);
    p->n_other = 0;
    p->width = width;
    p->count = count;
    p->seg_high = p->seg_low = p->len_mask = 0;
    for (int s = 0; s < 64 / width; s++) {
        p->seg_high |= 1ull << (s * width + width - 1);
        p->seg_low |= 1ull << (s * width);
    }
    for (int k = 0; k < count; k++) {
        p->len[k] = (int)len[k];
        p->len_mask |= ((1ull << len[k]) - 1) << (k * width);
        for (int64_t i = 0; i < len[k]; i++) {
            uint64_t bit = 1ull << (k * width + i);
            uint32_t c = a[k][i];
            if (c < 128) { p->ascii[c] |= bit; continue; }
            int q = 0;
            while (q < p->n_other && p->other[q] != c) q++;
            if (q == p->n_other) { p->other[q] = c; p->other_mask[q] = 0; p->n_other++; }
            p->other_mask[q] |= bit;
        }
    }
}

/* every byte of the result = the number of set bits in that byte of x */
static inline uint64_t byte_popcounts(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    return (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
}

void fc_lev_pack_dist(const fc_lev_pack *p, const uint32_t *t, int64_t nt, int32_t *out) {
    const uint64_t H = p->seg_high, L = p->seg_low;
    uint64_t pv = ~0ull, mv = 0;
    for (int64_t i = 0; i < nt; i++) {
        uint32_t c = t[i];
        uint64_t eq = 0;
        if (c < 128) eq = p->ascii[c];
        else
            for (int q = 0; q < p->n_other; q++)
                if (p->other[q] == c) { eq = p->other_mask[q]; break; }
        uint64_t xv = eq | mv, x = eq & pv;
        uint64_t sum = ((x & ~H) + (pv & ~H)) ^ ((x ^ pv) & H); /* no carry between segments */
        uint64_t xh = (sum ^ pv) | eq;
        uint64_t ph = mv | ~(xh | pv);
        uint64_t mh = pv & xh;
        ph = ((ph << 1) & ~L) | L; /* each segment's row 0 grows by one */
        mh = (mh << 1) & ~L;
        pv = mh | ~(xv | ph);
        mv = ph & xv;
    }
    /* D[len][nt] = D[0][nt] + the vertical deltas of the last column = nt + #(+1) - #(-1),
     * counted for all segments at once (SWAR popcount per byte, then per 16 bits) */
    uint64_t cp = byte_popcounts(pv & p->len_mask), cm = byte_popcounts(mv & p->len_mask);
    if (p->width == 16) {
        cp = (cp + (cp >> 8)) & 0x00ff00ff00ff00ffull;
        cm = (cm + (cm >> 8)) & 0x00ff00ff00ff00ffull;
    }
    for (int k = 0; k < p->count; k++) {
        int sh = k * p->width;
        out[k] = (int32_t)nt + (int32_t)((cp >> sh) & 0xff) - (int32_t)((cm >> sh) & 0xff);
    }
}
