/* merge_methods.c - the merge method table: every method's name, inputs, and parameters
 * with scope, kind, default and range (fc_merge.h), and the loops over it: defaults
 * (fc_merge_params_init), range checks (fc_merge_check_params) and the dispatch to each
 * row's kernel (mg_method_kernel). Adding a method adds its row here, naming its kernel;
 * its parameters' fields live in fc_merge_params / fc_merge_model_params. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "merge_internal.h"

#define INF HUGE_VAL
#define FIELD(st, f) ((long)offsetof(st, f))
#define MODEL(name, def, req, lo, hi, lo_open, hi_open, f)                                    \
    {name, 1, FC_PARAM_FLOAT, def, req, lo, hi, lo_open, hi_open, NULL,                       \
     FIELD(fc_merge_model_params, f)}
#define GLOBAL(name, kind, def, req, lo, hi, lo_open, hi_open, f)                             \
    {name, 0, kind, def, req, lo, hi, lo_open, hi_open, NULL, FIELD(fc_merge_params, f)}
#define FLAG(name, def, f) GLOBAL(name, FC_PARAM_BOOL, def, 0, 0, 1, 0, 0, f)

/* per-model parameters (each with the same default and range wherever it appears) */
#define WEIGHT MODEL("weight", 1.0, 1, -INF, INF, 0, 0, weight)
#define DENSITY MODEL("density", 1.0, 0, 0.0, 1.0, 1, 0, density)
#define GAMMA MODEL("gamma", 0.01, 0, 0.0, 1.0, 0, 1, gamma)
#define EPSILON MODEL("epsilon", 0.15, 0, 0.0, INF, 0, 0, epsilon)
#define SCALE MODEL("scale", 1.0, 0, -INF, INF, 0, 0, scale)

/* global parameters */
#define INT8_MASK {"int8_mask", 0, FC_PARAM_BOOL, 0, 0, 0, 1, 0, 0, NULL, -1}
#define RESCALE_NORM                                                                          \
    {"rescale_norm", 0, FC_PARAM_CHOICE, FC_RESCALE_L1, 0, 0, 2, 0, 0, "l1, l2, linf",        \
     FIELD(fc_merge_params, rescale_norm)}
#define LAMBDA GLOBAL("lambda", FC_PARAM_FLOAT, 1.0, 0, -INF, INF, 0, 0, lambda)
#define T GLOBAL("t", FC_PARAM_FLOAT, 0.5, 1, -INF, INF, 0, 0, t)
#define ACTIVE_EPS GLOBAL("epsilon", FC_PARAM_FLOAT, 1e-5, 0, 0.0, INF, 0, 0, active_eps)

/* the task-arithmetic family: (normalize, rescale) defaults */
#define GTA_GLOBALS(norm_def, rescale_def)                                                    \
    FLAG("normalize", norm_def, normalize), FLAG("rescale", rescale_def, rescale), RESCALE_NORM, \
        LAMBDA, INT8_MASK

static const fc_merge_param_info linear_p[] = {WEIGHT, FLAG("normalize", 1, normalize)};
static const fc_merge_param_info task_arithmetic_p[] = {WEIGHT, DENSITY, GTA_GLOBALS(0, 0)};
static const fc_merge_param_info ties_p[] = {WEIGHT, DENSITY, GTA_GLOBALS(1, 0)};
static const fc_merge_param_info dare_p[] = {WEIGHT, DENSITY, GTA_GLOBALS(0, 1)};
static const fc_merge_param_info breadcrumbs_p[] = {WEIGHT, DENSITY, GAMMA, GTA_GLOBALS(0, 0)};
static const fc_merge_param_info della_p[] = {WEIGHT, DENSITY, EPSILON, GTA_GLOBALS(1, 1)};
static const fc_merge_param_info della_linear_p[] = {WEIGHT, DENSITY, EPSILON, GTA_GLOBALS(0, 1)};
static const fc_merge_param_info sce_p[] = {
    GLOBAL("select_topk", FC_PARAM_FLOAT, 1.0, 0, 0.0, 1.0, 0, 0, select_topk), INT8_MASK,
    FLAG("mask_deltas", 1, mask_deltas)};
static const fc_merge_param_info slerp_p[] = {T};
static const fc_merge_param_info nuslerp_p[] = {
    WEIGHT, FLAG("nuslerp_flatten", 1, nuslerp_flatten), FLAG("nuslerp_row_wise", 0, nuslerp_row_wise)};
static const fc_merge_param_info multislerp_p[] = {
    WEIGHT, FLAG("normalize_weights", 1, normalize_weights),
    GLOBAL("eps", FC_PARAM_FLOAT, 1e-8, 0, 0.0, INF, 0, 0, eps)};
