/* st_internal.h - what the safetensors reader, writer and header validator share.
 * Internal to the core (not part of the public API). */
#ifndef FC_ST_INTERNAL_H
#define FC_ST_INTERNAL_H

#include <cJSON.h>

#include "fusechat.h"

/* the file names of a Hugging Face folder */
#define ST_INDEX_NAME  "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"

/* A validated header: tensors sorted by begin offset (storage order), metadata in file
 * order. Every string and shape is heap-allocated and owned by the struct. */
typedef struct st_header {
    int64_t            n;        /* tensors */
    fc_st_tensor_info *tensors;  /* name/shape owned; data, file_offset and shard unset */
    int64_t            n_meta;
    char             **meta_keys;
    char             **meta_values;
    uint64_t           data_start; /* 8 + N: where the data buffer starts in the file */
} st_header;

/* Parse and validate the header in buf (see fc_st_check_header for the contract). */
fc_status st_header_parse(const uint8_t *buf, size_t buf_len, uint64_t file_size,
                          const char *path, st_header *out, fc_error *err);
void st_header_free(st_header *h);

/* A parsed model.safetensors.index.json: weight_map entries in file order, the distinct
 * shard file names sorted (so model-00001-of-... comes first), metadata string values. */
typedef struct st_index {
    int      n_shards;
    char   **shards;     /* bare file names, checked */
    int64_t  n;          /* weight_map entries */
    char   **names;
    int     *shard_of;   /* index into shards */
    int64_t  n_meta;
    char   **meta_keys;
    char   **meta_values;
} st_index;

/* Read and check an index file: index_not_utf8 / index_not_json / index_too_deep /
 * (a non-object too), duplicate_key, index_bad_metadata, index_bad_weight_map,
 * index_bad_filename. Shard existence and contents are checked by the reader. */
fc_status st_index_load(const char *index_path, st_index *out, fc_error *err);
void st_index_free(st_index *ix);

/* Read a whole small file (an index, a config) into a malloc'd buffer; at most max bytes. */
fc_status st_read_small_file(const char *path, uint64_t max, char **out, size_t *len,
                             fc_error *err);

/* Read N from the first 8 bytes, little-endian, byte by byte (host order does not matter). */
uint64_t st_read_u64le(const uint8_t *p);

/* Copy the members of a JSON object into malloc'd key/value string arrays. Members whose
 * value is not a string are skipped when skip_other is set; otherwise the first such
 * member's key goes to *bad and 1 is returned. 0 on success, -1 when out of memory (the
 * pairs copied so far are in the arrays, counted by *n, for the caller to free). */
int st_string_map(const cJSON *obj, int skip_other, char ***keys, char ***values, int64_t *n,
                  const char **bad);

/* "dir/name" (malloc'd), one '/' between them; NULL when out of memory. */
char *st_join_path(const char *dir, const char *name);

/* FNV-1a over a NUL-terminated string: the name hash of the reader's tables. */
uint64_t st_hash_name(const char *s);

#endif
