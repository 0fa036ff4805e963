/* py_align.c - bindings of the align component (see fc_align.h). */
#include "py_common.h"

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};

int fc_py_add_align(PyObject *m) { return PyModule_AddFunctions(m, methods); }
