/* merge_sce.c - SCE (FuseChat-2.0: select, calculate, erase) and VaRM (FuseChat-1.0).
 *
 * SCE with T_i = x_i - B:
 *   select:    if select_topk < 1, mask = the k = int(#nonzero(var) * select_topk) positions
 *              of largest population variance of T over the models (exact top-k, ties by
 *              index); select_topk <= 0 masks everything out.
 *   calculate: w_i = mean((mask T_i)^2) / sum_j mean((mask T_j)^2).
 *   erase:     m_i = [sign(T_i) == sign(sum_j T_j)] (zeros never agree).
 *   out = B + sum_i w_i m_i T_i / sum_i w_i m_i.
 * mask_deltas = 1 (mergekit): T_i <- mask T_i before erase and merge, uniform weights when
 * the sum is below 1e-6, divisor clamped to >= 1e-6. mask_deltas = 0 (FuseChat's fork):
 * the mask only feeds the weights, uniform weights when the sum is 0, zero divisor -> 1.
 *
 * Passes over the inputs. The mask needs the whole tensor's variances before any weight,
 * and the weights before any output, so the plain (exact) path reads the inputs three
 * times: pass 0 the variance keys (stored) and the nonzero count, then the exact top-k
 * over the keys, pass 1 the sums of squares of the masked deltas, pass 2 the output.
 * The streaming path (tensors of at least MG_SAMPLE_MIN elements) reads them once: a
 * sample of the variance keys (merge_sample.c) gives a key `lo` that is very probably below
 * the k-th largest; pass 0 also keeps every position whose key is >= lo as a candidate
 * record (its key and its n deltas). If at least k positions are candidates, the top-k of
 * the tensor is the top-k of the candidates (same keys, same index order), and the weights
 * and, with mask_deltas, the output (B + 0 outside the mask) need only the candidates;
 * without mask_deltas the output pass reads the inputs again (two passes). A band that
 * missed, a full candidate buffer or an inf/NaN variance abandons the attempt for the exact
 * path: the result never depends on the sample, and both paths give the same bytes (the
 * candidates' sums of squares are added in mg_dot's order).
 *
 * VaRM: w_i = mean(T_i^2) / sum_j mean(T_j^2) (uniform if the sum is 0); out = B + sum w_i T_i.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "merge_internal.h"

/* The candidate records of a streaming attempt, grouped by block: block b's records are
 * first[b] .. first[b] + count[b] - 1, in element order (blocks reserve their range from
 * one counter, so the blocks themselves lie in any order). */
typedef struct {
    uint32_t lo;               /* positions whose variance key is >= lo are candidates */
    int64_t cap;               /* records the buffer holds */
    atomic_int_fast64_t used;  /* records reserved (may pass cap: then abandoned) */
    atomic_int abandon;        /* buffer full or an inf/NaN variance: take the exact path */
    int64_t *first, *count;    /* per block */
    float *d;                  /* record j: the n deltas at d[j * n] */
    uint32_t *key;             /* record j: its variance key */
    uint16_t *rel;             /* record j: its position in its block (MG_BLOCK <= 65536) */
} sce_cands;

typedef struct {
    int masked;        /* a variance mask is in force */
    int mask_none;     /* select_topk <= 0 or k == 0: the mask removes everything */
    fc_topk top;       /* over element indices */
    int pass;          /* 0: variance keys and nonzero count, 1: weights, 2: output */
    double *partials;  /* per block: pass 0 one count, pass 1 n sums of squares */
    float *w;
    uint32_t *keys;    /* exact path: variance keys of the whole tensor, kept from pass 0 so
                        * later passes need not recompute the variance; NULL if too big */
    sce_cands *cand;   /* streaming: pass 0 collects candidates; NULL on the exact path */
} sce_ctx;

#define VAR_SUB 512 /* var_keys works in sub-chunks on the stack (a malloc per call of
                      * this size would be an mmap, with page faults, every time) */

