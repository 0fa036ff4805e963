/* test_loss.c - the loss kernels of csrc/core (loss_fusion.c, loss_topk.c, fuse.c) under
 * ASan + UBSan: against a plain double-precision row computation written here, plus the
 * invariants that need no reference (gradient rows sum to 0, thread-count independence,
 * in place == out of place, all-ignored rows give exact zeros) and every rejection. The
 * float64 NumPy twins in tests/reference/ cover the same kernels from Python. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "ctest.h"
#include "fusechat.h"
#include "../../csrc/core/loss_row.h" /* the vectorised F16/BF16 row conversions */

#define N 23
#define V 301
#define K 6

static uint64_t rng_state = 88172645463325252ull;
static double urand(void) { /* xorshift64*, uniform in [0, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static float z32[N * V];
static int64_t labels[N];
static int32_t ids[N * K];
static float vals[N * K];

static void make_inputs(void) {
    for (int i = 0; i < N * V; i++) z32[i] = (float)((urand() - 0.5) * 12.0);
    for (int r = 0; r < N; r++) {
        labels[r] = r % 5 == 3 ? -100 : (int64_t)(urand() * V);
        for (int j = 0; j < K; j++) {
            /* distinct ids: a stride through the vocabulary, some padding */
            ids[r * K + j] = (j == 2 && r % 3 == 0) ? -1 : (int32_t)((r * 37 + j * 41) % V);
            vals[r * K + j] = (float)((urand() - 0.5) * 4.0);
        }
    }
    for (int j = 0; j < K; j++) ids[7 * K + j] = -1; /* row 7: empty target -> gold */
}

/* The reference row: loss and gradient (unscaled) in double, straight from the formulas. */
static double ref_row(const double *z, int64_t y, const int32_t *tid, const float *tv,
                      double w, double temp, int kl, double *grad) {
    double m = -INFINITY, s = 0.0;
    for (int i = 0; i < V; i++) m = z[i] > m ? z[i] : m;
    for (int i = 0; i < V; i++) s += exp(z[i] - m);
    double lse = m + log(s);
    double p[K], pm = -INFINITY, ps = 0.0;
    int pid[K], cnt = 0;
    for (int j = 0; j < K; j++)
        if (tid[j] >= 0) { pid[cnt] = tid[j]; p[cnt] = tv[j] / temp; cnt++; }
    if (cnt == 0) { pid[0] = (int)y; p[0] = 0.0; cnt = 1; }
    for (int j = 0; j < cnt; j++) pm = p[j] > pm ? p[j] : pm;
    for (int j = 0; j < cnt; j++) ps += exp(p[j] - pm);
    double fusion = 0.0;
    for (int i = 0; i < V; i++) grad[i] = exp(z[i] - lse);
    grad[y] -= w;
    for (int j = 0; j < cnt; j++) {
        p[j] = exp(p[j] - pm) / ps;
        fusion += p[j] * (lse - z[pid[j]]) + (kl && p[j] > 0 ? p[j] * log(p[j]) : 0.0);
        grad[pid[j]] -= (1.0 - w) * p[j];
    }
    return w * (lse - z[y]) + (1.0 - w) * fusion;
}

