/* strmap.c - byte buffer and string -> id hash map (see strmap.h). */
#include <stdlib.h>
#include <string.h>

#include "strmap.h"

int fc_buf_reserve(fc_buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int fc_buf_append(fc_buf *b, const void *p, size_t n) {
    if (fc_buf_reserve(b, n + 1)) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0'; /* keeps the arena printable in a debugger; not counted */
    return 0;
}

void fc_buf_free(fc_buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

uint64_t fc_hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a, then a final mix against clustering */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static int alloc_slots(fc_strmap *m, size_t cap) {
    m->off = malloc(cap * sizeof *m->off);
    m->len = malloc(cap * sizeof *m->len);
    m->val = malloc(cap * sizeof *m->val);
    if (!m->off || !m->len || !m->val) {
        free(m->off); free(m->len); free(m->val);
        m->off = m->len = m->val = NULL;
        return -1;
    }
    for (size_t i = 0; i < cap; i++) m->off[i] = -1;
    m->cap = cap;
    m->count = 0;
    return 0;
}

int fc_strmap_init(fc_strmap *m, size_t expected) {
    size_t cap = 16;
    while (cap < 2 * expected + 2) cap <<= 1;
    return alloc_slots(m, cap);
}

void fc_strmap_free(fc_strmap *m) {
    free(m->off); free(m->len); free(m->val);
    memset(m, 0, sizeof *m);
}

static size_t find_slot(const fc_strmap *m, const char *base, const char *s, size_t len) {
    size_t mask = m->cap - 1, h = (size_t)fc_hash_bytes(s, len) & mask;
    while (m->off[h] >= 0) {
        if ((size_t)m->len[h] == len && memcmp(base + m->off[h], s, len) == 0) return h;
        h = (h + 1) & mask;
    }
    return h;
}

static int grow(fc_strmap *m, const char *base) {
    fc_strmap old = *m;
    if (alloc_slots(m, old.cap * 2)) { *m = old; return -1; }
    for (size_t i = 0; i < old.cap; i++) {
        if (old.off[i] < 0) continue;
        size_t h = find_slot(m, base, base + old.off[i], (size_t)old.len[i]);
        m->off[h] = old.off[i];
        m->len[h] = old.len[i];
        m->val[h] = old.val[i];
        m->count++;
    }
    free(old.off); free(old.len); free(old.val);
    return 0;
}

int fc_strmap_put(fc_strmap *m, const char *base, int64_t off, int64_t len, int64_t val,
                  int overwrite, int64_t *old) {
    if ((m->count + 1) * 2 > m->cap && grow(m, base)) return -1;
    size_t h = find_slot(m, base, base + off, (size_t)len);
    if (m->off[h] >= 0) {
        if (old) *old = m->val[h];
        if (overwrite) m->val[h] = val;
        return 1;
    }
    m->off[h] = off;
    m->len[h] = len;
    m->val[h] = val;
    m->count++;
    return 0;
}

int64_t fc_strmap_get(const fc_strmap *m, const char *base, const char *s, size_t len) {
    if (!m->cap) return -1;
    size_t h = find_slot(m, base, s, len);
    return m->off[h] >= 0 ? m->val[h] : -1;
}
