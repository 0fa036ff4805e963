/* st_writer.c - writing safetensors files and sharded folders (layout in fc_safetensors.h).
 *
 * The whole layout (shards, offsets, headers) is fixed at open, so tensors can be written
 * in any order, in chunks, from several threads: each chunk is one pwrite at its final
 * offset in a temporary file created next to its final name. A per-tensor list of written
 * byte ranges (under a mutex; the pwrite itself runs outside it) refuses overlapping
 * chunks, and finish refuses to rename anything while a byte is missing. The index is
 * renamed last, so a reader that finds it finds every shard. Headers are printed here with
 * exact integers (never cJSON_Print, which turns integers >= 1e15 into exponents). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json_util.h"
#include "st_internal.h"

typedef struct w_tensor {
    const char *name;   /* points into the writer's copy of the entries */
    fc_dtype    dtype;
    int         ndim;
    int64_t    *shape;
    uint64_t    nbytes;
    int         shard;
    uint64_t    begin, end; /* offsets in the shard's data buffer */
    uint64_t   *ranges;     /* written byte ranges [a, b), sorted, disjoint, 2 per range */
    int         n_ranges, cap_ranges;
} w_tensor;

typedef struct w_shard {
    char    *final_path;
    char    *tmp_path;
    int      fd;
    uint64_t data_start; /* 8 + N */
    uint64_t size;
} w_shard;

struct fc_st_writer {
    int             n_shards;
    w_shard        *shards;
    int64_t         n;
    w_tensor       *t;
    char          **names;   /* owned copies of the entry names */
    char           *index_final, *index_tmp;
    char           *stale;   /* an output of the other kind, removed at finish (overwrite) */
    char           *made_dir; /* the output folder if the writer created it */
    pthread_mutex_t mu;
    int             failed, finished;
};

/* ------------------------------------------------------------------------------------ */
/* layout */

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(w_tensor *const *)a)->name, (*(w_tensor *const *)b)->name);
}

static int by_size_desc(const void *a, const void *b) {
    const w_tensor *x = *(w_tensor *const *)a, *y = *(w_tensor *const *)b;
    size_t sx = fc_dtype_size(x->dtype), sy = fc_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return x < y ? -1 : x > y; /* keep the caller's order: a stable sort */
}

static fc_status check_entries(const fc_st_entry *e, int64_t n, const char *const *mk,
                               const char *const *mv, int64_t n_meta, const char *path,
                               fc_error *err) {
    for (int64_t i = 0; i < n; i++) {
        const char *name = e[i].name;
        if (!name) return fc_error_set(err, FC_ERR_VALUE, "%s: entry %lld has no name", path,
                                       (long long)i);
        if (!fc_utf8_valid(name, strlen(name), NULL))
            return fc_error_set(err, FC_ERR_VALUE, "%s: tensor name of entry %lld is not "
                                "valid UTF-8", path, (long long)i);
        if (!strcmp(name, "__metadata__"))
            return fc_error_set(err, FC_ERR_VALUE, "%s: '__metadata__' is reserved and cannot "
                                "name a tensor", path);
        if (!fc_dtype_name(e[i].dtype))
            return fc_error_set(err, FC_ERR_TYPE, "%s: tensor '%.200s': invalid dtype %d",
                                path, name, (int)e[i].dtype);
        if (e[i].ndim < 0 || (e[i].ndim > 0 && !e[i].shape))
            return fc_error_set(err, FC_ERR_VALUE, "%s: tensor '%.200s': bad ndim %d", path,
                                name, e[i].ndim);
        for (int d = 0; d < e[i].ndim; d++)
            if (e[i].shape[d] < 0 || (uint64_t)e[i].shape[d] > FC_ST_MAX_INT)
                return fc_error_set(err, FC_ERR_VALUE, "%s: tensor '%.200s': dimension %d is "
                                    "%lld, outside [0, 2^53]", path, name, d,
                                    (long long)e[i].shape[d]);
    }
    for (int64_t i = 0; i < n_meta; i++) {
        if (!mk[i] || !mv[i] || !fc_utf8_valid(mk[i], strlen(mk[i]), NULL) ||
            !fc_utf8_valid(mv[i], strlen(mv[i]), NULL))
            return fc_error_set(err, FC_ERR_VALUE, "%s: metadata item %lld is not a pair of "
                                "UTF-8 strings", path, (long long)i);
        for (int64_t j = 0; j < i; j++)
            if (!strcmp(mk[i], mk[j]))
                return fc_error_set(err, FC_ERR_VALUE, "%s: metadata key '%.200s' given twice",
                                    path, mk[i]);
    }
    return FC_OK;
}

