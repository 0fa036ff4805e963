/* fc_merge.h - part of the fusechat C API; include fusechat.h, not this file.
 *
 * Per-tensor merge kernels with mergekit's semantics (docs/merging.md has every formula),
 * and the streaming engine that applies them to whole checkpoints.
 *
 * Conventions of fc_merge_tensor (the numbers are those of mergekit v0.1.4 unless
 * docs/merging.md lists a deliberate difference):
 *   - `base` is the base model's tensor (NULL where the method takes none) and inputs[0..n)
 *     the other models' tensors, all with `numel` elements, each in its own float dtype
 *     (F16, BF16, F32, F64). Shapes matter only for row-wise methods (nuslerp, della,
 *     model_stock filter_wise): rows = numel / shape[ndim-1] (1-D and 0-D: one row).
 *   - Computation is float32 (reductions in float64, summed in a fixed block order), with
 *     one rounding to out_dt at the end: the result is the same bytes for any thread count.
 *   - linear and karcher take no base (a caller that wants mergekit's "base as one more
 *     input" appends it); slerp takes the base as its first endpoint and exactly one input;
 *     passthrough takes exactly one input and no base; nuslerp and multislerp take an
 *     optional base; every other method requires one.
 *   - Randomness (dare_*, della*) comes from a counter-based generator keyed by
 *     (seed, tensor_key, model index, element index).
 */
#ifndef FC_MERGE_H
#define FC_MERGE_H

#include "fusechat.h"

