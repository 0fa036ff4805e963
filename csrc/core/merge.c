/* merge.c - fc_merge_tensor: argument checks, defaults and dispatch to the kernels. */
#include <math.h>
#include <string.h>

#include "merge_internal.h"

static const char *const method_names[FC_MERGE_METHOD_COUNT] = {
    "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
    "breadcrumbs_ties", "della", "della_linear", "sce", "varm", "slerp", "nuslerp",
    "multislerp", "karcher", "model_stock", "nearswap", "passthrough", "ram", "ramplus_tl",
    "arcee_fusion",
};

int fc_merge_method_from_name(const char *name) {
    for (int i = 0; name && i < FC_MERGE_METHOD_COUNT; i++)
        if (strcmp(name, method_names[i]) == 0) return i;
    return -1;
}

const char *fc_merge_method_name(fc_merge_method m) {
    return (unsigned)m < FC_MERGE_METHOD_COUNT ? method_names[m] : NULL;
}

void fc_merge_model_params_init(fc_merge_model_params *mp) {
    mp->weight = 1.0;
    mp->density = 1.0;
    mp->gamma = 0.01;
    mp->epsilon = 0.15;
    mp->scale = 1.0;
}

void fc_merge_params_init(fc_merge_params *p, fc_merge_method m) {
    memset(p, 0, sizeof *p);
    p->method = m;
    p->normalize = m == FC_MERGE_LINEAR || m == FC_MERGE_TIES || m == FC_MERGE_DELLA;
    p->rescale = m == FC_MERGE_DARE_TIES || m == FC_MERGE_DARE_LINEAR || m == FC_MERGE_DELLA ||
                 m == FC_MERGE_DELLA_LINEAR;
    p->lambda = 1.0;
    p->select_topk = 1.0;
    p->mask_deltas = 1;
    p->t = 0.5;
    p->nuslerp_flatten = 1;
    p->normalize_weights = 1;
    p->eps = 1e-8;
    p->max_iter = 10;
    p->tol = 1e-5;
    p->active_eps = 1e-5;
    p->r = 0.1;
    p->alpha = 0.2;
}

/* ---- instruction set of the hot kernels ---- */

static const mg_kernels portable = {mg_merge_gta, mg_merge_sce, mg_merge_varm, mg_combine};

#if defined(__x86_64__) && defined(__GNUC__)
extern const mg_kernels mg_kernels_avx2, mg_kernels_avx512;
#define HAVE_ISA_BUILDS 1
#else
#define HAVE_ISA_BUILDS 0
#endif

/* the build ctx uses: the one chosen, or with "auto" the widest the CPU has */
static const mg_kernels *kernels_of(const fc_merge_ctx *ctx) {
#if HAVE_ISA_BUILDS
    switch (mg_ctx_isa(ctx)) {
    case MG_ISA_AVX2: return &mg_kernels_avx2;
    case MG_ISA_AVX512: return &mg_kernels_avx512;
    default: break;
    }
#endif
    return &portable;
}

static int is_gta(fc_merge_method m) {
    return m >= FC_MERGE_TASK_ARITHMETIC && m <= FC_MERGE_DELLA_LINEAR;
}

/* Which inputs each method takes: base 0 = none, 1 = required, 2 = optional;
 * [min, max] non-base inputs (max -1 = any). */
static void method_arity(fc_merge_method m, int *base, int *lo, int *hi) {
    *base = 1, *lo = 0, *hi = -1;
    switch (m) {
    case FC_MERGE_LINEAR: *base = 0, *lo = 1; break;
    case FC_MERGE_KARCHER: *base = 0, *lo = 1; break;
    case FC_MERGE_PASSTHROUGH: *base = 0, *lo = 1, *hi = 1; break;
    case FC_MERGE_SLERP: *lo = 1, *hi = 1; break;
    case FC_MERGE_NUSLERP: *base = 2, *lo = 2, *hi = 2; break;
    case FC_MERGE_MULTISLERP: *base = 2, *lo = 1; break;
    case FC_MERGE_MODEL_STOCK: *lo = 2; break;
    case FC_MERGE_NEARSWAP: *lo = 1, *hi = 1; break;
    case FC_MERGE_ARCEE_FUSION: *lo = 1, *hi = 1; break;
    default: break;
    }
}

static fc_status check_params(const fc_merge_params *p, int n, fc_error *err) {
    const char *name = method_names[p->method];
    for (int i = 0; i < n; i++) {
        const fc_merge_model_params *mp = &p->models[i];
        if (!isfinite(mp->weight) || !isfinite(mp->scale))
            return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter",
                                     "%s: model %d: weight and scale must be finite", name, i);
        int sparsifies = p->method != FC_MERGE_TASK_ARITHMETIC && is_gta(p->method);
        if (sparsifies && !(mp->density > 0.0 && mp->density <= 1.0))
            return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter",
                                     "%s: model %d: density %g is outside (0, 1]", name, i,
                                     mp->density);
        if ((p->method == FC_MERGE_BREADCRUMBS || p->method == FC_MERGE_BREADCRUMBS_TIES) &&
            !(mp->gamma >= 0.0 && mp->gamma < 1.0))
            return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter",
                                     "%s: model %d: gamma %g is outside [0, 1)", name, i, mp->gamma);
        if ((p->method == FC_MERGE_DELLA || p->method == FC_MERGE_DELLA_LINEAR) &&
            mp->density < 1.0 &&
            !(mp->epsilon >= 0.0 && mp->density - mp->epsilon > 0.0 &&
              mp->density + mp->epsilon < 1.0))
            return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter",
                                     "%s: model %d: epsilon %g too large for density %g: "
                                     "density - epsilon and density + epsilon must lie in (0, 1)",
                                     name, i, mp->epsilon, mp->density);
    }
    if ((p->method == FC_MERGE_SLERP || p->method == FC_MERGE_NEARSWAP) && !isfinite(p->t))
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter", "%s: t must be finite", name);
    if (p->method == FC_MERGE_KARCHER && (p->max_iter < 0 || !(p->tol > 0)))
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter",
                                 "karcher: max_iter must be >= 0 and tol > 0");
    if (p->method == FC_MERGE_MULTISLERP && !(p->eps >= 0))
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter", "multislerp: eps must be >= 0");
    if (is_gta(p->method) && (p->rescale_norm < FC_RESCALE_L1 || p->rescale_norm > FC_RESCALE_LINF))
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter",
                                 "%s: rescale_norm %d is not l1 (0), l2 (1) or linf (2)", name,
                                 p->rescale_norm);
    if ((p->method == FC_MERGE_RAM || p->method == FC_MERGE_RAMPLUS_TL) &&
        !(p->active_eps >= 0 && isfinite(p->r) && p->alpha >= 0 && isfinite(p->alpha)))
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter",
                                 "%s: epsilon and alpha must be >= 0 and r finite", name);
    if (!isfinite(p->lambda) || !isfinite(p->select_topk))
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter",
                                 "%s: lambda and select_topk must be finite", name);
    return FC_OK;
}

