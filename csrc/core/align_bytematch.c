/* align_bytematch.c - match two byte streams that spell the same text up to one-sided
 * whitespace and differing spans (docs/alignment.md, "Projection onto pivot tokens", Bytes).
 *
 * Whitespace runs are matched by a longest common subsequence (unmatched bytes are one-sided);
 * other equal bytes match; at a mismatch the walk resynchronises at the nearest 4-byte anchor
 * (a + b skipped bytes, smallest a + b first, then smallest a) and marks the skipped bytes as
 * differing. */
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

#define RESYNC_MAX_SKIP 64 /* bytes skipped on one side while looking for an anchor */
#define RESYNC_ANCHOR   4  /* bytes that must agree to resynchronise */
#define WS_LCS_MAX      4096

static const uint8_t WS_BYTE[256] = {[' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\r'] = 1};

static inline int is_ws(unsigned char c) { return WS_BYTE[c]; }

int fc_match_ws(const unsigned char *a, int64_t na, const unsigned char *b, int64_t nb,
                uint8_t *ma, uint8_t *mb) {
    if (na == nb && memcmp(a, b, (size_t)na) == 0) {
        memset(ma, 1, (size_t)na);
        memset(mb, 1, (size_t)nb);
        return 0;
    }
    if (!na || !nb) return 0;
    if (na > WS_LCS_MAX || nb > WS_LCS_MAX) { /* pathological runs: the common prefix only */
        for (int64_t k = 0; k < na && k < nb && a[k] == b[k]; k++) ma[k] = mb[k] = 1;
        return 0;
    }
    int64_t w = nb + 1;
    int32_t *L = malloc((size_t)(na + 1) * (size_t)w * sizeof *L);
    if (!L) return -1;
    for (int64_t i = na; i >= 0; i--)
        for (int64_t j = nb; j >= 0; j--) {
            int32_t v = 0;
            if (i < na && j < nb) {
                if (a[i] == b[j]) v = L[(i + 1) * w + j + 1] + 1;
                else {
                    int32_t x = L[(i + 1) * w + j], y = L[i * w + j + 1];
                    v = x >= y ? x : y;
                }
            }
            L[i * w + j] = v;
        }
    for (int64_t i = 0, j = 0; i < na && j < nb;) {
        if (a[i] == b[j]) { ma[i++] = 1; mb[j++] = 1; }
        else if (L[(i + 1) * w + j] >= L[i * w + j + 1]) i++;
        else j++;
    }
    free(L);
    return 0;
}

/* the skip (a, b) to the nearest anchor after a mismatch at (i, j); 0 if none */
static int resync(const unsigned char *S, int64_t ns, const unsigned char *P, int64_t np,
                  int64_t i, int64_t j, int64_t *sa, int64_t *sb) {
    for (int64_t t = 1; t <= 2 * RESYNC_MAX_SKIP; t++) {
        int64_t lo = t - RESYNC_MAX_SKIP > 0 ? t - RESYNC_MAX_SKIP : 0;
        int64_t hi = t < RESYNC_MAX_SKIP ? t : RESYNC_MAX_SKIP;
        for (int64_t a = lo; a <= hi; a++) {
            int64_t x = i + a, y = j + (t - a);
            if (x > ns || y > np) continue;
            int64_t r = ns - x < np - y ? ns - x : np - y;
            if (r > RESYNC_ANCHOR) r = RESYNC_ANCHOR;
            if ((x == ns && y == np) || (r >= 1 && memcmp(S + x, P + y, (size_t)r) == 0)) {
                *sa = a, *sb = t - a;
                return 1;
            }
        }
    }
    return 0;
}

int fc_bytes_match(const unsigned char *S, int64_t ns, const unsigned char *P, int64_t np,
                   uint8_t *s_state, uint8_t *p_state, int64_t *to_src) {
    memset(s_state, FC_BYTE_ONESIDED, (size_t)ns);
    memset(p_state, FC_BYTE_ONESIDED, (size_t)np);
    for (int64_t y = 0; y < np; y++) to_src[y] = -1;
    uint8_t *ma = NULL, *mb = NULL;
    size_t cap = 0;
    int64_t i = 0, j = 0;
    while (i < ns || j < np) {
        /* the common case first: equal bytes that are not whitespace */
        while (i < ns && j < np && S[i] == P[j] && !is_ws(S[i])) {
            s_state[i] = p_state[j] = FC_BYTE_MATCHED;
            to_src[j++] = i++;
        }
        if (i >= ns && j >= np) break;
        int wa = i < ns && is_ws(S[i]), wb = j < np && is_ws(P[j]);
        if (wa || wb) {
            int64_t i2 = i, j2 = j;
            while (i2 < ns && is_ws(S[i2])) i2++;
            while (j2 < np && is_ws(P[j2])) j2++;
            if (i2 - i == j2 - j && memcmp(S + i, P + j, (size_t)(i2 - i)) == 0) {
                for (; i < i2; i++, j++) { /* equal runs, the common case: byte for byte */
                    s_state[i] = p_state[j] = FC_BYTE_MATCHED;
                    to_src[j] = i;
                }
                continue;
            }
            size_t need = (size_t)((i2 - i) > (j2 - j) ? (i2 - i) : (j2 - j)) + 1;
            if (need > cap) {
                free(ma); free(mb);
                ma = malloc(need); mb = malloc(need);
                cap = need;
                if (!ma || !mb) { free(ma); free(mb); return -1; }
            }
            memset(ma, 0, (size_t)(i2 - i));
            memset(mb, 0, (size_t)(j2 - j));
            if (fc_match_ws(S + i, i2 - i, P + j, j2 - j, ma, mb)) { free(ma); free(mb); return -1; }
            int64_t x = i, y = j; /* pair the k-th matched bytes of both runs */
            for (;;) {
                while (x < i2 && !ma[x - i]) x++;
                while (y < j2 && !mb[y - j]) y++;
                if (x >= i2 || y >= j2) break;
                s_state[x] = p_state[y] = FC_BYTE_MATCHED;
                to_src[y] = x;
                x++, y++;
            }
            i = i2, j = j2;
            continue;
        }
        /* here the bytes differ (equal ones were taken above) */
        int64_t a, b;
        if (!resync(S, ns, P, np, i, j, &a, &b)) a = ns - i, b = np - j;
        memset(s_state + i, FC_BYTE_DIFFERING, (size_t)a);
        memset(p_state + j, FC_BYTE_DIFFERING, (size_t)b);
        i += a, j += b;
    }
    free(ma); free(mb);
    return 0;
}
