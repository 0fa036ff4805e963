/* json_util.c - checked JSON intake over cJSON, and the JSON text builder of the writers
 * (see json_util.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"

int fc_utf8_valid(const char *buf, size_t len, size_t *bad_at) {
    const unsigned char *s = (const unsigned char *)buf;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t n;
        unsigned cp, min;
        if ((c & 0xe0) == 0xc0) { n = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { n = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { n = 3; cp = c & 0x07; min = 0x10000; }
        else goto bad;
        if (len - i <= n) goto bad; /* truncated sequence */
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) goto bad;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) goto bad;
        i += n + 1;
    }
    return 1;
bad:
    if (bad_at) *bad_at = i;
    return 0;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* maximum nesting of arrays/objects, counted on the text (strings skipped), so that a
 * hostile file is refused before cJSON's recursive parser sees it */
static int nesting_ok(const char *s, size_t len, int max_depth, size_t *bad_at) {
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = 0;
        } else if (c == '"') in_str = 1;
        else if (c == '[' || c == '{') {
            if (++depth > max_depth) { *bad_at = i; return 0; }
        } else if (c == ']' || c == '}') depth--;
    }
    return 1;
}

fc_status fc_json_parse(const char *buf, size_t len, int max_depth, const char *path,
                        fc_status code, const char *rule_prefix, cJSON **out, fc_error *err) {
    char rule[48];
    size_t at = 0;
    *out = NULL;
    if (len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0) {
        snprintf(rule, sizeof rule, "%s_not_utf8", rule_prefix);
        return fc_error_set_rule(err, code, path, rule,
                                 "%s: starts with a UTF-8 byte order mark, which JSON forbids "
                                 "(rule %s)", path, rule);
    }
    if (!fc_utf8_valid(buf, len, &at)) {
        snprintf(rule, sizeof rule, "%s_not_utf8", rule_prefix);
        return fc_error_set_rule(err, code, path, rule,
                                 "%s: invalid UTF-8 at byte %zu of the JSON text (rule %s)", path,
                                 at, rule);
    }
    if (!nesting_ok(buf, len, max_depth, &at)) {
        snprintf(rule, sizeof rule, "%s_too_deep", rule_prefix);
        return fc_error_set_rule(err, code, path, rule,
                                 "%s: JSON nested deeper than %d levels at byte %zu (rule %s)",
                                 path, max_depth, at, rule);
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    size_t stop = end ? (size_t)(end - buf) : 0;
    if (root) {
        while (stop < len && is_ws(buf[stop])) stop++;
        /* cJSON stops at a NUL inside the buffer; anything left over is not whitespace */
        if (stop < len) { cJSON_Delete(root); root = NULL; }
    }
    if (!root) {
        snprintf(rule, sizeof rule, "%s_not_json", rule_prefix);
        return fc_error_set_rule(err, code, path, rule,
                                 "%s: not a single valid JSON value (error near byte %zu of "
                                 "%zu) (rule %s)", path, stop, len, rule);
    }
    *out = root;
    return FC_OK;
}

const cJSON *fc_json_get(const cJSON *obj, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

const char *fc_json_duplicate_key(const cJSON *obj) {
    size_t n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) n++;
    if (n < 2) return NULL;
    size_t cap = 1;
    while (cap < 2 * n) cap <<= 1;
    const char **slots = calloc(cap, sizeof *slots);
    if (!slots) { /* fall back to the quadratic scan rather than fail */
        for (const cJSON *a = obj->child; a; a = a->next)
            for (const cJSON *b = a->next; b; b = b->next)
                if (a->string && b->string && strcmp(a->string, b->string) == 0) return b->string;
        return NULL;
    }
    const char *dup = NULL;
    cJSON_ArrayForEach(it, obj) {
        if (!it->string) continue;
        size_t h = (size_t)hash_str(it->string) & (cap - 1);
        while (slots[h] && strcmp(slots[h], it->string) != 0) h = (h + 1) & (cap - 1);
        if (slots[h]) { dup = it->string; break; }
        slots[h] = it->string;
    }
    free(slots);
    return dup;
}

int fc_json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return 0;
    double v = item->valuedouble;
    if (!(v >= 0.0) || v > 9007199254740992.0 || v != (double)(uint64_t)v) return 0;
    *out = (uint64_t)v;
    return 1;
}

int fc_json_scan_numbers(const char *buf, size_t len, size_t *bad_at) {
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = 0;
            continue;
        }
        if (c == '"') { in_str = 1; continue; }
        if (c != '-' && (c < '0' || c > '9')) continue;
        /* a number token: [-]digits[.digits][(e|E)[+-]digits] */
        size_t start = i, j = i;
        int ok = c != '-';
        while (j < len && (buf[j] == '-' || buf[j] == '+' || buf[j] == '.' || buf[j] == 'e' ||
                           buf[j] == 'E' || (buf[j] >= '0' && buf[j] <= '9'))) {
            if (buf[j] < '0' || buf[j] > '9') ok = 0;
            j++;
        }
        size_t ndig = j - start;
        if (ok && ndig > 1 && buf[start] == '0') ok = 0;     /* leading zero */
        if (ok && ndig > 16) ok = 0;                          /* > 2^53 has 16+ digits */
        if (ok && ndig == 16) {
            uint64_t v = 0;
            for (size_t k = start; k < j; k++) v = v * 10 + (uint64_t)(buf[k] - '0');
            if (v > 9007199254740992ull) ok = 0;
        }
        if (!ok) { if (bad_at) *bad_at = start; return 0; }
        i = j - 1;
    }
    return 1;
}

/* ---- writing ---- */

void fc_json_buf_put(fc_json_buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) { b->oom = 1; return; }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void fc_json_buf_str(fc_json_buf *b, const char *s) { fc_json_buf_put(b, s, strlen(s)); }

void fc_json_buf_u64(fc_json_buf *b, uint64_t v) {
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    fc_json_buf_put(b, tmp, (size_t)n);
}

void fc_json_buf_string(fc_json_buf *b, const char *s) {
    fc_json_buf_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            fc_json_buf_put(b, e, 2);
        } else if (c < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", c);
            fc_json_buf_put(b, e, 6);
        } else
            fc_json_buf_put(b, s, 1);
    }
    fc_json_buf_put(b, "\"", 1);
}
