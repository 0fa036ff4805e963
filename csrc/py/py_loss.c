/* py_loss.c - bindings of the loss component (see fc_loss.h): the fusion loss, top-k + CE
 * extraction and the fusion rules, on the CPU. Outputs are allocated by the Python layer
 * (fusechat/loss.py, fusechat/fuse.py, fusechat/torch.py) and passed in, so the same entry
 * points serve NumPy arrays and torch tensors (DLPack). */
#include "py_common.h"
#include "py_loss_args.h"

static PyObject *py_fusion_loss(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    fc_py_loss_call c;
    PyObject *ret = NULL;
    if (fc_py_loss_parse(args, kw, "fusion_loss", FC_DL_CPU, FC_F64, &c) < 0 ||
        fc_py_check(!c.has_total, "fusion_loss", "total is for the CUDA kernel") < 0)
        goto done;
    fc_error err;
    fc_error_clear(&err);
    double loss = 0.0;
    int64_t nsup = 0;
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_fusion_loss(c.logits.data, c.logits.dtype, c.n, c.v, c.labels.data,
                        c.has_target ? &c.target : NULL, c.has_fallback ? &c.fallback : NULL,
                        &c.opts, &loss, c.row_loss.data, c.grad.data, &nsup, &err);
    Py_END_ALLOW_THREADS
    if (st != FC_OK) fc_py_raise(&err);
    else ret = Py_BuildValue("(dL)", loss, (long long)nsup);
done:
    fc_py_loss_release(&c);
    return ret;
}

/* topk_ce(logits, labels, k, ignore_index, seq_offsets, top_ids, top_logits, token_ce, seq_ce,
 *         seq_has, threads) -> None; labels/seq_offsets and their outputs may be None */
static PyObject *py_topk_ce(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    fc_py_topk_call c;
    PyObject *ret = NULL;
    if (fc_py_topk_parse(args, kw, FC_DL_CPU, &c) < 0) goto done;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_topk_ce(c.logits.data, c.logits.dtype, c.n, c.v, c.k, c.labels.data, c.ignore_index,
                    c.top_ids.data, c.top_logits.data, c.token_ce.data, c.seq_offsets.data,
                    c.n_seq, c.seq_ce.data, c.seq_has.data, (int)c.last, &err);
    Py_END_ALLOW_THREADS
    if (st != FC_OK) fc_py_raise(&err);
    else ret = Py_NewRef(Py_None);
done:
    fc_py_topk_release(&c);
    return ret;
}

/* ------------------------------------------------------------------------------------ */
/* fusion rules: models are given as lists (indptr, ids, values, ce) of equal length */

#define FUSE_MAX_MODELS 64

typedef struct {
    int64_t m;
    fc_py_tensor indptr[FUSE_MAX_MODELS], ids[FUSE_MAX_MODELS], values[FUSE_MAX_MODELS],
        ce[FUSE_MAX_MODELS];
    const int64_t *ip[FUSE_MAX_MODELS];
    const int32_t *id[FUSE_MAX_MODELS];
    const float *val[FUSE_MAX_MODELS];
    const float *cep[FUSE_MAX_MODELS];
    fc_ragged_dists d;
} fuse_models;

static void fuse_release(fuse_models *f) {
    for (int64_t i = 0; i < FUSE_MAX_MODELS; i++) {
        fc_py_tensor_release(&f->indptr[i]);
        fc_py_tensor_release(&f->ids[i]);
        fc_py_tensor_release(&f->values[i]);
        fc_py_tensor_release(&f->ce[i]);
    }
}