fc_status fc_merge_tensor(fc_merge_ctx *ctx, const fc_merge_params *p, const void *base,
                          fc_dtype base_dt, const void *const *inputs, const fc_dtype *input_dts,
                          int n, int ndim, const int64_t *shape, void *out, fc_dtype out_dt,
                          int nthreads, fc_error *err) {
    fc_error_clear(err);
    if (!p || (unsigned)p->method >= FC_MERGE_METHOD_COUNT)
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "unknown_method", "unknown merge method %d",
                                 p ? (int)p->method : -1);
    const char *name = method_names[p->method];
    int want_base, lo, hi;
    method_arity(p->method, &want_base, &lo, &hi);
    if (want_base == 1 && !base)
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "base_required", "%s needs a base model", name);
    if (want_base == 0 && base)
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "base_not_used",
                                 "%s takes no base model (pass it as one more input)", name);
    if (n < lo || (hi >= 0 && n > hi)) {
        if (hi == lo)
            return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "model_count",
                                     "%s needs exactly %d model%s besides the base, got %d", name,
                                     lo, lo == 1 ? "" : "s", n);
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "model_count",
                                 "%s needs %s%d model%s besides the base, got %d", name,
                                 hi < 0 ? "at least " : "at most ", hi < 0 ? lo : hi,
                                 (hi < 0 ? lo : hi) == 1 ? "" : "s", n);
    }
    if (n > 0 && !p->models)
        return fc_error_set(err, FC_ERR_VALUE, "%s: no per-model parameters given", name);
    if (ndim < 0 || ndim > 64 || (ndim > 0 && !shape))
        return fc_error_set(err, FC_ERR_VALUE, "%s: bad shape (ndim %d)", name, ndim);
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] > 0 && numel > INT64_MAX / shape[d]))
            return fc_error_set(err, FC_ERR_VALUE, "%s: bad shape", name);
        numel *= shape[d];
    }
    if (!fc_dtype_is_float(out_dt) || (base && !fc_dtype_is_float(base_dt)))
        return fc_error_set_rule(err, FC_ERR_TYPE, NULL, "bad_dtype",
                                 "%s: tensors must be F16, BF16, F32 or F64", name);
    for (int i = 0; i < n; i++)
        if (!fc_dtype_is_float(input_dts[i]) || (!inputs[i] && numel > 0))
            return fc_error_set_rule(err, FC_ERR_TYPE, NULL, "bad_dtype",
                                     "%s: input %d must be an F16, BF16, F32 or F64 tensor", name, i);
    fc_status st = check_params(p, n, err);
    if (st != FC_OK || numel == 0) return st;
    mg_tensor t = {p, n, base, base_dt, inputs, input_dts, numel, 1, numel, ndim, out, out_dt,
                   nthreads, err, ctx};
    if (ndim >= 2 && shape[ndim - 1] > 0) {
        t.cols = shape[ndim - 1];
        t.rows = numel / t.cols;
    }
    const mg_kernels *k = kernels_of(ctx);
    switch (p->method) {
    case FC_MERGE_LINEAR: st = mg_merge_linear(&t); break;
    case FC_MERGE_SCE: st = n ? k->sce(&t) : k->combine(&t, MG_FLAT, (float[]){1.0f}); break;
    case FC_MERGE_VARM: st = n ? k->varm(&t) : k->combine(&t, MG_FLAT, (float[]){1.0f}); break;
    case FC_MERGE_SLERP: st = mg_merge_slerp(&t); break;
    case FC_MERGE_NUSLERP: st = mg_merge_nuslerp(&t); break;
    case FC_MERGE_MULTISLERP: st = mg_merge_multislerp(&t); break;
    case FC_MERGE_KARCHER: st = mg_merge_karcher(&t); break;
    case FC_MERGE_MODEL_STOCK: st = mg_merge_model_stock(&t); break;
    case FC_MERGE_NEARSWAP: st = mg_merge_nearswap(&t); break;
    case FC_MERGE_PASSTHROUGH: st = mg_merge_passthrough(&t); break;
    case FC_MERGE_RAM:
    case FC_MERGE_RAMPLUS_TL: st = mg_merge_ram(&t); break;
    case FC_MERGE_ARCEE_FUSION: st = mg_merge_arcee_fusion(&t); break;
    default: st = k->gta(&t); break;
    }
    if (st != FC_OK && err->code == FC_OK)
        fc_error_set(err, st, "%s: merge failed (%s)", name, fc_status_name(st));
    return st;
}
