/* merge_isa.h - symbol names of the second (AVX2) build of the merge kernels, see
 * merge_avx2.c. Included first by that file only. */
#ifndef FC_MERGE_ISA_H
#define FC_MERGE_ISA_H

#define mg_load mg_load_avx2
#define mg_store mg_store_avx2
#define mg_calloc mg_calloc_avx2
#define mg_for_blocks mg_for_blocks_avx2
#define mg_add_agreeing mg_add_agreeing_avx2
#define mg_dot mg_dot_avx2
#define mg_sum_abs mg_sum_abs_avx2
#define mg_vector_count mg_vector_count_avx2
#define mg_gram mg_gram_avx2
#define mg_combine mg_combine_avx2
#define mg_merge_gta mg_merge_gta_avx2
#define mg_merge_sce mg_merge_sce_avx2
#define mg_merge_varm mg_merge_varm_avx2
#define fc_select_topk mg_select_topk_avx2

#endif
