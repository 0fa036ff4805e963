/* test_align.c - vocabularies, Levenshtein, DTW, offsets, counts, maps and distribution
 * alignment of the C core on small hand-made tokenizers (run under ASan + UBSan). */
#include <stdint.h>

#include "ctest.h"
#include "fusechat.h"
#include "align_fixture.h"
#include "../../csrc/core/align_internal.h"
#include "../../csrc/core/levenshtein.h"

/* byte-level BPE: "Ġ" is a space, "Ċ" a newline; <|im_end|> is special */
static const char *BYTELEVEL =
    "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"\xc4\xa0\": 3,"
    " \"\xc4\xa0" "a\": 4, \"\xc4\x8a\": 5, \"\xc3\xa9\": 6},"
    " \"merges\": [\"a b\", [\"\xc4\xa0\", \"a\"]]},"
    " \"added_tokens\": [{\"id\": 7, \"content\": \"<|im_end|>\", \"special\": true}],"
    " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
    " \"decoder\": {\"type\": \"ByteLevel\"}}";

/* SentencePiece-style pivot with byte fallback and a dummy prefix (align_fixture.h) */
static const char *METASPACE = METASPACE_BPE("<0xC3>");

static int str_is(fc_strings s, int64_t i, const char *want) {
    size_t n = (size_t)(s.offsets[i + 1] - s.offsets[i]);
    return n == strlen(want) && memcmp(s.data + s.offsets[i], want, n) == 0;
}

static void test_vocabs(fc_vocab_t *bl, fc_vocab_t *ms) {
    CHECK(fc_vocab_size(bl) == 8 && fc_vocab_text_style(bl) == FC_STYLE_BYTELEVEL);
    CHECK(str_is(fc_vocab_decoded(bl), 4, " a") && str_is(fc_vocab_canonical(bl), 4, " a"));
    CHECK(str_is(fc_vocab_decoded(bl), 5, "\n") && str_is(fc_vocab_canonical(bl), 6, "\xe9"));
    CHECK(str_is(fc_vocab_decoded(bl), 6, "\xef\xbf\xbd")); /* a lone byte: U+FFFD */
    CHECK(str_is(fc_vocab_canonical(bl), 7, "") && (fc_vocab_flags(bl)[7] & FC_TOKEN_SPECIAL));
    CHECK(fc_vocab_role(bl, FC_ROLE_EOT) == 7 && fc_vocab_role(bl, FC_ROLE_EOS) == -1);
    CHECK(strcmp(fc_vocab_marker(bl), "\xc4\xa0") == 0);

    CHECK(fc_vocab_text_style(ms) == FC_STYLE_METASPACE && fc_vocab_adds_prefix_space(ms));
    CHECK(str_is(fc_vocab_decoded(ms), 8, "a") && str_is(fc_vocab_canonical(ms), 8, " a"));
    CHECK(str_is(fc_vocab_decoded(ms), 3, "\n") && str_is(fc_vocab_canonical(ms), 4, "\xc3"));
    CHECK(str_is(fc_vocab_decoded(ms), 4, "\xef\xbf\xbd") && (fc_vocab_flags(ms)[4] & FC_TOKEN_BYTE));
    CHECK(str_is(fc_vocab_decoded(ms), 1, "<s>") && str_is(fc_vocab_canonical(ms), 1, ""));
    CHECK(fc_vocab_role(ms, FC_ROLE_BOS) == 1 && fc_vocab_role(ms, FC_ROLE_EOS) == 2);
    CHECK(fc_vocab_role(ms, FC_ROLE_UNK) == 0 && fc_vocab_role(ms, FC_ROLE_EOT) == 2);
    CHECK(fc_vocab_find(ms, "\xe2\x96\x81" "ab", 5) == 10 && fc_vocab_find(ms, "zz", 2) == -1);
}

