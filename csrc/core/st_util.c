/* st_util.c - small helpers the safetensors files share: names, paths, small files,
 * string maps out of JSON objects. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "st_internal.h"

uint64_t st_hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

int st_string_map(const cJSON *obj, int skip_other, char ***keys, char ***values, int64_t *n,
                  const char **bad) {
    int64_t cap = cJSON_GetArraySize(obj);
    *n = 0;
    *keys = calloc((size_t)cap + 1, sizeof(char *));
    *values = calloc((size_t)cap + 1, sizeof(char *));
    if (!*keys || !*values) return -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        if (!cJSON_IsString(it)) {
            if (skip_other) continue;
            *bad = it->string;
            return 1;
        }
        char *k = strdup(it->string), *v = strdup(it->valuestring);
        (*keys)[*n] = k;
        (*values)[*n] = v;
        if (k || v) (*n)++; /* so that the caller frees a half-made pair */
        if (!k || !v) return -1;
    }
    return 0;
}

char *st_join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    if (a == 0 || p[a - 1] != '/') p[a++] = '/';
    memcpy(p + a, name, b + 1);
    return p;
}

fc_status st_read_small_file(const char *path, uint64_t max, char **out, size_t *len,
                             fc_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return fc_error_set_io(err, errno, path, "cannot open %s", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return fc_error_set_io(err, e, path, "cannot stat %s", path);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return fc_error_set_io(err, S_ISDIR(sb.st_mode) ? EISDIR : EINVAL, path,
                               "%s is not a regular file", path);
    }
    if ((uint64_t)sb.st_size > max) {
        close(fd);
        return fc_error_set(err, FC_ERR_VALUE, "%s: %lld bytes, larger than the %llu allowed",
                            path, (long long)sb.st_size, (unsigned long long)max);
    }
    size_t n = (size_t)sb.st_size, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return fc_error_set(err, FC_ERR_NOMEM, "%s: out of memory", path);
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO; /* r == 0: the file shrank under us */
            free(buf);
            close(fd);
            return fc_error_set_io(err, e, path, "cannot read %s", path);
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return FC_OK;
}
