/* py_merge.c - bindings of the merge component (see fc_merge.h). */
#include "py_common.h"

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};

int fc_py_add_merge(PyObject *m) { return PyModule_AddFunctions(m, methods); }
