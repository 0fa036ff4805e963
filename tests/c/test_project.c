/* test_project.c - the byte projection of the C core (fc_align_project) on small hand-made
 * tokenizers: the worked chain-rule case of docs/alignment.md, bad input, and random input
 * that must never crash (run under ASan + UBSan). */
#include <math.h>
#include <stdint.h>

#include "ctest.h"
#include "fusechat.h"
#include "align_fixture.h"

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
    fc_project_ctx_free(c);
    fc_vocab_free(src);
    fc_vocab_free(piv);
    return ctest_report("test_project");
}