static const fc_merge_param_info karcher_p[] = {
    GLOBAL("max_iter", FC_PARAM_INT, 10, 0, 0, INF, 0, 0, max_iter),
    GLOBAL("tol", FC_PARAM_FLOAT, 1e-5, 0, 0.0, INF, 1, 0, tol)};
static const fc_merge_param_info model_stock_p[] = {FLAG("filter_wise", 0, filter_wise)};
static const fc_merge_param_info passthrough_p[] = {SCALE};
static const fc_merge_param_info ram_p[] = {ACTIVE_EPS};
static const fc_merge_param_info ramplus_tl_p[] = {
    GLOBAL("r", FC_PARAM_FLOAT, 0.1, 0, -INF, INF, 0, 0, r),
    GLOBAL("alpha", FC_PARAM_FLOAT, 0.2, 0, 0.0, INF, 0, 0, alpha), ACTIVE_EPS};

/* della: the keep probabilities density -+ epsilon must lie in (0, 1) */
static fc_status della_check(const fc_merge_params *p, int n, int *model, fc_error *err) {
    for (int i = 0; i < n; i++) {
        const fc_merge_model_params *mp = &p->models[i];
        if (mp->density < 1.0 &&
            !(mp->density - mp->epsilon > 0.0 && mp->density + mp->epsilon < 1.0)) {
            *model = i;
            return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter",
                                     "epsilon %g is too large for density %g: density - epsilon "
                                     "and density + epsilon must lie in (0, 1)",
                                     mp->epsilon, mp->density);
        }
    }
    return FC_OK;
}

#define ROW(name, base, lo, hi, rnd, sparse, params, check, kernel)                           \
    {{name, base, lo, hi, rnd, sparse, (int)(sizeof params / sizeof params[0]), params, check}, \
     kernel}
#define NONE FC_MERGE_BASE_NONE
#define REQ FC_MERGE_BASE_REQUIRED
#define OPT FC_MERGE_BASE_OPTIONAL

/* a row: the public description (fc_merge_method_info) and the kernel that runs it */
typedef struct {
    fc_merge_method_info info;
    mg_kernel_fn kernel;
} method_row;

/* in fc_merge_method order */
static const method_row table[FC_MERGE_METHOD_COUNT] = {
    ROW("linear", NONE, 1, -1, 0, 0, linear_p, NULL, mg_merge_linear),
    ROW("task_arithmetic", REQ, 0, -1, 0, 0, task_arithmetic_p, NULL, mg_run_gta),
    ROW("ties", REQ, 0, -1, 0, 1, ties_p, NULL, mg_run_gta),
    ROW("dare_ties", REQ, 0, -1, 1, 1, dare_p, NULL, mg_run_gta),
    ROW("dare_linear", REQ, 0, -1, 1, 1, dare_p, NULL, mg_run_gta),
    ROW("breadcrumbs", REQ, 0, -1, 0, 1, breadcrumbs_p, NULL, mg_run_gta),
    ROW("breadcrumbs_ties", REQ, 0, -1, 0, 1, breadcrumbs_p, NULL, mg_run_gta),
    ROW("della", REQ, 0, -1, 1, 1, della_p, della_check, mg_run_gta),
    ROW("della_linear", REQ, 0, -1, 1, 1, della_linear_p, della_check, mg_run_gta),
    ROW("sce", REQ, 0, -1, 0, 0, sce_p, NULL, mg_run_sce),
    {{"varm", REQ, 0, -1, 0, 0, 0, NULL, NULL}, mg_run_varm},
    ROW("slerp", REQ, 1, 1, 0, 0, slerp_p, NULL, mg_merge_slerp),
    ROW("nuslerp", OPT, 2, 2, 0, 0, nuslerp_p, NULL, mg_merge_nuslerp),
    ROW("multislerp", OPT, 1, -1, 0, 0, multislerp_p, NULL, mg_merge_multislerp),
    ROW("karcher", NONE, 1, -1, 0, 0, karcher_p, NULL, mg_merge_karcher),
    ROW("model_stock", REQ, 2, -1, 0, 0, model_stock_p, NULL, mg_merge_model_stock),
    ROW("nearswap", REQ, 1, 1, 0, 0, slerp_p, NULL, mg_merge_nearswap),
    ROW("passthrough", NONE, 1, 1, 0, 0, passthrough_p, NULL, mg_merge_passthrough),
    ROW("ram", REQ, 0, -1, 0, 0, ram_p, NULL, mg_merge_ram),
    ROW("ramplus_tl", REQ, 0, -1, 0, 0, ramplus_tl_p, NULL, mg_merge_ram),
    {{"arcee_fusion", REQ, 1, 1, 0, 0, 0, NULL, NULL}, mg_merge_arcee_fusion},
};

const fc_merge_method_info *fc_merge_method_info_of(fc_merge_method m) {
    return (unsigned)m < FC_MERGE_METHOD_COUNT ? &table[m].info : NULL;
}