/* gradient bound: |got - want| <= tol_grad |want| + atol / sup (atol: F16's subnormal step) */
static void test_against_reference(fc_dtype dt, double tol_loss, double tol_grad, double atol) {
    size_t esz = fc_dtype_size(dt);
    void *z = malloc((size_t)N * V * esz), *g = malloc((size_t)N * V * esz);
    double *zd = malloc((size_t)N * V * sizeof(double)), *gd = malloc((size_t)N * V * 8);
    double *gref = malloc(V * sizeof(double));
    fc_error err;
    CHECK(fc_convert(z32, FC_F32, z, dt, (int64_t)N * V, 1, &err) == FC_OK);
    CHECK(fc_convert(z, dt, zd, FC_F64, (int64_t)N * V, 1, &err) == FC_OK);
    for (int kl = 0; kl <= 1; kl++) {
        fc_fusion_loss_opts o;
        fc_fusion_loss_opts_init(&o);
        o.kind = kl ? FC_FUSION_KL : FC_FUSION_CE;
        o.temperature = 0.75;
        o.lm_weight = 0.8;
        o.nthreads = 3;
        fc_sparse_target t = {ids, vals, K};
        double loss = 0.0, rows[N];
        int64_t nsup = 0;
        fc_status st = fc_fusion_loss(z, dt, N, V, labels, &t, NULL, &o, &loss, rows, g, &nsup,
                                      &err);
        CHECK_MSG(st == FC_OK, "%s", err.msg);
        CHECK(fc_convert(g, dt, gd, FC_F64, (int64_t)N * V, 1, &err) == FC_OK);
        double total = 0.0, worst_sum = 0.0;
        int bad = 0;
        int64_t sup = 0;
        for (int r = 0; r < N; r++) sup += labels[r] != -100;
        CHECK(nsup == sup);
        for (int r = 0; r < N; r++) {
            if (labels[r] == -100) {
                int zero = rows[r] == 0.0;
                for (int i = 0; i < V; i++) zero &= gd[r * V + i] == 0.0;
                CHECK(zero);
                continue;
            }
            double lr = ref_row(zd + r * V, labels[r], ids + r * K, vals + r * K, o.lm_weight,
                                o.temperature, kl, gref);
            total += lr;
            CHECK_MSG(fabs(rows[r] - lr) <= tol_loss * fabs(lr), "%s row %d: %g vs %g",
                      fc_dtype_name(dt), r, rows[r], lr);
            double rowsum = 0.0;
            for (int i = 0; i < V; i++) {
                double want = gref[i] / (double)sup, got = gd[r * V + i];
                if (fabs(got - want) > tol_grad * fabs(want) + atol / (double)sup && !bad++)
                    fprintf(stderr, "%s kl=%d row %d id %d: %g vs %g\n", fc_dtype_name(dt), kl,
                            r, i, got, want);
                rowsum += got;
            }
            worst_sum = fabs(rowsum) > worst_sum ? fabs(rowsum) : worst_sum;
        }
        CHECK(bad == 0);
        /* the gradient of a row sums to 0 (softmax sums to 1, so do the weights), up to one
         * rounding per element */
        CHECK_MSG(worst_sum <= (2.0 * tol_grad + V * atol) / (double)sup, "%s: row sums up to %g",
                  fc_dtype_name(dt), worst_sum);
        CHECK_MSG(fabs(loss - total / (double)sup) <= tol_loss * fabs(loss), "%g vs %g", loss,
                  total / (double)sup);
    }
    free(z); free(g); free(zd); free(gd); free(gref);
}

static void test_inplace_threads_and_ignored(void) {
    fc_error err;
    fc_fusion_loss_opts o;
    fc_fusion_loss_opts_init(&o);
    fc_sparse_target t = {ids, vals, K};
    uint16_t *z = malloc(sizeof(uint16_t) * N * V), *g1 = malloc(sizeof(uint16_t) * N * V);
    CHECK(fc_convert(z32, FC_F32, z, FC_BF16, (int64_t)N * V, 1, &err) == FC_OK);
    double l1, l2;
    o.nthreads = 1;
    CHECK(fc_fusion_loss(z, FC_BF16, N, V, labels, &t, NULL, &o, &l1, NULL, g1, NULL, &err) ==
          FC_OK);
    o.nthreads = 4;
    CHECK(fc_fusion_loss(z, FC_BF16, N, V, labels, &t, NULL, &o, &l2, NULL, z, NULL, &err) ==
          FC_OK);
    CHECK(l1 == l2 && memcmp(z, g1, sizeof(uint16_t) * N * V) == 0);
    int64_t ign[N];
    for (int r = 0; r < N; r++) ign[r] = -100;
    double l3 = -1.0;
    int64_t nsup = -1;
    CHECK(fc_fusion_loss(z32, FC_F32, N, V, ign, &t, NULL, &o, &l3, NULL, NULL, &nsup, &err) ==
          FC_OK);
    CHECK(l3 == 0.0 && nsup == 0);
    CHECK(fc_fusion_loss(z32, FC_F32, 0, V, NULL, NULL, NULL, &o, &l3, NULL, NULL, NULL, &err) ==
          FC_OK);
    free(z);
    free(g1);
}

