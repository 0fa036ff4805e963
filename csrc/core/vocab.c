/* vocab.c - read a Hugging Face tokenizer (tokenizer.json + tokenizer_config.json +
 * special_tokens_map.json) into an fc_vocab_t: pieces by id, flags, roles, the decoder
 * chain and text style. model.vocab is walked once into our own hash map. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"
#include "vocab_internal.h"

#define MAX_JSON_DEPTH 64
#define MAX_VOCAB      (1 << 24) /* ids above this are refused (no real vocabulary is near) */

typedef struct parse_ctx {
    const char *file;
    fc_error   *err;
} parse_ctx;

static fc_status bad(parse_ctx *c, const char *rule, const char *fmt, const char *field) {
    char msg[512];
    snprintf(msg, sizeof msg, fmt, field);
    return fc_error_set_rule(c->err, FC_ERR_TOKENIZER, c->file, rule, "%s: %s (rule %s)",
                             c->file, msg, rule);
}

static fc_status nomem(fc_error *err) {
    return fc_error_set(err, FC_ERR_NOMEM, "out of memory reading a tokenizer");
}

/* ------------------------------------------------------------------------------------ */
/* pieces */

typedef struct piece_ref {
    const char *s;
    size_t      len;
} piece_ref;

static int id_of(const cJSON *item, int64_t *id) {
    uint64_t u;
    if (!fc_json_uint(item, &u) || u >= MAX_VOCAB) return 0;
    *id = (int64_t)u;
    return 1;
}

/* first pass: the largest id, so that arrays can be sized */
static fc_status scan_ids(parse_ctx *c, const cJSON *model, fc_vocab_model type,
                          const cJSON *added, int64_t *V) {
    const cJSON *vocab = fc_json_get(model, "vocab"), *it;
    int64_t max_id = -1, n = 0;
    if (type == FC_VOCAB_UNIGRAM) {
        if (!cJSON_IsArray(vocab))
            return bad(c, "vocab_not_array", "field %s must be an array of [piece, score]",
                       "model.vocab");
        n = cJSON_GetArraySize(vocab);
        max_id = n - 1;
        if (n > MAX_VOCAB) return bad(c, "vocab_too_large", "field %s has too many entries",
                                      "model.vocab");
    } else {
        if (!cJSON_IsObject(vocab))
            return bad(c, "vocab_not_object", "field %s must be an object {piece: id}",
                       "model.vocab");
        cJSON_ArrayForEach(it, vocab) {
            int64_t id = 0;
            if (!id_of(it, &id))
                return bad(c, "vocab_bad_id", "field %s: every id must be an integer in "
                           "[0, 2^24)", "model.vocab");
            if (id > max_id) max_id = id;
            n++;
        }
    }
    if (n == 0) return bad(c, "vocab_empty", "field %s is empty", "model.vocab");
    if (added && !cJSON_IsNull(added)) {
        if (!cJSON_IsArray(added))
            return bad(c, "added_tokens_not_array", "field %s must be an array", "added_tokens");
        cJSON_ArrayForEach(it, added) {
            int64_t id = 0;
            if (!cJSON_IsObject(it) || !id_of(fc_json_get(it, "id"), &id))
                return bad(c, "added_token_bad_id", "field %s: each entry needs an integer id "
                           "in [0, 2^24)", "added_tokens[].id");
            if (id > max_id) max_id = id;
        }
    }
    *V = max_id + 1;
    return FC_OK;
}

