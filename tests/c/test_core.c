/* test_core.c - status helpers, parallel_for and the scalar/array float conversions.
 * The conversions are checked bit for bit against NumPy and ml_dtypes in
 * tests/test_convert.py; here: invariants that need no reference (exhaustive round trips,
 * thread-count independence), under the sanitizers. */
#include <errno.h>
#include <math.h>
#include <stdint.h>

#include "ctest.h"
#include "fusechat.h"

static void test_errors(void) {
    fc_error err;
    fc_error_clear(&err);
    CHECK(err.code == FC_OK && err.msg[0] == '\0');
    CHECK(fc_error_set(&err, FC_ERR_VALUE, "bad %s=%d", "x", 3) == FC_ERR_VALUE);
    CHECK(strcmp(err.msg, "bad x=3") == 0);
    fc_error_set_rule(&err, FC_ERR_SAFETENSORS, "/a/b.safetensors", "header_too_large", "t");
    CHECK(strcmp(err.rule, "header_too_large") == 0 && strcmp(err.path, "/a/b.safetensors") == 0);
    fc_error_set_io(&err, ENOENT, "/nope", "cannot open %s", "/nope");
    CHECK(err.code == FC_ERR_IO && err.sys_errno == ENOENT);
    CHECK(strstr(err.msg, "cannot open /nope: ") == err.msg);
    /* a message longer than the buffer is cut, never overflows */
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    fc_error_set(&err, FC_ERR_VALUE, "%s", big);
    CHECK(strlen(err.msg) == sizeof err.msg - 1);
    CHECK(fc_error_set(NULL, FC_ERR_TYPE, "no struct") == FC_ERR_TYPE);
    for (int s = 0; s <= FC_ERR_FORMAT; s++) CHECK(strcmp(fc_status_name(s), "unknown status"));
}

static void test_dtypes(void) {
    for (int i = 0; i < FC_DTYPE_COUNT; i++) {
        const char *n = fc_dtype_name(i);
        CHECK(n && fc_dtype_from_name(n, strlen(n)) == i && fc_dtype_size(i) > 0);
    }
    CHECK(fc_dtype_from_name("F3", 2) == -1 && fc_dtype_from_name("F32x", 3) == FC_F32);
    CHECK(fc_dtype_size(FC_DTYPE_COUNT) == 0 && fc_dtype_name(FC_DTYPE_COUNT) == NULL);
}

typedef struct { int64_t *hits; } hit_ctx;
static fc_status mark(void *ctx, int64_t b, int64_t e) {
    hit_ctx *c = ctx;
    for (int64_t i = b; i < e; i++) c->hits[i]++;
    return FC_OK;
}
static fc_status fail_odd(void *ctx, int64_t b, int64_t e) {
    (void)ctx; (void)e;
    return b > 0 ? FC_ERR_VALUE : FC_OK;
}

static void test_parallel_for(void) {
    int64_t n = 100003;
    int64_t *hits = calloc((size_t)n, sizeof *hits);
    hit_ctx c = {hits};
    int ts[] = {1, 2, 3, 7, 64};
    for (size_t t = 0; t < sizeof ts / sizeof *ts; t++) {
        memset(hits, 0, (size_t)n * sizeof *hits);
        CHECK(fc_parallel_for(n, 1000, ts[t], mark, &c) == FC_OK);
        int ok = 1;
        for (int64_t i = 0; i < n; i++) ok &= hits[i] == 1;
        CHECK_MSG(ok, "threads=%d: every index exactly once", ts[t]);
    }
    CHECK(fc_parallel_for(0, 1, 4, mark, &c) == FC_OK);
    CHECK(fc_parallel_for(1000, 10, 4, fail_odd, NULL) == FC_ERR_VALUE);
    CHECK(fc_default_threads() >= 1);
    free(hits);
}

static int same_bits16(uint16_t a, uint16_t b) { return a == b; }

