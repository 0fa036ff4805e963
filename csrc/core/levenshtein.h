/* levenshtein.h - edit distance over code points (internal). A pattern of at most 64 code
 * points is preprocessed once and compared with many texts by Myers' bit-parallel
 * algorithm (Hyyro's formulation for global distance): O(len(text)) word operations. */
#ifndef FC_LEVENSHTEIN_H
#define FC_LEVENSHTEIN_H

#include <stdint.h>

#define FC_LEV_WORD 64

typedef struct fc_lev_pattern {
    uint64_t ascii[128];         /* match masks of code points < 128 */
    uint32_t other[FC_LEV_WORD]; /* the other distinct code points ... */
    uint64_t other_mask[FC_LEV_WORD];
    int      n_other;
    int      len;                /* <= 64 */
} fc_lev_pattern;

void    fc_lev_pattern_init(fc_lev_pattern *p, const uint32_t *a, int len);

static inline uint64_t fc_lev_peq(const fc_lev_pattern *p, uint32_t c) {
    if (c < 128) return p->ascii[c];
    for (int k = 0; k < p->n_other; k++)
        if (p->other[k] == c) return p->other_mask[k];
    return 0;
}

/* Distance to t; if cutoff >= 0 and the distance is certainly above cutoff, returns some
 * value > cutoff early (inlined with cutoff -1 the check disappears). */
static inline int64_t fc_lev_pattern_dist(const fc_lev_pattern *p, const uint32_t *t,
                                          int64_t nt, int64_t cutoff) {
    int m = p->len;
    if (m == 0) return nt;
    uint64_t top = 1ull << (m - 1), pv = ~0ull, mv = 0;
    int64_t score = m;
    for (int64_t k = 0; k < nt; k++) {
        uint64_t eq = fc_lev_peq(p, t[k]);
        uint64_t xv = eq | mv;
        uint64_t xh = (((eq & pv) + pv) ^ pv) | eq;
        uint64_t ph = mv | ~(xh | pv);
        uint64_t mh = pv & xh;
        score += (int64_t)((ph & top) != 0) - (int64_t)((mh & top) != 0);
        ph = (ph << 1) | 1; /* row 0 of the DP grows by one per text char */
        mh <<= 1;
        pv = mh | ~(xv | ph);
        mv = ph & xv;
        /* each remaining char lowers the score by at most one */
        if (cutoff >= 0 && score - (nt - 1 - k) > cutoff) return cutoff + 1;
    }
    return score;
}

/* Several short patterns packed in 128 bits (lanes of `width` = 8 or 16 bits, each
 * pattern at most `width` long), compared with one text at once: Myers' recurrence with
 * carries and shifts kept inside each lane. 16 (or 8) distances for the price of ~1-2:
 * SSE2 byte/word adds on x86-64, two 64-bit words with the carries masked elsewhere. */
#define FC_LEV_PACK_BITS 128

typedef struct fc_lev_pack {
    uint64_t ascii[128][2];        /* match masks (low, high 64 bits) of code points < 128 */
    uint64_t other_mask[FC_LEV_PACK_BITS][2];
    uint32_t other[FC_LEV_PACK_BITS]; /* the other distinct code points, found by ... */
    uint8_t  slot[256];            /* ... an open-addressing hash: index + 1, 0 = empty */
    int      n_other;
    int      width, count;
    uint64_t len_mask[2];          /* the bits of every pattern */
} fc_lev_pack;

/* count <= 128 / width patterns, each of length 1..width */
void fc_lev_pack_init(fc_lev_pack *p, const uint32_t *const *a, const int64_t *len, int count,
                      int width);
/* out_p[k] = distance between pattern k of p and t, k < p->count; the same for pack q and
 * out_q unless q is NULL (two packs at once run faster); simd 0 forces the portable code */
void fc_lev_pack_dist(const fc_lev_pack *p, const fc_lev_pack *q, const uint32_t *t,
                      int64_t nt, int32_t *out_p, int32_t *out_q, int simd);

#endif
