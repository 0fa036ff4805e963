/* test_merge.c - the merge core under ASan+UBSan: exact top-k selection against a brute
 * force count, the counter RNG, and every kernel run on awkward shapes (memory safety and
 * thread-count independence; numbers are checked against the NumPy twins in pytest). */
#include <math.h>

#include "ctest.h"
#include "fusechat.h"

typedef struct {
    const uint32_t *keys;
} arr_ctx;

static void arr_keys(void *vctx, int64_t begin, int64_t n, uint32_t *keys) {
    memcpy(keys, ((arr_ctx *)vctx)->keys + begin, (size_t)n * sizeof(uint32_t));
}

/* Check the selection is exactly the k best under (key desc, index asc). */
static void check_topk(const uint32_t *keys, int64_t n, int64_t k, int threads) {
    arr_ctx c = {keys};
    fc_topk t;
    fc_error err;
    CHECK(fc_select_topk(n, k, arr_keys, &c, threads, &t, &err) == FC_OK);
    int64_t sel = 0, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        int in = fc_topk_has(&t, keys[i], i);
        sel += in;
        /* count elements that rank above i */
        if (in) {
            for (int64_t j = 0; j < n && j < 4000; j++) {
                int above = keys[j] > keys[i] || (keys[j] == keys[i] && j < i);
                if (above && !fc_topk_has(&t, keys[j], j)) bad++;
            }
        }
    }
    fc_topk direct; /* the same selection reading the key array in place (fn NULL) */
    CHECK(fc_select_topk(n, k, NULL, (void *)keys, threads, &direct, &err) == FC_OK);
    CHECK(direct.key == t.key && direct.cut == t.cut);
    int64_t want = k < 0 ? 0 : k > n ? n : k;
    CHECK_MSG(sel == want, "n %lld k %lld selected %lld", (long long)n, (long long)k, (long long)sel);
    CHECK_MSG(bad == 0, "n %lld k %lld: %lld better elements left out", (long long)n, (long long)k,
              (long long)bad);
}

static void test_select(void) {
    int64_t n = 3000;
    uint32_t *keys = malloc((size_t)n * sizeof(uint32_t));
    uint64_t s = 1;
    for (int mode = 0; mode < 3; mode++) {
        for (int64_t i = 0; i < n; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            uint32_t r = (uint32_t)(s >> 33);
            keys[i] = mode == 0 ? r : mode == 1 ? (r % 7) << 20 | 0x1234 : 42; /* ties */
        }
        int64_t ks[] = {-1, 0, 1, 2, 999, 1500, 2999, 3000, 5000};
        for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
            check_topk(keys, n, ks[j], 1);
            check_topk(keys, n, ks[j], 3);
        }
    }
    free(keys);
    /* many blocks, all tied: the cut is exactly at index k */
    int64_t big = 200000;
    uint32_t *tied = malloc((size_t)big * sizeof(uint32_t));
    for (int64_t i = 0; i < big; i++) tied[i] = 7;
    arr_ctx c = {tied};
    fc_topk t;
    fc_error err;
    CHECK(fc_select_topk(big, 123457, arr_keys, &c, 4, &t, &err) == FC_OK);
    CHECK(t.key == 7 && t.cut == 123457);
    free(tied);
}

static void test_rng(void) {
    uint64_t st = fc_rng_stream(1, fc_merge_tensor_key("a"), 0);
    CHECK(st != fc_rng_stream(1, fc_merge_tensor_key("a"), 1));
    CHECK(st != fc_rng_stream(2, fc_merge_tensor_key("a"), 0));
    double sum = 0;
    int below = 0;
    for (uint64_t i = 0; i < 100000; i++) {
        float u = fc_rng_uniform(st, i);
        CHECK(u >= 0.0f && u < 1.0f);
        sum += u;
        below += u < 0.25f;
    }
    CHECK(fabs(sum / 100000 - 0.5) < 0.01);
    CHECK(abs(below - 25000) < 600);
    CHECK(fc_rng_uniform(st, 17) == fc_rng_uniform(st, 17));
    CHECK(fc_merge_tensor_key("") == 0xcbf29ce484222325ull);
}

