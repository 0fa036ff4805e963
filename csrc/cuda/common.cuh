// common.cuh - shared by fusechat's .cu files: error checking that returns, never exits.
#pragma once
#include <stdio.h>

#include <cuda_runtime.h>

#include "fc_cuda.h"

// Evaluate a CUDA runtime call; on failure fill `err` and return FC_ERR_CUDA from the
// enclosing function, naming the call and where it was made.
#define FC_CUDA_CHECK(expr)                                                                 \
    do {                                                                                    \
        cudaError_t fc_e_ = (expr);                                                         \
        if (fc_e_ != cudaSuccess)                                                           \
            return fc_error_set(err, FC_ERR_CUDA, "%s failed (%s:%d): %s", #expr, __FILE__, \
                                __LINE__, cudaGetErrorString(fc_e_));                       \
    } while (0)

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))
