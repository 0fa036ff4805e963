/* vocab_text.c - the strings of a vocabulary: what decode([id]) gives (the tokenizer.json
 * decoder chain run on one token, then transformers' clean-up) and the canonical bytes a
 * piece stands for (byte-level glyphs, U+2581 spaces, <0xNN> bytes, WordPiece "##"). */
#include <stdlib.h>
#include <string.h>

#include "vocab_internal.h"

uint32_t fc_utf8_next(const unsigned char *s, size_t len, int *adv) {
    unsigned c = s[0];
    int n = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if ((size_t)n > len) n = 1; /* callers pass valid UTF-8; never read past the end */
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
    for (int k = 1; k < n; k++) cp = (cp << 6) | (s[k] & 0x3f);
    *adv = n;
    return cp;
}

int fc_utf8_put(fc_buf *b, uint32_t cp) {
    unsigned char t[4];
    size_t n;
    if (cp < 0x80) { t[0] = (unsigned char)cp; n = 1; }
    else if (cp < 0x800) { t[0] = 0xc0 | (cp >> 6); t[1] = 0x80 | (cp & 0x3f); n = 2; }
    else if (cp < 0x10000) {
        t[0] = 0xe0 | (cp >> 12); t[1] = 0x80 | ((cp >> 6) & 0x3f); t[2] = 0x80 | (cp & 0x3f);
        n = 3;
    } else {
        t[0] = 0xf0 | (cp >> 18); t[1] = 0x80 | ((cp >> 12) & 0x3f);
        t[2] = 0x80 | ((cp >> 6) & 0x3f); t[3] = 0x80 | (cp & 0x3f);
        n = 4;
    }
    return fc_buf_append(b, t, n);
}

static const char REPLACEMENT_CHAR[] = "\xef\xbf\xbd";

int fc_utf8_lossy(fc_buf *b, const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) { if (fc_buf_append(b, s + i, 1)) return -1; i++; continue; }
        int need;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) need = 1;
        else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else need = 0;
        size_t j = i + 1;
        int got = 0;
        while (got < need && j < len) { /* the maximal valid prefix of a sequence */
            unsigned d = s[j];
            if (got == 0 ? (d < lo || d > hi) : (d < 0x80 || d > 0xbf)) break;
            got++, j++;
        }
        if (need && got == need) { if (fc_buf_append(b, s + i, j - i)) return -1; }
        else if (fc_buf_append(b, REPLACEMENT_CHAR, 3)) return -1;
        i = j;
    }
    return 0;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes are their own glyph, the other 68
 * bytes take U+0100.. in byte order. */
