// device_state.cu - buffers the CUDA entry points keep between calls, and the lazy report of
// bad input found on the device (device_state.cuh).
//
// Allocating and freeing an 8-byte buffer on every call cost two API calls and, without
// memory pools, a device synchronisation; instead each (device, stream) pair gets one
// scratch buffer on first use, kept for the life of the process (a few dozen bytes each).
// Validation on the device writes the first bad input into a per-device record; each call
// queues a copy of it to pinned host memory behind its kernels and the next call looks at
// that copy only if it has landed (cudaEventQuery): errors surface a call or two late,
// naming the call that had them, and nothing waits for the GPU.
#include <mutex>

#include "device_state.cuh"

#define MAX_DEVICES 64
#define MAX_SCRATCH 256

struct device_record {
    int ready;
    bad_input *d_rec, *h_rec;  // device record, and its pinned host copy
    cudaEvent_t copied;        // recorded after the last queued copy
    int copy_pending;
    unsigned long long calls;
};

struct scratch_entry {
    int device;
    cudaStream_t stream;
    unsigned long long *buf;
};

static std::mutex g_lock;
static device_record g_dev[MAX_DEVICES];
static scratch_entry g_scratch[MAX_SCRATCH];
static int g_nscratch;

int stream_capturing(cudaStream_t s) {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(s, &st) != cudaSuccess) {
        cudaGetLastError();  // the legacy stream while another is captured: treat as capturing
        return 1;
    }
    return st != cudaStreamCaptureStatusNone;
}

static fc_status current_device(int *dev, fc_error *err) {
    FC_CUDA_CHECK(cudaGetDevice(dev));
    if (*dev < 0 || *dev >= MAX_DEVICES)
        return fc_error_set(err, FC_ERR_CUDA, "CUDA device %d: at most %d devices are supported",
                            *dev, MAX_DEVICES);
    return FC_OK;
}

// cudaMalloc that also works while a stream is being captured (relaxed capture mode)
static cudaError_t malloc_any_mode(void **p, size_t bytes) {
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    cudaThreadExchangeStreamCaptureMode(&mode);
    cudaError_t e = cudaMalloc(p, bytes);
    cudaThreadExchangeStreamCaptureMode(&mode);
    return e;
}

fc_status scratch_get(cudaStream_t s, unsigned long long **scratch, fc_error *err) {
    int dev;
    fc_status st = current_device(&dev, err);
    if (st != FC_OK) return st;
    std::lock_guard<std::mutex> hold(g_lock);
    for (int i = 0; i < g_nscratch; i++)
        if (g_scratch[i].device == dev && g_scratch[i].stream == s) {
            *scratch = g_scratch[i].buf;
            return FC_OK;
        }
    if (g_nscratch == MAX_SCRATCH)
        return fc_error_set(err, FC_ERR_CUDA, "fusion_loss (CUDA): more than %d (device, "
                            "stream) pairs used", MAX_SCRATCH);
    unsigned long long *buf = NULL;
    cudaError_t e = malloc_any_mode((void **)&buf, SCRATCH_SLOTS * sizeof *buf);
    if (e != cudaSuccess)
        return fc_error_set(err, FC_ERR_CUDA, "fusion_loss (CUDA): allocating %d bytes of "
                            "scratch failed: %s", (int)(SCRATCH_SLOTS * sizeof *buf),
                            cudaGetErrorString(e));
    g_scratch[g_nscratch++] = {dev, s, buf};
    *scratch = buf;
    return FC_OK;
}

// The current device's record, created on first use (outside graph capture: it must be
// initialised, which a capture would defer to the graph's replay).
static fc_status device_get(cudaStream_t s, device_record **out, fc_error *err) {
    int dev;
    fc_status st = current_device(&dev, err);
    if (st != FC_OK) return st;
    device_record *d = &g_dev[dev];
    if (!d->ready) {
        if (stream_capturing(s))
            return fc_error_set(err, FC_ERR_CUDA, "fusion_loss (CUDA): call it once on device "
                                "%d before capturing it into a CUDA graph (a warm-up call "
                                "creates its buffers)", dev);
        FC_CUDA_CHECK(cudaMalloc((void **)&d->d_rec, sizeof(bad_input)));
        FC_CUDA_CHECK(cudaMallocHost((void **)&d->h_rec, sizeof(bad_input)));
        FC_CUDA_CHECK(cudaEventCreateWithFlags(&d->copied, cudaEventDisableTiming));
        FC_CUDA_CHECK(cudaMemset(d->d_rec, 0xff, sizeof(bad_input)));
        FC_CUDA_CHECK(cudaDeviceSynchronize());
        d->h_rec->key = BAD_NONE;
        d->ready = 1;
    }
    *out = d;
    return FC_OK;
}

