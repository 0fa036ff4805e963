/* merge_avx2.c - the hot merge kernels built for AVX2 (see merge_isa_build.h). */
#define MG_ISA_SUFFIX avx2
#define MG_ISA_TARGET ("avx2,bmi,bmi2,popcnt")
#include "merge_isa_build.h"