static void test_conversions_exhaustive(void) {
    /* every f16 and bf16 pattern: to f32 and back is the identity (NaNs keep their
     * payload for f16; bf16 NaNs become the canonical quiet NaN with their sign) */
    int bad_f16 = 0, bad_bf16 = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t x = (uint16_t)h;
        if (!same_bits16(fc_f32_to_f16(fc_f16_to_f32(x)), x)) bad_f16++;
        float f = fc_bf16_to_f32(x);
        uint16_t back = fc_f32_to_bf16(f);
        uint16_t want = isnan(f) ? (uint16_t)((x & 0x8000u) | 0x7fc0u) : x;
        if (back != want) bad_bf16++;
        /* f64 paths agree with the f32 paths on exactly representable values */
        if (!isnan(f) && fc_f64_to_bf16((double)f) != x) bad_bf16++;
        float g = fc_f16_to_f32(x);
        if (!isnan(g) && fc_f64_to_f16((double)g) != x) bad_f16++;
    }
    CHECK_MSG(bad_f16 == 0, "%d f16 patterns did not round-trip", bad_f16);
    CHECK_MSG(bad_bf16 == 0, "%d bf16 patterns did not round-trip", bad_bf16);
    /* ties to even, overflow and the smallest subnormals */
    CHECK(fc_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);              /* tie -> even (down) */
    CHECK(fc_f32_to_bf16(1.0f + 0x1p-7f + 0x1p-8f) == 0x3f82);    /* tie -> even (up) */
    CHECK(fc_f64_to_bf16(1.0 + 0x1p-8 + 0x1p-30) == 0x3f81);      /* one rounding, not two */
    CHECK(fc_f32_to_f16(65520.0f) == 0x7c00 && fc_f32_to_f16(65519.0f) == 0x7bff);
    CHECK(fc_f32_to_f16(0x1p-25f) == 0 && fc_f32_to_f16(0x1.000002p-25f) == 1);
    CHECK(fc_f32_to_f16(-0x1p-24f) == 0x8001);
    CHECK(fc_f32_to_bf16(INFINITY) == 0x7f80 && fc_f32_to_bf16(-INFINITY) == 0xff80);
}

static void test_array_convert(void) {
    int64_t n = 1 << 20;
    float *src = malloc((size_t)n * 4);
    uint16_t *a = malloc((size_t)n * 2), *b = malloc((size_t)n * 2);
    uint32_t s = 12345;
    for (int64_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        memcpy(&src[i], &s, 4);
    }
    fc_error err;
    CHECK(fc_convert(src, FC_F32, a, FC_BF16, n, 1, &err) == FC_OK);
    CHECK(fc_convert(src, FC_F32, b, FC_BF16, n, 7, &err) == FC_OK);
    CHECK(memcmp(a, b, (size_t)n * 2) == 0);
    int ok = 1;
    for (int64_t i = 0; i < n; i++) ok &= a[i] == fc_f32_to_bf16(src[i]);
    CHECK(ok);
    /* unaligned source and destination */
    unsigned char *buf = malloc((size_t)n * 4 + 1), *out = malloc((size_t)n * 2 + 1);
    memcpy(buf + 1, src, (size_t)n * 4);
    CHECK(fc_convert(buf + 1, FC_F32, out + 1, FC_BF16, n, 2, &err) == FC_OK);
    CHECK(memcmp(out + 1, a, (size_t)n * 2) == 0);
    CHECK(fc_convert(src, FC_I32, a, FC_BF16, n, 1, &err) == FC_ERR_TYPE);
    CHECK(strstr(err.msg, "I32") != NULL);
    CHECK(fc_convert(src, FC_F32, a, FC_BF16, -1, 1, &err) == FC_ERR_VALUE);
    free(src); free(a); free(b); free(buf); free(out);
}

int main(void) {
    test_errors();
    test_dtypes();
    test_parallel_for();
    test_conversions_exhaustive();
    test_array_convert();
    return ctest_report("test_core");
}
