/* align_counts.c - co-alignment counts (pivot id, source id) -> count in an open-addressing
 * hash map: memory grows with the pairs seen, never with V_P x V_S (the reference's dense
 * float64 matrix is ~39 GB for a 32k x 152k pair of vocabularies). */
#include <stdlib.h>
#include <string.h>

#include "align_internal.h"

struct fc_counts {
    uint64_t *keys; /* (pivot id << 32 | source id) + 1; 0 = empty */
    uint64_t *vals;
    size_t    cap, count;
};

static uint64_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

fc_counts_t *fc_counts_new(void) {
    fc_counts_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->cap = 1024;
    c->keys = calloc(c->cap, sizeof *c->keys);
    c->vals = calloc(c->cap, sizeof *c->vals);
    if (!c->keys || !c->vals) { fc_counts_free(c); return NULL; }
    return c;
}

void fc_counts_free(fc_counts_t *c) {
    if (!c) return;
    free(c->keys);
    free(c->vals);
    free(c);
}

int64_t fc_counts_nnz(const fc_counts_t *c) { return (int64_t)c->count; }

static int grow(fc_counts_t *c) {
    size_t cap = c->cap * 2;
    uint64_t *keys = calloc(cap, sizeof *keys), *vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) { free(keys); free(vals); return -1; }
    for (size_t i = 0; i < c->cap; i++) {
        if (!c->keys[i]) continue;
        size_t h = (size_t)mix(c->keys[i]) & (cap - 1);
        while (keys[h]) h = (h + 1) & (cap - 1);
        keys[h] = c->keys[i];
        vals[h] = c->vals[i];
    }
    free(c->keys);
    free(c->vals);
    c->keys = keys, c->vals = vals, c->cap = cap;
    return 0;
}

static int add(fc_counts_t *c, uint64_t key, uint64_t count) {
    if ((c->count + 1) * 2 > c->cap && grow(c)) return -1;
    size_t h = (size_t)mix(key) & (c->cap - 1);
    while (c->keys[h] && c->keys[h] != key) h = (h + 1) & (c->cap - 1);
    if (!c->keys[h]) { c->keys[h] = key; c->count++; }
    c->vals[h] += count;
    return 0;
}

static fc_status check_id(int64_t id, const char *what, fc_error *err) {
    if (id < 0 || id > 0x7fffffff)
        return fc_error_set(err, FC_ERR_VALUE, "%s id %lld is outside [0, 2^31)", what,
                            (long long)id);
    return FC_OK;
}

static uint64_t key_of(int64_t p, int64_t s) { return (((uint64_t)p << 32) | (uint64_t)s) + 1; }

fc_status fc_counts_add(fc_counts_t *c, int64_t pivot_id, int64_t src_id, uint64_t count,
                        fc_error *err) {
    fc_status st = check_id(pivot_id, "pivot", err);
    if (!st) st = check_id(src_id, "source", err);
    if (st) return st;
    if (add(c, key_of(pivot_id, src_id), count))
        return fc_error_set(err, FC_ERR_NOMEM, "out of memory growing the alignment counts");
    return FC_OK;
}

fc_status fc_counts_add_alignment(fc_counts_t *c, const int64_t *src_ids, int64_t n,
                                  const int64_t *pivot_ids, int64_t m, const fc_alignment *a,
                                  fc_error *err) {
    if (a->m != m || a->indptr[0] != 0)
        return fc_error_set(err, FC_ERR_VALUE, "the alignment has %lld pivot positions, the "
                            "pivot sequence %lld", (long long)a->m, (long long)m);
    for (int64_t j = 0; j < m; j++) {
        fc_status st = check_id(pivot_ids[j], "pivot", err);
        if (st) return st;
        if (a->indptr[j + 1] < a->indptr[j])
            return fc_error_set(err, FC_ERR_VALUE, "alignment indptr decreases at %lld",
                                (long long)j);
        for (int64_t k = a->indptr[j]; k < a->indptr[j + 1]; k++) {
            int64_t pos = a->indices[k];
            if (pos < 0 || pos >= n)
                return fc_error_set(err, FC_ERR_VALUE, "alignment index %lld is outside the "
                                    "source sequence (length %lld)", (long long)pos,
                                    (long long)n);
            int64_t s = src_ids[pos];
            if ((st = check_id(s, "source", err))) return st;
            /* a source id repeated within one pivot position counts once */
            int seen = 0;
            for (int64_t q = a->indptr[j]; q < k && !seen; q++) seen = src_ids[a->indices[q]] == s;
            if (!seen && add(c, key_of(pivot_ids[j], s), 1))
                return fc_error_set(err, FC_ERR_NOMEM, "out of memory growing the counts");
        }
    }
    return FC_OK;
}

fc_status fc_counts_merge(fc_counts_t *c, const fc_counts_t *o, fc_error *err) {
    for (size_t i = 0; i < o->cap; i++)
        if (o->keys[i] && add(c, o->keys[i], o->vals[i]))
            return fc_error_set(err, FC_ERR_NOMEM, "out of memory merging alignment counts");
    return FC_OK;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

fc_status fc_counts_export(const fc_counts_t *c, int by_source, int64_t *pivot_ids,
                           int64_t *src_ids, uint64_t *counts, fc_error *err) {
    /* sort (key, slot) by key: pack the order key with the slot in a second array */
    size_t n = c->count;
    uint64_t *order = malloc((n ? n : 1) * 2 * sizeof *order);
    if (!order) return fc_error_set(err, FC_ERR_NOMEM, "out of memory exporting counts");
    size_t k = 0;
    for (size_t i = 0; i < c->cap; i++) {
        if (!c->keys[i]) continue;
        uint64_t key = c->keys[i] - 1;
        if (by_source) key = (key << 32) | (key >> 32);
        order[2 * k] = key;
        order[2 * k + 1] = i;
        k++;
    }
    qsort(order, n, 2 * sizeof *order, cmp_u64);
    for (size_t i = 0; i < n; i++) {
        uint64_t key = c->keys[order[2 * i + 1]] - 1;
        pivot_ids[i] = (int64_t)(key >> 32);
        src_ids[i] = (int64_t)(key & 0xffffffffu);
        counts[i] = c->vals[order[2 * i + 1]];
    }
    free(order);
    return FC_OK;
}