static void test_kernels(void) {
    int64_t shapes[][2] = {{37, 113}, {1, 113}, {1, 1}, {130, 70}};
    int ndims[] = {2, 1, 0, 2};
    for (size_t si = 0; si < 4; si++) {
        int64_t *shape = shapes[si];
        int64_t numel = shape[0] * shape[1];
        int64_t sh[2] = {shape[0], shape[1]};
        if (ndims[si] == 1) sh[0] = shape[1];
        uint16_t *x[6];
        for (int i = 0; i < 6; i++) {
            x[i] = malloc((size_t)numel * 2);
            for (int64_t e = 0; e < numel; e++)
                x[i][e] = fc_f32_to_bf16((float)sin(e * 0.37 + i * 1.3) * (1 + i * 0.1f));
        }
        const void *in[5] = {x[1], x[2], x[3], x[4], x[5]};
        fc_dtype dts[5] = {FC_BF16, FC_BF16, FC_BF16, FC_BF16, FC_BF16};
        fc_merge_model_params mp[5];
        for (int i = 0; i < 5; i++) {
            fc_merge_model_params_init(&mp[i]);
            mp[i].weight = 0.3 + 0.1 * i;
            mp[i].density = 0.5;
            mp[i].epsilon = 0.1;
        }
        float *o1 = malloc((size_t)numel * 4), *o2 = malloc((size_t)numel * 4);
        for (int m = 0; m < FC_MERGE_METHOD_COUNT; m++) {
            fc_merge_params p;
            fc_merge_params_init(&p, (fc_merge_method)m);
            p.models = mp;
            p.select_topk = 0.3;
            p.filter_wise = 1;
            p.nuslerp_flatten = 0;
            p.nuslerp_row_wise = si & 1;
            /* inputs from the method table: its most, at most 5 */
            const fc_merge_method_info *mi = fc_merge_method_info_of((fc_merge_method)m);
            int n = mi->max_models < 0 || mi->max_models > 5 ? 5 : mi->max_models;
            int nobase = mi->base == FC_MERGE_BASE_NONE;
            fc_error err;
            fc_status a = fc_merge_tensor(NULL, &p, nobase ? NULL : x[0], FC_BF16, in, dts, n, ndims[si],
                                          sh, o1, FC_F32, 1, &err);
            fc_status b = fc_merge_tensor(NULL, &p, nobase ? NULL : x[0], FC_BF16, in, dts, n, ndims[si],
                                          sh, o2, FC_F32, 3, &err);
            CHECK_MSG(a == FC_OK && b == FC_OK, "%s: %s", fc_merge_method_name(m), err.msg);
            CHECK_MSG(memcmp(o1, o2, (size_t)numel * 4) == 0, "%s: threads change the bytes",
                      fc_merge_method_name(m));
        }
        free(o1);
        free(o2);
        for (int i = 0; i < 6; i++) free(x[i]);
    }
}

