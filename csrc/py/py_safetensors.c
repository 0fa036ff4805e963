/* py_safetensors.c - bindings of the safetensors component (see fc_safetensors.h). */
#include "py_common.h"

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};

int fc_py_add_safetensors(PyObject *m) { return PyModule_AddFunctions(m, methods); }
