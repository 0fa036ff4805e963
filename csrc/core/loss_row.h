/* loss_row.h - vectorised row primitives shared by the loss and top-k kernels
 * (loss_fusion.c, loss_topk.c): load a chunk of logits as float32, block max, exp-sum, and
 * store float32 values rounded once to F32/F16/BF16.
 *
 * Written with GCC/Clang vector extensions (8 x float32) so the same source gives SSE2 code
 * by default and AVX2/FMA code in the x86-64-v3 clone (FC_ROW_CLONES); no -ffast-math is
 * needed because every reduction is spelled out lane by lane. exp is a Cody-Waite range
 * reduction plus a degree-6 polynomial: relative error below 2e-7 (about 2 ulp) for results
 * above FLT_MIN, 0 below, exp(-inf) = 0, NaN stays NaN.
 */
#ifndef FC_LOSS_ROW_H
#define FC_LOSS_ROW_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fp_convert.h"
#include "fusechat.h"

#if defined(__GNUC__) && !defined(__clang__)
/* fused multiply-add in the exp polynomial where the ISA clone has it (~1.4x faster) */
#pragma GCC optimize("fp-contract=fast")
#endif

#define FC_CHUNK 512 /* elements per chunk: 2 KiB of float32, stays in L1 */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define FC_ROW_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FC_ROW_CLONES
#endif

/* hot helpers must inline into the cloned callers, or they run with the default ISA */
#define FC_INLINE static inline __attribute__((always_inline))

typedef float    fcv_f32 __attribute__((vector_size(32)));
typedef int32_t  fcv_i32 __attribute__((vector_size(32)));
typedef uint32_t fcv_u32 __attribute__((vector_size(32)));
typedef uint16_t fcv_u16 __attribute__((vector_size(16)));

/* macros, not functions: no vector is passed or returned by value (that would depend on
 * the ISA's calling convention, -Wpsabi) */
#define fcv_splat(x) ((fcv_f32){(x), (x), (x), (x), (x), (x), (x), (x)})
#define fcv_splati(x) ((fcv_i32){(x), (x), (x), (x), (x), (x), (x), (x)})
/* lanes where mask is all-ones take a, others b */
#define fcv_select(mask, a, b) \
    ((fcv_f32)(((mask) & (fcv_i32)(a)) | (~(mask) & (fcv_i32)(b))))

/* *px = exp(*px) lane by lane (through a pointer: no vector passed by value) */
FC_INLINE void fcv_exp(fcv_f32 *px) {
    fcv_f32 x = *px;
    fcv_i32 is_nan = x != x;
    fcv_i32 tiny = x < fcv_splat(-87.33654f); /* below FLT_MIN, and -inf */
    fcv_f32 xc = fcv_select(is_nan | tiny, fcv_splat(0.0f), x);
    xc = fcv_select(xc > fcv_splat(88.37626f), fcv_splat(88.37626f), xc);
    /* n = round(x / ln2) by the 1.5 * 2^23 trick (round to nearest in the default mode) */
    fcv_f32 n = (xc * fcv_splat(1.44269504f) + fcv_splat(12582912.0f)) - fcv_splat(12582912.0f);
    fcv_f32 r = xc - n * fcv_splat(0.693145752f);
    r = r - n * fcv_splat(1.42860677e-06f);
    fcv_f32 p = fcv_splat(1.0f / 720.0f);
    p = p * r + fcv_splat(1.0f / 120.0f);
    p = p * r + fcv_splat(1.0f / 24.0f);
    p = p * r + fcv_splat(1.0f / 6.0f);
    p = p * r + fcv_splat(0.5f);
    p = p * r + fcv_splat(1.0f);
    p = p * r + fcv_splat(1.0f);
    fcv_i32 ni = __builtin_convertvector(n, fcv_i32);
    fcv_f32 scale = (fcv_f32)((ni + fcv_splati(127)) << 23);
    fcv_f32 res = p * scale;
    res = fcv_select(tiny, fcv_splat(0.0f), res);
    *px = fcv_select(is_nan, x, res);
}

/* 8 x F16 -> F32, exact and branch-free: the 15 magnitude bits shifted into a float's
 * exponent/mantissa and scaled by 2^112 re-bias normals and turn subnormals into normals;
 * inf/NaN keep their mantissa bits under an all-ones exponent (as fcx_f16_to_f32). */
FC_INLINE void fcv_f16_to_f32(const uint16_t *h, float *out) {
    fcv_u16 h8;
    memcpy(&h8, h, 16);
    fcv_u32 u = __builtin_convertvector(h8, fcv_u32);
    fcv_u32 em = u & 0x7fffu, sign = (u & 0x8000u) << 16;
    fcv_f32 f = (fcv_f32)(em << 13) * fcv_splat(0x1p112f);
    fcv_u32 special = (fcv_u32)(em >= 0x7c00u);
    fcv_u32 bits = (special & ((em << 13) | 0x7f800000u)) | (~special & (fcv_u32)f);
    bits |= sign;
    memcpy(out, &bits, 32);
}

