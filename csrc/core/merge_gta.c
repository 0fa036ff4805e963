/* merge_gta.c - the task-arithmetic family: task_arithmetic, ties, dare_ties, dare_linear,
 * breadcrumbs, breadcrumbs_ties, della, della_linear.
 *
 * For the N non-base inputs: delta_i = x_i - B; delta_i <- sparsify(delta_i) (top-k
 * magnitude, magnitude outliers, Bernoulli(density), or DELLA's rank-dependent Bernoulli),
 * optionally rescaled (its l1, l2 or linf norm kept); D_i = w_i * delta_i; with sign
 * consensus only the D_i whose sign matches sign(sum D) count; mix = sum D_i (/ sum of the
 * counted w_i if normalize) * lambda; out = B + mix. The work is done in passes over the
 * inputs, never storing a whole delta:
 *   1. top-k thresholds (select.c) for the magnitude sparsifiers,
 *   2. norm partials per fixed block when rescaling,
 *   3. the output pass.
 * Each pass hands out fixed blocks of MG_BLOCK elements to threads and takes a block in
 * tiles of GTA_TILE, so the rows of one tile stay in L1 between the steps of the merge.
 * TIES on a big tensor skips pass 1 (streaming top-k, merge_sample.c): a sample gives each
 * model a guess `mid` of its threshold and a band [lo, hi] of |delta| keys around it that
 * should hold the true one; the output pass keeps the keys above mid, counts those above
 * hi, and sets aside every element with a key in some model's band (its index, B and raw
 * deltas). Exact counts then tell whether each threshold is in its band; if so it is
 * selected among the set-aside elements (gta_post) and those whose decision differs from
 * the guess are merged again, exactly; if not, the tensor is merged again by passes 1, 3. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "fp_convert.h"
#include "merge_internal.h"
#include "rng.h"

typedef enum { SP_NONE, SP_MAGNITUDE, SP_OUTLIERS, SP_RANDOM, SP_DELLA } sparsifier;

#define GTA_TILE 512 /* elements the passes take at a time: (n + 6) rows of a tile fit in L1 */

typedef struct {
    sparsifier sp;
    int consensus, stats;
    int *active;           /* density < 1: this model is sparsified */
    fc_topk *keep, *drop;  /* magnitude: keep; outliers: keep minus drop */
    uint64_t *stream;
    uint8_t *masks;        /* random masks with rescaling: the keep flags the stats pass drew,
                            * [i * numel + e], so the output pass need not draw them again */
    float *scale;          /* rescale factor per model */
    double *partials;      /* stats pass: [block][2n] = the rescale norm's partial (sum |x|,
                            * sum x^2 or max |x|) of delta and of the kept delta */
    int64_t block;
    /* streaming top-k: the band of each model, keys above hi per [block * n + i], and the
     * set-aside elements r (in no particular order): element index rec_idx[r], B at
     * rec_val[r], raw delta_i at rec_val[(i + 1) * rec_cap + r] */
    int streaming;
    uint32_t *lo, *mid, *hi; /* mid: the sample's guess, the provisional threshold */
    int64_t *above, *rec_idx;
    float *rec_val;
    int64_t rec_cap;
    atomic_int_fast64_t rec_used;
    atomic_int overflow;   /* more set-aside elements than rec_cap: streaming abandoned */
} gta_ctx;

typedef struct {
    const mg_tensor *t;
    int i;
} key_ctx;

/* TIES keeps the int(density * n) largest |delta|, and at least one element of a model it
 * sparsifies (density < 1), as mergekit 0.1.5 does: a small tensor (a norm) at a low
 * density keeps its largest delta instead of none. */
static int64_t magnitude_k(double density, int64_t numel) {
    int64_t k = (int64_t)(density * (double)numel);
    return k < 1 && numel > 0 ? 1 : k;
}

static void delta_keys(void *vctx, int64_t begin, int64_t n, uint32_t *keys) {
    key_ctx *k = (key_ctx *)vctx;
    float b[8192], x[8192]; /* select.c asks for at most 8192 keys at a time */
    mg_load(k->t->base, k->t->base_dt, begin, n, b);
    mg_load(k->t->in[k->i], k->t->in_dt[k->i], begin, n, x);
    for (int64_t j = 0; j < n; j++) keys[j] = fc_float_key(fabsf(x[j] - b[j]));
}

