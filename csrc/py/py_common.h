/* py_common.h - shared by the CPython binding files of fusechat._C and fusechat._C_cuda.
 * Bindings only convert arguments, release the GIL around the C core, and turn fc_status
 * into exceptions; no algorithm lives in csrc/py. */
#ifndef FC_PY_COMMON_H
#define FC_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PY_ARRAY_UNIQUE_SYMBOL FC_PY_ARRAY_API
#ifndef FC_PY_IMPORT_ARRAY /* defined only in the file that calls import_array() */
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "fusechat.h"

/* Raise the Python exception that err->code maps to (see fc_status); returns NULL.
 * Must be called with the GIL held. */
PyObject *fc_py_raise(const fc_error *err);
/* Import fusechat.errors and keep its exception classes; called once at module init. */
int fc_py_errors_init(void);

/* NumPy <-> fc_dtype. ml_dtypes supplies bfloat16 and the float8 types. */
int fc_py_dtypes_init(void);
/* -1 (no exception set) if the NumPy dtype has no fc_dtype. Byte-swapped dtypes map to -1. */
int fc_py_dtype_from_descr(PyArray_Descr *d);
/* New reference to the NumPy dtype for dt; NULL with an exception if none. */
PyArray_Descr *fc_py_descr_from_dtype(fc_dtype dt);
/* Parse a dtype argument: an fc dtype name ("BF16"), a NumPy dtype or anything
 * np.dtype() accepts. Returns -1 with TypeError set, naming `argname`, if unsupported. */
int fc_py_dtype_arg(PyObject *obj, const char *argname);

/* Per-component registration, one per csrc/py/<component>.c file. */
int fc_py_add_dtype(PyObject *m);
int fc_py_add_safetensors(PyObject *m);
int fc_py_add_align(PyObject *m);
int fc_py_add_loss(PyObject *m);
int fc_py_add_merge(PyObject *m);

#endif
