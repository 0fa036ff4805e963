/* align_project_ctx.c - what the projection needs per vocabulary pair: the pivot lookup (a
 * byte trie: the piece whose canonical bytes are the longest prefix of a byte string, found
 * in one pass over its bytes) and the map of source tokens without bytes (EOS, end of turn)
 * to the pivot's special token of the same role. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

static int64_t can_len(const fc_vocab_t *v, int64_t id) { return v->can_off[id + 1] - v->can_off[id]; }

static uint64_t slot_of(uint32_t key, uint64_t mask) {
    return ((uint64_t)key * 0x9E3779B97F4A7C15ull >> 17) & mask;
}

/* the child of (node, byte), or -1 */
static int64_t child(const fc_project_ctx_t *c, int64_t node, unsigned char b) {
    if (!node) return c->root_child[b];
    uint32_t key = ((uint32_t)node << 8 | b) + 1;
    for (uint64_t h = slot_of(key, c->edge_mask);; h = (h + 1) & c->edge_mask) {
        if (c->edge[h].key == key) return c->edge[h].child;
        if (!c->edge[h].key) return -1;
    }
}

/* the child of (node, byte), created if missing (the table has room: sized for every byte) */
static int64_t child_or_new(fc_project_ctx_t *c, int64_t node, unsigned char b) {
    int64_t found = child(c, node, b);
    if (found >= 0) return found;
    int64_t id = c->n_nodes++;
    c->piece[id] = -1;
    if (!node) {
        c->root_child[b] = (int32_t)id;
        return id;
    }
    uint32_t key = ((uint32_t)node << 8 | b) + 1;
    uint64_t h = slot_of(key, c->edge_mask);
    while (c->edge[h].key) h = (h + 1) & c->edge_mask;
    c->edge[h] = (fc_trie_edge){key, (int32_t)id};
    return id;
}

fc_status fc_project_ctx_new(const fc_vocab_t *src, const fc_vocab_t *pivot,
                             fc_project_ctx_t **out, fc_error *err) {
    *out = NULL;
    const fc_vocab_t *lossy = src->style == FC_STYLE_WORDPIECE ? src
                            : pivot->style == FC_STYLE_WORDPIECE ? pivot : NULL;
    if (lossy)
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "projection_lossy_tokenizer",
                                 "the %s vocabulary is WordPiece, which drops spaces and may "
                                 "lower-case text or map it to [UNK]: its tokens do not spell "
                                 "the text's bytes, so the byte projection cannot be used; use "
                                 "projection=\"rules\" with method=\"dtw\" (rule "
                                 "projection_lossy_tokenizer)", lossy == src ? "source" : "pivot");
    fc_project_ctx_t *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->src = src;
    c->pivot = pivot;
    c->role_map = malloc((size_t)(src->V ? src->V : 1) * sizeof *c->role_map);
    int64_t total = pivot->can_off[pivot->V]; /* at most one node per byte of the pieces */
    if (total >= (int64_t)1 << 24)
        return fc_project_ctx_free(c), fc_error_set(err, FC_ERR_VALUE, "the pivot vocabulary "
                                                    "spells %lld bytes; the projection's lookup "
                                                    "takes at most 2^24", (long long)total);
    uint64_t size = 16;
    while (size < 2 * (uint64_t)total + 16) size <<= 1;
    c->edge_mask = size - 1;
    c->edge = calloc(size, sizeof *c->edge);
    c->piece = malloc((size_t)(total + 1) * sizeof *c->piece);
    if (!c->role_map || !c->edge || !c->piece) goto nomem;
    for (int b = 0; b < 256; b++) c->root_child[b] = -1;
    for (int64_t s = 0; s < src->V; s++) c->role_map[s] = -1;
    static const fc_role order[] = {FC_ROLE_BOS, FC_ROLE_EOS, FC_ROLE_UNK, FC_ROLE_PAD,
                                    FC_ROLE_EOT}; /* later wins: end of turn last */
    for (size_t r = 0; r < sizeof order / sizeof *order; r++) {
        int64_t s = src->roles[order[r]], p = pivot->roles[order[r]];
        if (s >= 0 && p >= 0 && can_len(src, s) == 0) c->role_map[s] = (int32_t)p;
    }
    c->piece[0] = -1;
    c->n_nodes = 1;
    /* of several ids with the same bytes: a real piece before a <0xNN> byte piece, then
     * the lowest id */
    for (int64_t id = 0; id < pivot->V; id++) {
        int64_t len = can_len(pivot, id);
        if (!len || (pivot->flags[id] & (FC_TOKEN_SPECIAL | FC_TOKEN_MISSING))) continue;
        const unsigned char *b = (const unsigned char *)pivot->canonical.data + pivot->can_off[id];
        int64_t node = 0;
        for (int64_t k = 0; k < len; k++) node = child_or_new(c, node, b[k]);
        int32_t old = c->piece[node];
        if (old < 0 || ((pivot->flags[old] & FC_TOKEN_BYTE) && !(pivot->flags[id] & FC_TOKEN_BYTE)))
            c->piece[node] = (int32_t)id;
    }
    /* every source token's record, with its lookup on its own (the most frequent by far) */
    /* one record more: a word read from the last head stays inside (align_project.c) */
    /* on 64-byte boundaries: a record is then never split over two cache lines */
    size_t tok_bytes = ((size_t)src->V + 1) * sizeof *c->src_tok;
    c->src_tok = aligned_alloc(64, (tok_bytes + 63) / 64 * 64);
    if (!c->src_tok) goto nomem;
    memset(c->src_tok, 0, tok_bytes);
    for (int64_t id = 0; id < src->V; id++) {
        fc_src_tok *t = &c->src_tok[id];
        const unsigned char *b = (const unsigned char *)src->canonical.data + src->can_off[id];
        int64_t len = can_len(src, id);
        if (len > INT32_MAX)
            return fc_project_ctx_free(c), fc_error_set(err, FC_ERR_VALUE, "source token %lld "
                                                        "spells %lld bytes; the projection "
                                                        "takes at most 2^31 - 1", (long long)id,
                                                        (long long)len);
        fc_trie_walk w;
        fc_trie_walk_start(&w);
        fc_trie_walk_feed(c, &w, b, len);
        t->off = src->can_off[id];
        t->len = (int32_t)len;
        t->piece = (int32_t)w.best;
        t->piece_len = (int32_t)w.best_len;
        memcpy(t->head, b, (size_t)(len < FC_TOK_HEAD ? len : FC_TOK_HEAD));
    }
    *out = c;
    return FC_OK;
nomem:
    fc_project_ctx_free(c);
    return fc_error_set(err, FC_ERR_NOMEM, "out of memory building a projection context");
}

void fc_project_ctx_free(fc_project_ctx_t *c) {
    if (!c) return;
    free(c->edge);
    free(c->piece);
    free(c->role_map);
    free(c->src_tok);
    free(c);
}

void fc_trie_walk_start(fc_trie_walk *w) { *w = (fc_trie_walk){0, 0, -1, 0}; }

int fc_trie_walk_feed(const fc_project_ctx_t *c, fc_trie_walk *w, const unsigned char *s,
                      int64_t len) {
    if (w->node < 0) return 0;
    for (int64_t k = 0; k < len; k++) {
        w->node = child(c, w->node, s[k]);
        if (w->node < 0) return 0;
        w->depth++;
        if (c->piece[w->node] >= 0) w->best = c->piece[w->node], w->best_len = w->depth;
    }
    return 1;
}
