/* align_project_ctx.c - what the projection needs per vocabulary pair: the pivot lookup (a
 * byte trie: the piece whose canonical bytes are the longest prefix of a byte string, found
 * in one pass over its bytes: a double array, see align_internal.h, laid out from the pieces
 * sorted by their bytes) and the map of source tokens without bytes (EOS, end of turn) to the
 * pivot's special token of the same role. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

static int64_t can_len(const fc_vocab_t *v, int64_t id) { return v->can_off[id + 1] - v->can_off[id]; }

/* ---- the pieces sorted by their bytes (a prefix before its extensions); of several ids
 * with the same bytes, a real piece before a <0xNN> byte piece, then the lowest id. The
 * trie's nodes are then the ranges of this order that share a prefix. ---- */

typedef struct piece_key {
    uint64_t             head; /* the first 8 bytes, big-endian, zero-padded */
    const unsigned char *b;
    int32_t              len;
    uint32_t             tie;  /* byte piece << 31 | id */
} piece_key;

static int key_cmp(const void *pa, const void *pb) {
    const piece_key *x = pa, *y = pb;
    if (x->head != y->head) return x->head < y->head ? -1 : 1;
    int32_t n = x->len < y->len ? x->len : y->len;
    int d = n > 8 ? memcmp(x->b + 8, y->b + 8, (size_t)(n - 8)) : 0;
    if (d) return d;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->tie < y->tie ? -1 : x->tie > y->tie;
}

/* the pivot's pieces (not special, not missing, not empty) in that order; NULL when out of
 * memory */
static piece_key *sorted_pieces(const fc_vocab_t *pivot, int64_t *n_out) {
    piece_key *k = malloc((size_t)(pivot->V ? pivot->V : 1) * sizeof *k);
    if (!k) return NULL;
    int64_t n = 0;
    for (int64_t id = 0; id < pivot->V; id++) {
        int64_t len = can_len(pivot, id);
        if (!len || (pivot->flags[id] & (FC_TOKEN_SPECIAL | FC_TOKEN_MISSING))) continue;
        const unsigned char *b = (const unsigned char *)pivot->canonical.data + pivot->can_off[id];
        uint64_t head = 0;
        for (int j = 0; j < 8; j++) head = head << 8 | (j < len ? b[j] : 0);
        k[n++] = (piece_key){head, b, (int32_t)len,
                             (pivot->flags[id] & FC_TOKEN_BYTE ? 1u << 31 : 0) | (uint32_t)id};
    }
    qsort(k, (size_t)n, sizeof *k, key_cmp);
    *n_out = n;
    return k;
}

/* ---- the layout into the double array: each node's children at the first base where all
 * their records are free. The free records are kept in
 * a list in increasing order (nxt / prv, -1 at the ends); a record that fails as the first
 * child's place SKIP_LIMIT times leaves the list (it stays free and can still take a later
 * child), which bounds the search on a crowded front ---- */

#define SKIP_LIMIT 16
#define LAYOUT_MAX ((int64_t)1 << 30) /* records */

typedef struct layout {
    fc_trie_node *rec;
    int32_t      *nxt, *prv;
    uint8_t      *skips;   /* SKIP_LIMIT: out of the list (or taken) */
    int64_t       cap, head, tail;
} layout;

static void unlink_free(layout *L, int64_t i) {
    if (L->skips[i] >= SKIP_LIMIT) return;
    L->skips[i] = SKIP_LIMIT;
    if (L->prv[i] >= 0) L->nxt[L->prv[i]] = L->nxt[i];
    else L->head = L->nxt[i];
    if (L->nxt[i] >= 0) L->prv[L->nxt[i]] = L->prv[i];
    else L->tail = L->prv[i];
}

/* room for at least `need` records, the new ones free and at the end of the list;
 * -1 when out of memory, -2 past LAYOUT_MAX */
static int grow(layout *L, int64_t need) {
    if (need <= L->cap) return 0;
    int64_t cap = L->cap ? L->cap : 1024;
    while (cap < need) cap *= 2;
    if (cap > LAYOUT_MAX) return -2;
    fc_trie_node *rec = realloc(L->rec, (size_t)cap * sizeof *rec);
    if (rec) L->rec = rec;
    int32_t *nxt = realloc(L->nxt, (size_t)cap * sizeof *nxt);
    if (nxt) L->nxt = nxt;
    int32_t *prv = realloc(L->prv, (size_t)cap * sizeof *prv);
    if (prv) L->prv = prv;
    uint8_t *skips = realloc(L->skips, (size_t)cap);
    if (skips) L->skips = skips;
    if (!rec || !nxt || !prv || !skips) return -1;
    for (int64_t i = L->cap; i < cap; i++) {
        L->rec[i] = (fc_trie_node){0, -1, -1, 0};
        L->skips[i] = 0;
        L->prv[i] = (int32_t)(i == L->cap ? L->tail : i - 1);
        L->nxt[i] = (int32_t)(i + 1 < cap ? i + 1 : -1);
    }
    if (L->tail >= 0) L->nxt[L->tail] = (int32_t)L->cap;
    else L->head = L->cap;
    L->tail = cap - 1;
    L->cap = cap;
    return 0;
}

/* The first base at which records base + b are free for every child byte b (lo = the
 * smallest), with 256 records of room past it; -1 / -2 as grow. */