static fc_status tensor_bytes(const fc_st_entry *e, const char *path, uint64_t *out,
                              fc_error *err) {
    uint64_t numel = 1;
    for (int d = 0; d < e->ndim; d++) {
        uint64_t x = (uint64_t)e->shape[d];
        if (x && numel > FC_ST_MAX_INT / x)
            return fc_error_set(err, FC_ERR_VALUE, "%s: tensor '%.200s': its size overflows",
                                path, e->name);
        numel *= x;
    }
    uint64_t es = fc_dtype_size(e->dtype);
    if (numel > FC_ST_MAX_INT / es)
        return fc_error_set(err, FC_ERR_VALUE, "%s: tensor '%.200s': its size overflows", path,
                            e->name);
    *out = numel * es;
    return FC_OK;
}

/* the header of shard s: the tensors in layout order, then padding to a multiple of 8 */
static fc_status shard_header(const fc_st_writer_t *w, w_tensor *const *order, int s,
                              const char *const *mk, const char *const *mv, int64_t n_meta,
                              fc_json_buf *b) {
    fc_json_buf_str(b, "{");
    int first = 1;
    if (n_meta > 0) {
        fc_json_buf_str(b, "\"__metadata__\":{");
        for (int64_t i = 0; i < n_meta; i++) {
            if (i) fc_json_buf_str(b, ",");
            fc_json_buf_string(b, mk[i]);
            fc_json_buf_str(b, ":");
            fc_json_buf_string(b, mv[i]);
        }
        fc_json_buf_str(b, "}");
        first = 0;
    }
    for (int64_t k = 0; k < w->n; k++) {
        const w_tensor *t = order[k];
        if (t->shard != s) continue;
        if (!first) fc_json_buf_str(b, ",");
        first = 0;
        fc_json_buf_string(b, t->name);
        fc_json_buf_str(b, ":{\"dtype\":\"");
        fc_json_buf_str(b, fc_dtype_name(t->dtype));
        fc_json_buf_str(b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) fc_json_buf_str(b, ",");
            fc_json_buf_u64(b, (uint64_t)t->shape[d]);
        }
        fc_json_buf_str(b, "],\"data_offsets\":[");
        fc_json_buf_u64(b, t->begin);
        fc_json_buf_str(b, ",");
        fc_json_buf_u64(b, t->end);
        fc_json_buf_str(b, "]}");
    }
    fc_json_buf_str(b, "}");
    while (b->len % 8) fc_json_buf_str(b, " ");
    return b->oom ? FC_ERR_NOMEM : FC_OK;
}

/* ------------------------------------------------------------------------------------ */
/* files */

/* "dir/name" -> dir ("." when none) and the base name */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* create "<dir>/.<base>.tmp-<pid>-<n>" exclusively; the name goes to *tmp */
static fc_status create_temp(const char *final_path, char **tmp, int *fd, fc_error *err) {
    static unsigned counter;
    char *dir = dir_of(final_path);
    const char *base = strrchr(final_path, '/');
    base = base ? base + 1 : final_path;
    if (!dir) return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned k = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
        char name[64];
        snprintf(name, sizeof name, ".tmp-%ld-%u-%ld", (long)getpid(), k,
                 (long)(time(NULL) & 0xffff));
        size_t len = strlen(dir) + strlen(base) + strlen(name) + 4;
        char *p = malloc(len);
        if (!p) { free(dir); return fc_error_set(err, FC_ERR_NOMEM, "out of memory"); }
        snprintf(p, len, "%s/.%s%s", dir, base, name);
        int f = open(p, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (f >= 0) {
            free(dir);
            *tmp = p;
            *fd = f;
            return FC_OK;
        }
        int e = errno;
        if (e != EEXIST) {
            fc_status st = fc_error_set_io(err, e, p, "cannot create the temporary file %s for "
                                           "%s", p, final_path);
            free(p);
            free(dir);
            return st;
        }
        free(p);
    }
    free(dir);
    return fc_error_set_io(err, EEXIST, final_path, "cannot find a free temporary name for %s",
                           final_path);
}

static fc_status pwrite_all(int fd, const void *data, uint64_t n, uint64_t off,
                            const char *path, fc_error *err) {
    const char *p = data;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t r = pwrite(fd, p, chunk, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return fc_error_set_io(err, r < 0 ? errno : EIO, path, "cannot write %s",
                                           path);
        p += r;
        n -= (uint64_t)r;
        off += (uint64_t)r;
    }
    return FC_OK;
}