static fc_status collect_pieces(parse_ctx *c, const cJSON *model, fc_vocab_model type,
                                const cJSON *added, piece_ref *refs, uint8_t *flags) {
    const cJSON *vocab = fc_json_get(model, "vocab"), *it;
    int64_t idx = 0;
    cJSON_ArrayForEach(it, vocab) {
        int64_t id = 0;
        const char *s;
        if (type == FC_VOCAB_UNIGRAM) {
            const cJSON *p = cJSON_GetArrayItem(it, 0), *score = cJSON_GetArrayItem(it, 1);
            if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 2 || !cJSON_IsString(p)
                || !cJSON_IsNumber(score))
                return bad(c, "unigram_bad_entry", "field %s: each entry must be [piece, score]",
                           "model.vocab");
            s = p->valuestring;
            id = idx++;
        } else {
            id_of(it, &id);
            s = it->string;
            if (!s) return bad(c, "vocab_bad_key", "field %s has an entry without a key",
                               "model.vocab");
            if (!(flags[id] & FC_TOKEN_MISSING))
                return bad(c, "vocab_duplicate_id", "field %s gives one id to two pieces",
                           "model.vocab");
        }
        refs[id].s = s;
        refs[id].len = strlen(s);
        flags[id] = 0;
    }
    if (added && cJSON_IsArray(added)) {
        cJSON_ArrayForEach(it, added) {
            int64_t id = 0;
            id_of(fc_json_get(it, "id"), &id);
            const cJSON *content = fc_json_get(it, "content");
            const cJSON *special = fc_json_get(it, "special");
            if (!cJSON_IsString(content))
                return bad(c, "added_token_bad_content", "field %s must be a string",
                           "added_tokens[].content");
            if (special && !cJSON_IsBool(special))
                return bad(c, "added_token_bad_special", "field %s must be true or false",
                           "added_tokens[].special");
            refs[id].s = content->valuestring;
            refs[id].len = strlen(content->valuestring);
            flags[id] = FC_TOKEN_ADDED | (cJSON_IsTrue(special) ? FC_TOKEN_SPECIAL : 0);
        }
    }
    return FC_OK;
}

static fc_status build_arena(parse_ctx *c, fc_vocab_t *v, const piece_ref *refs) {
    v->piece_off = calloc((size_t)v->V + 1, sizeof(int64_t));
    if (!v->piece_off || fc_strmap_init(&v->piece_map, (size_t)v->V)
        || fc_buf_append(&v->pieces, "", 0))
        return nomem(c->err);
    for (int64_t i = 0; i < v->V; i++) {
        if (refs[i].s && fc_buf_append(&v->pieces, refs[i].s, refs[i].len)) return nomem(c->err);
        v->piece_off[i + 1] = (int64_t)v->pieces.len;
    }
    /* model pieces first (a repeated model piece is an error), then added tokens win */
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = 0; i < v->V; i++) {
            uint8_t f = v->flags[i];
            if ((f & FC_TOKEN_MISSING) || (pass == 0) != !(f & FC_TOKEN_ADDED)) continue;
            int64_t old;
            int rc = fc_strmap_put(&v->piece_map, v->pieces.data, v->piece_off[i],
                                   v->piece_off[i + 1] - v->piece_off[i], i, pass == 1, &old);
            if (rc < 0) return nomem(c->err);
            if (rc == 1 && pass == 0)
                return bad(c, "vocab_duplicate_piece", "field %s lists one piece twice",
                           "model.vocab");
        }
    }
    return FC_OK;
}

/* ------------------------------------------------------------------------------------ */
/* merges (BPE): both spellings, each part and the merged piece must be in the vocab */