/* The top k of model kc->i's |delta| keys. With a keys array (NULL: out of memory, keys
 * recomputed in every pass) the keys are computed once, in the selection's first pass,
 * and stored there for its later passes. */
static fc_status select_delta_keys(const mg_tensor *t, key_ctx *kc, uint32_t *keys, int64_t k,
                                   fc_topk *out) {
    if (keys) return mg_select_topk_store(t->ctx, t->numel, k, delta_keys, kc, keys, t->nthreads, out, t->err);
    return mg_select_topk(t->ctx, t->numel, k, delta_keys, kc, t->nthreads, out, t->err);
}

typedef struct {
    float mag;
    int64_t idx;
} ranked;

static int by_magnitude(const void *a, const void *b) {
    const ranked *x = (const ranked *)a, *y = (const ranked *)b;
    if (x->mag != y->mag) return x->mag < y->mag ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* DELLA: per row, keep with probability density - eps + 2 eps * (rank - 1) / (cols - 1),
 * rank of |delta| ascending (ties by index). d holds whole rows starting at element e0. */
static fc_status della_mask(const mg_tensor *t, const gta_ctx *g, int i, int64_t e0,
                            int64_t len, float *d) {
    const fc_merge_model_params *mp = &t->p->models[i];
    int64_t cols = t->cols;
    ranked *r = malloc((size_t)cols * sizeof(ranked));
    if (!r) return FC_ERR_NOMEM;
    for (int64_t row0 = 0; row0 < len; row0 += cols) {
        float *dr = d + row0;
        for (int64_t c = 0; c < cols; c++) r[c] = (ranked){fabsf(dr[c]), c};
        qsort(r, (size_t)cols, sizeof(ranked), by_magnitude);
        for (int64_t rank = 0; rank < cols; rank++) {
            int64_t c = r[rank].idx;
            double norm = cols > 1 ? (double)rank / (double)(cols - 1) : 0.5;
            float p = (float)(mp->density - mp->epsilon + 2.0 * mp->epsilon * norm);
            dr[c] = fcx_keep_or_zero(dr[c], fcx_rng_uniform(g->stream[i], (uint64_t)(e0 + row0 + c)) < p);
        }
    }
    free(r);
    return FC_OK;
}

/* Zero the elements of d[0, len) (element index begin + k) outside the top-k set `keep`,
 * and inside `drop` if given (breadcrumbs). Branch-free, 32-bit compares: vectorises. */
static void keep_topk(int64_t len, int64_t begin, float *restrict d, const fc_topk *keep,
                      const fc_topk *drop) {
    int64_t lk = keep->cut - begin, ld = drop ? drop->cut - begin : -1;
    int32_t cut_k = (int32_t)(lk < -1 ? -1 : lk > len ? len : lk);
    int32_t cut_d = (int32_t)(ld < -1 ? -1 : ld > len ? len : ld);
    uint32_t key_k = keep->key, key_d = drop ? drop->key : UINT32_MAX;
    for (int32_t k = 0; k < (int32_t)len; k++) {
        uint32_t b;
        memcpy(&b, d + k, 4);
        uint32_t key = (b & 0x7fffffffu) | 0x80000000u; /* fc_float_key(|d|) */
        int in_k = (key > key_k) | ((key == key_k) & (k < cut_k));
        int in_d = (key > key_d) | ((key == key_d) & (k < cut_d));
        b &= (uint32_t)0 - (uint32_t)(in_k & !in_d);
        memcpy(d + k, &b, 4);
    }
}

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
static void band_mark(const mg_tensor *t, gta_ctx *g, int64_t off, int64_t len, float *s,
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
static void band_set_aside(const mg_tensor *t, gta_ctx *g, int64_t begin, int64_t len, float *s) {
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

/* The rescale norm's partial over d[0, len): sum |d| (l1), sum d^2 (l2) or max |d| (linf). */
static double norm_part(const float *d, int64_t len, int norm) {
    if (norm == FC_RESCALE_L2) return mg_dot(d, d, len);
    if (norm == FC_RESCALE_L1) return mg_sum_abs(d, len);
    float m = 0.0f;
    for (int64_t k = 0; k < len; k++) m = fabsf(d[k]) > m ? fabsf(d[k]) : m;
    return m;
}

/* Partials of one norm combined: summed, or for linf the maximum. */
static double norm_add(double acc, double part, int norm) {
    return norm == FC_RESCALE_LINF ? (part > acc ? part : acc) : acc + part;
}

/* Loads B into s and the sparsified deltas of model i into s + (i + 1) * len; with part
 * (the stats pass), adds the rescale norm's partials of delta_i and of the kept delta_i to
 * part[2i], part[2i + 1]. */
static fc_status gta_deltas(const mg_tensor *t, const gta_ctx *g, int64_t begin, int64_t len,
                            float *s, double *part) {
    float *b = s;
    mg_load(t->base, t->base_dt, begin, len, b);
    for (int i = 0; i < t->n; i++) {
        float *d = s + (size_t)(i + 1) * len;
        mg_load(t->in[i], t->in_dt[i], begin, len, d);
        for (int64_t k = 0; k < len; k++) d[k] -= b[k];
        int norm = t->p->rescale_norm;
        double all = part ? norm_part(d, len, norm) : 0.0;
        if (!g->active[i]) continue;
        const fc_merge_model_params *mp = &t->p->models[i];
        switch (g->sp) {
        case SP_MAGNITUDE:
        case SP_OUTLIERS:
            if (g->streaming) break; /* band_mark applies the guess instead */
            keep_topk(len, begin, d, &g->keep[i], g->sp == SP_OUTLIERS ? &g->drop[i] : NULL);
            break;
        case SP_RANDOM: {
            float p = (float)mp->density;
            uint64_t stream = g->stream[i];
            uint8_t *m = g->masks ? g->masks + (size_t)i * t->numel + begin : NULL;
            if (m && !part) { /* output pass: the flags drawn by the stats pass */
                for (int64_t k = 0; k < len; k++) d[k] = fcx_keep_or_zero(d[k], m[k]);
            } else if (m) {
                for (int64_t k = 0; k < len; k++) {
                    m[k] = fcx_rng_uniform(stream, (uint64_t)(begin + k)) < p;
                    d[k] = fcx_keep_or_zero(d[k], m[k]);
                }
            } else {
                for (int64_t k = 0; k < len; k++)
                    d[k] = fcx_keep_or_zero(d[k], fcx_rng_uniform(stream, (uint64_t)(begin + k)) < p);
            }
            break;
        }
        case SP_DELLA:
            if (della_mask(t, g, i, begin, len, d) != FC_OK) return FC_ERR_NOMEM;
            break;
        case SP_NONE: break;
        }
        if (part) {
            part[2 * i] = norm_add(part[2 * i], all, norm);
            part[2 * i + 1] = norm_add(part[2 * i + 1], norm_part(d, len, norm), norm);
        }
    }
    return FC_OK;
}

/* The merge of len elements from s (B, then the sparsified deltas, rows of len; the mix,
 * divisor, float64 sum and sign rows follow them); returns where the float32 results are.
 * Model-outer loops without branches, so each vectorises; in the order of the definition:
 * D_i = w_i * (scale_i * delta_i); with consensus only the D_i whose sign matches the
 * elected one count; mix = their sum in model order; out = B + lambda * mix / (their w_i). */
static float *gta_output(const mg_tensor *t, const gta_ctx *g, int64_t len, float *s) {
    const fc_merge_params *p = t->p;
    float *b = s, *mix = s + (size_t)(t->n + 1) * len, *div = mix + len;
    double *sum = mg_doubles_at(s, (size_t)(t->n + 3) * len);
    for (int64_t k = 0; k < len; k++) {
        mix[k] = 0.0f;
        div[k] = 0.0f;
    }
    if (g->consensus)
        for (int64_t k = 0; k < len; k++) sum[k] = 0.0;
    for (int i = 0; i < t->n; i++) {
        float *d = s + (size_t)(i + 1) * len, w = (float)p->models[i].weight, sc = g->scale[i];
        if (g->consensus) {
            for (int64_t k = 0; k < len; k++) {
                float ds = d[k] * sc;
                /* float64 election: each product of two floats is exact there, so a sum
                 * that is exactly zero (common with bf16 inputs) is seen as zero */
                sum[k] += (double)w * (double)ds;
                d[k] = w * ds;
            }
        } else {
            for (int64_t k = 0; k < len; k++) d[k] = w * (d[k] * sc);
        }
    }
    float *sign = (float *)(sum + len); /* the elected sign, +1 where the sum is >= 0 */
    if (g->consensus)
        for (int64_t k = 0; k < len; k++) sign[k] = sum[k] >= 0.0 ? 1.0f : -1.0f;
    for (int i = 0; i < t->n; i++) {
        const float *d = s + (size_t)(i + 1) * len;
        float w = (float)p->models[i].weight;
        if (g->consensus) {
            mg_add_agreeing(len, d, sign, 1.0f, w, mix, div);
        } else {
            for (int64_t k = 0; k < len; k++) {
                mix[k] += d[k];
                div[k] += w;
            }
        }
    }
    if (p->normalize) {
        /* the divisor is 1 where it is 0 (consensus) or |div| < 1e-8 (else): bit tests,
         * since a float compare feeding a division would not vectorise */
        uint32_t tiny = fcx_f32_bits(1e-8f);
        for (int64_t k = 0; k < len; k++) {
            uint32_t v = fcx_f32_bits(div[k]);
            uint32_t one = g->consensus ? (v << 1) == 0 : (v & 0x7fffffffu) < tiny;
            div[k] = fcx_bits_f32(one ? 0x3f800000u : v);
        }
        for (int64_t k = 0; k < len; k++) mix[k] /= div[k];
    }
    if (p->lambda != 1.0) {
        float lambda = (float)p->lambda;
        for (int64_t k = 0; k < len; k++) mix[k] *= lambda;
    }
    for (int64_t k = 0; k < len; k++) mix[k] = b[k] + mix[k];
    return mix;
}

static fc_status gta_block(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                           float *s, int64_t index) {
    gta_ctx *g = (gta_ctx *)user;
    if (g->streaming && atomic_load(&g->overflow)) return FC_OK; /* merged again anyway */
    double *part = g->stats ? g->partials + (size_t)index * 2 * t->n : NULL;
    for (int i = 0; part && i < 2 * t->n; i++) part[i] = 0.0;
    if (g->streaming)
        for (int i = 0; i < t->n; i++) g->above[(size_t)index * t->n + i] = 0;
    /* the passes run over tiles of the block, whose rows stay in L1 (DELLA ranks whole rows:
     * it takes the block at once); the stats pass sums each block's tiles in order */
    int64_t tile = g->sp == SP_DELLA ? len : GTA_TILE;
    for (int64_t off = 0; off < len; off += tile) {
        int64_t tl = len - off < tile ? len - off : tile;
        if (gta_deltas(t, g, begin + off, tl, s, part) != FC_OK) return FC_ERR_NOMEM;
        if (g->stats) continue;
        if (g->streaming) band_mark(t, g, off, tl, s, index);
        mg_store(t->out, t->out_dt, begin + off, tl, gta_output(t, g, tl, s));
    }
    if (g->streaming) band_set_aside(t, g, begin, len, s);
    return FC_OK;
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
    const float *out = gta_output(t, g, m, s);
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
static fc_status gta_stream(const mg_tensor *t, gta_ctx *g, int *done) {
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
        mg_sample_keys(N, size, delta_keys, &kc, sample, sample + size);
        double q = (double)magnitude_k(t->p->models[i].density, N) / (double)N;
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
    st = mg_for_blocks(t, N, g->block, pass_scratch, gta_block, g);
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
        int64_t k = magnitude_k(t->p->models[i].density, N), in_band = 0;
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

fc_status mg_merge_gta(const mg_tensor *t) {
    const fc_merge_params *p = t->p;
    int n = t->n;
    gta_ctx g = {0};
    uint32_t *keys = NULL; /* |delta| keys of one model at a time; NULL: recomputed */
    switch (p->method) {
    case FC_MERGE_TIES: g.sp = SP_MAGNITUDE; g.consensus = 1; break;
    case FC_MERGE_DARE_TIES: g.sp = SP_RANDOM; g.consensus = 1; break;
    case FC_MERGE_DARE_LINEAR: g.sp = SP_RANDOM; break;
    case FC_MERGE_BREADCRUMBS: g.sp = SP_OUTLIERS; break;
    case FC_MERGE_BREADCRUMBS_TIES: g.sp = SP_OUTLIERS; g.consensus = 1; break;
    case FC_MERGE_DELLA: g.sp = SP_DELLA; g.consensus = 1; break;
    case FC_MERGE_DELLA_LINEAR: g.sp = SP_DELLA; break;
    default: g.sp = SP_NONE; break;
    }
    g.block = MG_BLOCK;
    if (g.sp == SP_DELLA) { /* blocks of whole rows */
        int64_t r = MG_BLOCK / t->cols;
        g.block = (r < 1 ? 1 : r) * t->cols;
    }
    fc_status st = FC_ERR_NOMEM;
    g.active = mg_calloc(t, (size_t)n, sizeof(int));
    g.keep = mg_calloc(t, (size_t)n, sizeof(fc_topk));
    g.drop = mg_calloc(t, (size_t)n, sizeof(fc_topk));
    g.stream = mg_calloc(t, (size_t)n, sizeof(uint64_t));
    g.scale = mg_calloc(t, (size_t)n, sizeof(float));
    if (!g.active || !g.keep || !g.drop || !g.stream || !g.scale) goto done;
    int any_rescale = 0, any_active = 0;
    for (int i = 0; i < n; i++) {
        g.scale[i] = 1.0f;
        g.stream[i] = fcx_rng_stream(p->seed, p->tensor_key, (uint64_t)i);
        g.active[i] = g.sp != SP_NONE && p->models[i].density < 1.0;
        any_active |= g.active[i];
        any_rescale |= g.active[i] && p->rescale;
    }
    if (g.sp == SP_MAGNITUDE && any_active && !any_rescale && t->numel >= MG_SAMPLE_MIN &&
        mg_streaming(t)) {
        int done;
        st = gta_stream(t, &g, &done);
        mg_stream_outcome(t, done);
        if (st != FC_OK || done) goto done;
    }
    keys = g.sp == SP_MAGNITUDE || g.sp == SP_OUTLIERS
                         ? mg_buffer_take(t->ctx, (size_t)t->numel * sizeof(uint32_t)) : NULL;
    for (int i = 0; i < n; i++) {
        const fc_merge_model_params *mp = &p->models[i];
        if (!g.active[i]) continue;
        int64_t N = t->numel;
        key_ctx kc = {t, i};
        if (g.sp == SP_MAGNITUDE) {
            int64_t k = magnitude_k(mp->density, N);
            st = select_delta_keys(t, &kc, keys, k, &g.keep[i]);
            if (st != FC_OK) goto done;
        } else if (g.sp == SP_OUTLIERS) {
            int64_t target = (int64_t)(mp->density * (double)N);
            int64_t n_top = (int64_t)(mp->gamma * (double)N);
            int64_t n_bot = N - target - n_top;
            if (n_bot < 0) {
                n_top += n_bot;
                n_bot = 0;
            }
            st = select_delta_keys(t, &kc, keys, N - n_bot, &g.keep[i]);
            if (st == FC_OK) /* the same keys again: stored by the first selection if kept */
                st = mg_select_topk(t->ctx, N, n_top, keys ? NULL : delta_keys, keys ? (void *)keys : &kc,
                                    t->nthreads, &g.drop[i], t->err);
            if (st != FC_OK) goto done;
        }
    }
    /* keep the random flags for the output pass where they take at most 512 MiB (else draw
     * them again) */
    if (any_rescale && g.sp == SP_RANDOM && (uint64_t)t->numel * (uint64_t)n <= (1u << 29))
        g.masks = mg_buffer_take(t->ctx, (size_t)t->numel * (size_t)n);
    if (any_rescale) {
        int64_t nblocks = (t->numel + g.block - 1) / g.block;
        g.partials = mg_calloc(t, (size_t)nblocks * 2 * (n ? n : 1), sizeof(double));
        if (!g.partials) goto done;
        g.stats = 1;
        st = mg_for_blocks(t, t->numel, g.block, (size_t)(n + 6) * g.block + 2, gta_block, &g);
        if (st != FC_OK) goto done;
        g.stats = 0;
        for (int i = 0; i < n; i++) {
            double all = 0, kept = 0;
            int norm = p->rescale_norm;
            for (int64_t b = 0; b < nblocks; b++) {
                all = norm_add(all, g.partials[(size_t)b * 2 * n + 2 * i], norm);
                kept = norm_add(kept, g.partials[(size_t)b * 2 * n + 2 * i + 1], norm);
            }
            if (norm == FC_RESCALE_L2) {
                all = sqrt(all);
                kept = sqrt(kept);
            }
            if (g.active[i] && all >= 1e-7 && kept >= 1e-7) g.scale[i] = (float)(all / kept);
        }
    }
    st = mg_for_blocks(t, t->numel, g.block, (size_t)(n + 6) * g.block + 2, gta_block, &g);
done:
    mg_buffer_give(t->ctx, keys);
    mg_buffer_give(t->ctx, g.masks);
    free(g.active);
    free(g.keep);
    free(g.drop);
    free(g.stream);
    free(g.scale);
    free(g.partials);
    return st;
}
