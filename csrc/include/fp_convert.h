/* fp_convert.h - scalar float conversions shared by the C core (dtype.c) and the CUDA
 * kernels (csrc/cuda/convert.cu): one implementation, compiled for both.
 *
 * Every conversion rounds once, to nearest with ties to even, from the exact source value
 * (F64 -> BF16 does not go through F32, which would round twice). NaN conventions follow the
 * libraries users compare against, bit for bit:
 *   to/from F16 (NumPy):      payload bits shifted, kept signalling; a payload that shifts to
 *                             zero becomes 1 so the value stays NaN
 *   to BF16 (ml_dtypes):      sign | 0x7FC0, the canonical quiet NaN
 *   BF16 -> F16 (ml_dtypes):  sign | 0x7E00
 *   F32 <-> F64, BF16 -> F64: what x86-64 and AArch64 do in hardware (NumPy's astype): sign
 *                             kept, quiet bit set, payload shifted (truncated to F32)
 * All of these work on the bit patterns with integer operations, so that the GPU, whose
 * float conversions return one canonical NaN, gives the same bits as the CPU.
 *
 * An internal header, not part of the public API (fusechat.h): it lives in csrc/include/
 * only because the core (csrc/core) and the CUDA kernels (csrc/cuda) both compile it, and
 * the include path (-Icsrc/include) is what both builds share.
 */
#ifndef FC_FP_CONVERT_H
#define FC_FP_CONVERT_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define FC_HD __host__ __device__ __forceinline__
#else
#define FC_HD static inline
#endif

FC_HD uint32_t fcx_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
FC_HD float fcx_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
FC_HD uint64_t fcx_f64_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
FC_HD double fcx_bits_f64(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

FC_HD float fcx_bf16_to_f32(uint16_t h) { return fcx_bits_f32((uint32_t)h << 16); }

FC_HD uint16_t fcx_f32_to_bf16(float f) {
    uint32_t u = fcx_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) & 0x8000u) | 0x7fc0u;
    /* adding 0x7fff plus the lowest kept bit rounds to nearest even; a carry out of the
     * mantissa moves into the exponent, and past the largest finite value gives inf */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