static void test_rejections(void) {
    fc_error err;
    fc_fusion_loss_opts o;
    fc_fusion_loss_opts_init(&o);
    fc_sparse_target t = {ids, vals, K};
    double loss;
    int32_t save = ids[4 * K + 1];
    ids[4 * K + 1] = V;
    CHECK(fc_fusion_loss(z32, FC_F32, N, V, labels, &t, NULL, &o, &loss, NULL, NULL, NULL, &err) ==
          FC_ERR_VALUE);
    CHECK(strstr(err.msg, "target_ids row 4 entry 1") != NULL);
    o.validate = 0; /* ranges stay checked */
    CHECK(fc_fusion_loss(z32, FC_F32, N, V, labels, &t, NULL, &o, &loss, NULL, NULL, NULL, &err) ==
          FC_ERR_VALUE);
    o.validate = 1;
    ids[4 * K + 1] = ids[4 * K + 0];
    CHECK(fc_fusion_loss(z32, FC_F32, N, V, labels, &t, NULL, &o, &loss, NULL, NULL, NULL, &err) ==
          FC_ERR_VALUE && strstr(err.msg, "appears twice"));
    ids[4 * K + 1] = save;
    float sv = vals[9 * K + 0];
    vals[9 * K + 0] = INFINITY;
    CHECK(fc_fusion_loss(z32, FC_F32, N, V, labels, &t, &t, &o, &loss, NULL, NULL, NULL, &err) ==
          FC_ERR_VALUE && strstr(err.msg, "target_values row 9"));
    vals[9 * K + 0] = sv;
    int64_t l = labels[2];
    labels[2] = V;
    CHECK(fc_fusion_loss(z32, FC_F32, N, V, labels, &t, NULL, &o, &loss, NULL, NULL, NULL, &err) ==
          FC_ERR_VALUE && strstr(err.msg, "labels row 2"));
    labels[2] = l;
    o.lm_weight = -0.1;
    CHECK(fc_fusion_loss(z32, FC_F32, N, V, labels, &t, NULL, &o, &loss, NULL, NULL, NULL, &err) ==
          FC_ERR_VALUE && strstr(err.msg, "lm_weight"));
    fc_fusion_loss_opts_init(&o);
    o.reduction = FC_REDUCE_NORMALIZER;
    o.normalizer = 0.0;
    CHECK(fc_fusion_loss(z32, FC_F32, N, V, labels, &t, NULL, &o, &loss, NULL, NULL, NULL, &err) ==
          FC_ERR_VALUE);
    fc_fusion_loss_opts_init(&o);
    CHECK(fc_fusion_loss(z32, FC_I32, N, V, labels, &t, NULL, &o, &loss, NULL, NULL, NULL, &err) ==
          FC_ERR_TYPE);
    fc_sparse_target huge = {ids, vals, 5000};
    CHECK(fc_fusion_loss(z32, FC_F32, N, V, labels, &huge, NULL, &o, &loss, NULL, NULL, NULL,
                         &err) == FC_ERR_VALUE);
}

