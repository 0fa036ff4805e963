// loss_check.cu - the fusion loss's input checks for CUDA callers, with the rules of
// fc_fusion_loss_check (csrc/core/loss_fusion.c):
//   on the device (default): one thread per row checks the label and the target and fallback
//     entries; the first bad input (in the CPU checker's order) wins an atomicMin on a key,
//     and a one-thread kernel copies its details into the device's record, which the host
//     reads lazily (device_state.cu). No synchronisation: graph capture works.
//   strict: labels and targets are copied to the host and checked there before the kernel
//     runs; the error is raised by the call itself, at the cost of a device synchronisation
//     and N * (8 + 8K) bytes over PCIe per call.
#include <math.h>
#include <stdlib.h>

#include "device_state.cuh"
#include "loss_check.cuh"

__device__ __forceinline__ void check_entries(const int32_t *ids, const float *vals,
                                              int64_t k, int64_t r, int64_t v, int arg,
                                              unsigned long long *best) {
    if (!ids || k == 0) return;
    const int32_t *ri = ids + r * k;
    const float *rv = vals + r * k;
    for (int64_t j = 0; j < k; j++) {
        int32_t id = ri[j];
        if (id == -1) continue;
        int code = -1;
        if (id < 0 || id >= v) code = BAD_RANGE;
        else if (!isfinite(rv[j])) code = BAD_NONFINITE;
        else
            for (int64_t i = 0; i < j && code < 0; i++)
                if (ri[i] == id) code = BAD_DUPLICATE;
        if (code >= 0) {
            atomicMin(best, BAD_KEY(arg, r, j, code));
            return;  // later entries of this row sort after this one
        }
    }
}

__global__ void check_rows(const int64_t *labels, int64_t n, int64_t v, int64_t ignore,
                           const int32_t *tids, const float *tvals, int64_t tk,
                           const int32_t *fids, const float *fvals, int64_t fk,
                           unsigned long long *best) {
    for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < n;
         r += (int64_t)gridDim.x * blockDim.x) {
        int64_t y = labels[r];
        if (y != ignore && (y < 0 || y >= v)) atomicMin(best, BAD_KEY(0, r, 0, BAD_RANGE));
        check_entries(tids, tvals, tk, r, v, 1, best);
        check_entries(fids, fvals, fk, r, v, 2, best);
    }
}

// one thread: the winning key's details into the device's record, unless it already holds
// an error the host has not read yet
__global__ void record_bad(const unsigned long long *best, bad_input *rec,
                           unsigned long long call, const int64_t *labels, int64_t v,
                           int64_t ignore, const int32_t *tids, const float *tvals, int64_t tk,
                           const int32_t *fids, const float *fvals, int64_t fk) {
    unsigned long long key = *best;
    if (key == BAD_NONE || rec->key != BAD_NONE) return;
    int arg = (int)(key >> 62);
    int64_t row = (int64_t)((key >> 13) & ((1ull << 49) - 1));
    int64_t entry = (int64_t)((key >> 2) & 0x7ff);
    rec->v = v;
    rec->ignore = ignore;
    rec->call = call;
    rec->other = -1;
    rec->fvalue = 0.0;
    if (arg == 0) {
        rec->value = labels[row];
    } else {
        const int32_t *ids = arg == 1 ? tids : fids;
        const float *vals = arg == 1 ? tvals : fvals;
        int64_t k = arg == 1 ? tk : fk;
        int32_t id = ids[row * k + entry];
        rec->value = id;
        rec->fvalue = vals[row * k + entry];
        for (int64_t i = 0; i < entry; i++)
            if (ids[row * k + i] == id) { rec->other = i; break; }
    }
    rec->key = key;
}

fc_status loss_check_on_device(const loss_check_args *a, unsigned long long *scratch,
                               cudaStream_t s, fc_error *err) {
    bad_input *rec;
    unsigned long long call;
    fc_status st = bad_input_record(s, &rec, &call, err);
    if (st != FC_OK) return st;
    if (a->n == 0) return FC_OK;
    unsigned long long *best = scratch + SCRATCH_BAD_KEY;
    FC_CUDA_CHECK(cudaMemsetAsync(best, 0xff, sizeof *best, s));
    int64_t blocks = CEIL_DIV(a->n, (int64_t)256);
    if (blocks > 65535) blocks = 65535;
    check_rows<<<(unsigned)blocks, 256, 0, s>>>(a->labels, a->n, a->v, a->ignore,
                                                 a->target.ids, a->target.values, a->target.k,
                                                 a->fallback.ids, a->fallback.values,
                                                 a->fallback.k, best);
    FC_CUDA_CHECK(cudaGetLastError());
    record_bad<<<1, 1, 0, s>>>(best, rec, call, a->labels, a->v, a->ignore, a->target.ids,
                               a->target.values, a->target.k, a->fallback.ids,
                               a->fallback.values, a->fallback.k);
    FC_CUDA_CHECK(cudaGetLastError());
    return FC_OK;
}

// ------------------------------------------------------------------------------------------
// strict: on the host

// Copy a device array to a new host buffer; the CUDA error, or cudaErrorMemoryAllocation
// when the host buffer cannot be allocated.
static cudaError_t to_host(const void *d, size_t bytes, cudaStream_t s, void **out) {
    *out = malloc(bytes ? bytes : 1);
    if (!*out) return cudaErrorMemoryAllocation;
    return bytes ? cudaMemcpyAsync(*out, d, bytes, cudaMemcpyDeviceToHost, s) : cudaSuccess;
}

fc_status loss_check_on_host(const loss_check_args *a, const fc_fusion_loss_opts *o,
                             cudaStream_t s, fc_error *err) {
    size_t nt = (size_t)(a->n * a->target.k), nf = (size_t)(a->n * a->fallback.k);
    void *labels = NULL, *tids = NULL, *tvals = NULL, *fids = NULL, *fvals = NULL;
    const char *what = "labels";
    cudaError_t e = to_host(a->labels, (size_t)a->n * 8, s, &labels);
    if (e == cudaSuccess && a->target.k) {
        what = "target";
        e = to_host(a->target.ids, nt * 4, s, &tids);
        if (e == cudaSuccess) e = to_host(a->target.values, nt * 4, s, &tvals);
    }
    if (e == cudaSuccess && a->fallback.k) {
        what = "fallback";
        e = to_host(a->fallback.ids, nf * 4, s, &fids);
        if (e == cudaSuccess) e = to_host(a->fallback.values, nf * 4, s, &fvals);
    }
    if (e == cudaSuccess) {
        what = "labels and targets";
        e = cudaStreamSynchronize(s);  // every copy above has landed
    }
    fc_status st;
    if (e != cudaSuccess) {
        st = fc_error_set(err, e == cudaErrorMemoryAllocation ? FC_ERR_NOMEM : FC_ERR_CUDA,
                          "fusion_loss (CUDA, validate='strict'): copying %s to the host "
                          "failed: %s", what, cudaGetErrorString(e));
    } else {
        fc_sparse_target t = {(const int32_t *)tids, (const float *)tvals, a->target.k};
        fc_sparse_target f = {(const int32_t *)fids, (const float *)fvals, a->fallback.k};
        st = fc_fusion_loss_check(a->n, a->v, (const int64_t *)labels, &t, &f, o, err);
    }
    free(labels); free(tids); free(tvals); free(fids); free(fvals);
    return st;
}
