// loss_fusion.cu - the fused sparse fusion loss and top-k + CE extraction on the GPU, with the
// semantics of csrc/core/loss_fusion.c and loss_topk.c (formulas in fc_loss.h).
//
// Fusion loss: one block per row, two passes over the row (losses.md 8, 10), with 16-byte
// vector loads and stores when V % 8 == 0 and the buffers are aligned (32000, 151936, ...):
//   pass 1: each thread keeps an online (max, sum exp) over its strided logits in fp32, then a
//           block reduction; thread 0 renormalises the <= K target entries and writes the
//           row loss; the K target logits and the label logit are gathered to shared memory;
//   pass 2: grad_i = exp(z_i - m) * (scale / d), rounded once to the logits' dtype (the
//           logits may be the gradient buffer: in place), then the sparse corrections are
//           recomputed in fp32 and stored.
// Bytes per row: 2 reads + 1 write of the row (6V for bf16) plus ~100 B of target.
// The reduction scale (1 / supervised rows) is computed on the device by a first kernel and
// the reduced loss by a last one: no host synchronisation (inputs are checked on the device,
// loss_check.cu, unless validate is strict), so the call can be captured into a CUDA graph.
//
// Top-k + CE: one block per row; each thread keeps its own sorted top-k of its strided
// elements and an online (max, sum exp); the block merges the thread lists by k rounds of
// an arg-max over the list heads. Order: value descending (NaN largest), ties to lower id.
#include "fp_convert.h"
#include "common.cuh"
#include "device_state.cuh"
#include "loss_check.cuh"

#define LOSS_THREADS 512
#define MAX_ENTRIES 1025
#define TOPK_THREADS 256
#define TOPK_MAX 64

__device__ __forceinline__ float load_logit(const void *row, int dt, int64_t i) {
    if (dt == FC_F32) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    return dt == FC_BF16 ? fcx_bf16_to_f32(h) : fcx_f16_to_f32(h);
}

__device__ __forceinline__ void store_grad(void *row, int dt, int64_t i, float x) {
    if (dt == FC_F32) ((float *)row)[i] = x;
    else if (dt == FC_BF16) ((uint16_t *)row)[i] = fcx_f32_to_bf16(x);
    else ((uint16_t *)row)[i] = fcx_f32_to_f16(x);
}

__device__ __forceinline__ void store_grad_exact(void *row, int dt, int64_t i, double x) {
    if (dt == FC_F32) ((float *)row)[i] = fcx_f64_to_f32(x);
    else if (dt == FC_BF16) ((uint16_t *)row)[i] = fcx_f64_to_bf16(x);
    else ((uint16_t *)row)[i] = fcx_f64_to_f16(x);
}

// 8 consecutive logits from 16-byte aligned memory (vec path: V % 8 == 0, aligned base)
__device__ __forceinline__ void load8(const void *row, int dt, int64_t g, float *x) {
    if (dt == FC_F32) {
        float4 a = ((const float4 *)row)[2 * g], b = ((const float4 *)row)[2 * g + 1];
        x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w;
        x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
        return;
    }
    uint4 u = ((const uint4 *)row)[g];
    uint32_t w[4] = {u.x, u.y, u.z, u.w};
    for (int j = 0; j < 4; j++) {
        uint16_t lo = (uint16_t)(w[j] & 0xffffu), hi = (uint16_t)(w[j] >> 16);
        x[2 * j] = dt == FC_BF16 ? fcx_bf16_to_f32(lo) : fcx_f16_to_f32(lo);
        x[2 * j + 1] = dt == FC_BF16 ? fcx_bf16_to_f32(hi) : fcx_f16_to_f32(hi);
    }
}

