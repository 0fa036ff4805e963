// convert.cu - float dtype conversion on the GPU, bit-identical to the CPU kernel:
// both compile the scalar rules of csrc/include/fp_convert.h.
//
// One thread per element in a grid-stride loop; the (src, dst) pair is uniform across the
// grid, so the switch costs no divergence. Memory bound: n * (src + dst) bytes.
#include "common.cuh"
#include "fp_convert.h"

#define PAIR(a, b) ((a) * FC_DTYPE_COUNT + (b))

__global__ void convert_kernel(const unsigned char *__restrict__ s, unsigned char *__restrict__ d,
                               int pair, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const uint16_t *s16 = (const uint16_t *)s;
        const float *s32 = (const float *)s;
        const double *s64 = (const double *)s;
        uint16_t *d16 = (uint16_t *)d;
        float *d32 = (float *)d;
        double *d64 = (double *)d;
        switch (pair) {
        case PAIR(FC_BF16, FC_F32): d32[i] = fcx_bf16_to_f32(s16[i]); break;
        case PAIR(FC_F16, FC_F32):  d32[i] = fcx_f16_to_f32(s16[i]); break;
        case PAIR(FC_F64, FC_F32):  d32[i] = fcx_f64_to_f32(s64[i]); break;
        case PAIR(FC_F32, FC_BF16): d16[i] = fcx_f32_to_bf16(s32[i]); break;
        case PAIR(FC_F16, FC_BF16): d16[i] = fcx_f32_to_bf16(fcx_f16_to_f32(s16[i])); break;
        case PAIR(FC_F64, FC_BF16): d16[i] = fcx_f64_to_bf16(s64[i]); break;
        case PAIR(FC_F32, FC_F16):  d16[i] = fcx_f32_to_f16(s32[i]); break;
        case PAIR(FC_BF16, FC_F16): d16[i] = fcx_bf16_to_f16(s16[i]); break;
        case PAIR(FC_F64, FC_F16):  d16[i] = fcx_f64_to_f16(s64[i]); break;
        case PAIR(FC_F32, FC_F64):  d64[i] = fcx_f32_to_f64(s32[i]); break;
        case PAIR(FC_BF16, FC_F64): d64[i] = fcx_bf16_to_f64(s16[i]); break;
        case PAIR(FC_F16, FC_F64):  d64[i] = fcx_f16_to_f64(s16[i]); break;
        }
    }
}

extern "C" fc_status fc_cuda_device_count(int *count, fc_error *err) {
    *count = 0;
    FC_CUDA_CHECK(cudaGetDeviceCount(count));
    return FC_OK;
}

extern "C" void fc_cuda_versions(int *runtime, int *driver) {
    *runtime = CUDART_VERSION;
    *driver = 0;
    if (cudaDriverGetVersion(driver) != cudaSuccess) *driver = 0;
    cudaGetLastError();
}

extern "C" fc_status fc_cuda_device_name(int device, char *buf, size_t cap, fc_error *err) {
    cudaDeviceProp p;
    FC_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    snprintf(buf, cap, "%s, sm_%d%d", p.name, p.major, p.minor);
    return FC_OK;
}

extern "C" fc_status fc_cuda_convert(const void *d_src, fc_dtype src_dt, void *d_dst,
                                     fc_dtype dst_dt, int64_t n, void *stream, fc_error *err) {
    if (!fc_dtype_is_float(src_dt) || !fc_dtype_is_float(dst_dt))
        return fc_error_set(err, FC_ERR_TYPE, "fc_cuda_convert: dtypes must be F16, BF16, F32 "
                            "or F64");
    if (n <= 0) return FC_OK;
    cudaStream_t s = (cudaStream_t)stream;
    if (src_dt == dst_dt) {
        FC_CUDA_CHECK(cudaMemcpyAsync(d_dst, d_src, (size_t)n * fc_dtype_size(src_dt),
                                      cudaMemcpyDeviceToDevice, s));
        return FC_OK;
    }
    const int threads = 256;
    int64_t blocks = CEIL_DIV(n, (int64_t)threads);
    if (blocks > 65535LL * 16) blocks = 65535LL * 16;
    convert_kernel<<<(unsigned)blocks, threads, 0, s>>>((const unsigned char *)d_src,
                                                        (unsigned char *)d_dst,
                                                        PAIR(src_dt, dst_dt), n);
    FC_CUDA_CHECK(cudaGetLastError());
    return FC_OK;
}

extern "C" fc_status fc_cuda_convert_host(const void *src, fc_dtype src_dt, void *dst,
                                          fc_dtype dst_dt, int64_t n, fc_error *err) {
    if (n <= 0) return FC_OK;
    size_t sb = (size_t)n * fc_dtype_size(src_dt), db = (size_t)n * fc_dtype_size(dst_dt);
    void *d_src = NULL, *d_dst = NULL;
    fc_status st = FC_OK;
    cudaError_t e = cudaMalloc(&d_src, sb);
    if (e == cudaSuccess) e = cudaMalloc(&d_dst, db);
    if (e == cudaSuccess) e = cudaMemcpy(d_src, src, sb, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        st = fc_error_set(err, FC_ERR_CUDA, "fc_cuda_convert_host: %s", cudaGetErrorString(e));
    } else {
        st = fc_cuda_convert(d_src, src_dt, d_dst, dst_dt, n, NULL, err);
        if (st == FC_OK) {
            e = cudaMemcpy(dst, d_dst, db, cudaMemcpyDeviceToHost);
            if (e != cudaSuccess)
                st = fc_error_set(err, FC_ERR_CUDA, "fc_cuda_convert_host: %s",
                                  cudaGetErrorString(e));
        }
    }
    cudaFree(d_src);
    cudaFree(d_dst);
    return st;
}