/* Loads B into s, T_i into s + (i + 1) * len, and the population variance over models into
 * var (float64 accumulation in `acc`, 2 * min(len, VAR_SUB) doubles). Model-outer loops: they vectorise. */
static void sce_load(const mg_tensor *t, int64_t begin, int64_t len, float *s, float *var,
                     double *acc) {
    mg_load(t->base, t->base_dt, begin, len, s);
    for (int i = 0; i < t->n; i++) {
        float *d = s + (size_t)(i + 1) * len;
        mg_load(t->in[i], t->in_dt[i], begin, len, d);
        for (int64_t k = 0; k < len; k++) d[k] -= s[k];
    }
    if (!var) return;
    /* in sub-chunks of VAR_SUB: the float64 accumulators stay in L1 while every model
     * passes over them (per element the same operations in the same order) */
    for (int64_t e = 0; e < len; e += VAR_SUB) {
        int64_t m = len - e < VAR_SUB ? len - e : VAR_SUB;
        double *mean = acc, *v = acc + VAR_SUB;
        for (int64_t k = 0; k < m; k++) mean[k] = v[k] = 0.0;
        for (int i = 0; i < t->n; i++) {
            const float *d = s + (size_t)(i + 1) * len + e;
            for (int64_t k = 0; k < m; k++) mean[k] += d[k];
        }
        for (int64_t k = 0; k < m; k++) mean[k] /= t->n;
        for (int i = 0; i < t->n; i++) {
            const float *d = s + (size_t)(i + 1) * len + e;
            for (int64_t k = 0; k < m; k++) v[k] += (d[k] - mean[k]) * (d[k] - mean[k]);
        }
        for (int64_t k = 0; k < m; k++) var[e + k] = (float)(v[k] / t->n);
    }
}

/* scratch floats per element: B, n deltas, var, keep/sign/keys, out, and 4 for two doubles */
#define SCE_SCRATCH(n) ((size_t)(n) + 8) /* per element; plus 2 floats of slack */

#define VAR_STACK_MODELS 56

static void var_keys(void *vctx, int64_t begin, int64_t n, uint32_t *keys) {
    const mg_tensor *t = (const mg_tensor *)vctx;
    float stack[SCE_SCRATCH(VAR_STACK_MODELS) * VAR_SUB + 2];
    float *s = t->n <= VAR_STACK_MODELS ? stack : malloc((SCE_SCRATCH(t->n) * VAR_SUB + 2) * sizeof(float));
    if (!s) { /* only for more than 56 models; rank nothing rather than crash */
        memset(keys, 0, (size_t)n * sizeof(uint32_t));
        return;
    }
    for (int64_t e = 0; e < n; e += VAR_SUB) {
        int64_t len = n - e < VAR_SUB ? n - e : VAR_SUB;
        float *var = s + (size_t)(t->n + 1) * len;
        sce_load(t, begin + e, len, s, var, mg_doubles_at(s, (size_t)(t->n + 4) * len));
        for (int64_t k = 0; k < len; k++) keys[e + k] = fc_float_key(var[k]);
    }
    if (s != stack) free(s);
}

/* keep[k]: 1.0 where the position survives the variance mask, else 0.0 (var: the block's
 * variances, read only without stored keys) */
static void sce_keep(const sce_ctx *c, int64_t begin, int64_t len, const float *var, float *keep) {
    if (c->mask_none || !c->masked) {
        for (int64_t k = 0; k < len; k++) keep[k] = c->mask_none ? 0.0f : 1.0f;
        return;
    }
    /* branch-free, 32-bit compares (see keep_topk in merge_gta.c) */
    int64_t lc = c->top.cut - begin;
    int32_t cut = (int32_t)(lc < -1 ? -1 : lc > len ? len : lc);
    uint32_t kk = c->top.key;
    for (int32_t k = 0; k < (int32_t)len; k++) {
        uint32_t key = c->keys ? c->keys[begin + k] : fc_float_key(var[k]);
        keep[k] = (float)((key > kk) | ((key == kk) & (k < cut)));
    }
}