static int exists(const char *path) {
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* ------------------------------------------------------------------------------------ */

void fc_st_writer_free(fc_st_writer_t *w) {
    if (!w) return;
    for (int i = 0; i < w->n_shards; i++) {
        w_shard *s = &w->shards[i];
        if (s->fd >= 0) close(s->fd);
        if (!w->finished && s->tmp_path) unlink(s->tmp_path);
        free(s->tmp_path);
        free(s->final_path);
    }
    if (!w->finished && w->index_tmp) unlink(w->index_tmp);
    if (!w->finished && w->made_dir) rmdir(w->made_dir); /* only if still empty */
    free(w->made_dir);
    for (int64_t i = 0; i < w->n; i++) {
        free(w->t[i].shape);
        free(w->t[i].ranges);
        free(w->names ? w->names[i] : NULL);
    }
    free(w->index_final);
    free(w->index_tmp);
    free(w->stale);
    free(w->shards);
    free(w->t);
    free(w->names);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* Assign shards and offsets in layout order (greedy, a new shard when the next tensor would
 * pass max_shard_size; a tensor larger than that gets a shard of its own). */
static int assign_shards(fc_st_writer_t *w, w_tensor **order, uint64_t max_shard_size) {
    int shard = 0;
    uint64_t used = 0;
    for (int64_t k = 0; k < w->n; k++) {
        w_tensor *t = order[k];
        if (max_shard_size && used > 0 &&
            (used >= max_shard_size || t->nbytes > max_shard_size - used)) {
            shard++;
            used = 0;
        }
        t->shard = shard;
        t->begin = used;
        t->end = used + t->nbytes;
        used += t->nbytes;
    }
    return shard + 1;
}

static fc_status name_outputs(fc_st_writer_t *w, const char *path, uint64_t max_shard_size,
                              int overwrite, fc_error *err) {
    char *other = NULL; /* the other kind of folder output, which a reader could pick */
    fc_status st = FC_OK;
    if (!max_shard_size) {
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
            return fc_error_set_io(err, EISDIR, path, "%s is a directory; give a file path, "
                                   "or a max_shard_size to write a folder", path);
        if (!(w->shards[0].final_path = strdup(path))) goto nomem;
    } else {
        if (mkdir(path, 0777) == 0) {
            if (!(w->made_dir = strdup(path))) goto nomem;
        } else if (errno != EEXIST)
            return fc_error_set_io(err, errno, path, "cannot create the folder %s", path);
        struct stat sb;
        if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
            return fc_error_set_io(err, ENOTDIR, path, "%s exists and is not a folder", path);
        if (w->n_shards == 1) {
            if (!(w->shards[0].final_path = st_join_path(path, ST_SINGLE_NAME))) goto nomem;
            if (!(other = st_join_path(path, ST_INDEX_NAME))) goto nomem;
        } else {
            for (int i = 0; i < w->n_shards; i++) {
                char name[64];
                snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i + 1,
                         w->n_shards);
                if (!(w->shards[i].final_path = st_join_path(path, name))) goto nomem;
            }
            if (!(w->index_final = st_join_path(path, ST_INDEX_NAME))) goto nomem;
            if (!(other = st_join_path(path, ST_SINGLE_NAME))) goto nomem;
        }
    }
    /* refuse to replace anything unless asked */
    for (int i = 0; i < w->n_shards + 2 && st == FC_OK; i++) {
        const char *p = i < w->n_shards ? w->shards[i].final_path
                        : i == w->n_shards ? w->index_final : other;
        if (p && exists(p) && !overwrite)
            st = fc_error_set_rule(err, FC_ERR_EXISTS, p, NULL, "%s already exists (pass "
                                   "overwrite to replace it)", p);
    }
    if (st == FC_OK && other && exists(other)) {
        w->stale = other;
        other = NULL;
    }
    free(other);
    return st;
nomem:
    free(other);
    return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
}

static fc_status build_index(const fc_st_writer_t *w, fc_json_buf *b);

fc_status fc_st_writer_open(const char *path, const fc_st_entry *entries, int64_t n,
                            const char *const *meta_keys, const char *const *meta_values,
                            int64_t n_meta, uint64_t max_shard_size, int overwrite,
                            fc_st_writer_t **out, fc_error *err) {
    fc_error local;
    if (!err) err = &local;
    fc_error_clear(err);
    *out = NULL;
    if (!path || !*path || n < 0 || (n > 0 && !entries) || n_meta < 0 ||
        (n_meta > 0 && (!meta_keys || !meta_values)))
        return fc_error_set(err, FC_ERR_VALUE, "fc_st_writer_open: bad arguments");
    fc_status st = check_entries(entries, n, meta_keys, meta_values, n_meta, path, err);
    if (st != FC_OK) return st;
    fc_st_writer_t *w = calloc(1, sizeof *w);
    if (!w) return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&w->mu, NULL);
    w_tensor **order = NULL;
    fc_json_buf b = {0};
    w->t = calloc((size_t)n + 1, sizeof *w->t);
    w->names = calloc((size_t)n + 1, sizeof *w->names);
    order = malloc(((size_t)n + 1) * sizeof *order);
    if (!w->t || !w->names || !order) goto nomem;
    w->n = n;
    for (int64_t i = 0; i < n; i++) {
        w_tensor *t = &w->t[i];
        t->dtype = entries[i].dtype;
        t->ndim = entries[i].ndim;
        if ((st = tensor_bytes(&entries[i], path, &t->nbytes, err)) != FC_OK) goto fail;
        if (!(w->names[i] = strdup(entries[i].name))) goto nomem;
        t->name = w->names[i];
        t->shape = malloc(((size_t)t->ndim + 1) * sizeof(int64_t));
        if (!t->shape) goto nomem;
        if (t->ndim) memcpy(t->shape, entries[i].shape, (size_t)t->ndim * sizeof(int64_t));
        order[i] = t;
    }
    /* duplicate names: sort a copy by name */
    {
        w_tensor **byname = malloc(((size_t)n + 1) * sizeof *byname);
        if (!byname) goto nomem;
        memcpy(byname, order, (size_t)n * sizeof *byname);
        qsort(byname, (size_t)n, sizeof *byname, cmp_name);
        const char *dup = NULL;
        for (int64_t i = 1; i < n && !dup; i++)
            if (!strcmp(byname[i]->name, byname[i - 1]->name)) dup = byname[i]->name;
        if (dup) {
            st = fc_error_set(err, FC_ERR_VALUE, "%s: tensor name '%.200s' given twice", path,
                              dup);
            free(byname);
            goto fail;
        }
        free(byname);
    }
    qsort(order, (size_t)n, sizeof *order, by_size_desc);
    w->n_shards = assign_shards(w, order, max_shard_size);
    w->shards = calloc((size_t)w->n_shards, sizeof *w->shards);
    if (!w->shards) goto nomem;
    for (int i = 0; i < w->n_shards; i++) w->shards[i].fd = -1;
    if ((st = name_outputs(w, path, max_shard_size, overwrite, err)) != FC_OK) goto fail;
    for (int s = 0; s < w->n_shards; s++) {
        w_shard *sh = &w->shards[s];
        b.len = 0;
        if ((st = shard_header(w, order, s, meta_keys, meta_values, n_meta, &b)) != FC_OK)
            goto nomem;
        if (b.len > FC_ST_MAX_HEADER) {
            st = fc_error_set(err, FC_ERR_VALUE, "%s: the header would take %zu bytes, more "
                              "than the %llu safetensors allows", sh->final_path, b.len,
                              (unsigned long long)FC_ST_MAX_HEADER);
            goto fail;
        }
        sh->data_start = 8 + b.len;
        uint64_t data = 0;
        for (int64_t i = 0; i < n; i++)
            if (w->t[i].shard == s) data += w->t[i].nbytes;
        sh->size = sh->data_start + data;
        if ((st = create_temp(sh->final_path, &sh->tmp_path, &sh->fd, err)) != FC_OK) goto fail;
        uint8_t len8[8];
        for (int k = 0; k < 8; k++) len8[k] = (uint8_t)((uint64_t)b.len >> (8 * k));
        if (ftruncate(sh->fd, (off_t)sh->size) != 0) {
            st = fc_error_set_io(err, errno, sh->tmp_path, "cannot size %s to %llu bytes",
                                 sh->tmp_path, (unsigned long long)sh->size);
            goto fail;
        }
        if ((st = pwrite_all(sh->fd, len8, 8, 0, sh->tmp_path, err)) != FC_OK ||
            (st = pwrite_all(sh->fd, b.s, b.len, 8, sh->tmp_path, err)) != FC_OK)
            goto fail;
    }
    if (w->index_final) {
        b.len = 0;
        if ((st = build_index(w, &b)) != FC_OK) goto nomem;
        int fd;
        if ((st = create_temp(w->index_final, &w->index_tmp, &fd, err)) != FC_OK) goto fail;
        st = pwrite_all(fd, b.s, b.len, 0, w->index_tmp, err);
        if (close(fd) != 0 && st == FC_OK)
            st = fc_error_set_io(err, errno, w->index_tmp, "cannot write %s", w->index_tmp);
        if (st != FC_OK) goto fail;
    }
    free(order);
    free(b.s);
    *out = w;
    return FC_OK;
nomem:
    st = fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
fail:
    free(order);
    free(b.s);
    fc_st_writer_free(w);
    return st;
}