FC_HD float fcx_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return fcx_bits_f32(sign | 0x7f800000u | (man << 13)); /* inf, NaN */
    if (exp == 0) {
        if (man == 0) return fcx_bits_f32(sign);
        /* subnormal: value = man * 2^-24, exactly representable in f32 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return fcx_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* Round a finite double to a binary format with `mbits` stored mantissa bits and normal
 * exponents in [emin, emax]; returns the bit pattern without sign (inf on overflow). */
FC_HD uint32_t fcx_round_f64_to_small(uint64_t b, int mbits, int emin, int emax) {
    int exp = (int)((b >> 52) & 0x7ff);
    uint64_t man = b & 0xfffffffffffffull;
    if (exp == 0) return 0; /* an f64 subnormal is far below the smallest f32 value */
    int e = exp - 1023;
    uint32_t inf = (uint32_t)(emax - emin + 2) << mbits;
    if (e > emax) return inf;
    uint64_t m = man | (1ull << 52); /* value = m * 2^(e - 52) */
    int shift = e >= emin ? 52 - mbits : 52 - mbits + (emin - e);
    if (shift >= 54) return 0; /* below half the smallest subnormal */
    uint64_t q = m >> shift, rem = m & ((1ull << shift) - 1), half = 1ull << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    if (e < emin) return (uint32_t)q; /* subnormal; q == 2^mbits is the smallest normal */
    /* normal: q in [2^mbits, 2^(mbits+1)]; a carry bumps the exponent (possibly to inf) */
    return ((uint32_t)(e - emin + 1) << mbits) + (uint32_t)(q - (1ull << mbits));
}

FC_HD uint16_t fcx_f64_to_f16(double d) {
    uint64_t b = fcx_f64_bits(d);
    uint16_t sign = (uint16_t)((b >> 48) & 0x8000u);
    if (((b >> 52) & 0x7ff) == 0x7ff) {
        uint64_t man = b & 0xfffffffffffffull;
        if (!man) return sign | 0x7c00u;
        uint16_t r = (uint16_t)(0x7c00u | (man >> 42));
        return sign | (r == 0x7c00u ? 0x7c01u : r);
    }
    return sign | (uint16_t)fcx_round_f64_to_small(b, 10, -14, 15);
}

FC_HD uint16_t fcx_f32_to_f16(float f) {
    uint32_t u = fcx_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    if ((u & 0x7f800000u) == 0x7f800000u) {
        uint32_t man = u & 0x7fffffu;
        if (!man) return sign | 0x7c00u;
        uint16_t r = (uint16_t)(0x7c00u | (man >> 13));
        return sign | (r == 0x7c00u ? 0x7c01u : r);
    }
    return sign | (uint16_t)fcx_round_f64_to_small(fcx_f64_bits((double)f), 10, -14, 15);
}

FC_HD uint16_t fcx_f64_to_bf16(double d) {
    uint64_t b = fcx_f64_bits(d);
    uint16_t sign = (uint16_t)((b >> 48) & 0x8000u);
    if (((b >> 52) & 0x7ff) == 0x7ff)
        return sign | ((b & 0xfffffffffffffull) ? 0x7fc0u : 0x7f80u);
    return sign | (uint16_t)fcx_round_f64_to_small(b, 7, -126, 127);
}

/* F32 bits -> F64, exact; NaN: quiet bit set, payload shifted up */
FC_HD double fcx_f32_bits_to_f64(uint32_t u) {
    uint64_t sign = (uint64_t)(u >> 31) << 63;
    uint32_t exp = (u >> 23) & 0xffu, man = u & 0x7fffffu;
    if (exp == 0xff) /* inf, NaN (a NaN comes back quiet, as the hardware does) */
        return fcx_bits_f64(sign | 0x7ff0000000000000ull | (man ? 0x8000000000000ull : 0) |
                            ((uint64_t)man << 29));
    if (exp == 0) {
        /* zero or subnormal: man * 2^-149, exact in F64 (no NaN involved) */
        double v = (double)man * 0x1p-149;
        return sign ? -v : v;
    }
    return fcx_bits_f64(sign | ((uint64_t)(exp + 896u) << 52) | ((uint64_t)man << 29));
}

FC_HD double fcx_f32_to_f64(float f) { return fcx_f32_bits_to_f64(fcx_f32_bits(f)); }

FC_HD double fcx_bf16_to_f64(uint16_t h) { return fcx_f32_bits_to_f64((uint32_t)h << 16); }

/* F64 -> F32, rounded once to nearest even; NaN: quiet bit set, payload truncated */
FC_HD float fcx_f64_to_f32(double d) {
    uint64_t b = fcx_f64_bits(d);
    uint32_t sign = (uint32_t)(b >> 32) & 0x80000000u;
    if (((b >> 52) & 0x7ff) == 0x7ff) {
        uint64_t man = b & 0xfffffffffffffull;
        return fcx_bits_f32(sign | 0x7f800000u | (man ? 0x400000u | (uint32_t)(man >> 29) : 0));
    }
    return fcx_bits_f32(sign | fcx_round_f64_to_small(b, 23, -126, 127));
}

FC_HD double fcx_f16_to_f64(uint16_t h) {
    if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) /* NaN: keep it signalling, as NumPy */
        return fcx_bits_f64(((uint64_t)(h & 0x8000u) << 48) | 0x7ff0000000000000ull |
                            ((uint64_t)(h & 0x3ffu) << 42));
    return (double)fcx_f16_to_f32(h);
}

FC_HD uint16_t fcx_bf16_to_f16(uint16_t h) {
    if ((h & 0x7f80u) == 0x7f80u && (h & 0x7fu)) return (uint16_t)((h & 0x8000u) | 0x7e00u);
    return fcx_f32_to_f16(fcx_bf16_to_f32(h));
}

#endif /* FC_FP_CONVERT_H */
