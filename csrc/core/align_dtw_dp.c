/* align_dtw_dp.c - the forward pass of the DTW (method.md 3.3): every cell's move.
 *
 * D[i][j] = c[i][j] + min(D[i-1][j-1], D[i][j-1], D[i-1][j]) with D = +inf outside the
 * grid (and D[-1][-1] = 0). The backtrack takes at (i, j) the first minimum of
 * [diag, left, up] over the same three predecessors, so the move is decided here and kept
 * as two bits per cell: "left" (left < diag and left <= up) and "up" (up < diag); with
 * neither the move is diag. Only two rows of values live at a time.
 *
 * SIMD rows (SSE2, part of x86-64): the vertical part t[j] = c[j] + min(up, diag) has no
 * dependency inside the row; the horizontal one, D[j] = min(t[j], D[j-1] + c[j]), is a
 * scan: with S[j] the prefix sum of c inside a vector and D_in the last value of the
 * previous vector, D[j] = S[j] + min(D_in, prefix-min over k <= j of (t[k] - S[k])). Every
 * operation is exact integer arithmetic, so it is the scalar recurrence, reordered. Rows
 * run in 16-bit lanes (8 cells per vector) while their values fit, checked per row, then
 * in 32-bit lanes (4 per vector). The portable rows are the plain recurrence. */
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#define FC_DTW_SSE2 1
#endif


#define INF16 0x7fff /* +inf of the 16-bit rows */

static int simd_enabled = 1;

int fc_align_set_simd(int on) {
    int was = simd_enabled;
    simd_enabled = on != 0;
    return was;
}

int fc_align_simd(void) {
#ifdef FC_DTW_SSE2
    return simd_enabled;
#else
    return 0;
#endif
}

static inline void set_bit(uint16_t *row, int64_t j) { row[j >> 4] |= (uint16_t)(1u << (j & 15)); }

/* Portable rows, two at a time: the second row's serial chain runs beside the first's. One
 * cell: ties go to diag, then left, then up; written with selects so that it compiles to
 * conditional moves. */
static inline int32_t cell(int32_t dg, int32_t up_v, int32_t left, int32_t cost, int *is_left,
                           int *is_up) {
    int32_t up_wins = up_v < dg;
    int32_t best = up_wins ? up_v : dg;
    int lw = left < best + up_wins; /* left beats diag only if smaller, up if not larger */
    *is_left = lw;
    *is_up = !lw && up_wins;
    return (lw ? left : best) + cost;
}

static void rows_portable(const int32_t *c0, const int32_t *c1, int two, int32_t *prev,
                          int32_t *cur, int32_t *cur2, int64_t m, uint16_t *la_bits,
                          uint16_t *ua_bits, uint16_t *lb_bits, uint16_t *ub_bits) {
    int32_t la = c0[0] + prev[0], lb = c1[0] + la;
    cur[0] = la, cur2[0] = lb;
    set_bit(ua_bits, 0);
    if (two) set_bit(ub_bits, 0);
    for (int64_t j = 1; j < m; j++) {
        int lw, uw;
        int32_t va = cell(prev[j - 1], prev[j], la, c0[j], &lw, &uw);
        if (lw) set_bit(la_bits, j);
        if (uw) set_bit(ua_bits, j);
        if (two) {
            int32_t vb = cell(la, va, lb, c1[j], &lw, &uw);
            if (lw) set_bit(lb_bits, j);
            if (uw) set_bit(ub_bits, j);
            cur2[j] = lb = vb;
        }
        cur[j] = la = va;
    }
}

#ifdef FC_DTW_SSE2
static inline __m128i min32(__m128i a, __m128i b) {
    __m128i gt = _mm_cmpgt_epi32(a, b);
    return _mm_or_si128(_mm_and_si128(gt, b), _mm_andnot_si128(gt, a));
}

