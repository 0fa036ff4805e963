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
    fc_py_topk_call c;
    PyObject *ret = NULL;
    if (fc_py_topk_parse(args, kw, FC_DL_CUDA, &c) < 0) goto done;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_cuda_topk_ce(c.logits.data, c.logits.dtype, c.n, c.v, c.k, c.labels.data,
                         c.ignore_index, c.top_ids.data, c.top_logits.data, c.token_ce.data,
                         c.seq_offsets.data, c.n_seq, c.seq_ce.data, c.seq_has.data,
                         (void *)c.last, &err);
    Py_END_ALLOW_THREADS
    if (st != FC_OK) fc_py_raise(&err);
    else ret = Py_NewRef(Py_None);
done:
    fc_py_topk_release(&c);
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