__device__ __forceinline__ void store8(void *row, int dt, int64_t g, const float *x) {
    if (dt == FC_F32) {
        ((float4 *)row)[2 * g] = make_float4(x[0], x[1], x[2], x[3]);
        ((float4 *)row)[2 * g + 1] = make_float4(x[4], x[5], x[6], x[7]);
        return;
    }
    uint32_t w[4];
    for (int j = 0; j < 4; j++) {
        uint16_t lo = dt == FC_BF16 ? fcx_f32_to_bf16(x[2 * j]) : fcx_f32_to_f16(x[2 * j]);
        uint16_t hi = dt == FC_BF16 ? fcx_f32_to_bf16(x[2 * j + 1]) : fcx_f32_to_f16(x[2 * j + 1]);
        w[j] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    ((uint4 *)row)[g] = make_uint4(w[0], w[1], w[2], w[3]);
}

// online softmax update with one logit
__device__ __forceinline__ void lse_push(float &m, float &d, float x) {
    if (m != m || x == -INFINITY) return;
    if (x != x) { m = x; return; }
    if (x > m) { d = d * __expf(m - x) + 1.0f; m = x; }
    else d += __expf(x - m);
}

// merge two online-softmax states (m, d): d relative to m
__device__ __forceinline__ void lse_merge(float &m, float &d, float m2, float d2) {
    if (m2 == -INFINITY) return;
    if (m == -INFINITY) { m = m2; d = d2; return; }
    if (m2 > m) { d = d * __expf(m - m2) + d2; m = m2; }
    else d += d2 * __expf(m2 - m);
}

// Block-wide (m, d) reduction; every thread gets the result. NaN propagates through m.
__device__ void block_lse(float &m, float &d, float *sm, float *sd) {
    for (int off = 16; off > 0; off >>= 1) {
        float m2 = __shfl_down_sync(0xffffffffu, m, off);
        float d2 = __shfl_down_sync(0xffffffffu, d, off);
        if (m2 != m2) m = m2; else if (m == m) lse_merge(m, d, m2, d2);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sm[warp] = m; sd[warp] = d; }
    __syncthreads();
    if (threadIdx.x == 0) {
        float mm = sm[0], dd = sd[0];
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) {
            if (sm[w] != sm[w]) mm = sm[w]; else if (mm == mm) lse_merge(mm, dd, sm[w], sd[w]);
        }
        sm[0] = mm; sd[0] = dd;
    }
    __syncthreads();
    m = sm[0];
    d = sd[0];
    __syncthreads();
}

__global__ void count_supervised(const int64_t *labels, int64_t n, int64_t ignore, int64_t v,
                                 unsigned long long *count) {
    __shared__ unsigned long long s;
    if (threadIdx.x == 0) s = 0;
    __syncthreads();
    unsigned long long c = 0;
    for (int64_t r = threadIdx.x; r < n; r += blockDim.x)
        c += labels[r] != ignore && labels[r] >= 0 && labels[r] < v;
    atomicAdd(&s, c);
    __syncthreads();
    if (threadIdx.x == 0) *count = s;
}

struct loss_args {
    const void *logits; int dt; int64_t n, v;
    const int64_t *labels;
    const int32_t *tids; const float *tvals; int64_t tk;
    const int32_t *fids; const float *fvals; int64_t fk;
    float *row_loss; void *grad;
    const unsigned long long *nsup;
    double lm_weight, temperature, normalizer, grad_scale;
    int kind, reduction; int64_t ignore;
    int vec;  // V % 8 == 0 and 16-byte aligned logits and grad: 16-byte loads and stores
};

// thread 0: the row's target entries into shared memory, renormalised; returns the count
__device__ int row_target(const int32_t *ids, const float *vals, int64_t k, int64_t r, int64_t v,
                          double temperature, int32_t *s_ids, float *s_p) {
    if (!ids || k == 0) return 0;
    int cnt = 0;
    double mx = -INFINITY;
    for (int64_t j = 0; j < k; j++) {
        int32_t id = ids[r * k + j];
        if (id < 0 || id >= v) continue;  // padding (other ids out of range: loss_check.cu)
        double x = (double)vals[r * k + j] / temperature;
        s_ids[cnt] = id;
        s_p[cnt] = (float)x;
        mx = x > mx ? x : mx;
        cnt++;
    }
    double s = 0.0;
    for (int j = 0; j < cnt; j++) s += exp((double)s_p[j] - mx);
    for (int j = 0; j < cnt; j++) s_p[j] = (float)(exp((double)s_p[j] - mx) / s);
    return cnt;
}