/* One row i >= 1 from prev (row i-1, with prev[-1] = +inf), 16 cells per step; cells past
 * m (padding, cost 0) are computed and never read back for cells < m. */
static void row_sse2(const int32_t *c, const int32_t *prev, int32_t *cur, int64_t m16,
                     uint16_t *left_bits, uint16_t *up_bits) {
    const __m128i inf = _mm_set1_epi32(FC_DTW_INF);
    const __m128i inf0 = _mm_setr_epi32(FC_DTW_INF, 0, 0, 0);
    const __m128i inf01 = _mm_setr_epi32(FC_DTW_INF, FC_DTW_INF, 0, 0);
    __m128i carry = inf, last = inf; /* D[j-1] broadcast; the previous vector of D */
    for (int64_t j = 0; j < m16; j += 16) {
        unsigned lmask = 0, umask = 0;
        for (int k = 0; k < 16; k += 4) {
            __m128i up = _mm_loadu_si128((const __m128i *)(prev + j + k));
            __m128i dg = _mm_loadu_si128((const __m128i *)(prev + j + k - 1));
            __m128i cc = _mm_loadu_si128((const __m128i *)(c + j + k));
            __m128i up_wins = _mm_cmpgt_epi32(dg, up);
            __m128i best = _mm_or_si128(_mm_and_si128(up_wins, up), _mm_andnot_si128(up_wins, dg));
            __m128i s = _mm_add_epi32(cc, _mm_slli_si128(cc, 4));
            s = _mm_add_epi32(s, _mm_slli_si128(s, 8));
            __m128i u = _mm_sub_epi32(_mm_add_epi32(best, cc), s);
            u = min32(u, _mm_or_si128(_mm_slli_si128(u, 4), inf0));
            u = min32(u, _mm_or_si128(_mm_slli_si128(u, 8), inf01));
            __m128i d = _mm_add_epi32(s, min32(u, carry));
            _mm_storeu_si128((__m128i *)(cur + j + k), d);
            __m128i left = _mm_or_si128(_mm_slli_si128(d, 4), _mm_srli_si128(last, 12));
            /* left < best + up_wins (up_wins is -1 where true) */
            __m128i lw = _mm_cmpgt_epi32(_mm_sub_epi32(best, up_wins), left);
            lmask |= (unsigned)_mm_movemask_ps(_mm_castsi128_ps(lw)) << k;
            umask |= (unsigned)_mm_movemask_ps(_mm_castsi128_ps(up_wins)) << k;
            last = d;
            carry = _mm_shuffle_epi32(d, 0xff);
        }
        left_bits[j >> 4] = (uint16_t)lmask;
        up_bits[j >> 4] = (uint16_t)umask;
    }
}


/* The same row in 16-bit lanes, 8 cells per vector, from the costs c and their prefix
 * sums s inside each vector of 8 (which depend only on the source token: see
 * prefix_sums8). Sums saturate at INF16 (the +inf sentinel), so a value that does not fit
 * comes out as INF16 or just below it, never wrapped; returns the row's largest value for
 * the caller's range check. */