/* Bit j set where keys[j] >= lo, j < min(len, 64): candidates are visited by their set bits
 * (a branch per position would mispredict at random). */
static uint64_t bits_at_least(const uint32_t *keys, int64_t len, uint32_t lo) {
    uint64_t bits = 0;
    for (int j = 0; j < (len < 64 ? (int)len : 64); j++) bits |= (uint64_t)(keys[j] >= lo) << j;
    return bits;
}

/* Pass 0 of a streaming attempt: the block's candidates (deltas s + (i + 1) * len, keys)
 * into the records; an inf/NaN variance (any inf/NaN delta makes one) or a full buffer
 * abandons the attempt. */
static void sce_collect(sce_cands *cd, int n, int64_t len, const float *s, const float *var,
                        const uint32_t *keys, int64_t index) {
    uint32_t special = 0, lo = cd->lo;
    int64_t count = 0;
    for (int64_t k = 0; k < len; k++) {
        uint32_t b;
        memcpy(&b, var + k, 4);
        special |= (uint32_t)((b & 0x7f800000u) == 0x7f800000u);
        count += keys[k] >= lo;
    }
    int64_t first = atomic_fetch_add(&cd->used, count);
    cd->first[index] = first;
    cd->count[index] = count;
    if (special || first + count > cd->cap) {
        atomic_store(&cd->abandon, 1);
        return;
    }
    float *d = cd->d + (size_t)first * n;
    uint32_t *key = cd->key + first;
    uint16_t *rel = cd->rel + first;
    for (int64_t k0 = 0; k0 < len; k0 += 64)
        for (uint64_t bits = bits_at_least(keys + k0, len - k0, lo); bits; bits &= bits - 1) {
            int64_t k = k0 + __builtin_ctzll(bits);
            *key++ = keys[k];
            *rel++ = (uint16_t)k;
            for (int i = 0; i < n; i++) *d++ = s[(size_t)(i + 1) * len + k];
        }
}

/* Erase and merge at m positions, model i's (masked where mask_deltas) deltas at
 * d + i * stride: q[k] = sum_i w_i m_i T_i / divisor. The election is on the deltas,
 * unweighted, summed in float64 (sum: m doubles): a sum that is exactly zero counts as
 * positive. Scratch sign and den: m floats each. */
static void sce_merge(int n, int64_t m, const float *d, int64_t stride, const float *w,
                      int mask_deltas, double *sum, float *sign, float *q, float *den) {
    for (int64_t k = 0; k < m; k++) sum[k] = 0.0;
    for (int i = 0; i < n; i++)
        for (int64_t k = 0; k < m; k++) sum[k] += d[(size_t)i * stride + k];
    for (int64_t k = 0; k < m; k++) {
        sign[k] = sum[k] >= 0.0 ? 1.0f : -1.0f;
        q[k] = den[k] = 0.0f;
    }
    for (int i = 0; i < n; i++) mg_add_agreeing(m, d + (size_t)i * stride, sign, w[i], w[i], q, den);
    for (int64_t k = 0; k < m; k++) {
        float dv = den[k];
        if (mask_deltas) dv = dv < 1e-6f ? 1e-6f : dv;
        else if (dv == 0.0f) dv = 1.0f;
        q[k] = q[k] / dv;
    }
}

