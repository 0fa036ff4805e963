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
/* The CUDA runtime version this module was built with and the one the driver supports,
 * as 1000 * major + 10 * minor (driver: 0 when no driver is installed). */
void fc_cuda_versions(int *runtime, int *driver);
/* Make `device` current, saving the previous one in *prev (for fc_cuda_device_leave): the
 * kernels launch on the current device, which must be the tensors'. */
fc_status fc_cuda_device_enter(int device, int *prev, fc_error *err);
void fc_cuda_device_leave(int prev);
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

/* The fused fusion loss on the device (semantics of fc_fusion_loss in fc_loss.h). All
 * arrays are device pointers: logits [N, V] F32/F16/BF16, labels [N] int64, target and
 * fallback ids/values [N, K] (the structs themselves live on the host), row_loss [N] float32,
 * grad [N, V] in the logits' dtype (may equal the logits; NULL = loss only), loss [1] float32
 * (the reduced loss, written on the device: no host synchronisation). opts->validate:
 * FC_VALIDATE checks labels and targets on the device and reports bad input from a later
 * call (or fc_cuda_loss_errors), naming the call; FC_VALIDATE_STRICT copies them to the host
 * and checks them with fc_fusion_loss_check before running (synchronises); 0 checks
 * nothing. Out-of-range labels count as ignored and out-of-range ids as padding. */
fc_status fc_cuda_fusion_loss(const void *d_logits, fc_dtype dtype, int64_t n, int64_t v,
                              const int64_t *d_labels, const fc_sparse_target *target,
                              const fc_sparse_target *fallback, const fc_fusion_loss_opts *opts,
                              float *d_row_loss, void *d_grad, float *d_loss, void *stream,
                              fc_error *err);

/* Bad input found on the current device by fusion loss calls so far (waits for the device);
 * FC_ERR_VALUE naming the call, row and entry, and the record is cleared. */
fc_status fc_cuda_loss_errors(fc_error *err);

/* Backward: multiply row r of grad [N, V] in place by gout[r] (per_row) or gout[0], unless
 * that factor is already in it: applied [N] (ones after the forward) holds it. */
fc_status fc_cuda_scale_grad(void *d_grad, fc_dtype dtype, int64_t n, int64_t v,
                             const float *d_gout, int per_row, float *d_applied, void *stream,
                             fc_error *err);

/* Top-k + CE on the device (semantics of fc_topk_ce; k <= 64). Labels are not validated:
 * out-of-range labels count as ignored. seq_offsets must be valid (the caller checks). */
fc_status fc_cuda_topk_ce(const void *d_logits, fc_dtype dtype, int64_t n, int64_t v, int64_t k,
                          const int64_t *d_labels, int64_t ignore_index, int32_t *d_top_ids,
                          float *d_top_logits, float *d_token_ce, const int64_t *d_seq_offsets,
                          int64_t n_seq, float *d_seq_ce, uint8_t *d_seq_has, void *stream,
                          fc_error *err);

#ifdef __cplusplus
}
#endif

#endif
