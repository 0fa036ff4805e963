/* align_internal.h - the vocabulary-pair context shared by align_*.c (internal). */
#ifndef FC_ALIGN_INTERNAL_H
#define FC_ALIGN_INTERNAL_H

#include "vocab_internal.h"

/* code-point strings by id: id i is data[off[i] .. off[i+1]) */
typedef struct u32_strings {
    uint32_t *data;
    int64_t  *off;
    int64_t   max_len;
} u32_strings;

/* UTF-8 strings by id */
typedef struct u8_strings {
    fc_buf   buf;
    int64_t *off;
} u8_strings;

struct fc_align_ctx {
    const fc_vocab_t *src, *pivot;
    /* DTW (method.md 3.2), decoded strings: a' = a.replace(sm, ""), b' = b.replace(pm, "");
     * if either is empty a' = a.replace(sm, pm), b' = b */
    u32_strings src_strip, src_repl, piv_strip, piv_raw;
    /* distribution rules (method.md 5), UTF-8 */
    u8_strings src_dec_repl, src_dec_strip, piv_dec_strip;
};

/* FC_ERR_VALUE naming `what` and the position if an id is outside [0, V). */
fc_status fc_align_check_ids(const int64_t *ids, int64_t n, const fc_vocab_t *v,
                             const char *what, fc_error *err);

/* CSR by pivot position from a list of (source, pivot) pairs given in path order (both
 * coordinates non-decreasing). */
fc_status fc_alignment_from_path(const int64_t *src_pos, const int64_t *piv_pos, int64_t len,
                                 int64_t m, fc_alignment *out, fc_error *err);

/* +inf of the DTW; every D value must stay below it (fc_align_dtw checks the bound) */
#define FC_DTW_INF 0x3fffffff

/* The DTW forward pass (align_dtw_dp.c): for every cell of the n x m grid, whether the
 * backtrack moves left (bit of `left`) or up (bit of `up`, read only where `left` is clear)
 * or else diagonally. Bit j % 16 of word [i * stride + j / 16]. */
typedef struct fc_dtw_moves {
    uint16_t *left, *up;
    int64_t   stride;
} fc_dtw_moves;

/* Cell (i, j) costs cost[si[i] * ncol + pj[j]] (a table of nrow x ncol), every cost in
 * [0, max_cost]. Allocates
 * mv's bitmaps (the caller frees them); -1 when out of memory. Needs n, m >= 1 and every
 * D value below 2^30. */
int fc_dtw_forward(const int32_t *cost, int64_t nrow, int64_t ncol, int32_t max_cost,
                   const int64_t *si, int64_t n, const int32_t *pj, int64_t m, fc_dtw_moves *mv);

/* Whether the SIMD code paths run (x86-64 and not switched off by fc_align_set_simd). */
int fc_align_simd(void);

/* ------------------------------------------------------------------------------------ */
/* projection (align_bytematch.c, align_project_ctx.c, align_project.c) */

enum { FC_BYTE_MATCHED = 0, FC_BYTE_ONESIDED = 1, FC_BYTE_DIFFERING = 2 };

/* Match source bytes S[ns] with pivot bytes P[np]: the state of every byte (FC_BYTE_*) and
 * for every matched pivot byte the source byte it matches (-1 otherwise). -1 when out of
 * memory. */
int fc_bytes_match(const unsigned char *S, int64_t ns, const unsigned char *P, int64_t np,
                   uint8_t *s_state, uint8_t *p_state, int64_t *to_src);

struct fc_project_ctx {
    const fc_vocab_t *src, *pivot;
    fc_strmap         lookup;   /* pivot canonical bytes -> the piece that spells them */
    int64_t           max_len;  /* longest key of lookup */
    int32_t          *role_map; /* source id without bytes -> pivot special of its role, -1 */
};

/* The pivot piece whose canonical bytes are the longest prefix of s[0..len), or -1. */
int64_t fc_project_lookup(const fc_project_ctx_t *c, const unsigned char *s, int64_t len);

#endif
