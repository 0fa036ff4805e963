/* py_loss_args.h - argument intake of the fusion-loss bindings, shared by the CPU binding
 * (py_loss.c, fusechat._C) and the CUDA one (cuda_loss.c, fusechat._C_cuda): the same
 * keywords, dtypes and shape rules on both, so the Python layer calls either the same way. */
#ifndef FC_PY_LOSS_ARGS_H
#define FC_PY_LOSS_ARGS_H

#include "dlpack_abi.h"
#include "py_dlpack.h"

typedef struct fc_py_loss_call {
    fc_py_tensor logits, labels, tids, tvals, fids, fvals, grad, row_loss, total;
    fc_sparse_target target, fallback;
    int has_target, has_fallback, has_total, has_row_loss;
    fc_fusion_loss_opts opts;
    intptr_t stream;
    int64_t n, v;
} fc_py_loss_call;

static void fc_py_loss_release(fc_py_loss_call *c) {
    fc_py_tensor *all[] = {&c->logits, &c->labels, &c->tids, &c->tvals,
                           &c->fids, &c->fvals, &c->grad, &c->row_loss, &c->total};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) fc_py_tensor_release(all[i]);
}

static int fc_py_check(int ok, const char *fname, const char *what) {
    if (!ok) PyErr_Format(PyExc_ValueError, "%s: %s", fname, what);
    return ok ? 0 : -1;
}

/* obj (may be None) -> t on `device_type`, with `dtype` (-1 = any) and ndim. */
static int fc_py_loss_take(PyObject *obj, const char *name, int writable, int dtype, int ndim,
                           int device_type, intptr_t stream, fc_py_tensor *t, int *present) {
    if (present) *present = obj && obj != Py_None;
    if (!obj || obj == Py_None) return 0;
    if (fc_py_tensor_get(obj, name, writable, stream, t) < 0) return -1;
    int host_ok = device_type == FC_DL_CPU && t->device_type == FC_DL_CUDA_HOST;
    if (t->device_type != device_type && !host_ok) {
        PyErr_Format(PyExc_ValueError, "%s: tensor on device type %d, expected %s", name,
                     t->device_type, device_type == FC_DL_CPU ? "the CPU" : "a CUDA device");
        return -1;
    }
    if (dtype >= 0 && (int)t->dtype != dtype) {
        PyErr_Format(PyExc_TypeError, "%s: dtype %s, expected %s", name, fc_dtype_name(t->dtype),
                     fc_dtype_name((fc_dtype)dtype));
        return -1;
    }
    if (t->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: %d dimensions, expected %d", name, t->ndim, ndim);
        return -1;
    }
    return 0;
}

/* Parse fusion_loss(logits, labels, target_ids, target_values, fallback_ids, fallback_values,
 * grad, row_loss, lm_weight, temperature, kind, reduction, normalizer, grad_scale,
 * ignore_index, validate, threads, stream); validate is 0, 1 (FC_VALIDATE) or 2 (strict).
 * Tensors: logits [N, V] F32/F16/BF16; labels [N]
 * int64; *_ids [N, K] int32 and *_values [N, K] float32 (or None); grad [N, V] like logits
 * or None; row_loss [N] or None, of dtype `row_loss_dtype` (F64 on the CPU, F32 on CUDA);
 * total [1] float32 (CUDA only) or None. On error: -1 with an exception; release c anyway. */