static fc_status sce_block(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                           float *s, int64_t index) {
    sce_ctx *c = (sce_ctx *)user;
    int n = t->n;
    float *var = s + (size_t)(n + 1) * len, *keep = var + len, *out = keep + len;
    double *acc = mg_doubles_at(s, (size_t)(n + 4) * len);
    int mask_deltas = t->p->mask_deltas;
    if (c->pass == 0 && c->cand && atomic_load(&c->cand->abandon)) return FC_OK;
    int need_keep = c->pass == 1 || mask_deltas; /* without mask_deltas pass 2 ignores it */
    int need_var = c->masked && (c->pass == 0 || (need_keep && !c->keys));
    sce_load(t, begin, len, s, need_var ? var : NULL, acc);
    if (c->pass == 0) {
        uint32_t *keys = c->keys ? c->keys + begin : (uint32_t *)(void *)keep;
        int64_t nz = 0; /* an integer count: a float64 one is a serial chain of adds */
        for (int64_t k = 0; k < len; k++) nz += var[k] != 0.0f;
        c->partials[index] = (double)nz;
        for (int64_t k = 0; k < len; k++) keys[k] = fc_float_key(var[k]);
        if (c->cand) sce_collect(c->cand, n, len, s, var, keys, index);
        return FC_OK;
    }
    if (need_keep) sce_keep(c, begin, len, var, keep);
    if (c->pass == 1) {
        for (int i = 0; i < n; i++) {
            float *d = s + (size_t)(i + 1) * len;
            for (int64_t k = 0; k < len; k++) d[k] *= keep[k];
            c->partials[(size_t)index * n + i] = mg_dot(d, d, len);
        }
        return FC_OK;
    }
    if (mask_deltas)
        for (int i = 0; i < n; i++) {
            float *d = s + (size_t)(i + 1) * len;
            for (int64_t k = 0; k < len; k++) d[k] *= keep[k];
        }
    sce_merge(n, len, s + len, len, c->w, mask_deltas, acc, keep, out, var);
    for (int64_t k = 0; k < len; k++) out[k] = s[k] + out[k];
    mg_store(t->out, t->out_dt, begin, len, out);
    return FC_OK;
}

/* Streaming pass 1, no input read: the block's sums of squares of the masked deltas from its
 * kept candidates. A position outside the mask adds (0 * d)^2 = +0 in sce_block, which
 * changes no sum, so adding the kept ones into mg_dot's accumulators (position k into
 * accumulator k % 8 below the last multiple of 8, the rest into the tail, tail first) gives
 * mg_dot's bits. */
static fc_status sce_cand_weights(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                                  float *s, int64_t index) {
    const sce_ctx *c = (const sce_ctx *)user;
    const sce_cands *cd = c->cand;
    int n = t->n;
    double *acc = mg_doubles_at(s, 0), *tail = acc + (size_t)8 * n;
    for (int i = 0; i < 9 * n; i++) acc[i] = 0.0;
    int64_t full = len & ~(int64_t)7;
    for (int64_t j = cd->first[index]; j < cd->first[index] + cd->count[index]; j++) {
        int64_t k = cd->rel[j];
        if (!fc_topk_has(&c->top, cd->key[j], begin + k)) continue;
        const float *d = cd->d + (size_t)j * n;
        for (int i = 0; i < n; i++) {
            double sq = (double)d[i] * (double)d[i];
            if (k < full) acc[(size_t)i * 8 + (k & 7)] += sq;
            else tail[i] += sq;
        }
    }
    for (int i = 0; i < n; i++) {
        double sum = tail[i];
        for (int j = 0; j < 8; j++) sum += acc[(size_t)i * 8 + j];
        c->partials[(size_t)index * n + i] = sum;
    }
    return FC_OK;
}

/* Streaming pass 2 with mask_deltas: reads B only. A position outside the mask has all
 * deltas 0, so sce_block merges it to B + 0 / 1e-6 = B + 0; the kept candidates, gathered
 * model-major, go through sce_merge as there, so the same bits. */
#define SCE_COMPACT_SCRATCH(n) (((size_t)(n) + 8) * MG_BLOCK + 4)