static fc_status check_merges(parse_ctx *c, const cJSON *model, fc_vocab_t *v) {
    const cJSON *merges = fc_json_get(model, "merges"), *it;
    if (!cJSON_IsArray(merges))
        return bad(c, "bpe_merges_missing", "field %s must be an array", "model.merges");
    if (cJSON_GetArraySize(merges) == 0)
        return bad(c, "bpe_no_merges", "field %s is empty: a BPE model needs merges",
                   "model.merges");
    const cJSON *pfx = fc_json_get(model, "continuing_subword_prefix");
    size_t pl = cJSON_IsString(pfx) ? strlen(pfx->valuestring) : 0;
    fc_buf joined = {0};
    long idx = 0;
    fc_status st = FC_OK;
    cJSON_ArrayForEach(it, merges) {
        const char *a, *b;
        size_t al, bl;
        if (cJSON_IsString(it)) {
            const char *sp = strchr(it->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                st = bad(c, "bpe_bad_merge", "field %s: a merge string must be \"a b\" "
                         "(exactly one space)", "model.merges");
                break;
            }
            a = it->valuestring, al = (size_t)(sp - a), b = sp + 1, bl = strlen(b);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2
                   && cJSON_IsString(it->child) && cJSON_IsString(it->child->next)) {
            a = it->child->valuestring, al = strlen(a);
            b = it->child->next->valuestring, bl = strlen(b);
        } else {
            st = bad(c, "bpe_bad_merge", "field %s: a merge must be \"a b\" or [\"a\", \"b\"]",
                     "model.merges");
            break;
        }
        size_t skip = (pl && bl >= pl && strncmp(b, pfx->valuestring, pl) == 0) ? pl : 0;
        joined.len = 0;
        if (fc_buf_append(&joined, a, al) || fc_buf_append(&joined, b + skip, bl - skip)) {
            st = nomem(c->err);
            break;
        }
        if (fc_strmap_get(&v->piece_map, v->pieces.data, a, al) < 0
            || fc_strmap_get(&v->piece_map, v->pieces.data, b, bl) < 0
            || fc_strmap_get(&v->piece_map, v->pieces.data, joined.data, joined.len) < 0) {
            char field[64];
            snprintf(field, sizeof field, "model.merges[%ld]", idx);
            st = bad(c, "bpe_merge_unknown_piece", "field %s merges pieces that are not all in "
                     "model.vocab", field);
            break;
        }
        idx++;
    }
    fc_buf_free(&joined);
    return st;
}

/* ------------------------------------------------------------------------------------ */
/* normalizer / pre_tokenizer / decoder: the text style and the decoder chain */

static int type_is(const cJSON *o, const char *t) {
    const cJSON *ty = fc_json_get(o, "type");
    return cJSON_IsString(ty) && strcmp(ty->valuestring, t) == 0;
}

static const cJSON *seq_items(const cJSON *o) {
    const cJSON *s = fc_json_get(o, "pretokenizers");
    if (!s) s = fc_json_get(o, "decoders");
    if (!s) s = fc_json_get(o, "normalizers");
    return cJSON_IsArray(s) ? s : NULL;
}

/* depth-first search of a component (and its Sequence members) for type t */
static const cJSON *find_type(const cJSON *o, const char *t) {
    if (!cJSON_IsObject(o)) return NULL;
    if (type_is(o, t)) return o;
    const cJSON *items = type_is(o, "Sequence") ? seq_items(o) : NULL, *it;
    cJSON_ArrayForEach(it, items) {
        const cJSON *f = find_type(it, t);
        if (f) return f;
    }
    return NULL;
}

static const char *str_field(const cJSON *o, const char *key) {
    const cJSON *s = fc_json_get(o, key);
    return cJSON_IsString(s) ? s->valuestring : NULL;
}

/* Metaspace: prepend_scheme "always"/"first" (or legacy add_prefix_space true) */
static int metaspace_prepends(const cJSON *m) {
    const char *scheme = str_field(m, "prepend_scheme");
    if (scheme) return strcmp(scheme, "never") != 0;
    return !cJSON_IsFalse(fc_json_get(m, "add_prefix_space"));
}

static fc_status copy_field(parse_ctx *c, char *dst, size_t cap, const char *src,
                            const char *field) {
    if (!src) return bad(c, "decoder_bad_field", "field %s must be a string", field);
    if (strlen(src) >= cap) return bad(c, "decoder_field_too_long", "field %s is too long", field);
    strcpy(dst, src);
    return FC_OK;
}

