/* fc_align.h - part of the fusechat C API; include fusechat.h, not this file.
 *
 * Stage-1 token alignment between a source model's tokenizer and the pivot's:
 *
 *   vocabularies   fc_vocab_t: a Hugging Face tokenizer folder read once (tokenizer.json,
 *                  tokenizer_config.json, special_tokens_map.json). For every id: the raw
 *                  piece, the string `decode([id])` gives, the canonical bytes it stands for.
 *   sequences      fc_align_dtw (the reference's DTW, exact) and fc_align_offsets (exact
 *                  O(n+m) alignment on canonical byte spans). Result: CSR, for every pivot
 *                  position the ascending source positions aligned with it.
 *   vocab maps     fc_counts_t (co-alignment counts in a hash map) and fc_vocab_map
 *                  (EM, MinED, MS): source id -> pivot id.
 *   distributions  fc_align_distributions: source top-K at source positions -> ragged
 *                  (pivot id, logit) lists at pivot positions (method.md section 5).
 *   projection     fc_align_project: source top-K log-probabilities carried to the pivot's
 *                  next tokens by the chain rule over bytes (docs/alignment.md).
 *
 * Letters: n = source sequence length, m = pivot sequence length, K = top-k,
 * V_S / V_P = vocabulary sizes (max id + 1).
 */
#ifndef FC_ALIGN_H
#define FC_ALIGN_H

#include "fusechat.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------ */
/* vocabularies */

typedef struct fc_vocab fc_vocab_t;

/* NOTE: values are only ever appended. */
typedef enum fc_vocab_model {
    FC_VOCAB_BPE       = 1,
    FC_VOCAB_UNIGRAM   = 2,
    FC_VOCAB_WORDPIECE = 3,
} fc_vocab_model;

/* How pieces spell text (decides the canonical bytes). */
typedef enum fc_vocab_style {
    FC_STYLE_BYTELEVEL = 1, /* GPT-2 byte-to-glyph alphabet (GPT-2, Llama-3, Qwen2) */
    FC_STYLE_METASPACE = 2, /* U+2581 for spaces, <0xNN> bytes (SentencePiece style) */
    FC_STYLE_WORDPIECE = 3, /* words are pieces, continuations carry a prefix ("##") */
    FC_STYLE_PLAIN     = 4, /* pieces are the text itself */
} fc_vocab_style;

/* per-id flags */
enum {
    FC_TOKEN_MISSING = 1, /* no token has this id (a hole below the largest id) */
    FC_TOKEN_ADDED   = 2, /* listed in added_tokens */
    FC_TOKEN_SPECIAL = 4, /* an added token marked special: atomic, no text */
    FC_TOKEN_BYTE    = 8, /* a byte-fallback piece <0xNN> */
};

/* NOTE: values are only ever appended. */
typedef enum fc_role {
    FC_ROLE_BOS = 0,
    FC_ROLE_EOS = 1,
    FC_ROLE_UNK = 2,
    FC_ROLE_PAD = 3,
    FC_ROLE_EOT = 4, /* end of turn: <|im_end|>, <|eot_id|>, <|end_of_turn|>, ... else eos */
    FC_ROLE_COUNT
} fc_role;

/* Strings of every id, packed: id i is data[offsets[i] .. offsets[i+1]). */
typedef struct fc_strings {
    const char    *data;
    const int64_t *offsets; /* V + 1 entries */
} fc_strings;

/* Parse a tokenizer from memory. tokenizer_json is required; config_json
 * (tokenizer_config.json) and special_json (special_tokens_map.json) may be NULL. The
 * *_name arguments name the files in error messages. */
FC_API fc_status fc_vocab_parse(const char *tokenizer_json, size_t tokenizer_len,
                                const char *tokenizer_name, const char *config_json,
                                size_t config_len, const char *config_name,
                                const char *special_json, size_t special_len,
                                const char *special_name, fc_vocab_t **out, fc_error *err);
/* Read a Hugging Face tokenizer folder (tokenizer.json required). */
FC_API fc_status fc_vocab_load(const char *dir, fc_vocab_t **out, fc_error *err);
FC_API void      fc_vocab_free(fc_vocab_t *v);

FC_API int64_t        fc_vocab_size(const fc_vocab_t *v);
FC_API fc_vocab_model fc_vocab_model_type(const fc_vocab_t *v);
FC_API fc_vocab_style fc_vocab_text_style(const fc_vocab_t *v);
/* The whitespace marker the reference strips (method.md 3.1): "▁" for SentencePiece
 * styles, "Ġ" for byte-level, "##" for WordPiece. Can be overridden (NUL-terminated,
 * non-empty, at most 15 bytes). */
FC_API const char    *fc_vocab_marker(const fc_vocab_t *v);
FC_API fc_status      fc_vocab_set_marker(fc_vocab_t *v, const char *marker, fc_error *err);
/* 1 if encoding puts a space before the first word (SentencePiece dummy prefix, byte-level
 * add_prefix_space, WordPiece words), so canonical bytes start with one extra space. */
