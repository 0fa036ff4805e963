/* rng.h - the counter-based generator of rng.c as inline functions, so the mask loops of
 * the merge kernels inline it (see rng.c for what it is and why). */
#ifndef FC_RNG_H
#define FC_RNG_H

#include <stdint.h>

static inline uint64_t fcx_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t fcx_rng_stream(uint64_t seed, uint64_t tensor_key, uint64_t model) {
    uint64_t s = fcx_mix64(seed + 0x9e3779b97f4a7c15ull);
    s = fcx_mix64(s ^ tensor_key);
    return fcx_mix64(s + (model + 1) * 0x9e3779b97f4a7c15ull);
}

/* Output number `index` of splitmix64 started at `stream`: 24 random bits as a float in
 * [0, 1) (every value exact in float32; the int32 cast keeps the conversion cheap). */
static inline float fcx_rng_uniform(uint64_t stream, uint64_t index) {
    uint64_t h = fcx_mix64(stream + (index + 1) * 0x9e3779b97f4a7c15ull);
    return (float)(int32_t)(h >> 40) * 0x1p-24f;
}

/* x if keep, else +0.0, without a branch (masks are random: a branch mispredicts half
 * the time) */
static inline float fcx_keep_or_zero(float x, int keep) {
    union { float f; uint32_t u; } v;
    v.f = x;
    v.u &= (uint32_t)0 - (uint32_t)(keep != 0);
    return v.f;
}

#endif
