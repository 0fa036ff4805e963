/* fc_loss.h - part of the fusechat C API; include fusechat.h, not this file.
 *
 * Stage-1 kernels: the fused sparse fusion loss, top-K extraction with the token CE, and
 * the fusion rules (MinCE, AvgCE). Shape letters: N = rows (positions), V = vocabulary,
 * K = sparse entries per row, S = sequences, T = positions of a ragged set, M = models.
 *
 * The loss (losses.md 1.5 variant A, 1.6, 1.7; FuseChat's `fuse_loss_type`):
 *   per supervised row (label != ignore_index), q = softmax(z) over all V logits,
 *   p = softmax(values / temperature) over the row's target entries (ids != -1),
 *     ce:  fusion = -sum_k p_k log q_{id_k}
 *     kl:  fusion =  sum_k p_k (log p_k - log q_{id_k})
 *   loss_row = lm_weight * (-log q_label) + (1 - lm_weight) * fusion
 *   dloss_row/dz = q - lm_weight * e_label - (1 - lm_weight) * scatter(p)
 * Unsupervised rows have loss 0 and a zero gradient row. A row whose target is empty uses
 * the fallback target when given and non-empty, else the gold one-hot (method.md 7.1).
 * Reductions: MEAN divides the sum by the number of supervised rows of the call (0 if
 * none), SUM, NONE (per-row losses; the gradient is that of their sum), NORMALIZER divides
 * by opts.normalizer (a global token count for gradient accumulation).
 * The gradient of the reduced loss is computed in the same call, in fp32 from one online
 * logsumexp per row, and rounded once to the logits' dtype; it may overwrite the logits.
 */
#ifndef FC_LOSS_H
#define FC_LOSS_H

#include "fusechat.h"

