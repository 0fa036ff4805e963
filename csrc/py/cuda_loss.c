/* cuda_loss.c - bindings of the CUDA loss kernels (fc_cuda.h; csrc/cuda/loss_fusion.cu).
 * Same arguments as the CPU bindings (py_loss.c), taken through DLPack from CUDA tensors;
 * outputs are allocated by the caller (fusechat/torch.py); `stream` is the caller's
 * cudaStream_t as an integer (0 = the legacy default stream). Each call makes the tensors'
 * device current for its launches and restores the caller's afterwards. */
#include "py_common.h"
#include "py_loss_args.h"
#include "fc_cuda.h"

/* st = CALL with the GIL released and `device` current, then the caller's device again */
#define ON_DEVICE(device, st, err, CALL)                    \
    do {                                                    \
        Py_BEGIN_ALLOW_THREADS                              \
        int prev_;                                          \
        st = fc_cuda_device_enter((device), &prev_, &(err)); \
        if (st == FC_OK) st = (CALL);                       \
        fc_cuda_device_leave(prev_);                        \
        Py_END_ALLOW_THREADS                                \
    } while (0)

/* fusion_loss(..., total=tensor[1] float32) -> None. n_supervised stays on the device; the
 * reduced loss is written into `total`. Empty tensors (N = 0) have no data pointer. */
static PyObject *py_fusion_loss(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    fc_py_loss_call c;
    PyObject *ret = NULL;
    if (fc_py_loss_parse(args, kw, "fusion_loss", FC_DL_CUDA, FC_F32, &c) < 0) goto done;
    if (fc_py_check(c.has_row_loss && c.has_total && c.total.shape[0] == 1, "fusion_loss",
                    "the CUDA kernel needs row_loss [N] and total [1] float32 on the device") < 0)
        goto done;
    if (fc_py_check(c.logits.dtype != FC_F64, "fusion_loss", "float64 logits are CPU-only") < 0)
        goto done;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    ON_DEVICE(c.logits.device_id, st, err,
              fc_cuda_fusion_loss(c.logits.data, c.logits.dtype, c.n, c.v, c.labels.data,
                                  c.has_target ? &c.target : NULL,
                                  c.has_fallback ? &c.fallback : NULL, &c.opts, c.row_loss.data,
                                  c.grad.data, c.total.data, (void *)c.stream, &err));
    if (st != FC_OK) fc_py_raise(&err);
    else ret = Py_NewRef(Py_None);
done:
    fc_py_loss_release(&c);
    return ret;
}

/* scale_grad(grad [N, V], gout [1] or [N] float32, applied [N] float32, stream) -> None */
static PyObject *py_scale_grad(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *go, *uo, *ao;
    Py_ssize_t stream = 0;
    if (!PyArg_ParseTuple(args, "OOO|n:scale_grad", &go, &uo, &ao, &stream)) return NULL;
    fc_py_tensor g = {0}, u = {0}, a = {0};
    PyObject *ret = NULL;
    if (fc_py_loss_take(go, "grad", 1, -1, 2, FC_DL_CUDA, stream, &g, NULL) < 0 ||
        fc_py_loss_take(uo, "grad_out", 0, FC_F32, 1, FC_DL_CUDA, stream, &u, NULL) < 0 ||
        fc_py_loss_take(ao, "applied", 1, FC_F32, 1, FC_DL_CUDA, stream, &a, NULL) < 0)
        goto done;
    int64_t n = g.shape[0];
    if (fc_py_check((u.shape[0] == 1 || u.shape[0] == n) && a.shape[0] == n &&
                    u.device_id == g.device_id && a.device_id == g.device_id, "scale_grad",
                    "grad_out must be [1] or [N] and applied [N], on the gradient's device") < 0)
        goto done;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    ON_DEVICE(g.device_id, st, err,
              fc_cuda_scale_grad(g.data, g.dtype, n, g.shape[1], u.data,
                                 u.shape[0] == n && n != 1, a.data, (void *)stream, &err));
    if (st != FC_OK) fc_py_raise(&err);
    else ret = Py_NewRef(Py_None);
done:
    fc_py_tensor_release(&g);
    fc_py_tensor_release(&u);
    fc_py_tensor_release(&a);
    return ret;
}

/* loss_errors(device) -> None, or ValueError for bad input found on the device so far */
static PyObject *py_loss_errors(PyObject *self, PyObject *args) {
    (void)self;
    int device = 0;
    if (!PyArg_ParseTuple(args, "|i:loss_errors", &device)) return NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    ON_DEVICE(device, st, err, fc_cuda_loss_errors(&err));
    if (st != FC_OK) return fc_py_raise(&err);
    return Py_NewRef(Py_None);
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
    ON_DEVICE(c.logits.device_id, st, err,
              fc_cuda_topk_ce(c.logits.data, c.logits.dtype, c.n, c.v, c.k, c.labels.data,
                              c.ignore_index, c.top_ids.data, c.top_logits.data,
                              c.token_ce.data, c.seq_offsets.data, c.n_seq, c.seq_ce.data,
                              c.seq_has.data, (void *)c.last, &err));
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
    {"scale_grad", py_scale_grad, METH_VARARGS,
     "scale_grad(grad, grad_out, applied, stream=0): the backward's in-place scaling"},
    {"loss_errors", py_loss_errors, METH_VARARGS,
     "loss_errors(device=0): raise ValueError for bad input found on the device so far"},
    {"topk_ce", (PyCFunction)(void (*)(void))py_topk_ce, METH_VARARGS | METH_KEYWORDS,
     "topk_ce(...) on CUDA tensors; see fusechat.torch.topk_and_ce"},
    {NULL, NULL, 0, NULL},
};

int fc_py_cuda_add_loss(PyObject *m) { return PyModule_AddFunctions(m, methods); }
