/* merge_isa.h - symbol names of the second and third builds of the merge kernels (see
 * merge_avx2.c): every external name gets the suffix MG_ISA_SUFFIX. Included first, by those
 * files only, after they define MG_ISA_SUFFIX. */
#ifndef FC_MERGE_ISA_H
#define FC_MERGE_ISA_H

#define MG_ISA_CAT2(a, b) a##_##b
#define MG_ISA_CAT(a, b) MG_ISA_CAT2(a, b)
#define MG_ISA(name) MG_ISA_CAT(name, MG_ISA_SUFFIX)

#define mg_load MG_ISA(mg_load)
#define mg_store MG_ISA(mg_store)
#define mg_calloc MG_ISA(mg_calloc)
#define mg_for_blocks MG_ISA(mg_for_blocks)
#define mg_add_agreeing MG_ISA(mg_add_agreeing)
#define mg_dot MG_ISA(mg_dot)
#define mg_sum_abs MG_ISA(mg_sum_abs)
#define mg_vector_count MG_ISA(mg_vector_count)
#define mg_gram MG_ISA(mg_gram)
#define mg_combine MG_ISA(mg_combine)
#define mg_merge_gta MG_ISA(mg_merge_gta)
#define mg_gta_delta_keys MG_ISA(mg_gta_delta_keys)
#define mg_gta_output MG_ISA(mg_gta_output)
#define mg_gta_block MG_ISA(mg_gta_block)
#define mg_gta_band_mark MG_ISA(mg_gta_band_mark)
#define mg_gta_band_set_aside MG_ISA(mg_gta_band_set_aside)
#define mg_gta_stream MG_ISA(mg_gta_stream)
#define mg_merge_sce MG_ISA(mg_merge_sce)
#define mg_merge_varm MG_ISA(mg_merge_varm)
#define fc_select_topk MG_ISA(fc_select_topk)
#define mg_select_topk MG_ISA(mg_select_topk)
#define mg_select_topk_store MG_ISA(mg_select_topk_store)
#define mg_select_topk_key MG_ISA(mg_select_topk_key)

#endif
