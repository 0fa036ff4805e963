/* st_header.c - validation of a safetensors header: every rule of fc_safetensors.h.
 *
 * Order of the checks: framing (file_too_small, header_too_large, header_out_of_file), the
 * JSON text (header_not_utf8, header_not_json, header_too_deep), the top-level object
 * (header_not_object, duplicate_key, bad_metadata), each entry (bad_entry, duplicate_key,
 * unknown_dtype, bad_shape, bad_offsets), the exact text of every number (a value cJSON
 * would round, or written 1.0 / 1e3 / 01: bad_shape or bad_offsets), sizes (size_overflow,
 * size_mismatch), then the layout of the buffer (offsets_not_contiguous,
 * buffer_size_mismatch). The first broken rule is reported. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"
#include "st_internal.h"

/* safetensors needs depth 3 ({ "t": { "shape": [ ); anything deeper is refused unparsed */
#define ST_MAX_DEPTH 3

uint64_t st_read_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

void st_header_free(st_header *h) {
    if (!h) return;
    for (int64_t i = 0; i < h->n; i++) {
        free((char *)h->tensors[i].name);
        free((int64_t *)h->tensors[i].shape);
    }
    free(h->tensors);
    for (int64_t i = 0; i < h->n_meta; i++) {
        free(h->meta_keys[i]);
        free(h->meta_values[i]);
    }
    free(h->meta_keys);
    free(h->meta_values);
    memset(h, 0, sizeof *h);
}

#define FAIL(rule, ...) fc_error_set_rule(err, FC_ERR_SAFETENSORS, path, rule, __VA_ARGS__)

/* Names in messages are cut to keep the message readable ("%.200s"). */

static fc_status check_metadata(const cJSON *meta, const char *path, st_header *h,
                                fc_error *err) {
    if (!cJSON_IsObject(meta))
        return FAIL("bad_metadata", "%s: __metadata__ is not an object of strings (rule "
                    "bad_metadata)", path);
    const char *dup = fc_json_duplicate_key(meta);
    if (dup)
        return FAIL("duplicate_key", "%s: key '%.200s' appears twice in __metadata__ (rule "
                    "duplicate_key)", path, dup);
    const char *bad = NULL;
    int r = st_string_map(meta, 0, &h->meta_keys, &h->meta_values, &h->n_meta, &bad);
    if (r < 0) return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    if (r > 0)
        return FAIL("bad_metadata", "%s: __metadata__ value of '%.200s' is not a string "
                    "(rule bad_metadata)", path, bad);
    return FC_OK;
}

static int uint_array(const cJSON *a, int n_min, int n_max, int64_t **vals, int *n_out) {
    if (!cJSON_IsArray(a)) return 0;
    int n = cJSON_GetArraySize(a);
    if (n < n_min || n > n_max) return 0;
    int64_t *v = malloc(((size_t)n + 1) * sizeof *v);
    if (!v) return -1;
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, a) {
        uint64_t x;
        if (!fc_json_uint(it, &x)) { free(v); return 0; }
        v[i++] = (int64_t)x;
    }
    *vals = v;
    *n_out = n;
    return 1;
}

static fc_status check_entry(const cJSON *e, const char *path, fc_st_tensor_info *t,
                             fc_error *err) {
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return FAIL("bad_entry", "%s: tensor '%.200s' is not an object with dtype, shape, "
                    "data_offsets (rule bad_entry)", path, name);
    const char *dup = fc_json_duplicate_key(e);
    if (dup)
        return FAIL("duplicate_key", "%s: tensor '%.200s': key '%.100s' appears twice (rule "
                    "duplicate_key)", path, name, dup);
    const cJSON *dt = fc_json_get(e, "dtype"), *sh = fc_json_get(e, "shape"),
                *off = fc_json_get(e, "data_offsets");
    if (!dt || !sh || !off || cJSON_GetArraySize(e) != 3)
        return FAIL("bad_entry", "%s: tensor '%.200s' must have exactly the keys dtype, shape "
                    "and data_offsets (rule bad_entry)", path, name);
    if (!cJSON_IsString(dt))
        return FAIL("unknown_dtype", "%s: tensor '%.200s': dtype is not a string (rule "
                    "unknown_dtype)", path, name);
    int d = fc_dtype_from_name(dt->valuestring, strlen(dt->valuestring));
    if (d < 0)
        return FAIL("unknown_dtype", "%s: tensor '%.200s': unknown dtype '%.40s' (rule "
                    "unknown_dtype)", path, name, dt->valuestring);
    t->dtype = (fc_dtype)d;

    int64_t *shape = NULL, *offs = NULL;
    int ndim = 0, n2 = 0;
    int r = uint_array(sh, 0, 1 << 20, &shape, &ndim);
    if (r < 0) return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    if (r == 0)
        return FAIL("bad_shape", "%s: tensor '%.200s': shape is not an array of integers in "
                    "[0, 2^53] (rule bad_shape)", path, name);
    t->shape = shape;
    t->ndim = ndim;
    r = uint_array(off, 2, 2, &offs, &n2);
    if (r < 0) return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    if (r == 0)
        return FAIL("bad_offsets", "%s: tensor '%.200s': data_offsets is not [begin, end] of "
                    "integers in [0, 2^53] (rule bad_offsets)", path, name);
    t->begin = (uint64_t)offs[0];
    t->end = (uint64_t)offs[1];
    free(offs);
    if (t->begin > t->end)
        return FAIL("bad_offsets", "%s: tensor '%.200s': data_offsets [%llu, %llu] end before "
                    "begin (rule bad_offsets)", path, name, (unsigned long long)t->begin,
                    (unsigned long long)t->end);
    return FC_OK;
}

