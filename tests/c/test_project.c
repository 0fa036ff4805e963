/* test_project.c - the byte projection of the C core (fc_align_project) on small hand-made
 * tokenizers: the worked chain-rule case of docs/alignment.md, bad input, and random input
 * that must never crash (run under ASan + UBSan); its pivot lookup (the double-array trie)
 * against a search over every piece. */
#include <math.h>
#include <stdint.h>

#include "ctest.h"
#include "fusechat.h"
#include "align_fixture.h"
#include "../../csrc/core/align_internal.h"

/* byte-level BPE source: "Ġ" is a space; <|im_end|> is special and the eos */
static const char *SOURCE =
    "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"\xc4\xa0\": 3,"
    " \"\xc4\xa0" "a\": 4, \"\xc3\xa9\": 5},"
    " \"merges\": [\"a b\", [\"\xc4\xa0\", \"a\"]]},"
    " \"added_tokens\": [{\"id\": 6, \"content\": \"<|im_end|>\", \"special\": true}],"
    " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
    " \"decoder\": {\"type\": \"ByteLevel\"}}";
static const char *SOURCE_CONFIG = "{\"eos_token\": \"<|im_end|>\"}";

/* SentencePiece-style pivot with byte fallback and a dummy prefix (align_fixture.h) */
static const char *PIVOT = METASPACE_BPE("<0x61>");

typedef struct out {
    int64_t offsets[64];
    int32_t ids[64 * 8];
    float   lps[64 * 8], gold[64];
    uint8_t res[64];
} out;

/* "ab ab": pivot ▁ab ▁ab (bytes " ab ab"), source ab Ġa b (bytes "ab ab"). Pivot position 0
 * predicts ▁ab, covered exactly by the source's Ġa, b: log P = the sum of their log-probs. */
static void test_chain_rule(const fc_project_ctx_t *c) {
    int64_t src[] = {2, 4, 1}, piv[] = {10, 10};
    int64_t tk[] = {4, 0, 6, 1, 2, 0, 1, -1, -1};
    float lp[] = {-0.1f, -3.0f, -4.0f, -0.2f, -2.0f, -5.0f, -1.0f, 0, 0};
    out o;
    fc_error err;
    fc_error_clear(&err);
    fc_status st = fc_align_project(c, src, 3, piv, 2, tk, lp, 3, NULL, 8, o.offsets, o.ids,
                                    o.lps, o.gold, o.res, &err);
    CHECK_MSG(st == FC_OK, "%s", err.msg);
    CHECK(o.res[0] == FC_PROJ_EXACT && o.res[1] == FC_PROJ_LAST);
    CHECK(fabsf(o.gold[0] - (-0.3f)) < 1e-6f && isnan(o.gold[1]));
    /* the gold, then "a" (the source's "a" leaves the text at once), then </s> (the source's
     * eos by role); " aab" and " aa" spell pivot tokens inside the text: left out */
    CHECK(o.offsets[1] == 3 && o.offsets[2] == 3);
    CHECK(o.ids[0] == 10 && o.ids[1] == 6 && o.ids[2] == 2);
    CHECK(fabsf(o.lps[1] + 3.0f) < 1e-6f && fabsf(o.lps[2] + 4.0f) < 1e-6f);
    /* out_k = 1 keeps the largest only */
    st = fc_align_project(c, src, 3, piv, 2, tk, lp, 3, NULL, 1, o.offsets, o.ids, o.lps,
                          o.gold, o.res, &err);
    CHECK(st == FC_OK && o.offsets[1] == 1 && o.ids[0] == 10);
}

