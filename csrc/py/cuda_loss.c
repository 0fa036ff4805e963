/* cuda_loss.c - bindings of the CUDA loss kernels (see fc_loss.h, csrc/cuda/). */
#include "py_common.h"
#include "../cuda/fc_cuda.h"

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};

int fc_py_cuda_add_loss(PyObject *m) { return PyModule_AddFunctions(m, methods); }