/* A number token whose text is not an exact plain integer. Every entry passed its
 * structural checks, so numbers sit only in shape and data_offsets arrays of plain numbers:
 * the nearest '[' before the token opens the array, and the key before it names which.
 * The tensor is the first holding a number of that value there (cJSON kept only doubles). */
static fc_status inexact_number(const char *text, size_t len, size_t at, const cJSON *root,
                                const char *path, fc_error *err) {
    char tok[40];
    size_t k = 0;
    while (at + k < len && k + 1 < sizeof tok && strchr("0123456789+-.eE", text[at + k])) {
        tok[k] = text[at + k];
        k++;
    }
    tok[k] = '\0';
    size_t open = at;
    while (open > 0 && text[open] != '[') open--;
    size_t q = open;
    while (q > 0 && strchr(" \t\r\n:", text[q - 1])) q--;
    int is_shape = q >= 7 && memcmp(text + q - 7, "\"shape\"", 7) == 0;
    const char *key = is_shape ? "shape" : "data_offsets";
    const char *rule = is_shape ? "bad_shape" : "bad_offsets";
    double v = strtod(tok, NULL);
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        const cJSON *x;
        cJSON_ArrayForEach(x, fc_json_get(e, key)) {
            if (cJSON_IsNumber(x) && x->valuedouble == v)
                return FAIL(rule, "%s: tensor '%.200s': %s holds '%s', not an exact plain "
                            "integer in [0, 2^53] (rule %s)", path, e->string, key, tok, rule);
        }
    }
    return FAIL(rule, "%s: number '%s' at byte %zu of the header is not an exact plain "
                "integer in [0, 2^53] (rule %s)", path, tok, at, rule);
}

static fc_status check_sizes(const fc_st_tensor_info *t, const char *path, fc_error *err) {
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        uint64_t d = (uint64_t)t->shape[i];
        if (d != 0 && numel > UINT64_MAX / d)
            return FAIL("size_overflow", "%s: tensor '%.200s': the element count of its shape "
                        "overflows 64 bits (rule size_overflow)", path, t->name);
        numel *= d;
    }
    uint64_t es = fc_dtype_size(t->dtype);
    if (numel > UINT64_MAX / es || numel > (uint64_t)INT64_MAX)
        return FAIL("size_overflow", "%s: tensor '%.200s': %llu elements of %s overflow 64 bits "
                    "(rule size_overflow)", path, t->name, (unsigned long long)numel,
                    fc_dtype_name(t->dtype));
    uint64_t nbytes = numel * es;
    if (t->end - t->begin != nbytes)
        return FAIL("size_mismatch", "%s: tensor '%.200s': data_offsets [%llu, %llu] span %llu "
                    "bytes but %llu elements of %s take %llu (rule size_mismatch)", path,
                    t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                    (unsigned long long)(t->end - t->begin), (unsigned long long)numel,
                    fc_dtype_name(t->dtype), (unsigned long long)nbytes);
    return FC_OK;
}

static int by_offsets(const void *a, const void *b) {
    const fc_st_tensor_info *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static fc_status check_layout(st_header *h, uint64_t file_size, const char *path,
                              fc_error *err) {
    qsort(h->tensors, (size_t)h->n, sizeof *h->tensors, by_offsets);
    uint64_t expect = 0;
    for (int64_t i = 0; i < h->n; i++) {
        const fc_st_tensor_info *t = &h->tensors[i];
        if (t->begin != expect) {
            const char *how = t->begin > expect ? "a gap" : "an overlap";
            return FAIL("offsets_not_contiguous", "%s: tensor '%.200s' begins at %llu but the "
                        "previous tensor ends at %llu: %s in the data buffer (rule "
                        "offsets_not_contiguous)", path, t->name, (unsigned long long)t->begin,
                        (unsigned long long)expect, how);
        }
        expect = t->end;
    }
    uint64_t buffer = file_size - h->data_start;
    if (expect != buffer)
        return FAIL("buffer_size_mismatch", "%s: the tensors end at byte %llu of the data "
                    "buffer but the file holds %llu bytes of data after the header (rule "
                    "buffer_size_mismatch)", path, (unsigned long long)expect,
                    (unsigned long long)buffer);
    return FC_OK;
}

static fc_status parse_root(const cJSON *root, const char *text, size_t len,
                            uint64_t file_size, const char *path, st_header *h, fc_error *err) {
    if (!cJSON_IsObject(root))
        return FAIL("header_not_object", "%s: the header is not a JSON object (rule "
                    "header_not_object)", path);
    const char *dup = fc_json_duplicate_key(root);
    if (dup)
        return FAIL("duplicate_key", "%s: key '%.200s' appears twice in the header (rule "
                    "duplicate_key)", path, dup);
    int64_t n = cJSON_GetArraySize(root);
    h->tensors = calloc((size_t)n + 1, sizeof *h->tensors);
    if (!h->tensors) return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    fc_status st;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if ((st = check_metadata(e, path, h, err)) != FC_OK) return st;
            continue;
        }
        fc_st_tensor_info *t = &h->tensors[h->n++];
        t->shard = 0;
        if (!(t->name = strdup(e->string)))
            return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
        if ((st = check_entry(e, path, t, err)) != FC_OK) return st;
    }
    size_t at = 0;
    if (!fc_json_scan_numbers(text, len, &at))
        return inexact_number(text, len, at, root, path, err);
    for (int64_t i = 0; i < h->n; i++) {
        fc_st_tensor_info *t = &h->tensors[i];
        if ((st = check_sizes(t, path, err)) != FC_OK) return st;
        t->nbytes = t->end - t->begin;
        t->numel = (int64_t)(t->nbytes / fc_dtype_size(t->dtype));
        t->file_offset = h->data_start + t->begin;
    }
    return check_layout(h, file_size, path, err);
}