FC_API int            fc_vocab_adds_prefix_space(const fc_vocab_t *v);
FC_API int64_t        fc_vocab_role(const fc_vocab_t *v, fc_role role); /* -1 if none */
FC_API const uint8_t *fc_vocab_flags(const fc_vocab_t *v);
FC_API fc_strings     fc_vocab_pieces(const fc_vocab_t *v);    /* raw pieces */
FC_API fc_strings     fc_vocab_decoded(const fc_vocab_t *v);   /* decode([id]) */
FC_API fc_strings     fc_vocab_canonical(const fc_vocab_t *v); /* bytes (not always UTF-8) */
/* The id whose piece is s[0..len), or -1. Added tokens win over model pieces. */
FC_API int64_t        fc_vocab_find(const fc_vocab_t *v, const char *s, size_t len);

/* ------------------------------------------------------------------------------------ */
/* sequence alignment */

/* Precomputed per vocabulary pair: marker-stripped decoded strings as code points (DTW)
 * and UTF-8 (distribution rules). Read-only once built; share it between threads. The
 * vocabularies must outlive it. */
typedef struct fc_align_ctx fc_align_ctx_t;
FC_API fc_status fc_align_ctx_new(const fc_vocab_t *src, const fc_vocab_t *pivot,
                                  fc_align_ctx_t **out, fc_error *err);
FC_API void      fc_align_ctx_free(fc_align_ctx_t *ctx);

/* An alignment: for pivot position j, source positions indices[indptr[j] .. indptr[j+1]),
 * ascending. Arrays are malloc'ed; free with fc_alignment_free. */
typedef struct fc_alignment {
    int64_t *indptr;  /* m + 1 */
    int64_t *indices; /* indptr[m] */
    int64_t  m;
} fc_alignment;
FC_API void fc_alignment_free(fc_alignment *a);

/* The reference DTW (method.md 3.2-3.3): cost = Levenshtein over code points of the
 * marker-stripped decoded strings, DP with ties broken diag, left, up. */
FC_API fc_status fc_align_dtw(const fc_align_ctx_t *ctx, const int64_t *src_ids, int64_t n,
                              const int64_t *pivot_ids, int64_t m, fc_alignment *out,
                              fc_error *err);

/* Exact alignment on canonical byte spans: a pivot token is aligned with every source token
 * whose bytes overlap its bytes; whitespace present on one side only is skipped; special
 * tokens occupy no bytes, pair with the other side's special tokens at the same text
 * offset, otherwise with the token covering that offset. If the texts differ elsewhere:
 * FC_ERR_VALUE (rule "offsets_text_mismatch"), or the DTW alignment if fallback_dtw. */
FC_API fc_status fc_align_offsets(const fc_align_ctx_t *ctx, const int64_t *src_ids,
                                  int64_t n, const int64_t *pivot_ids, int64_t m,
                                  int fallback_dtw, int *used_fallback, fc_alignment *out,
                                  fc_error *err);

/* ------------------------------------------------------------------------------------ */
/* co-alignment counts and vocabulary maps */

typedef struct fc_counts fc_counts_t;
FC_API fc_counts_t *fc_counts_new(void);
FC_API void         fc_counts_free(fc_counts_t *c);
FC_API int64_t      fc_counts_nnz(const fc_counts_t *c);
/* Add `count` to (pivot id, source id). */
FC_API fc_status    fc_counts_add(fc_counts_t *c, int64_t pivot_id, int64_t src_id,
                                  uint64_t count, fc_error *err);
/* For each pivot position j: +1 for (pivot_ids[j], src_ids[s]) for every distinct source id
 * among the source positions aligned with j (the reference counts a repeated id once). */
FC_API fc_status    fc_counts_add_alignment(fc_counts_t *c, const int64_t *src_ids, int64_t n,
                                            const int64_t *pivot_ids, int64_t m,
                                            const fc_alignment *a, fc_error *err);
FC_API fc_status    fc_counts_merge(fc_counts_t *c, const fc_counts_t *other, fc_error *err);
/* All entries sorted by (pivot id, source id) (by_source = 0) or (source id, pivot id). */
FC_API fc_status    fc_counts_export(const fc_counts_t *c, int by_source, int64_t *pivot_ids,
                                     int64_t *src_ids, uint64_t *counts, fc_error *err);

/* NOTE: values are only ever appended. */
typedef enum fc_map_mode {
    FC_MAP_EM    = 0, /* exact piece match (marker replaced), else -1 */
    FC_MAP_MINED = 1, /* exact, else the pivot piece at minimum edit distance (first id) */
    FC_MAP_MS    = 2, /* method.md 4.2: co-aligned candidates scored by edit distance */
} fc_map_mode;

/* 1 if every source id has the pivot's piece and presence at the same id. */
FC_API int fc_vocab_same(const fc_vocab_t *src, const fc_vocab_t *pivot);

