/* fuzz_tokenizer_json.c - libFuzzer target for the tokenizer.json reader (fc_vocab_parse):
 * any input must give FC_OK or a clean error, never a crash, leak or sanitizer report.
 * Accepted inputs are exercised further: every string, an alignment context, DTW and
 * offsets alignment of the first ids against themselves, and the MinED map. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fusechat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fc_vocab_t *v = NULL;
    fc_error err;
    fc_error_clear(&err);
    if (fc_vocab_parse((const char *)data, size, "fuzz.json", NULL, 0, NULL, NULL, 0, NULL, &v,
                       &err) != FC_OK)
        return 0;
    int64_t V = fc_vocab_size(v);
    fc_strings d = fc_vocab_decoded(v), c = fc_vocab_canonical(v);
    volatile unsigned sum = 0;
    for (int64_t i = 0; i < V; i++) {
        sum += (unsigned)(d.offsets[i + 1] - d.offsets[i]);
        sum += (unsigned)(c.offsets[i + 1] - c.offsets[i]);
    }
    fc_align_ctx_t *ctx = NULL;
    if (V <= 4096 && fc_align_ctx_new(v, v, &ctx, &err) == FC_OK) {
        int64_t ids[16];
        int64_t n = V < 16 ? V : 16;
        for (int64_t i = 0; i < n; i++) ids[i] = (i * 7) % V;
        fc_alignment al;
        if (fc_align_dtw(ctx, ids, n, ids, n, &al, &err) == FC_OK) fc_alignment_free(&al);
        if (fc_align_offsets(ctx, ids, n, ids + 1, n - 1, 1, NULL, &al, &err) == FC_OK)
            fc_alignment_free(&al);
        int32_t *map = V <= 512 ? malloc((size_t)V * sizeof *map) : NULL;
        if (map) {
            fc_vocab_map(v, v, FC_MAP_MINED, NULL, 1, 1, map, &err);
            free(map);
        }
        fc_align_ctx_free(ctx);
    }
    fc_vocab_free(v);
    return 0;
}
