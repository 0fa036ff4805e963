/* json_util.h - checked JSON intake over cJSON for untrusted files (safetensors headers and
 * indexes, tokenizer.json, configs), and a string builder for the JSON we write (safetensors
 * headers and indexes). Internal to the core (not part of the public API).
 *
 * cJSON's sharp edges this covers (see shared/style.md section 5): it does not check UTF-8,
 * needs NUL termination unless given a length, ignores what follows the value, keeps
 * duplicate keys, looks keys up case-insensitively, and recurses without a caller-set limit.
 * Numbers: cJSON gives doubles; fc_json_uint accepts only integral values in [0, 2^53], and
 * callers that need exact integer *text* (safetensors) check the grammar with
 * fc_json_scan_numbers first. */
#ifndef FC_JSON_UTIL_H
#define FC_JSON_UTIL_H

#include <cJSON.h>

#include "fusechat.h"

/* 1 if buf[0..len) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF); otherwise 0
 * and *bad_at = offset of the first bad byte. */
int fc_utf8_valid(const char *buf, size_t len, size_t *bad_at);

/* Parse exactly one JSON value from buf[0..len) (no NUL needed), allowing only JSON
 * whitespace around it, nesting at most max_depth, valid UTF-8, no BOM. On failure returns
 * `code` with err->rule = rule_prefix + "_not_utf8" / "_not_json" / "_too_deep", and a
 * message naming `path` and the byte offset. */
fc_status fc_json_parse(const char *buf, size_t len, int max_depth, const char *path,
                        fc_status code, const char *rule_prefix, cJSON **out, fc_error *err);

/* Case-sensitive member lookup (never cJSON_GetObjectItem). */
const cJSON *fc_json_get(const cJSON *obj, const char *key);

/* The first key that appears twice in obj's direct members, or NULL. O(n) with a hash set. */
const char *fc_json_duplicate_key(const cJSON *obj);

/* An integral number in [0, 2^53] (exact in a double). 0 if item is anything else. */
int fc_json_uint(const cJSON *item, uint64_t *out);

/* Check the grammar of every number token in buf[0..len) (strings skipped): each must be a
 * plain non-negative integer (no sign, fraction, exponent, leading zero) of value <= 2^53.
 * Returns 1 if all are, else 0 with *bad_at at the first offending token. Used where the
 * number text must be exact before cJSON turns it into a double. */
int fc_json_scan_numbers(const char *buf, size_t len, size_t *bad_at);

/* ---- writing: a growing NUL-terminated string for JSON text (safetensors headers and
 * indexes). Appends after an allocation failure are dropped and set oom; the caller checks
 * oom once at the end and frees s. Start from {0}. */
typedef struct {
    char  *s;
    size_t len, cap;
    int    oom;
} fc_json_buf;

void fc_json_buf_put(fc_json_buf *b, const char *s, size_t n);
void fc_json_buf_str(fc_json_buf *b, const char *s);    /* s verbatim */
void fc_json_buf_u64(fc_json_buf *b, uint64_t v);       /* decimal */
/* A JSON string literal: quotes, backslash and control characters (\u00XX) escaped; other
 * bytes (UTF-8 included) verbatim. */
void fc_json_buf_string(fc_json_buf *b, const char *s);

#endif
