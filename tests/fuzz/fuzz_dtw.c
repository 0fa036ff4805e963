/* fuzz_dtw.c - libFuzzer target: the DTW forward pass on arbitrary cost tables and shapes.
 * The SIMD rows (16-bit with the handover to 32-bit, 32-bit) and the portable rows must
 * give the same backtrack path, never read or write out of bounds. Built with ASan + UBSan
 * by `make fuzz`. */
#include <stdint.h>
#include <stdlib.h>

#include "../../csrc/core/align_internal.h"

#include "fuzz_reader.h"

/* the path from (n-1, m-1) to (0, 0) as cell indices; its length */
static int64_t path(const fc_dtw_moves *mv, int64_t n, int64_t m, int64_t *out) {
    int64_t i = n - 1, j = m - 1, len = 0;
    while (i > 0 || j > 0) {
        out[len++] = i * m + j;
        int64_t w = i * mv->stride + (j >> 4), bit = j & 15;
        if (mv->left[w] >> bit & 1) j--;
        else if (mv->up[w] >> bit & 1) i--;
        else i--, j--;
    }
    return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size};
    int64_t n = 1 + take8(&r) % 80, m = 1 + take8(&r) % 80;
    int64_t nrow = 1 + take8(&r) % 8, ncol = 1 + take8(&r) % 8;
    int scale = take8(&r) % 4; /* costs up to 255 << 0, 2, 3 or 4: ties, or past 2^15 */
    int32_t cost[64], max_cost = 0, pj[80];
    int64_t si[80];
    for (int64_t k = 0; k < nrow * ncol; k++) {
        cost[k] = (int32_t)take8(&r) << (scale ? scale + 1 : 0);
        if (cost[k] > max_cost) max_cost = cost[k];
    }
    for (int64_t i = 0; i < n; i++) si[i] = take8(&r) % nrow;
    for (int64_t j = 0; j < m; j++) pj[j] = take8(&r) % ncol;
    fc_dtw_moves a, b;
    int was = fc_align_set_simd(1);
    int ra = fc_dtw_forward(cost, nrow, ncol, max_cost, si, n, pj, m, &a);
    fc_align_set_simd(0);
    int rb = fc_dtw_forward(cost, nrow, ncol, max_cost, si, n, pj, m, &b);
    fc_align_set_simd(was);
    if (!ra && !rb) {
        int64_t pa[160], pb[160];
        int64_t la = path(&a, n, m, pa), lb = path(&b, n, m, pb);
        if (la != lb) abort();
        for (int64_t k = 0; k < la; k++)
            if (pa[k] != pb[k]) abort();
    }
    if (!ra) { free(a.left); free(a.up); }
    if (!rb) { free(b.left); free(b.up); }
    return 0;
}
