/* align_project_ctx.c - what the projection needs per vocabulary pair: the pivot lookup (the
 * piece whose canonical bytes are the longest prefix of a byte string) and the map of source
 * tokens without bytes (EOS, end of turn) to the pivot's special token of the same role. */
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

static int64_t can_len(const fc_vocab_t *v, int64_t id) { return v->can_off[id + 1] - v->can_off[id]; }

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
    if (!c->role_map || fc_strmap_init(&c->lookup, (size_t)pivot->V)) goto nomem;
    for (int64_t s = 0; s < src->V; s++) c->role_map[s] = -1;
    static const fc_role order[] = {FC_ROLE_BOS, FC_ROLE_EOS, FC_ROLE_UNK, FC_ROLE_PAD,
                                    FC_ROLE_EOT}; /* later wins: end of turn last */
    for (size_t r = 0; r < sizeof order / sizeof *order; r++) {
        int64_t s = src->roles[order[r]], p = pivot->roles[order[r]];
        if (s >= 0 && p >= 0 && can_len(src, s) == 0) c->role_map[s] = (int32_t)p;
    }
    /* of several ids with the same bytes: a real piece before a <0xNN> byte piece, then
     * the lowest id */
    for (int64_t id = 0; id < pivot->V; id++) {
        int64_t len = can_len(pivot, id);
        if (!len || (pivot->flags[id] & (FC_TOKEN_SPECIAL | FC_TOKEN_MISSING))) continue;
        int64_t old = -1;
        int rc = fc_strmap_put(&c->lookup, pivot->canonical.data, pivot->can_off[id], len, id, 0,
                               &old);
        if (rc < 0) goto nomem;
        if (rc == 1 && (pivot->flags[old] & FC_TOKEN_BYTE) && !(pivot->flags[id] & FC_TOKEN_BYTE)
            && fc_strmap_put(&c->lookup, pivot->canonical.data, pivot->can_off[id], len, id, 1,
                             &old) < 0)
            goto nomem;
        if (len > c->max_len) c->max_len = len;
    }
    *out = c;
    return FC_OK;
nomem:
    fc_project_ctx_free(c);
    return fc_error_set(err, FC_ERR_NOMEM, "out of memory building a projection context");
}

void fc_project_ctx_free(fc_project_ctx_t *c) {
    if (!c) return;
    fc_strmap_free(&c->lookup);
    free(c->role_map);
    free(c);
}

int64_t fc_project_lookup(const fc_project_ctx_t *c, const unsigned char *s, int64_t len) {
    for (int64_t n = len < c->max_len ? len : c->max_len; n > 0; n--) {
        int64_t id = fc_strmap_get(&c->lookup, c->pivot->canonical.data, (const char *)s,
                                   (size_t)n);
        if (id >= 0) return id;
    }
    return -1;
}