static void test_errors(void) {
    float b[4] = {0}, x[4] = {1, 2, 3, 4}, o[4];
    const void *in[2] = {x, x};
    fc_dtype dts[2] = {FC_F32, FC_F32};
    fc_merge_model_params mp[2];
    fc_merge_model_params_init(&mp[0]);
    fc_merge_model_params_init(&mp[1]);
    int64_t shape[1] = {4};
    fc_merge_params p;
    fc_error err;
    fc_merge_params_init(&p, FC_MERGE_TIES);
    p.models = mp;
    CHECK(fc_merge_tensor(NULL, &p, NULL, FC_F32, in, dts, 1, 1, shape, o, FC_F32, 1, &err) == FC_ERR_VALUE);
    CHECK(strcmp(err.rule, "base_required") == 0);
    mp[0].density = 0;
    CHECK(fc_merge_tensor(NULL, &p, b, FC_F32, in, dts, 1, 1, shape, o, FC_F32, 1, &err) == FC_ERR_VALUE);
    CHECK(strstr(err.msg, "density") != NULL);
    mp[0].density = 1;
    fc_merge_params_init(&p, FC_MERGE_SLERP);
    p.models = mp;
    CHECK(fc_merge_tensor(NULL, &p, b, FC_F32, in, dts, 2, 1, shape, o, FC_F32, 1, &err) == FC_ERR_VALUE);
    CHECK(strstr(err.msg, "exactly 1") != NULL);
    fc_merge_params_init(&p, FC_MERGE_LINEAR);
    p.models = mp;
    CHECK(fc_merge_tensor(NULL, &p, b, FC_F32, in, dts, 2, 1, shape, o, FC_F32, 1, &err) == FC_ERR_VALUE);
    CHECK(fc_merge_tensor(NULL, &p, NULL, FC_F32, in, dts, 2, 1, shape, o, FC_I32, 1, &err) == FC_ERR_TYPE);
    CHECK(fc_merge_method_from_name("sce") == FC_MERGE_SCE && fc_merge_method_from_name("x") == -1);
}

/* The streaming top-k (one pass guided by a sample) gives the bytes of the exact passes, for
 * any thread count, on tensors big enough to take it; smooth and heavily tied deltas. */
/* Two contexts with different settings (A: portable kernels, exact passes, buffers kept;
 * B: the widest kernels, streaming, buffers kept) used alternately on one tensor: each call
 * gives `want`'s bytes, and each context counts only its own streaming attempts. */
static void check_two_contexts(const fc_merge_params *p, const void *base, const void *const *in,
                               const fc_dtype *dts, const int64_t *sh, int64_t numel,
                               const uint16_t *want) {
    fc_merge_ctx *a = fc_merge_ctx_init(), *b = fc_merge_ctx_init();
    CHECK(a != NULL && b != NULL);
    CHECK(fc_merge_ctx_set_isa(a, "portable") == 0);
    CHECK(strcmp(fc_merge_ctx_isa(a), "portable") == 0);
    CHECK(fc_merge_ctx_set_isa(b, "sse9") == -1); /* unknown: refused, the setting kept */
    CHECK(strcmp(fc_merge_ctx_isa(b), fc_merge_ctx_isa(NULL)) == 0);
    fc_merge_ctx_set_streaming(a, 0);
    fc_merge_ctx_keep_buffers(a, 1);
    fc_merge_ctx_keep_buffers(b, 1);
    uint16_t *o = malloc((size_t)numel * 2);
    for (int round = 0; round < 4; round++) {
        fc_merge_ctx *c = round % 2 ? b : a;
        fc_error err;
        memset(o, 0, (size_t)numel * 2);
        fc_status st = fc_merge_tensor(c, p, base, FC_BF16, in, dts, 3, 2, sh, o, FC_BF16,
                                       1 + round, &err);
        CHECK_MSG(st == FC_OK, "%s", err.msg);
        CHECK_MSG(memcmp(o, want, (size_t)numel * 2) == 0, "%s: context %c changes the bytes",
                  fc_merge_method_name(p->method), round % 2 ? 'B' : 'A');
    }
    int64_t sa, fa, sb, fb;
    fc_merge_ctx_stream_counts(a, &sa, &fa);
    fc_merge_ctx_stream_counts(b, &sb, &fb);
    CHECK_MSG(sa == 0 && fa == 0, "context A (exact) counted %lld/%lld", (long long)sa, (long long)fa);
    CHECK_MSG(sb + fb == 2, "context B (streaming) counted %lld/%lld", (long long)sb, (long long)fb);
    free(o);
    fc_merge_ctx_free(a);
    fc_merge_ctx_free(b);
}

