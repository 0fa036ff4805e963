/* merge_avx512.c - the hot merge kernels built for AVX-512 (F, DQ, BW, VL: 64-bit
 * multiplies in one instruction make the DARE/DELLA random draws cheap); see
 * merge_isa_build.h. */
#define MG_ISA_SUFFIX avx512
#define MG_ISA_TARGET ("avx512f,avx512dq,avx512bw,avx512vl,avx2,bmi,bmi2,popcnt")
#include "merge_isa_build.h"
