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
 * VaRM: w_i = mean(T_i^2) / sum_j mean(T_j^2) (uniform if the sum is 0); out = B + sum w_i T_i.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "merge_internal.h"

typedef struct {
    int masked;        /* a variance mask is in force */
    int mask_none;     /* select_topk <= 0: the mask removes everything */
    fc_topk top;
    int pass;          /* 0: count nonzero variance, 1: weights, 2: output */
    double *partials;  /* per block: pass 0 one count, pass 1 n sums of squares */
    float *w;
    uint32_t *keys;    /* variance keys of the whole tensor, kept from pass 0 so later
                        * passes need not recompute the variance; NULL if too big */
    /* compact output (mask_deltas with a mask): pass 1 also stores the deltas of the kept
     * positions, so pass 2 reads B and those instead of every input; every other position
     * merges to B + 0. NULL: pass 2 reloads the inputs. */
    float *kept;       /* [j * n + i]: model i's delta at the j-th kept position */
    int64_t *offsets;  /* the first kept position of each block (its index j) */
    atomic_int nonfinite; /* pass 1 met an inf/NaN delta: the compact output does not hold */
} sce_ctx;

/* Loads B into s, T_i into s + (i + 1) * len, and the population variance over models into
 * var (float64 accumulation in `acc`, 2 * len doubles). Model-outer loops: they vectorise. */
static void sce_load(const mg_tensor *t, int64_t begin, int64_t len, float *s, float *var,
                     double *acc) {
    mg_load(t->base, t->base_dt, begin, len, s);
    for (int i = 0; i < t->n; i++) {
        float *d = s + (size_t)(i + 1) * len;
        mg_load(t->in[i], t->in_dt[i], begin, len, d);
        for (int64_t k = 0; k < len; k++) d[k] -= s[k];
    }
    if (!var) return;
    double *mean = acc, *v = acc + len;
    for (int64_t k = 0; k < len; k++) mean[k] = v[k] = 0.0;
    for (int i = 0; i < t->n; i++) {
        const float *d = s + (size_t)(i + 1) * len;
        for (int64_t k = 0; k < len; k++) mean[k] += d[k];
    }
    for (int64_t k = 0; k < len; k++) mean[k] /= t->n;
    for (int i = 0; i < t->n; i++) {
        const float *d = s + (size_t)(i + 1) * len;
        for (int64_t k = 0; k < len; k++) v[k] += (d[k] - mean[k]) * (d[k] - mean[k]);
    }
    for (int64_t k = 0; k < len; k++) var[k] = (float)(v[k] / t->n);
}

/* scratch floats per element: B, n deltas, var, keep/sign, out, and 4 for two doubles */
#define SCE_SCRATCH(n) ((size_t)(n) + 8) /* per element; plus 2 floats of slack */

#define VAR_SUB 512 /* var_keys works in sub-chunks on the stack (a malloc per call of
                      * this size would be an mmap, with page faults, every time) */
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

/* Before pass 1 of the compact output: the kept positions of each block, into
 * offsets[index + 1] (summed into offsets afterwards). */
static fc_status sce_count_block(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                                 float *keep, int64_t index) {
    (void)t;
    sce_ctx *c = (sce_ctx *)user;
    sce_keep(c, begin, len, NULL, keep);
    int64_t count = 0;
    for (int64_t k = 0; k < len; k++) count += keep[k] != 0.0f;
    c->offsets[index + 1] = count;
    return FC_OK;
}

/* Bit j set where keep[j] != 0, for j < min(len, 64): the kept positions are visited by
 * their set bits (a branch per position would mispredict at random). */
static uint64_t kept_bits(const float *keep, int64_t len) {
    uint64_t bits = 0;
    for (int j = 0; j < (len < 64 ? (int)len : 64); j++) bits |= (uint64_t)(keep[j] != 0.0f) << j;
    return bits;
}

/* Pass 1 of the compact output: the masked deltas s + (i + 1) * len of the kept positions
 * into dst, in position order; flags any inf or NaN delta (an inf times the mask's 0 is a
 * NaN that reaches the output, which the compact pass 2 would not see). */