static void test_streaming(void) {
    int64_t sh[2] = {1024, 2053}, numel = sh[0] * sh[1];
    uint16_t *x[4];
    for (int i = 0; i < 4; i++) {
        x[i] = malloc((size_t)numel * 2);
        for (int64_t e = 0; e < numel; e++) {
            float b = (float)sin(e * 0.001) * 0.02f, d = (float)sin(e * 0.37 + i * 1.3) * 0.002f;
            if (i == 3) d = (float)((e * 7919) % 5) * 0.001f; /* five distinct deltas: ties */
            x[i][e] = fc_f32_to_bf16(i ? b + d * (float)i : b);
        }
    }
    const void *in[3] = {x[1], x[2], x[3]};
    fc_dtype dts[3] = {FC_BF16, FC_BF16, FC_BF16};
    fc_merge_model_params mp[3];
    for (int i = 0; i < 3; i++) {
        fc_merge_model_params_init(&mp[i]);
        mp[i].weight = 0.5 - 0.3 * i;
        mp[i].density = 0.3 + 0.3 * i;
    }
    fc_merge_method methods[] = {FC_MERGE_TIES, FC_MERGE_SCE};
    uint16_t *o[3];
    for (int k = 0; k < 3; k++) o[k] = malloc((size_t)numel * 2);
    for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++) {
        fc_merge_params p;
        fc_merge_params_init(&p, methods[m]);
        p.models = mp;
        p.select_topk = 0.1;
        fc_error err;
        int64_t s0, f0, s1, f1;
        fc_merge_ctx *ctx = fc_merge_ctx_init();
        CHECK(ctx != NULL);
        fc_merge_ctx_stream_counts(ctx, &s0, &f0);
        fc_status a = fc_merge_tensor(ctx, &p, x[0], FC_BF16, in, dts, 3, 2, sh, o[0], FC_BF16, 1, &err);
        fc_status b = fc_merge_tensor(ctx, &p, x[0], FC_BF16, in, dts, 3, 2, sh, o[1], FC_BF16, 3, &err);
        fc_merge_ctx_stream_counts(ctx, &s1, &f1);
        fc_merge_ctx_set_streaming(ctx, 0);
        fc_status c = fc_merge_tensor(ctx, &p, x[0], FC_BF16, in, dts, 3, 2, sh, o[2], FC_BF16, 2, &err);
        fc_merge_ctx_free(ctx);
        CHECK_MSG(a == FC_OK && b == FC_OK && c == FC_OK, "%s: %s", fc_merge_method_name(methods[m]), err.msg);
        CHECK_MSG(s1 + f1 - s0 - f0 == 2, "%s: streaming not tried", fc_merge_method_name(methods[m]));
        CHECK_MSG(memcmp(o[0], o[2], (size_t)numel * 2) == 0 && memcmp(o[1], o[2], (size_t)numel * 2) == 0,
                  "%s: streaming changes the bytes", fc_merge_method_name(methods[m]));
        check_two_contexts(&p, x[0], in, dts, sh, numel, o[2]);
    }
    for (int k = 0; k < 3; k++) free(o[k]);
    for (int i = 0; i < 4; i++) free(x[i]);
}

/* SCE's streaming path (tensors of >= 2^21 elements) and its fallbacks under the sanitizers:
 * the candidate records are indexed by block, so a wrong offset shows here. Checks: the
 * same bytes for 1 and 3 threads, and with mask_deltas at most k positions move off B. */