static fc_status sce_out_compact(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                                 float *s, int64_t index) {
    const sce_ctx *c = (const sce_ctx *)user;
    const sce_cands *cd = c->cand;
    int n = t->n;
    int64_t first = cd->first[index], count = cd->count[index], m = 0;
    float *b = s, *out = b + len, *sign = out + len, *q = sign + len, *den = q + len;
    float *g = den + len; /* model i's kept deltas at g + i * count */
    uint16_t *pos = (uint16_t *)(void *)(g + (size_t)n * len);
    double *sum = mg_doubles_at(s, (size_t)(n + 5) * len + len / 2 + 1);
    mg_load(t->base, t->base_dt, begin, len, b);
    for (int64_t k = 0; k < len; k++) out[k] = b[k] + 0.0f / 1e-6f;
    for (int64_t j = 0; j < count; j++) { /* branch-free: kept or not, m moves on or not */
        const float *d = cd->d + (size_t)(first + j) * n;
        pos[m] = cd->rel[first + j];
        for (int i = 0; i < n; i++) g[(size_t)i * count + m] = d[i];
        m += fc_topk_has(&c->top, cd->key[first + j], begin + pos[m]);
    }
    sce_merge(n, m, g, count, c->w, 1, sum, sign, q, den);
    for (int64_t j = 0; j < m; j++) out[pos[j]] = b[pos[j]] + q[j];
    mg_store(t->out, t->out_dt, begin, len, out);
    return FC_OK;
}

/* Turn per-block sums of squares into normalised weights. */
static void weights_from_partials(const mg_tensor *t, const double *partials, int64_t nblocks,
                                  double uniform_below, float *w) {
    int n = t->n;
    double total = 0;
    double *sq = calloc((size_t)n, sizeof(double));
    if (!sq) { /* n doubles: fall back to uniform rather than fail */
        for (int i = 0; i < n; i++) w[i] = 1.0f / n;
        return;
    }
    for (int64_t b = 0; b < nblocks; b++)
        for (int i = 0; i < n; i++) sq[i] += partials[(size_t)b * n + i];
    for (int i = 0; i < n; i++) total += sq[i] / (double)t->numel;
    for (int i = 0; i < n; i++)
        w[i] = fabs(total) < uniform_below || total == 0
                   ? 1.0f / n : (float)(sq[i] / (double)t->numel / total);
    free(sq);
}

/* The nonzero count summed over pass 0's per-block counts. */
static double nonzero_count(const double *partials, int64_t nblocks) {
    double nz = 0;
    for (int64_t b = 0; b < nblocks; b++) nz += partials[b];
    return nz;
}

#define SCE_STREAM_MAX_FRACTION 0.3 /* more candidates than this: the exact path */
#define SCE_STREAM_MAX_BYTES ((double)((int64_t)1 << 31)) /* and a bigger record buffer */

/* The candidate threshold from a sample of the variance keys and the records' buffer;
 * returns 0 (nothing allocated) when streaming is not worth trying. */
static int sce_cands_open(const mg_tensor *t, sce_cands *cd, int64_t nblocks) {
    int64_t size = mg_sample_size(t->numel);
    uint32_t *sample = malloc(2 * (size_t)size * sizeof(uint32_t));
    if (!sample) return 0;
    mg_sample_keys(t->numel, size, var_keys, (void *)t, sample, sample + size);
    double S = (double)size, topk = t->p->select_topk, nz = 0;
    for (int64_t i = 0; i < size; i++) nz += sample[i] > fc_float_key(0.0f);
    /* the k-th largest lies near rank nz * topk of the sample; its spread comes from the
     * sampled quantile and from the sampled nonzero count */
    double rank = nz * topk, q = rank / S;
    double sd = sqrt(S * q * (1 - q) + topk * topk * nz * (1 - nz / S));
    uint32_t mid, hi; /* only lo matters: every position at or above it is kept aside */
    mg_sample_band(sample, size, rank, sd, &cd->lo, &mid, &hi);
    double frac = mg_sample_fraction(sample, size, cd->lo, UINT32_MAX);
    free(sample);
    if (frac > SCE_STREAM_MAX_FRACTION) return 0;
    double cap = (double)t->numel * (frac * 1.25 + 0.02) + MG_BLOCK; /* generous: a full
                                                                        * buffer costs a pass */
    cd->cap = cap < (double)t->numel ? (int64_t)cap : t->numel;
    size_t rec = (size_t)t->n * sizeof(float) + sizeof(uint32_t) + sizeof(uint16_t);
    if ((double)cd->cap * (double)rec > SCE_STREAM_MAX_BYTES) return 0;
    cd->first = malloc((size_t)nblocks * sizeof(int64_t));
    cd->count = malloc((size_t)nblocks * sizeof(int64_t));
    cd->d = mg_buffer_take(t->ctx, (size_t)cd->cap * rec + 16);
    if (!cd->first || !cd->count || !cd->d) return 0;
    cd->key = (uint32_t *)(void *)(cd->d + (size_t)cd->cap * t->n);
    cd->rel = (uint16_t *)(void *)(cd->key + cd->cap);
    atomic_init(&cd->used, 0);
    atomic_init(&cd->abandon, 0);
    return 1;
}

