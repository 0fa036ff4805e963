/* merge_gta_stream.c - streaming top-k for TIES (the magnitude sparsifier of merge_gta.c) on
 * tensors of MG_SAMPLE_MIN elements or more.
 *
 * TIES on a big tensor skips pass 1 (streaming top-k, merge_sample.c): a sample gives each
 * model a guess `mid` of its threshold and a band [lo, hi] of |delta| keys around it that
 * should hold the true one; the output pass keeps the keys above mid, counts those above
 * hi, and sets aside every element with a key in some model's band (its index, B and raw
 * deltas). Exact counts then tell whether each threshold is in its band; if so it is
 * selected among the set-aside elements (gta_post) and those whose decision differs from
 * the guess are merged again, exactly; if not, the tensor is merged again by passes 1, 3. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "merge_gta.h"

/* keep_topk for elements at explicit indices idx[0, len) (the set-aside elements). */
static void keep_topk_at(int64_t len, const int64_t *idx, float *restrict d, const fc_topk *keep) {
    for (int64_t k = 0; k < len; k++) {
        uint32_t b;
        memcpy(&b, d + k, 4);
        b &= (uint32_t)0 - (uint32_t)fc_topk_has(keep, (b & 0x7fffffffu) | 0x80000000u, idx[k]);
        memcpy(d + k, &b, 4);
    }
}
/* Streaming, one model: copies the raw deltas d to raw, keeps in d those whose |d| key is
 * above mid (the guess), marks in flag[k] the elements whose key is in [lo, hi]; returns how
 * many keys are above hi. One branch-free loop: it vectorises. */