#ifdef __cplusplus
extern "C" {
#endif

/* NOTE: values are only ever appended. */
typedef enum fc_merge_method {
    FC_MERGE_LINEAR = 0,
    FC_MERGE_TASK_ARITHMETIC,
    FC_MERGE_TIES,
    FC_MERGE_DARE_TIES,
    FC_MERGE_DARE_LINEAR,
    FC_MERGE_BREADCRUMBS,
    FC_MERGE_BREADCRUMBS_TIES,
    FC_MERGE_DELLA,
    FC_MERGE_DELLA_LINEAR,
    FC_MERGE_SCE,
    FC_MERGE_VARM,
    FC_MERGE_SLERP,
    FC_MERGE_NUSLERP,
    FC_MERGE_MULTISLERP,
    FC_MERGE_KARCHER,
    FC_MERGE_MODEL_STOCK,
    FC_MERGE_NEARSWAP,
    FC_MERGE_PASSTHROUGH,
    FC_MERGE_RAM,
    FC_MERGE_RAMPLUS_TL,
    FC_MERGE_ARCEE_FUSION,
    FC_MERGE_METHOD_COUNT
} fc_merge_method;

/* "ties" -> FC_MERGE_TIES; -1 if unknown. */
FC_API int         fc_merge_method_from_name(const char *name);
FC_API const char *fc_merge_method_name(fc_merge_method m); /* NULL if invalid */

/* Per input model ("tensor parameters" in mergekit). */
typedef struct fc_merge_model_params {
    double weight;  /* linear, task-arithmetic family, nuslerp, multislerp */
    double density; /* sparsifiers: fraction kept, (0, 1]; >= 1 keeps everything */
    double gamma;   /* breadcrumbs: fraction of top outliers dropped (0.01) */
    double epsilon; /* della: spread of the keep probability (0.15) */
    double scale;   /* passthrough (1.0) */
} fc_merge_model_params;

/* Global parameters. fc_merge_params_init fills mergekit's defaults for the method. */
typedef struct fc_merge_params {
    fc_merge_method method;
    const fc_merge_model_params *models; /* one per input */
    int    normalize;        /* task-arithmetic family and linear */
    int    rescale;          /* rescale after sparsification (rescale_norm) */
    double lambda;           /* task-arithmetic family: final scale of the merged delta */
    double select_topk;      /* sce: fraction of highest-variance positions kept */
    int    mask_deltas;      /* sce: 1 = mergekit (mask applied to deltas), 0 = FuseChat repo */
    double t;                /* slerp, nearswap */
    int    nuslerp_flatten;  /* 1: one vector per tensor */
    int    nuslerp_row_wise; /* 1: vectors along dim 0 (columns) */
    int    normalize_weights;/* multislerp */
    double eps;              /* multislerp */
    int    max_iter;         /* karcher */
    double tol;              /* karcher */
    int    filter_wise;      /* model_stock: one t per row */
    uint64_t seed;           /* dare/della */
    uint64_t tensor_key;     /* fc_merge_tensor_key(name) for dare/della */
    int    rescale_norm;     /* the norm `rescale` preserves: FC_RESCALE_L1 (default), _L2, _LINF */
    double active_eps;       /* ram, ramplus_tl: a delta counts where |delta| > active_eps (1e-5) */
    double r, alpha;         /* ramplus_tl: unique updates scaled by 1 + r * clamp(rho, 0, alpha) */
} fc_merge_params;

/* rescale: kept deltas * norm(delta) / norm(kept deltas), unless either norm is below 1e-7 */
enum { FC_RESCALE_L1 = 0, FC_RESCALE_L2 = 1, FC_RESCALE_LINF = 2 };

/* Every field the method's table row names takes its default; the others are 0. */
FC_API void fc_merge_params_init(fc_merge_params *p, fc_merge_method m);
/* Every per-model field takes its default (the same in every method that uses it). */
FC_API void fc_merge_model_params_init(fc_merge_model_params *mp);

/* ---- the method table (merge_methods.c): the one definition of every method ----
 *
 * Names, inputs, and parameters with their scope, kind, default and range. The bindings
 * parse parameters through it (by name, into the field at `offset`) and export it to Python
 * (_C.merge_methods()), which builds its config schema from it; fc_merge_params_init and
 * fc_merge_check_params are loops over it. */
typedef enum {
    FC_PARAM_FLOAT = 0, /* a double field */
    FC_PARAM_INT,       /* an int field */
    FC_PARAM_BOOL,      /* an int field, 0 or 1 */
    FC_PARAM_CHOICE     /* an int field: the index of a name in `choices` */
} fc_merge_param_kind;

enum { FC_MERGE_BASE_NONE = 0, FC_MERGE_BASE_REQUIRED = 1, FC_MERGE_BASE_OPTIONAL = 2 };

typedef struct fc_merge_param_info {
    const char *name;     /* as in mergekit configs */
    int    per_model;     /* 1: a field of fc_merge_model_params, 0: of fc_merge_params */
    int    kind;          /* fc_merge_param_kind */
    double def;           /* the default (CHOICE: its index) */
    int    required;      /* configs must give it (def is what a C caller gets) */
    double lo, hi;        /* valid values: finite, within [lo, hi] (-HUGE_VAL / HUGE_VAL: */
    int    lo_open, hi_open; /* no bound), lo_open / hi_open excluding the bound */
    const char *choices;  /* CHOICE: the names of 0, 1, ... separated by ", " */
    long   offset;        /* offsetof the field; -1: accepted and ignored (mergekit's int8_mask) */
} fc_merge_param_info;

typedef struct fc_merge_method_info {
    const char *name;
    int base;             /* FC_MERGE_BASE_*; NONE: a caller merges a given base as one more input */
    int min_models;       /* inputs besides the base */
    int max_models;       /* -1: any number */
    int randomized;       /* random masks keyed by seed and tensor_key */
    int sparsifies;       /* density drops deltas */
    int nparams;
    const fc_merge_param_info *params;
    /* a rule tying parameters together (della: epsilon and density), or NULL; on failure
     * *model is the offending input and err says why */
    fc_status (*check)(const fc_merge_params *p, int n, int *model, fc_error *err);
} fc_merge_method_info;

/* The row of m; NULL if m is not a method. */
FC_API const fc_merge_method_info *fc_merge_method_info_of(fc_merge_method m);
/* The parameter of the row called name (per_model: 1, 0, or -1 for either), or NULL. */
FC_API const fc_merge_param_info *fc_merge_param_find(const fc_merge_method_info *mi,
                                                      const char *name, int per_model);
/* 1 if v is a valid value of pi (finite, in range, integral for non-FLOAT kinds), else 0.
 * rule (if not NULL): the rule in words, e.g. "in (0, 1]", "an integer >= 0". */
FC_API int fc_merge_param_ok(const fc_merge_param_info *pi, double v, char *rule, size_t size);
/* Every parameter of p's method in its range for n inputs, and the method's own rule. On
 * failure *model is the input whose parameter is wrong (-1: a global one) and err names the
 * parameter, its value and the rule (without method or model; fc_merge_tensor adds them). */
FC_API fc_status fc_merge_check_params(const fc_merge_params *p, int n, int *model,
                                       fc_error *err);
/* 64-bit FNV-1a of a tensor name: the RNG key of that tensor. */
FC_API uint64_t fc_merge_tensor_key(const char *name);

/* ---- the merge context: what a merge keeps between tensor calls ----
 *
 * Owned by the caller: created with fc_merge_ctx_init (NULL when out of memory), passed to
 * every fc_merge_tensor of one merge, freed with fc_merge_ctx_free (NULL is fine). It holds
 * the kernels' instruction set, the streaming switch, the streaming outcome counters and
 * the kept working buffers; nothing in the merge component is process-wide, so merges with
 * different contexts may run at once in different threads. One context may also be shared
 * by threads (its settings are atomic, its buffers guarded by a lock), but then its
 * counters mix their tensors. A NULL context stands for the defaults: "auto", streaming on,
 * no buffers kept, nothing counted. */
typedef struct fc_merge_ctx fc_merge_ctx;

FC_API fc_merge_ctx *fc_merge_ctx_init(void);
FC_API void          fc_merge_ctx_free(fc_merge_ctx *ctx);
/* The instruction set of the hot kernels (task-arithmetic family, SCE, VaRM): "auto" (the
 * default: the widest the CPU has), "avx512", "avx2" or "portable" (SSE2 on x86-64). The
 * results are the same bytes whichever is used; this exists to test that. Returns 0, or -1
 * for an unknown name or an instruction set the CPU lacks. fc_merge_ctx_isa: the one in
 * use ("auto" resolved). */
FC_API int         fc_merge_ctx_set_isa(fc_merge_ctx *ctx, const char *name);
FC_API const char *fc_merge_ctx_isa(const fc_merge_ctx *ctx);
/* Streaming top-k (TIES, SCE on tensors of 2^21 elements or more: one pass over the inputs
 * guided by a sample, see merge_sample.c) on (the default) or off (the exact multi-pass
 * path). The same bytes either way; for tests and benchmarks. */
FC_API void fc_merge_ctx_set_streaming(fc_merge_ctx *ctx, int on);
/* Tensors merged with ctx that the streaming path finished in one pass, and those where its
 * sampled band missed and the exact passes ran instead (a diagnostic: a run's result). */
FC_API void fc_merge_ctx_stream_counts(const fc_merge_ctx *ctx, int64_t *streamed,
                                       int64_t *fell_back);
/* keep 1: the kernels keep their big working buffers (top-k keys, masks) in ctx for the
 * next tensor instead of freeing them (saves faulting in and zeroing fresh pages for each
 * tensor of a model); keep 0: free them (the state of a new context). */
FC_API void fc_merge_ctx_keep_buffers(fc_merge_ctx *ctx, int keep);

/* Merge one tensor with the kernels and settings of ctx (NULL: the defaults). */
FC_API fc_status fc_merge_tensor(fc_merge_ctx *ctx, const fc_merge_params *p, const void *base,
                                 fc_dtype base_dt, const void *const *inputs,
                                 const fc_dtype *input_dts, int n, int ndim,
                                 const int64_t *shape, void *out, fc_dtype out_dt, int nthreads,
                                 fc_error *err);

/* ------------------------------------------------------------------------------------ */
/* counter-based randomness (rng.c): uniform floats in [0, 1) with 24 random bits */

/* The stream of one (seed, tensor, model). */
FC_API uint64_t fc_rng_stream(uint64_t seed, uint64_t tensor_key, uint64_t model);
/* The element's draw: a function of (stream, index) only. */
FC_API float    fc_rng_uniform(uint64_t stream, uint64_t index);

/* ------------------------------------------------------------------------------------ */
/* exact top-k selection (select.c) */

/* Writes keys of elements [begin, begin + n) into keys. Larger keys rank first; among
 * equal keys the lower element index ranks first. */
typedef void (*fc_key_fn)(void *ctx, int64_t begin, int64_t n, uint32_t *keys);

/* The k best elements are exactly those with key > key, or key == key and index < cut. */
typedef struct fc_topk {
    uint32_t key;
    int64_t  cut;
} fc_topk;

static inline int fc_topk_has(const fc_topk *t, uint32_t key, int64_t index) {
    return key > t->key || (key == t->key && index < t->cut);
}

/* O(n): two 16-bit histogram passes over the keys, and one counting pass when the k-th
 * key is tied. k <= 0 selects nothing, k >= n everything. fn NULL: ctx is an array of the
 * n keys (read in place). */
FC_API fc_status fc_select_topk(int64_t n, int64_t k, fc_key_fn fn, void *ctx, int nthreads,
                                fc_topk *out, fc_error *err);
/* The order-preserving key of a float (|x| of a non-negative float is its bit pattern). */
static inline uint32_t fc_float_key(float f) {
    union { float f; uint32_t u; } v;
    v.f = f;
    return (v.u & 0x80000000u) ? ~v.u : (v.u | 0x80000000u);
}

#ifdef __cplusplus
}
#endif

#endif
