/* dtype.c - the dtype table and array conversions between F16, BF16, F32 and F64.
 * Rounding and NaN rules: fp_convert.h. */
#include <string.h>

#include "fusechat.h"
#include "fp_convert.h"

static const struct { const char *name; size_t size; } DTYPES[FC_DTYPE_COUNT] = {
    [FC_BOOL] = {"BOOL", 1},   [FC_U8] = {"U8", 1},     [FC_I8] = {"I8", 1},
    [FC_I16] = {"I16", 2},     [FC_U16] = {"U16", 2},   [FC_F16] = {"F16", 2},
    [FC_BF16] = {"BF16", 2},   [FC_I32] = {"I32", 4},   [FC_U32] = {"U32", 4},
    [FC_F32] = {"F32", 4},     [FC_F64] = {"F64", 8},   [FC_I64] = {"I64", 8},
    [FC_U64] = {"U64", 8},     [FC_F8_E4M3] = {"F8_E4M3", 1},
    [FC_F8_E5M2] = {"F8_E5M2", 1},
};

size_t fc_dtype_size(fc_dtype dt) {
    return (unsigned)dt < FC_DTYPE_COUNT ? DTYPES[dt].size : 0;
}

const char *fc_dtype_name(fc_dtype dt) {
    return (unsigned)dt < FC_DTYPE_COUNT ? DTYPES[dt].name : NULL;
}

int fc_dtype_from_name(const char *s, size_t len) {
    for (int i = 0; i < FC_DTYPE_COUNT; i++)
        if (strlen(DTYPES[i].name) == len && memcmp(DTYPES[i].name, s, len) == 0) return i;
    return -1;
}

int fc_dtype_is_float(fc_dtype dt) {
    return dt == FC_F16 || dt == FC_BF16 || dt == FC_F32 || dt == FC_F64;
}

/* ------------------------------------------------------------------------------------ */
/* scalar conversions (the implementation is in fp_convert.h, shared with CUDA) */

float fc_bf16_to_f32(uint16_t h) { return fcx_bf16_to_f32(h); }
uint16_t fc_f32_to_bf16(float f) { return fcx_f32_to_bf16(f); }
float fc_f16_to_f32(uint16_t h) { return fcx_f16_to_f32(h); }
uint16_t fc_f32_to_f16(float f) { return fcx_f32_to_f16(f); }
uint16_t fc_f64_to_f16(double d) { return fcx_f64_to_f16(d); }
uint16_t fc_f64_to_bf16(double d) { return fcx_f64_to_bf16(d); }

/* ------------------------------------------------------------------------------------ */
/* array conversions: one loop per (src, dst) pair, unaligned loads and stores */

typedef struct {
    const unsigned char *src;
    unsigned char       *dst;
    fc_dtype             sdt, ddt;
} convert_job;

#define LOOP(STYPE, DTYPE, EXPR)                                          \
    for (int64_t i = b; i < e; i++) {                                     \
        STYPE x;                                                          \
        memcpy(&x, s + i * (int64_t)sizeof(STYPE), sizeof(STYPE));        \
        DTYPE y = (EXPR);                                                 \
        memcpy(d + i * (int64_t)sizeof(DTYPE), &y, sizeof(DTYPE));        \
    }

#define PAIR(a, b) ((a) * FC_DTYPE_COUNT + (b))

/* Below this many elements per range the output may still be in cache: plain stores. */
#define STREAM_MIN (1 << 18)

#if defined(__SSE2__)
#include <emmintrin.h>
/* bf16 -> f32 of a large range (loading a checkpoint): the output is bigger than the
 * caches, so streaming stores skip reading each output line before writing it; this is
 * about a third of the memory traffic. Same result as fcx_bf16_to_f32 (a 16-bit shift). */
