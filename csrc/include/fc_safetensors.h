/*
 * fc_safetensors.h - reading and writing safetensors files and sharded Hugging Face folders.
 * Part of the fusechat C API; include fusechat.h, not this file.
 *
 * File layout (https://github.com/huggingface/safetensors, README "Format"):
 *   1. 8 bytes: N, the header length, unsigned 64-bit little-endian
 *   2. N bytes: a UTF-8 JSON object {"name": {"dtype": "F16", "shape": [..],
 *      "data_offsets": [begin, end]}, ..., "__metadata__": {"k": "v"}}
 *   3. the data buffer: tensors at [8 + N + begin, 8 + N + end), little-endian, row-major
 *
 * The reader validates every header before any tensor is used; each broken rule fails with
 * FC_ERR_SAFETENSORS, err->rule set to the rule's name (FC_ST_RULE_* below) and a message
 * naming the file, the tensor and the offending values. Rules:
 *   file_too_small       the file is shorter than 8 bytes
 *   header_too_large     N > FC_ST_MAX_HEADER (100,000,000)
 *   header_out_of_file   8 + N is past the end of the file
 *   header_not_utf8      the header is not valid UTF-8 (a BOM is refused too)
 *   header_not_json      the header is not one JSON value followed only by whitespace
 *   header_too_deep      the JSON nests deeper than 3 levels (refused before parsing)
 *   header_not_object    the header's JSON value is not an object
 *   duplicate_key        a key appears twice at the top level, in an entry or in
 *                        __metadata__ (also at the top level or in "metadata" of an index)
 *   bad_metadata         __metadata__ is not an object of string values
 *   bad_entry            an entry is not an object with exactly dtype, shape, data_offsets
 *   unknown_dtype        dtype is not one of the fc_dtype names
 *   bad_shape            shape is not an array of integers in [0, 2^53] written plainly
 *                        (1.0, 1e3, 01 and -1 are refused)
 *   bad_offsets          data_offsets is not [begin, end], plain integers, begin <= end <= 2^53
 *   size_overflow        the element count or byte count overflows 64 bits
 *   size_mismatch        end - begin != product(shape) * dtype size
 *   offsets_not_contiguous  sorted by begin, tensors do not start at 0 and follow each
 *                        other without gap or overlap
 *   buffer_size_mismatch the last tensor does not end exactly at the end of the file
 * Index files (model.safetensors.index.json):
 *   index_not_utf8       the index is not valid UTF-8
 *   index_not_json       the index is not one JSON object
 *   index_too_deep       the index nests deeper than 16 levels
 *   index_bad_metadata   "metadata" is present and not an object
 *   index_bad_weight_map weight_map missing, not an object, empty, a tensor listed twice,
 *                        or a value not a string
 *   index_bad_filename   a shard name that is not a bare file name (/, \, .., absolute, empty)
 *   index_missing_shard  a shard named in weight_map does not exist
 *   index_tensor_missing a tensor in weight_map is not in its shard's header
 *   index_duplicate_tensor  a tensor appears in the headers of two shards
 * Shards may hold tensors the index does not list: they are reported by
 * fc_st_unlisted_count() (the Python layer warns), not refused. Shards the index does not
 * name are not opened. "total_size" is advisory and not checked.
 *
 * Integers are parsed exactly from the JSON text (never through cJSON's valueint or a
 * double): up to 2^53, as the safetensors JSON schema allows.
 */
#ifndef FC_SAFETENSORS_H
#define FC_SAFETENSORS_H

#include "fusechat.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FC_ST_MAX_HEADER 100000000ULL
#define FC_ST_MAX_INT    9007199254740992ULL /* 2^53 */

/* ------------------------------------------------------------------------------------ */
/* reading */

typedef struct fc_st_model fc_st_model_t; /* a mapped file or sharded folder (opaque) */

typedef struct fc_st_tensor_info {
    const char    *name;     /* NUL-terminated, owned by the model handle */
    fc_dtype       dtype;
    int            ndim;
    const int64_t *shape;    /* ndim entries, owned by the model handle */
    int64_t        numel;
    uint64_t       nbytes;
    uint64_t       begin;    /* offsets in the shard's data buffer, as in the header */
    uint64_t       end;
    uint64_t       file_offset; /* absolute offset of the first byte in the shard file */
    int            shard;    /* index into the model's shard list */
    const void    *data;     /* the bytes, inside the read-only mapping; no alignment */
} fc_st_tensor_info;

/* Open a .safetensors file, or a folder holding model.safetensors or a sharded checkpoint
 * with model.safetensors.index.json (the index wins when both exist). Every shard is
 * mapped read-only and validated; shards are ordered by file name. I/O failures are
 * FC_ERR_IO with errno and the path; a folder without either file is ENOENT. */
FC_API fc_status fc_st_open(const char *path, fc_st_model_t **out, fc_error *err);
FC_API void      fc_st_close(fc_st_model_t *m);

/* Tensors in storage order: shard by shard, by offset inside each shard. */
FC_API int64_t                  fc_st_count(const fc_st_model_t *m);
FC_API const fc_st_tensor_info *fc_st_tensor(const fc_st_model_t *m, int64_t i);
/* Lookup by name (hash table); NULL if absent. */
FC_API const fc_st_tensor_info *fc_st_find(const fc_st_model_t *m, const char *name);

