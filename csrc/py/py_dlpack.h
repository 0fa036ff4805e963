/* py_dlpack.h - tensor intake for the bindings: NumPy arrays directly, anything else
 * (torch CPU/CUDA tensors, JAX, CuPy...) through DLPack, without linking the producer. */
#ifndef FC_PY_DLPACK_H
#define FC_PY_DLPACK_H

#include "py_common.h"

#define FC_PY_MAX_DIMS 8

typedef struct fc_py_tensor {
    void     *data;          /* first element (byte_offset applied); NULL when empty */
    fc_dtype  dtype;
    int       ndim;
    int64_t   shape[FC_PY_MAX_DIMS];
    int       device_type;   /* FC_DL_CPU, FC_DL_CUDA, ... (1 = CPU for NumPy arrays) */
    int       device_id;
    /* ownership (private) */
    PyObject *array;         /* NumPy path: a reference to the array */
    PyObject *capsule;       /* DLPack path: the renamed capsule */
    void     *managed;
    int       versioned;
} fc_py_tensor;

/* Take obj as a C-contiguous tensor. `writable` refuses read-only inputs. `stream` is the
 * consumer's CUDA stream handed to a CUDA producer's __dlpack__ (0 means the legacy default
 * stream, passed as 1). Returns 0, or -1 with an exception naming `argname`. Release with
 * fc_py_tensor_release (GIL held) whatever the outcome. */
int fc_py_tensor_get(PyObject *obj, const char *argname, int writable, intptr_t stream,
                     fc_py_tensor *t);
void fc_py_tensor_release(fc_py_tensor *t);

/* Number of elements (product of the shape). */
int64_t fc_py_tensor_numel(const fc_py_tensor *t);

#endif