static int fc_py_loss_parse(PyObject *args, PyObject *kw, const char *fname, int device_type,
                            int row_loss_dtype, fc_py_loss_call *c) {
    static char *kwlist[] = {"logits", "labels", "target_ids", "target_values", "fallback_ids",
                             "fallback_values", "grad", "row_loss", "lm_weight", "temperature",
                             "kind", "reduction", "normalizer", "grad_scale", "ignore_index",
                             "validate", "threads", "stream", "total", NULL};
    PyObject *lo, *la, *ti, *tv, *fi, *fv, *gr, *rl, *tot = Py_None;
    memset(c, 0, sizeof *c);
    fc_fusion_loss_opts *o = &c->opts;
    fc_fusion_loss_opts_init(o);
    int kind = 0, red = 0, validate = 1;
    long long ignore = -100;
    Py_ssize_t stream = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOO|ddiiddLiinO", kwlist, &lo, &la, &ti,
                                     &tv, &fi, &fv, &gr, &rl, &o->lm_weight, &o->temperature,
                                     &kind, &red, &o->normalizer, &o->grad_scale, &ignore,
                                     &validate, &o->nthreads, &stream, &tot))
        return -1;
    o->kind = (fc_fusion_kind)kind;
    o->reduction = (fc_reduction)red;
    o->ignore_index = ignore;
    if (validate < 0 || validate > FC_VALIDATE_STRICT) {
        PyErr_Format(PyExc_ValueError, "%s: validate must be 0, 1 or 2 (strict)", fname);
        return -1;
    }
    o->validate = validate;
    c->stream = (intptr_t)stream;
    int has_grad, has_rl, has_tv, has_fv;
    if (fc_py_loss_take(lo, "logits", 0, -1, 2, device_type, c->stream, &c->logits, NULL) < 0 ||
        fc_py_loss_take(la, "labels", 0, FC_I64, 1, device_type, c->stream, &c->labels, NULL) < 0 ||
        fc_py_loss_take(ti, "target_ids", 0, FC_I32, 2, device_type, c->stream, &c->tids,
                        &c->has_target) < 0 ||
        fc_py_loss_take(tv, "target_values", 0, FC_F32, 2, device_type, c->stream, &c->tvals,
                        &has_tv) < 0 ||
        fc_py_loss_take(fi, "fallback_ids", 0, FC_I32, 2, device_type, c->stream, &c->fids,
                        &c->has_fallback) < 0 ||
        fc_py_loss_take(fv, "fallback_values", 0, FC_F32, 2, device_type, c->stream, &c->fvals,
                        &has_fv) < 0 ||
        fc_py_loss_take(gr, "grad", 1, c->logits.dtype, 2, device_type, c->stream, &c->grad,
                        &has_grad) < 0 ||
        fc_py_loss_take(rl, "row_loss", 1, row_loss_dtype, 1, device_type, c->stream, &c->row_loss,
                        &has_rl) < 0 ||
        fc_py_loss_take(tot, "total", 1, FC_F32, 1, device_type, c->stream, &c->total,
                        &c->has_total) < 0)
        return -1;
    c->n = c->logits.shape[0];
    c->v = c->logits.shape[1];
    const fc_py_tensor *all[] = {&c->labels, &c->tids, &c->tvals, &c->fids, &c->fvals,
                                 &c->grad, &c->row_loss, &c->total};
    for (size_t i = 0; device_type == FC_DL_CUDA && i < sizeof all / sizeof all[0]; i++)
        if (all[i]->data && all[i]->device_id != c->logits.device_id)
            return fc_py_check(0, fname, "every tensor must be on the logits' CUDA device");
    c->has_row_loss = has_rl;
    if (fc_py_check(c->labels.shape[0] == c->n, fname, "labels must have shape [N] for logits "
                    "[N, V]") < 0 ||
        fc_py_check(c->has_target == has_tv, fname,
                    "target_ids and target_values go together") < 0 ||
        fc_py_check(c->has_fallback == has_fv, fname, "fallback_ids and fallback_values go "
                    "together") < 0 ||
        fc_py_check(!has_grad || (c->grad.shape[0] == c->n && c->grad.shape[1] == c->v), fname,
                    "grad must have the shape of logits") < 0 ||
        fc_py_check(!has_rl || c->row_loss.shape[0] == c->n, fname, "row_loss must have shape "
                    "[N]") < 0)
        return -1;
    if (c->has_target) {
        if (fc_py_check(c->tids.shape[0] == c->n && c->tvals.shape[0] == c->n &&
                        c->tids.shape[1] == c->tvals.shape[1], fname,
                        "target_ids and target_values must both have shape [N, K]") < 0)
            return -1;
        c->target = (fc_sparse_target){c->tids.data, c->tvals.data, c->tids.shape[1]};
    }
    if (c->has_fallback) {
        if (fc_py_check(c->fids.shape[0] == c->n && c->fvals.shape[0] == c->n &&
                        c->fids.shape[1] == c->fvals.shape[1], fname,
                        "fallback_ids and fallback_values must both have shape [N, K2]") < 0)
            return -1;
        c->fallback = (fc_sparse_target){c->fids.data, c->fvals.data, c->fids.shape[1]};
    }
    return 0;
}

typedef struct fc_py_topk_call {
    /* logits [N, V] any float; labels [N] int64; seq_offsets [S+1] int64; top_ids [N, k]
     * int32; top_logits [N, k] float32; token_ce [N], seq_ce [S] float32; seq_has [S] uint8 */
    fc_py_tensor logits, labels, seq_offsets, top_ids, top_logits, token_ce, seq_ce, seq_has;
    int has_labels, has_seq;
    int64_t n, v, k, n_seq, ignore_index;
    Py_ssize_t last; /* the CPU's `threads` or CUDA's `stream` */
} fc_py_topk_call;

