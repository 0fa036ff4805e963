/* cuda_module.c - fusechat._C_cuda: bindings of the CUDA kernels (csrc/cuda). Built only
 * when nvcc is found; fusechat._C never links CUDA. Other cuda_*.c files add functions. */
#define FC_PY_IMPORT_ARRAY
#include "py_common.h"
#include "fc_cuda.h"

int fc_py_cuda_add_loss(PyObject *m);

/* device_count() -> (count, reason): reason is "" when count > 0 */
static PyObject *py_device_count(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    fc_error err;
    fc_error_clear(&err);
    int count = 0;
    fc_status st = fc_cuda_device_count(&count, &err);
    if (st == FC_OK && count == 0) snprintf(err.msg, sizeof err.msg, "no CUDA device found");
    return Py_BuildValue("(is)", st == FC_OK ? count : 0, count > 0 ? "" : err.msg);
}

/* versions() -> (runtime, driver): CUDA versions as 1000 * major + 10 * minor; the driver's
 * is 0 when no driver is installed */
static PyObject *py_versions(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    int runtime = 0, driver = 0;
    fc_cuda_versions(&runtime, &driver);
    return Py_BuildValue("(ii)", runtime, driver);
}

static PyObject *py_device_name(PyObject *self, PyObject *args) {
    (void)self;
    int dev = 0;
    if (!PyArg_ParseTuple(args, "|i:device_name", &dev)) return NULL;
    char buf[256];
    fc_error err;
    fc_error_clear(&err);
    if (fc_cuda_device_name(dev, buf, sizeof buf, &err) != FC_OK) return fc_py_raise(&err);
    return PyUnicode_FromString(buf);
}

/* convert(array, dtype) -> ndarray, converted on the GPU (host in, host out) */
static PyObject *py_convert(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *arr_obj, *dt_obj;
    if (!PyArg_ParseTuple(args, "OO:convert", &arr_obj, &dt_obj)) return NULL;
    if (!PyArray_Check(arr_obj)) {
        PyErr_SetString(PyExc_TypeError, "convert: array must be a numpy.ndarray");
        return NULL;
    }
    int sdt = fc_py_dtype_from_descr(PyArray_DESCR((PyArrayObject *)arr_obj));
    int ddt = fc_py_dtype_arg(dt_obj, "convert: dtype");
    if (ddt < 0) return NULL;
    if (sdt < 0 || !fc_dtype_is_float(sdt) || !fc_dtype_is_float(ddt)) {
        PyErr_SetString(PyExc_TypeError, "convert: dtypes must be float16, bfloat16, float32 "
                                         "or float64");
        return NULL;
    }
    PyArrayObject *src = (PyArrayObject *)PyArray_FromAny(
        arr_obj, NULL, 0, 0, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED, NULL);
    if (!src) return NULL;
    PyArray_Descr *dd = fc_py_descr_from_dtype(ddt);
    if (!dd) { Py_DECREF(src); return NULL; }
    PyArrayObject *out = (PyArrayObject *)PyArray_NewFromDescr(
        &PyArray_Type, dd, PyArray_NDIM(src), PyArray_DIMS(src), NULL, NULL, 0, NULL);
    if (!out) { Py_DECREF(src); return NULL; }
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_cuda_convert_host(PyArray_DATA(src), sdt, PyArray_DATA(out), ddt,
                              PyArray_SIZE(src), &err);
    Py_END_ALLOW_THREADS
    Py_DECREF(src);
    if (st != FC_OK) { Py_DECREF(out); return fc_py_raise(&err); }
    return (PyObject *)out;
}

static PyMethodDef methods[] = {
    {"device_count", py_device_count, METH_NOARGS,
     "device_count() -> (count, reason): usable CUDA devices, and why none when 0"},
    {"versions", py_versions, METH_NOARGS,
     "versions() -> (runtime, driver): the CUDA runtime built in and the driver's CUDA version"},
    {"device_name", py_device_name, METH_VARARGS, "device_name(device=0) -> str"},
    {"convert", py_convert, METH_VARARGS,
     "convert(array, dtype) -> ndarray: float conversion on the GPU (host in, host out)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "fusechat._C_cuda",
    "fusechat's CUDA kernels. Use the fusechat package rather than this module.", -1, methods,
};

PyMODINIT_FUNC PyInit__C_cuda(void) {
    import_array();
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    if (fc_py_errors_init() < 0 || fc_py_dtypes_init() < 0 || fc_py_cuda_add_loss(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