static void test_sce_stream(void) {
    int64_t numel = (int64_t)1 << 21, shape[1] = {numel};
    float *x[4], *o1 = malloc((size_t)numel * 4), *o2 = malloc((size_t)numel * 4);
    for (int i = 0; i < 4; i++) x[i] = malloc((size_t)numel * 4);
    const void *in[3] = {x[1], x[2], x[3]};
    fc_dtype dts[3] = {FC_F32, FC_F32, FC_F32};
    fc_merge_model_params mp[3];
    for (int i = 0; i < 3; i++) fc_merge_model_params_init(&mp[i]);
    /* layout 0: smooth; 1: ties (deltas from a few values); 2: the runs of 64 the sample
     * reads (merge_sample.c: [4096 r + 2016, 4096 r + 2080) for 2^21 elements) are 100 times
     * louder, so the band misses the 10% threshold; 3: one NaN */
    for (int layout = 0; layout < 4; layout++) {
        for (int64_t e = 0; e < numel; e++) {
            x[0][e] = (float)sin(e * 0.001);
            for (int i = 1; i < 4; i++) {
                float d = (float)sin(e * (0.37 + 0.11 * i) + i) * 0.01f * i;
                if (layout == 1) d = (float)((e * (i + 2) + e / 7) % 5 - 2) / 64;
                if (layout == 2 && e % 4096 >= 2016 && e % 4096 < 2080) d *= 100;
                x[i][e] = x[0][e] + d;
            }
        }
        if (layout == 3) x[2][1777777] = NAN;
        for (int md = 0; md < 2; md++) {
            fc_merge_params p;
            fc_merge_params_init(&p, FC_MERGE_SCE);
            p.models = mp;
            p.select_topk = 0.1;
            p.mask_deltas = md;
            fc_error err;
            fc_status a = fc_merge_tensor(NULL, &p, x[0], FC_F32, in, dts, 3, 1, shape, o1, FC_F32, 1, &err);
            fc_status b = fc_merge_tensor(NULL, &p, x[0], FC_F32, in, dts, 3, 1, shape, o2, FC_F32, 3, &err);
            CHECK_MSG(a == FC_OK && b == FC_OK, "sce layout %d: %s", layout, err.msg);
            CHECK_MSG(memcmp(o1, o2, (size_t)numel * 4) == 0, "sce layout %d: threads change the bytes", layout);
            int64_t moved = 0;
            for (int64_t e = 0; e < numel; e++) moved += o1[e] != x[0][e];
            if (md && layout < 3) CHECK_MSG(moved > 0 && moved <= numel / 10, "sce layout %d: %lld moved", layout, (long long)moved);
        }
    }
    for (int i = 0; i < 4; i++) free(x[i]);
    free(o1);
    free(o2);
}

/* TIES with int(density * n) == 0 keeps each model's largest |delta| (mergekit 0.1.5), so a
 * small tensor at a low density is not left as the base. */
static void test_ties_keeps_one(void) {
    float b[4] = {1, 1, 1, 1}, x0[4] = {1.1f, -2, 1.2f, 1.5f}, x1[4] = {1, 1, 1.25f, 0.5f}, o[4];
    const void *in[2] = {x0, x1};
    fc_dtype dts[2] = {FC_F32, FC_F32};
    fc_merge_model_params mp[2];
    fc_merge_model_params_init(&mp[0]);
    fc_merge_model_params_init(&mp[1]);
    mp[0].density = mp[1].density = 0.1; /* int(0.4) == 0 */
    int64_t shape[1] = {4};
    fc_merge_params p;
    fc_error err;
    fc_merge_params_init(&p, FC_MERGE_TIES);
    p.models = mp;
    CHECK(fc_merge_tensor(NULL, &p, b, FC_F32, in, dts, 2, 1, shape, o, FC_F32, 1, &err) == FC_OK);
    /* model 0 keeps -3 (element 1), model 1 keeps -0.5 (element 3); no conflicts */
    CHECK(o[0] == 1 && o[1] == -2 && o[2] == 1 && o[3] == 0.5f);
}

int main(void) {
    test_ties_keeps_one();
    test_select();
    test_rng();
    test_kernels();
    test_streaming();
    test_sce_stream();
    test_errors();
    return ctest_report("test_merge");
}
