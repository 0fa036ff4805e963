// loss_check.cuh - input checks of the CUDA fusion loss (loss_check.cu).
#pragma once
#include "common.cuh"

struct loss_check_args {
    const int64_t *labels;  // device pointers
    int64_t n, v, ignore;
    fc_sparse_target target, fallback;  // k = 0 when absent
};

// Queue the checks on `s`; a bad input is reported by a later call (bad_input_poll).
fc_status loss_check_on_device(const loss_check_args *a, unsigned long long *scratch,
                               cudaStream_t s, fc_error *err);

// Copy to the host, wait, and check there: the error comes back from this call.
fc_status loss_check_on_host(const loss_check_args *a, const fc_fusion_loss_opts *o,
                             cudaStream_t s, fc_error *err);
