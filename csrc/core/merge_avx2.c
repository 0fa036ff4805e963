/* merge_avx2.c - the hot merge kernels (merge_common.c, merge_gta.c, merge_sce.c, select.c)
 * compiled a second time for AVX2, chosen at run time by merge.c (fc_merge_set_isa).
 *
 * The sources are the same; only the compiler's instruction choice differs, so the results
 * are the same bytes: the build is ISO C11 (-std=c11, so -ffp-contract=off: no fused
 * multiply-add is formed, and FMA is not enabled here anyway), the vectoriser never
 * reorders float sums without -ffast-math, and the RNG is integer arithmetic. The public
 * and internal symbols of those files get an _avx2 suffix (merge_isa.h). */
#if defined(__x86_64__) && defined(__GNUC__)
#define MG_ISA_AVX2 1
#include "merge_isa.h"

#include <math.h> /* system headers before the target switch */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#pragma GCC target("avx2,bmi,bmi2,popcnt")

#include "merge_common.c"
#include "merge_gta.c"
#include "merge_sce.c"
#include "select.c"
#else /* not x86-64 with GCC/Clang: never chosen (mg_use_avx2() is 0) */
#include "merge_internal.h"

fc_status mg_merge_gta_avx2(const mg_tensor *t) { return mg_merge_gta(t); }
fc_status mg_merge_sce_avx2(const mg_tensor *t) { return mg_merge_sce(t); }
fc_status mg_merge_varm_avx2(const mg_tensor *t) { return mg_merge_varm(t); }
fc_status mg_combine_avx2(const mg_tensor *t, mg_layout lay, const float *coef) {
    return mg_combine(t, lay, coef);
}
#endif
