/* py_merge.c - bindings of the merge component (see fc_merge.h). */

#include "py_common.h"

#include <string.h>

/* Set the fields of `dst` that a dict names, through the method table: the parameters of
 * mi with scope per_model (1: dst is a fc_merge_model_params, 0: a fc_merge_params). */
static int set_fields(PyObject *d, const fc_merge_method_info *mi, int per_model, void *dst) {
    const char *what = per_model ? "per-model parameter" : "parameter";
    if (!d || d == Py_None) return 0;
    if (!PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError, "merge_tensor: %ss must be a dict", what);
        return -1;
    }
    PyObject *key, *val;
    Py_ssize_t pos = 0;
    while (PyDict_Next(d, &pos, &key, &val)) {
        const char *k = PyUnicode_AsUTF8(key);
        if (!k) return -1;
        const fc_merge_param_info *pi = fc_merge_param_find(mi, k, per_model);
        if (!pi) {
            PyErr_Format(PyExc_ValueError, "merge_tensor: %s has no %s %R", mi->name, what, key);
            return -1;
        }
        if (pi->offset < 0) continue; /* accepted, no effect (int8_mask) */
        char *field = (char *)dst + pi->offset;
        if (pi->kind == FC_PARAM_FLOAT) {
            double v = PyFloat_AsDouble(val);
            if (v == -1.0 && PyErr_Occurred()) return -1;
            *(double *)field = v;
        } else {
            long v = PyLong_AsLong(val);
            if (v == -1 && PyErr_Occurred()) return -1;
            *(int *)field = (int)v;
        }
    }
    return 0;
}

/* One input's parameters from a dict of overrides (the others keep
 * fc_merge_model_params_init's defaults). */
static int parse_model(PyObject *d, const fc_merge_method_info *mi, fc_merge_model_params *mp) {
    fc_merge_model_params_init(mp);
    return set_fields(d, mi, 1, mp);
}

static PyArrayObject *as_input(PyObject *obj, const char *what, int *dt) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "merge_tensor: %s must be a NumPy array", what);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    *dt = fc_py_dtype_from_descr(PyArray_DESCR(a));
    if (*dt < 0 || !fc_dtype_is_float((fc_dtype)*dt)) {
        PyErr_Format(PyExc_TypeError,
                     "merge_tensor: %s must be float16, bfloat16, float32 or float64", what);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_Format(PyExc_ValueError, "merge_tensor: %s must be C-contiguous", what);
        return NULL;
    }
    return a;
}

/* ---- MergeContext: a fc_merge_ctx owned by a Python object ---- */

typedef struct {
    PyObject_HEAD
    fc_merge_ctx *ctx;
} MergeContext;

static PyTypeObject MergeContextType;
static PyObject *default_ctx; /* the one merge_tensor uses without ctx (notebooks) */

static int ctx_set_isa(MergeContext *self, PyObject *name_obj) {
    const char *name = PyUnicode_AsUTF8(name_obj);
    if (!name) return -1;
    if (fc_merge_ctx_set_isa(self->ctx, name) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "merge_set_isa: %R is not 'auto', 'portable' or an instruction set "
                     "this CPU has ('avx2', 'avx512')", name_obj);
        return -1;
    }
    return 0;
}

