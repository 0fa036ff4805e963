/* fuzz_st_header.c - libFuzzer target for the safetensors header validator.
 *
 * The input is a whole file image: 8-byte length, header, data. fc_st_check_header must
 * never crash, leak or read outside the buffer, and must either accept or fail with
 * FC_ERR_SAFETENSORS and a rule name. `make fuzz` runs it for FUZZ_SECONDS (60) with the
 * seeds in tests/fuzz/seeds-fuzz_st_header/; longer: make fuzz FUZZ_SECONDS=3600. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fusechat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fc_error err;
    fc_error_clear(&err);
    int64_t n = -1;
    fc_status st = fc_st_check_header(data, size, size, "fuzz.safetensors", &n, &err);
    if (st == FC_OK && n < 0) abort();
    if (st != FC_OK && (st != FC_ERR_SAFETENSORS || err.rule[0] == '\0')) abort();
    return 0;
}
