/* test_safetensors.c - header rules, reader, index and writer of the safetensors component
 * (fc_safetensors.h), built with ASan + UBSan by `make ctest`. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctest.h"
#include "fusechat.h"

/* a file image: 8-byte length, the JSON text, then `data` zero bytes */
static uint8_t *image(const char *json, size_t data, size_t *len) {
    size_t n = strlen(json);
    uint8_t *b = calloc(8 + n + data + 1, 1);
    for (int k = 0; k < 8; k++) b[k] = (uint8_t)((uint64_t)n >> (8 * k));
    memcpy(b + 8, json, n);
    *len = 8 + n + data;
    return b;
}

/* 1 if the header is refused with exactly `rule` (or accepted when rule is NULL) and the
 * message names the file */
static int rule_of(const char *json, size_t data, const char *rule) {
    size_t len;
    uint8_t *b = image(json, data, &len);
    fc_error err;
    fc_error_clear(&err);
    int64_t n = -1;
    fc_status st = fc_st_check_header(b, len, len, "t.safetensors", &n, &err);
    free(b);
    if (!rule) {
        if (st != FC_OK) fprintf(stderr, "  unexpected: %s\n", err.msg);
        return st == FC_OK;
    }
    if (st != FC_ERR_SAFETENSORS || strcmp(err.rule, rule) != 0 ||
        !strstr(err.msg, "t.safetensors") || !strstr(err.msg, rule)) {
        fprintf(stderr, "  want %s, got status %d rule '%s': %s\n", rule, st, err.rule, err.msg);
        return 0;
    }
    return 1;
}

