/* py_loss.c - bindings of the loss component (see fc_loss.h). */
#include "py_common.h"

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};

int fc_py_add_loss(PyObject *m) { return PyModule_AddFunctions(m, methods); }