static fc_status parse_decoder(parse_ctx *c, const cJSON *d, fc_vocab_t *v, int depth) {
    if (!d || cJSON_IsNull(d)) return FC_OK;
    const char *t = str_field(d, "type");
    if (!cJSON_IsObject(d) || !t || depth > 4)
        return bad(c, "decoder_bad", "field %s must be an object with a type", "decoder");
    if (strcmp(t, "Sequence") == 0) {
        const cJSON *items = fc_json_get(d, "decoders"), *it;
        if (!cJSON_IsArray(items))
            return bad(c, "decoder_bad", "field %s must be an array", "decoder.decoders");
        cJSON_ArrayForEach(it, items) {
            fc_status st = parse_decoder(c, it, v, depth + 1);
            if (st) return st;
        }
        return FC_OK;
    }
    if (v->n_steps == FC_MAX_DEC_STEPS)
        return bad(c, "decoder_too_long", "field %s has too many steps", "decoder");
    dec_step *s = &v->steps[v->n_steps];
    memset(s, 0, sizeof *s);
    fc_status st = FC_OK;
    if (strcmp(t, "ByteLevel") == 0) s->kind = DEC_BYTELEVEL;
    else if (strcmp(t, "ByteFallback") == 0) s->kind = DEC_BYTEFALLBACK;
    else if (strcmp(t, "Fuse") == 0) s->kind = DEC_FUSE;
    else if (strcmp(t, "Metaspace") == 0) {
        s->kind = DEC_METASPACE;
        const char *r = str_field(d, "replacement");
        st = copy_field(c, s->a, sizeof s->a, r ? r : "\xe2\x96\x81", "decoder.replacement");
        s->n1 = metaspace_prepends(d);
    } else if (strcmp(t, "Replace") == 0) {
        s->kind = DEC_REPLACE;
        const cJSON *pat = fc_json_get(d, "pattern");
        if (!str_field(pat, "String"))
            return bad(c, "decoder_unsupported", "field %s: only String patterns are supported "
                       "(not Regex)", "decoder.pattern");
        st = copy_field(c, s->a, sizeof s->a, str_field(pat, "String"), "decoder.pattern.String");
        if (!st) st = copy_field(c, s->b, sizeof s->b, str_field(d, "content"), "decoder.content");
    } else if (strcmp(t, "Strip") == 0) {
        s->kind = DEC_STRIP;
        uint64_t a = 0, b = 0;
        const cJSON *start = fc_json_get(d, "start"), *stop = fc_json_get(d, "stop");
        if ((start && !fc_json_uint(start, &a)) || (stop && !fc_json_uint(stop, &b)) || a > 1000
            || b > 1000)
            return bad(c, "decoder_bad_field", "field %s must be small non-negative integers",
                       "decoder.start/stop");
        s->n1 = (int)a, s->n2 = (int)b;
        st = copy_field(c, s->a, sizeof s->a, str_field(d, "content"), "decoder.content");
    } else if (strcmp(t, "WordPiece") == 0) {
        s->kind = DEC_WORDPIECE;
        const char *p = str_field(d, "prefix");
        st = copy_field(c, s->a, sizeof s->a, p ? p : "##", "decoder.prefix");
        s->n2 = !cJSON_IsFalse(fc_json_get(d, "cleanup"));
    } else if (strcmp(t, "BPEDecoder") == 0) {
        s->kind = DEC_BPE_SUFFIX;
        const char *p = str_field(d, "suffix");
        st = copy_field(c, s->a, sizeof s->a, p ? p : "</w>", "decoder.suffix");
    } else {
        char field[96];
        snprintf(field, sizeof field, "decoder (type %.40s)", t);
        return bad(c, "decoder_unsupported", "%s is not supported", field);
    }
    if (st == FC_OK) v->n_steps++;
    return st;
}

