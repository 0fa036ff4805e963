/* py_dlpack.c - tensor intake: NumPy arrays, or any DLPack producer (style.md section 8).
 *
 * DLPack protocol, consumer side: ask __dlpack_device__() for (device_type, device_id);
 * call __dlpack__(max_version=(1, 0)) (with stream= for CUDA producers), falling back to
 * __dlpack__() for producers that predate the keyword; accept a "dltensor_versioned"
 * capsule (major version 1, read-only flag honoured) or a legacy "dltensor" one; rename it
 * to "used_..." so that the producer's capsule destructor leaves it alone, and call the
 * deleter exactly once, with the GIL, in fc_py_tensor_release. Strides are in elements and
 * may be NULL (compact); byte_offset is added to data; bf16 arrives as kDLBfloat. */
#include "py_dlpack.h"

#include "dlpack_abi.h"

int64_t fc_py_tensor_numel(const fc_py_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

void fc_py_tensor_release(fc_py_tensor *t) {
    if (t->managed) {
        if (t->versioned) {
            fc_dl_managed_versioned *m = (fc_dl_managed_versioned *)t->managed;
            if (m->deleter) m->deleter(m);
        } else {
            fc_dl_managed *m = (fc_dl_managed *)t->managed;
            if (m->deleter) m->deleter(m);
        }
    }
    Py_CLEAR(t->capsule);
    Py_CLEAR(t->array);
    t->managed = NULL;
    t->data = NULL;
}

static int from_numpy(PyArrayObject *a, const char *argname, int writable, fc_py_tensor *t) {
    int dt = fc_py_dtype_from_descr(PyArray_DESCR(a));
    if (dt < 0) {
        PyErr_Format(PyExc_TypeError, "%s: unsupported dtype %R", argname,
                     (PyObject *)PyArray_DESCR(a));
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s: the array must be C-contiguous and aligned "
                     "(use numpy.ascontiguousarray)", argname);
        return -1;
    }
    if (writable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s: the array is read-only", argname);
        return -1;
    }
    if (PyArray_NDIM(a) > FC_PY_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s: more than %d dimensions", argname, FC_PY_MAX_DIMS);
        return -1;
    }
    Py_INCREF(a);
    t->array = (PyObject *)a;
    t->data = PyArray_DATA(a);
    t->dtype = (fc_dtype)dt;
    t->ndim = PyArray_NDIM(a);
    for (int i = 0; i < t->ndim; i++) t->shape[i] = PyArray_DIM(a, i);
    t->device_type = FC_DL_CPU;
    t->device_id = 0;
    return 0;
}

static int dtype_from_dl(fc_dl_dtype d) {
    if (d.lanes != 1) return -1;
    switch (d.code) {
    case FC_DL_FLOAT:  return d.bits == 16 ? FC_F16 : d.bits == 32 ? FC_F32
                            : d.bits == 64 ? FC_F64 : -1;
    case FC_DL_BFLOAT: return d.bits == 16 ? FC_BF16 : -1;
    case FC_DL_INT:    return d.bits == 8 ? FC_I8 : d.bits == 16 ? FC_I16 : d.bits == 32 ? FC_I32
                            : d.bits == 64 ? FC_I64 : -1;
    case FC_DL_UINT:   return d.bits == 8 ? FC_U8 : d.bits == 16 ? FC_U16 : d.bits == 32 ? FC_U32
                            : d.bits == 64 ? FC_U64 : -1;
    case FC_DL_BOOL:   return d.bits == 8 ? FC_BOOL : -1;
    default:           return -1;
    }
}

/* Call obj.__dlpack__ with max_version (and stream for CUDA), retrying without max_version. */
static PyObject *call_dlpack(PyObject *obj, int device_type, intptr_t stream) {
    PyObject *meth = PyObject_GetAttrString(obj, "__dlpack__");
    if (!meth) return NULL;
    PyObject *args = PyTuple_New(0), *kw = PyDict_New(), *caps = NULL;
    if (!args || !kw) goto done;
    if (device_type == FC_DL_CUDA || device_type == FC_DL_CUDA_MANAGED) {
        PyObject *s = PyLong_FromSsize_t(stream ? (Py_ssize_t)stream : 1);
        if (!s || PyDict_SetItemString(kw, "stream", s) < 0) { Py_XDECREF(s); goto done; }
        Py_DECREF(s);
    }
    PyObject *ver = Py_BuildValue("(ii)", 1, 0);
    if (!ver || PyDict_SetItemString(kw, "max_version", ver) < 0) { Py_XDECREF(ver); goto done; }
    Py_DECREF(ver);
    caps = PyObject_Call(meth, args, kw);
    if (!caps && PyErr_ExceptionMatches(PyExc_TypeError)) { /* a producer without max_version */
        PyErr_Clear();
        if (PyDict_DelItemString(kw, "max_version") == 0) caps = PyObject_Call(meth, args, kw);
    }
done:
    Py_XDECREF(args);
    Py_XDECREF(kw);
    Py_DECREF(meth);
    return caps;
}

