/* vocab_internal.h - the vocabulary struct and text helpers shared by the vocab_*.c and
 * align_*.c files. Not part of the public API (see fc_align.h). */
#ifndef FC_VOCAB_INTERNAL_H
#define FC_VOCAB_INTERNAL_H

#include "fusechat.h"
#include "strmap.h"

/* one step of a tokenizer.json "decoder", applied to a single token */
typedef enum {
    DEC_BYTELEVEL, DEC_METASPACE, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP,
    DEC_WORDPIECE, DEC_BPE_SUFFIX
} dec_kind;

typedef struct dec_step {
    dec_kind kind;
    char     a[64], b[64]; /* Replace pattern/content, Metaspace replacement, prefix, suffix */
    int      n1, n2;       /* Strip start/stop; Metaspace prepend (1) or not; WordPiece cleanup */
} dec_step;

#define FC_MAX_DEC_STEPS 16

struct fc_vocab {
    int64_t        V;
    fc_vocab_model model;
    fc_vocab_style style;
    char           marker[16];
    char           space_char[8];  /* Metaspace replacement (UTF-8), "▁" by default */
    char           wp_prefix[16];  /* WordPiece continuation prefix */
    int            prefix_space;
    int            byte_fallback;
    int            cleanup;        /* transformers' clean_up_tokenization_spaces */
    int64_t        roles[FC_ROLE_COUNT];
    uint8_t       *flags;
    fc_buf         pieces, decoded, canonical;
    int64_t       *piece_off, *dec_off, *can_off;
    fc_strmap      piece_map;
    dec_step       steps[FC_MAX_DEC_STEPS];
    int            n_steps;
};

/* Decode the next code point of valid UTF-8 at s (len > 0); *adv = bytes used. */
uint32_t fc_utf8_next(const unsigned char *s, size_t len, int *adv);
/* Append the UTF-8 encoding of cp. */
int fc_utf8_put(fc_buf *b, uint32_t cp);
/* Append bytes as text, each maximal invalid subpart replaced by U+FFFD (what Rust's
 * from_utf8_lossy and Python's errors="replace" do). */
int fc_utf8_lossy(fc_buf *b, const unsigned char *s, size_t len);
/* GPT-2 byte-level alphabet: the byte a glyph stands for, or -1. */
int fc_bytelevel_byte(uint32_t cp);
/* Append s with every occurrence of pat replaced by rep (all byte strings). */
int fc_replace_all(fc_buf *out, const char *s, size_t len, const char *pat, size_t plen,
                   const char *rep, size_t rlen);

/* Fill decoded and canonical strings of every id (vocab_text.c). */
fc_status fc_vocab_build_text(struct fc_vocab *v, fc_error *err);

#endif