static fc_status detect_style(parse_ctx *c, const cJSON *root, const cJSON *model,
                              fc_vocab_t *v) {
    const cJSON *norm = fc_json_get(root, "normalizer"), *pre = fc_json_get(root, "pre_tokenizer");
    const cJSON *dec = fc_json_get(root, "decoder"), *m;
    strcpy(v->space_char, "\xe2\x96\x81");
    if (v->model == FC_VOCAB_WORDPIECE) {
        const char *p = str_field(model, "continuing_subword_prefix");
        if (copy_field(c, v->wp_prefix, sizeof v->wp_prefix, p ? p : "##",
                       "model.continuing_subword_prefix"))
            return c->err->code;
        v->style = FC_STYLE_WORDPIECE;
        v->prefix_space = 1;
        strcpy(v->marker, "##");
        return FC_OK;
    }
    if ((m = find_type(pre, "ByteLevel")) || find_type(dec, "ByteLevel")) {
        v->style = FC_STYLE_BYTELEVEL;
        v->prefix_space = m && cJSON_IsTrue(fc_json_get(m, "add_prefix_space"));
        strcpy(v->marker, "\xc4\xa0");
        return FC_OK;
    }
    const char *repl = NULL;
    if ((m = find_type(pre, "Metaspace"))) {
        repl = str_field(m, "replacement");
        v->prefix_space = metaspace_prepends(m);
    } else if ((m = find_type(norm, "Replace")) && str_field(fc_json_get(m, "pattern"), "String")
               && strcmp(str_field(fc_json_get(m, "pattern"), "String"), " ") == 0) {
        repl = str_field(m, "content"); /* Llama-2 legacy: normalizer Prepend + Replace */
        const cJSON *pp = find_type(norm, "Prepend");
        v->prefix_space = pp != NULL;
    } else if ((m = find_type(dec, "Metaspace"))) {
        repl = str_field(m, "replacement");
        v->prefix_space = metaspace_prepends(m);
    } else if (v->model == FC_VOCAB_UNIGRAM || v->byte_fallback) {
        repl = "\xe2\x96\x81";
    }
    if (repl) {
        if (copy_field(c, v->space_char, sizeof v->space_char, repl, "pre_tokenizer.replacement"))
            return c->err->code;
        if (!*v->space_char)
            return bad(c, "metaspace_empty", "field %s is empty", "pre_tokenizer.replacement");
        v->style = FC_STYLE_METASPACE;
        strcpy(v->marker, v->space_char);
    } else {
        v->style = FC_STYLE_PLAIN;
        strcpy(v->marker, "\xe2\x96\x81");
    }
    return FC_OK;
}

/* ------------------------------------------------------------------------------------ */
/* roles from tokenizer_config.json / special_tokens_map.json */

static const char *token_text(const cJSON *o) {
    if (cJSON_IsString(o)) return o->valuestring;
    if (cJSON_IsObject(o)) return str_field(o, "content"); /* an AddedToken dict */
    return NULL;
}

static void role_from(fc_vocab_t *v, fc_role r, const cJSON *conf, const char *key) {
    if (v->roles[r] >= 0 || !conf) return;
    const char *s = token_text(fc_json_get(conf, key));
    if (s) v->roles[r] = fc_strmap_get(&v->piece_map, v->pieces.data, s, strlen(s));
}