static int32_t band_flags(int32_t len, float *restrict d, float *restrict raw, uint32_t lo,
                          uint32_t mid, uint32_t hi, uint8_t *restrict flag) {
    int32_t above = 0;
    for (int32_t k = 0; k < len; k++) {
        uint32_t b;
        memcpy(&b, d + k, 4);
        memcpy(raw + k, &b, 4);
        uint32_t key = (b & 0x7fffffffu) | 0x80000000u;
        above += key > hi;
        flag[k] |= (uint8_t)((key >= lo) & (key <= hi));
        b &= (uint32_t)0 - (uint32_t)(key > mid);
        memcpy(d + k, &b, 4);
    }
    return above;
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* band_set_aside's records for the elements of the whole 16-element groups of [0, len), in
 * the same order: the AVX-512 build (GCC defines these macros under the target pragma)
 * compresses 16 lanes at a time in a register and writes them with a masked store (the
 * compressing store to memory is microcoded on AMD Zen 4). Returns the first element left. */
static int64_t set_aside_avx512(gta_ctx *g, int64_t begin, int64_t len, const float *s,
                                const float *raw, int64_t stride, int n, const uint8_t *flag,
                                int64_t at) {
    const __m512i lanes_lo = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i lanes_hi = _mm512_set_epi64(15, 14, 13, 12, 11, 10, 9, 8);
    int64_t k0 = 0;
    for (; k0 + 16 <= len; k0 += 16) {
        __mmask16 m = _mm_test_epi8_mask(_mm_loadu_si128((const __m128i *)(flag + k0)),
                                         _mm_set1_epi8(1));
        if (!m) continue;
        int c = __builtin_popcount(m), c_lo = __builtin_popcount(m & 0xffu);
        __mmask16 first_c = (__mmask16)((1u << c) - 1);
        _mm512_mask_storeu_ps(g->rec_val + at, first_c,
                              _mm512_maskz_compress_ps(m, _mm512_loadu_ps(s + k0)));
        for (int i = 0; i < n; i++)
            _mm512_mask_storeu_ps(g->rec_val + (size_t)(i + 1) * g->rec_cap + at, first_c,
                                  _mm512_maskz_compress_ps(m, _mm512_loadu_ps(raw + (size_t)i * stride + k0)));
        __m512i e = _mm512_set1_epi64(begin + k0);
        _mm512_mask_storeu_epi64(g->rec_idx + at, (__mmask8)((1u << c_lo) - 1),
                                 _mm512_maskz_compress_epi64((__mmask8)m, _mm512_add_epi64(e, lanes_lo)));
        _mm512_mask_storeu_epi64(g->rec_idx + at + c_lo, (__mmask8)((1u << (c - c_lo)) - 1),
                                 _mm512_maskz_compress_epi64((__mmask8)(m >> 8), _mm512_add_epi64(e, lanes_hi)));
        at += c;
    }
    return k0;
}
#endif

/* Streaming keeps, for the block being merged, B, the raw deltas and the band flags of all
 * its elements in rows after the tile scratch: B at blk, raw delta_i at blk + (i + 1) *
 * block, the flags (bytes) at blk + (n + 1) * block. */
static float *band_rows(const mg_tensor *t, float *s) {
    return s + (size_t)(t->n + 6) * GTA_TILE + 2;
}

/* Streaming, one tile at element `off` of the block (len elements, B and the deltas in s):
 * applies the guesses (band_flags), keeping B and the raw deltas in the block's rows. */
void mg_gta_band_mark(const mg_tensor *t, gta_ctx *g, int64_t off, int64_t len, float *s,
                      int64_t index) {
    int n = t->n;
    float *blk = band_rows(t, s);
    uint8_t *flag = (uint8_t *)(blk + (size_t)(n + 1) * g->block) + off;
    memcpy(blk + off, s, (size_t)len * sizeof(float));
    for (int64_t k = 0; k < len; k++) flag[k] = 0;
    for (int i = 0; i < n; i++) {
        float *d = s + (size_t)(i + 1) * len, *r = blk + (size_t)(i + 1) * g->block + off;
        g->above[(size_t)index * n + i] +=
            g->active[i] ? band_flags((int32_t)len, d, r, g->lo[i], g->mid[i], g->hi[i], flag) : 0;
        if (!g->active[i]) memcpy(r, d, (size_t)len * sizeof(float));
    }
}

/* Streaming, once the block's tiles are merged: sets aside its flagged elements (index, B
 * and the raw deltas), one reservation in the shared buffer per block; where a guess is
 * wrong the element is merged again afterwards (gta_post). */
void mg_gta_band_set_aside(const mg_tensor *t, gta_ctx *g, int64_t begin, int64_t len, float *s) {
    int n = t->n;
    const float *blk = band_rows(t, s), *raw = blk + g->block;
    uint8_t *flag = (uint8_t *)(blk + (size_t)(n + 1) * g->block);
    for (int64_t k = len; k < ((len + 7) & ~(int64_t)7); k++) flag[k] = 0;
    int64_t count = 0;
    for (int64_t k = 0; k < len; k++) count += flag[k];
    int64_t at = atomic_fetch_add(&g->rec_used, count);
    if (at + count > g->rec_cap) {
        atomic_store(&g->overflow, 1);
        return;
    }
    int64_t k0 = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    k0 = set_aside_avx512(g, begin, len, blk, raw, g->block, n, flag, at);
    at += count;
    for (int64_t k = k0; k < len; k++) at -= flag[k]; /* the tail's first record */
#endif
    /* flagged elements found 8 flags (bytes 0 or 1) at a time, by their set bits: a branch
     * per element would mispredict at random */
    for (; k0 < len; k0 += 8) {
        uint64_t bits;
        memcpy(&bits, flag + k0, 8);
        for (; bits; bits &= bits - 1) {
            int64_t k = k0 + (__builtin_ctzll(bits) >> 3);
            g->rec_val[at] = blk[k];
            for (int i = 0; i < n; i++)
                g->rec_val[(size_t)(i + 1) * g->rec_cap + at] = raw[(size_t)i * g->block + k];
            g->rec_idx[at++] = begin + k;
        }
    }
}
/* After the streaming pass, the set-aside elements are processed in chunks over threads, in
 * stages: KEYS fills keys[i * nrec + r] (model i's key of element r, 0 outside its band) and
 * counts the band; COUNT counts, for each model with a tied threshold, the keys above and at
 * it, and the tied ones per block of elements (for the cut by element index); PATCH merges
 * again, exactly, the elements whose provisional decision (key > mid) was wrong. */
#define REC_CHUNK 8192
enum { POST_KEYS, POST_COUNT, POST_PATCH };

typedef struct {
    gta_ctx *g;
    int stage;
    int64_t nrec;
    uint32_t *keys;
    int64_t *counts;            /* [chunk][i][3]: in band, above the threshold, tied */
    uint32_t *threshold;        /* COUNT: model i's k-th key, or 0 if it needs no counting */
    atomic_int_fast64_t *tied;  /* COUNT: [i * nblocks + element block] tied keys */
    int64_t nblocks;
} post_ctx;

static fc_status gta_post(const mg_tensor *t, void *user, int64_t begin, int64_t len, float *s,
                          int64_t index) {
    post_ctx *c = (post_ctx *)user;
    gta_ctx *g = c->g;
    int n = t->n;
    const int64_t *idx = g->rec_idx + begin;
    for (int i = 0; i < n; i++) {
        if (!g->active[i]) continue;
        uint32_t *key = c->keys + (size_t)i * c->nrec + begin;
        int64_t *count = c->counts + ((size_t)index * n + i) * 3;
        if (c->stage == POST_KEYS) {
            const float *d = g->rec_val + (size_t)(i + 1) * g->rec_cap + begin;
            uint32_t lo = g->lo[i], hi = g->hi[i];
            int64_t in = 0;
            for (int64_t r = 0; r < len; r++) {
                uint32_t k = fc_float_key(fabsf(d[r]));
                int inside = (k >= lo) & (k <= hi);
                key[r] = k & ((uint32_t)0 - (uint32_t)inside);
                in += inside;
            }
            count[0] = in;
        } else if (c->stage == POST_COUNT && c->threshold[i]) {
            uint32_t th = c->threshold[i];
            int64_t above = 0, at = 0;
            for (int64_t r = 0; r < len; r++) {
                above += key[r] > th;
                at += key[r] == th;
            }
            count[1] = above;
            count[2] = at;
            for (int64_t r = 0; r < len; r++) /* g->block is MG_BLOCK here: a shift */
                if (key[r] == th) atomic_fetch_add(&c->tied[(size_t)i * c->nblocks + idx[r] / MG_BLOCK], 1);
        }
    }
    if (c->stage != POST_PATCH) return FC_OK;
    /* the elements to merge again, gathered into the layout of gta_output */
    int64_t *redo = (int64_t *)(void *)mg_doubles_at(s, (size_t)(n + 6) * len + 1), m = 0;
    int64_t *at = redo + len;
    uint8_t *wrong = (uint8_t *)(at + len);
    for (int64_t r = 0; r < len; r++) wrong[r] = 0;
    for (int i = 0; i < n; i++) {
        if (!g->active[i]) continue;
        const uint32_t *key = c->keys + (size_t)i * c->nrec + begin;
        uint32_t kk = g->keep[i].key, mid = g->mid[i];
        int64_t cut = g->keep[i].cut;
        for (int64_t r = 0; r < len; r++) { /* fc_topk_has without branches */
            uint32_t k = key[r];
            int has = (k > kk) | ((k == kk) & (idx[r] < cut));
            wrong[r] |= (uint8_t)((k != 0) & (has != (k > mid)));
        }
    }
    for (int64_t r = 0; r < len; r++) {
        redo[m] = begin + r;
        m += wrong[r];
    }
    for (int64_t k = 0; k < m; k++) at[k] = g->rec_idx[redo[k]];
    for (int i = 0; i <= n; i++) {
        float *row = s + (size_t)i * m;
        const float *val = g->rec_val + (size_t)i * g->rec_cap;
        for (int64_t k = 0; k < m; k++) row[k] = val[redo[k]];
        if (i && g->active[i - 1]) keep_topk_at(m, at, row, &g->keep[i - 1]);
    }
    const float *out = mg_gta_output(t, g, m, s);
    for (int64_t k = 0; k < m; k++) mg_store(t->out, t->out_dt, at[k], 1, out + k);
    return FC_OK;
}

static int by_index(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The cut by element index among model i's `quota` lowest-index keys equal to th: the
 * block holding the quota-th from the per-block counts, then a sort of that block's. */
static int tie_cut(const post_ctx *c, int i, uint32_t th, int64_t quota, int64_t *cut) {
    const gta_ctx *g = c->g;
    int64_t b = 0, before = 0;
    for (; b < c->nblocks; b++) {
        int64_t here = (int64_t)atomic_load(&c->tied[(size_t)i * c->nblocks + b]);
        if (before + here >= quota) break;
        before += here;
    }
    int64_t *ties = malloc((MG_BLOCK + 1) * sizeof(int64_t)), m = 0;
    if (!ties) return 0;
    const uint32_t *key = c->keys + (size_t)i * c->nrec;
    uint64_t first = (uint64_t)b * MG_BLOCK;
    for (int64_t r = 0; r < c->nrec; r++) { /* branch-free: matches are rare and random */
        ties[m] = g->rec_idx[r];
        m += (key[r] == th) & ((uint64_t)g->rec_idx[r] - first < MG_BLOCK);
    }
    qsort(ties, (size_t)m, sizeof(int64_t), by_index);
    *cut = ties[quota - before - 1] + 1;
    free(ties);
    return 1;
}

/* Streaming TIES (see the top of the file). *done = 1 when the output is complete; 0 when
 * the caller must merge by the exact passes (the band missed, too many elements set aside,
 * or no memory for the buffers: the exact passes report that if it persists). */
fc_status mg_gta_stream(const mg_tensor *t, gta_ctx *g, int *done) {
    int n = t->n;
    int64_t N = t->numel, nblocks = (N + g->block - 1) / g->block;
    fc_status st = FC_OK;
    *done = 0;
    post_ctx c = {g, POST_KEYS, 0, NULL, NULL, NULL, NULL, nblocks};
    int64_t *above = calloc((size_t)n, sizeof(int64_t)), *want = calloc((size_t)n, sizeof(int64_t));
    int64_t size = mg_sample_size(N);
    uint32_t *sample = malloc(2 * (size_t)size * sizeof(uint32_t));
    c.threshold = calloc((size_t)n, sizeof(uint32_t));
    g->lo = calloc((size_t)n, sizeof(uint32_t));
    g->mid = calloc((size_t)n, sizeof(uint32_t));
    g->hi = calloc((size_t)n, sizeof(uint32_t));
    g->above = calloc((size_t)nblocks * n, sizeof(int64_t));
    if (!above || !want || !sample || !c.threshold || !g->lo || !g->mid || !g->hi || !g->above)
        goto out;
    double frac = 0; /* expected share of elements set aside */
    for (int i = 0; i < n; i++) {
        if (!g->active[i]) continue;
        key_ctx kc = {t, i};
        mg_sample_keys(N, size, mg_gta_delta_keys, &kc, sample, sample + size);
        double q = (double)mg_gta_magnitude_k(t->p->models[i].density, N) / (double)N;
        mg_sample_band(sample, size, q * (double)size, sqrt((double)size * q * (1.0 - q)),
                       &g->lo[i], &g->mid[i], &g->hi[i]);
        frac += mg_sample_fraction(sample, size, g->lo[i], g->hi[i]);
    }
    if (frac > 0.3) goto out; /* e.g. massive ties: the exact passes are cheaper */
    g->rec_cap = (int64_t)((double)N * (1.5 * frac + 0.005)) + g->block;
    g->rec_idx = mg_buffer_take(t->ctx, (size_t)g->rec_cap * sizeof(int64_t));
    g->rec_val = mg_buffer_take(t->ctx, (size_t)g->rec_cap * (n + 1) * sizeof(float));
    if (!g->rec_idx || !g->rec_val) goto out;
    atomic_init(&g->rec_used, 0);
    atomic_init(&g->overflow, 0);
    g->streaming = 1;
    /* the tile scratch, then B, n raw rows and the flags of a block (band_rows) */
    size_t pass_scratch = (size_t)(n + 6) * GTA_TILE + (size_t)(n + 2) * g->block + 8;
    st = mg_for_blocks(t, N, g->block, pass_scratch, mg_gta_block, g);
    g->streaming = 0;
    if (st != FC_OK || atomic_load(&g->overflow)) goto out;

    c.nrec = atomic_load(&g->rec_used);

    int64_t nchunks = (c.nrec + REC_CHUNK - 1) / REC_CHUNK;
    size_t scratch = (size_t)(n + 11) * REC_CHUNK + 6;
    c.keys = mg_buffer_take(t->ctx, (size_t)n * (c.nrec ? c.nrec : 1) * sizeof(uint32_t));
    c.counts = calloc((size_t)(nchunks ? nchunks : 1) * n * 3, sizeof(int64_t));
    c.tied = malloc((size_t)n * nblocks * sizeof(atomic_int_fast64_t));
    if (!c.keys || !c.counts || !c.tied) goto out;
    for (int64_t j = 0; j < (int64_t)n * nblocks; j++) atomic_init(&c.tied[j], 0);
    if ((st = mg_for_blocks(t, c.nrec, REC_CHUNK, scratch, gta_post, &c)) != FC_OK) goto out;
    /* each model's threshold: in its band, or give up */
    for (int i = 0; i < n; i++) {
        if (!g->active[i]) continue;
        int64_t k = mg_gta_magnitude_k(t->p->models[i].density, N), in_band = 0;
        for (int64_t b = 0; b < nblocks; b++) above[i] += g->above[(size_t)b * n + i];
        for (int64_t ch = 0; ch < nchunks; ch++) in_band += c.counts[((size_t)ch * n + i) * 3];
        if (above[i] > k || above[i] + in_band < k) goto out;
        want[i] = k - above[i]; /* from the band */
        if (want[i] == 0)
            g->keep[i] = (fc_topk){g->hi[i], 0};
        else if (want[i] == in_band)
            g->keep[i] = g->lo[i] ? (fc_topk){g->lo[i] - 1, 0} : (fc_topk){0, N};
        else { /* the key only: the keys are in no particular order, so not its cut */
            st = mg_select_topk_key(t->ctx, c.nrec, want[i], c.keys + (size_t)i * c.nrec, t->nthreads,
                                    &c.threshold[i], t->err);
            if (st != FC_OK) goto out;
        }
    }
    c.stage = POST_COUNT;
    if ((st = mg_for_blocks(t, c.nrec, REC_CHUNK, scratch, gta_post, &c)) != FC_OK) goto out;
    for (int i = 0; i < n; i++) {
        if (!c.threshold[i]) continue;
        int64_t greater = 0, tied = 0, cut = N;
        for (int64_t ch = 0; ch < nchunks; ch++) {
            greater += c.counts[((size_t)ch * n + i) * 3 + 1];
            tied += c.counts[((size_t)ch * n + i) * 3 + 2];
        }
        int64_t quota = want[i] - greater; /* 1 <= quota <= tied: the lowest indices */
        if (quota < tied && !tie_cut(&c, i, c.threshold[i], quota, &cut)) goto out;
        g->keep[i] = (fc_topk){c.threshold[i], cut};
    }
    c.stage = POST_PATCH;
    st = mg_for_blocks(t, c.nrec, REC_CHUNK, scratch, gta_post, &c);
    *done = st == FC_OK;
out:
    free(above);
    free(want);
    free(sample);
    free(c.threshold);
    free(c.counts);
    free(c.tied);
    mg_buffer_give(t->ctx, c.keys);
    free(g->lo);
    free(g->mid);
    free(g->hi);
    free(g->above);
    mg_buffer_give(t->ctx, g->rec_idx);
    mg_buffer_give(t->ctx, g->rec_val);
    g->lo = g->mid = g->hi = NULL;
    g->above = g->rec_idx = NULL;
    g->rec_val = NULL;
    return st;
}
