/* fuzz_reader.h - the fuzz targets' input cursor: bytes taken from the front of libFuzzer's
 * buffer, zeros once it runs out (so every input decodes to some call). */
#ifndef FC_FUZZ_READER_H
#define FC_FUZZ_READER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *p;
    size_t n;
} reader;

static inline uint8_t take8(reader *r) {
    if (!r->n) return 0;
    r->n--;
    return *r->p++;
}

static inline int32_t take32(reader *r) {
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) x = (x << 8) | take8(r);
    return (int32_t)x;
}

#endif