#define E(dt, shape, b, e) "{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_rules(void) {
    fc_error err;
    uint8_t small[4] = {0};
    CHECK(fc_st_check_header(small, 4, 4, "t.safetensors", NULL, &err) == FC_ERR_SAFETENSORS &&
          !strcmp(err.rule, "file_too_small"));
    uint8_t big[8] = {0x01, 0xe1, 0xf5, 0x05, 0, 0, 0, 0}; /* 100,000,001 */
    CHECK(fc_st_check_header(big, 8, 1ull << 30, "t", NULL, &err) == FC_ERR_SAFETENSORS &&
          !strcmp(err.rule, "header_too_large"));
    uint8_t past[16] = {100};
    CHECK(fc_st_check_header(past, 16, 16, "t", NULL, &err) == FC_ERR_SAFETENSORS &&
          !strcmp(err.rule, "header_out_of_file"));
    uint8_t huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}; /* 8 + N wraps */
    CHECK(fc_st_check_header(huge, 16, 16, "t", NULL, &err) == FC_ERR_SAFETENSORS &&
          !strcmp(err.rule, "header_too_large"));

    CHECK(rule_of("{}", 0, NULL));
    CHECK(rule_of("  {\"a\":" E("F32", "[2]", 0, 8) "}   ", 8, NULL));
    CHECK(rule_of("{\"s\":" E("BF16", "[]", 0, 2) ",\"z\":" E("F16", "[3,0]", 2, 2) "}", 2, NULL));
    CHECK(rule_of("{\"a\":\"\xff\"}", 0, "header_not_utf8"));
    CHECK(rule_of("\xef\xbb\xbf{}", 0, "header_not_utf8"));
    CHECK(rule_of("{\"a\":", 0, "header_not_json"));
    CHECK(rule_of("{} x", 0, "header_not_json"));
    CHECK(rule_of("[1]", 0, "header_not_object"));
    CHECK(rule_of("{\"a\":{\"b\":[[1]]}}", 0, "header_too_deep"));
    CHECK(rule_of("{\"a\":" E("U8", "[1]", 0, 1) ",\"a\":" E("U8", "[1]", 1, 2) "}", 2,
                  "duplicate_key"));
    CHECK(rule_of("{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1]}}", 1, "duplicate_key"));
    CHECK(rule_of("{\"__metadata__\":{\"k\":1}}", 0, "bad_metadata"));
    CHECK(rule_of("{\"__metadata__\":[\"k\"]}", 0, "bad_metadata"));
    CHECK(rule_of("{\"a\":[1]}", 0, "bad_entry"));
    CHECK(rule_of("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "bad_entry"));
    CHECK(rule_of("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":1}}", 1,
                  "bad_entry"));
    CHECK(rule_of("{\"a\":" E("F4", "[2]", 0, 1) "}", 1, "unknown_dtype"));
    CHECK(rule_of("{\"a\":" E("f32", "[1]", 0, 4) "}", 4, "unknown_dtype"));
    CHECK(rule_of("{\"a\":" E("U8", "[-1]", 0, 1) "}", 1, "bad_shape"));
    CHECK(rule_of("{\"a\":" E("U8", "[1.5]", 0, 1) "}", 1, "bad_shape"));
    CHECK(rule_of("{\"a\":" E("U8", "[1.0]", 0, 1) "}", 1, "bad_shape"));
    CHECK(rule_of("{\"a\":" E("U8", "[01]", 0, 1) "}", 1, "bad_shape"));
    CHECK(rule_of("{\"a\":" E("U8", "[\"1\"]", 0, 1) "}", 1, "bad_shape"));
    CHECK(rule_of("{\"a\":" E("U8", "[9007199254740993]", 0, 1) "}", 1, "bad_shape"));
    CHECK(rule_of("{\"a\":" E("U8", "[1]", 1, 0) "}", 1, "bad_offsets"));
    CHECK(rule_of("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1, "bad_offsets"));
    CHECK(rule_of("{\"a\":" E("U8", "[1]", 0, 1e0) "}", 1, "bad_offsets"));
    CHECK(rule_of("{\"a\":" E("U64", "[4294967296,4294967296]", 0, 8) "}", 8, "size_overflow"));
    CHECK(rule_of("{\"a\":" E("U64", "[9007199254740992,2048]", 0, 8) "}", 8, "size_overflow"));
    CHECK(rule_of("{\"a\":" E("F32", "[2]", 0, 4) "}", 4, "size_mismatch"));
    CHECK(rule_of("{\"a\":" E("U8", "[1]", 1, 2) "}", 2, "offsets_not_contiguous"));
    CHECK(rule_of("{\"a\":" E("U8", "[2]", 0, 2) ",\"b\":" E("U8", "[2]", 1, 3) "}", 3,
                  "offsets_not_contiguous"));
    CHECK(rule_of("{\"a\":" E("U8", "[2]", 0, 2) "}", 3, "buffer_size_mismatch"));
    CHECK(rule_of("{\"a\":" E("U8", "[2]", 0, 2) "}", 1, "buffer_size_mismatch"));
    /* all numbers above 2^53 (exact in neither double nor the schema) are refused */
    CHECK(rule_of("{\"a\":" E("U8", "[0]", 0, 0) ",\"b\":" E("U8", "[0]", 0, 18446744073709551616) "}",
                  0, "bad_offsets"));
}

static char tmpdir[] = "/tmp/fc-st-test-XXXXXX";

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static void test_write_read(void) {
    char out[256], folder[256], p[512];
    snprintf(out, sizeof out, "%s/a.safetensors", tmpdir);
    int64_t s0[2] = {3, 5}, s1[1] = {7}, s2[3] = {2, 0, 4};
    fc_st_entry e[4] = {{"small", FC_BF16, 1, s1}, {"big", FC_F64, 2, s0},
                        {"empty", FC_F32, 3, s2}, {"scalar", FC_U8, 0, NULL}};
    const char *mk[1] = {"format"}, *mv[1] = {"pt \"x\"\n"};
    fc_st_writer_t *w = NULL;
    fc_error err;
    CHECK(fc_st_writer_open(out, e, 4, mk, mv, 1, 0, 0, &w, &err) == FC_OK);
    double big[15];
    uint16_t small[7];
    for (int i = 0; i < 15; i++) big[i] = i * 0.5;
    for (int i = 0; i < 7; i++) small[i] = (uint16_t)(0x3f80 + i);
    uint8_t sc = 42;
    /* chunks out of order; an overlap is refused */
    CHECK(fc_st_writer_write(w, 1, 64, (uint8_t *)big + 64, 120 - 64, &err) == FC_OK);
    CHECK(fc_st_writer_write(w, 1, 60, big, 8, &err) == FC_ERR_VALUE);
    CHECK(fc_st_writer_write(w, 1, 0, big, 64, &err) == FC_OK);
    CHECK(fc_st_writer_write(w, 0, 0, small, 13, &err) == FC_OK);
    CHECK(fc_st_writer_write(w, 0, 13, (uint8_t *)small + 13, 2, &err) == FC_ERR_VALUE);
    CHECK(!file_exists(out));
    CHECK(fc_st_writer_finish(w, &err) == FC_ERR_VALUE && strstr(err.msg, "small"));
    CHECK(fc_st_writer_write(w, 0, 13, (uint8_t *)small + 13, 1, &err) == FC_OK);
    CHECK(fc_st_writer_write(w, 3, 0, &sc, 1, &err) == FC_OK);
    CHECK(fc_st_writer_finish(w, &err) == FC_OK);
    fc_st_writer_free(w);
    CHECK(file_exists(out));

    fc_st_model_t *m = NULL;
    CHECK_MSG(fc_st_open(out, &m, &err) == FC_OK, "%s", err.msg);
    if (m) {
        CHECK(fc_st_count(m) == 4);
        /* layout: element size descending, caller order inside a size */
        CHECK(!strcmp(fc_st_tensor(m, 0)->name, "big"));
        CHECK(!strcmp(fc_st_tensor(m, 1)->name, "empty"));
        const fc_st_tensor_info *t = fc_st_find(m, "big");
        CHECK(t && t->dtype == FC_F64 && t->ndim == 2 && t->shape[1] == 5 && t->numel == 15);
        CHECK(t && memcmp(t->data, big, sizeof big) == 0);
        CHECK(t && t->file_offset % 8 == 0);
        t = fc_st_find(m, "small");
        CHECK(t && memcmp(t->data, small, sizeof small) == 0);
        t = fc_st_find(m, "scalar");
        CHECK(t && t->ndim == 0 && t->numel == 1 && *(const uint8_t *)t->data == 42);
        t = fc_st_find(m, "empty");
        CHECK(t && t->numel == 0 && t->nbytes == 0);
        CHECK(fc_st_find(m, "nope") == NULL);
        const char *k, *v;
        fc_st_metadata_item(m, 0, &k, &v);
        CHECK(fc_st_metadata_count(m) == 1 && !strcmp(k, "format") && !strcmp(v, mv[0]));
        float f32[15];
        CHECK(fc_st_read(m, fc_st_find(m, "big") - fc_st_tensor(m, 0), f32, FC_F32, 2, &err) == FC_OK);
        CHECK(f32[3] == 1.5f);
        CHECK(fc_st_read(m, 3, f32, FC_F32, 1, &err) == FC_ERR_TYPE);
        fc_st_close(m);
    }
    /* an existing output is refused unless asked */
    CHECK(fc_st_writer_open(out, e, 1, NULL, NULL, 0, 0, 0, &w, &err) == FC_ERR_EXISTS);
    CHECK(fc_st_writer_open(out, e, 1, NULL, NULL, 0, 0, 1, &w, &err) == FC_OK);
    fc_st_writer_free(w); /* not finished: the old file stays, the temporary goes */
    CHECK(fc_st_open(out, &m, &err) == FC_OK && fc_st_count(m) == 4);
    fc_st_close(m);
    /* bad entries */
    fc_st_entry dup[2] = {{"x", FC_U8, 0, NULL}, {"x", FC_U8, 0, NULL}};
    CHECK(fc_st_writer_open(out, dup, 2, NULL, NULL, 0, 0, 1, &w, &err) == FC_ERR_VALUE);
    fc_st_entry res[1] = {{"__metadata__", FC_U8, 0, NULL}};
    CHECK(fc_st_writer_open(out, res, 1, NULL, NULL, 0, 0, 1, &w, &err) == FC_ERR_VALUE);

    /* sharded: 3 tensors of 40 bytes, shards of at most 100 bytes */
    snprintf(folder, sizeof folder, "%s/sharded", tmpdir);
    int64_t s10[1] = {10};
    fc_st_entry sh[3] = {{"w.0", FC_F32, 1, s10}, {"w.1", FC_F32, 1, s10}, {"w.2", FC_F32, 1, s10}};
    CHECK(fc_st_writer_open(folder, sh, 3, NULL, NULL, 0, 100, 0, &w, &err) == FC_OK);
    CHECK(fc_st_writer_shard_count(w) == 2);
    float vals[10];
    for (int i = 2; i >= 0; i--) {
        for (int j = 0; j < 10; j++) vals[j] = (float)(i * 10 + j);
        CHECK(fc_st_writer_write(w, i, 0, vals, 40, &err) == FC_OK);
    }
    CHECK(fc_st_writer_finish(w, &err) == FC_OK);
    fc_st_writer_free(w);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", folder);
    CHECK(file_exists(p));
    CHECK_MSG(fc_st_open(folder, &m, &err) == FC_OK, "%s", err.msg);
    if (m) {
        CHECK(fc_st_count(m) == 3 && fc_st_shard_count(m) == 2 && fc_st_unlisted_count(m) == 0);
        const fc_st_tensor_info *t = fc_st_find(m, "w.2");
        CHECK(t && t->shard == 1 && ((const float *)t->data)[9] == 29.0f);
        fc_st_close(m);
    }
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
}

static int index_rule(const char *index_json, const char *rule) {
    char p[512];
    snprintf(p, sizeof p, "%s/sharded/model.safetensors.index.json", tmpdir);
    write_file(p, index_json);
    snprintf(p, sizeof p, "%s/sharded", tmpdir);
    fc_st_model_t *m = NULL;
    fc_error err;
    fc_status st = fc_st_open(p, &m, &err);
    fc_st_close(m);
    if (st != FC_ERR_SAFETENSORS || strcmp(err.rule, rule) != 0 || !strstr(err.msg, "index")) {
        fprintf(stderr, "  want %s, got %d %s: %s\n", rule, st, err.rule, err.msg);
        return 0;
    }
    return 1;
}

static void test_index(void) {
#define S1 "\"model-00001-of-00002.safetensors\""
#define S2 "\"model-00002-of-00002.safetensors\""
    CHECK(index_rule("{\"weight_map\": ", "index_not_json"));
    CHECK(index_rule("[]", "index_not_json"));
    CHECK(index_rule("{\"metadata\": {}}", "index_bad_weight_map"));
    CHECK(index_rule("{\"weight_map\": {\"w.0\": 1}}", "index_bad_weight_map"));
    CHECK(index_rule("{\"weight_map\": {\"w.0\": \"../x.safetensors\"}}", "index_bad_filename"));
    CHECK(index_rule("{\"weight_map\": {\"w.0\": \"/etc/passwd\"}}", "index_bad_filename"));
    CHECK(index_rule("{\"weight_map\": {\"w.0\": \"nope.safetensors\"}}", "index_missing_shard"));
    CHECK(index_rule("{\"weight_map\": {\"w.0\": " S1 ", \"w.9\": " S2 "}}", "index_tensor_missing"));
    CHECK(index_rule("{\"weight_map\": {\"w.0\": " S2 ", \"w.2\": " S2 "}}", "index_tensor_missing"));
    CHECK(index_rule("{\"metadata\": 3, \"weight_map\": {\"w.0\": " S1 "}}", "index_bad_metadata"));
    CHECK(index_rule("{\"weight_map\": {\"w.0\": " S1 "}, \"weight_map\": {}}", "duplicate_key"));
    /* a tensor in two shards */
    char a[512], b[512];
    snprintf(a, sizeof a, "%s/sharded/model-00001-of-00002.safetensors", tmpdir);
    snprintf(b, sizeof b, "%s/sharded/copy.safetensors", tmpdir);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", a, b);
    CHECK(system(cmd) == 0);
    CHECK(index_rule("{\"weight_map\": {\"w.0\": " S1 ", \"w.1\": \"copy.safetensors\"}}",
                     "index_duplicate_tensor"));
    /* unlisted tensors are counted, not refused */
    char p[512];
    snprintf(p, sizeof p, "%s/sharded/model.safetensors.index.json", tmpdir);
    write_file(p, "{\"weight_map\": {\"w.0\": " S1 ", \"w.2\": " S2 "}}");
    snprintf(p, sizeof p, "%s/sharded", tmpdir);
    fc_st_model_t *m = NULL;
    fc_error err;
    CHECK(fc_st_open(p, &m, &err) == FC_OK && fc_st_unlisted_count(m) == 1);
    fc_st_close(m);
    /* I/O errors carry errno and the path */
    CHECK(fc_st_open("/nonexistent/x.safetensors", &m, &err) == FC_ERR_IO &&
          err.sys_errno == ENOENT && !strcmp(err.path, "/nonexistent/x.safetensors"));
}

/* several threads write interleaved chunks of one tensor at once */
typedef struct { fc_st_writer_t *w; const uint8_t *data; int part, parts; fc_status st; } chunk_job;

static void *write_chunks(void *arg) {
    chunk_job *j = arg;
    fc_error err;
    for (int c = j->part; c < 64; c += j->parts) {
        fc_status st = fc_st_writer_write(j->w, 0, (uint64_t)c * 4096, j->data + c * 4096, 4096,
                                          &err);
        if (st != FC_OK) j->st = st;
    }
    return NULL;
}

static void test_threads(void) {
    char out[256];
    snprintf(out, sizeof out, "%s/threads.safetensors", tmpdir);
    int64_t shape[1] = {64 * 4096};
    fc_st_entry e[1] = {{"bytes", FC_U8, 1, shape}};
    fc_st_writer_t *w = NULL;
    fc_error err;
    CHECK(fc_st_writer_open(out, e, 1, NULL, NULL, 0, 0, 0, &w, &err) == FC_OK);
    uint8_t *data = malloc(64 * 4096);
    for (int i = 0; i < 64 * 4096; i++) data[i] = (uint8_t)(i * 7 + i / 4096);
    pthread_t th[4];
    chunk_job jobs[4];
    for (int t = 0; t < 4; t++) {
        jobs[t] = (chunk_job){w, data, t, 4, FC_OK};
        pthread_create(&th[t], NULL, write_chunks, &jobs[t]);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        CHECK(jobs[t].st == FC_OK);
    }
    CHECK(fc_st_writer_finish(w, &err) == FC_OK);
    fc_st_writer_free(w);
    fc_st_model_t *m = NULL;
    CHECK(fc_st_open(out, &m, &err) == FC_OK);
    CHECK(m && memcmp(fc_st_tensor(m, 0)->data, data, 64 * 4096) == 0);
    fc_st_close(m);
    free(data);
}

int main(void) {
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_rules();
    test_write_read();
    test_index();
    test_threads();
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return ctest_report("test_safetensors");
}
