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
    if (na == 0) return nb; /* common in the DTW: a pivot token that decodes to "" */
    if (na > FC_LEV_WORD) return lev_dp(a, na, b, nb);
    fc_lev_pattern p;
    fc_lev_pattern_init(&p, a, (int)na);
    return fc_lev_pattern_dist(&p, b, nb, -1);
}

static inline unsigned other_hash(uint32_t c) { return (c * 2654435761u) >> 24; }

void fc_lev_pack_init(fc_lev_pack *p, const uint32_t *const *a, const int64_t *len, int count,
                      int width) {
    memset(p->ascii, 0, sizeof p->ascii);
    memset(p->slot, 0, sizeof p->slot);
    p->n_other = 0;
    p->width = width;
    p->count = count;
    p->len_mask[0] = p->len_mask[1] = 0;
    for (int k = 0; k < count; k++) {
        int base = k * width, w = base >> 6;
        p->len_mask[w] |= ((1ull << len[k]) - 1) << (base & 63);
        for (int64_t i = 0; i < len[k]; i++) {
            uint64_t bit = 1ull << ((base + i) & 63);
            uint32_t c = a[k][i];
            if (c < 128) { p->ascii[c][w] |= bit; continue; }
            unsigned h = other_hash(c);
            while (p->slot[h] && p->other[p->slot[h] - 1] != c) h = (h + 1) & 255;
            if (!p->slot[h]) {
                int q = p->n_other++;
                p->other[q] = c;
                p->other_mask[q][0] = p->other_mask[q][1] = 0;
                p->slot[h] = (uint8_t)(q + 1);
            }
            p->other_mask[p->slot[h] - 1][w] |= bit;
        }
    }
}

/* the match masks of code point c */
static inline const uint64_t *pack_eq(const fc_lev_pack *p, uint32_t c) {
    static const uint64_t none[2] = {0, 0};
    if (c < 128) return p->ascii[c];
    for (unsigned h = other_hash(c); p->slot[h]; h = (h + 1) & 255)
        if (p->other[p->slot[h] - 1] == c) return p->other_mask[p->slot[h] - 1];
    return none;
}

