/* merge_internal.h - what the merge kernels share (merge_common.c): the tensor being
 * merged, block loading with conversion to float32, deterministic blocked reductions and
 * the linear-combination output pass. Not part of the public API. */
#ifndef FC_MERGE_INTERNAL_H
#define FC_MERGE_INTERNAL_H

#include "fusechat.h"

#define MG_BLOCK 8192 /* elements per block: fixed, so reductions never depend on threads */

typedef struct mg_tensor {
    const fc_merge_params *p;
    int n;                       /* inputs, not counting the base */
    const void *base;            /* NULL if none */
    fc_dtype base_dt;
    const void *const *in;
    const fc_dtype *in_dt;
    int64_t numel, rows, cols;   /* rows * cols == numel; cols = last dimension */
    int ndim;
    void *out;
    fc_dtype out_dt;
    int nthreads;
    fc_error *err;
    fc_merge_ctx *ctx;           /* the caller's context (merge_ctx.c); NULL: the defaults */
} mg_tensor;

/* Convert elements [begin, begin + n) of src to float32. */
void mg_load(const void *src, fc_dtype dt, int64_t begin, int64_t n, float *dst);
/* Round n float32 values once to dt and store them at element `begin` of dst. */
void mg_store(void *dst, fc_dtype dt, int64_t begin, int64_t n, const float *src);

/* fn(t, user, begin, len, scratch, block_index) for each fixed block of `block` elements
 * of [0, total), blocks spread over threads; scratch holds scratch_floats floats per call. */
typedef fc_status (*mg_block_fn)(const mg_tensor *t, void *user, int64_t begin, int64_t len,
                                 float *scratch, int64_t block_index);
fc_status mg_for_blocks(const mg_tensor *t, int64_t total, int64_t block, size_t scratch_floats,
                        mg_block_fn fn, void *user);

/* Gram matrices of the vectors v_i = x_i - (sub_base ? B : 0), i < n (plus the base as
 * index n when with_base and sub_base is off). Layouts: one vector for the whole tensor,
 * one per row (last dimension), or one per column (dim 0, for nuslerp row_wise).
 * gram[v * m * m + i * m + j], m = n (+1 with base), in float64. */
typedef enum { MG_FLAT, MG_ROWS, MG_COLS } mg_layout;
int64_t   mg_vector_count(const mg_tensor *t, mg_layout lay);
fc_status mg_gram(const mg_tensor *t, mg_layout lay, int sub_base, int with_base, double *gram);

/* out = coef[v][n] * B + sum_i coef[v][i] * x_i for the vector v holding each element;
 * coef has n + 1 entries per vector (the last for the base, ignored without one). */
fc_status mg_combine(const mg_tensor *t, mg_layout lay, const float *coef);

/* The sign-consensus accumulation: where d[k] * sign[k] > 0 (so never where d == 0),
 * mix[k] += scale * d[k] and div[k] += w. Branch-free bit tests, so it vectorises. */
void mg_add_agreeing(int64_t len, const float *restrict d, const float *restrict sign,
                     float scale, float w, float *restrict mix, float *restrict div);

/* A float64 array placed inside float scratch at float offset `off` (rounded up to even:
 * scratch comes from malloc, so an even float offset is 8-byte aligned). Callers leave
 * one float of slack for the rounding. */
static inline double *mg_doubles_at(float *scratch, size_t off) {
    return (double *)(void *)(scratch + ((off + 1) & ~(size_t)1));
}

/* Float64 sums over float arrays with 8 independent accumulators (a single accumulator is a
 * serial chain of 4-cycle adds); the order is fixed, so results do not depend on threads. */
double mg_dot(const float *a, const float *b, int64_t len);   /* sum a[k] * b[k] */
double mg_sum_abs(const float *a, int64_t len);                /* sum |a[k]| */

/* Big uninitialised buffers, reused between the tensors merged with a context while
 * fc_merge_ctx_keep_buffers(ctx, 1) is in force (merge_ctx.c; ctx NULL: plain malloc and
 * free); take returns NULL when out of memory. */
void *mg_buffer_take(fc_merge_ctx *ctx, size_t bytes);
void  mg_buffer_give(fc_merge_ctx *ctx, void *p);

/* fc_select_topk with its histogram buffers taken from (and kept in) pool (select.c). */
fc_status mg_select_topk(fc_merge_ctx *pool, int64_t n, int64_t k, fc_key_fn fn, void *ctx,
                         int nthreads, fc_topk *out, fc_error *err);
/* mg_select_topk computing the keys once with fn, fused with its first histogram pass, into
 * store[n]: its later passes and the caller read them there. */
fc_status mg_select_topk_store(fc_merge_ctx *pool, int64_t n, int64_t k, fc_key_fn fn, void *ctx,
                               uint32_t *store, int nthreads, fc_topk *out, fc_error *err);