/* ce may be None (gather needs no CE). */
static int fuse_take(PyObject *indptrs, PyObject *ids, PyObject *values, PyObject *ce,
                     const char *fname, fuse_models *f) {
    memset(f, 0, sizeof *f);
    if (!PyList_Check(indptrs) || !PyList_Check(ids) || !PyList_Check(values) ||
        (ce != Py_None && !PyList_Check(ce))) {
        PyErr_Format(PyExc_TypeError, "%s: indptr, ids, values and ce must be lists", fname);
        return -1;
    }
    f->m = PyList_GET_SIZE(indptrs);
    if (f->m < 1 || f->m > FUSE_MAX_MODELS || PyList_GET_SIZE(ids) != f->m ||
        PyList_GET_SIZE(values) != f->m || (ce != Py_None && PyList_GET_SIZE(ce) != f->m)) {
        PyErr_Format(PyExc_ValueError, "%s: need 1 to %d models, the same number in each list",
                     fname, FUSE_MAX_MODELS);
        return -1;
    }
    int64_t n_pos = -1;
    for (int64_t i = 0; i < f->m; i++) {
        if (fc_py_loss_take(PyList_GET_ITEM(indptrs, i), "indptr", 0, FC_I64, 1, FC_DL_CPU, 0,
                            &f->indptr[i], NULL) < 0 ||
            fc_py_loss_take(PyList_GET_ITEM(ids, i), "ids", 0, FC_I32, 1, FC_DL_CPU, 0,
                            &f->ids[i], NULL) < 0 ||
            fc_py_loss_take(PyList_GET_ITEM(values, i), "values", 0, FC_F32, 1, FC_DL_CPU, 0,
                            &f->values[i], NULL) < 0 ||
            (ce != Py_None && fc_py_loss_take(PyList_GET_ITEM(ce, i), "ce", 0, FC_F32, 1,
                                              FC_DL_CPU, 0, &f->ce[i], NULL) < 0))
            return -1;
        int64_t tp = f->indptr[i].shape[0] - 1;
        if (tp < 0 || (n_pos >= 0 && tp != n_pos)) {
            PyErr_Format(PyExc_ValueError, "%s: model %lld: indptr must have T+1 entries, the "
                         "same T for every model", fname, (long long)i);
            return -1;
        }
        n_pos = tp;
        const int64_t *ip = f->indptr[i].data;
        int64_t nnz = ip[tp];
        if (nnz < 0 || f->ids[i].shape[0] < nnz || f->values[i].shape[0] < nnz) {
            PyErr_Format(PyExc_ValueError, "%s: model %lld: ids/values shorter than indptr[-1] "
                         "= %lld", fname, (long long)i, (long long)nnz);
            return -1;
        }
        f->ip[i] = ip;
        f->id[i] = f->ids[i].data;
        f->val[i] = f->values[i].data;
        f->cep[i] = f->ce[i].data;
    }
    f->d = (fc_ragged_dists){f->m, n_pos, f->ip, f->id, f->val};
    return 0;
}

static int fuse_ce_len(const fuse_models *f, int level, int64_t n_seq, const char *fname) {
    int64_t want = level == 0 ? n_seq : f->d.n_pos;
    for (int64_t i = 0; i < f->m; i++)
        if (f->ce[i].shape[0] != want) {
            PyErr_Format(PyExc_ValueError, "%s: model %lld: ce has %lld entries, expected %lld "
                         "(one per %s)", fname, (long long)i, (long long)f->ce[i].shape[0],
                         (long long)want, level == 0 ? "sequence" : "position");
            return -1;
        }
    return 0;
}

/* fuse_min_ce(indptrs, ids, values, ce, seq_offsets, level, fill_empty, choice) -> None */
static PyObject *py_fuse_min_ce(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ip, *id, *va, *ce, *so, *ch;
    int level, fill;
    if (!PyArg_ParseTuple(args, "OOOOOipO:fuse_min_ce", &ip, &id, &va, &ce, &so, &level, &fill,
                          &ch))
        return NULL;
    fuse_models *f = PyMem_Calloc(1, sizeof *f);
    if (!f) return PyErr_NoMemory();
    fc_py_tensor st_so = {0}, st_ch = {0};
    PyObject *ret = NULL;
    int has_so;
    if (fuse_take(ip, id, va, ce, "fuse_min_ce", f) < 0 ||
        fc_py_loss_take(so, "seq_offsets", 0, FC_I64, 1, FC_DL_CPU, 0, &st_so, &has_so) < 0 ||
        fc_py_loss_take(ch, "choice", 1, FC_I32, 1, FC_DL_CPU, 0, &st_ch, NULL) < 0)
        goto done;
    int64_t ns = has_so ? st_so.shape[0] - 1 : 0;
    if (fuse_ce_len(f, level, ns, "fuse_min_ce") < 0 ||
        fc_py_check(st_ch.shape[0] == f->d.n_pos, "fuse_min_ce", "choice must be [T]") < 0)
        goto done;
    fc_error err;
    fc_error_clear(&err);
    fc_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fc_fuse_min_ce(&f->d, has_so ? st_so.data : NULL, ns, f->cep, level, fill, st_ch.data,
                       &err);
    Py_END_ALLOW_THREADS
    if (s != FC_OK) fc_py_raise(&err);
    else ret = Py_NewRef(Py_None);
done:
    fc_py_tensor_release(&st_so);
    fc_py_tensor_release(&st_ch);
    fuse_release(f);
    PyMem_Free(f);
    return ret;
}