static void expect_error(const char *json, const char *rule) {
    fc_vocab_t *v = NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st = fc_vocab_parse(json, strlen(json), "bad.json", NULL, 0, NULL, NULL, 0, NULL,
                                  &v, &err);
    CHECK_MSG(st == FC_ERR_TOKENIZER && strcmp(err.rule, rule) == 0 && v == NULL
              && strstr(err.msg, "bad.json"), "want %s, got %d %s: %s", rule, st, err.rule, err.msg);
    fc_vocab_free(v);
}

static void test_errors(void) {
    expect_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                 "bpe_no_merges");
    expect_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a c\"]}}",
                 "bpe_merge_unknown_piece");
    expect_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": "
                 "[\"a b\"]}}", "vocab_duplicate_id");
    expect_error("{\"model\": {\"type\": \"WordLevel\", \"vocab\": {}}}", "model_unsupported");
    expect_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\"]]}}", "unigram_bad_entry");
    expect_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 99999999}, \"merges\": "
                 "[\"a a\"]}}", "vocab_bad_id");
    expect_error("{\"model\": 1", "tokenizer_not_json");
    fc_vocab_t *v = NULL;
    fc_error err;
    CHECK(fc_vocab_load("/nonexistent-folder", &v, &err) == FC_ERR_IO && err.sys_errno != 0);
}

/* naive Levenshtein for the check */
static int64_t lev_naive(const uint32_t *a, int64_t na, const uint32_t *b, int64_t nb) {
    int64_t d[130][130];
    for (int64_t i = 0; i <= na; i++) d[i][0] = i;
    for (int64_t j = 0; j <= nb; j++) d[0][j] = j;
    for (int64_t i = 1; i <= na; i++)
        for (int64_t j = 1; j <= nb; j++) {
            int64_t v = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < v) v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            d[i][j] = v;
        }
    return d[na][nb];
}

static void test_levenshtein(void) {
    uint64_t x = 88172645463325252ull;
    static const uint32_t alphabet[] = {'a', 'b', 'c', 0xe9, 0x2581, 0x1f389};
    uint32_t a[128], b[128];
    int bad = 0;
    for (int t = 0; t < 3000; t++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int64_t na = (int64_t)(x % 129), nb = (int64_t)((x >> 8) % 129);
        if (t % 3 == 0) na %= 20, nb %= 20;
        for (int64_t i = 0; i < na; i++) { x ^= x << 13, x ^= x >> 7, x ^= x << 17; a[i] = alphabet[x % 6]; }
        for (int64_t i = 0; i < nb; i++) { x ^= x << 13, x ^= x >> 7, x ^= x << 17; b[i] = alphabet[x % 6]; }
        bad += fc_levenshtein(a, na, b, nb) != lev_naive(a, na, b, nb);
    }
    CHECK_MSG(bad == 0, "%d mismatches", bad);

    /* packed patterns: 16 of <= 8 or 8 of <= 16 code points against one text, both the
     * SIMD and the portable code; non-ASCII code points go through the pack's hash */
    bad = 0;
    for (int t = 0; t < 4000; t++) {
        int width = t % 2 ? 16 : 8, count = 1 + (int)((x >> 3) % (uint64_t)(128 / width));
        uint32_t pats[16][16], text[40];
        const uint32_t *pp[16];
        int64_t lens[16];
        for (int k = 0; k < count; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            lens[k] = 1 + (int64_t)(x % (uint64_t)width);
            for (int64_t i = 0; i < lens[k]; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                /* some packs draw from many distinct code points to fill the hash */
                pats[k][i] = t % 5 == 0 ? 0x4e00 + (uint32_t)(x % 200) : alphabet[x % 6];
            }
            pp[k] = pats[k];
        }
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int64_t nt = (int64_t)(x % 40);
        for (int64_t i = 0; i < nt; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            text[i] = t % 5 == 0 ? 0x4e00 + (uint32_t)(x % 200) : alphabet[x % 6];
        }
        fc_lev_pack pack, pack2;
        int32_t d[16], e[16], d2[16];
        fc_lev_pack_init(&pack, pp, lens, count, width);
        fc_lev_pack_dist(&pack, NULL, text, nt, d, NULL, 1);
        fc_lev_pack_dist(&pack, NULL, text, nt, e, NULL, 0);
        for (int k = 0; k < count; k++) {
            int64_t want = lev_naive(pats[k], lens[k], text, nt);
            bad += d[k] != want || e[k] != want;
        }
        /* two packs at once: a second pack of the same width (the patterns reversed), or of
         * the other width (patterns of <= 8 in 16-bit lanes) */
        int count2 = count > 8 ? 8 : count, width2 = t % 4 < 2 ? width : 16;
        const uint32_t *pp2[16];
        int64_t lens2[16];
        for (int k = 0; k < count; k++) pp2[k] = pp[count - 1 - k], lens2[k] = lens[count - 1 - k];
        fc_lev_pack_init(&pack2, pp2, lens2, width2 == width ? count : count2, width2);
        for (int simd = 0; simd < 2; simd++) {
            fc_lev_pack_dist(&pack, &pack2, text, nt, d, d2, simd);
            for (int k = 0; k < count; k++) bad += d[k] != lev_naive(pats[k], lens[k], text, nt);
            for (int k = 0; k < pack2.count; k++)
                bad += d2[k] != lev_naive(pp2[k], lens2[k], text, nt);
        }
    }
    CHECK_MSG(bad == 0, "%d packed mismatches", bad);
}

