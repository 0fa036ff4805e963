/* st_reader.c - opening safetensors files and sharded Hugging Face folders.
 *
 * Every shard is mapped read-only (MAP_PRIVATE, PROT_READ) and its header validated
 * (st_header.c) before any tensor is exposed. A folder holds either model.safetensors or
 * model.safetensors.index.json plus the shards it names (st_index.c); the index wins when
 * both exist, as in transformers. Names are found through one open-addressing hash table
 * over all shards. The mapping is never written and the file descriptors are closed right
 * after mapping; a file truncated by someone else while mapped raises SIGBUS on access,
 * which no reader of mapped files can prevent (docs/security.md). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "st_internal.h"

typedef struct st_shard {
    char    *path;
    uint8_t *map;   /* NULL for an empty mapping */
    uint64_t size;
} st_shard;

struct fc_st_model {
    int                n_shards;
    st_shard          *shards;
    int64_t            n;
    fc_st_tensor_info *tensors;  /* storage order */
    int64_t           *slots;    /* hash table: tensor index + 1, 0 = empty */
    size_t             cap;      /* power of two */
    int64_t            n_meta;
    char             **meta_keys;
    char             **meta_values;
    int64_t            unlisted;
};

static int is_regular(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

void fc_st_close(fc_st_model_t *m) {
    if (!m) return;
    for (int i = 0; i < m->n_shards; i++) {
        if (m->shards[i].map) munmap(m->shards[i].map, m->shards[i].size);
        free(m->shards[i].path);
    }
    for (int64_t i = 0; i < m->n; i++) {
        free((char *)m->tensors[i].name);
        free((int64_t *)m->tensors[i].shape);
    }
    for (int64_t i = 0; i < m->n_meta; i++) {
        free(m->meta_keys[i]);
        free(m->meta_values[i]);
    }
    free(m->shards);
    free(m->tensors);
    free(m->slots);
    free(m->meta_keys);
    free(m->meta_values);
    free(m);
}

/* Map one shard and validate its header; the tensors are appended to m. */
static fc_status map_shard(fc_st_model_t *m, const char *path, st_header *h, fc_error *err) {
    st_shard *sh = &m->shards[m->n_shards];
    memset(h, 0, sizeof *h);
    if (!(sh->path = strdup(path))) return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    m->n_shards++;
    /* O_NONBLOCK: a FIFO must not hang the open; it is refused below as not regular */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return fc_error_set_io(err, errno, path, "cannot open %s", path);
    struct stat sb;
    int bad = fstat(fd, &sb) != 0 ? errno : !S_ISREG(sb.st_mode) ? EINVAL : 0;
    if (bad == EINVAL && S_ISDIR(sb.st_mode)) bad = EISDIR;
    if (bad) {
        int e = bad;
        close(fd);
        return fc_error_set_io(err, e, path, "%s is not a readable regular file", path);
    }
    sh->size = (uint64_t)sb.st_size;
    if (sh->size > 0) {
        void *p = mmap(NULL, (size_t)sh->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return fc_error_set_io(err, e, path, "cannot map %s", path);
        }
        sh->map = p;
    }
    close(fd);
    static const uint8_t empty[8];
    return st_header_parse(sh->map ? sh->map : empty, (size_t)sh->size, sh->size, path, h,
                           err);
}

/* Move a shard's tensors into the model (names and shapes change owner). */
static fc_status append_tensors(fc_st_model_t *m, st_header *h, int shard) {
    fc_st_tensor_info *t = realloc(m->tensors, (size_t)(m->n + h->n + 1) * sizeof *t);
    if (!t) return FC_ERR_NOMEM;
    m->tensors = t;
    const uint8_t *base = m->shards[shard].map;
    for (int64_t i = 0; i < h->n; i++) {
        fc_st_tensor_info *x = &m->tensors[m->n++];
        *x = h->tensors[i];
        x->shard = shard;
        x->data = base ? base + x->file_offset : NULL;
        if (!x->data) x->data = m->shards; /* any valid address: no tensor has bytes here */
    }
    h->n = 0; /* ownership moved */
    return FC_OK;
}

static fc_status add_meta(fc_st_model_t *m, char **keys, char **values, int64_t n) {
    if (n == 0) return FC_OK;
    char **k = realloc(m->meta_keys, (size_t)(m->n_meta + n) * sizeof *k);
    if (!k) return FC_ERR_NOMEM;
    m->meta_keys = k;
    char **v = realloc(m->meta_values, (size_t)(m->n_meta + n) * sizeof *v);
    if (!v) return FC_ERR_NOMEM;
    m->meta_values = v;
    for (int64_t i = 0; i < n; i++) {
        int seen = 0;
        for (int64_t j = 0; j < m->n_meta && !seen; j++) seen = !strcmp(m->meta_keys[j], keys[i]);
        if (seen) continue;
        char *kk = strdup(keys[i]), *vv = strdup(values[i]);
        if (!kk || !vv) { free(kk); free(vv); return FC_ERR_NOMEM; }
        m->meta_keys[m->n_meta] = kk;
        m->meta_values[m->n_meta++] = vv;
    }
    return FC_OK;
}

/* Hash table over names. Returns the index of an earlier tensor of the same name, -1 if
 * the name was new, -2 on allocation failure. */
static int64_t table_build(fc_st_model_t *m) {
    m->cap = 16;
    while (m->cap < 2 * (size_t)m->n) m->cap <<= 1;
    m->slots = calloc(m->cap, sizeof *m->slots);
    if (!m->slots) return -2;
    for (int64_t i = 0; i < m->n; i++) {
        size_t s = (size_t)st_hash_name(m->tensors[i].name) & (m->cap - 1);
        while (m->slots[s]) {
            int64_t j = m->slots[s] - 1;
            if (strcmp(m->tensors[j].name, m->tensors[i].name) == 0) return j;
            s = (s + 1) & (m->cap - 1);
        }
        m->slots[s] = i + 1;
    }
    return -1;
}

const fc_st_tensor_info *fc_st_find(const fc_st_model_t *m, const char *name) {
    if (!m || !name || !m->slots) return NULL;
    size_t s = (size_t)st_hash_name(name) & (m->cap - 1);
    while (m->slots[s]) {
        const fc_st_tensor_info *t = &m->tensors[m->slots[s] - 1];
        if (strcmp(t->name, name) == 0) return t;
        s = (s + 1) & (m->cap - 1);
    }
    return NULL;
}

static fc_status open_single(fc_st_model_t *m, const char *path, fc_error *err) {
    st_header h;
    fc_status st = map_shard(m, path, &h, err);
    if (st == FC_OK) st = append_tensors(m, &h, 0);
    if (st == FC_OK) st = add_meta(m, h.meta_keys, h.meta_values, h.n_meta);
    st_header_free(&h);
    if (st == FC_ERR_NOMEM && err->code != FC_ERR_NOMEM)
        fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    if (st != FC_OK) return st;
    if (table_build(m) == -2) return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    /* a single file cannot hold a name twice: its header passed the duplicate_key rule */
    return FC_OK;
}

static fc_status open_sharded(fc_st_model_t *m, const char *dir, const char *index_path,
                              fc_error *err) {
    const char *path = index_path;
    st_index ix;
    fc_status st = st_index_load(index_path, &ix, err);
    if (st != FC_OK) return st;
    m->shards = calloc((size_t)ix.n_shards, sizeof *m->shards);
    if (!m->shards) { st = FC_ERR_NOMEM; goto done; }
    if ((st = add_meta(m, ix.meta_keys, ix.meta_values, ix.n_meta)) != FC_OK) goto done;
    for (int i = 0; i < ix.n_shards; i++) {
        char *sp = st_join_path(dir, ix.shards[i]);
        if (!sp) { st = FC_ERR_NOMEM; goto done; }
        struct stat sb;
        if (stat(sp, &sb) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
            st = fc_error_set_rule(err, FC_ERR_SAFETENSORS, path, "index_missing_shard",
                                   "%s: shard '%s' named in weight_map does not exist (%s) "
                                   "(rule index_missing_shard)", path, ix.shards[i], sp);
            free(sp);
            goto done;
        }
        st_header h;
        st = map_shard(m, sp, &h, err);
        free(sp);
        if (st == FC_OK) st = append_tensors(m, &h, i);
        if (st == FC_OK && i == 0) st = add_meta(m, h.meta_keys, h.meta_values, h.n_meta);
        st_header_free(&h);
        if (st != FC_OK) goto done;
    }
    int64_t dup = table_build(m);
    if (dup == -2) { st = FC_ERR_NOMEM; goto done; }
    if (dup >= 0) {
        /* find the second holder for the message */
        const fc_st_tensor_info *a = &m->tensors[dup], *b = NULL;
        for (int64_t i = dup + 1; i < m->n && !b; i++)
            if (!strcmp(m->tensors[i].name, a->name)) b = &m->tensors[i];
        st = fc_error_set_rule(err, FC_ERR_SAFETENSORS, path, "index_duplicate_tensor",
                               "%s: tensor '%.200s' is in the headers of two shards, %s and %s "
                               "(rule index_duplicate_tensor)", path, a->name,
                               ix.shards[a->shard], b ? ix.shards[b->shard] : "?");
        goto done;
    }
    for (int64_t i = 0; i < ix.n; i++) {
        const fc_st_tensor_info *t = fc_st_find(m, ix.names[i]);
        if (!t || t->shard != ix.shard_of[i]) {
            st = fc_error_set_rule(err, FC_ERR_SAFETENSORS, path, "index_tensor_missing",
                                   "%s: tensor '%.200s' is mapped to shard %s but that shard's "
                                   "header does not hold it%s%s (rule index_tensor_missing)",
                                   path, ix.names[i], ix.shards[ix.shard_of[i]],
                                   t ? "; it is in " : "", t ? ix.shards[t->shard] : "");
            goto done;
        }
    }
    m->unlisted = m->n - ix.n;
done:
    if (st == FC_ERR_NOMEM && err->code != FC_ERR_NOMEM)
        st = fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    st_index_free(&ix);
    return st;
}

fc_status fc_st_open(const char *path, fc_st_model_t **out, fc_error *err) {
    fc_error local;
    if (!err) err = &local;
    fc_error_clear(err);
    *out = NULL;
    if (!path) return fc_error_set(err, FC_ERR_VALUE, "fc_st_open: NULL path");
    struct stat sb;
    if (stat(path, &sb) != 0) return fc_error_set_io(err, errno, path, "cannot open %s", path);
    fc_st_model_t *m = calloc(1, sizeof *m);
    if (!m) return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    fc_status st;
    if (S_ISDIR(sb.st_mode)) {
        char *index = st_join_path(path, ST_INDEX_NAME);
        char *single = st_join_path(path, ST_SINGLE_NAME);
        if (!index || !single) st = fc_error_set(err, FC_ERR_NOMEM, "out of memory");
        else if (is_regular(index)) st = open_sharded(m, path, index, err);
        else if (is_regular(single)) {
            m->shards = calloc(1, sizeof *m->shards);
            st = m->shards ? open_single(m, single, err)
                           : fc_error_set(err, FC_ERR_NOMEM, "out of memory");
        } else
            st = fc_error_set_io(err, ENOENT, path, "%s holds neither %s nor %s", path,
                                 ST_SINGLE_NAME, ST_INDEX_NAME);
        free(index);
        free(single);
    } else {
        m->shards = calloc(1, sizeof *m->shards);
        st = m->shards ? open_single(m, path, err)
                       : fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    }
    if (st != FC_OK) {
        fc_st_close(m);
        return st;
    }
    *out = m;
    return FC_OK;
}

int64_t fc_st_count(const fc_st_model_t *m) { return m ? m->n : 0; }

const fc_st_tensor_info *fc_st_tensor(const fc_st_model_t *m, int64_t i) {
    return (m && i >= 0 && i < m->n) ? &m->tensors[i] : NULL;
}

int64_t fc_st_metadata_count(const fc_st_model_t *m) { return m ? m->n_meta : 0; }

void fc_st_metadata_item(const fc_st_model_t *m, int64_t i, const char **key,
                         const char **value) {
    int ok = m && i >= 0 && i < m->n_meta;
    if (key) *key = ok ? m->meta_keys[i] : NULL;
    if (value) *value = ok ? m->meta_values[i] : NULL;
}

int fc_st_shard_count(const fc_st_model_t *m) { return m ? m->n_shards : 0; }

const char *fc_st_shard_path(const fc_st_model_t *m, int shard) {
    return (m && shard >= 0 && shard < m->n_shards) ? m->shards[shard].path : NULL;
}

uint64_t fc_st_shard_size(const fc_st_model_t *m, int shard) {
    return (m && shard >= 0 && shard < m->n_shards) ? m->shards[shard].size : 0;
}

int64_t fc_st_unlisted_count(const fc_st_model_t *m) { return m ? m->unlisted : 0; }

/* the page-aligned span of tensor t */
static void page_span(const fc_st_tensor_info *t, void **start, size_t *len) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t b = (uintptr_t)t->data & ~(uintptr_t)(page - 1);
    *start = (void *)b;
    *len = (uintptr_t)t->data + (size_t)t->nbytes - b;
}