static PyObject *mctx_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"isa", "streaming", "keep_buffers", NULL};
    PyObject *isa = NULL;
    int streaming = 1, keep = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|U$pp:MergeContext", kwlist, &isa, &streaming,
                                     &keep))
        return NULL;
    MergeContext *self = (MergeContext *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    if (!(self->ctx = fc_merge_ctx_init())) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    if (isa && ctx_set_isa(self, isa) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    fc_merge_ctx_set_streaming(self->ctx, streaming);
    fc_merge_ctx_keep_buffers(self->ctx, keep);
    return (PyObject *)self;
}

static void mctx_dealloc(MergeContext *self) {
    fc_merge_ctx_free(self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *mctx_set_isa(MergeContext *self, PyObject *arg) {
    if (ctx_set_isa(self, arg) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *mctx_isa(MergeContext *self, PyObject *unused) {
    (void)unused;
    return PyUnicode_FromString(fc_merge_ctx_isa(self->ctx));
}

static PyObject *mctx_set_streaming(MergeContext *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    fc_merge_ctx_set_streaming(self->ctx, on);
    Py_RETURN_NONE;
}

static PyObject *mctx_keep_buffers(MergeContext *self, PyObject *arg) {
    int keep = PyObject_IsTrue(arg);
    if (keep < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS /* freeing kept buffers may take a while */
    fc_merge_ctx_keep_buffers(self->ctx, keep);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *mctx_stream_counts(MergeContext *self, PyObject *unused) {
    (void)unused;
    int64_t streamed, fell_back;
    fc_merge_ctx_stream_counts(self->ctx, &streamed, &fell_back);
    return Py_BuildValue("(LL)", (long long)streamed, (long long)fell_back);
}

static PyMethodDef mctx_methods[] = {
    {"set_isa", (PyCFunction)mctx_set_isa, METH_O,
     "set_isa(name): 'auto', 'avx512', 'avx2' or 'portable' kernels (the same bytes either way)"},
    {"isa", (PyCFunction)mctx_isa, METH_NOARGS, "the instruction set this context's kernels use"},
    {"set_streaming", (PyCFunction)mctx_set_streaming, METH_O,
     "set_streaming(on): the one-pass streaming top-k of TIES and SCE on big tensors (True, "
     "the default) or the exact multi-pass path (False); the same bytes either way"},
    {"keep_buffers", (PyCFunction)mctx_keep_buffers, METH_O,
     "keep_buffers(keep): keep the kernels' big buffers between tensors (True) or free them "
     "(False, the default)"},
    {"stream_counts", (PyCFunction)mctx_stream_counts, METH_NOARGS,
     "stream_counts() -> (streamed, fell_back): tensors merged with this context that the "
     "streaming path finished in one pass, and those where it fell back to the exact passes"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MergeContextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fusechat._C.MergeContext",
    .tp_basicsize = sizeof(MergeContext),
    .tp_dealloc = (destructor)mctx_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MergeContext(isa='auto', *, streaming=True, keep_buffers=False): what one merge "
              "keeps between tensors (fc_merge_ctx): kernel instruction set, streaming switch, "
              "streaming counters, kept buffers. One per run; merges with different contexts "
              "may run at once in threads.",
    .tp_methods = mctx_methods,
    .tp_new = mctx_new,
};

/* merge_tensor(method, base, inputs, out_dtype, models, params, seed, tensor_name, threads
 *              [, out[, ctx]]) models: one dict of per-model parameters (weight, density,
 * gamma, epsilon, scale; absent ones take their defaults) per input; params: a dict of
 * global parameters; out: an array to write the result into (returned), else a new one; ctx: the
 * MergeContext (None: the default one). */
static PyObject *py_merge_tensor(PyObject *self, PyObject *args) {
    (void)self;
    const char *method, *tname;
    PyObject *base_obj, *inputs, *out_dt_obj, *models, *params, *out_obj = Py_None;
    PyObject *ctx_obj = Py_None;
    unsigned long long seed;
    int threads;
    if (!PyArg_ParseTuple(args, "sOO!OO!OKsi|OO", &method, &base_obj, &PyList_Type, &inputs,
                          &out_dt_obj, &PyList_Type, &models, &params, &seed, &tname, &threads,
                          &out_obj, &ctx_obj))
        return NULL;
    if (ctx_obj == Py_None) ctx_obj = default_ctx;
    if (!PyObject_TypeCheck(ctx_obj, &MergeContextType)) {
        PyErr_SetString(PyExc_TypeError, "merge_tensor: ctx must be a MergeContext or None");
        return NULL;
    }
    fc_merge_ctx *ctx = ((MergeContext *)ctx_obj)->ctx;
    int m = fc_merge_method_from_name(method);
    if (m < 0) {
        PyErr_Format(PyExc_ValueError, "merge_tensor: unknown method %R", PyTuple_GET_ITEM(args, 0));
        return NULL;
    }
    const fc_merge_method_info *mi = fc_merge_method_info_of((fc_merge_method)m);
    fc_merge_params p;
    fc_merge_params_init(&p, (fc_merge_method)m);
    if (set_fields(params, mi, 0, &p) < 0) return NULL;
    p.seed = seed;
    p.tensor_key = fc_merge_tensor_key(tname);
    int out_dt = fc_py_dtype_arg(out_dt_obj, "out_dtype");
    if (out_dt < 0) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(inputs);
    if (PyList_GET_SIZE(models) != n) {
        PyErr_SetString(PyExc_ValueError, "merge_tensor: one models entry per input is needed");
        return NULL;
    }
    const void **ptrs = PyMem_Calloc((size_t)n + 1, sizeof(void *));
    fc_dtype *dts = PyMem_Calloc((size_t)n + 1, sizeof(fc_dtype));
    fc_merge_model_params *mps = PyMem_Calloc((size_t)n + 1, sizeof(fc_merge_model_params));
    PyObject *result = NULL;
    PyArrayObject *shape_src = NULL, *out = NULL;
    if (!ptrs || !dts || !mps) {
        PyErr_NoMemory();
        goto done;
    }
    int base_dt = FC_F32;
    const void *base = NULL;
    if (base_obj != Py_None) {
        PyArrayObject *b = as_input(base_obj, "base", &base_dt);
        if (!b) goto done;
        base = PyArray_DATA(b);
        shape_src = b;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        char what[32];
        snprintf(what, sizeof what, "tensors[%zd]", i);
        int dt;
        PyArrayObject *a = as_input(PyList_GET_ITEM(inputs, i), what, &dt);
        if (!a) goto done;
        if (!shape_src) shape_src = a;
        if (PyArray_SIZE(a) != PyArray_SIZE(shape_src)) {
            PyErr_Format(PyExc_ValueError, "merge_tensor: %s has %zd elements, expected %zd", what,
                         (Py_ssize_t)PyArray_SIZE(a), (Py_ssize_t)PyArray_SIZE(shape_src));
            goto done;
        }
        ptrs[i] = PyArray_DATA(a);
        dts[i] = (fc_dtype)dt;
        if (parse_model(PyList_GET_ITEM(models, i), mi, &mps[i]) < 0) goto done;
    }
    if (!shape_src) {
        PyErr_SetString(PyExc_ValueError, "merge_tensor: no tensors given");
        goto done;
    }
    p.models = mps;
    PyArray_Descr *descr = fc_py_descr_from_dtype((fc_dtype)out_dt);
    if (!descr) goto done;
    if (out_obj != Py_None) { /* the caller's array (reused between tensors) */
        Py_DECREF(descr);
        if (!PyArray_Check(out_obj) ||
            fc_py_dtype_from_descr(PyArray_DESCR((PyArrayObject *)out_obj)) != out_dt ||
            !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)out_obj) ||
            !PyArray_ISWRITEABLE((PyArrayObject *)out_obj) ||
            PyArray_SIZE((PyArrayObject *)out_obj) != PyArray_SIZE(shape_src)) {
            PyErr_SetString(PyExc_ValueError, "merge_tensor: out must be a writeable C-contiguous "
                                              "array of out_dtype with one element per input element");
            goto done;
        }
        out = (PyArrayObject *)out_obj;
        Py_INCREF(out);
    } else {
        out = (PyArrayObject *)PyArray_NewFromDescr(&PyArray_Type, descr, PyArray_NDIM(shape_src),
                                                    PyArray_DIMS(shape_src), NULL, NULL, 0, NULL);
    }
    if (!out) goto done;
    int ndim = PyArray_NDIM(shape_src);
    int64_t shape[64];
    for (int d = 0; d < ndim && d < 64; d++) shape[d] = PyArray_DIMS(shape_src)[d];
    fc_error err;
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_merge_tensor(ctx, &p, base, (fc_dtype)base_dt, ptrs, dts, (int)n, ndim, shape,
                         PyArray_DATA(out), (fc_dtype)out_dt, threads, &err);
    Py_END_ALLOW_THREADS
    if (st != FC_OK) {
        fc_py_raise(&err);
        goto done;
    }
    result = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(out);
    PyMem_Free(ptrs);
    PyMem_Free(dts);
    PyMem_Free(mps);
    return result;
}

/* One parameter's row as a dict. */
static PyObject *param_dict(const fc_merge_param_info *pi) {
    static const char *const kinds[] = {"float", "int", "bool", "choice"};
    char rule[64];
    fc_merge_param_ok(pi, 0.0, rule, sizeof rule);
    PyObject *def = pi->kind == FC_PARAM_FLOAT  ? PyFloat_FromDouble(pi->def)
                    : pi->kind == FC_PARAM_BOOL ? PyBool_FromLong(pi->def != 0)
                                                : PyLong_FromLong((long)pi->def);
    if (!def) return NULL;
    return Py_BuildValue("{s:s,s:O,s:s,s:N,s:O,s:d,s:d,s:O,s:O,s:z,s:s,s:O}", "name", pi->name,
                         "per_model", pi->per_model ? Py_True : Py_False, "kind", kinds[pi->kind],
                         "default", def, "required", pi->required ? Py_True : Py_False, "lo",
                         pi->lo, "hi", pi->hi, "lo_open", pi->lo_open ? Py_True : Py_False,
                         "hi_open", pi->hi_open ? Py_True : Py_False, "choices", pi->choices,
                         "rule", rule, "ignored", pi->offset < 0 ? Py_True : Py_False);
}

/* One method's row as a dict. */
static PyObject *method_dict(const fc_merge_method_info *mi) {
    static const char *const bases[] = {"none", "required", "optional"};
    PyObject *params = PyList_New(mi->nparams);
    for (int i = 0; params && i < mi->nparams; i++) {
        PyObject *d = param_dict(&mi->params[i]);
        if (!d) {
            Py_CLEAR(params);
            break;
        }
        PyList_SET_ITEM(params, i, d);
    }
    if (!params) return NULL;
    PyObject *max = mi->max_models < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(mi->max_models);
    if (!max) {
        Py_DECREF(params);
        return NULL;
    }
    return Py_BuildValue("{s:s,s:s,s:i,s:N,s:O,s:O,s:N}", "name", mi->name, "base",
                         bases[mi->base], "min_models", mi->min_models, "max_models", max,
                         "randomized", mi->randomized ? Py_True : Py_False, "sparsifies",
                         mi->sparsifies ? Py_True : Py_False, "params", params);
}

/* merge_methods() -> [dict]: the method table (fc_merge_method_info), in enum order. */
static PyObject *py_merge_methods(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *l = PyList_New(FC_MERGE_METHOD_COUNT);
    for (int i = 0; l && i < FC_MERGE_METHOD_COUNT; i++) {
        PyObject *d = method_dict(fc_merge_method_info_of((fc_merge_method)i));
        if (!d) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, d);
    }
    return l;
}

static const fc_merge_method_info *method_arg(const char *name) {
    int m = fc_merge_method_from_name(name);
    if (m < 0) PyErr_Format(PyExc_ValueError, "unknown merge method '%s'", name);
    return m < 0 ? NULL : fc_merge_method_info_of((fc_merge_method)m);
}

/* merge_param_ok(method, name, value) -> bool: value within the table's rule for the
 * parameter `name` of `method`. */
static PyObject *py_merge_param_ok(PyObject *self, PyObject *args) {
    (void)self;
    const char *method, *name;
    double v;
    if (!PyArg_ParseTuple(args, "ssd", &method, &name, &v)) return NULL;
    const fc_merge_method_info *mi = method_arg(method);
    if (!mi) return NULL;
    const fc_merge_param_info *pi = fc_merge_param_find(mi, name, -1);
    if (!pi) return PyErr_Format(PyExc_ValueError, "%s has no parameter '%s'", method, name);
    return PyBool_FromLong(fc_merge_param_ok(pi, v, NULL, 0));
}

/* merge_check_params(method, models, params) -> None, or (model index or -1, why): the
 * parameters a merge_tensor call would get, checked by fc_merge_check_params. */
static PyObject *py_merge_check_params(PyObject *self, PyObject *args) {
    (void)self;
    const char *method;
    PyObject *models, *params;
    if (!PyArg_ParseTuple(args, "sO!O", &method, &PyList_Type, &models, &params)) return NULL;
    const fc_merge_method_info *mi = method_arg(method);
    if (!mi) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(models);
    fc_merge_model_params *mps = PyMem_Calloc((size_t)n + 1, sizeof *mps);
    if (!mps) return PyErr_NoMemory();
    fc_merge_params p;
    fc_merge_params_init(&p, (fc_merge_method)fc_merge_method_from_name(method));
    PyObject *result = NULL;
    if (set_fields(params, mi, 0, &p) < 0) goto done;
    for (Py_ssize_t i = 0; i < n; i++)
        if (parse_model(PyList_GET_ITEM(models, i), mi, &mps[i]) < 0) goto done;
    p.models = mps;
    fc_error err;
    int bad;
    if (fc_merge_check_params(&p, (int)n, &bad, &err) == FC_OK)
        result = Py_NewRef(Py_None);
    else
        result = Py_BuildValue("(is)", bad, err.msg);
done:
    PyMem_Free(mps);
    return result;
}

/* The default context's settings, as module functions (tests, notebooks). */
static PyObject *py_merge_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    return mctx_set_isa((MergeContext *)default_ctx, arg);
}

static PyObject *py_merge_isa(PyObject *self, PyObject *unused) {
    (void)self;
    return mctx_isa((MergeContext *)default_ctx, unused);
}

static PyObject *py_merge_set_streaming(PyObject *self, PyObject *arg) {
    (void)self;
    return mctx_set_streaming((MergeContext *)default_ctx, arg);
}

static PyObject *py_merge_stream_counts(PyObject *self, PyObject *unused) {
    (void)self;
    return mctx_stream_counts((MergeContext *)default_ctx, unused);
}

static PyMethodDef methods[] = {
    {"merge_tensor", py_merge_tensor, METH_VARARGS,
     "merge_tensor(method, base, inputs, out_dtype, models, params, seed, tensor_name, threads"
     "[, out[, ctx]]) -> ndarray: one tensor merged by fc_merge_tensor with the MergeContext "
     "ctx (None: the default one; see fusechat.merge.merge_tensors)."},
    {"merge_methods", py_merge_methods, METH_NOARGS,
     "merge_methods() -> [dict]: the method table of the C core (name, base, min_models, "
     "max_models, randomized, sparsifies, params: [{name, per_model, kind, default, required, "
     "lo, hi, lo_open, hi_open, choices, rule, ignored}]), in enum order"},
    {"merge_param_ok", py_merge_param_ok, METH_VARARGS,
     "merge_param_ok(method, name, value) -> bool: value obeys the table's rule for it"},
    {"merge_check_params", py_merge_check_params, METH_VARARGS,
     "merge_check_params(method, models, params) -> None or (model index or -1, why): "
     "fc_merge_check_params over merge_tensor's arguments"},
    {"merge_set_isa", py_merge_set_isa, METH_O,
     "merge_set_isa(name): the default MergeContext's set_isa"},
    {"merge_isa", py_merge_isa, METH_NOARGS, "the default MergeContext's isa()"},
    {"merge_set_streaming", py_merge_set_streaming, METH_O,
     "merge_set_streaming(on): the default MergeContext's set_streaming"},
    {"merge_stream_counts", py_merge_stream_counts, METH_NOARGS,
     "merge_stream_counts() -> (streamed, fell_back): the default MergeContext's stream_counts"},
    {NULL, NULL, 0, NULL},
};

int fc_py_add_merge(PyObject *m) {
    if (PyType_Ready(&MergeContextType) < 0) return -1;
    if (PyModule_AddObjectRef(m, "MergeContext", (PyObject *)&MergeContextType) < 0) return -1;
    if (!default_ctx && !(default_ctx = PyObject_CallNoArgs((PyObject *)&MergeContextType)))
        return -1;
    if (PyModule_AddObjectRef(m, "default_merge_context", default_ctx) < 0) return -1;
    return PyModule_AddFunctions(m, methods);
}