static void sce_cands_close(const mg_tensor *t, sce_cands *cd) {
    free(cd->first);
    free(cd->count);
    mg_buffer_give(t->ctx, cd->d);
}

/* The exact top-k of the tensor from the candidates into c->top (by element index);
 * returns 0 when the candidates do not hold it (fewer than k of them) or out of memory. */
static int sce_cands_select(const mg_tensor *t, sce_ctx *c, int64_t nblocks, int64_t k,
                            fc_status *st) {
    const sce_cands *cd = c->cand;
    int64_t ncand = atomic_load(&cd->used);
    if (ncand < k) return 0; /* the k-th largest key is below lo */
    uint32_t *keys = mg_buffer_take(t->ctx, (size_t)ncand * sizeof(uint32_t) + 4); /* element order */
    if (!keys) return 0;
    for (int64_t b = 0, pos = 0; b < nblocks; pos += cd->count[b++])
        memcpy(keys + pos, cd->key + cd->first[b], (size_t)cd->count[b] * sizeof(uint32_t));
    fc_topk top;
    *st = mg_select_topk(t->ctx, ncand, k, NULL, keys, t->nthreads, &top, t->err);
    mg_buffer_give(t->ctx, keys);
    if (*st != FC_OK) return 0;
    c->top.key = top.key;
    c->top.cut = t->numel; /* top.cut == ncand: every tied candidate is kept */
    for (int64_t b = 0, pos = 0; b < nblocks; pos += cd->count[b++])
        if (top.cut < pos + cd->count[b]) {
            c->top.cut = b * MG_BLOCK + cd->rel[cd->first[b] + top.cut - pos];
            break;
        }
    return 1;
}

/* The one-pass attempt (see the top); *merged = 0 when the exact path must run. */
static fc_status sce_stream(const mg_tensor *t, sce_ctx *c, int64_t nblocks, int *merged) {
    int n = t->n;
    sce_cands cd = {0};
    fc_status st = FC_OK;
    *merged = 0;
    if (!sce_cands_open(t, &cd, nblocks)) goto done;
    c->cand = &cd;
    c->pass = 0;
    st = mg_for_blocks(t, t->numel, MG_BLOCK, SCE_SCRATCH(n) * MG_BLOCK + 2, sce_block, c);
    if (st != FC_OK || atomic_load(&cd.abandon)) goto done;
    int64_t k = (int64_t)(nonzero_count(c->partials, nblocks) * t->p->select_topk);
    if (!sce_cands_select(t, c, nblocks, k, &st)) goto done; /* k == 0 keeps nothing */
    st = mg_for_blocks(t, t->numel, MG_BLOCK, (size_t)18 * n + 2, sce_cand_weights, c);
    if (st != FC_OK) goto done;
    weights_from_partials(t, c->partials, nblocks, t->p->mask_deltas ? 1e-6 : 0.0, c->w);
    c->pass = 2;
    if (t->p->mask_deltas)
        st = mg_for_blocks(t, t->numel, MG_BLOCK, SCE_COMPACT_SCRATCH(n), sce_out_compact, c);
    else /* the mask only shaped the weights: the output needs every delta */
        st = mg_for_blocks(t, t->numel, MG_BLOCK, SCE_SCRATCH(n) * MG_BLOCK + 2, sce_block, c);
    *merged = 1;
done:
    sce_cands_close(t, &cd);
    c->cand = NULL;
    return st;
}