/* __metadata__ of the file (for a folder: of the index's "metadata" string values, then of
 * the first shard). Strings are owned by the handle. */
FC_API int64_t   fc_st_metadata_count(const fc_st_model_t *m);
FC_API void      fc_st_metadata_item(const fc_st_model_t *m, int64_t i, const char **key,
                                     const char **value);

FC_API int         fc_st_shard_count(const fc_st_model_t *m);
FC_API const char *fc_st_shard_path(const fc_st_model_t *m, int shard);
FC_API uint64_t    fc_st_shard_size(const fc_st_model_t *m, int shard);
/* Tensors present in shards but absent from the index (warned about, not refused). */
FC_API int64_t     fc_st_unlisted_count(const fc_st_model_t *m);

/* Advise the kernel that tensor i will be read soon (madvise WILLNEED); never fails. */
FC_API void        fc_st_prefetch(const fc_st_model_t *m, int64_t i);

/* Copy tensor i into dst (numel elements of dst_dtype, any alignment), converting between
 * F16, BF16, F32 and F64 with fc_convert on nthreads threads (0 = default; RNE, NaN/inf
 * kept); other dtypes must equal the stored one (a plain copy), else FC_ERR_TYPE. The span
 * gets an madvise WILLNEED hint first (readahead when the file is not in the page cache). */
FC_API fc_status   fc_st_read(const fc_st_model_t *m, int64_t i, void *dst, fc_dtype dst_dtype,
                              int nthreads, fc_error *err);

/* Validate one header given the first bytes of a file: buf holds at least
 * min(file_size, 8 + N) bytes. Used by fc_st_open and by the fuzz target. On success,
 * *n_tensors is the number of tensors. `path` only names the file in messages. */
FC_API fc_status fc_st_check_header(const uint8_t *buf, size_t buf_len, uint64_t file_size,
                                    const char *path, int64_t *n_tensors, fc_error *err);

/* ------------------------------------------------------------------------------------ */
/* writing */

typedef struct fc_st_writer fc_st_writer_t;

typedef struct fc_st_entry {
    const char    *name;
    fc_dtype       dtype;
    int            ndim;
    const int64_t *shape;
} fc_st_entry;

/* Layout: tensors are grouped by element size, largest first, keeping the caller's order
 * inside a group, and the header is padded with spaces to a multiple of 8, so every tensor
 * starts aligned to its element size.
 *
 * Single file: max_shard_size == 0 and `path` is the output file.
 * Folder: max_shard_size > 0 and `path` is a directory (created if missing). If everything
 * fits in one shard it is written as model.safetensors; otherwise shards are filled
 * greedily in layout order as model-00001-of-0000N.safetensors plus
 * model.safetensors.index.json ({"metadata": {"total_size": bytes}, "weight_map": {..}}).
 *
 * A tensor larger than max_shard_size gets a shard of its own. Metadata goes into every
 * shard's __metadata__; the index holds only total_size (the sum of tensor bytes).
 *
 * Nothing appears at a final path before fc_st_writer_finish: every file is written under
 * a temporary name in the same directory and renamed at the end (shards first, the index
 * last). An existing output file is an FC_ERR_EXISTS error unless overwrite is set; in a
 * folder, the other kind of output (an index where model.safetensors is to be written, or
 * the reverse) counts as existing and is removed at finish when overwriting. A folder the
 * writer created is removed again if it is freed unfinished. The header (integers printed
 * exactly) and the file sizes are fixed at open. metadata: n_meta key/value string pairs.
 * Refused (FC_ERR_VALUE/FC_ERR_TYPE): duplicate names, "__metadata__", names or metadata
 * that are not UTF-8, dimensions outside [0, 2^53], invalid dtypes, a header > 100 MB. */
FC_API fc_status fc_st_writer_open(const char *path, const fc_st_entry *entries, int64_t n,
                                   const char *const *meta_keys,
                                   const char *const *meta_values, int64_t n_meta,
                                   uint64_t max_shard_size, int overwrite,
                                   fc_st_writer_t **out, fc_error *err);

/* Write bytes [offset, offset + nbytes) of tensor `index` (its position in `entries`).
 * Tensors and chunks may come in any order and from several threads at once; a chunk
 * overlapping bytes already written is an FC_ERR_VALUE error. */
FC_API fc_status fc_st_writer_write(fc_st_writer_t *w, int64_t index, uint64_t offset,
                                    const void *data, uint64_t nbytes, fc_error *err);

/* Check every byte of every tensor was written, close, rename into place. Files are not
 * fsync'ed: the guarantee is against a failing process, not a power loss. */
FC_API fc_status fc_st_writer_finish(fc_st_writer_t *w, fc_error *err);
/* Free the writer; if it was not finished, remove its temporary files. */
FC_API void      fc_st_writer_free(fc_st_writer_t *w);

/* Where the layout put tensor `index`: its shard and its offsets in that shard. */
FC_API int       fc_st_writer_shard_count(const fc_st_writer_t *w);
FC_API void      fc_st_writer_locate(const fc_st_writer_t *w, int64_t index, int *shard,
                                     uint64_t *begin, uint64_t *end);

#ifdef __cplusplus
}
#endif

#endif /* FC_SAFETENSORS_H */