__global__ void __launch_bounds__(LOSS_THREADS) fusion_loss_kernel(loss_args a) {
    __shared__ int32_t s_ids[MAX_ENTRIES];
    __shared__ float s_p[MAX_ENTRIES], s_zk[MAX_ENTRIES];
    __shared__ float sm[32], sd[32];
    __shared__ int s_cnt;
    __shared__ float s_zy;
    const int64_t r = blockIdx.x;
    const size_t esz = a.dt == FC_F32 ? 4 : 2;
    const void *row = (const unsigned char *)a.logits + (size_t)r * a.v * esz;
    void *grow = a.grad ? (unsigned char *)a.grad + (size_t)r * a.v * esz : NULL;
    const int64_t y = a.labels[r];
    if (y == a.ignore || y < 0 || y >= a.v) {
        if (threadIdx.x == 0) a.row_loss[r] = 0.0f;
        if (grow)
            for (int64_t i = threadIdx.x; i < a.v; i += blockDim.x) store_grad(grow, a.dt, i, 0.0f);
        return;
    }
    if (threadIdx.x == 0) {
        int cnt = row_target(a.tids, a.tvals, a.tk, r, a.v, a.temperature, s_ids, s_p);
        if (cnt == 0) cnt = row_target(a.fids, a.fvals, a.fk, r, a.v, a.temperature, s_ids, s_p);
        if (cnt == 0) { s_ids[0] = (int32_t)y; s_p[0] = 1.0f; cnt = 1; }
        s_cnt = cnt;
        s_zy = load_logit(row, a.dt, y);
    }
    __syncthreads();
    const int cnt = s_cnt;
    for (int j = threadIdx.x; j < cnt; j += blockDim.x) s_zk[j] = load_logit(row, a.dt, s_ids[j]);

    // pass 1 (16-byte loads when the rows allow: a.vec)
    float m = -INFINITY, d = 0.0f;
    if (a.vec) {
        for (int64_t g = threadIdx.x; g < a.v / 8; g += blockDim.x) {
            float x[8];
            load8(row, a.dt, g, x);
            for (int j = 0; j < 8; j++) lse_push(m, d, x[j]);
        }
    } else {
        for (int64_t i = threadIdx.x; i < a.v; i += blockDim.x)
            lse_push(m, d, load_logit(row, a.dt, i));
    }
    block_lse(m, d, sm, sd);
    if (m == INFINITY) m = NAN;
    const double logd = log((double)d);
    const double w = a.lm_weight;
    double scale = 1.0;
    if (a.reduction == 0) scale = *a.nsup ? 1.0 / (double)*a.nsup : 0.0;
    if (a.reduction == 3) scale = 1.0 / a.normalizer;
    const double gscale = scale * a.grad_scale;
    if (threadIdx.x == 0) {
        double ce = ((double)m - s_zy) + logd, cross = 0.0, negent = 0.0;
        for (int j = 0; j < cnt; j++) {
            cross += (double)s_p[j] * (((double)m - s_zk[j]) + logd);
            if (s_p[j] > 0.0f) negent += (double)s_p[j] * log((double)s_p[j]);
        }
        double fusion = a.kind == 1 ? cross + negent : cross;
        a.row_loss[r] = (float)(w * ce + (1.0 - w) * fusion);
    }
    if (!grow) return;
    __syncthreads();  // every gather is done before pass 2 may overwrite the logits

    // pass 2
    const float mul = (float)(gscale * exp(-logd));
    if (a.vec) {
        for (int64_t g = threadIdx.x; g < a.v / 8; g += blockDim.x) {
            float x[8];
            load8(row, a.dt, g, x);
            for (int j = 0; j < 8; j++) x[j] = __expf(x[j] - m) * mul;
            store8(grow, a.dt, g, x);
        }
    } else {
        for (int64_t i = threadIdx.x; i < a.v; i += blockDim.x)
            store_grad(grow, a.dt, i, __expf(load_logit(row, a.dt, i) - m) * mul);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int label_in_target = 0;
        for (int j = 0; j < cnt; j++) {
            double coef = (1.0 - w) * s_p[j];
            if (s_ids[j] == y) { coef += w; label_in_target = 1; }
            double q = exp(((double)s_zk[j] - m) - logd);
            store_grad_exact(grow, a.dt, s_ids[j], (q - coef) * gscale);
        }
        if (!label_in_target)
            store_grad_exact(grow, a.dt, y, (exp(((double)s_zy - m) - logd) - w) * gscale);
    }
}

