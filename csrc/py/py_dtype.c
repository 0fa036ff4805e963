/* py_dtype.c - NumPy dtype mapping and the conversion binding _C.convert. */
#include "py_common.h"

/* type numbers of the ml_dtypes types, found at init (they are registered at run time) */
static int typenum_bf16 = -1, typenum_e4m3 = -1, typenum_e5m2 = -1;

static int ml_typenum(PyObject *mod, const char *name) {
    PyObject *t = PyObject_GetAttrString(mod, name);
    if (!t) return -1;
    PyArray_Descr *d = NULL;
    int ok = PyArray_DescrConverter(t, &d);
    Py_DECREF(t);
    if (!ok) return -1;
    int num = d->type_num;
    Py_DECREF(d);
    return num;
}

int fc_py_dtypes_init(void) {
    PyObject *mod = PyImport_ImportModule("ml_dtypes");
    if (!mod) return -1;
    typenum_bf16 = ml_typenum(mod, "bfloat16");
    typenum_e4m3 = ml_typenum(mod, "float8_e4m3fn");
    typenum_e5m2 = ml_typenum(mod, "float8_e5m2");
    Py_DECREF(mod);
    return (typenum_bf16 < 0 || typenum_e4m3 < 0 || typenum_e5m2 < 0) ? -1 : 0;
}

int fc_py_dtype_from_descr(PyArray_Descr *d) {
    if (PyDataType_ISBYTESWAPPED(d)) return -1;
    int t = d->type_num;
    if (t == typenum_bf16) return FC_BF16;
    if (t == typenum_e4m3) return FC_F8_E4M3;
    if (t == typenum_e5m2) return FC_F8_E5M2;
    switch (t) {
    case NPY_BOOL:    return FC_BOOL;
    case NPY_UINT8:   return FC_U8;
    case NPY_INT8:    return FC_I8;
    case NPY_INT16:   return FC_I16;
    case NPY_UINT16:  return FC_U16;
    case NPY_FLOAT16: return FC_F16;
    case NPY_FLOAT32: return FC_F32;
    case NPY_FLOAT64: return FC_F64;
    }
    /* int/long/longlong alias each other by platform: go by kind and size */
    if (d->kind == 'i' && PyDataType_ELSIZE(d) == 4) return FC_I32;
    if (d->kind == 'u' && PyDataType_ELSIZE(d) == 4) return FC_U32;
    if (d->kind == 'i' && PyDataType_ELSIZE(d) == 8) return FC_I64;
    if (d->kind == 'u' && PyDataType_ELSIZE(d) == 8) return FC_U64;
    return -1;
}

PyArray_Descr *fc_py_descr_from_dtype(fc_dtype dt) {
    int t;
    switch (dt) {
    case FC_BOOL: t = NPY_BOOL; break;
    case FC_U8: t = NPY_UINT8; break;
    case FC_I8: t = NPY_INT8; break;
    case FC_I16: t = NPY_INT16; break;
    case FC_U16: t = NPY_UINT16; break;
    case FC_F16: t = NPY_FLOAT16; break;
    case FC_BF16: t = typenum_bf16; break;
    case FC_I32: t = NPY_INT32; break;
    case FC_U32: t = NPY_UINT32; break;
    case FC_F32: t = NPY_FLOAT32; break;
    case FC_F64: t = NPY_FLOAT64; break;
    case FC_I64: t = NPY_INT64; break;
    case FC_U64: t = NPY_UINT64; break;
    case FC_F8_E4M3: t = typenum_e4m3; break;
    case FC_F8_E5M2: t = typenum_e5m2; break;
    default:
        PyErr_Format(PyExc_TypeError, "unknown fusechat dtype %d", (int)dt);
        return NULL;
    }
    return PyArray_DescrFromType(t);
}

int fc_py_dtype_arg(PyObject *obj, const char *argname) {
    if (PyUnicode_Check(obj)) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(obj, &len);
        if (!s) return -1;
        int dt = fc_dtype_from_name(s, (size_t)len);
        if (dt >= 0) return dt;
    }
    PyArray_Descr *d = NULL;
    if (!PyArray_DescrConverter(obj, &d)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: not a dtype: %R", argname, obj);
        return -1;
    }
    int dt = fc_py_dtype_from_descr(d);
    Py_DECREF(d);
    if (dt < 0) PyErr_Format(PyExc_TypeError, "%s: unsupported dtype %R", argname, obj);
    return dt;
}

/* convert(src: ndarray, dtype, threads=0) -> new C-contiguous ndarray */
static PyObject *py_convert(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"array", "dtype", "threads", NULL};
    PyObject *arr_obj, *dt_obj;
    int threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|i:convert", kwlist, &arr_obj, &dt_obj,
                                     &threads))
        return NULL;
    if (!PyArray_Check(arr_obj)) {
        PyErr_SetString(PyExc_TypeError, "convert: array must be a numpy.ndarray");
        return NULL;
    }
    PyArrayObject *src = (PyArrayObject *)arr_obj;
    int sdt = fc_py_dtype_from_descr(PyArray_DESCR(src));
    if (sdt < 0 || !fc_dtype_is_float(sdt)) {
        PyErr_Format(PyExc_TypeError,
                     "convert: array dtype must be float16, bfloat16, float32 or float64, got %R",
                     (PyObject *)PyArray_DESCR(src));
        return NULL;
    }
    int ddt = fc_py_dtype_arg(dt_obj, "convert: dtype");
    if (ddt < 0) return NULL;
    if (!fc_dtype_is_float(ddt)) {
        PyErr_Format(PyExc_TypeError, "convert: dtype must be a float dtype, got %R", dt_obj);
        return NULL;
    }
    PyArrayObject *csrc = (PyArrayObject *)PyArray_FromAny(
        arr_obj, (PyArray_Descr *)Py_NewRef(PyArray_DESCR(src)), 0, 0, NPY_ARRAY_C_CONTIGUOUS,
        NULL);
    if (!csrc) return NULL;
    PyArray_Descr *dd = fc_py_descr_from_dtype(ddt);
    if (!dd) { Py_DECREF(csrc); return NULL; }
    PyArrayObject *out = (PyArrayObject *)PyArray_NewFromDescr(
        &PyArray_Type, dd, PyArray_NDIM(csrc), PyArray_DIMS(csrc), NULL, NULL, 0, NULL);
    if (!out) { Py_DECREF(csrc); return NULL; }
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_convert(PyArray_DATA(csrc), sdt, PyArray_DATA(out), ddt, PyArray_SIZE(csrc),
                    threads, &err);
    Py_END_ALLOW_THREADS
    Py_DECREF(csrc);
    if (st != FC_OK) { Py_DECREF(out); return fc_py_raise(&err); }
    return (PyObject *)out;
}

static PyObject *py_default_threads(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(fc_default_threads());
}

static PyMethodDef methods[] = {
    {"convert", (PyCFunction)(void (*)(void))py_convert, METH_VARARGS | METH_KEYWORDS,
     "convert(array, dtype, threads=0) -> ndarray: float conversion in C, round to nearest even"},
    {"default_threads", py_default_threads, METH_NOARGS,
     "default_threads() -> int: threads a kernel uses when given 0"},
    {NULL, NULL, 0, NULL},
};

int fc_py_add_dtype(PyObject *m) { return PyModule_AddFunctions(m, methods); }