/* every byte of the result = the number of set bits in that byte of x */
static inline uint64_t byte_popcounts(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    return (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
}

/* D[len][nt] = D[0][nt] + the vertical deltas of the last column = nt + #(+1) - #(-1), with
 * the counts of every lane in its low byte */
static void pack_scores(const fc_lev_pack *p, const uint64_t pc[2], const uint64_t mc[2],
                        int64_t nt, int32_t *out) {
    for (int k = 0; k < p->count; k++) {
        int base = k * p->width, w = base >> 6, sh = base & 63;
        out[k] = (int32_t)nt + (int32_t)((pc[w] >> sh) & 0xff) - (int32_t)((mc[w] >> sh) & 0xff);
    }
}

static void pack_dist_portable(const fc_lev_pack *p, const uint32_t *t, int64_t nt,
                               int32_t *out) {
    uint64_t H = 0, L = 0; /* bit width-1 / bit 0 of every lane */
    for (int s = 0; s < 64 / p->width; s++) {
        H |= 1ull << (s * p->width + p->width - 1);
        L |= 1ull << (s * p->width);
    }
    uint64_t pc[2], mc[2];
    for (int w = 0; w < 2; w++) {
        uint64_t pv = ~0ull, mv = 0;
        for (int64_t i = 0; i < nt; i++) {
            uint64_t eq = pack_eq(p, t[i])[w];
            uint64_t xv = eq | mv, x = eq & pv;
            uint64_t sum = ((x & ~H) + (pv & ~H)) ^ ((x ^ pv) & H); /* no carry between lanes */
            uint64_t xh = (sum ^ pv) | eq;
            uint64_t ph = mv | ~(xh | pv);
            uint64_t mh = pv & xh;
            ph = ((ph << 1) & ~L) | L; /* each lane's row 0 grows by one */
            mh = (mh << 1) & ~L;
            pv = mh | ~(xv | ph);
            mv = ph & xv;
        }
        pc[w] = byte_popcounts(pv & p->len_mask[w]);
        mc[w] = byte_popcounts(mv & p->len_mask[w]);
        if (p->width == 16) {
            pc[w] = (pc[w] + (pc[w] >> 8)) & 0x00ff00ff00ff00ffull;
            mc[w] = (mc[w] + (mc[w] >> 8)) & 0x00ff00ff00ff00ffull;
        }
    }
    pack_scores(p, pc, mc, nt, out);
}

#ifdef __SSE2__
#include <emmintrin.h>

static inline __m128i byte_popcounts_sse2(__m128i x) {
    const __m128i m1 = _mm_set1_epi8(0x55), m2 = _mm_set1_epi8(0x33), m4 = _mm_set1_epi8(0x0f);
    x = _mm_sub_epi8(x, _mm_and_si128(_mm_srli_epi16(x, 1), m1));
    x = _mm_add_epi8(_mm_and_si128(x, m2), _mm_and_si128(_mm_srli_epi16(x, 2), m2));
    return _mm_and_si128(_mm_add_epi8(x, _mm_srli_epi16(x, 4)), m4);
}

/* One text code point through Myers' step for one pack (state pv, mv). The lane adds and
 * the shifts by one (x + x) are SSE2 byte or word operations, which carry nothing across
 * lanes. */
#define MYERS_STEP_SSE2(ADD, ONE, eq, pv, mv)                                            \
    do {                                                                                 \
        __m128i xv_ = _mm_or_si128(eq, mv), x_ = _mm_and_si128(eq, pv);                  \
        __m128i xh_ = _mm_or_si128(_mm_xor_si128(ADD(x_, pv), pv), eq);                  \
        __m128i ph_ = _mm_or_si128(mv, _mm_xor_si128(_mm_or_si128(xh_, pv), ones));      \
        __m128i mh_ = _mm_and_si128(pv, xh_);                                            \
        ph_ = _mm_or_si128(ADD(ph_, ph_), ONE);                                          \
        mh_ = ADD(mh_, mh_);                                                             \
        pv = _mm_or_si128(mh_, _mm_xor_si128(_mm_or_si128(xv_, ph_), ones));             \
        mv = _mm_and_si128(ph_, xv_);                                                    \
    } while (0)

#define LOAD_EQ(p, c) _mm_loadu_si128((const __m128i *)pack_eq(p, c))

/* the scores from the final vertical deltas (see pack_scores) */
static void pack_out_sse2(const fc_lev_pack *p, __m128i pv, __m128i mv, int64_t nt,
                          int32_t *out) {
    __m128i lm = _mm_loadu_si128((const __m128i *)p->len_mask);
    __m128i pc = byte_popcounts_sse2(_mm_and_si128(pv, lm));
    __m128i mc = byte_popcounts_sse2(_mm_and_si128(mv, lm));
    if (p->width == 16) {
        const __m128i lo = _mm_set1_epi16(0xff);
        pc = _mm_and_si128(_mm_add_epi8(pc, _mm_srli_epi16(pc, 8)), lo);
        mc = _mm_and_si128(_mm_add_epi8(mc, _mm_srli_epi16(mc, 8)), lo);
    }
    if (p->count * p->width < 128) {
        uint64_t pcw[2], mcw[2];
        _mm_storeu_si128((__m128i *)pcw, pc);
        _mm_storeu_si128((__m128i *)mcw, mc);
        pack_scores(p, pcw, mcw, nt, out);
        return;
    }
    /* a full pack: 16 (8) scores widened to 32 bits: nt + pc - mc */
    const __m128i zero = _mm_setzero_si128();
    __m128i base = _mm_set1_epi32((int32_t)nt);
    if (p->width == 8) {
        __m128i pl = _mm_unpacklo_epi8(pc, zero), ph = _mm_unpackhi_epi8(pc, zero);
        __m128i ml = _mm_unpacklo_epi8(mc, zero), mh = _mm_unpackhi_epi8(mc, zero);
        __m128i dl = _mm_sub_epi16(pl, ml), dh = _mm_sub_epi16(ph, mh);
        __m128i d[4] = {_mm_unpacklo_epi16(dl, _mm_srai_epi16(dl, 15)),
                        _mm_unpackhi_epi16(dl, _mm_srai_epi16(dl, 15)),
                        _mm_unpacklo_epi16(dh, _mm_srai_epi16(dh, 15)),
                        _mm_unpackhi_epi16(dh, _mm_srai_epi16(dh, 15))};
        for (int k = 0; k < 4; k++)
            _mm_storeu_si128((__m128i *)(out + 4 * k), _mm_add_epi32(base, d[k]));
    } else {
        __m128i dd = _mm_sub_epi16(pc, mc), sg = _mm_srai_epi16(dd, 15);
        _mm_storeu_si128((__m128i *)out, _mm_add_epi32(base, _mm_unpacklo_epi16(dd, sg)));
        _mm_storeu_si128((__m128i *)(out + 4), _mm_add_epi32(base, _mm_unpackhi_epi16(dd, sg)));
    }
}

/* one pack, or two of the same width side by side (Myers' step is a serial chain per
 * text code point: two independent chains keep the core busy) */
static void pack_dist_sse2(const fc_lev_pack *p, const fc_lev_pack *q, const uint32_t *t,
                           int64_t nt, int32_t *out_p, int32_t *out_q) {
    const __m128i ones = _mm_set1_epi32(-1);
    __m128i pv = ones, mv = _mm_setzero_si128(), qv = ones, nv = _mm_setzero_si128();
    const __m128i one8 = _mm_set1_epi8(1), one16 = _mm_set1_epi16(1);
    if (q && p->width == 8) {
        for (int64_t i = 0; i < nt; i++) {
            __m128i e = LOAD_EQ(p, t[i]), f = LOAD_EQ(q, t[i]);
            MYERS_STEP_SSE2(_mm_add_epi8, one8, e, pv, mv);
            MYERS_STEP_SSE2(_mm_add_epi8, one8, f, qv, nv);
        }
    } else if (q) {
        for (int64_t i = 0; i < nt; i++) {
            __m128i e = LOAD_EQ(p, t[i]), f = LOAD_EQ(q, t[i]);
            MYERS_STEP_SSE2(_mm_add_epi16, one16, e, pv, mv);
            MYERS_STEP_SSE2(_mm_add_epi16, one16, f, qv, nv);
        }
    } else if (p->width == 8) {
        for (int64_t i = 0; i < nt; i++) {
            __m128i e = LOAD_EQ(p, t[i]);
            MYERS_STEP_SSE2(_mm_add_epi8, one8, e, pv, mv);
        }
    } else {
        for (int64_t i = 0; i < nt; i++) {
            __m128i e = LOAD_EQ(p, t[i]);
            MYERS_STEP_SSE2(_mm_add_epi16, one16, e, pv, mv);
        }
    }
    pack_out_sse2(p, pv, mv, nt, out_p);
    if (q) pack_out_sse2(q, qv, nv, nt, out_q);
}
#endif

void fc_lev_pack_dist(const fc_lev_pack *p, const fc_lev_pack *q, const uint32_t *t,
                      int64_t nt, int32_t *out_p, int32_t *out_q, int simd) {
#ifdef __SSE2__
    if (simd) { pack_dist_sse2(p, q && q->width == p->width ? q : NULL, t, nt, out_p, out_q);
                if (q && q->width != p->width) pack_dist_sse2(q, NULL, t, nt, out_q, NULL);
                return; }
#endif
    (void)simd;
    pack_dist_portable(p, t, nt, out_p);
    if (q) pack_dist_portable(q, t, nt, out_q);
}
