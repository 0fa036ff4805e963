/* cuda_loss.c - bindings of the CUDA loss kernels (fc_cuda.h; csrc/cuda/loss_fusion.cu).
 * Same arguments as the CPU bindings (py_loss.c), taken through DLPack from CUDA tensors;
 * outputs are allocated by the caller (fusechat/torch.py); `stream` is the caller's
 * cudaStream_t as an integer (0 = the legacy default stream). */
#include "py_common.h"
#include "py_loss_args.h"
#include "../cuda/fc_cuda.h"

/* fusion_loss(..., total=tensor[1] float32) -> n_supervised is not returned (it stays on the
 * device); returns None. The reduced loss is written into `total`. */
static PyObject *py_fusion_loss(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    fc_py_loss_call c;
    PyObject *ret = NULL;
    if (fc_py_loss_parse(args, kw, "fusion_loss", FC_DL_CUDA, FC_F32, &c) < 0) goto done;
    if (fc_py_check(c.row_loss.data && c.has_total && c.total.shape[0] == 1, "fusion_loss",
                    "the CUDA kernel needs row_loss [N] and total [1] float32 on the device") < 0)
        goto done;
    if (fc_py_check(c.logits.dtype != FC_F64, "fusion_loss", "float64 logits are CPU-only") < 0)
        goto done;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_cuda_fusion_loss(c.logits.data, c.logits.dtype, c.n, c.v, c.labels.data,
                             c.has_target ? &c.target : NULL,
                             c.has_fallback ? &c.fallback : NULL, &c.opts, c.row_loss.data,
                             c.grad.data, c.total.data, (void *)c.stream, &err);
    Py_END_ALLOW_THREADS
    if (st != FC_OK) fc_py_raise(&err);
    else ret = Py_NewRef(Py_None);
done:
    fc_py_loss_release(&c);
    return ret;
}

/* topk_ce(logits, labels, k, ignore_index, seq_offsets, top_ids, top_logits, token_ce, seq_ce,
 *         seq_has, stream=0) -> None, every tensor on the device */
static PyObject *py_topk_ce(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"logits", "labels", "k", "ignore_index", "seq_offsets", "top_ids",
                             "top_logits", "token_ce", "seq_ce", "seq_has", "stream", NULL};
    PyObject *lo, *la, *so, *ti, *tl, *tc, *sc, *sh;
    long long k, ignore;
    Py_ssize_t stream = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLLOOOOOO|n:topk_ce", kwlist, &lo, &la, &k,
                                     &ignore, &so, &ti, &tl, &tc, &sc, &sh, &stream))
        return NULL;
    fc_py_tensor t[8];
    memset(t, 0, sizeof t);
    int has[8];
    PyObject *ret = NULL;
    const char *names[8] = {"logits", "labels", "seq_offsets", "top_ids", "top_logits",
                            "token_ce", "seq_ce", "seq_has"};
    PyObject *objs[8] = {lo, la, so, ti, tl, tc, sc, sh};
    const int dts[8] = {-1, FC_I64, FC_I64, FC_I32, FC_F32, FC_F32, FC_F32, FC_U8};
    const int dims[8] = {2, 1, 1, 2, 2, 1, 1, 1};
    for (int i = 0; i < 8; i++)
        if (fc_py_loss_take(objs[i], names[i], i >= 3, dts[i], dims[i], FC_DL_CUDA,
                            (intptr_t)stream, &t[i], &has[i]) < 0)
            goto done;
    int64_t n = t[0].shape[0], v = t[0].shape[1], ns = has[2] ? t[2].shape[0] - 1 : 0;
    if (fc_py_check(has[0] && has[3] && has[4] && t[3].shape[0] == n && t[3].shape[1] == k &&
                    t[4].shape[0] == n && t[4].shape[1] == k, "topk_and_ce",
                    "logits and top_ids/top_logits [N, k] are required") < 0 ||
        fc_py_check(!has[1] || (t[1].shape[0] == n && has[5] && t[5].shape[0] == n),
                    "topk_and_ce", "labels and token_ce must be [N]") < 0 ||
        fc_py_check(!has[2] || (ns >= 0 && has[6] && has[7] && t[6].shape[0] == ns &&
                                t[7].shape[0] == ns), "topk_and_ce",
                    "seq_offsets [S+1] needs seq_ce and seq_has [S]") < 0)
        goto done;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_cuda_topk_ce(t[0].data, t[0].dtype, n, v, k, has[1] ? t[1].data : NULL, ignore,
                         t[3].data, t[4].data, has[5] ? t[5].data : NULL,
                         has[2] ? t[2].data : NULL, ns, has[6] ? t[6].data : NULL,
                         has[7] ? t[7].data : NULL, (void *)stream, &err);
    Py_END_ALLOW_THREADS
    if (st != FC_OK) fc_py_raise(&err);
    else ret = Py_NewRef(Py_None);
done:
    for (int i = 0; i < 8; i++) fc_py_tensor_release(&t[i]);
    return ret;
}

static PyMethodDef methods[] = {
    {"fusion_loss", (PyCFunction)(void (*)(void))py_fusion_loss, METH_VARARGS | METH_KEYWORDS,
     "fusion_loss(logits, labels, target_ids, target_values, fallback_ids, fallback_values, "
     "grad, row_loss, ..., stream=0, total=...) on CUDA tensors; see fusechat.torch"},
    {"topk_ce", (PyCFunction)(void (*)(void))py_topk_ce, METH_VARARGS | METH_KEYWORDS,
     "topk_ce(...) on CUDA tensors; see fusechat.torch.topk_and_ce"},
    {NULL, NULL, 0, NULL},
};

int fc_py_cuda_add_loss(PyObject *m) { return PyModule_AddFunctions(m, methods); }
