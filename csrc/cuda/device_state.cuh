// device_state.cuh - what the CUDA entry points keep between calls (device_state.cu): a
// small scratch buffer per (device, stream) and the record of bad input found by the
// device-side validation, per device, read lazily by the host.
#pragma once
#include "common.cuh"

// Slots of the per-(device, stream) scratch buffer (unsigned long long each).
enum { SCRATCH_NSUP = 0, SCRATCH_BAD_KEY = 1, SCRATCH_SLOTS = 2 };

// The first bad input the device found. key orders errors as the CPU checker reports them:
// argument (0 labels, 1 target, 2 fallback), then row, then entry; ~0 = none.
struct bad_input {
    unsigned long long key;
    long long value;   // the bad label or id
    long long other;   // duplicates: the earlier entry holding the same id
    double fvalue;     // non-finite target values
    long long v, ignore;
    unsigned long long call;  // which fusion_loss call on this device (1, 2, ...)
};

#define BAD_NONE (~0ull)
#define BAD_KEY(arg, row, entry, code) \
    (((unsigned long long)(arg) << 62) | ((unsigned long long)(row) << 13) | \
     ((unsigned long long)(entry) << 2) | (unsigned long long)(code))
enum { BAD_RANGE = 0, BAD_NONFINITE = 1, BAD_DUPLICATE = 2 };

// The scratch buffer of the current device and `s` (allocated once, never freed; under
// stream capture too, in relaxed capture mode as PyTorch's allocator does).
fc_status scratch_get(cudaStream_t s, unsigned long long **scratch, fc_error *err);

// The current device's bad-input record, and the number of the call about to be made.
fc_status bad_input_record(cudaStream_t s, bad_input **d_rec, unsigned long long *call,
                           fc_error *err);

// Report bad input found by earlier calls on the current device: with wait = 0 only if the
// host copy made after them has landed (no synchronisation); with wait = 1 after waiting for
// the device. Clears the record once reported.
fc_status bad_input_poll(int wait, cudaStream_t s, fc_error *err);

// Queue a copy of the record to the host after this call's kernels on `s` (skipped while
// `s` is being captured into a graph).
fc_status bad_input_fetch_async(cudaStream_t s, fc_error *err);

// Whether `s` is being captured into a CUDA graph (then nothing may wait for the device).
int stream_capturing(cudaStream_t s);
