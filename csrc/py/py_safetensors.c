/* py_safetensors.c - bindings of the safetensors reader (see fc_safetensors.h).
 *
 * _C.STModel owns an fc_st_model_t. view() returns read-only NumPy arrays over the mapping
 * whose base is the STModel, so the mapping lives as long as any view does: closing a file
 * in Python only drops the Python layer's reference. Data in a safetensors file need not be
 * aligned; NumPy sets the ALIGNED flag from the pointer and handles unaligned arrays. */
#include "py_common.h"

typedef struct {
    PyObject_HEAD
    fc_st_model_t *m;
} STModel;

static void stmodel_dealloc(STModel *self) {
    fc_st_close(self->m);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* the tensor called `name` (a str), or NULL with KeyError */
static const fc_st_tensor_info *lookup(STModel *self, PyObject *name) {
    const char *s = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (!s) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "tensor name must be a str, not %.100s",
                         Py_TYPE(name)->tp_name);
        return NULL;
    }
    const fc_st_tensor_info *t = fc_st_find(self->m, s);
    if (!t) {
        const char *where = fc_st_shard_count(self->m) == 1 ? fc_st_shard_path(self->m, 0)
                                                            : "the checkpoint";
        PyObject *msg = PyUnicode_FromFormat("no tensor %R in %s", name, where);
        if (msg) {
            PyErr_SetObject(PyExc_KeyError, msg);
            Py_DECREF(msg);
        }
    }
    return t;
}

