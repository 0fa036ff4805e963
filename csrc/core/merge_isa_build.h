/* merge_isa_build.h - the body of merge_avx2.c and merge_avx512.c: the hot merge kernels
 * (merge_common.c, merge_gta.c, merge_gta_stream.c, merge_sce.c, select.c) compiled once
 * more for the instruction set MG_ISA_TARGET, their external names suffixed with
 * MG_ISA_SUFFIX (merge_isa.h), and a kernel table MG_ISA(mg_kernels) for merge.c to choose
 * at run time.
 *
 * The sources are the same; only the compiler's instruction choice differs, so the results
 * are the same bytes: the build is ISO C11 (-std=c11, hence -ffp-contract=off: no fused
 * multiply-add is ever formed, and FMA is not enabled), the vectoriser never reorders float
 * sums without -ffast-math, and the RNG is integer arithmetic. Only on x86-64 with GCC or
 * Clang (__builtin_cpu_supports picks the build); elsewhere this is empty. */
#if defined(__x86_64__) && defined(__GNUC__)
#include "merge_isa.h"

#include <immintrin.h> /* system headers before the target switch */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MG_DO_PRAGMA(x) _Pragma(#x)
#ifdef __clang__ /* Clang has no "GCC target" pragma: the attribute on every function */
#define MG_TARGET_PRAGMA(t) MG_DO_PRAGMA(clang attribute push(__attribute__((target t)), apply_to = function))
#else
#define MG_TARGET_PRAGMA(t) MG_DO_PRAGMA(GCC target t)
#endif
MG_TARGET_PRAGMA(MG_ISA_TARGET)

#include "merge_common.c"
#include "merge_gta.c"
#include "merge_gta_stream.c"
#include "merge_sce.c"
#include "select.c"

#ifdef __clang__
#pragma clang attribute pop
#endif

const mg_kernels MG_ISA(mg_kernels) = {mg_merge_gta, mg_merge_sce, mg_merge_varm, mg_combine};
#endif