void fc_st_prefetch(const fc_st_model_t *m, int64_t i) {
    const fc_st_tensor_info *t = fc_st_tensor(m, i);
    if (!t || t->nbytes == 0) return;
    void *start;
    size_t len;
    page_span(t, &start, &len);
    (void)madvise(start, len, MADV_WILLNEED); /* advice only: failure changes nothing */
}

fc_status fc_st_read(const fc_st_model_t *m, int64_t i, void *dst, fc_dtype dst_dtype,
                     int nthreads, fc_error *err) {
    const fc_st_tensor_info *t = fc_st_tensor(m, i);
    if (!t) return fc_error_set(err, FC_ERR_VALUE, "fc_st_read: no tensor %lld",
                                (long long)i);
    if (t->nbytes == 0) return FC_OK;
    if (t->dtype != dst_dtype &&
        (!fc_dtype_is_float(t->dtype) || !fc_dtype_is_float(dst_dtype)))
        return fc_error_set(err, FC_ERR_TYPE, "tensor '%.200s' in %s is %s and cannot be "
                            "converted to %s (only F16, BF16, F32, F64 convert)", t->name,
                            m->shards[t->shard].path, fc_dtype_name(t->dtype),
                            fc_dtype_name(dst_dtype) ? fc_dtype_name(dst_dtype) : "?");
    if (t->dtype == dst_dtype && !fc_dtype_is_float(t->dtype)) {
        memcpy(dst, t->data, (size_t)t->nbytes);
        return FC_OK;
    }
    /* a hint for a file not in the page cache (large readahead); MADV_POPULATE_READ was
     * measured slower than the converting threads' own faults when the file is cached */
    fc_st_prefetch(m, i);
    return fc_convert(t->data, t->dtype, dst, dst_dtype, t->numel, nthreads, err);
}
