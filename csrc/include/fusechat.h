/*
 * fusechat.h - the public C API of fusechat's core library.
 *
 * fusechat fuses chat LLMs (FuseChat, Wan et al.): stage 1 extracts, aligns and fuses
 * top-K next-token distributions and trains on them with a sparse loss; stage 2 merges
 * the resulting checkpoints in parameter space. This library holds the hot loops; the
 * Python package `fusechat` is a thin layer over it.
 *
 * This header holds what every part shares (status codes, the error struct, dtypes,
 * conversions, threads) and includes one header per component:
 *   fc_safetensors.h  reading and writing safetensors files and sharded folders
 *   fc_align.h        vocabularies, token alignment, vocabulary maps
 *   fc_loss.h         the sparse fusion loss, top-K extraction, fusion rules
 *   fc_merge.h        per-tensor merge kernels
 *
 * Error model. Every fallible function returns an fc_status and, when it is not FC_OK,
 * fills the caller's fc_error with a message that names the file, tensor or argument and
 * the rule broken. The library never calls exit(), abort() or assert() on a condition
 * that depends on its input, never prints, and never touches Python.
 *
 * Threading. Kernels take an explicit thread count (0 = fc_default_threads()). All
 * functions are reentrant; handles are not shared between threads unless a function says so.
 * State that lives across calls is in a handle the caller owns (the merge component's
 * fc_merge_ctx: instruction set, streaming switch and counters, kept buffers), never in the
 * process; the one exception is the alignment DP's SIMD test switch (align_dtw_dp.c).
 *
 * Ownership. Handles come in open/close or init/free pairs; the caller owns what it opens.
 * Shapes are int64_t, byte counts size_t/uint64_t. Data is little-endian and row-major.
 */
#ifndef FUSECHAT_H
#define FUSECHAT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FC_API __declspec(dllexport)
#else
#define FC_API __attribute__((visibility("default")))
#endif

/* ------------------------------------------------------------------------------------ */
/* status and errors */

/* NOTE: values are only ever appended; a removed value stays as a comment. */
typedef enum fc_status {
    FC_OK              = 0,
    FC_ERR_NOMEM       = 1,  /* allocation failed                         -> MemoryError      */
    FC_ERR_IO          = 2,  /* a system call failed; sys_errno and path  -> OSError          */
    FC_ERR_VALUE       = 3,  /* bad argument value                        -> ValueError       */
    FC_ERR_TYPE        = 4,  /* bad argument type or dtype                -> TypeError        */
    FC_ERR_SAFETENSORS = 5,  /* a safetensors file or index breaks a rule -> SafetensorsError */
    FC_ERR_TOKENIZER   = 6,  /* a tokenizer file is malformed/unsupported -> TokenizerError   */
    FC_ERR_EXISTS      = 7,  /* an output exists and overwrite was off    -> FileExistsError  */
    FC_ERR_CUDA        = 8,  /* a CUDA call failed                        -> CudaError        */
    FC_ERR_UNSUPPORTED = 9,  /* valid input this build cannot handle      -> NotImplementedError */
    FC_ERR_INTERNAL    = 10, /* a broken invariant (a bug)                -> RuntimeError     */
    FC_ERR_FORMAT      = 11, /* another file format (TopK store, config)  -> FormatError      */
} fc_status;

typedef struct fc_error {
    fc_status code;
    int       sys_errno;   /* errno for FC_ERR_IO, else 0 */
    char      rule[48];    /* short machine-readable rule name, e.g. "header_too_large" */
    char      path[1024];  /* the file concerned, "" if none */
    char      msg[768];    /* full human-readable message */
} fc_error;

FC_API const char *fc_status_name(fc_status s);
/* Clear an error struct (code FC_OK, empty strings). */
FC_API void fc_error_clear(fc_error *err);
/* Fill err and return code. msg is printf-formatted. */
FC_API fc_status fc_error_set(fc_error *err, fc_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Same, also recording the file path and a rule name (either may be NULL). */
FC_API fc_status fc_error_set_rule(fc_error *err, fc_status code, const char *path,
                                   const char *rule, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* An I/O failure: errno value, the file, and what was being done. */
FC_API fc_status fc_error_set_io(fc_error *err, int sys_errno, const char *path,
                                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ------------------------------------------------------------------------------------ */
/* dtypes: the safetensors set, named by their safetensors strings */

/* NOTE: values are only ever appended. */
typedef enum fc_dtype {
    FC_BOOL    = 0,
    FC_U8      = 1,
    FC_I8      = 2,
    FC_I16     = 3,
    FC_U16     = 4,
    FC_F16     = 5,
    FC_BF16    = 6,
    FC_I32     = 7,
    FC_U32     = 8,
    FC_F32     = 9,
    FC_F64     = 10,
    FC_I64     = 11,
    FC_U64     = 12,
    FC_F8_E4M3 = 13,
    FC_F8_E5M2 = 14,
    FC_DTYPE_COUNT
} fc_dtype;

FC_API size_t      fc_dtype_size(fc_dtype dt);     /* bytes per element, 0 if invalid */
FC_API const char *fc_dtype_name(fc_dtype dt);     /* "BF16", ...; NULL if invalid */
/* Parse a safetensors dtype string of len bytes (not NUL-terminated); -1 if unknown. */
FC_API int         fc_dtype_from_name(const char *s, size_t len);
FC_API int         fc_dtype_is_float(fc_dtype dt); /* F16, BF16, F32, F64 (the convertible set) */

/* Convert n elements between the float dtypes F16, BF16, F32, F64 (any pair, same dtype
 * is a copy). Rounding is to nearest, ties to even, done once from the source value;
 * NaN stays NaN (sign and top payload bits kept, quiet), infinities stay infinities,
 * overflow gives infinity. src and dst need no alignment and must not overlap. */
FC_API fc_status fc_convert(const void *src, fc_dtype src_dt, void *dst, fc_dtype dst_dt,
                            int64_t n, int nthreads, fc_error *err);

/* Scalar conversions, exposed for other kernels and for tests. */
FC_API float    fc_bf16_to_f32(uint16_t h);
FC_API uint16_t fc_f32_to_bf16(float f);
FC_API float    fc_f16_to_f32(uint16_t h);
FC_API uint16_t fc_f32_to_f16(float f);
FC_API uint16_t fc_f64_to_f16(double d);
FC_API uint16_t fc_f64_to_bf16(double d);

/* ------------------------------------------------------------------------------------ */
/* threads */

/* Number of threads used when a kernel is given 0: FUSECHAT_NUM_THREADS, else
 * OMP_NUM_THREADS, else the CPUs this process may run on. */
FC_API int fc_default_threads(void);

/* fn(ctx, begin, end) is called on disjoint ranges covering [0, n), on up to nthreads
 * threads (0 = default), each range at least `grain` long except the last. Returns the
 * first non-OK status a range returned (ranges keep running); fn must fill its own error
 * state through ctx. Falls back to the calling thread if threads cannot be created. */
typedef fc_status (*fc_range_fn)(void *ctx, int64_t begin, int64_t end);
FC_API fc_status fc_parallel_for(int64_t n, int64_t grain, int nthreads, fc_range_fn fn,
                                 void *ctx);

#ifdef __cplusplus
}
#endif

#include "fc_safetensors.h"
#include "fc_align.h"
#include "fc_loss.h"
#include "fc_merge.h"

#endif /* FUSECHAT_H */