static void fc_py_topk_release(fc_py_topk_call *c) {
    fc_py_tensor *all[] = {&c->logits, &c->labels, &c->seq_offsets, &c->top_ids,
                           &c->top_logits, &c->token_ce, &c->seq_ce, &c->seq_has};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) fc_py_tensor_release(all[i]);
}

/* Parse topk_ce(logits, labels, k, ignore_index, seq_offsets, top_ids, top_logits, token_ce,
 * seq_ce, seq_has, <last>) where <last> is "threads" on the CPU and "stream" on CUDA; labels,
 * seq_offsets and their outputs may be None. On error: -1 with an exception; release c
 * anyway. */
static int fc_py_topk_parse(PyObject *args, PyObject *kw, int device_type, fc_py_topk_call *c) {
    static char *cpu_kw[] = {"logits", "labels", "k", "ignore_index", "seq_offsets", "top_ids",
                             "top_logits", "token_ce", "seq_ce", "seq_has", "threads", NULL};
    static char *cuda_kw[] = {"logits", "labels", "k", "ignore_index", "seq_offsets",
                              "top_ids", "top_logits", "token_ce", "seq_ce", "seq_has",
                              "stream", NULL};
    const char *f = "topk_and_ce";
    PyObject *lo, *la, *so, *ti, *tl, *tc, *sc, *sh;
    long long k, ignore;
    memset(c, 0, sizeof *c);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLLOOOOOO|n:topk_ce",
                                     device_type == FC_DL_CUDA ? cuda_kw : cpu_kw, &lo, &la, &k,
                                     &ignore, &so, &ti, &tl, &tc, &sc, &sh, &c->last))
        return -1;
    c->k = k;
    c->ignore_index = ignore;
    intptr_t stream = device_type == FC_DL_CUDA ? (intptr_t)c->last : 0;
    int has_ids, has_vals, has_ce, has_sce, has_sh;
    if (fc_py_loss_take(lo, "logits", 0, -1, 2, device_type, stream, &c->logits, NULL) < 0 ||
        fc_py_loss_take(la, "labels", 0, FC_I64, 1, device_type, stream, &c->labels,
                        &c->has_labels) < 0 ||
        fc_py_loss_take(so, "seq_offsets", 0, FC_I64, 1, device_type, stream, &c->seq_offsets,
                        &c->has_seq) < 0 ||
        fc_py_loss_take(ti, "top_ids", 1, FC_I32, 2, device_type, stream, &c->top_ids,
                        &has_ids) < 0 ||
        fc_py_loss_take(tl, "top_logits", 1, FC_F32, 2, device_type, stream, &c->top_logits,
                        &has_vals) < 0 ||
        fc_py_loss_take(tc, "token_ce", 1, FC_F32, 1, device_type, stream, &c->token_ce,
                        &has_ce) < 0 ||
        fc_py_loss_take(sc, "seq_ce", 1, FC_F32, 1, device_type, stream, &c->seq_ce,
                        &has_sce) < 0 ||
        fc_py_loss_take(sh, "seq_has", 1, FC_U8, 1, device_type, stream, &c->seq_has,
                        &has_sh) < 0)
        return -1;
    c->n = c->logits.shape[0];
    c->v = c->logits.shape[1];
    c->n_seq = c->has_seq ? c->seq_offsets.shape[0] - 1 : 0;
    const fc_py_tensor *all[] = {&c->labels, &c->seq_offsets, &c->top_ids, &c->top_logits,
                                 &c->token_ce, &c->seq_ce, &c->seq_has};
    for (size_t i = 0; device_type == FC_DL_CUDA && i < sizeof all / sizeof all[0]; i++)
        if (all[i]->data && all[i]->device_id != c->logits.device_id)
            return fc_py_check(0, f, "every tensor must be on the logits' CUDA device");
    if (fc_py_check(has_ids && has_vals, f, "logits, top_ids and top_logits are required") < 0 ||
        fc_py_check(c->top_ids.shape[0] == c->n && c->top_ids.shape[1] == k &&
                    c->top_logits.shape[0] == c->n && c->top_logits.shape[1] == k, f,
                    "top_ids/top_logits must be [N, k]") < 0 ||
        fc_py_check(!c->has_labels || (c->labels.shape[0] == c->n && has_ce &&
                                       c->token_ce.shape[0] == c->n), f,
                    "labels and token_ce must be [N]") < 0 ||
        fc_py_check(!c->has_seq || (c->n_seq >= 0 && has_sce && has_sh &&
                                    c->seq_ce.shape[0] == c->n_seq &&
                                    c->seq_has.shape[0] == c->n_seq), f,
                    "seq_offsets [S+1] needs seq_ce and seq_has [S]") < 0)
        return -1;
    return 0;
}

#endif