static void test_bad_input(const fc_project_ctx_t *c) {
    int64_t src[] = {2, 4, 1}, piv[] = {10, 10};
    int64_t tk[] = {4, 1, 7};
    float lp[] = {-0.1f, -0.2f, -1.0f};
    out o;
    fc_error err;
    fc_error_clear(&err);
    fc_status st = fc_align_project(c, src, 3, piv, 2, tk, lp, 1, NULL, 4, o.offsets, o.ids,
                                    o.lps, o.gold, o.res, &err);
    CHECK(st == FC_ERR_VALUE && strstr(err.msg, "topk_ids[2][0] = 7") != NULL);
    tk[2] = 1;
    lp[1] = NAN;
    st = fc_align_project(c, src, 3, piv, 2, tk, lp, 1, NULL, 4, o.offsets, o.ids, o.lps,
                          o.gold, o.res, &err);
    CHECK(st == FC_ERR_VALUE && strcmp(err.rule, "not_log_probability") == 0);
    lp[1] = -0.2f;
    float tru[] = {-1.0f, INFINITY, NAN};
    st = fc_align_project(c, src, 3, piv, 2, tk, lp, 1, tru, 4, o.offsets, o.ids, o.lps,
                          o.gold, o.res, &err);
    CHECK(st == FC_ERR_VALUE && strstr(err.msg, "src_true_logprobs[1]") != NULL);
    piv[1] = 11;
    st = fc_align_project(c, src, 3, piv, 2, tk, lp, 1, NULL, 4, o.offsets, o.ids, o.lps,
                          o.gold, o.res, &err);
    CHECK(st == FC_ERR_VALUE && strstr(err.msg, "pivot_ids[1] = 11") != NULL);
    /* empty sequences are fine */
    st = fc_align_project(c, src, 0, piv, 0, tk, lp, 1, NULL, 4, o.offsets, o.ids, o.lps,
                          o.gold, o.res, &err);
    CHECK(st == FC_OK && o.offsets[0] == 0);
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t next_rand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* random (valid) sequences, top-K rows and log-probs: never a crash, sane output */
static void test_random(const fc_project_ctx_t *c) {
    out o;
    int bad = 0;
    for (int round = 0; round < 3000; round++) {
        int64_t n = (int64_t)(next_rand() % 20), m = (int64_t)(next_rand() % 20), k = 3;
        int64_t src[20], piv[20], tk[60];
        float lp[60], tru[20];
        for (int64_t i = 0; i < n; i++) {
            src[i] = (int64_t)(next_rand() % 7);
            tru[i] = next_rand() % 3 ? -(float)(next_rand() % 1000) / 100.0f : NAN;
            for (int64_t t = 0; t < k; t++) {
                tk[i * k + t] = (int64_t)(next_rand() % 8) - 1;
                lp[i * k + t] = next_rand() % 10 ? -(float)(next_rand() % 1000) / 100.0f
                                                 : -INFINITY;
            }
        }
        for (int64_t j = 0; j < m; j++) piv[j] = (int64_t)(next_rand() % 11);
        fc_error err;
        fc_error_clear(&err);
        fc_status st = fc_align_project(c, src, n, piv, m, tk, lp, k, round % 2 ? tru : NULL, 4,
                                        o.offsets, o.ids, o.lps, o.gold, o.res, &err);
        if (st != FC_OK) { bad++; continue; }
        for (int64_t j = 0; j < m; j++) {
            int64_t len = o.offsets[j + 1] - o.offsets[j];
            if (len < 0 || len > 4 || o.res[j] > FC_PROJ_LAST) bad++;
            for (int64_t e = o.offsets[j]; e < o.offsets[j + 1]; e++)
                if (o.ids[e] < 0 || o.ids[e] > 10 || isnan(o.lps[e])) bad++;
        }
    }
    CHECK(bad == 0);
}

/* A pivot of 256 byte pieces (ids 3-258: before the real pieces, so that the tie rule is
 * what makes a real piece win) and a random half of the strings of 2-5 symbols over a, b, ▁,
 * é (multi-byte symbols: branching inside them), with every symbol and "ab" (the merge). */
static fc_vocab_t *lookup_pivot(void) {
    static const char *sym[] = {"a", "b", "\xe2\x96\x81", "\xc3\xa9"};
    size_t cap = 1 << 16, at = 0;
    char *js = malloc(cap);
    if (!js) return NULL;
    at += (size_t)snprintf(js + at, cap - at, "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": "
                           "true, \"merges\": [\"a b\"], \"vocab\": {\"<unk>\": 0, \"<s>\": 1, "
                           "\"</s>\": 2");
    int id = 3;
    for (int b = 0; b < 256; b++)
        at += (size_t)snprintf(js + at, cap - at, ", \"<0x%02X>\": %d", b, id++);
    for (int len = 1; len <= 5; len++) {
        int count = 1 << (2 * len);
        for (int code = 0; code < count; code++) {
            int kept = len == 1 || (len == 2 && code == 4); /* a, b, ▁, é and "ab" */
            if (!kept && next_rand() % 2) continue;
            at += (size_t)snprintf(js + at, cap - at, ", \"");
            for (int k = 0, x = code; k < len; k++, x >>= 2)
                at += (size_t)snprintf(js + at, cap - at, "%s", sym[x & 3]);
            at += (size_t)snprintf(js + at, cap - at, "\": %d", id++);
        }
    }
    at += (size_t)snprintf(js + at, cap - at, "}}, \"added_tokens\": [{\"id\": 0, \"content\": "
                           "\"<unk>\", \"special\": true}, {\"id\": 1, \"content\": \"<s>\", "
                           "\"special\": true}, {\"id\": 2, \"content\": \"</s>\", \"special\": "
                           "true}], \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\":"
                           " \"\xe2\x96\x81\", \"prepend_scheme\": \"first\", \"split\": false}}");
    CHECK(at < cap);
    fc_vocab_t *v = parse(js, METASPACE_CONFIG);
    free(js);
    return v;
}

/* The longest piece that is a prefix of s (ties: a real piece before a byte piece, then the
 * lowest id) and whether s is a prefix of some piece, by a search over every piece. */
static void lookup_by_search(const fc_vocab_t *v, const unsigned char *s, int64_t n,
                             int64_t *best, int64_t *best_len, int *continues) {
    *best = -1, *best_len = 0, *continues = n == 0;
    for (int64_t id = 0; id < v->V; id++) {
        int64_t len = v->can_off[id + 1] - v->can_off[id];
        const unsigned char *b = (const unsigned char *)v->canonical.data + v->can_off[id];
        if (!len || (v->flags[id] & (FC_TOKEN_SPECIAL | FC_TOKEN_MISSING))) continue;
        if (len >= n && memcmp(b, s, (size_t)n) == 0) *continues = 1;
        if (len > n || memcmp(b, s, (size_t)len) != 0 || len < *best_len) continue;
        int better = len > *best_len || *best < 0
                  || ((v->flags[*best] & FC_TOKEN_BYTE) && !(v->flags[id] & FC_TOKEN_BYTE));
        if (better) *best = id, *best_len = len; /* ids ascending: the lowest id stays */
    }
}

/* every piece with a random tail, and random strings, fed in random pieces */
static void test_lookup(void) {
    fc_vocab_t *src = parse(SOURCE, SOURCE_CONFIG), *piv = lookup_pivot();
    fc_project_ctx_t *c = NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st = src && piv ? fc_project_ctx_new(src, piv, &c, &err) : FC_ERR_VALUE;
    CHECK_MSG(st == FC_OK, "%s", err.msg);
    static const unsigned char alphabet[] = {'a', 'b', 'z', ' ', 0xe2, 0x96, 0x81, 0xc3, 0xa9};
    int bad = 0, real_over_byte = 0;
    for (int64_t probe = 0; c && probe < piv->V + 2000; probe++) {
        unsigned char s[24];
        int64_t n = 0;
        if (probe < piv->V) {
            int64_t len = piv->can_off[probe + 1] - piv->can_off[probe];
            memcpy(s, piv->canonical.data + piv->can_off[probe], (size_t)len);
            n = len;
        }
        for (int64_t tail = (int64_t)(next_rand() % (probe < piv->V ? 4 : 13)); tail > 0; tail--)
            s[n++] = alphabet[next_rand() % sizeof alphabet];
        fc_trie_walk w;
        fc_trie_walk_start(&w);
        for (int64_t fed = 0; fed < n;) {
            int64_t part = 1 + (int64_t)(next_rand() % (uint64_t)(n - fed));
            int on = fc_trie_walk_feed(c, &w, s + fed, part);
            fed += part;
            int64_t best, best_len;
            int continues;
            lookup_by_search(piv, s, fed, &best, &best_len, &continues);
            bad += on != continues || w.best != best || w.best_len != best_len;
            real_over_byte += best_len == 1 && best > 258;
        }
    }
    CHECK(bad == 0);
    CHECK(real_over_byte > 0); /* the tie rule was met: a one-byte real piece beat <0xNN> */
    CHECK(c && c->trie_size >= 256 && c->trie_size < 2 * (piv->can_off[piv->V] + 256));
    fc_project_ctx_free(c);
    fc_vocab_free(src);
    fc_vocab_free(piv);
}

int main(void) {
    fc_vocab_t *src = parse(SOURCE, SOURCE_CONFIG), *piv = parse(PIVOT, METASPACE_CONFIG);
    fc_project_ctx_t *c = NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st = fc_project_ctx_new(src, piv, &c, &err);
    CHECK_MSG(st == FC_OK, "%s", err.msg);
    if (c) {
        test_chain_rule(c);
        test_bad_input(c);
        test_random(c);
    }
    test_lookup();
    fc_project_ctx_free(c);
    fc_vocab_free(src);
    fc_vocab_free(piv);
    return ctest_report("test_project");
}