/* fuse_gather(indptrs, ids, values, choice, out_indptr, out_ids, out_values) -> None;
 * out_ids/out_values None computes out_indptr only */
static PyObject *py_fuse_gather(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ip, *id, *va, *ch, *oi, *oid, *ov;
    if (!PyArg_ParseTuple(args, "OOOOOOO:fuse_gather", &ip, &id, &va, &ch, &oi, &oid, &ov))
        return NULL;
    fuse_models *f = PyMem_Calloc(1, sizeof *f);
    if (!f) return PyErr_NoMemory();
    fc_py_tensor t_ch = {0}, t_oi = {0}, t_oid = {0}, t_ov = {0};
    PyObject *ret = NULL;
    int has_ids, has_vals;
    if (fuse_take(ip, id, va, Py_None, "fuse_gather", f) < 0 ||
        fc_py_loss_take(ch, "choice", 0, FC_I32, 1, FC_DL_CPU, 0, &t_ch, NULL) < 0 ||
        fc_py_loss_take(oi, "out_indptr", 1, FC_I64, 1, FC_DL_CPU, 0, &t_oi, NULL) < 0 ||
        fc_py_loss_take(oid, "out_ids", 1, FC_I32, 1, FC_DL_CPU, 0, &t_oid, &has_ids) < 0 ||
        fc_py_loss_take(ov, "out_values", 1, FC_F32, 1, FC_DL_CPU, 0, &t_ov, &has_vals) < 0)
        goto done;
    if (fc_py_check(t_ch.shape[0] == f->d.n_pos && t_oi.shape[0] == f->d.n_pos + 1,
                    "fuse_gather", "choice must be [T] and out_indptr [T+1]") < 0 ||
        fc_py_check(has_ids == has_vals, "fuse_gather", "out_ids and out_values go together") < 0)
        goto done;
    fc_error err;
    fc_error_clear(&err);
    fc_status s = FC_OK;
    if (has_ids) { /* sizes: count first, then check the capacity */
        s = fc_fuse_gather(&f->d, t_ch.data, t_oi.data, NULL, NULL, &err);
        int64_t nnz = ((int64_t *)t_oi.data)[f->d.n_pos];
        if (s == FC_OK && (t_oid.shape[0] < nnz || t_ov.shape[0] < nnz)) {
            PyErr_Format(PyExc_ValueError, "fuse_gather: out_ids/out_values hold fewer than "
                         "%lld entries", (long long)nnz);
            goto done;
        }
    }
    if (s == FC_OK)
        s = fc_fuse_gather(&f->d, t_ch.data, t_oi.data, has_ids ? t_oid.data : NULL,
                           has_vals ? t_ov.data : NULL, &err);
    if (s != FC_OK) fc_py_raise(&err);
    else ret = Py_NewRef(Py_None);
done:
    fc_py_tensor_release(&t_ch);
    fc_py_tensor_release(&t_oi);
    fc_py_tensor_release(&t_oid);
    fc_py_tensor_release(&t_ov);
    fuse_release(f);
    PyMem_Free(f);
    return ret;
}

/* fuse_avg_ce(indptrs, ids, values, ce, seq_offsets, level, temperature, out_indptr, out_ids,
 *             out_logp) -> None; out_ids/out_logp must hold sum of the models' nnz */