/* {"metadata": {"total_size": bytes}, "weight_map": {name: shard}}, names sorted, as
 * huggingface_hub writes it (2-space indent) */
static fc_status build_index(const fc_st_writer_t *w, fc_json_buf *b) {
    w_tensor **byname = malloc(((size_t)w->n + 1) * sizeof *byname);
    if (!byname) return FC_ERR_NOMEM;
    uint64_t total = 0;
    for (int64_t i = 0; i < w->n; i++) {
        byname[i] = &w->t[i];
        total += w->t[i].nbytes;
    }
    qsort(byname, (size_t)w->n, sizeof *byname, cmp_name);
    fc_json_buf_str(b, "{\n  \"metadata\": {\n    \"total_size\": ");
    fc_json_buf_u64(b, total);
    fc_json_buf_str(b, "\n  },\n  \"weight_map\": {");
    for (int64_t i = 0; i < w->n; i++) {
        const char *f = strrchr(w->shards[byname[i]->shard].final_path, '/');
        fc_json_buf_str(b, i ? ",\n    " : "\n    ");
        fc_json_buf_string(b, byname[i]->name);
        fc_json_buf_str(b, ": ");
        fc_json_buf_string(b, f + 1);
    }
    fc_json_buf_str(b, "\n  }\n}\n");
    free(byname);
    return b->oom ? FC_ERR_NOMEM : FC_OK;
}

