/* levenshtein.h - edit distance over code points (internal). A pattern of at most 64 code
 * points is preprocessed once and compared with many texts by Myers' bit-parallel
 * algorithm (Hyyro's formulation for global distance): O(len(text)) word operations. */
#ifndef FC_LEVENSHTEIN_H
#define FC_LEVENSHTEIN_H

#include <stdint.h>

#define FC_LEV_WORD 64

typedef struct fc_lev_pattern {
    uint64_t ascii[128];         /* match masks of code points < 128 */
    uint32_t other[FC_LEV_WORD]; /* the other distinct code points ... */
    uint64_t other_mask[FC_LEV_WORD];
    int      n_other;
    int      len;                /* <= 64 */
} fc_lev_pattern;

void    fc_lev_pattern_init(fc_lev_pattern *p, const uint32_t *a, int len);
/* Distance to t; if cutoff >= 0 and the distance is certainly above cutoff, returns some
 * value > cutoff early. */
int64_t fc_lev_pattern_dist(const fc_lev_pattern *p, const uint32_t *t, int64_t nt,
                            int64_t cutoff);

#endif