/* naive DTW (method.md 3.3): the full matrix, then the backtrack taking the first minimum
 * of [diag, left, up]; the path from (n-1, m-1) back to (0, 0) */
static int64_t naive_dtw_path(const int32_t *cost, int64_t ncol, const int64_t *si, int64_t n,
                              const int32_t *pj, int64_t m, int64_t *path) {
    int64_t *D = malloc((size_t)(n * m) * sizeof *D), len = 0;
    const int64_t inf = INT64_MAX / 4;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < m; j++) {
            int64_t best = i == 0 && j == 0 ? 0 : inf;
            if (i > 0 && j > 0 && D[(i - 1) * m + j - 1] < best) best = D[(i - 1) * m + j - 1];
            if (j > 0 && D[i * m + j - 1] < best) best = D[i * m + j - 1];
            if (i > 0 && D[(i - 1) * m + j] < best) best = D[(i - 1) * m + j];
            D[i * m + j] = best + cost[si[i] * ncol + pj[j]];
        }
    int64_t i = n - 1, j = m - 1;
    while (i > 0 || j > 0) {
        path[len++] = i * m + j;
        int64_t dg = i > 0 && j > 0 ? D[(i - 1) * m + j - 1] : inf;
        int64_t lf = j > 0 ? D[i * m + j - 1] : inf, up = i > 0 ? D[(i - 1) * m + j] : inf;
        if (dg <= lf && dg <= up) i--, j--;
        else if (lf <= up) j--;
        else i--;
    }
    path[len++] = 0;
    free(D);
    return len;
}

/* the forward pass's moves, SIMD (16-bit rows, the handover to 32-bit rows, 32-bit from the
 * start) and portable, against the naive DTW on random cost tables */