static void test_topk(void) {
    fc_error err;
    enum { TK = 9 };
    float z[N * V];
    memcpy(z, z32, sizeof z);
    for (int i = 0; i < V; i++) z[3 * V + i] = (float)(i % 4); /* ties: ids 3, 7, 11, ... */
    z[5 * V + 100] = NAN;
    int32_t ti[N * TK];
    float tl[N * TK], ce[N], sce[3];
    uint8_t has[3];
    int64_t offs[4] = {0, 10, 10, N};
    CHECK(fc_topk_ce(z, FC_F32, N, V, TK, labels, -100, ti, tl, ce, offs, 3, sce, has, 2, &err) ==
          FC_OK);
    for (int r = 0; r < N; r++) {
        /* naive selection: repeatedly the best remaining (larger value, NaN largest, lower id) */
        unsigned char taken[V] = {0};
        for (int j = 0; j < TK; j++) {
            int best = -1;
            for (int i = 0; i < V; i++) {
                if (taken[i]) continue;
                float a = z[r * V + i], b = best < 0 ? 0 : z[r * V + best];
                if (best < 0 || (isnan(a) && !isnan(b)) || (!isnan(b) && a > b)) best = i;
            }
            taken[best] = 1;
            CHECK_MSG(ti[r * TK + j] == best, "row %d rank %d: %d vs %d", r, j, ti[r * TK + j],
                      best);
        }
        if (labels[r] == -100) { CHECK(ce[r] == 0.0f); continue; }
        double m = -INFINITY, s = 0.0;
        for (int i = 0; i < V; i++) m = z[r * V + i] > m ? z[r * V + i] : m;
        for (int i = 0; i < V; i++) s += exp(z[r * V + i] - m);
        if (r == 5) CHECK(isnan(ce[r]));
        else CHECK_MSG(fabs(ce[r] - (m + log(s) - z[r * V + labels[r]])) < 1e-5, "row %d", r);
    }
    CHECK(ti[3 * TK + 0] == 3 && ti[3 * TK + 1] == 7 && ti[3 * TK + 2] == 11);
    CHECK(has[1] == 0 && sce[1] == 0.0f && has[0] == 1);
    CHECK(fc_topk_ce(z, FC_F32, N, V, V + 1, NULL, -100, ti, tl, NULL, NULL, 0, NULL, NULL, 1,
                     &err) == FC_ERR_VALUE);
    int64_t bad[4] = {0, 12, 10, N};
    CHECK(fc_topk_ce(z, FC_F32, N, V, TK, labels, -100, ti, tl, ce, bad, 3, sce, has, 1, &err) ==
          FC_ERR_VALUE && strstr(err.msg, "decreases"));
}

static void test_fuse(void) {
    fc_error err;
    /* 2 models, 3 positions, 2 sequences [0,2) [2,3); pivot position 1 empty */
    int64_t ip0[4] = {0, 2, 2, 3}, ip1[4] = {0, 1, 3, 4};
    int32_t id0[3] = {5, 6, 7}, id1[4] = {6, 8, 9, 7};
    float v0[3] = {1, 0, 2}, v1[4] = {0, 1, 1, 3};
    const int64_t *ips[2] = {ip0, ip1};
    const int32_t *idp[2] = {id0, id1};
    const float *vp[2] = {v0, v1};
    fc_ragged_dists d = {2, 3, ips, idp, vp};
    int64_t so[3] = {0, 2, 3};
    float ce0[2] = {1.0f, 2.0f}, ce1[2] = {0.5f, 2.0f};
    const float *ces[2] = {ce0, ce1};
    int32_t choice[3];
    CHECK(fc_fuse_min_ce(&d, so, 2, ces, 0, 1, choice, &err) == FC_OK);
    CHECK(choice[0] == 1 && choice[1] == 1 && choice[2] == 0); /* tie -> pivot */
    ce1[0] = NAN;
    CHECK(fc_fuse_min_ce(&d, so, 2, ces, 0, 1, choice, &err) == FC_OK && choice[0] == 0);
    ce1[0] = 0.5f;
    int64_t oi[4];
    int32_t oid[7];
    float ol[7];
    CHECK(fc_fuse_avg_ce(&d, so, 2, ces, 0, 1.0, oi, oid, ol, &err) == FC_OK);
    CHECK(oi[0] == 0 && oi[1] == 2 && oi[2] == 4 && oi[3] == 5); /* {5,6} {8,9} {7} */
    double tot = 0.0;
    for (int64_t j = oi[0]; j < oi[1]; j++) tot += exp(ol[j]);
    CHECK(fabs(tot - 1.0) < 1e-6 && oid[4] == 7 && fabs(ol[4]) < 1e-6);
    /* position 0: w = softmax(exp(-1), exp(-0.5)); id 6 gets w0 p0(6) + w1 */
    double w0 = exp(exp(-1.0)) / (exp(exp(-1.0)) + exp(exp(-0.5))), p06 = 1.0 / (1.0 + exp(1.0));
    CHECK(oid[0] == 6 && fabs(exp(ol[0]) - (w0 * p06 + (1.0 - w0))) < 1e-6);
    ip1[2] = 0; /* indptr decreasing */
    CHECK(fc_fuse_min_ce(&d, so, 2, ces, 0, 1, choice, &err) == FC_ERR_VALUE);
    CHECK(strstr(err.msg, "model 1") != NULL);
}