static int printable_byte(unsigned b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

int fc_bytelevel_byte(uint32_t cp) {
    if (cp < 256) return printable_byte(cp) ? (int)cp : -1;
    /* the 68 others in byte order: 0..32 -> U+0100.., 127..160 -> U+0121.., 173 -> U+0143 */
    if (cp < 256 + 33) return (int)(cp - 256);
    if (cp < 256 + 33 + 34) return (int)(cp - 256 - 33 + 127);
    if (cp == 256 + 67) return 173;
    return -1;
}

int fc_replace_all(fc_buf *out, const char *s, size_t len, const char *pat, size_t plen,
                   const char *rep, size_t rlen) {
    if (fc_buf_reserve(out, len + 1)) return -1;
    if (plen == 0) return fc_buf_append(out, s, len);
    size_t i = 0;
    while (i < len) {
        if (i + plen <= len && memcmp(s + i, pat, plen) == 0) {
            if (fc_buf_append(out, rep, rlen)) return -1;
            i += plen;
        } else {
            if (fc_buf_append(out, s + i, 1)) return -1;
            i++;
        }
    }
    return 0;
}

/* <0xNN> with two hex digits: the byte, else -1 */
static int byte_piece(const char *s, size_t len) {
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = s[k];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* glyphs -> bytes; 0 if some char is not a glyph (then the token is taken as it is) */
static int bytelevel_bytes(fc_buf *out, const char *s, size_t len) {
    size_t start = out->len, i = 0;
    while (i < len) {
        int adv;
        int b = fc_bytelevel_byte(fc_utf8_next((const unsigned char *)s + i, len - i, &adv));
        if (b < 0) { out->len = start; return 0; }
        unsigned char c = (unsigned char)b;
        if (fc_buf_append(out, &c, 1)) return -1;
        i += (size_t)adv;
    }
    return 1;
}

static const char *CLEANUP[][2] = {
    {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
    {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
};

/* transformers' clean_up_tokenization (with_do_not = 0) or tokenizers' WordPiece clean-up */
static int cleanup(fc_buf *s, int with_do_not) {
    for (size_t r = 0; r < sizeof CLEANUP / sizeof CLEANUP[0]; r++) {
        if (r == 7 && !with_do_not) continue;
        fc_buf t = {0};
        if (fc_replace_all(&t, s->data, s->len, CLEANUP[r][0], strlen(CLEANUP[r][0]),
                           CLEANUP[r][1], strlen(CLEANUP[r][1]))) { fc_buf_free(&t); return -1; }
        fc_buf_free(s);
        *s = t;
    }
    return 0;
}

/* s <- step(s) for a one-token list */
static int apply_step(const dec_step *st, fc_buf *s) {
    fc_buf t = {0};
    int rc = 0;
    switch (st->kind) {
    case DEC_BYTELEVEL: {
        fc_buf raw = {0};
        int ok = bytelevel_bytes(&raw, s->data, s->len);
        if (ok < 0) rc = -1;
        else if (ok) rc = fc_utf8_lossy(&t, (const unsigned char *)raw.data, raw.len);
        else rc = fc_buf_append(&t, s->data, s->len);
        fc_buf_free(&raw);
        break;
    }
    case DEC_METASPACE: /* first token: tokenizers drops every replacement char */
        rc = fc_replace_all(&t, s->data, s->len, st->a, strlen(st->a), " ", st->n1 ? 0 : 1);
        break;
    case DEC_REPLACE:
        rc = fc_replace_all(&t, s->data, s->len, st->a, strlen(st->a), st->b, strlen(st->b));
        break;
    case DEC_BYTEFALLBACK: {
        int b = byte_piece(s->data, s->len);
        if (b < 0) rc = fc_buf_append(&t, s->data, s->len);
        else if (b < 0x80) { char c = (char)b; rc = fc_buf_append(&t, &c, 1); }
        else rc = fc_buf_append(&t, REPLACEMENT_CHAR, 3);
        break;
    }
    case DEC_STRIP: {
        size_t cl = strlen(st->a), lo = 0, hi = s->len;
        for (int k = 0; k < st->n1 && cl && hi - lo >= cl; k++) {
            if (memcmp(s->data + lo, st->a, cl) != 0) break;
            lo += cl;
        }
        for (int k = 0; k < st->n2 && cl && hi - lo >= cl; k++) {
            if (memcmp(s->data + hi - cl, st->a, cl) != 0) break;
            hi -= cl;
        }
        rc = fc_buf_append(&t, s->data + lo, hi - lo);
        break;
    }
    case DEC_WORDPIECE: /* the first token keeps its prefix */
        rc = fc_buf_append(&t, s->data, s->len);
        if (!rc && st->n2) rc = cleanup(&t, 1);
        break;
    case DEC_BPE_SUFFIX: /* the last token loses its suffix */
        rc = fc_replace_all(&t, s->data, s->len, st->a, strlen(st->a), "", 0);
        break;
    case DEC_FUSE:
        rc = fc_buf_append(&t, s->data, s->len);
        break;
    }
    fc_buf_free(s);
    *s = t;
    return rc;
}

static int canonical_of_piece(const struct fc_vocab *v, fc_buf *out, const char *p, size_t len) {
    int b = v->byte_fallback ? byte_piece(p, len) : -1;
    if (b >= 0) { unsigned char c = (unsigned char)b; return fc_buf_append(out, &c, 1); }
    switch (v->style) {
    case FC_STYLE_BYTELEVEL: {
        int ok = bytelevel_bytes(out, p, len);
        return ok < 0 ? -1 : ok ? 0 : fc_buf_append(out, p, len);
    }
    case FC_STYLE_METASPACE:
        return fc_replace_all(out, p, len, v->space_char, strlen(v->space_char), " ", 1);
    case FC_STYLE_WORDPIECE: {
        size_t pl = strlen(v->wp_prefix);
        if (pl && len >= pl && memcmp(p, v->wp_prefix, pl) == 0)
            return fc_buf_append(out, p + pl, len - pl);
        return fc_buf_append(out, " ", 1) || fc_buf_append(out, p, len) ? -1 : 0;
    }
    case FC_STYLE_PLAIN:
        break;
    }
    return fc_buf_append(out, p, len);
}

static int push_offset(fc_buf *arena, int64_t *offs, int64_t i) {
    offs[i + 1] = (int64_t)arena->len;
    return 0;
}

fc_status fc_vocab_build_text(struct fc_vocab *v, fc_error *err) {
    v->dec_off = calloc((size_t)v->V + 1, sizeof(int64_t));
    v->can_off = calloc((size_t)v->V + 1, sizeof(int64_t));
    if (!v->dec_off || !v->can_off || fc_buf_append(&v->decoded, "", 0)
        || fc_buf_append(&v->canonical, "", 0))
        goto nomem;
    for (int64_t i = 0; i < v->V; i++) {
        const char *p = v->pieces.data + v->piece_off[i];
        size_t len = (size_t)(v->piece_off[i + 1] - v->piece_off[i]);
        uint8_t f = v->flags[i];
        if (f & FC_TOKEN_MISSING) {
            push_offset(&v->decoded, v->dec_off, i);
            push_offset(&v->canonical, v->can_off, i);
            continue;
        }
        /* decode([id]): added tokens bypass the decoder; transformers' clean-up is last */
        fc_buf s = {0};
        if (fc_buf_append(&s, p, len)) goto nomem;
        if (!(f & FC_TOKEN_ADDED))
            for (int k = 0; k < v->n_steps; k++)
                if (apply_step(&v->steps[k], &s)) { fc_buf_free(&s); goto nomem; }
        if (v->cleanup && cleanup(&s, 0)) { fc_buf_free(&s); goto nomem; }
        int rc = fc_buf_append(&v->decoded, s.data, s.len);
        fc_buf_free(&s);
        if (rc) goto nomem;
        push_offset(&v->decoded, v->dec_off, i);

        if (!(f & FC_TOKEN_SPECIAL)) {
            /* a non-special added token is literal text unless it is a model piece */
            rc = (f & FC_TOKEN_ADDED) && !(f & FC_TOKEN_BYTE) && v->style != FC_STYLE_BYTELEVEL
                     && v->style != FC_STYLE_METASPACE
                 ? fc_buf_append(&v->canonical, p, len)
                 : canonical_of_piece(v, &v->canonical, p, len);
            if (rc) goto nomem;
        }
        push_offset(&v->canonical, v->can_off, i);
    }
    return FC_OK;
nomem:
    return fc_error_set(err, FC_ERR_NOMEM, "out of memory building the token strings");
}
