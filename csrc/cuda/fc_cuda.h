/* fc_cuda.h - the C ABI of fusechat's CUDA kernels (compiled by nvcc into fusechat._C_cuda).
 * Every function returns an fc_status and fills fc_error with cudaGetErrorString's words;
 * nothing here exits or prints. Pointers named d_* are device pointers. */
#ifndef FC_CUDA_H
#define FC_CUDA_H

#include "fusechat.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable devices; 0 and FC_ERR_CUDA with the reason when none (no driver, ...). */
fc_status fc_cuda_device_count(int *count, fc_error *err);
/* "NVIDIA H100 80GB HBM3, sm_90" */
fc_status fc_cuda_device_name(int device, char *buf, size_t cap, fc_error *err);

/* Float conversion on the device, same rules as fc_convert (fp_convert.h).
 * stream: a cudaStream_t, NULL for the legacy default stream. */
fc_status fc_cuda_convert(const void *d_src, fc_dtype src_dt, void *d_dst, fc_dtype dst_dt,
                          int64_t n, void *stream, fc_error *err);
/* Host arrays in and out: copies to the device, converts, copies back (for tests and for
 * callers without device memory of their own). */
fc_status fc_cuda_convert_host(const void *src, fc_dtype src_dt, void *dst, fc_dtype dst_dt,
                               int64_t n, fc_error *err);

#ifdef __cplusplus
}
#endif

#endif
