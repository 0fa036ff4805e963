/* ctest.h - a minimal test harness for the C core (built under ASan + UBSan by `make ctest`).
 * CHECK records a failure and goes on; each test binary ends with "N passed, N failed". */
#ifndef FC_CTEST_H
#define FC_CTEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ctest_passed, ctest_failed;

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (cond) ctest_passed++;                                                  \
        else {                                                                     \
            ctest_failed++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                       \
    do {                                                                           \
        if (cond) ctest_passed++;                                                  \
        else {                                                                     \
            ctest_failed++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                          \
            fputc('\n', stderr);                                                   \
        }                                                                          \
    } while (0)

static inline int ctest_report(const char *name) {
    printf("%s: %d passed, %d failed\n", name, ctest_passed, ctest_failed);
    return ctest_failed ? 1 : 0;
}

#endif