#ifdef __cplusplus
extern "C" {
#endif

/* NOTE: values of these enums are only ever appended. */
typedef enum fc_fusion_kind {
    FC_FUSION_CE = 0, /* cross-entropy against the renormalised target (FuseChat default) */
    FC_FUSION_KL = 1, /* KL(p || q): the same gradient, loss lower by the target's entropy */
} fc_fusion_kind;

typedef enum fc_reduction {
    FC_REDUCE_MEAN       = 0, /* sum over rows / number of supervised rows */
    FC_REDUCE_SUM        = 1,
    FC_REDUCE_NONE       = 2, /* per-row losses; gradient of their sum */
    FC_REDUCE_NORMALIZER = 3, /* sum / opts.normalizer */
} fc_reduction;

/* A sparse target: K (id, value) pairs per row; ids are pivot-vocabulary ids or -1
 * (padding, anywhere in the row); values are logits, renormalised over the row's entries. */
typedef struct fc_sparse_target {
    const int32_t *ids;    /* [N, K] */
    const float   *values; /* [N, K] */
    int64_t        k;      /* 0 = no target (every row empty) */
} fc_sparse_target;

enum { FC_VALIDATE = 1, FC_VALIDATE_STRICT = 2 };

typedef struct fc_fusion_loss_opts {
    double         lm_weight;    /* weight of the gold CE, in [0, 1]; default 0.9 */
    double         temperature;  /* > 0, applied to the target values; default 1 */
    fc_fusion_kind kind;         /* default FC_FUSION_CE */
    fc_reduction   reduction;    /* default FC_REDUCE_MEAN */
    double         normalizer;   /* > 0, for FC_REDUCE_NORMALIZER */
    double         grad_scale;   /* the gradient is multiplied by this (upstream grad); 1 */
    int64_t        ignore_index; /* default -100 */
    int            validate;     /* check ids, duplicates, values, labels: FC_VALIDATE (default;
                                    on CUDA on the device, reported by a later call) or
                                    FC_VALIDATE_STRICT (on CUDA: on the host, synchronising);
                                    0 = ranges only (CPU) / none (CUDA) */
    int            nthreads;     /* 0 = fc_default_threads() */
} fc_fusion_loss_opts;

FC_API void fc_fusion_loss_opts_init(fc_fusion_loss_opts *opts);

/* Check the options and sparse inputs: labels in [0, V) or ignore_index; target/fallback
 * ids in [0, V) or -1 (these ranges fc_fusion_loss always checks: it indexes with them);
 * and, what opts.validate switches in fc_fusion_loss, no id twice in a row and values
 * finite where the id is not -1. The error names the argument and the first bad row. */
FC_API fc_status fc_fusion_loss_check(int64_t n, int64_t v, const int64_t *labels,
                                      const fc_sparse_target *target,
                                      const fc_sparse_target *fallback,
                                      const fc_fusion_loss_opts *opts, fc_error *err);

/* logits [N, V] row-major, dtype F32, F16 or BF16 (or F64: exact double arithmetic, slow; for
 * gradient checks). labels [N] int64.
 * target / fallback may be NULL (= no target). Outputs (each may be NULL):
 *   loss        the reduced loss (for NONE: the sum of the row losses)
 *   row_loss    [N] float64 per-row losses (unreduced, unscaled)
 *   grad        [N, V] logits dtype; may be the logits pointer itself (in place)
 *   n_supervised  number of rows with a label != ignore_index */
FC_API fc_status fc_fusion_loss(const void *logits, fc_dtype dtype, int64_t n, int64_t v,
                                const int64_t *labels, const fc_sparse_target *target,
                                const fc_sparse_target *fallback,
                                const fc_fusion_loss_opts *opts, double *loss, double *row_loss,
                                void *grad, int64_t *n_supervised, fc_error *err);

/* Top-k extraction with the token cross-entropy, in one pass over logits [N, V] (F32, F16,
 * BF16). Per row: top_ids/top_logits [N, k] sorted by logit descending, ties to the lower
 * id, NaN above +inf; token_ce [N] = logsumexp(z) - z[label] (0 where label == ignore_index).
 * When seq_offsets [S+1] (row ranges, non-decreasing from 0 to N) is given: seq_ce [S] =
 * mean of token_ce over the sequence's supervised rows, seq_has [S] = 1 if it has any
 * (seq_ce 0 and seq_has 0 otherwise, never NaN from 0/0). labels may be NULL (no CE). */
FC_API fc_status fc_topk_ce(const void *logits, fc_dtype dtype, int64_t n, int64_t v, int64_t k,
                            const int64_t *labels, int64_t ignore_index, int32_t *top_ids,
                            float *top_logits, float *token_ce, const int64_t *seq_offsets,
                            int64_t n_seq, float *seq_ce, uint8_t *seq_has, int nthreads,
                            fc_error *err);

/* ------------------------------------------------------------------------------------ */
/* Fusion rules over M aligned ragged sparse distributions (model 0 is the pivot).
 * Model m: indptr[m] [T+1] (entry ranges per position), ids[m] [nnz_m] int32, values[m]
 * [nnz_m] float32 logits. Sequences are position ranges seq_offsets [S+1]. */

typedef struct fc_ragged_dists {
    int64_t         n_models;
    int64_t         n_pos;       /* T */
    const int64_t **indptr;      /* [M] of [T+1] */
    const int32_t **ids;         /* [M] of [nnz_m] */
    const float   **values;      /* [M] of [nnz_m] */
} fc_ragged_dists;

/* MinCE: for each sequence (level 0, ce [M][S]) or position (level 1, ce [M][T]), choose
 * the model with the lowest CE compared in float32; ties go to the lower model index (the
 * pivot first); NaN CE never wins unless every model's is NaN (then the pivot).
 * choice [T] int32 gets the chosen model per position; with fill_empty, a position whose
 * chosen list is empty takes the pivot's list (the reference collator's rule). */
FC_API fc_status fc_fuse_min_ce(const fc_ragged_dists *d, const int64_t *seq_offsets,
                                int64_t n_seq, const float *const *ce, int level,
                                int fill_empty, int32_t *choice, fc_error *err);

/* Copy, per position t, the list of model choice[t] into out (CSR). Call with out_ids NULL
 * to get out_indptr [T+1] only, then with out_ids/out_values of out_indptr[T] entries. */
FC_API fc_status fc_fuse_gather(const fc_ragged_dists *d, const int32_t *choice,
                                int64_t *out_indptr, int32_t *out_ids, float *out_values,
                                fc_error *err);

/* AvgCE (FuseLLM): per sequence/position, weights w_m = softmax_m(exp(-ce_m)) over the models
 * with a finite CE and a non-empty list at the position; target = sum_m w_m p_m with p_m the
 * softmax of model m's values at `temperature`, on the union of the supports. Output in CSR:
 * out_indptr [T+1], out_ids / out_logp (log-probabilities) of capacity sum_m nnz_m, sorted
 * by probability descending then id. Positions where no model qualifies stay empty. */
FC_API fc_status fc_fuse_avg_ce(const fc_ragged_dists *d, const int64_t *seq_offsets,
                                int64_t n_seq, const float *const *ce, int level,
                                double temperature, int64_t *out_indptr, int32_t *out_ids,
                                float *out_logp, fc_error *err);

#ifdef __cplusplus
}
#endif

#endif