/* Only the key of the k-th largest of keys[n] (no pass for the cut among its ties). */
fc_status mg_select_topk_key(fc_merge_ctx *pool, int64_t n, int64_t k, const uint32_t *keys,
                             int nthreads, uint32_t *key, fc_error *err);

/* Sampling a threshold (merge_sample.c): the streaming top-k of TIES and SCE guesses a band
 * of keys holding the k-th largest from a sample of the keys, decides everything outside
 * the band in its one pass and the band exactly afterwards. Tensors smaller than
 * MG_SAMPLE_MIN take the exact multi-pass path. */
#define MG_SAMPLE_SIZE 32768   /* the smallest sample; bigger tensors get about 1.5% */
#define MG_SAMPLE_MAX 1048576
#define MG_SAMPLE_RUN 64
#define MG_SAMPLE_MIN ((int64_t)1 << 21)
/* The sample size for a tensor of numel >= MG_SAMPLE_MIN elements. */
int64_t mg_sample_size(int64_t numel);
/* fn's keys at `size` positions in evenly spread runs of [0, numel), sorted ascending into
 * keys (tmp: `size` more as scratch). */
void mg_sample_keys(int64_t numel, int64_t size, fc_key_fn fn, void *ctx, uint32_t *keys,
                    uint32_t *tmp);
/* mid: the sample key of rank `rank` from the top (1-based); [lo, hi] around it, widened by
 * 5 times `sd`, the standard deviation of that rank; lo = 0 and hi = UINT32_MAX at the ends. */
void mg_sample_band(const uint32_t *sorted, int64_t size, double rank, double sd, uint32_t *lo,
                    uint32_t *mid, uint32_t *hi);
/* The fraction of the sample inside [lo, hi]. */
double mg_sample_fraction(const uint32_t *sorted, int64_t size, uint32_t lo, uint32_t hi);
/* Whether the streaming paths are on in t's context (fc_merge_ctx_set_streaming). */
int mg_streaming(const mg_tensor *t);
/* Counts, in t's context, a streaming attempt that finished the tensor (1) or fell back (0). */
void mg_stream_outcome(const mg_tensor *t, int streamed);

/* The instruction sets of the hot kernels; mg_ctx_isa: the one ctx uses (never AUTO). */
enum { MG_ISA_AUTO, MG_ISA_PORTABLE, MG_ISA_AVX2, MG_ISA_AVX512, MG_ISA_COUNT };
int mg_ctx_isa(const fc_merge_ctx *ctx);

/* Allocation helpers that report NOMEM through t->err. */
void *mg_calloc(const mg_tensor *t, size_t count, size_t size);

/* Kernels, one family per file. */
fc_status mg_merge_gta(const mg_tensor *t);       /* merge_gta.c: task arithmetic family */
fc_status mg_merge_sce(const mg_tensor *t);       /* merge_sce.c */
fc_status mg_merge_varm(const mg_tensor *t);      /* merge_sce.c */
fc_status mg_merge_linear(const mg_tensor *t);    /* merge_linear.c */
fc_status mg_merge_passthrough(const mg_tensor *t);
fc_status mg_merge_nearswap(const mg_tensor *t);
fc_status mg_merge_model_stock(const mg_tensor *t);
fc_status mg_merge_slerp(const mg_tensor *t);     /* merge_slerp.c */
fc_status mg_merge_nuslerp(const mg_tensor *t);
fc_status mg_merge_multislerp(const mg_tensor *t);/* merge_sphere.c */
fc_status mg_merge_karcher(const mg_tensor *t);
fc_status mg_merge_ram(const mg_tensor *t);       /* merge_ram.c: ram, ramplus_tl */
fc_status mg_merge_arcee_fusion(const mg_tensor *t); /* merge_arcee.c */

/* A method's kernel, named by its row in the method table (merge_methods.c), which
 * fc_merge_tensor runs after the checks. */
typedef fc_status (*mg_kernel_fn)(const mg_tensor *t);
mg_kernel_fn mg_method_kernel(fc_merge_method m);

/* The kernels with one build per instruction set run through these, which pick the build
 * the tensor's context uses (merge.c); sce and varm of a base alone return the base. */
fc_status mg_run_gta(const mg_tensor *t);
fc_status mg_run_sce(const mg_tensor *t);
fc_status mg_run_varm(const mg_tensor *t);

/* The hot kernels of one build: portable (merge.c), AVX2 or AVX-512 (merge_avx2.c,
 * merge_avx512.c; x86-64 only). merge.c picks one per call (fc_merge_ctx_set_isa). */
typedef struct mg_kernels {
    fc_status (*gta)(const mg_tensor *t);
    fc_status (*sce)(const mg_tensor *t);
    fc_status (*varm)(const mg_tensor *t);
    fc_status (*combine)(const mg_tensor *t, mg_layout lay, const float *coef);
} mg_kernels;

#endif