/* The 8-lane F16 conversions against the scalar ones (fp_convert.h, checked bit for bit
 * against NumPy in tests/test_convert.py): every F16 value, and F32 values around every
 * F16 rounding boundary plus specials. The BF16 store likewise against fcx_f32_to_bf16. */
static void test_vector_conversions(void) {
    static uint16_t all[65536];
    static float f[65536];
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    for (int i = 0; i < 65536; i += 8) fcv_f16_to_f32(all + i, f + i);
    int bad = 0;
    for (int i = 0; i < 65536; i++) {
        float want = fcx_f16_to_f32(all[i]);
        bad += memcmp(&want, f + i, 4) != 0;
    }
    CHECK_MSG(bad == 0, "%d F16 -> F32 mismatches", bad);
    static float src[1 << 16];
    uint16_t got[8], gotb[8];
    int n = 0, badh = 0, badb = 0;
    for (uint32_t h = 0; h < 0x7c00u && n + 6 <= (1 << 16); h += 3) { /* around each boundary */
        float x = fcx_f16_to_f32((uint16_t)h), y = fcx_f16_to_f32((uint16_t)(h + 1));
        float mid = x + (y - x) / 2; /* exact tie (halfway), and its neighbours */
        src[n++] = mid;
        src[n++] = nextafterf(mid, 0.0f);
        src[n++] = nextafterf(mid, INFINITY);
        src[n++] = -mid;
        src[n++] = x * 1.0000001f;
        src[n++] = (float)urand() * 70000.0f;
    }
    float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 65504.0f, 65519.99f,
                        65520.0f, 1e-8f, 2.98e-8f, 5.96e-8f, 6.1035e-5f, 1e30f, 3e-40f, 1.0f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0] && n < (1 << 16); i++)
        src[n++] = specials[i];
    uint32_t nan_payload = 0x7f800001u; /* payload that shifts to 0 */
    memcpy(&src[n++], &nan_payload, 4);
    while (n % 8) src[n++] = 1.0f;
    for (int i = 0; i < n; i += 8) {
        fcv_f32_to_f16(src + i, got);
        fc_row_store(gotb, FC_BF16, 0, 8, src + i);
        for (int j = 0; j < 8; j++) {
            badh += got[j] != fcx_f32_to_f16(src[i + j]);
            badb += gotb[j] != fcx_f32_to_bf16(src[i + j]);
        }
    }
    CHECK_MSG(badh == 0, "%d F32 -> F16 mismatches of %d", badh, n);
    CHECK_MSG(badb == 0, "%d F32 -> BF16 mismatches of %d", badb, n);
}

int main(void) {
    test_vector_conversions();
    make_inputs();
    test_against_reference(FC_F64, 1e-12, 1e-9, 0.0);
    test_against_reference(FC_F32, 2e-6, 2e-5, 1e-30);
    test_against_reference(FC_BF16, 2e-6, 1.0 / 256, 1e-30);
    test_against_reference(FC_F16, 2e-6, 1.0 / 2048, 6e-8 * N);
    test_inplace_threads_and_ignored();
    test_rejections();
    test_topk();
    test_fuse();
    return ctest_report("test_loss");
}