static PyObject *py_fuse_avg_ce(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ip, *id, *va, *ce, *so, *oi, *oid, *ol;
    int level;
    double temp;
    if (!PyArg_ParseTuple(args, "OOOOOidOOO:fuse_avg_ce", &ip, &id, &va, &ce, &so, &level,
                          &temp, &oi, &oid, &ol))
        return NULL;
    fuse_models *f = PyMem_Calloc(1, sizeof *f);
    if (!f) return PyErr_NoMemory();
    fc_py_tensor t_so = {0}, t_oi = {0}, t_oid = {0}, t_ol = {0};
    PyObject *ret = NULL;
    int has_so;
    if (fuse_take(ip, id, va, ce, "fuse_avg_ce", f) < 0 ||
        fc_py_loss_take(so, "seq_offsets", 0, FC_I64, 1, FC_DL_CPU, 0, &t_so, &has_so) < 0 ||
        fc_py_loss_take(oi, "out_indptr", 1, FC_I64, 1, FC_DL_CPU, 0, &t_oi, NULL) < 0 ||
        fc_py_loss_take(oid, "out_ids", 1, FC_I32, 1, FC_DL_CPU, 0, &t_oid, NULL) < 0 ||
        fc_py_loss_take(ol, "out_logp", 1, FC_F32, 1, FC_DL_CPU, 0, &t_ol, NULL) < 0)
        goto done;
    int64_t ns = has_so ? t_so.shape[0] - 1 : 0, cap = 0;
    for (int64_t i = 0; i < f->m; i++) cap += f->ip[i][f->d.n_pos];
    if (fuse_ce_len(f, level, ns, "fuse_avg_ce") < 0 ||
        fc_py_check(t_oi.shape[0] == f->d.n_pos + 1 && t_oid.shape[0] >= cap &&
                    t_ol.shape[0] >= cap, "fuse_avg_ce",
                    "out_indptr must be [T+1], out_ids/out_logp hold the sum of the nnz") < 0)
        goto done;
    fc_error err;
    fc_error_clear(&err);
    fc_status s;
    Py_BEGIN_ALLOW_THREADS
    s = fc_fuse_avg_ce(&f->d, has_so ? t_so.data : NULL, ns, f->cep, level, temp, t_oi.data,
                       t_oid.data, t_ol.data, &err);
    Py_END_ALLOW_THREADS
    if (s != FC_OK) fc_py_raise(&err);
    else ret = Py_NewRef(Py_None);
done:
    fc_py_tensor_release(&t_so);
    fc_py_tensor_release(&t_oi);
    fc_py_tensor_release(&t_oid);
    fc_py_tensor_release(&t_ol);
    fuse_release(f);
    PyMem_Free(f);
    return ret;
}

/* The C defaults of fc_fusion_loss_opts_init: the one source of the Python defaults
 * (fusechat._loss_common reads them once at import). */
static PyObject *py_fusion_loss_defaults(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    fc_fusion_loss_opts o;
    fc_fusion_loss_opts_init(&o);
    return Py_BuildValue("{s:d,s:d,s:L}", "lm_weight", o.lm_weight, "temperature",
                         o.temperature, "ignore_index", (long long)o.ignore_index);
}

static PyMethodDef methods[] = {
    {"fusion_loss_defaults", py_fusion_loss_defaults, METH_NOARGS,
     "fusion_loss_defaults() -> {lm_weight, temperature, ignore_index}: the C defaults"},
    {"fusion_loss", (PyCFunction)(void (*)(void))py_fusion_loss, METH_VARARGS | METH_KEYWORDS,
     "fusion_loss(logits, labels, target_ids, target_values, fallback_ids, fallback_values, "
     "grad, row_loss, ...) -> (loss, n_supervised); see fusechat.loss.fusion_loss"},
    {"topk_ce", (PyCFunction)(void (*)(void))py_topk_ce, METH_VARARGS | METH_KEYWORDS,
     "topk_ce(logits, labels, k, ignore_index, seq_offsets, top_ids, top_logits, token_ce, "
     "seq_ce, seq_has, threads=0); see fusechat.loss.topk_and_ce"},
    {"fuse_min_ce", py_fuse_min_ce, METH_VARARGS, "see fusechat.fuse.min_ce"},
    {"fuse_gather", py_fuse_gather, METH_VARARGS, "see fusechat.fuse.min_ce"},
    {"fuse_avg_ce", py_fuse_avg_ce, METH_VARARGS, "see fusechat.fuse.avg_ce"},
    {NULL, NULL, 0, NULL},
};

int fc_py_add_loss(PyObject *m) { return PyModule_AddFunctions(m, methods); }