static void find_roles(fc_vocab_t *v, const cJSON *model, const cJSON *conf,
                       const cJSON *special) {
    static const char *keys[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (int r = 0; r < 4; r++) {
        role_from(v, (fc_role)r, conf, keys[r]);
        role_from(v, (fc_role)r, special, keys[r]);
    }
    if (v->roles[FC_ROLE_UNK] < 0) {
        const char *u = str_field(model, "unk_token");
        uint64_t uid;
        if (u) v->roles[FC_ROLE_UNK] = fc_strmap_get(&v->piece_map, v->pieces.data, u, strlen(u));
        else if (fc_json_uint(fc_json_get(model, "unk_id"), &uid) && (int64_t)uid < v->V)
            v->roles[FC_ROLE_UNK] = (int64_t)uid;
    }
    /* end of turn: the chat templates' separators (method.md 2.2), else eos */
    static const char *eot[] = {"<|eot_id|>", "<|im_end|>", "<|end_of_turn|>", "<end_of_turn>",
                                "<|end|>", "<|eot|>", "<|endofturn|>"};
    for (size_t k = 0; k < sizeof eot / sizeof eot[0] && v->roles[FC_ROLE_EOT] < 0; k++) {
        int64_t id = fc_strmap_get(&v->piece_map, v->pieces.data, eot[k], strlen(eot[k]));
        if (id >= 0 && (v->flags[id] & FC_TOKEN_ADDED)) v->roles[FC_ROLE_EOT] = id;
    }
    if (v->roles[FC_ROLE_EOT] < 0) v->roles[FC_ROLE_EOT] = v->roles[FC_ROLE_EOS];
}

/* ------------------------------------------------------------------------------------ */

static fc_status parse_optional(const char *buf, size_t len, const char *name, cJSON **out,
                                fc_error *err) {
    *out = NULL;
    if (!buf) return FC_OK;
    fc_status st = fc_json_parse(buf, len, MAX_JSON_DEPTH, name, FC_ERR_TOKENIZER, "tokenizer",
                                 out, err);
    if (st == FC_OK && !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return fc_error_set_rule(err, FC_ERR_TOKENIZER, name, "config_not_object",
                                 "%s: must hold a JSON object (rule config_not_object)", name);
    }
    return st;
}

fc_status fc_vocab_parse(const char *tokenizer_json, size_t tokenizer_len,
                         const char *tokenizer_name, const char *config_json, size_t config_len,
                         const char *config_name, const char *special_json, size_t special_len,
                         const char *special_name, fc_vocab_t **out, fc_error *err) {
    *out = NULL;
    if (!tokenizer_name) tokenizer_name = "tokenizer.json";
    if (!config_name) config_name = "tokenizer_config.json";
    if (!special_name) special_name = "special_tokens_map.json";
    parse_ctx c = {tokenizer_name, err};
    cJSON *root = NULL, *conf = NULL, *special = NULL;
    piece_ref *refs = NULL;
    fc_vocab_t *v = calloc(1, sizeof *v);
    if (!v) return nomem(err);
    for (int r = 0; r < FC_ROLE_COUNT; r++) v->roles[r] = -1;

    fc_status st = fc_json_parse(tokenizer_json, tokenizer_len, MAX_JSON_DEPTH, tokenizer_name,
                                 FC_ERR_TOKENIZER, "tokenizer", &root, err);
    if (st) goto done;
    if ((st = parse_optional(config_json, config_len, config_name, &conf, err))) goto done;
    if ((st = parse_optional(special_json, special_len, special_name, &special, err))) goto done;

    const cJSON *model = fc_json_get(root, "model");
    const char *mtype = str_field(model, "type");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(model) || !mtype) {
        st = bad(&c, "model_missing", "field %s must be an object with a type", "model");
        goto done;
    }
    if (strcmp(mtype, "BPE") == 0) v->model = FC_VOCAB_BPE;
    else if (strcmp(mtype, "Unigram") == 0) v->model = FC_VOCAB_UNIGRAM;
    else if (strcmp(mtype, "WordPiece") == 0) v->model = FC_VOCAB_WORDPIECE;
    else {
        st = bad(&c, "model_unsupported", "field %s: only BPE, Unigram and WordPiece are "
                 "supported", "model.type");
        goto done;
    }
    v->byte_fallback = cJSON_IsTrue(fc_json_get(model, "byte_fallback"));
    const cJSON *added = fc_json_get(root, "added_tokens");
    if ((st = scan_ids(&c, model, v->model, added, &v->V))) goto done;
    refs = calloc((size_t)v->V, sizeof *refs);
    v->flags = malloc((size_t)v->V);
    if (!refs || !v->flags) { st = nomem(err); goto done; }
    memset(v->flags, FC_TOKEN_MISSING, (size_t)v->V);
    if ((st = collect_pieces(&c, model, v->model, added, refs, v->flags))) goto done;
    if ((st = build_arena(&c, v, refs))) goto done;
    if (v->model == FC_VOCAB_BPE && (st = check_merges(&c, model, v))) goto done;
    if ((st = detect_style(&c, root, model, v))) goto done;
    if ((st = parse_decoder(&c, fc_json_get(root, "decoder"), v, 0))) goto done;
    for (int64_t i = 0; i < v->V; i++) {
        const char *p = v->pieces.data + v->piece_off[i];
        if (v->byte_fallback && !(v->flags[i] & (FC_TOKEN_MISSING | FC_TOKEN_ADDED))
            && v->piece_off[i + 1] - v->piece_off[i] == 6 && memcmp(p, "<0x", 3) == 0)
            v->flags[i] |= FC_TOKEN_BYTE;
    }
    const cJSON *cu = conf ? fc_json_get(conf, "clean_up_tokenization_spaces") : NULL;
    v->cleanup = cJSON_IsTrue(cu);
    find_roles(v, model, conf, special);
    st = fc_vocab_build_text(v, err);
done:
    cJSON_Delete(root);
    cJSON_Delete(conf);
    cJSON_Delete(special);
    free(refs);
    if (st) fc_vocab_free(v);
    else *out = v;
    return st;
}