/* ------------------------------------------------------------------------------------ */

/* record [a, b) as written for t; 0 if it overlaps what was written before */
static int add_range(w_tensor *t, uint64_t a, uint64_t b) {
    int k = 0;
    while (k < t->n_ranges && t->ranges[2 * k + 1] <= a) k++;
    if (k < t->n_ranges && t->ranges[2 * k] < b) return 0; /* overlap */
    int merge_prev = k > 0 && t->ranges[2 * k - 1] == a;
    int merge_next = k < t->n_ranges && t->ranges[2 * k] == b;
    if (merge_prev && merge_next) {
        t->ranges[2 * k - 1] = t->ranges[2 * k + 1];
        memmove(&t->ranges[2 * k], &t->ranges[2 * k + 2],
                (size_t)(t->n_ranges - k - 1) * 2 * sizeof(uint64_t));
        t->n_ranges--;
    } else if (merge_prev) {
        t->ranges[2 * k - 1] = b;
    } else if (merge_next) {
        t->ranges[2 * k] = a;
    } else {
        if (t->n_ranges == t->cap_ranges) {
            int cap = t->cap_ranges ? 2 * t->cap_ranges : 4;
            uint64_t *r = realloc(t->ranges, (size_t)cap * 2 * sizeof(uint64_t));
            if (!r) return -1;
            t->ranges = r;
            t->cap_ranges = cap;
        }
        memmove(&t->ranges[2 * k + 2], &t->ranges[2 * k],
                (size_t)(t->n_ranges - k) * 2 * sizeof(uint64_t));
        t->ranges[2 * k] = a;
        t->ranges[2 * k + 1] = b;
        t->n_ranges++;
    }
    return 1;
}