static int from_dlpack(PyObject *obj, const char *argname, int writable, intptr_t stream,
                       fc_py_tensor *t) {
    int dev_type = FC_DL_CPU, dev_id = 0;
    PyObject *dev = PyObject_CallMethod(obj, "__dlpack_device__", NULL);
    if (!dev) return -1;
    int ok = PyArg_ParseTuple(dev, "ii", &dev_type, &dev_id);
    Py_DECREF(dev);
    if (!ok) return -1;
    PyObject *caps = call_dlpack(obj, dev_type, stream);
    if (!caps) return -1;
    fc_dl_tensor *dl = NULL;
    uint64_t flags = 0;
    if (PyCapsule_IsValid(caps, "dltensor_versioned")) {
        fc_dl_managed_versioned *m = PyCapsule_GetPointer(caps, "dltensor_versioned");
        if (!m || PyCapsule_SetName(caps, "used_dltensor_versioned") < 0) goto fail;
        t->capsule = caps;
        t->managed = m;
        t->versioned = 1;
        if (m->version.major != 1) { /* touch nothing else of an unknown layout */
            PyErr_Format(PyExc_TypeError, "%s: DLPack version %u.%u is not supported (1.x)",
                         argname, m->version.major, m->version.minor);
            return -1;
        }
        dl = &m->dl_tensor;
        flags = m->flags;
    } else if (PyCapsule_IsValid(caps, "dltensor")) {
        fc_dl_managed *m = PyCapsule_GetPointer(caps, "dltensor");
        if (!m || PyCapsule_SetName(caps, "used_dltensor") < 0) goto fail;
        t->capsule = caps;
        t->managed = m;
        t->versioned = 0;
        dl = &m->dl_tensor;
    } else {
        PyErr_Format(PyExc_TypeError, "%s: __dlpack__ returned no unused DLPack capsule",
                     argname);
        goto fail;
    }
    if (writable && (flags & FC_DL_FLAG_READ_ONLY)) {
        PyErr_Format(PyExc_ValueError, "%s: the tensor is read-only", argname);
        return -1;
    }
    int dt = dtype_from_dl(dl->dtype);
    if (dt < 0) {
        PyErr_Format(PyExc_TypeError, "%s: unsupported DLPack dtype (code %u, %u bits, %u lanes)",
                     argname, dl->dtype.code, dl->dtype.bits, dl->dtype.lanes);
        return -1;
    }
    if (dl->ndim < 0 || dl->ndim > FC_PY_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s: %d dimensions (at most %d)", argname, dl->ndim,
                     FC_PY_MAX_DIMS);
        return -1;
    }
    /* C-contiguous: each stride (in elements) equals the product of the later extents;
     * extents of 1, and every extent of an empty tensor, may carry any stride */
    int64_t expect = 1, numel = 1;
    for (int i = 0; i < dl->ndim; i++) numel *= dl->shape[i];
    for (int i = dl->ndim - 1; i >= 0 && numel > 0; i--) {
        if (dl->strides && dl->shape[i] != 1 && dl->strides[i] != expect) {
            PyErr_Format(PyExc_ValueError, "%s: the tensor must be contiguous (call "
                         ".contiguous())", argname);
            return -1;
        }
        expect *= dl->shape[i];
    }
    t->dtype = (fc_dtype)dt;
    t->ndim = dl->ndim;
    for (int i = 0; i < dl->ndim; i++) t->shape[i] = dl->shape[i];
    t->device_type = dl->device.device_type;
    t->device_id = dl->device.device_id;
    t->data = dl->data ? (char *)dl->data + dl->byte_offset : NULL;
    if (numel > 0 && !t->data) {
        PyErr_Format(PyExc_ValueError, "%s: DLPack tensor with NULL data", argname);
        return -1;
    }
    return 0;
fail:
    Py_DECREF(caps);
    return -1;
}

int fc_py_tensor_get(PyObject *obj, const char *argname, int writable, intptr_t stream,
                     fc_py_tensor *t) {
    memset(t, 0, sizeof *t);
    if (PyArray_Check(obj)) return from_numpy((PyArrayObject *)obj, argname, writable, t);
    if (PyObject_HasAttrString(obj, "__dlpack__"))
        return from_dlpack(obj, argname, writable, stream, t);
    PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray or a DLPack tensor (torch, ...), "
                 "got %s", argname, Py_TYPE(obj)->tp_name);
    return -1;
}
