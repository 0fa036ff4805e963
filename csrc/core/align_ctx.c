/* align_ctx.c - per vocabulary pair, the marker-replaced decoded strings of every id. */
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

/* out[i] = replace(decoded[i], pat, rep) for every id */
static int make_u8(const fc_vocab_t *v, const char *pat, const char *rep, u8_strings *out) {
    out->off = calloc((size_t)v->V + 1, sizeof(int64_t));
    if (!out->off || fc_buf_append(&out->buf, "", 0)) return -1;
    size_t pl = strlen(pat), rl = strlen(rep);
    for (int64_t i = 0; i < v->V; i++) {
        const char *s = v->decoded.data + v->dec_off[i];
        size_t len = (size_t)(v->dec_off[i + 1] - v->dec_off[i]);
        if (fc_replace_all(&out->buf, s, len, pat, pl, rep, rl)) return -1;
        out->off[i + 1] = (int64_t)out->buf.len;
    }
    return 0;
}

static int make_u32(const u8_strings *in, int64_t V, u32_strings *out) {
    out->off = calloc((size_t)V + 1, sizeof(int64_t));
    out->data = malloc((in->buf.len + 1) * sizeof(uint32_t)); /* code points <= bytes */
    if (!out->off || !out->data) return -1;
    int64_t n = 0;
    out->max_len = 0;
    for (int64_t i = 0; i < V; i++) {
        const unsigned char *s = (const unsigned char *)in->buf.data + in->off[i];
        size_t len = (size_t)(in->off[i + 1] - in->off[i]), k = 0;
        while (k < len) {
            int adv;
            out->data[n++] = fc_utf8_next(s + k, len - k, &adv);
            k += (size_t)adv;
        }
        out->off[i + 1] = n;
        if (n - out->off[i] > out->max_len) out->max_len = n - out->off[i];
    }
    return 0;
}

static void free_u8(u8_strings *s) { fc_buf_free(&s->buf); free(s->off); }
static void free_u32(u32_strings *s) { free(s->data); free(s->off); }

fc_status fc_align_ctx_new(const fc_vocab_t *src, const fc_vocab_t *pivot, fc_align_ctx_t **out,
                           fc_error *err) {
    *out = NULL;
    fc_align_ctx_t *c = calloc(1, sizeof *c);
    if (!c) return fc_error_set(err, FC_ERR_NOMEM, "out of memory building an alignment context");
    c->src = src;
    c->pivot = pivot;
    const char *sm = src->marker, *pm = pivot->marker;
    u8_strings t2 = {0};
    int rc = make_u8(src, sm, "", &c->src_dec_strip) || make_u8(src, sm, pm, &c->src_dec_repl)
          || make_u8(pivot, pm, "", &c->piv_dec_strip) || make_u8(pivot, "", "", &t2)
          || make_u32(&c->src_dec_strip, src->V, &c->src_strip)
          || make_u32(&c->src_dec_repl, src->V, &c->src_repl)
          || make_u32(&c->piv_dec_strip, pivot->V, &c->piv_strip)
          || make_u32(&t2, pivot->V, &c->piv_raw);
    free_u8(&t2);
    if (rc) {
        fc_align_ctx_free(c);
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory building an alignment context");
    }
    *out = c;
    return FC_OK;
}

void fc_align_ctx_free(fc_align_ctx_t *c) {
    if (!c) return;
    free_u32(&c->src_strip); free_u32(&c->src_repl);
    free_u32(&c->piv_strip); free_u32(&c->piv_raw);
    free_u8(&c->src_dec_repl); free_u8(&c->src_dec_strip); free_u8(&c->piv_dec_strip);
    free(c);
}

void fc_alignment_free(fc_alignment *a) {
    if (!a) return;
    free(a->indptr);
    free(a->indices);
    a->indptr = a->indices = NULL;
    a->m = 0;
}

fc_status fc_align_check_ids(const int64_t *ids, int64_t n, const fc_vocab_t *v,
                             const char *what, fc_error *err) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= v->V)
            return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "token_id_out_of_range",
                                     "%s[%lld] = %lld is not a token id of its vocabulary "
                                     "(size %lld) (rule token_id_out_of_range)", what,
                                     (long long)i, (long long)ids[i], (long long)v->V);
    return FC_OK;
}