static void sce_compact(const mg_tensor *t, sce_ctx *c, int64_t len, const float *s,
                        const float *keep, float *dst) {
    int n = t->n;
    uint32_t special = 0;
    for (int i = 0; i < n; i++) {
        const float *d = s + (size_t)(i + 1) * len;
        for (int64_t k = 0; k < len; k++) {
            uint32_t b;
            memcpy(&b, d + k, 4);
            special |= (uint32_t)((b & 0x7f800000u) == 0x7f800000u);
        }
    }
    if (special) atomic_store(&c->nonfinite, 1);
    for (int64_t k0 = 0; k0 < len; k0 += 64)
        for (uint64_t bits = kept_bits(keep + k0, len - k0); bits; bits &= bits - 1) {
            int64_t k = k0 + __builtin_ctzll(bits);
            for (int i = 0; i < n; i++) dst[i] = s[(size_t)(i + 1) * len + k];
            dst += n;
        }
}

/* Pass 2 of the compact output, with mask_deltas: the same operations as sce_block's pass 2
 * (in the same order, so the same bits) on the stored deltas of the kept positions; a
 * position outside the mask has all deltas 0, so its merge is B + 0 / 1e-6 = B + 0. */
static fc_status sce_out_compact(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                                 float *s, int64_t index) {
    sce_ctx *c = (sce_ctx *)user;
    int n = t->n;
    float *b = s, *keep = s + len, *out = keep + len;
    mg_load(t->base, t->base_dt, begin, len, b);
    sce_keep(c, begin, len, NULL, keep);
    for (int64_t k = 0; k < len; k++) out[k] = b[k] + 0.0f / 1e-6f;
    const float *d = c->kept + (size_t)c->offsets[index] * n;
    for (int64_t k0 = 0; k0 < len; k0 += 64) {
        for (uint64_t bits = kept_bits(keep + k0, len - k0); bits; bits &= bits - 1) {
            int64_t k = k0 + __builtin_ctzll(bits);
            double sum = 0.0;
            for (int i = 0; i < n; i++) sum += d[i];
            float sign = sum >= 0.0 ? 1.0f : -1.0f, num = 0.0f, den = 0.0f;
            for (int i = 0; i < n; i++) /* mg_add_agreeing for one position */
                mg_add_agreeing(1, d + i, &sign, c->w[i], c->w[i], &num, &den);
            float dv = den < 1e-6f ? 1e-6f : den;
            out[k] = b[k] + num / dv;
            d += n;
        }
    }
    mg_store(t->out, t->out_dt, begin, len, out);
    return FC_OK;
}