/* the whole file, or *buf = NULL if it does not exist and !required */
static fc_status read_file(const char *path, int required, char **buf, size_t *len,
                           fc_error *err) {
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT && !required) return FC_OK;
        return fc_error_set_io(err, errno, path, "cannot open %s", path);
    }
    fc_buf b = {0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (fc_buf_append(&b, chunk, got)) { fclose(f); fc_buf_free(&b); return nomem(err); }
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) { fc_buf_free(&b); return fc_error_set_io(err, EIO, path, "cannot read %s", path); }
    if (!b.data && fc_buf_append(&b, "", 0)) return nomem(err);
    *buf = b.data;
    *len = b.len;
    return FC_OK;
}

fc_status fc_vocab_load(const char *dir, fc_vocab_t **out, fc_error *err) {
    char p1[4096], p2[4096], p3[4096];
    snprintf(p1, sizeof p1, "%s/tokenizer.json", dir);
    snprintf(p2, sizeof p2, "%s/tokenizer_config.json", dir);
    snprintf(p3, sizeof p3, "%s/special_tokens_map.json", dir);
    char *b1 = NULL, *b2 = NULL, *b3 = NULL;
    size_t l1, l2, l3;
    fc_status st = read_file(p1, 1, &b1, &l1, err);
    if (!st) st = read_file(p2, 0, &b2, &l2, err);
    if (!st) st = read_file(p3, 0, &b3, &l3, err);
    if (!st) st = fc_vocab_parse(b1, l1, p1, b2, l2, p2, b3, l3, p3, out, err);
    free(b1); free(b2); free(b3);
    return st;
}

void fc_vocab_free(fc_vocab_t *v) {
    if (!v) return;
    free(v->flags);
    fc_buf_free(&v->pieces);
    fc_buf_free(&v->decoded);
    fc_buf_free(&v->canonical);
    free(v->piece_off); free(v->dec_off); free(v->can_off);
    fc_strmap_free(&v->piece_map);
    free(v);
}

int64_t fc_vocab_size(const fc_vocab_t *v) { return v->V; }
fc_vocab_model fc_vocab_model_type(const fc_vocab_t *v) { return v->model; }
fc_vocab_style fc_vocab_text_style(const fc_vocab_t *v) { return v->style; }
const char *fc_vocab_marker(const fc_vocab_t *v) { return v->marker; }
int fc_vocab_adds_prefix_space(const fc_vocab_t *v) { return v->prefix_space; }
const uint8_t *fc_vocab_flags(const fc_vocab_t *v) { return v->flags; }
int64_t fc_vocab_role(const fc_vocab_t *v, fc_role r) {
    return (unsigned)r < FC_ROLE_COUNT ? v->roles[r] : -1;
}
fc_strings fc_vocab_pieces(const fc_vocab_t *v) {
    return (fc_strings){v->pieces.data, v->piece_off};
}
fc_strings fc_vocab_decoded(const fc_vocab_t *v) {
    return (fc_strings){v->decoded.data, v->dec_off};
}
fc_strings fc_vocab_canonical(const fc_vocab_t *v) {
    return (fc_strings){v->canonical.data, v->can_off};
}

int64_t fc_vocab_find(const fc_vocab_t *v, const char *s, size_t len) {
    return fc_strmap_get(&v->piece_map, v->pieces.data, s, len);
}

fc_status fc_vocab_set_marker(fc_vocab_t *v, const char *marker, fc_error *err) {
    size_t n = marker ? strlen(marker) : 0;
    if (n == 0 || n >= sizeof v->marker || !fc_utf8_valid(marker, n, NULL))
        return fc_error_set(err, FC_ERR_VALUE, "marker must be non-empty UTF-8 of at most %zu "
                            "bytes", sizeof v->marker - 1);
    memcpy(v->marker, marker, n + 1);
    return FC_OK;
}
