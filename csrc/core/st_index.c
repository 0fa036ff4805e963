/* st_index.c - reading model.safetensors.index.json, the map of a sharded checkpoint.
 *
 * {"metadata": {"total_size": <bytes>, ...}, "weight_map": {"tensor": "shard file", ...}}.
 * A weight_map value names a file in the index's folder: it must be a bare file name, or a
 * hostile index could make us map any file on the machine. total_size is advisory (third
 * party writers fill it in differently) and is not checked. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_util.h"
#include "st_internal.h"

/* the format needs depth 2; other tools nest extra metadata, which is skipped */
#define INDEX_MAX_DEPTH 16

#define FAIL(rule, ...) fc_error_set_rule(err, FC_ERR_SAFETENSORS, path, rule, __VA_ARGS__)

void st_index_free(st_index *ix) {
    if (!ix) return;
    for (int i = 0; i < ix->n_shards; i++) free(ix->shards[i]);
    for (int64_t i = 0; i < ix->n; i++) free(ix->names[i]);
    for (int64_t i = 0; i < ix->n_meta; i++) {
        free(ix->meta_keys[i]);
        free(ix->meta_values[i]);
    }
    free(ix->shards);
    free(ix->names);
    free(ix->shard_of);
    free(ix->meta_keys);
    free(ix->meta_values);
    memset(ix, 0, sizeof *ix);
}

/* a bare file name: not empty, no separator, no "..", not "." */
static int bare_file_name(const char *s) {
    return s[0] != '\0' && !strchr(s, '/') && !strchr(s, '\\') && !strstr(s, "..") &&
           strcmp(s, ".") != 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static fc_status load_metadata(const cJSON *meta, const char *path, st_index *ix,
                               fc_error *err) {
    if (!meta) return FC_OK;
    if (!cJSON_IsObject(meta))
        return FAIL("index_bad_metadata", "%s: \"metadata\" is not an object (rule "
                    "index_bad_metadata)", path);
    const char *dup = fc_json_duplicate_key(meta);
    if (dup)
        return FAIL("duplicate_key", "%s: key '%.200s' appears twice in \"metadata\" (rule "
                    "duplicate_key)", path, dup);
    const char *bad = NULL; /* non-strings (total_size, ...) are skipped: advisory */
    if (st_string_map(meta, 1, &ix->meta_keys, &ix->meta_values, &ix->n_meta, &bad) < 0)
        return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    return FC_OK;
}

/* weight_map into names/shard_of, and the sorted distinct shard names */
static fc_status load_weight_map(const cJSON *wm, const char *path, st_index *ix,
                                 fc_error *err) {
    if (!cJSON_IsObject(wm))
        return FAIL("index_bad_weight_map", "%s: \"weight_map\" is %s (rule "
                    "index_bad_weight_map)", path, wm ? "not an object" : "missing");
    const char *dup = fc_json_duplicate_key(wm);
    if (dup)
        return FAIL("index_bad_weight_map", "%s: tensor '%.200s' appears twice in weight_map "
                    "(rule index_bad_weight_map)", path, dup);
    int64_t n = cJSON_GetArraySize(wm);
    if (n == 0)
        return FAIL("index_bad_weight_map", "%s: weight_map is empty (rule "
                    "index_bad_weight_map)", path);
    ix->names = calloc((size_t)n, sizeof(char *));
    ix->shard_of = calloc((size_t)n, sizeof(int));
    char **files = calloc((size_t)n, sizeof(char *)); /* borrowed from the cJSON tree */
    if (!ix->names || !ix->shard_of || !files) {
        free(files);
        return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    }
    fc_status st = FC_OK;
    const cJSON *it;
    cJSON_ArrayForEach(it, wm) {
        if (!cJSON_IsString(it)) {
            st = FAIL("index_bad_weight_map", "%s: weight_map value of '%.200s' is not a "
                      "string (rule index_bad_weight_map)", path, it->string);
            goto done;
        }
        if (!bare_file_name(it->valuestring)) {
            st = FAIL("index_bad_filename", "%s: tensor '%.200s' maps to '%.200s', which is "
                      "not a bare file name in the checkpoint folder (rule "
                      "index_bad_filename)", path, it->string, it->valuestring);
            goto done;
        }
        files[ix->n] = it->valuestring;
        if (!(ix->names[ix->n++] = strdup(it->string))) goto nomem;
    }
    /* distinct shard names, sorted */
    char **sorted = malloc((size_t)n * sizeof(char *));
    if (!sorted) goto nomem;
    memcpy(sorted, files, (size_t)n * sizeof(char *));
    qsort(sorted, (size_t)n, sizeof(char *), cmp_str);
    int n_shards = 0;
    for (int64_t i = 0; i < n; i++)
        if (i == 0 || strcmp(sorted[i], sorted[i - 1]) != 0) sorted[n_shards++] = sorted[i];
    ix->shards = calloc((size_t)n_shards, sizeof(char *));
    if (!ix->shards) { free(sorted); goto nomem; }
    for (int i = 0; i < n_shards; i++) {
        if (!(ix->shards[i] = strdup(sorted[i]))) { free(sorted); goto nomem; }
        ix->n_shards++;
    }
    for (int64_t i = 0; i < n; i++) { /* binary search of each tensor's shard */
        char **hit = bsearch(&files[i], sorted, (size_t)n_shards, sizeof(char *), cmp_str);
        ix->shard_of[i] = (int)(hit - sorted);
    }
    free(sorted);
    goto done;
nomem:
    st = fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
done:
    free(files);
    return st;
}

fc_status st_index_load(const char *path, st_index *ix, fc_error *err) {
    memset(ix, 0, sizeof *ix);
    char *text = NULL;
    size_t len = 0;
    fc_status st = st_read_small_file(path, FC_ST_MAX_HEADER, &text, &len, err);
    if (st != FC_OK) return st;
    cJSON *root = NULL;
    st = fc_json_parse(text, len, INDEX_MAX_DEPTH, path, FC_ERR_SAFETENSORS, "index", &root,
                       err);
    if (st == FC_OK && !cJSON_IsObject(root))
        st = FAIL("index_not_json", "%s: the index is not a JSON object (rule index_not_json)",
                  path);
    const char *dup = st == FC_OK ? fc_json_duplicate_key(root) : NULL;
    if (dup)
        st = FAIL("duplicate_key", "%s: key '%.200s' appears twice in the index (rule "
                  "duplicate_key)", path, dup);
    if (st == FC_OK) st = load_metadata(fc_json_get(root, "metadata"), path, ix, err);
    if (st == FC_OK) st = load_weight_map(fc_json_get(root, "weight_map"), path, ix, err);
    cJSON_Delete(root);
    free(text);
    if (st != FC_OK) st_index_free(ix);
    return st;
}