static int64_t find_base(layout *L, const uint8_t *bytes, int n, int lo) {
    for (int64_t f = L->head;;) {
        if (f < 0) { /* the list is empty: more records */
            int64_t at = L->cap;
            int st = grow(L, at + 256);
            if (st) return st;
            f = at;
        }
        int64_t base = f - lo;
        int fits = base >= 0;
        if (fits && base + 256 > L->cap) {
            int st = grow(L, base + 256);
            if (st) return st;
        }
        /* (record 0, the root, is never one of them: base + lo = f > 0) */
        for (int k = 0; fits && k < n; k++) fits = L->rec[base + bytes[k]].check < 0;
        if (fits) return base;
        int64_t nf = L->nxt[f];
        if (L->skips[f] + 1 >= SKIP_LIMIT) unlink_free(L, f);
        else L->skips[f]++;
        f = nf;
    }
}

/* a node while laid out: its record, its depth, the range of sorted pieces under it */
typedef struct pending { int32_t rec, depth, lo, hi; } pending;

/* The double array of the sorted pieces k[n] into c->trie, the nodes depth-first (the
 * smallest byte first); -1 when out of memory, -2 past LAYOUT_MAX. */
static int lay_out(const piece_key *k, int64_t n, int64_t total, fc_project_ctx_t *c) {
    layout L = {NULL, NULL, NULL, NULL, 0, -1, -1};
    int64_t cap_stack = 1024, top = 0, size = 256;
    pending *stack = malloc((size_t)cap_stack * sizeof *stack);
    int st = !stack ? -1 : grow(&L, total + total / 8 + 512);
    if (st) goto done;
    unlink_free(&L, 0);
    stack[top++] = (pending){0, 0, 0, (int32_t)n};
    while (top) {
        pending u = stack[--top];
        int32_t i = u.lo;
        if (i < u.hi && k[i].len == u.depth) L.rec[u.rec].piece = (int32_t)(k[i].tie & 0x7fffffffu);
        while (i < u.hi && k[i].len == u.depth) i++;
        if (i == u.hi) continue; /* a leaf: base 0 (its check is never matched) */
        uint8_t bytes[256];
        int32_t from[257];
        int nb = 0;
        for (; i < u.hi; i++) {
            uint8_t b = k[i].b[u.depth];
            if (!nb || b != bytes[nb - 1]) bytes[nb] = b, from[nb++] = i;
        }
        from[nb] = u.hi;
        int64_t base = find_base(&L, bytes, nb, bytes[0]);
        if (base < 0) {
            st = (int)base;
            goto done;
        }
        L.rec[u.rec].base = (int32_t)base;
        if (base + 256 > size) size = base + 256;
        if (top + nb > cap_stack) {
            while (top + nb > cap_stack) cap_stack *= 2;
            pending *more = realloc(stack, (size_t)cap_stack * sizeof *stack);
            if (!more) {
                st = -1;
                goto done;
            }
            stack = more;
        }
        for (int j = nb - 1; j >= 0; j--) { /* pushed last to first: popped first to last */
            int64_t r = base + bytes[j];
            unlink_free(&L, r);
            L.rec[r].check = u.rec;
            stack[top++] = (pending){(int32_t)r, u.depth + 1, from[j], from[j + 1]};
        }
    }
    /* 64-byte aligned, the size rounded up to whole lines (free records) */
    size_t bytes = ((size_t)size * sizeof *L.rec + 63) & ~(size_t)63;
    c->trie = aligned_alloc(64, bytes);
    if (!c->trie) {
        st = -1;
        goto done;
    }
    memcpy(c->trie, L.rec, (size_t)size * sizeof *L.rec);
    for (size_t i = (size_t)size; i < bytes / sizeof *L.rec; i++)
        c->trie[i] = (fc_trie_node){0, -1, -1, 0};
    c->trie_size = size;
done:
    free(stack);
    free(L.rec);
    free(L.nxt);
    free(L.prv);
    free(L.skips);
    return st;
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
    if (!c->role_map) goto nomem;
    for (int64_t s = 0; s < src->V; s++) c->role_map[s] = -1;
    static const fc_role order[] = {FC_ROLE_BOS, FC_ROLE_EOS, FC_ROLE_UNK, FC_ROLE_PAD,
                                    FC_ROLE_EOT}; /* later wins: end of turn last */
    for (size_t r = 0; r < sizeof order / sizeof *order; r++) {
        int64_t s = src->roles[order[r]], p = pivot->roles[order[r]];
        if (s >= 0 && p >= 0 && can_len(src, s) == 0) c->role_map[s] = (int32_t)p;
    }
    int64_t total = pivot->can_off[pivot->V], n_keys = 0;
    piece_key *keys = sorted_pieces(pivot, &n_keys);
    int st = keys ? lay_out(keys, n_keys, total, c) : -1;
    free(keys);
    if (st == -2)
        return fc_project_ctx_free(c), fc_error_set(err, FC_ERR_VALUE, "the pivot vocabulary "
                                                    "spells %lld bytes, too many for the "
                                                    "projection's lookup (a double array of at "
                                                    "most 2^30 records)", (long long)total);
    if (st) goto nomem;
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
    free(c->trie);
    free(c->role_map);
    free(c->src_tok);
    free(c);
}