int fc_merge_method_from_name(const char *name) {
    for (int i = 0; name && i < FC_MERGE_METHOD_COUNT; i++)
        if (strcmp(name, table[i].info.name) == 0) return i;
    return -1;
}

const char *fc_merge_method_name(fc_merge_method m) {
    return (unsigned)m < FC_MERGE_METHOD_COUNT ? table[m].info.name : NULL;
}

mg_kernel_fn mg_method_kernel(fc_merge_method m) {
    return (unsigned)m < FC_MERGE_METHOD_COUNT ? table[m].kernel : NULL;
}

const fc_merge_param_info *fc_merge_param_find(const fc_merge_method_info *mi, const char *name,
                                               int per_model) {
    for (int i = 0; mi && name && i < mi->nparams; i++)
        if (strcmp(mi->params[i].name, name) == 0 &&
            (per_model < 0 || mi->params[i].per_model == per_model))
            return &mi->params[i];
    return NULL;
}

static void *field_of(const fc_merge_param_info *pi, const void *s) {
    return (char *)s + pi->offset;
}

static double get_field(const fc_merge_param_info *pi, const void *s) {
    return pi->kind == FC_PARAM_FLOAT ? *(const double *)field_of(pi, s)
                                      : (double)*(const int *)field_of(pi, s);
}

static void set_default(const fc_merge_param_info *pi, void *s) {
    if (pi->offset < 0) return;
    if (pi->kind == FC_PARAM_FLOAT)
        *(double *)field_of(pi, s) = pi->def;
    else
        *(int *)field_of(pi, s) = (int)pi->def;
}

void fc_merge_model_params_init(fc_merge_model_params *mp) {
    memset(mp, 0, sizeof *mp);
    for (int m = 0; m < FC_MERGE_METHOD_COUNT; m++)
        for (int i = 0; i < table[m].info.nparams; i++)
            if (table[m].info.params[i].per_model) set_default(&table[m].info.params[i], mp);
}

void fc_merge_params_init(fc_merge_params *p, fc_merge_method m) {
    memset(p, 0, sizeof *p);
    p->method = m;
    const fc_merge_method_info *mi = fc_merge_method_info_of(m);
    for (int i = 0; mi && i < mi->nparams; i++)
        if (!mi->params[i].per_model) set_default(&mi->params[i], p);
}

int fc_merge_param_ok(const fc_merge_param_info *pi, double v, char *rule, size_t size) {
    if (rule && size) {
        const char *integer = pi->kind == FC_PARAM_FLOAT ? "" : "an integer ";
        if (pi->kind == FC_PARAM_CHOICE)
            snprintf(rule, size, "one of %s", pi->choices);
        else if (pi->kind == FC_PARAM_BOOL)
            snprintf(rule, size, "true or false");
        else if (isfinite(pi->lo) && isfinite(pi->hi))
            snprintf(rule, size, "%sin %c%g, %g%c", integer, pi->lo_open ? '(' : '[', pi->lo,
                     pi->hi, pi->hi_open ? ')' : ']');
        else if (isfinite(pi->lo))
            snprintf(rule, size, "%s%s %g", integer, pi->lo_open ? ">" : ">=", pi->lo);
        else if (isfinite(pi->hi))
            snprintf(rule, size, "%s%s %g", integer, pi->hi_open ? "<" : "<=", pi->hi);
        else
            snprintf(rule, size, "%s", pi->kind == FC_PARAM_FLOAT ? "a number" : "an integer");
    }
    if (!isfinite(v) || (pi->kind != FC_PARAM_FLOAT && v != floor(v))) return 0;
    if (pi->lo_open ? !(v > pi->lo) : !(v >= pi->lo)) return 0;
    return pi->hi_open ? v < pi->hi : v <= pi->hi;
}

fc_status fc_merge_check_params(const fc_merge_params *p, int n, int *model, fc_error *err) {
    *model = -1;
    const fc_merge_method_info *mi = p ? fc_merge_method_info_of(p->method) : NULL;
    if (!mi)
        return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "unknown_method", "unknown merge method %d",
                                 p ? (int)p->method : -1);
    char rule[64];
    for (int k = 0; k < mi->nparams; k++) {
        const fc_merge_param_info *pi = &mi->params[k];
        if (pi->offset < 0) continue;
        for (int i = 0; i < (pi->per_model ? n : 1); i++) {
            double v = get_field(pi, pi->per_model ? (const void *)&p->models[i] : (const void *)p);
            if (fc_merge_param_ok(pi, v, rule, sizeof rule)) continue;
            *model = pi->per_model ? i : -1;
            return fc_error_set_rule(err, FC_ERR_VALUE, NULL, "bad_parameter", "%s %g must be %s",
                                     pi->name, v, rule);
        }
    }
    return mi->check ? mi->check(p, n, model, err) : FC_OK;
}