/* A file that fails the framing or is no JSON object is not a safetensors file at all (junk,
 * another format): the message says so before the rule, "PATH: not a safetensors file: ...". */
static void say_not_safetensors(const char *path, fc_error *err) {
    size_t plen = strlen(path);
    if (strncmp(err->msg, path, plen) != 0 || strncmp(err->msg + plen, ": ", 2) != 0) return;
    char rest[sizeof err->msg];
    snprintf(rest, sizeof rest, "%s", err->msg + plen + 2);
    snprintf(err->msg, sizeof err->msg, "%.200s: not a safetensors file: %.500s", path, rest);
}

static int is_framing_rule(const char *rule) {
    static const char *rules[] = {"file_too_small", "header_too_large", "header_out_of_file",
                                  "header_not_utf8", "header_too_deep", "header_not_json",
                                  "header_not_object"};
    for (size_t i = 0; i < sizeof rules / sizeof *rules; i++)
        if (strcmp(rule, rules[i]) == 0) return 1;
    return 0;
}

static fc_status header_parse(const uint8_t *buf, size_t buf_len, uint64_t file_size,
                              const char *path, st_header *h, fc_error *err);

fc_status st_header_parse(const uint8_t *buf, size_t buf_len, uint64_t file_size,
                          const char *path, st_header *h, fc_error *err) {
    if (!path) path = "<buffer>";
    fc_status st = header_parse(buf, buf_len, file_size, path, h, err);
    if (st != FC_OK && err != NULL && is_framing_rule(err->rule)) say_not_safetensors(path, err);
    return st;
}

static fc_status header_parse(const uint8_t *buf, size_t buf_len, uint64_t file_size,
                              const char *path, st_header *h, fc_error *err) {
    memset(h, 0, sizeof *h);
    if (file_size < 8)
        return FAIL("file_too_small", "%s: %llu bytes, shorter than the 8-byte header length "
                    "(rule file_too_small)", path, (unsigned long long)file_size);
    if (buf_len < 8)
        return fc_error_set(err, FC_ERR_VALUE, "%s: fc_st_check_header: buffer of %zu bytes "
                            "is shorter than 8", path, buf_len);
    uint64_t n = st_read_u64le(buf);
    if (n > FC_ST_MAX_HEADER)
        return FAIL("header_too_large", "%s: header length %llu exceeds the limit of %llu "
                    "bytes (rule header_too_large)", path, (unsigned long long)n,
                    (unsigned long long)FC_ST_MAX_HEADER);
    if (n > file_size - 8)
        return FAIL("header_out_of_file", "%s: header length %llu runs past the end of the "
                    "%llu-byte file (rule header_out_of_file)", path, (unsigned long long)n,
                    (unsigned long long)file_size);
    if (buf_len - 8 < n)
        return fc_error_set(err, FC_ERR_VALUE, "%s: fc_st_check_header: buffer of %zu bytes "
                            "does not hold the %llu-byte header", path, buf_len,
                            (unsigned long long)n);
    h->data_start = 8 + n;
    const char *text = (const char *)buf + 8;
    cJSON *root = NULL;
    fc_status st = fc_json_parse(text, (size_t)n, ST_MAX_DEPTH, path, FC_ERR_SAFETENSORS,
                                 "header", &root, err);
    if (st == FC_OK) st = parse_root(root, text, (size_t)n, file_size, path, h, err);
    cJSON_Delete(root);
    if (st != FC_OK) st_header_free(h);
    return st;
}

fc_status fc_st_check_header(const uint8_t *buf, size_t buf_len, uint64_t file_size,
                             const char *path, int64_t *n_tensors, fc_error *err) {
    st_header h;
    fc_status st = st_header_parse(buf, buf_len, file_size, path, &h, err);
    if (st == FC_OK) {
        if (n_tensors) *n_tensors = h.n;
        st_header_free(&h);
    }
    return st;
}