__global__ void reduce_loss(const float *row_loss, int64_t n, const unsigned long long *nsup,
                            int reduction, double normalizer, float *total) {
    __shared__ double s[1024];
    double acc = 0.0;
    for (int64_t r = threadIdx.x; r < n; r += blockDim.x) acc += row_loss[r];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        double scale = 1.0;
        if (reduction == 0) scale = *nsup ? 1.0 / (double)*nsup : 0.0;
        if (reduction == 3) scale = 1.0 / normalizer;
        *total = (float)(s[0] * scale);
    }
}

extern "C" fc_status fc_cuda_fusion_loss(const void *d_logits, fc_dtype dtype, int64_t n,
                                         int64_t v, const int64_t *d_labels,
                                         const fc_sparse_target *target,
                                         const fc_sparse_target *fallback,
                                         const fc_fusion_loss_opts *opts, float *d_row_loss,
                                         void *d_grad, float *d_loss, void *stream,
                                         fc_error *err) {
    if (dtype != FC_F32 && dtype != FC_F16 && dtype != FC_BF16)
        return fc_error_set(err, FC_ERR_TYPE, "fusion_loss (CUDA): logits dtype %s is not F32, "
                            "F16 or BF16", fc_dtype_name(dtype) ? fc_dtype_name(dtype) : "?");
    const fc_sparse_target none = {NULL, NULL, 0};
    if (!target) target = &none;
    if (!fallback) fallback = &none;
    if (n < 0 || v < 1 || v > INT32_MAX || target->k < 0 || target->k >= MAX_ENTRIES ||
        fallback->k < 0 || fallback->k >= MAX_ENTRIES || !d_loss || (n > 0 && !d_row_loss))
        return fc_error_set(err, FC_ERR_VALUE, "fusion_loss (CUDA): bad shape [%lld, %lld] or K "
                            "(at most %d) or missing outputs", (long long)n, (long long)v,
                            MAX_ENTRIES - 1);
    cudaStream_t s = (cudaStream_t)stream;
    // bad input that earlier calls found on the device, if its copy has reached the host
    fc_status st = stream_capturing(s) ? FC_OK : bad_input_poll(0, s, err);
    const loss_check_args check = {d_labels, n, v, opts->ignore_index, *target, *fallback};
    // the options always; labels and targets on the host only in strict mode
    if (st == FC_OK)
        st = opts->validate == FC_VALIDATE_STRICT
                 ? loss_check_on_host(&check, opts, s, err)
                 : fc_fusion_loss_check(0, v, NULL, NULL, NULL, opts, err);
    unsigned long long *scratch = NULL;
    if (st == FC_OK) st = scratch_get(s, &scratch, err);
    if (st == FC_OK && opts->validate == FC_VALIDATE)
        st = loss_check_on_device(&check, scratch, s, err);
    if (st != FC_OK) return st;
    loss_args a = {d_logits, (int)dtype, n, v, d_labels, target->ids, target->values, target->k,
                   fallback->ids, fallback->values, fallback->k, d_row_loss, d_grad,
                   scratch + SCRATCH_NSUP, opts->lm_weight, opts->temperature,
                   opts->normalizer, opts->grad_scale, (int)opts->kind, (int)opts->reduction,
                   opts->ignore_index,
                   v % 8 == 0 && (uintptr_t)d_logits % 16 == 0 && (uintptr_t)d_grad % 16 == 0};
    count_supervised<<<1, 1024, 0, s>>>(d_labels, n, opts->ignore_index, v,
                                        scratch + SCRATCH_NSUP);
    FC_CUDA_CHECK(cudaGetLastError());
    if (n > 0) {
        fusion_loss_kernel<<<(unsigned)n, LOSS_THREADS, 0, s>>>(a);
        FC_CUDA_CHECK(cudaGetLastError());
    }
    reduce_loss<<<1, 1024, 0, s>>>(d_row_loss, n, a.nsup, (int)opts->reduction,
                                   opts->normalizer, d_loss);
    FC_CUDA_CHECK(cudaGetLastError());
    return opts->validate == FC_VALIDATE ? bad_input_fetch_async(s, err) : FC_OK;
}

