/* py_safetensors_writer.c - bindings of the safetensors writer (fc_st_writer_*).
 *
 * _C.STWriter(path, entries, metadata, max_shard_size, overwrite): entries is a sequence of
 * (name, dtype, shape). write(index, array, offset=0) writes a C-contiguous array of the
 * entry's dtype (or a slice of it, at byte `offset`) with the GIL released, so several
 * Python threads may write at once. finish() renames into place; abort() or garbage
 * collection of an unfinished writer removes its temporary files. */
#include "py_common.h"

typedef struct {
    PyObject_HEAD
    fc_st_writer_t *w;
    int64_t         n;
    int            *dtypes;
    int             busy;   /* writes in flight (GIL released); finish/abort wait for none */
} STWriter;

static void stwriter_dealloc(STWriter *self) {
    fc_st_writer_free(self->w);
    PyMem_Free(self->dtypes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* entries -> fc_st_entry array; names/shapes kept alive in `keep` (a list) */
static fc_st_entry *parse_entries(PyObject *seq, int64_t *n_out, PyObject *keep) {
    PyObject *fast = PySequence_Fast(seq, "entries must be a sequence of (name, dtype, shape)");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    fc_st_entry *e = PyMem_Calloc((size_t)n + 1, sizeof *e);
    if (!e) { Py_DECREF(fast); PyErr_NoMemory(); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i), *name, *dt, *shape;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "UOO", &name, &dt, &shape)) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError, "entries[%zd] must be a (name: str, dtype, "
                             "shape) tuple", i);
            }
            goto fail;
        }
        Py_ssize_t len;
        e[i].name = PyUnicode_AsUTF8AndSize(name, &len);
        if (!e[i].name) goto fail;
        if ((size_t)len != strlen(e[i].name)) {
            PyErr_Format(PyExc_ValueError, "entries[%zd]: tensor name %R holds a NUL", i, name);
            goto fail;
        }
        int d = fc_py_dtype_arg(dt, "entries: dtype");
        if (d < 0) goto fail;
        e[i].dtype = (fc_dtype)d;
        PyObject *sf = PySequence_Fast(shape, "entries: shape must be a sequence of ints");
        if (!sf) goto fail;
        Py_ssize_t nd = PySequence_Fast_GET_SIZE(sf);
        PyObject *cap = PyBytes_FromStringAndSize(NULL, (nd + 1) * (Py_ssize_t)sizeof(int64_t));
        if (!cap || PyList_Append(keep, cap) < 0) { Py_XDECREF(cap); Py_DECREF(sf); goto fail; }
        Py_DECREF(cap); /* the list holds it */
        int64_t *dims = (int64_t *)PyBytes_AS_STRING(cap);
        for (Py_ssize_t k = 0; k < nd; k++) {
            long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sf, k));
            if (v == -1 && PyErr_Occurred()) { Py_DECREF(sf); goto fail; }
            dims[k] = v;
        }
        Py_DECREF(sf);
        e[i].ndim = (int)nd;
        e[i].shape = dims;
        if (PyList_Append(keep, name) < 0) goto fail;
    }
    Py_DECREF(fast);
    *n_out = n;
    return e;
fail:
    Py_DECREF(fast);
    PyMem_Free(e);
    return NULL;
}

static PyObject *stwriter_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path", "entries", "metadata", "max_shard_size", "overwrite",
                             NULL};
    PyObject *path_obj, *entries, *meta = Py_None, *bytes = NULL, *keep = NULL;
    unsigned long long max_shard = 0;
    int overwrite = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O|OKp:STWriter", kwlist,
                                     PyUnicode_FSConverter, &path_obj, &entries, &meta,
                                     &max_shard, &overwrite))
        return NULL;
    bytes = path_obj;
    STWriter *self = NULL;
    fc_st_entry *e = NULL;
    const char **mk = NULL, **mv = NULL;
    int64_t n = 0, n_meta = 0;
    if (!(keep = PyList_New(0))) goto done;
    if (!(e = parse_entries(entries, &n, keep))) goto done;
    if (meta != Py_None) {
        if (!PyDict_Check(meta)) {
            PyErr_SetString(PyExc_TypeError, "metadata must be a dict of str to str");
            goto done;
        }
        n_meta = PyDict_Size(meta);
        mk = PyMem_Calloc((size_t)n_meta + 1, sizeof *mk);
        mv = PyMem_Calloc((size_t)n_meta + 1, sizeof *mv);
        if (!mk || !mv) { PyErr_NoMemory(); goto done; }
        Py_ssize_t pos = 0, i = 0;
        PyObject *k, *v;
        while (PyDict_Next(meta, &pos, &k, &v)) {
            if (!PyUnicode_Check(k) || !PyUnicode_Check(v)) {
                PyErr_Format(PyExc_TypeError, "metadata must map str to str; got %R: %R", k, v);
                goto done;
            }
            if (!(mk[i] = PyUnicode_AsUTF8(k)) || !(mv[i] = PyUnicode_AsUTF8(v))) goto done;
            i++;
        }
    }
    self = (STWriter *)type->tp_alloc(type, 0);
    if (!self) goto done;
    self->dtypes = PyMem_Calloc((size_t)n + 1, sizeof(int));
    if (!self->dtypes) { Py_CLEAR(self); PyErr_NoMemory(); goto done; }
    for (int64_t i = 0; i < n; i++) self->dtypes[i] = e[i].dtype;
    self->n = n;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    const char *path = PyBytes_AS_STRING(bytes);
    Py_BEGIN_ALLOW_THREADS
    st = fc_st_writer_open(path, e, n, mk, mv, n_meta, (uint64_t)max_shard, overwrite,
                           &self->w, &err);
    Py_END_ALLOW_THREADS
    if (st != FC_OK) { Py_CLEAR(self); fc_py_raise(&err); }