fc_status bad_input_record(cudaStream_t s, bad_input **d_rec, unsigned long long *call,
                           fc_error *err) {
    std::lock_guard<std::mutex> hold(g_lock);
    device_record *d;
    fc_status st = device_get(s, &d, err);
    if (st != FC_OK) return st;
    *d_rec = d->d_rec;
    *call = ++d->calls;
    return FC_OK;
}

static const char *ARG_NAMES[3] = {"labels", "target", "fallback"};

static fc_status report(const bad_input *r, int dev, fc_error *err) {
    unsigned arg = (unsigned)(r->key >> 62);
    long long row = (long long)((r->key >> 13) & ((1ull << 49) - 1));
    long long entry = (long long)((r->key >> 2) & 0x7ff);
    int code = (int)(r->key & 3);
    char where[96];
    snprintf(where, sizeof where, "fusion_loss (CUDA device %d, checked on the device, call "
             "#%llu)", dev, r->call);
    if (arg == 0)
        return fc_error_set(err, FC_ERR_VALUE, "%s: labels row %lld: label %lld is outside [0, "
                            "%lld) and not ignore_index (%lld)", where, row, r->value, r->v,
                            r->ignore);
    const char *name = ARG_NAMES[arg < 3 ? arg : 1];
    if (code == BAD_RANGE)
        return fc_error_set(err, FC_ERR_VALUE, "%s: %s_ids row %lld entry %lld: id %lld is "
                            "outside [0, %lld) and not -1 (padding)", where, name, row, entry,
                            r->value, r->v);
    if (code == BAD_NONFINITE)
        return fc_error_set(err, FC_ERR_VALUE, "%s: %s_values row %lld entry %lld (id %lld): "
                            "value %g is not finite", where, name, row, entry, r->value,
                            r->fvalue);
    return fc_error_set(err, FC_ERR_VALUE, "%s: %s_ids row %lld: id %lld appears twice (entries "
                        "%lld and %lld)", where, name, row, r->value, r->other, entry);
}

fc_status bad_input_poll(int wait, cudaStream_t s, fc_error *err) {
    int dev;
    fc_status st = current_device(&dev, err);
    if (st != FC_OK) return st;
    std::lock_guard<std::mutex> hold(g_lock);
    device_record *d = &g_dev[dev];
    if (!d->ready) return FC_OK;
    if (wait) {
        FC_CUDA_CHECK(cudaDeviceSynchronize());
        FC_CUDA_CHECK(cudaMemcpy(d->h_rec, d->d_rec, sizeof(bad_input), cudaMemcpyDeviceToHost));
        d->copy_pending = 0;
    } else {
        if (!d->copy_pending) return FC_OK;
        cudaError_t e = cudaEventQuery(d->copied);
        if (e == cudaErrorNotReady) {
            cudaGetLastError();
            return FC_OK;
        }
        FC_CUDA_CHECK(e);
        d->copy_pending = 0;
    }
    if (d->h_rec->key == BAD_NONE) return FC_OK;
    bad_input found = *d->h_rec;
    d->h_rec->key = BAD_NONE;
    // clear the device's record: behind the work queued on s, or at once after a wait (other
    // streams may not be ordered after the legacy stream)
    if (wait) FC_CUDA_CHECK(cudaMemset(d->d_rec, 0xff, sizeof found.key));
    else FC_CUDA_CHECK(cudaMemsetAsync(d->d_rec, 0xff, sizeof found.key, s));
    return report(&found, dev, err);
}

fc_status bad_input_fetch_async(cudaStream_t s, fc_error *err) {
    if (stream_capturing(s)) return FC_OK;
    int dev;
    fc_status st = current_device(&dev, err);
    if (st != FC_OK) return st;
    std::lock_guard<std::mutex> hold(g_lock);
    device_record *d = &g_dev[dev];
    // one copy in flight at a time: a later one would move the event the next poll waits for
    if (!d->ready || d->copy_pending) return FC_OK;
    FC_CUDA_CHECK(cudaMemcpyAsync(d->h_rec, d->d_rec, sizeof(bad_input), cudaMemcpyDeviceToHost,
                                  s));
    FC_CUDA_CHECK(cudaEventRecord(d->copied, s));
    d->copy_pending = 1;
    return FC_OK;
}

extern "C" fc_status fc_cuda_loss_errors(fc_error *err) {
    return bad_input_poll(1, (cudaStream_t)0, err);
}

extern "C" fc_status fc_cuda_device_enter(int device, int *prev, fc_error *err) {
    *prev = -1;
    FC_CUDA_CHECK(cudaGetDevice(prev));
    if (*prev != device) FC_CUDA_CHECK(cudaSetDevice(device));
    return FC_OK;
}

extern "C" void fc_cuda_device_leave(int prev) {
    int cur = -1;
    if (prev >= 0 && cudaGetDevice(&cur) == cudaSuccess && cur != prev) cudaSetDevice(prev);
}