static void test_dtw_forward(void) {
    uint64_t x = 0x9e3779b97f4a7c15ull;
#define RND() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
    int bad = 0, runs = 0;
    for (int t = 0; t < 400; t++) {
        int64_t n = 1 + (int64_t)(RND() % 70), m = 1 + (int64_t)(RND() % 70);
        if (t % 10 == 0) n = 1 + (int64_t)(RND() % 400);
        if (t % 10 == 1) m = 1 + (int64_t)(RND() % 400);
        int64_t nrow = 1 + (int64_t)(RND() % 12), ncol = 1 + (int64_t)(RND() % 12);
        static const int32_t ranges[] = {2, 4, 30, 600, 1500};
        int32_t range = ranges[t % 5], max_cost = 0;
        int32_t *cost = malloc((size_t)(nrow * ncol) * sizeof *cost), *pj = malloc((size_t)m * 4);
        int64_t *si = malloc((size_t)n * 8), *want = malloc((size_t)(n + m) * 8);
        for (int64_t k = 0; k < nrow * ncol; k++) {
            cost[k] = (int32_t)(RND() % (uint64_t)(range + 1));
            if (cost[k] > max_cost) max_cost = cost[k];
        }
        for (int64_t i = 0; i < n; i++) si[i] = (int64_t)(RND() % (uint64_t)nrow);
        for (int64_t j = 0; j < m; j++) pj[j] = (int32_t)(RND() % (uint64_t)ncol);
        int64_t len = naive_dtw_path(cost, ncol, si, n, pj, m, want);
        for (int simd = 0; simd < 2; simd++) {
            int was = fc_align_set_simd(simd);
            fc_dtw_moves mv;
            int rc = fc_dtw_forward(cost, nrow, ncol, max_cost, si, n, pj, m, &mv);
            fc_align_set_simd(was);
            if (rc) { bad++; continue; }
            int64_t i = n - 1, j = m - 1, k = 0;
            while (i > 0 || j > 0) {
                if (k >= len || want[k] != i * m + j) break;
                k++;
                int64_t w = i * mv.stride + (j >> 4), bit = j & 15;
                if (mv.left[w] >> bit & 1) j--;
                else if (mv.up[w] >> bit & 1) i--;
                else i--, j--;
            }
            bad += i != 0 || j != 0 || k != len - 1;
            runs++;
            free(mv.left);
            free(mv.up);
        }
        free(cost); free(pj); free(si); free(want);
    }
#undef RND
    CHECK_MSG(bad == 0 && runs == 800, "%d of %d forward passes differ from the naive DTW", bad,
              runs);
}

