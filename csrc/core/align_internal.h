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

/* Mark (1 in ma, mb; the caller zeroes them) the bytes of two whitespace runs that match:
 * equal runs byte for byte, else a longest common subsequence walked from the front, ties
 * skipping a byte of a; runs over 4096 bytes: the common prefix. -1 when out of memory.
 * Shared by the offsets alignment and the projection's byte matching. */
int fc_match_ws(const unsigned char *a, int64_t na, const unsigned char *b, int64_t nb,
                uint8_t *ma, uint8_t *mb);

/* Match source bytes S[ns] with pivot bytes P[np]: the state of every byte (FC_BYTE_*) and
 * for every matched pivot byte the source byte it matches (-1 otherwise). -1 when out of
 * memory. */
int fc_bytes_match(const unsigned char *S, int64_t ns, const unsigned char *P, int64_t np,
                   uint8_t *s_state, uint8_t *p_state, int64_t *to_src);

/* What the projection reads of a source id, in one 32-byte record (one cache line: top-K ids
 * are scattered over the vocabulary): its canonical bytes (inline when they fit in head) and
 * the pivot piece spelling the longest prefix of them (-1 / 0 if none) with its length. */
#define FC_TOK_HEAD 12
typedef struct fc_src_tok {
    int64_t       off;   /* canonical bytes at src->canonical.data + off */
    int32_t       len, piece, piece_len;
    unsigned char head[FC_TOK_HEAD]; /* the first bytes (all of them if len <= FC_TOK_HEAD) */
} fc_src_tok;

/* The canonical bytes of a record. */
static inline const unsigned char *fc_src_tok_bytes(const fc_vocab_t *src, const fc_src_tok *t) {
    return t->len <= FC_TOK_HEAD ? t->head : (const unsigned char *)src->canonical.data + t->off;
}

/* The pivot lookup is a byte trie over the pieces' canonical bytes, laid out as a double
 * array: one 16-byte record per node, node 0 the root. The child of (node, byte b) is record
 * base + b of the node's base if that record's check is the node, else there is none; a
 * record also carries the piece spelled by the path to it (-1 if none), so a step down reads
 * one record (the parent's is already in cache). Free records and the root have check -1;
 * the array runs 256 records past the largest base, so base + b is always inside it. */
typedef struct fc_trie_node {
    int32_t base, check, piece, pad;
} fc_trie_node;

struct fc_project_ctx {
    const fc_vocab_t *src, *pivot;
    fc_trie_node     *trie;      /* the double array, 64-byte aligned */
    int64_t           trie_size; /* records */
    int32_t          *role_map;  /* source id without bytes -> pivot special of its role, -1 */
    fc_src_tok       *src_tok;   /* per source id */
};

/* the child of (node, b), or -1 */
static inline int64_t fc_trie_child(const fc_trie_node *t, int64_t node, unsigned char b) {
    int64_t idx = (int64_t)t[node].base + b;
    return t[idx].check == node ? idx : -1;
}

/* A walk down the trie: feed byte strings in order; best / best_len = the longest piece
 * that is a prefix of everything fed so far (-1 / 0 if none). */
typedef struct fc_trie_walk {
    int64_t node, depth, best, best_len;
} fc_trie_walk;

static inline void fc_trie_walk_start(fc_trie_walk *w) { *w = (fc_trie_walk){0, 0, -1, 0}; }

/* 0 once no piece continues with the bytes fed (then further feeding changes nothing). */
static inline int fc_trie_walk_feed(const fc_project_ctx_t *c, fc_trie_walk *w,
                                    const unsigned char *s, int64_t len) {
    if (w->node < 0) return 0;
    const fc_trie_node *t = c->trie;
    int64_t node = w->node, depth = w->depth;
    for (int64_t k = 0; k < len; k++) {
        node = fc_trie_child(t, node, s[k]);
        if (node < 0) break;
        depth++;
        if (t[node].piece >= 0) w->best = t[node].piece, w->best_len = depth;
    }
    w->node = node, w->depth = depth;
    return node >= 0;
}

#endif