fc_status fc_st_writer_write(fc_st_writer_t *w, int64_t index, uint64_t offset,
                             const void *data, uint64_t nbytes, fc_error *err) {
    if (!w || index < 0 || index >= w->n || (nbytes && !data))
        return fc_error_set(err, FC_ERR_VALUE, "fc_st_writer_write: bad arguments (tensor %lld)",
                            (long long)index);
    w_tensor *t = &w->t[index];
    w_shard *sh = &w->shards[t->shard];
    if (offset > t->nbytes || nbytes > t->nbytes - offset)
        return fc_error_set(err, FC_ERR_VALUE, "%s: tensor '%.200s': bytes [%llu, %llu) are "
                            "outside its %llu bytes", sh->final_path, t->name,
                            (unsigned long long)offset, (unsigned long long)(offset + nbytes),
                            (unsigned long long)t->nbytes);
    if (nbytes == 0) return FC_OK;
    pthread_mutex_lock(&w->mu);
    int ok = !w->failed && !w->finished ? add_range(t, offset, offset + nbytes) : -2;
    if (ok == -1) w->failed = 1;
    pthread_mutex_unlock(&w->mu);
    if (ok == -2)
        return fc_error_set(err, FC_ERR_VALUE, "%s: the writer is %s", sh->final_path,
                            w->finished ? "finished" : "in a failed state");
    if (ok == -1) return fc_error_set(err, FC_ERR_NOMEM, "out of memory");
    if (ok == 0)
        return fc_error_set(err, FC_ERR_VALUE, "%s: tensor '%.200s': bytes [%llu, %llu) overlap "
                            "bytes already written", sh->final_path, t->name,
                            (unsigned long long)offset, (unsigned long long)(offset + nbytes));
    fc_status st = pwrite_all(sh->fd, data, nbytes, sh->data_start + t->begin + offset,
                              sh->tmp_path, err);
    if (st != FC_OK) {
        pthread_mutex_lock(&w->mu);
        w->failed = 1;
        pthread_mutex_unlock(&w->mu);
    }
    return st;
}

fc_status fc_st_writer_finish(fc_st_writer_t *w, fc_error *err) {
    if (!w) return fc_error_set(err, FC_ERR_VALUE, "fc_st_writer_finish: NULL writer");
    pthread_mutex_lock(&w->mu);
    int failed = w->failed, finished = w->finished;
    pthread_mutex_unlock(&w->mu);
    const char *out = w->n_shards ? w->shards[0].final_path : "";
    if (failed || finished)
        return fc_error_set(err, FC_ERR_VALUE, "%s: the writer is %s", out,
                            finished ? "already finished" : "in a failed state");
    for (int64_t i = 0; i < w->n; i++) {
        const w_tensor *t = &w->t[i];
        if (t->nbytes == 0) continue;
        if (t->n_ranges != 1 || t->ranges[0] != 0 || t->ranges[1] != t->nbytes) {
            uint64_t gap = t->n_ranges == 0 || t->ranges[0] > 0 ? 0 : t->ranges[1];
            return fc_error_set(err, FC_ERR_VALUE, "%s: tensor '%.200s' is incomplete: byte "
                                "%llu of its %llu was never written",
                                w->shards[t->shard].final_path, t->name,
                                (unsigned long long)gap, (unsigned long long)t->nbytes);
        }
    }
    for (int s = 0; s < w->n_shards; s++) {
        w_shard *sh = &w->shards[s];
        int r = close(sh->fd);
        sh->fd = -1;
        if (r != 0) {
            w->failed = 1;
            return fc_error_set_io(err, errno, sh->tmp_path, "cannot write %s", sh->tmp_path);
        }
    }
    for (int s = 0; s < w->n_shards; s++) {
        w_shard *sh = &w->shards[s];
        if (rename(sh->tmp_path, sh->final_path) != 0) {
            w->failed = 1;
            return fc_error_set_io(err, errno, sh->final_path, "cannot rename %s to %s",
                                   sh->tmp_path, sh->final_path);
        }
        free(sh->tmp_path);
        sh->tmp_path = NULL; /* renamed: free() must not remove it */
    }
    if (w->index_tmp) {
        if (rename(w->index_tmp, w->index_final) != 0) {
            w->failed = 1;
            return fc_error_set_io(err, errno, w->index_final, "cannot rename %s to %s",
                                   w->index_tmp, w->index_final);
        }
        free(w->index_tmp);
        w->index_tmp = NULL;
    }
    pthread_mutex_lock(&w->mu);
    w->finished = 1;
    pthread_mutex_unlock(&w->mu);
    if (w->stale && unlink(w->stale) != 0 && errno != ENOENT)
        return fc_error_set_io(err, errno, w->stale, "cannot remove the stale output %s",
                               w->stale);
    return FC_OK;
}

int fc_st_writer_shard_count(const fc_st_writer_t *w) { return w ? w->n_shards : 0; }

void fc_st_writer_locate(const fc_st_writer_t *w, int64_t index, int *shard, uint64_t *begin,
                         uint64_t *end) {
    int ok = w && index >= 0 && index < w->n;
    if (shard) *shard = ok ? w->t[index].shard : -1;
    if (begin) *begin = ok ? w->t[index].begin : 0;
    if (end) *end = ok ? w->t[index].end : 0;
}
