/* rng.c - a counter-based random generator for DARE/DELLA masks.
 *
 * Every draw is a pure function of (seed, tensor key, model index, element index): a
 * splitmix64-style finaliser applied twice (once to derive the stream, once per element).
 * No state is carried between elements, so chunks can be computed by any thread in any
 * order and the masks never depend on the thread count. The finaliser is the one of
 * splitmix64 (Steele, Lea, Flood 2014), which passes BigCrush as a counter hash. */
#include "fusechat.h"

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t fc_rng_stream(uint64_t seed, uint64_t tensor_key, uint64_t model) {
    uint64_t s = mix64(seed + 0x9e3779b97f4a7c15ull);
    s = mix64(s ^ tensor_key);
    return mix64(s + (model + 1) * 0x9e3779b97f4a7c15ull);
}

float fc_rng_uniform(uint64_t stream, uint64_t index) {
    uint64_t h = mix64(stream ^ mix64(index * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull));
    return (float)(h >> 40) * 0x1p-24f; /* 24 bits: every value exact in float32 */
}

uint64_t fc_merge_tensor_key(const char *name) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
    for (const unsigned char *c = (const unsigned char *)name; c && *c; c++) {
        h ^= *c;
        h *= 0x100000001b3ull;
    }
    return h;
}