static int row_sse2_16(const int16_t *c, const int16_t *s, const int16_t *prev, int16_t *cur,
                       int64_t m16, uint16_t *left_bits, uint16_t *up_bits) {
    const __m128i inf = _mm_set1_epi16(INF16);
    const __m128i inf1 = _mm_setr_epi16(INF16, 0, 0, 0, 0, 0, 0, 0);
    const __m128i inf2 = _mm_setr_epi16(INF16, INF16, 0, 0, 0, 0, 0, 0);
    const __m128i inf4 = _mm_setr_epi16(INF16, INF16, INF16, INF16, 0, 0, 0, 0);
    __m128i carry = inf, last = inf, mx = _mm_setzero_si128();
    for (int64_t j = 0; j < m16; j += 16) {
        __m128i lw[2], up_wins[2];
        for (int k = 0; k < 2; k++) {
            int64_t o = j + 8 * k;
            __m128i up = _mm_loadu_si128((const __m128i *)(prev + o));
            __m128i dg = _mm_loadu_si128((const __m128i *)(prev + o - 1));
            __m128i cc = _mm_loadu_si128((const __m128i *)(c + o));
            __m128i ss = _mm_loadu_si128((const __m128i *)(s + o));
            up_wins[k] = _mm_cmpgt_epi16(dg, up);
            __m128i best = _mm_min_epi16(up, dg);
            __m128i u = _mm_sub_epi16(_mm_adds_epi16(best, cc), ss);
            u = _mm_min_epi16(u, _mm_or_si128(_mm_slli_si128(u, 2), inf1));
            u = _mm_min_epi16(u, _mm_or_si128(_mm_slli_si128(u, 4), inf2));
            u = _mm_min_epi16(u, _mm_or_si128(_mm_slli_si128(u, 8), inf4));
            __m128i d = _mm_adds_epi16(ss, _mm_min_epi16(u, carry));
            _mm_storeu_si128((__m128i *)(cur + o), d);
            mx = _mm_max_epi16(mx, d);
            __m128i left = _mm_or_si128(_mm_slli_si128(d, 2), _mm_srli_si128(last, 14));
            lw[k] = _mm_cmpgt_epi16(_mm_sub_epi16(best, up_wins[k]), left);
            last = d;
            carry = _mm_shufflehi_epi16(d, 0xff);
            carry = _mm_unpackhi_epi64(carry, carry);
        }
        left_bits[j >> 4] = (uint16_t)_mm_movemask_epi8(_mm_packs_epi16(lw[0], lw[1]));
        up_bits[j >> 4] = (uint16_t)_mm_movemask_epi8(_mm_packs_epi16(up_wins[0], up_wins[1]));
    }
    mx = _mm_max_epi16(mx, _mm_srli_si128(mx, 8));
    mx = _mm_max_epi16(mx, _mm_srli_si128(mx, 4));
    mx = _mm_max_epi16(mx, _mm_srli_si128(mx, 2));
    return (int16_t)_mm_cvtsi128_si32(mx);
}

/* s = prefix sums of c inside each vector of 8 (costs < 1024: no overflow) */
static void prefix_sums8(const int16_t *c, int16_t *s, int64_t m16) {
    for (int64_t j = 0; j < m16; j += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(c + j));
        v = _mm_add_epi16(v, _mm_slli_si128(v, 2));
        v = _mm_add_epi16(v, _mm_slli_si128(v, 4));
        v = _mm_add_epi16(v, _mm_slli_si128(v, 8));
        _mm_storeu_si128((__m128i *)(s + j), v);
    }
}
#endif