// Backward: scale row r of the saved gradient by its upstream gradient s (gout[r], or
// gout[0] for every row), in place, when s differs from the factor `applied[r]` already in
// it. An upstream gradient of 1 (loss.backward() on the loss itself) costs one read of two
// floats per row and no pass over the gradient; no host synchronisation either way.
__global__ void __launch_bounds__(256) scale_rows(void *grad, int dt, int64_t n, int64_t v,
                                                  const float *gout, int per_row,
                                                  float *applied, int vec) {
    const size_t esz = dt == FC_F32 ? 4 : 2;
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
        const float sc = gout[per_row ? r : 0], was = applied[r];
        if (sc == was) continue;  // the same for every thread of the block
        // exact for the first scaling (was == 1); later ones round once more
        const float f = was == 1.0f ? sc : sc / was;
        void *row = (unsigned char *)grad + (size_t)r * v * esz;
        if (vec) {
            for (int64_t g = threadIdx.x; g < v / 8; g += blockDim.x) {
                float x[8];
                load8(row, dt, g, x);
                for (int j = 0; j < 8; j++) x[j] *= f;
                store8(row, dt, g, x);
            }
        } else {
            for (int64_t i = threadIdx.x; i < v; i += blockDim.x)
                store_grad(row, dt, i, load_logit(row, dt, i) * f);
        }
        __syncthreads();  // every thread has read applied[r]
        if (threadIdx.x == 0) applied[r] = sc;
    }
}

extern "C" fc_status fc_cuda_scale_grad(void *d_grad, fc_dtype dtype, int64_t n, int64_t v,
                                        const float *d_gout, int per_row, float *d_applied,
                                        void *stream, fc_error *err) {
    if (dtype != FC_F32 && dtype != FC_F16 && dtype != FC_BF16)
        return fc_error_set(err, FC_ERR_TYPE, "scale_grad (CUDA): dtype %s is not F32, F16 or "
                            "BF16", fc_dtype_name(dtype) ? fc_dtype_name(dtype) : "?");
    if (n < 0 || v < 1 || (n > 0 && (!d_grad || !d_gout || !d_applied)))
        return fc_error_set(err, FC_ERR_VALUE, "scale_grad (CUDA): bad shape [%lld, %lld] or "
                            "missing buffers", (long long)n, (long long)v);
    if (n == 0) return FC_OK;
    unsigned blocks = (unsigned)(n < 65535 * 16 ? n : 65535 * 16);
    scale_rows<<<blocks, 256, 0, (cudaStream_t)stream>>>(
        d_grad, (int)dtype, n, v, d_gout, per_row, d_applied,
        v % 8 == 0 && (uintptr_t)d_grad % 16 == 0);
    FC_CUDA_CHECK(cudaGetLastError());
    return FC_OK;
}

// ------------------------------------------------------------------------------------------
// top-k + CE

__device__ __forceinline__ int32_t order_key(float f) {
    if (f != f) return INT32_MAX;
    int32_t i = __float_as_int(f);
    return i ^ ((i >> 31) & 0x7fffffff);
}

// (key, id) a before b: larger key first, then lower id
__device__ __forceinline__ bool before(int32_t ka, int32_t ia, int32_t kb, int32_t ib) {
    return ka > kb || (ka == kb && ia < ib);
}

__global__ void __launch_bounds__(TOPK_THREADS) topk_ce_kernel(
    const void *logits, int dt, int64_t v, int k, const int64_t *labels, int64_t ignore,
    int32_t *top_ids, float *top_logits, float *token_ce) {
    __shared__ float sm[32], sd[32];
    __shared__ int32_t s_key[TOPK_THREADS], s_id[TOPK_THREADS];
    const int64_t r = blockIdx.x;
    const size_t esz = dt == FC_F32 ? 4 : 2;
    const void *row = (const unsigned char *)logits + (size_t)r * v * esz;
    int32_t keys[TOPK_MAX], ids[TOPK_MAX];
    int filled = 0;
    float m = -INFINITY, d = 0.0f;
    for (int64_t i = threadIdx.x; i < v; i += blockDim.x) {
        float x = load_logit(row, dt, i);
        int32_t key = order_key(x);
        if (filled < k || key > keys[k - 1]) {  // later ids lose ties: strict >
            int pos = filled < k ? filled++ : k - 1;
            while (pos > 0 && keys[pos - 1] < key) {
                keys[pos] = keys[pos - 1];
                ids[pos] = ids[pos - 1];
                pos--;
            }
            keys[pos] = key;
            ids[pos] = (int32_t)i;
        }
        lse_push(m, d, x);
    }
    if (token_ce) block_lse(m, d, sm, sd);
    // merge: k rounds, each takes the best head among the threads' lists
    int head = 0;
    for (int j = 0; j < k; j++) {
        s_key[threadIdx.x] = head < filled ? keys[head] : INT32_MIN;
        s_id[threadIdx.x] = head < filled ? ids[head] : INT32_MAX;
        __syncthreads();
        for (int h = blockDim.x / 2; h > 0; h >>= 1) {
            if ((int)threadIdx.x < h &&
                before(s_key[threadIdx.x + h], s_id[threadIdx.x + h], s_key[threadIdx.x],
                       s_id[threadIdx.x])) {
                s_key[threadIdx.x] = s_key[threadIdx.x + h];
                s_id[threadIdx.x] = s_id[threadIdx.x + h];
            }
            __syncthreads();
        }
        int32_t best = s_id[0];
        if (head < filled && ids[head] == best) head++;
        if (threadIdx.x == 0) {
            top_ids[r * k + j] = best;
            top_logits[r * k + j] = load_logit(row, dt, best);
        }
        __syncthreads();
    }
    if (token_ce && threadIdx.x == 0) {
        int64_t y = labels[r];
        if (y == ignore || y < 0 || y >= v) token_ce[r] = 0.0f;
        else {
            double logd = (m != m || m == INFINITY) ? NAN : log((double)d);
            token_ce[r] = (float)(((double)m - load_logit(row, dt, y)) + logd);
        }
    }
}

