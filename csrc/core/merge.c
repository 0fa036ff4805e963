/* merge.c - fc_merge_tensor: argument checks (arity and parameters from the method table,
 * merge_methods.c), then the kernel its row names; the instruction-set choice of the kernels
 * built once per ISA. */
#include <stdio.h>

#include "merge_internal.h"

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

fc_status mg_run_gta(const mg_tensor *t) { return kernels_of(t->ctx)->gta(t); }

fc_status mg_run_sce(const mg_tensor *t) {
    const mg_kernels *k = kernels_of(t->ctx);
    return t->n ? k->sce(t) : k->combine(t, MG_FLAT, (float[]){1.0f});
}

fc_status mg_run_varm(const mg_tensor *t) {
    const mg_kernels *k = kernels_of(t->ctx);
    return t->n ? k->varm(t) : k->combine(t, MG_FLAT, (float[]){1.0f});
}

fc_status fc_merge_tensor(fc_merge_ctx *ctx, const fc_merge_params *p, const void *base,
                          fc_dtype base_dt, const void *const *inputs, const fc_dtype *input_dts,
                          int n, int ndim, const int64_t *shape, void *out, fc_dtype out_dt,
                          int nthreads, fc_error *err) {
    fc_error_clear(err);
    if (!p || (unsigned)p->method >= FC_MERGE_METHOD_COUNT)
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "unknown_method", "unknown merge method %d",
                                 p ? (int)p->method : -1);
    const fc_merge_method_info *mi = fc_merge_method_info_of(p->method);
    const char *name = mi->name;
    int want_base = mi->base, lo = mi->min_models, hi = mi->max_models;
    if (want_base == FC_MERGE_BASE_REQUIRED && !base)
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "base_required", "%s needs a base model", name);
    if (want_base == FC_MERGE_BASE_NONE && base)
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
    int bad;
    fc_status st = fc_merge_check_params(p, n, &bad, err);
    if (st != FC_OK && err) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        if (bad >= 0)
            fc_error_set_rule(err, st, NULL, "bad_parameter", "%s: model %d: %s", name, bad, why);
        else
            fc_error_set_rule(err, st, NULL, "bad_parameter", "%s: %s", name, why);
    }
    if (st != FC_OK || numel == 0) return st;
    mg_tensor t = {p, n, base, base_dt, inputs, input_dts, numel, 1, numel, ndim, out, out_dt,
                   nthreads, err, ctx};
    if (ndim >= 2 && shape[ndim - 1] > 0) {
        t.cols = shape[ndim - 1];
        t.rows = numel / t.cols;
    }
    st = mg_method_kernel(p->method)(&t);
    if (st != FC_OK && err->code == FC_OK)
        fc_error_set(err, st, "%s: merge failed (%s)", name, fc_status_name(st));
    return st;
}
