/* module.c - fusechat._C: the CPU core's Python module. Each component registers its own
 * functions and types (csrc/py/py_<component>.c). */
#define FC_PY_IMPORT_ARRAY
#include "py_common.h"

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "fusechat._C",
    "fusechat's C core (CPU). Use the fusechat package rather than this module.", -1, NULL,
};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    if (fc_py_errors_init() < 0 || fc_py_dtypes_init() < 0 || fc_py_add_dtype(m) < 0 ||
        fc_py_add_safetensors(m) < 0 || fc_py_add_align(m) < 0 || fc_py_add_loss(m) < 0 ||
        fc_py_add_merge(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