static void test_sequences(fc_vocab_t *bl, fc_vocab_t *ms) {
    fc_align_ctx_t *ctx = NULL;
    fc_error err;
    CHECK(fc_align_ctx_new(bl, ms, &ctx, &err) == FC_OK);
    /* "ab a" as [ab, Ġa] (source) vs [▁ab, ▁a] (pivot) */
    int64_t src[] = {2, 4}, piv[] = {10, 8};
    fc_alignment al;
    CHECK(fc_align_dtw(ctx, src, 2, piv, 2, &al, &err) == FC_OK);
    CHECK(al.indptr[1] == 1 && al.indptr[2] == 2 && al.indices[0] == 0 && al.indices[1] == 1);
    fc_alignment_free(&al);
    /* one pivot token over two source tokens: [a, b] vs [▁ab] */
    int64_t src2[] = {0, 1}, piv2[] = {10};
    CHECK(fc_align_dtw(ctx, src2, 2, piv2, 1, &al, &err) == FC_OK);
    CHECK(al.indptr[1] == 2 && al.indices[0] == 0 && al.indices[1] == 1);
    fc_alignment_free(&al);
    int used = -1;
    CHECK(fc_align_offsets(ctx, src2, 2, piv2, 1, 0, &used, &al, &err) == FC_OK && used == 0);
    CHECK(al.indptr[1] == 2 && al.indices[0] == 0 && al.indices[1] == 1);
    fc_alignment_free(&al);
    /* specials anchor: [a, <|im_end|>, Ġa] vs [<s>, ▁a, </s>, ▁a] */
    int64_t src3[] = {0, 7, 4}, piv3[] = {1, 8, 2, 8};
    CHECK(fc_align_offsets(ctx, src3, 3, piv3, 4, 0, &used, &al, &err) == FC_OK);
    CHECK(al.indptr[4] == 4 && al.indices[0] == 0 && al.indices[1] == 0 && al.indices[2] == 1
          && al.indices[3] == 2);
    fc_alignment_free(&al);
    /* different text: an error, or DTW on request */
    int64_t piv4[] = {6, 7};
    CHECK(fc_align_offsets(ctx, src3, 3, piv4, 2, 0, &used, &al, &err) == FC_ERR_VALUE
          && strcmp(err.rule, "offsets_text_mismatch") == 0);
    CHECK(fc_align_offsets(ctx, src3, 3, piv4, 2, 1, &used, &al, &err) == FC_OK && used == 1);
    fc_alignment_free(&al);
    int64_t bad[] = {0, 99};
    CHECK(fc_align_dtw(ctx, bad, 2, piv, 2, &al, &err) == FC_ERR_VALUE);

    /* counts and the maps */
    fc_counts_t *c = fc_counts_new(), *c2 = fc_counts_new();
    CHECK(fc_align_dtw(ctx, src2, 2, piv2, 1, &al, &err) == FC_OK);
    CHECK(fc_counts_add_alignment(c, src2, 2, piv2, 1, &al, &err) == FC_OK);
    CHECK(fc_counts_add(c2, 10, 0, 5, &err) == FC_OK && fc_counts_merge(c, c2, &err) == FC_OK);
    int64_t p[2], s[2];
    uint64_t n[2];
    CHECK(fc_counts_nnz(c) == 2 && fc_counts_export(c, 0, p, s, n, &err) == FC_OK);
    CHECK(p[0] == 10 && s[0] == 0 && n[0] == 6 && s[1] == 1 && n[1] == 1);
    int32_t map[8];
    CHECK(fc_vocab_map(bl, ms, FC_MAP_EM, NULL, -1, 1, map, &err) == FC_OK);
    CHECK(map[0] == 6 && map[2] == 9 && map[4] == 8 && map[3] == 5 && map[5] == -1);
    CHECK(fc_vocab_map(bl, ms, FC_MAP_MINED, NULL, -1, 2, map, &err) == FC_OK);
    CHECK(map[0] == 6 && map[5] >= 0 && map[6] >= 0);
    CHECK(fc_vocab_map(bl, ms, FC_MAP_MS, c, 0, 1, map, &err) == FC_OK);
    CHECK(map[0] == 10 && map[1] == 10 && map[2] == 0); /* no candidates: pivot unk */
    CHECK(fc_vocab_map(bl, ms, FC_MAP_MS, NULL, 0, 1, map, &err) == FC_ERR_VALUE);

    /* distributions: pivot [▁ab] over [a, b]: rule (a) maps the source token "b" */
    int64_t topk[] = {1, 0, 2, 6};
    float logits[] = {3.0f, 1.0f, 4.0f, 2.0f};
    int32_t eff[8] = {6, 7, 9, -1, 8, -1, -1, -1};
    int64_t offs[2];
    int32_t ids[4];
    float lg[4];
    CHECK(fc_align_distributions(ctx, FC_DIST_MS, 1, src2, 2, piv2, 1, &al, topk, logits, 2,
                                 eff, map, offs, ids, lg, &err) == FC_OK);
    CHECK(offs[1] == 1 && ids[0] == 9 && lg[0] == 4.0f);
    CHECK(fc_align_distributions(ctx, FC_DIST_MS, 0, src2, 2, piv2, 1, &al, topk, logits, 2,
                                 eff, map, offs, ids, lg, &err) == FC_OK);
    CHECK(offs[1] == 1 && ids[0] == 10 && lg[0] == 1.0f); /* one-hot on the last token */
    topk[2] = 42;
    CHECK(fc_align_distributions(ctx, FC_DIST_MS, 1, src2, 2, piv2, 1, &al, topk, logits, 2,
                                 eff, map, offs, ids, lg, &err) == FC_ERR_VALUE);
    fc_alignment_free(&al);
    fc_counts_free(c);
    fc_counts_free(c2);
    fc_align_ctx_free(ctx);
}

int main(void) {
    fc_vocab_t *bl = parse(BYTELEVEL, NULL), *ms = parse(METASPACE, METASPACE_CONFIG);
    if (bl && ms) {
        test_vocabs(bl, ms);
        test_sequences(bl, ms);
    }
    test_errors();
    test_levenshtein();
    test_dtw_forward();
    fc_vocab_free(bl);
    fc_vocab_free(ms);
    return ctest_report("test_align");
}