static void bf16_to_f32_stream(const unsigned char *s, unsigned char *d, int64_t b,
                               int64_t e) {
    int64_t i = b;
    for (; i < e && ((uintptr_t)(d + 4 * i) & 15); i++) {
        uint16_t x;
        memcpy(&x, s + 2 * i, 2);
        float y = fcx_bf16_to_f32(x);
        memcpy(d + 4 * i, &y, 4);
    }
    const __m128i zero = _mm_setzero_si128();
    for (; i + 8 <= e; i += 8) {
        __m128i x = _mm_loadu_si128((const __m128i *)(s + 2 * i));
        _mm_stream_si128((__m128i *)(d + 4 * i), _mm_unpacklo_epi16(zero, x));
        _mm_stream_si128((__m128i *)(d + 4 * i + 16), _mm_unpackhi_epi16(zero, x));
    }
    _mm_sfence();
    for (; i < e; i++) {
        uint16_t x;
        memcpy(&x, s + 2 * i, 2);
        float y = fcx_bf16_to_f32(x);
        memcpy(d + 4 * i, &y, 4);
    }
}
#endif

static fc_status convert_range(void *ctx, int64_t b, int64_t e) {
    const convert_job *j = (const convert_job *)ctx;
    const unsigned char *s = j->src;
    unsigned char *d = j->dst;
    switch (PAIR(j->sdt, j->ddt)) {
    case PAIR(FC_BF16, FC_F32):
#if defined(__SSE2__)
        if (e - b >= STREAM_MIN) { bf16_to_f32_stream(s, d, b, e); break; }
#endif
        LOOP(uint16_t, float, fcx_bf16_to_f32(x));
        break;
    case PAIR(FC_F16, FC_F32):  LOOP(uint16_t, float, fcx_f16_to_f32(x)); break;
    case PAIR(FC_F64, FC_F32):  LOOP(double, float, fcx_f64_to_f32(x)); break;
    case PAIR(FC_F32, FC_BF16): LOOP(float, uint16_t, fcx_f32_to_bf16(x)); break;
    case PAIR(FC_F16, FC_BF16): LOOP(uint16_t, uint16_t, fcx_f32_to_bf16(fcx_f16_to_f32(x))); break;
    case PAIR(FC_F64, FC_BF16): LOOP(double, uint16_t, fcx_f64_to_bf16(x)); break;
    case PAIR(FC_F32, FC_F16):  LOOP(float, uint16_t, fcx_f32_to_f16(x)); break;
    case PAIR(FC_BF16, FC_F16): LOOP(uint16_t, uint16_t, fcx_bf16_to_f16(x)); break;
    case PAIR(FC_F64, FC_F16):  LOOP(double, uint16_t, fcx_f64_to_f16(x)); break;
    case PAIR(FC_F32, FC_F64):  LOOP(float, double, fcx_f32_to_f64(x)); break;
    case PAIR(FC_BF16, FC_F64): LOOP(uint16_t, double, fcx_bf16_to_f64(x)); break;
    case PAIR(FC_F16, FC_F64):  LOOP(uint16_t, double, fcx_f16_to_f64(x)); break;
    default: { /* same dtype: a copy */
        size_t es = fc_dtype_size(j->sdt);
        memcpy(d + b * (int64_t)es, s + b * (int64_t)es, (size_t)(e - b) * es);
    }
    }
    return FC_OK;
}

fc_status fc_convert(const void *src, fc_dtype src_dt, void *dst, fc_dtype dst_dt, int64_t n,
                     int nthreads, fc_error *err) {
    if (!fc_dtype_is_float(src_dt) || !fc_dtype_is_float(dst_dt))
        return fc_error_set(err, FC_ERR_TYPE,
                            "fc_convert: dtypes must be F16, BF16, F32 or F64, got %s -> %s",
                            fc_dtype_name(src_dt) ? fc_dtype_name(src_dt) : "?",
                            fc_dtype_name(dst_dt) ? fc_dtype_name(dst_dt) : "?");
    if (n < 0) return fc_error_set(err, FC_ERR_VALUE, "fc_convert: negative count %lld",
                                   (long long)n);
    if (n == 0) return FC_OK;
    if (!src || !dst) return fc_error_set(err, FC_ERR_VALUE, "fc_convert: NULL buffer");
    convert_job job = {(const unsigned char *)src, (unsigned char *)dst, src_dt, dst_dt};
    /* 256k elements per thread at least: below that, starting a thread costs more */
    return fc_parallel_for(n, 1 << 18, nthreads, convert_range, &job);
}
