/* strmap.h - internal helpers for the vocabulary code: a growable byte buffer and an
 * open-addressing hash map from byte strings to int64 ids. The map does not own the
 * strings: they live in a buffer that must outlive it and not move (offsets are stored). */
#ifndef FC_STRMAP_H
#define FC_STRMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct fc_buf {
    char  *data;
    size_t len, cap;
} fc_buf;

/* 0 on success, -1 when out of memory (the buffer is unchanged then). */
int  fc_buf_reserve(fc_buf *b, size_t extra);
int  fc_buf_append(fc_buf *b, const void *p, size_t n);
void fc_buf_free(fc_buf *b);

/* Keys are (base + off, len) with base supplied on every call, so the arena may grow
 * (realloc) between inserts. */
typedef struct fc_strmap {
    int64_t *off;  /* key offset in the arena, -1 = empty slot */
    int64_t *len;
    int64_t *val;
    size_t   cap, count;
} fc_strmap;

int     fc_strmap_init(fc_strmap *m, size_t expected);
void    fc_strmap_free(fc_strmap *m);
/* Insert key -> val. If the key exists: returns 1 and leaves *old = its value (unchanged
 * unless overwrite). 0 on insert, -1 on out of memory. */
int     fc_strmap_put(fc_strmap *m, const char *base, int64_t off, int64_t len, int64_t val,
                      int overwrite, int64_t *old);
int64_t fc_strmap_get(const fc_strmap *m, const char *base, const char *s, size_t len);

uint64_t fc_hash_bytes(const void *p, size_t n);

#endif