__global__ void seq_ce_kernel(const float *token_ce, const int64_t *labels, int64_t ignore,
                              int64_t v, const int64_t *offs, int64_t n_seq, float *seq_ce,
                              uint8_t *seq_has) {
    for (int64_t s = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; s < n_seq;
         s += (int64_t)gridDim.x * blockDim.x) {
        double sum = 0.0;
        int64_t cnt = 0;
        for (int64_t r = offs[s]; r < offs[s + 1]; r++) {
            if (labels[r] == ignore || labels[r] < 0 || labels[r] >= v) continue;  // as topk
            sum += token_ce[r];
            cnt++;
        }
        seq_has[s] = cnt > 0;
        seq_ce[s] = cnt > 0 ? (float)(sum / (double)cnt) : 0.0f;
    }
}

extern "C" fc_status fc_cuda_topk_ce(const void *d_logits, fc_dtype dtype, int64_t n, int64_t v,
                                     int64_t k, const int64_t *d_labels, int64_t ignore_index,
                                     int32_t *d_top_ids, float *d_top_logits, float *d_token_ce,
                                     const int64_t *d_seq_offsets, int64_t n_seq,
                                     float *d_seq_ce, uint8_t *d_seq_has, void *stream,
                                     fc_error *err) {
    if (dtype != FC_F32 && dtype != FC_F16 && dtype != FC_BF16)
        return fc_error_set(err, FC_ERR_TYPE, "topk_and_ce (CUDA): logits dtype %s is not F32, "
                            "F16 or BF16", fc_dtype_name(dtype) ? fc_dtype_name(dtype) : "?");
    if (n < 0 || v < 1 || v > INT32_MAX || k < 1 || k > v || k > TOPK_MAX)
        return fc_error_set(err, FC_ERR_VALUE, "topk_and_ce (CUDA): k = %lld must be in [1, "
                            "min(V = %lld, %d)]", (long long)k, (long long)v, TOPK_MAX);
    if (d_seq_offsets && (!d_labels || !d_seq_ce || !d_seq_has))
        return fc_error_set(err, FC_ERR_VALUE, "topk_and_ce (CUDA): seq_offsets needs labels, "
                            "seq_ce and seq_has");
    cudaStream_t s = (cudaStream_t)stream;
    if (n > 0) {
        topk_ce_kernel<<<(unsigned)n, TOPK_THREADS, 0, s>>>(
            d_logits, (int)dtype, v, (int)k, d_labels, ignore_index, d_top_ids, d_top_logits,
            d_labels ? d_token_ce : NULL);
        FC_CUDA_CHECK(cudaGetLastError());
    }
    if (d_seq_offsets && n_seq > 0) {
        seq_ce_kernel<<<(unsigned)CEIL_DIV(n_seq, (int64_t)256), 256, 0, s>>>(
            d_token_ce, d_labels, ignore_index, v, d_seq_offsets, n_seq, d_seq_ce, d_seq_has);
        FC_CUDA_CHECK(cudaGetLastError());
    }
    return FC_OK;
}