/* out[V_S]: source id -> pivot id (-1 = unmapped). MS needs counts. roles: -1 no role
 * overrides; 0 the reference's bos -> bos and eos -> eos; 1 also unk, pad and end of turn
 * (in that order, so end of turn wins). When the vocabularies are the same (fc_vocab_same)
 * the map is the identity, and roles 0 is taken as 1. */
FC_API fc_status fc_vocab_map(const fc_vocab_t *src, const fc_vocab_t *pivot, fc_map_mode mode,
                              const fc_counts_t *counts, int roles, int nthreads,
                              int32_t *out, fc_error *err);

/* Levenshtein distance over code points (bit-parallel when one side is <= 64 long). */
FC_API int64_t fc_levenshtein(const uint32_t *a, int64_t na, const uint32_t *b, int64_t nb);

/* For tests: 0 makes the DTW use its portable code instead of the SIMD one (same results);
 * returns the previous setting (1 = SIMD where the CPU has it). Process-wide. */
FC_API int fc_align_set_simd(int on);

/* ------------------------------------------------------------------------------------ */
/* distribution alignment (method.md section 5) */

/* NOTE: values are only ever appended. */
typedef enum fc_dist_mode {
    FC_DIST_MS    = 0, /* endswith rules, MAP / ONEHOT / EMPTY for 1-n positions */
    FC_DIST_EM    = 1, /* |J| = 1 and equal strings only */
    FC_DIST_MINED = 2, /* |J| = 1 and (equal strings or the map agrees) */
} fc_dist_mode;

/* For every pivot position: a list of (pivot id, logit), ids unique, first (highest logit)
 * kept. topk_ids/topk_logits are [n, K] row-major; eff_map[V_S] gives the pivot id of a
 * source top-K id (-1: dropped); map[V_S] is the vocabulary map (MinED's agreement test).
 * multi_rules = 0 gives ONEHOT for every 1-n position (no --use_token_alignment_matrix).
 * Output: out_offsets[m + 1], out_ids / out_logits with capacity m * K (or m if K = 0). */
FC_API fc_status fc_align_distributions(const fc_align_ctx_t *ctx, fc_dist_mode mode,
                                        int multi_rules, const int64_t *src_ids, int64_t n,
                                        const int64_t *pivot_ids, int64_t m,
                                        const fc_alignment *a, const int64_t *topk_ids,
                                        const float *topk_logits, int64_t k,
                                        const int32_t *eff_map, const int32_t *map,
                                        int64_t *out_offsets, int32_t *out_ids,
                                        float *out_logits, fc_error *err);

/* ------------------------------------------------------------------------------------ */
/* byte-exact projection (docs/alignment.md, "Projection onto pivot tokens") */

/* Per vocabulary pair: the pivot lookup (longest piece by canonical bytes) and the role map
 * of source tokens without bytes. FC_ERR_VALUE (rule projection_lossy_tokenizer) for a
 * WordPiece vocabulary. Read-only once built; the vocabularies must outlive it. */
typedef struct fc_project_ctx fc_project_ctx_t;
FC_API fc_status fc_project_ctx_new(const fc_vocab_t *src, const fc_vocab_t *pivot,
                                    fc_project_ctx_t **out, fc_error *err);
FC_API void      fc_project_ctx_free(fc_project_ctx_t *ctx);

/* how a pivot position was resolved; NOTE: values are only ever appended */
enum {
    FC_PROJ_EXACT    = 0, /* source tokens cover the next pivot token exactly */
    FC_PROJ_PREFIX   = 1, /* prefix mass: boundaries differ */
    FC_PROJ_FALLBACK = 2, /* nothing to project from: empty list */
    FC_PROJ_LAST     = 3, /* the last position: no next token */
};

/* The source's distributions carried to the pivot's next tokens. topk_ids [n, k] (-1 pads)
 * and topk_logprobs [n, k] are absolute log-probabilities (position i predicts token i+1);
 * true_logprobs [n] (NULL, NaN where unknown) the log-probability of the true next token.
 * Output for each pivot position j: out_ids / out_logprobs [out_offsets[j] ..
 * out_offsets[j+1]) (capacity m * out_k), at most out_k entries by mass; gold_logprob[j]
 * (NaN when unresolved) and resolution[j] (FC_PROJ_*). FC_ERR_VALUE naming the position on
 * bad ids or log-probabilities (NaN, +inf, above 0.1). */
FC_API fc_status fc_align_project(const fc_project_ctx_t *ctx, const int64_t *src_ids,
                                  int64_t n, const int64_t *pivot_ids, int64_t m,
                                  const int64_t *topk_ids, const float *topk_logprobs,
                                  int64_t k, const float *true_logprobs, int64_t out_k,
                                  int64_t *out_offsets, int32_t *out_ids, float *out_logprobs,
                                  float *gold_logprob, uint8_t *resolution, fc_error *err);

#ifdef __cplusplus
}
#endif

#endif