static PyObject *stmodel_names(STModel *self, PyObject *noargs) {
    (void)noargs;
    int64_t n = fc_st_count(self->m);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (int64_t i = 0; list && i < n; i++) {
        PyObject *s = PyUnicode_FromString(fc_st_tensor(self->m, i)->name);
        if (!s) { Py_CLEAR(list); break; }
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    return list;
}

static PyObject *shape_tuple(const fc_st_tensor_info *t) {
    PyObject *shape = PyTuple_New(t->ndim);
    for (int d = 0; shape && d < t->ndim; d++) {
        PyObject *x = PyLong_FromLongLong(t->shape[d]);
        if (!x) { Py_CLEAR(shape); break; }
        PyTuple_SET_ITEM(shape, d, x);
    }
    return shape;
}

/* info(name) -> (dtype, shape, begin, end, file_offset, nbytes, shard) */
static PyObject *stmodel_info(STModel *self, PyObject *name) {
    const fc_st_tensor_info *t = lookup(self, name);
    if (!t) return NULL;
    PyObject *shape = shape_tuple(t);
    if (!shape) return NULL;
    return Py_BuildValue("sNKKKKi", fc_dtype_name(t->dtype), shape,
                         (unsigned long long)t->begin, (unsigned long long)t->end,
                         (unsigned long long)t->file_offset, (unsigned long long)t->nbytes,
                         t->shard);
}

static PyObject *stmodel_contains(STModel *self, PyObject *name) {
    const char *s = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (!s) { PyErr_Clear(); Py_RETURN_FALSE; }
    return PyBool_FromLong(fc_st_find(self->m, s) != NULL);
}

static PyObject *stmodel_shards(STModel *self, PyObject *noargs) {
    (void)noargs;
    int n = fc_st_shard_count(self->m);
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        PyObject *item = Py_BuildValue("(NK)", PyUnicode_DecodeFSDefault(
                                                   fc_st_shard_path(self->m, i)),
                                       (unsigned long long)fc_st_shard_size(self->m, i));
        if (!item) { Py_CLEAR(list); break; }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *stmodel_metadata(STModel *self, PyObject *noargs) {
    (void)noargs;
    PyObject *d = PyDict_New();
    for (int64_t i = 0; d && i < fc_st_metadata_count(self->m); i++) {
        const char *k, *v;
        fc_st_metadata_item(self->m, i, &k, &v);
        PyObject *pv = PyUnicode_FromString(v);
        if (!pv || PyDict_SetItemString(d, k, pv) < 0) { Py_XDECREF(pv); Py_CLEAR(d); break; }
        Py_DECREF(pv);
    }
    return d;
}

static PyObject *stmodel_unlisted(STModel *self, PyObject *noargs) {
    (void)noargs;
    return PyLong_FromLongLong(fc_st_unlisted_count(self->m));
}

static int np_dims(const fc_st_tensor_info *t, npy_intp *dims) {
    if (t->ndim > NPY_MAXDIMS) {
        PyErr_Format(PyExc_ValueError, "tensor '%s' has %d dimensions; NumPy allows %d",
                     t->name, t->ndim, NPY_MAXDIMS);
        return -1;
    }
    for (int d = 0; d < t->ndim; d++) dims[d] = (npy_intp)t->shape[d];
    return 0;
}

/* view(name) -> read-only ndarray over the mapping, no copy */
static PyObject *stmodel_view(STModel *self, PyObject *name) {
    const fc_st_tensor_info *t = lookup(self, name);
    if (!t) return NULL;
    npy_intp dims[NPY_MAXDIMS];
    if (np_dims(t, dims) < 0) return NULL;
    PyArray_Descr *descr = fc_py_descr_from_dtype(t->dtype);
    if (!descr) return NULL;
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, t->ndim, dims, NULL,
                                         (void *)t->data, NPY_ARRAY_C_CONTIGUOUS, NULL);
    if (!arr) return NULL;
    if (PyArray_SetBaseObject((PyArrayObject *)arr, Py_NewRef((PyObject *)self)) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* out= must be an ndarray we may write: C-contiguous, aligned, of the tensor's shape and the
 * requested dtype. Anything else is a TypeError/ValueError naming the tensor. */
static int check_out(PyObject *out, const fc_st_tensor_info *t, int dt, const npy_intp *dims) {
    if (!PyArray_Check(out)) {
        PyErr_Format(PyExc_TypeError, "read: out= for tensor '%s' must be a numpy.ndarray, not %s",
                     t->name, Py_TYPE(out)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)out;
    int have = fc_py_dtype_from_descr(PyArray_DESCR(a));
    if (have != dt) {
        PyErr_Format(PyExc_TypeError, "read: out= for tensor '%s' has dtype %s, expected %s",
                     t->name, have < 0 ? "?" : fc_dtype_name((fc_dtype)have),
                     fc_dtype_name((fc_dtype)dt));
        return -1;
    }
    int same = PyArray_NDIM(a) == t->ndim;
    for (int d = 0; same && d < t->ndim; d++) same = PyArray_DIMS(a)[d] == dims[d];
    if (!same) {
        PyObject *got = PyArray_IntTupleFromIntp(PyArray_NDIM(a), PyArray_DIMS(a));
        PyObject *want = PyArray_IntTupleFromIntp(t->ndim, dims);
        if (got != NULL && want != NULL)
            PyErr_Format(PyExc_ValueError, "read: out= for tensor '%s' has shape %R, the "
                         "tensor's shape is %R (they must be equal)", t->name, got, want);
        Py_XDECREF(got);
        Py_XDECREF(want);
        return -1;
    }
    if (!PyArray_ISCARRAY(a)) {
        PyErr_Format(PyExc_ValueError, "read: out= for tensor '%s' must be writeable, aligned "
                     "and C-contiguous", t->name);
        return -1;
    }
    return 0;
}

/* read(name, dtype, threads=0, out=None) -> ndarray converted in C with the GIL released:
 * a new one, or `out` filled in place (no allocation: loading into existing parameters) */
static PyObject *stmodel_read(STModel *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"name", "dtype", "threads", "out", NULL};
    PyObject *name, *dt_obj, *out = Py_None;
    int threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|iO:read", kwlist, &name, &dt_obj, &threads,
                                     &out))
        return NULL;
    const fc_st_tensor_info *t = lookup(self, name);
    if (!t) return NULL;
    int dt = fc_py_dtype_arg(dt_obj, "read: dtype");
    if (dt < 0) return NULL;
    npy_intp dims[NPY_MAXDIMS];
    if (np_dims(t, dims) < 0) return NULL;
    if (out == Py_None) {
        PyArray_Descr *descr = fc_py_descr_from_dtype((fc_dtype)dt);
        if (!descr) return NULL;
        out = PyArray_NewFromDescr(&PyArray_Type, descr, t->ndim, dims, NULL, NULL, 0, NULL);
        if (!out) return NULL;
    } else {
        if (check_out(out, t, dt, dims) < 0) return NULL;
        Py_INCREF(out);
    }
    int64_t index = t - fc_st_tensor(self->m, 0);
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_st_read(self->m, index, PyArray_DATA((PyArrayObject *)out), (fc_dtype)dt, threads,
                    &err);
    Py_END_ALLOW_THREADS
    if (st != FC_OK) { Py_DECREF(out); return fc_py_raise(&err); }
    return out;
}

static PyObject *stmodel_prefetch(STModel *self, PyObject *name) {
    const fc_st_tensor_info *t = lookup(self, name);
    if (!t) return NULL;
    fc_st_prefetch(self->m, t - fc_st_tensor(self->m, 0));
    Py_RETURN_NONE;
}

static PyMethodDef stmodel_methods[] = {
    {"names", (PyCFunction)stmodel_names, METH_NOARGS, "tensor names in storage order"},
    {"info", (PyCFunction)stmodel_info, METH_O,
     "info(name) -> (dtype, shape, begin, end, file_offset, nbytes, shard)"},
    {"contains", (PyCFunction)stmodel_contains, METH_O, "contains(name) -> bool"},
    {"shards", (PyCFunction)stmodel_shards, METH_NOARGS, "[(path, size)] of the shard files"},
    {"metadata", (PyCFunction)stmodel_metadata, METH_NOARGS, "the metadata as a dict"},
    {"unlisted_count", (PyCFunction)stmodel_unlisted, METH_NOARGS,
     "tensors in shards that the index does not list"},
    {"view", (PyCFunction)stmodel_view, METH_O, "view(name) -> read-only zero-copy ndarray"},
    {"read", (PyCFunction)(void (*)(void))stmodel_read, METH_VARARGS | METH_KEYWORDS,
     "read(name, dtype, threads=0, out=None) -> ndarray converted to dtype"},
    {"prefetch", (PyCFunction)stmodel_prefetch, METH_O, "prefetch(name): madvise WILLNEED"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject STModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fusechat._C.STModel",
    .tp_basicsize = sizeof(STModel),
    .tp_dealloc = (destructor)stmodel_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "a mapped safetensors file or sharded folder (use fusechat.safetensors.open)",
    .tp_methods = stmodel_methods,
};

/* st_open(path) -> STModel */
static PyObject *py_st_open(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *bytes = NULL;
    if (!PyUnicode_FSConverter(arg, &bytes)) return NULL;
    fc_st_model_t *m = NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    const char *path = PyBytes_AS_STRING(bytes);
    Py_BEGIN_ALLOW_THREADS
    st = fc_st_open(path, &m, &err);
    Py_END_ALLOW_THREADS
    Py_DECREF(bytes);
    if (st != FC_OK) return fc_py_raise(&err);
    STModel *obj = PyObject_New(STModel, &STModelType);
    if (!obj) { fc_st_close(m); return NULL; }
    obj->m = m;
    return (PyObject *)obj;
}

/* check_header(data: bytes, path="<bytes>") -> number of tensors; raises on a broken rule */
static PyObject *py_st_check_header(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    const char *path = "<bytes>";
    if (!PyArg_ParseTuple(args, "y*|s:check_header", &buf, &path)) return NULL;
    fc_error err;
    fc_error_clear(&err);
    int64_t n = 0;
    fc_status st = fc_st_check_header(buf.buf, (size_t)buf.len, (uint64_t)buf.len, path, &n,
                                      &err);
    PyBuffer_Release(&buf);
    if (st != FC_OK) return fc_py_raise(&err);
    return PyLong_FromLongLong(n);
}

/* dtype_name(dtype) -> "BF16": the safetensors name of anything fc_py_dtype_arg takes */
static PyObject *py_dtype_name(PyObject *self, PyObject *arg) {
    (void)self;
    int dt = fc_py_dtype_arg(arg, "dtype");
    return dt < 0 ? NULL : PyUnicode_FromString(fc_dtype_name((fc_dtype)dt));
}

/* numpy_dtype(dtype) -> numpy.dtype (BF16 -> ml_dtypes.bfloat16) */
static PyObject *py_numpy_dtype(PyObject *self, PyObject *arg) {
    (void)self;
    int dt = fc_py_dtype_arg(arg, "dtype");
    return dt < 0 ? NULL : (PyObject *)fc_py_descr_from_dtype((fc_dtype)dt);
}

int fc_py_add_safetensors_writer(PyObject *m);

static PyMethodDef methods[] = {
    {"st_open", py_st_open, METH_O, "st_open(path) -> STModel (a file or a folder)"},
    {"dtype_name", py_dtype_name, METH_O,
     "dtype_name(dtype) -> safetensors name ('BF16') of a name or NumPy dtype"},
    {"numpy_dtype", py_numpy_dtype, METH_O,
     "numpy_dtype(dtype) -> numpy.dtype of a safetensors name or NumPy dtype"},
    {"st_check_header", py_st_check_header, METH_VARARGS,
     "st_check_header(file_bytes, path='<bytes>') -> tensor count; validates a whole file image"},
    {NULL, NULL, 0, NULL},
};

int fc_py_add_safetensors(PyObject *m) {
    if (PyType_Ready(&STModelType) < 0) return -1;
    if (PyModule_AddObjectRef(m, "STModel", (PyObject *)&STModelType) < 0) return -1;
    if (PyModule_AddFunctions(m, methods) < 0) return -1;
    return fc_py_add_safetensors_writer(m);
}
