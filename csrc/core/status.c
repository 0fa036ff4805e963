/* status.c - status names and the fc_error helpers. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fusechat.h"

const char *fc_status_name(fc_status s) {
    switch (s) {
    case FC_OK:              return "ok";
    case FC_ERR_NOMEM:       return "out of memory";
    case FC_ERR_IO:          return "I/O error";
    case FC_ERR_VALUE:       return "invalid value";
    case FC_ERR_TYPE:        return "invalid type";
    case FC_ERR_SAFETENSORS: return "invalid safetensors";
    case FC_ERR_TOKENIZER:   return "invalid tokenizer";
    case FC_ERR_EXISTS:      return "output exists";
    case FC_ERR_CUDA:        return "CUDA error";
    case FC_ERR_UNSUPPORTED: return "unsupported";
    case FC_ERR_INTERNAL:    return "internal error";
    case FC_ERR_FORMAT:      return "invalid file format";
    }
    return "unknown status";
}

void fc_error_clear(fc_error *err) {
    if (!err) return;
    err->code = FC_OK;
    err->sys_errno = 0;
    err->rule[0] = err->path[0] = err->msg[0] = '\0';
}

static void copy_str(char *dst, size_t cap, const char *src) {
    if (!src) { dst[0] = '\0'; return; }
    size_t n = strlen(src);
    if (n >= cap) n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static fc_status set_v(fc_error *err, fc_status code, int sys_errno, const char *path,
                       const char *rule, const char *fmt, va_list ap) {
    if (!err) return code;
    err->code = code;
    err->sys_errno = sys_errno;
    copy_str(err->path, sizeof err->path, path);
    copy_str(err->rule, sizeof err->rule, rule);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    return code;
}

fc_status fc_error_set(fc_error *err, fc_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fc_status s = set_v(err, code, 0, NULL, NULL, fmt, ap);
    va_end(ap);
    return s;
}

fc_status fc_error_set_rule(fc_error *err, fc_status code, const char *path, const char *rule,
                            const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fc_status s = set_v(err, code, 0, path, rule, fmt, ap);
    va_end(ap);
    return s;
}

fc_status fc_error_set_io(fc_error *err, int sys_errno, const char *path, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fc_status s = set_v(err, FC_ERR_IO, sys_errno, path, NULL, fmt, ap);
    va_end(ap);
    if (err) {
        /* append the system's words for errno: "...: No such file or directory" */
        size_t len = strlen(err->msg);
        if (len + 3 < sizeof err->msg)
            snprintf(err->msg + len, sizeof err->msg - len, ": %s", strerror(sys_errno));
    }
    return s;
}