/* The exact path: pass 0, the top-k over the stored (else recomputed) keys, passes 1, 2. */
static fc_status sce_exact(const mg_tensor *t, sce_ctx *c, int64_t nblocks) {
    const fc_merge_params *p = t->p;
    size_t scratch = SCE_SCRATCH(t->n) * MG_BLOCK + 2;
    fc_status st = FC_OK;
    if (c->masked) {
        c->keys = mg_buffer_take(t->ctx, (size_t)t->numel * sizeof(uint32_t)); /* NULL: recompute */
        c->pass = 0;
        st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, sce_block, c);
        if (st != FC_OK) goto done;
        int64_t k = (int64_t)(nonzero_count(c->partials, nblocks) * p->select_topk);
        if (k == 0) c->mask_none = 1;
        else if ((st = mg_select_topk(t->ctx, t->numel, k, c->keys ? NULL : var_keys,
                                      c->keys ? (void *)c->keys : (void *)t, t->nthreads,
                                      &c->top, t->err)) != FC_OK)
            goto done;
    }
    c->pass = 1;
    st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, sce_block, c);
    if (st != FC_OK) goto done;
    weights_from_partials(t, c->partials, nblocks, p->mask_deltas ? 1e-6 : 0.0, c->w);
    c->pass = 2;
    st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, sce_block, c);
done:
    mg_buffer_give(t->ctx, c->keys);
    c->keys = NULL;
    return st;
}

fc_status mg_merge_sce(const mg_tensor *t) {
    const fc_merge_params *p = t->p;
    int n = t->n;
    int64_t nblocks = (t->numel + MG_BLOCK - 1) / MG_BLOCK;
    sce_ctx c = {0};
    c.masked = p->select_topk < 1.0 && p->select_topk > 0.0;
    c.mask_none = p->select_topk <= 0.0;
    c.partials = mg_calloc(t, (size_t)nblocks * n, sizeof(double));
    c.w = mg_calloc(t, (size_t)n, sizeof(float));
    fc_status st = FC_ERR_NOMEM;
    if (!c.partials || !c.w) goto done;
    int merged = 0;
    if (c.masked && t->numel >= MG_SAMPLE_MIN && mg_streaming(t)) {
        st = sce_stream(t, &c, nblocks, &merged);
        if (st != FC_OK) goto done;
        mg_stream_outcome(t, merged);
    }
    if (!merged) st = sce_exact(t, &c, nblocks);
done:
    free(c.partials);
    free(c.w);
    return st;
}

/* VaRM: weights from mean squared deltas (the SCE weight pass with no mask), then
 * out = B + sum w_i T_i, i.e. a combination with coefficients w_i on x_i and 1 - sum w on B. */
fc_status mg_merge_varm(const mg_tensor *t) {
    int n = t->n;
    int64_t nblocks = (t->numel + MG_BLOCK - 1) / MG_BLOCK;
    sce_ctx c = {0};
    c.pass = 1;
    c.partials = mg_calloc(t, (size_t)nblocks * n, sizeof(double));
    c.w = mg_calloc(t, (size_t)n, sizeof(float));
    float *coef = mg_calloc(t, (size_t)n + 1, sizeof(float));
    fc_status st = FC_ERR_NOMEM;
    if (c.partials && c.w && coef) {
        st = mg_for_blocks(t, t->numel, MG_BLOCK, SCE_SCRATCH(n) * MG_BLOCK + 2, sce_block, &c);
        if (st == FC_OK) {
            weights_from_partials(t, c.partials, nblocks, 0.0, c.w);
            float rest = 1.0f;
            for (int i = 0; i < n; i++) {
                coef[i] = c.w[i];
                rest -= c.w[i];
            }
            coef[n] = rest;
            st = mg_combine(t, MG_FLAT, coef);
        }
    }
    free(c.partials);
    free(c.w);
    free(coef);
    return st;
}