static fc_status sce_block(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                           float *s, int64_t index) {
    sce_ctx *c = (sce_ctx *)user;
    int n = t->n;
    float *var = s + (size_t)(n + 1) * len, *keep = var + len, *out = keep + len;
    double *acc = mg_doubles_at(s, (size_t)(n + 4) * len);
    int need_var = c->masked && (c->pass == 0 || !c->keys);
    sce_load(t, begin, len, s, need_var ? var : NULL, acc);
    if (c->pass == 0) {
        int64_t nz = 0; /* an integer count: a float64 one is a serial chain of adds */
        for (int64_t k = 0; k < len; k++) nz += var[k] != 0.0f;
        c->partials[index] = (double)nz;
        if (c->keys)
            for (int64_t k = 0; k < len; k++) c->keys[begin + k] = fc_float_key(var[k]);
        return FC_OK;
    }
    sce_keep(c, begin, len, var, keep);
    if (c->pass == 1) {
        for (int i = 0; i < n; i++) {
            float *d = s + (size_t)(i + 1) * len;
            for (int64_t k = 0; k < len; k++) d[k] *= keep[k];
            c->partials[(size_t)index * n + i] = mg_dot(d, d, len);
        }
        if (c->kept) sce_compact(t, c, len, s, keep, c->kept + (size_t)c->offsets[index] * n);
        return FC_OK;
    }
    int mask_deltas = t->p->mask_deltas;
    if (mask_deltas)
        for (int i = 0; i < n; i++) {
            float *d = s + (size_t)(i + 1) * len;
            for (int64_t k = 0; k < len; k++) d[k] *= keep[k];
        }
    /* the election on the (masked) deltas, unweighted, summed in float64: a sum that is
     * exactly zero counts as positive */
    double *sum = acc;
    float *sign = keep, *num = out, *den = var;
    for (int64_t k = 0; k < len; k++) sum[k] = 0.0;
    for (int i = 0; i < n; i++) {
        const float *d = s + (size_t)(i + 1) * len;
        for (int64_t k = 0; k < len; k++) sum[k] += d[k];
    }
    for (int64_t k = 0; k < len; k++) {
        sign[k] = sum[k] >= 0.0 ? 1.0f : -1.0f;
        num[k] = den[k] = 0.0f;
    }
    for (int i = 0; i < n; i++)
        mg_add_agreeing(len, s + (size_t)(i + 1) * len, sign, c->w[i], c->w[i], num, den);
    for (int64_t k = 0; k < len; k++) {
        float dv = den[k];
        if (mask_deltas) dv = dv < 1e-6f ? 1e-6f : dv;
        else if (dv == 0.0f) dv = 1.0f;
        out[k] = s[k] + num[k] / dv;
    }
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

fc_status mg_merge_sce(const mg_tensor *t) {
    const fc_merge_params *p = t->p;
    int n = t->n;
    size_t scratch = SCE_SCRATCH(n) * MG_BLOCK + 2;
    int64_t nblocks = (t->numel + MG_BLOCK - 1) / MG_BLOCK;
    sce_ctx c = {0};
    c.masked = p->select_topk < 1.0 && p->select_topk > 0.0;
    c.mask_none = p->select_topk <= 0.0;
    c.partials = mg_calloc(t, (size_t)nblocks * n, sizeof(double));
    c.w = mg_calloc(t, (size_t)n, sizeof(float));
    fc_status st = FC_ERR_NOMEM;
    if (!c.partials || !c.w) goto done;
    if (c.masked) {
        c.keys = mg_buffer_take((size_t)t->numel * sizeof(uint32_t)); /* NULL: recompute */
        c.pass = 0;
        st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, sce_block, &c);
        if (st != FC_OK) goto done;
        double nz = 0;
        for (int64_t b = 0; b < nblocks; b++) nz += c.partials[b];
        int64_t k = (int64_t)(nz * p->select_topk);
        if (k == 0) c.mask_none = 1;
        else if ((st = fc_select_topk(t->numel, k, c.keys ? NULL : var_keys,
                                      c.keys ? (void *)c.keys : (void *)t, t->nthreads, &c.top,
                                      t->err)) != FC_OK)
            goto done;
    }
    atomic_init(&c.nonfinite, 0);
    if (c.masked && !c.mask_none && c.keys && p->mask_deltas &&
        (uint64_t)c.top.cut <= (uint64_t)t->numel && /* always; keeps the size below sane */
        (c.offsets = mg_calloc(t, (size_t)nblocks + 1, sizeof(int64_t))) != NULL) {
        st = mg_for_blocks(t, t->numel, MG_BLOCK, MG_BLOCK, sce_count_block, &c);
        if (st != FC_OK) goto done;
        for (int64_t b = 0; b < nblocks; b++) c.offsets[b + 1] += c.offsets[b];
        uint64_t bytes = (uint64_t)c.offsets[nblocks] * (uint64_t)n * sizeof(float);
        if (bytes <= ((uint64_t)1 << 29)) /* at most 512 MiB; else reload the inputs */
            c.kept = mg_buffer_take((size_t)bytes + sizeof(float));
    }
    c.pass = 1;
    st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, sce_block, &c);
    if (st != FC_OK) goto done;
    weights_from_partials(t, c.partials, nblocks, p->mask_deltas ? 1e-6 : 0.0, c.w);
    c.pass = 2;
    if (c.kept && !atomic_load(&c.nonfinite))
        st = mg_for_blocks(t, t->numel, MG_BLOCK, 3 * MG_BLOCK, sce_out_compact, &c);
    else
        st = mg_for_blocks(t, t->numel, MG_BLOCK, scratch, sce_block, &c);
done:
    free(c.partials);
    free(c.w);
    free(c.offsets);
    mg_buffer_give(c.kept);
    mg_buffer_give(c.keys);
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