done:
    PyMem_Free(e);
    PyMem_Free(mk);
    PyMem_Free(mv);
    Py_XDECREF(keep);
    Py_XDECREF(bytes);
    return (PyObject *)self;
}

static int live(STWriter *self) {
    if (self->w) return 1;
    PyErr_SetString(PyExc_ValueError, "the safetensors writer is closed");
    return 0;
}

/* write(index, array, offset=0) */
static PyObject *stwriter_write(STWriter *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"index", "array", "offset", NULL};
    long long index;
    PyObject *arr_obj;
    unsigned long long offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LO|K:write", kwlist, &index, &arr_obj, &offset))
        return NULL;
    if (!live(self)) return NULL;
    if (index < 0 || index >= self->n)
        return PyErr_Format(PyExc_IndexError, "write: no entry %lld", index);
    if (!PyArray_Check(arr_obj) || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)arr_obj))
        return PyErr_Format(PyExc_TypeError, "write: entry %lld needs a C-contiguous "
                            "numpy.ndarray", index);
    PyArrayObject *arr = (PyArrayObject *)arr_obj;
    if (fc_py_dtype_from_descr(PyArray_DESCR(arr)) != self->dtypes[index])
        return PyErr_Format(PyExc_TypeError, "write: entry %lld is %s but the array is %R",
                            index, fc_dtype_name(self->dtypes[index]),
                            (PyObject *)PyArray_DESCR(arr));
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    const void *data = PyArray_DATA(arr);
    uint64_t nbytes = (uint64_t)PyArray_NBYTES(arr);
    Py_INCREF(arr);
    self->busy++;
    Py_BEGIN_ALLOW_THREADS
    st = fc_st_writer_write(self->w, index, offset, data, nbytes, &err);
    Py_END_ALLOW_THREADS
    self->busy--;
    Py_DECREF(arr);
    if (st != FC_OK) return fc_py_raise(&err);
    Py_RETURN_NONE;
}

static int idle(STWriter *self, const char *what) {
    if (!self->busy) return 1;
    PyErr_Format(PyExc_RuntimeError, "%s: %d writes are still running in other threads", what,
                 self->busy);
    return 0;
}

static PyObject *stwriter_finish(STWriter *self, PyObject *noargs) {
    (void)noargs;
    if (!live(self) || !idle(self, "finish")) return NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_st_writer_finish(self->w, &err);
    Py_END_ALLOW_THREADS
    if (st != FC_OK) return fc_py_raise(&err);
    fc_st_writer_free(self->w);
    self->w = NULL;
    Py_RETURN_NONE;
}

static PyObject *stwriter_abort(STWriter *self, PyObject *noargs) {
    (void)noargs;
    if (!idle(self, "abort")) return NULL;
    fc_st_writer_free(self->w); /* removes the temporary files of an unfinished writer */
    self->w = NULL;
    Py_RETURN_NONE;
}

static PyObject *stwriter_locate(STWriter *self, PyObject *arg) {
    long long i = PyLong_AsLongLong(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (!live(self)) return NULL;
    if (i < 0 || i >= self->n) return PyErr_Format(PyExc_IndexError, "no entry %lld", i);
    int shard;
    uint64_t b, e;
    fc_st_writer_locate(self->w, i, &shard, &b, &e);
    return Py_BuildValue("iKK", shard, (unsigned long long)b, (unsigned long long)e);
}

static PyObject *stwriter_shard_count(STWriter *self, PyObject *noargs) {
    (void)noargs;
    if (!live(self)) return NULL;
    return PyLong_FromLong(fc_st_writer_shard_count(self->w));
}

static PyMethodDef stwriter_methods[] = {
    {"write", (PyCFunction)(void (*)(void))stwriter_write, METH_VARARGS | METH_KEYWORDS,
     "write(index, array, offset=0): bytes of entry `index` at byte `offset`"},
    {"finish", (PyCFunction)stwriter_finish, METH_NOARGS,
     "check every byte was written and rename the outputs into place"},
    {"abort", (PyCFunction)stwriter_abort, METH_NOARGS, "drop the temporary files"},
    {"locate", (PyCFunction)stwriter_locate, METH_O, "locate(index) -> (shard, begin, end)"},
    {"shard_count", (PyCFunction)stwriter_shard_count, METH_NOARGS, "number of shard files"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject STWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fusechat._C.STWriter",
    .tp_basicsize = sizeof(STWriter),
    .tp_dealloc = (destructor)stwriter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "STWriter(path, entries, metadata=None, max_shard_size=0, overwrite=False)",
    .tp_methods = stwriter_methods,
    .tp_new = stwriter_new,
};

int fc_py_add_safetensors_writer(PyObject *m) {
    if (PyType_Ready(&STWriterType) < 0) return -1;
    return PyModule_AddObjectRef(m, "STWriter", (PyObject *)&STWriterType);
}
