/* py_errors.c - the one mapping from fc_status to Python exceptions. */
#include "py_common.h"

static PyObject *SafetensorsError, *TokenizerError, *FormatError, *CudaError;

int fc_py_errors_init(void) {
    PyObject *mod = PyImport_ImportModule("fusechat.errors");
    if (!mod) return -1;
    SafetensorsError = PyObject_GetAttrString(mod, "SafetensorsError");
    TokenizerError = PyObject_GetAttrString(mod, "TokenizerError");
    FormatError = PyObject_GetAttrString(mod, "FormatError");
    CudaError = PyObject_GetAttrString(mod, "CudaError");
    Py_DECREF(mod);
    return (SafetensorsError && TokenizerError && FormatError && CudaError) ? 0 : -1;
}

/* exc(msg) with .rule and .filename attributes set when the error carries them */
static PyObject *raise_with_attrs(PyObject *type, const fc_error *err) {
    PyObject *exc = PyObject_CallFunction(type, "s", err->msg);
    if (!exc) return NULL;
    PyObject *rule = err->rule[0] ? PyUnicode_FromString(err->rule) : Py_NewRef(Py_None);
    PyObject *path = err->path[0] ? PyUnicode_DecodeFSDefault(err->path) : Py_NewRef(Py_None);
    if (rule && path) {
        PyObject_SetAttrString(exc, "rule", rule);
        PyObject_SetAttrString(exc, "filename", path);
    }
    Py_XDECREF(rule);
    Py_XDECREF(path);
    PyErr_SetObject(type, exc);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *raise_oserror(PyObject *type, int errnum, const fc_error *err) {
    PyObject *exc = err->path[0]
        ? PyObject_CallFunction(type, "isN", errnum, err->msg, PyUnicode_DecodeFSDefault(err->path))
        : PyObject_CallFunction(type, "is", errnum, err->msg);
    if (!exc) return NULL;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

PyObject *fc_py_raise(const fc_error *err) {
    const char *msg = err->msg[0] ? err->msg : fc_status_name(err->code);
    switch (err->code) {
    case FC_OK:
        PyErr_SetString(PyExc_SystemError, "fusechat: error raised with FC_OK status");
        return NULL;
    case FC_ERR_NOMEM:       PyErr_SetString(PyExc_MemoryError, msg); return NULL;
    case FC_ERR_IO:          return raise_oserror(PyExc_OSError, err->sys_errno, err);
    case FC_ERR_EXISTS:      return raise_oserror(PyExc_FileExistsError, EEXIST, err);
    case FC_ERR_VALUE:       PyErr_SetString(PyExc_ValueError, msg); return NULL;
    case FC_ERR_TYPE:        PyErr_SetString(PyExc_TypeError, msg); return NULL;
    case FC_ERR_SAFETENSORS: return raise_with_attrs(SafetensorsError, err);
    case FC_ERR_TOKENIZER:   return raise_with_attrs(TokenizerError, err);
    case FC_ERR_FORMAT:      return raise_with_attrs(FormatError, err);
    case FC_ERR_CUDA:        return raise_with_attrs(CudaError, err);
    case FC_ERR_UNSUPPORTED: PyErr_SetString(PyExc_NotImplementedError, msg); return NULL;
    case FC_ERR_INTERNAL:    break;
    }
    PyErr_Format(PyExc_RuntimeError, "fusechat internal error (please report): %s", msg);
    return NULL;
}