/* 8 x F32 -> F16, round to nearest even, branch-free (the classic magic-number method):
 * overflow -> inf; results below the normal range are rounded by adding a float whose ulp
 * is the F16 subnormal step; NaN keeps its top payload bits (as fcx_f32_to_f16). */
FC_INLINE void fcv_f32_to_f16(const float *in, uint16_t *h) {
    fcv_u32 u;
    memcpy(&u, in, 32);
    fcv_u32 sign = u & 0x80000000u, a = u ^ sign;
    /* subnormal/zero results: a + 0.5 (2^-1 has ulp 2^-24, the F16 subnormal step) */
    fcv_f32 sub_f = (fcv_f32)a + fcv_splat(0.5f);
    fcv_u32 sub = (fcv_u32)sub_f - 0x3f000000u;
    /* normal results: re-bias the exponent, add the rounding bias plus the lowest kept bit */
    fcv_u32 nrm = (a + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    fcv_u32 nan_r = 0x7c00u | ((a & 0x7fffffu) >> 13);
    nan_r -= (fcv_u32)(nan_r == 0x7c00u); /* a payload shifted to 0 becomes 1 (-(-1)) */
    fcv_u32 is_big = (fcv_u32)(a >= ((uint32_t)(127 + 16) << 23));
    fcv_u32 is_nan = (fcv_u32)(a > 0x7f800000u);
    fcv_u32 is_sub = (fcv_u32)(a < ((uint32_t)113 << 23));
    fcv_u32 r = (is_sub & sub) | (~is_sub & nrm);
    r = (is_big & 0x7c00u) | (~is_big & r);
    r = (is_nan & nan_r) | (~is_nan & r);
    r |= sign >> 16;
    fcv_u16 h8 = __builtin_convertvector(r, fcv_u16);
    memcpy(h, &h8, 16);
}

/* Convert len <= FC_CHUNK logits starting at element `off` of a row into buf (float32);
 * lanes up to the next multiple of 8 are filled with `pad`. */
FC_INLINE void fc_row_load(const void *row, fc_dtype dt, int64_t off, int len, float *buf,
                               float pad) {
    if (dt == FC_F32) {
        memcpy(buf, (const float *)row + off, (size_t)len * 4);
    } else {
        const uint16_t *h = (const uint16_t *)row + off;
        if (dt == FC_BF16) {
            int i = 0;
            for (; i + 8 <= len; i += 8) { /* bf16 -> f32 is a 16-bit shift, 8 lanes at once */
                fcv_u16 h8;
                memcpy(&h8, h + i, 16);
                fcv_u32 u = __builtin_convertvector(h8, fcv_u32) << 16;
                memcpy(buf + i, &u, 32);
            }
            for (; i < len; i++) {
                uint32_t u = (uint32_t)h[i] << 16;
                memcpy(buf + i, &u, 4);
            }
        } else {
            int i = 0;
            for (; i + 8 <= len; i += 8) fcv_f16_to_f32(h + i, buf + i);
            for (; i < len; i++) buf[i] = fcx_f16_to_f32(h[i]);
        }
    }
    for (int i = len; i < ((len + 7) & ~7); i++) buf[i] = pad;
}

/* max over buf[0, n8), n8 a multiple of 8; NaN if any element is NaN */
FC_INLINE float fc_buf_max(const float *buf, int n8) {
    fcv_f32 m = fcv_splat(-INFINITY);
    for (int i = 0; i < n8; i += 8) {
        fcv_f32 x;
        memcpy(&x, buf + i, 32);
        m = fcv_select((x > m) | (x != x), x, m); /* a NaN lane stays NaN */
    }
    float r = m[0];
    for (int j = 1; j < 8; j++) r = (m[j] > r || m[j] != m[j]) ? m[j] : r;
    return r;
}

/* sum of exp(buf[i] - shift) over [0, n8) (padding lanes hold -inf and add 0) */
FC_INLINE double fc_buf_expsum(const float *buf, int n8, float shift) {
    fcv_f32 s = fcv_splat(0.0f), sh = fcv_splat(shift);
    for (int i = 0; i < n8; i += 8) {
        fcv_f32 x;
        memcpy(&x, buf + i, 32);
        x = x - sh;
        fcv_exp(&x);
        s += x;
    }
    double r = 0.0;
    for (int j = 0; j < 8; j++) r += s[j];
    return r;
}

/* buf[i] = exp(buf[i] - shift) * mul over [0, n8) */
FC_INLINE void fc_buf_softmax(float *buf, int n8, float shift, float mul) {
    fcv_f32 sh = fcv_splat(shift), mu = fcv_splat(mul);
    for (int i = 0; i < n8; i += 8) {
        fcv_f32 x;
        memcpy(&x, buf + i, 32);
        x = x - sh;
        fcv_exp(&x);
        x = x * mu;
        memcpy(buf + i, &x, 32);
    }
}

/* Store len float32 values at element `off` of a row of dtype dt, rounding once. */
FC_INLINE void fc_row_store(void *row, fc_dtype dt, int64_t off, int len, const float *buf) {
    if (dt == FC_F32) {
        memcpy((float *)row + off, buf, (size_t)len * 4);
    } else if (dt == FC_BF16) {
        uint16_t *h = (uint16_t *)row + off;
        int i = 0;
        for (; i + 8 <= len; i += 8) { /* round to nearest even, NaN -> quiet NaN; 8 lanes */
            fcv_u32 u;
            memcpy(&u, buf + i, 32);
            fcv_u32 nan = (fcv_u32)((u & 0x7fffffffu) > 0x7f800000u);
            fcv_u32 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
            r = (nan & (((u >> 16) & 0x8000u) | 0x7fc0u)) | (~nan & r);
            fcv_u16 h8 = __builtin_convertvector(r, fcv_u16);
            memcpy(h + i, &h8, 16);
        }
        for (; i < len; i++) {
            uint32_t u;
            memcpy(&u, buf + i, 4);
            uint32_t nan = (u & 0x7fffffffu) > 0x7f800000u;
            uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
            h[i] = (uint16_t)(nan ? (((u >> 16) & 0x8000u) | 0x7fc0u) : r);
        }
    } else {
        uint16_t *h = (uint16_t *)row + off;
        int i = 0;
        for (; i + 8 <= len; i += 8) fcv_f32_to_f16(buf + i, h + i);
        for (; i < len; i++) h[i] = fcx_f32_to_f16(buf[i]);
    }
}

/* One logit, exactly (F64 rows are accepted by the loss for float64 gradient checks). */
static inline double fc_row_get(const void *row, fc_dtype dt, int64_t i) {
    if (dt == FC_F64) return ((const double *)row)[i];
    if (dt == FC_F32) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    return dt == FC_BF16 ? fcx_bf16_to_f32(h) : fcx_f16_to_f32(h);
}

/* Store one value computed in double, rounded once to the row's dtype. */
static inline void fc_row_put(void *row, fc_dtype dt, int64_t i, double x) {
    switch (dt) {
    case FC_F64:  ((double *)row)[i] = x; break;
    case FC_F32:  ((float *)row)[i] = (float)x; break;
    case FC_BF16: ((uint16_t *)row)[i] = fcx_f64_to_bf16(x); break;
    default:      ((uint16_t *)row)[i] = fcx_f64_to_f16(x); break;
    }
}

/* The float64 row path: plain double loops (for gradient checks, not for speed). */
static inline double fc_row_lse_f64(const double *z, int64_t v, double *m_out) {
    double m = -INFINITY, d = 0.0;
    for (int64_t i = 0; i < v; i++)
        if (z[i] > m || z[i] != z[i]) m = z[i];
    *m_out = m;
    if (m != m || m == INFINITY) return NAN;
    if (m == -INFINITY) return -INFINITY;
    for (int64_t i = 0; i < v; i++) d += exp(z[i] - m);
    return log(d);
}

/* Online logsumexp of a whole row in fp32 chunks, kept as max m and log d with
 * d = sum exp(z - m): then z - lse = (z - m) - log d loses nothing to the magnitude of m
 * (at |z| ~ 1e4 an fp32 lse alone would carry an error of ~1e-3). Returns log d; NaN in
 * *m or the result when a logit is NaN or +inf. */
FC_INLINE double fc_row_lse(const void *row, fc_dtype dt, int64_t v, float *buf,
                                double *m_out) {
    if (dt == FC_F64) return fc_row_lse_f64((const double *)row, v, m_out);
    float m = -INFINITY;
    double d = 0.0;
    for (int64_t off = 0; off < v; off += FC_CHUNK) {
        int len = (int)(v - off < FC_CHUNK ? v - off : FC_CHUNK), n8 = (len + 7) & ~7;
        fc_row_load(row, dt, off, len, buf, -INFINITY);
        float bm = fc_buf_max(buf, n8);
        if (bm != bm || bm == INFINITY) {
            *m_out = NAN;
            return NAN;
        }
        if (bm == -INFINITY) continue;
        if (bm > m) {
            d = d * exp((double)m - (double)bm);
            m = bm;
        }
        d += fc_buf_expsum(buf, n8, m);
    }
    *m_out = m;
    return log(d);
}

/* grow[i] = exp(z[i] - m) * mul over the whole row, rounded once to dt (may alias row). */
FC_INLINE void fc_row_softmax_store(const void *row, void *grow, fc_dtype dt, int64_t v,
                                        double m, double mul, float *buf) {
    if (dt == FC_F64) {
        const double *z = (const double *)row;
        double *g = (double *)grow;
        for (int64_t i = 0; i < v; i++) g[i] = exp(z[i] - m) * mul;
        return;
    }
    for (int64_t off = 0; off < v; off += FC_CHUNK) {
        int len = (int)(v - off < FC_CHUNK ? v - off : FC_CHUNK), n8 = (len + 7) & ~7;
        fc_row_load(row, dt, off, len, buf, -INFINITY);
        fc_buf_softmax(buf, n8, (float)m, (float)mul);
        fc_row_store(grow, dt, off, len, buf);
    }
}

#endif
