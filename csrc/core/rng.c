/* rng.c - a counter-based random generator for DARE/DELLA masks.
 *
 * Every draw is a pure function of (seed, tensor key, model index, element index): the
 * (seed, tensor, model) triple is hashed into a 64-bit stream start, and element i takes
 * output i of splitmix64 from there (state = start + (i + 1) * golden gamma, finalised).
 * No state is carried between elements, so chunks can be computed by any thread in any
 * order and the masks never depend on the thread count. The finaliser is the one of
 * splitmix64 (Steele, Lea, Flood 2014), which passes BigCrush as a counter hash. */
#include "fusechat.h"
#include "rng.h"

uint64_t fc_rng_stream(uint64_t seed, uint64_t tensor_key, uint64_t model) {
    return fcx_rng_stream(seed, tensor_key, model);
}

float fc_rng_uniform(uint64_t stream, uint64_t index) { return fcx_rng_uniform(stream, index); }

uint64_t fc_merge_tensor_key(const char *name) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
    for (const unsigned char *c = (const unsigned char *)name; c && *c; c++) {
        h ^= *c;
        h *= 0x100000001b3ull;
    }
    return h;
}
