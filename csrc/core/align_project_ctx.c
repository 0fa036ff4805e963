/* align_project_ctx.c - what the projection needs per vocabulary pair: the pivot lookup (a
 * byte trie: the piece whose canonical bytes are the longest prefix of a byte string, found
 * in one pass over its bytes) and the map of source tokens without bytes (EOS, end of turn)
 * to the pivot's special token of the same role. */
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

static int64_t can_len(const fc_vocab_t *v, int64_t id) { return v->can_off[id + 1] - v->can_off[id]; }

static uint64_t slot_of(uint64_t key, uint64_t mask) {
    return (key * 0x9E3779B97F4A7C15ull >> 17) & mask;
}

/* the child of (node, byte), or -1 */
static int64_t child(const fc_project_ctx_t *c, int64_t node, unsigned char b) {
    uint64_t key = ((uint64_t)node << 8 | b) + 1;
    for (uint64_t h = slot_of(key, c->edge_mask);; h = (h + 1) & c->edge_mask) {
        if (c->edge_key[h] == key) return c->edge_child[h];
        if (!c->edge_key[h]) return -1;
    }
}

/* the child of (node, byte), created if missing (the table has room: sized for every byte) */
static int64_t child_or_new(fc_project_ctx_t *c, int64_t node, unsigned char b) {
    uint64_t key = ((uint64_t)node << 8 | b) + 1;
    uint64_t h = slot_of(key, c->edge_mask);
    for (; c->edge_key[h]; h = (h + 1) & c->edge_mask)
        if (c->edge_key[h] == key) return c->edge_child[h];
    c->edge_key[h] = key;
    c->edge_child[h] = (int32_t)c->n_nodes;
    c->piece[c->n_nodes] = -1;
    return c->n_nodes++;
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
    uint64_t size = 16;
    while (size < 2 * (uint64_t)total + 16) size <<= 1;
    c->edge_mask = size - 1;
    c->edge_key = calloc(size, sizeof *c->edge_key);
    c->edge_child = malloc(size * sizeof *c->edge_child);
    c->piece = malloc((size_t)(total + 1) * sizeof *c->piece);
    if (!c->role_map || !c->edge_key || !c->edge_child || !c->piece) goto nomem;
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
    /* the lookup of every source token on its own, the most frequent one by far */
    c->src_piece = malloc((size_t)(src->V ? src->V : 1) * sizeof *c->src_piece);
    c->src_piece_len = malloc((size_t)(src->V ? src->V : 1) * sizeof *c->src_piece_len);
    if (!c->src_piece || !c->src_piece_len) goto nomem;
    for (int64_t id = 0; id < src->V; id++) {
        fc_trie_walk w;
        fc_trie_walk_start(&w);
        fc_trie_walk_feed(c, &w, (const unsigned char *)src->canonical.data + src->can_off[id],
                          can_len(src, id));
        c->src_piece[id] = (int32_t)w.best;
        c->src_piece_len[id] = (int32_t)w.best_len;
    }
    *out = c;
    return FC_OK;
nomem:
    fc_project_ctx_free(c);
    return fc_error_set(err, FC_ERR_NOMEM, "out of memory building a projection context");
}

void fc_project_ctx_free(fc_project_ctx_t *c) {
    if (!c) return;
    free(c->edge_key);
    free(c->edge_child);
    free(c->piece);
    free(c->role_map);
    free(c->src_piece);
    free(c->src_piece_len);
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