int fc_dtw_forward(const int32_t *cost, int64_t nrow, int64_t ncol, int32_t max_cost,
                   const int64_t *si, int64_t n, const int32_t *pj, int64_t m, fc_dtw_moves *mv) {
    int64_t m16 = (m + 15) & ~(int64_t)15, stride = m16 >> 4, w = m16 + 16;
    size_t words = (size_t)n * (size_t)stride;
    mv->stride = stride;
    mv->left = calloc(words, sizeof(uint16_t));
    mv->up = calloc(words, sizeof(uint16_t));
    /* value rows, 32- and 16-bit, each with a +inf cell in front (prev[-1]) and room for the
     * padding (cost 0; those cells never feed back into cells < m) */
    int32_t *buf = calloc((size_t)(5 * w), sizeof *buf);
    int16_t *buf16 = calloc((size_t)(4 * w), sizeof *buf16);
    if (!mv->left || !mv->up || !buf || !buf16) {
        free(buf); free(buf16); free(mv->left); free(mv->up);
        mv->left = mv->up = NULL;
        return -1;
    }
    int32_t *prev = buf + 16, *cur = prev + w, *cur2 = cur + w, *c0 = cur2 + w, *c1 = c0 + w;
    int16_t *prev16 = buf16 + 16, *cur16 = prev16 + w, *c16 = cur16 + w;
    for (int k = 0; k < 5; k++) buf[k * w + 15] = FC_DTW_INF;
    for (int k = 0; k < 2; k++) buf16[k * w + 15] = INF16;
    /* row 0: only moves left */
    const int32_t *r0 = cost + si[0] * ncol;
    prev[0] = r0[pj[0]];
    for (int64_t j = 1; j < m; j++) {
        prev[j] = prev[j - 1] + r0[pj[j]];
        set_bit(mv->left, j);
    }
    int simd = fc_align_simd();
    /* 16-bit rows while every value stays below `limit`: then each sum was exact (a row's
     * intermediate values exceed the previous row's values by at most 8 costs) */
    int32_t limit = INF16 - 16 * max_cost - 2;
    int narrow = simd && max_cost < 1024 && prev[m - 1] < limit;
    for (int64_t j = 0; j < m && narrow; j++) prev16[j] = (int16_t)prev[j];
    /* the 16-bit cost rows in pivot position order and their prefix sums, once per
     * distinct source token (a gather per cell is as slow as the SIMD row itself) */
    int16_t *rows16 = NULL;
#ifdef FC_DTW_SSE2
    if (narrow && nrow < n && (size_t)nrow * (size_t)m16 <= ((size_t)1 << 22)) /* 16 MB */
        rows16 = malloc((size_t)nrow * (size_t)(2 * m16) * sizeof *rows16);
    for (int64_t a = 0; rows16 && a < nrow; a++) {
        const int32_t *ra = cost + a * ncol;
        int16_t *r16 = rows16 + a * 2 * m16;
        for (int64_t j = 0; j < m; j++) r16[j] = (int16_t)ra[pj[j]];
        for (int64_t j = m; j < m16; j++) r16[j] = 0;
        prefix_sums8(r16, r16 + m16, m16);
    }
#else
    (void)nrow, (void)c16;
#endif
    for (int64_t i = 1; i < n;) {
        const int32_t *ra = cost + si[i] * ncol;
        uint16_t *la = mv->left + i * stride, *ua = mv->up + i * stride;
#ifdef FC_DTW_SSE2
        if (narrow) {
            const int16_t *cr = c16;
            if (rows16) cr = rows16 + si[i] * 2 * m16;
            else {
                for (int64_t j = 0; j < m; j++) c16[j] = (int16_t)ra[pj[j]];
                prefix_sums8(c16, c16 + m16, m16);
            }
            if (row_sse2_16(cr, cr + m16, prev16, cur16, m16, la, ua) < limit) {
                int16_t *t = prev16; prev16 = cur16; cur16 = t;
                i++;
                continue;
            }
            /* out of range: this row again, and the rest, in 32 bits */
            narrow = 0;
            for (int64_t j = 0; j < m; j++) prev[j] = prev16[j];
        }
#endif
        for (int64_t j = 0; j < m; j++) c0[j] = ra[pj[j]];
#ifdef FC_DTW_SSE2
        if (simd) {
            row_sse2(c0, prev, cur, m16, la, ua);
            int32_t *t = prev; prev = cur; cur = t;
            i++;
            continue;
        }
#endif
        int two = i + 1 < n;
        const int32_t *rb = cost + si[two ? i + 1 : i] * ncol;
        for (int64_t j = 0; j < m; j++) c1[j] = rb[pj[j]];
        rows_portable(c0, c1, two, prev, cur, cur2, m, la, ua, la + stride, ua + stride);
        int32_t *t = prev;
        if (two) { prev = cur2; cur2 = t; }
        else { prev = cur; cur = t; }
        i += 1 + two;
    }
    free(buf);
    free(buf16);
    free(rows16);
    return 0;
}
