/* py_align.c - bindings of the align component (see fc_align.h): vocabularies, sequence
 * alignment, co-alignment counts, vocabulary maps, distribution alignment. Handles are
 * capsules wrapped by fusechat/vocab.py and fusechat/align.py. */
#include "py_common.h"

#define CAP_VOCAB  "fusechat.vocab"
#define CAP_CTX    "fusechat.align_ctx"
#define CAP_COUNTS "fusechat.counts"
#define CAP_PROJ   "fusechat.project_ctx"

/* ------------------------------------------------------------------------------------ */
/* helpers */

static void vocab_destroy(PyObject *cap) { fc_vocab_free(PyCapsule_GetPointer(cap, CAP_VOCAB)); }
static void counts_destroy(PyObject *cap) { fc_counts_free(PyCapsule_GetPointer(cap, CAP_COUNTS)); }
static void ctx_destroy(PyObject *cap) {
    fc_align_ctx_free(PyCapsule_GetPointer(cap, CAP_CTX));
    Py_XDECREF((PyObject *)PyCapsule_GetContext(cap)); /* the vocab capsules it borrows */
}

static void proj_destroy(PyObject *cap) {
    fc_project_ctx_free(PyCapsule_GetPointer(cap, CAP_PROJ));
    Py_XDECREF((PyObject *)PyCapsule_GetContext(cap)); /* the vocab capsules it borrows */
}

static fc_vocab_t *get_vocab(PyObject *o) { return PyCapsule_GetPointer(o, CAP_VOCAB); }
static fc_counts_t *get_counts(PyObject *o) { return PyCapsule_GetPointer(o, CAP_COUNTS); }
static fc_align_ctx_t *get_ctx(PyObject *o) { return PyCapsule_GetPointer(o, CAP_CTX); }

/* a C-contiguous array of `type` (safe casts only), or NULL with TypeError naming it */
static PyArrayObject *as_array(PyObject *o, int type, int ndim, const char *name) {
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_OTF(o, type, NPY_ARRAY_IN_ARRAY);
    if (!a) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be an array of %s", name,
                     type == NPY_INT64 ? "integers" : type == NPY_INT32 ? "int32 ids"
                                                                        : "float32 values");
        return NULL;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimension(s), got %d", name, ndim,
                     PyArray_NDIM(a));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static PyObject *new_array(int type, npy_intp n, void *copy_from) {
    PyObject *a = PyArray_SimpleNew(1, &n, type);
    if (a && copy_from && n) memcpy(PyArray_DATA((PyArrayObject *)a), copy_from,
                                    (size_t)n * PyArray_ITEMSIZE((PyArrayObject *)a));
    return a;
}

static PyObject *alignment_to_py(fc_alignment *al) {
    PyObject *ip = new_array(NPY_INT64, (npy_intp)al->m + 1, al->indptr);
    PyObject *ix = new_array(NPY_INT64, (npy_intp)al->indptr[al->m], al->indices);
    fc_alignment_free(al);
    if (!ip || !ix) { Py_XDECREF(ip); Py_XDECREF(ix); return NULL; }
    return Py_BuildValue("NN", ip, ix);
}

/* ------------------------------------------------------------------------------------ */
/* vocabularies */

static PyObject *py_vocab_load(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *path;
    if (!PyArg_ParseTuple(args, "O&", PyUnicode_FSConverter, &path)) return NULL;
    fc_vocab_t *v = NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_vocab_load(PyBytes_AS_STRING(path), &v, &err);
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    if (st) return fc_py_raise(&err);
    return PyCapsule_New(v, CAP_VOCAB, vocab_destroy);
}

static PyObject *py_vocab_parse(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer tok, conf = {0}, spec = {0};
    const char *tok_name, *conf_name, *spec_name;
    if (!PyArg_ParseTuple(args, "y*sz*sz*s", &tok, &tok_name, &conf, &conf_name, &spec,
                          &spec_name))
        return NULL;
    fc_vocab_t *v = NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_vocab_parse(tok.buf, (size_t)tok.len, tok_name, conf.buf, (size_t)conf.len,
                        conf_name, spec.buf, (size_t)spec.len, spec_name, &v, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&tok);
    if (conf.obj) PyBuffer_Release(&conf);
    if (spec.obj) PyBuffer_Release(&spec);
    if (st) return fc_py_raise(&err);
    return PyCapsule_New(v, CAP_VOCAB, vocab_destroy);
}

static PyObject *py_vocab_info(PyObject *self, PyObject *cap) {
    (void)self;
    fc_vocab_t *v = get_vocab(cap);
    if (!v) return NULL;
    return Py_BuildValue("{s:L,s:i,s:i,s:s,s:i,s:(LLLLL)}", "size", (long long)fc_vocab_size(v),
                         "model", (int)fc_vocab_model_type(v), "style", (int)fc_vocab_text_style(v),
                         "marker", fc_vocab_marker(v), "prefix_space",
                         fc_vocab_adds_prefix_space(v), "roles",
                         (long long)fc_vocab_role(v, FC_ROLE_BOS),
                         (long long)fc_vocab_role(v, FC_ROLE_EOS),
                         (long long)fc_vocab_role(v, FC_ROLE_UNK),
                         (long long)fc_vocab_role(v, FC_ROLE_PAD),
                         (long long)fc_vocab_role(v, FC_ROLE_EOT));
}

/* (bytes, offsets) of pieces (0), decoded strings (1) or canonical bytes (2) */
static PyObject *py_vocab_strings(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    int which;
    if (!PyArg_ParseTuple(args, "Oi", &cap, &which)) return NULL;
    fc_vocab_t *v = get_vocab(cap);
    if (!v) return NULL;
    fc_strings s = which == 0 ? fc_vocab_pieces(v) : which == 1 ? fc_vocab_decoded(v)
                                                                 : fc_vocab_canonical(v);
    int64_t V = fc_vocab_size(v);
    PyObject *data = PyBytes_FromStringAndSize(s.data, (Py_ssize_t)s.offsets[V]);
    PyObject *offs = new_array(NPY_INT64, (npy_intp)V + 1, (void *)s.offsets);
    if (!data || !offs) { Py_XDECREF(data); Py_XDECREF(offs); return NULL; }
    return Py_BuildValue("NN", data, offs);
}

static PyObject *py_vocab_flags(PyObject *self, PyObject *cap) {
    (void)self;
    fc_vocab_t *v = get_vocab(cap);
    if (!v) return NULL;
    return new_array(NPY_UINT8, (npy_intp)fc_vocab_size(v), (void *)fc_vocab_flags(v));
}

static PyObject *py_vocab_find(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    const char *s;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "Os#", &cap, &s, &n)) return NULL;
    fc_vocab_t *v = get_vocab(cap);
    if (!v) return NULL;
    return PyLong_FromLongLong((long long)fc_vocab_find(v, s, (size_t)n));
}

static PyObject *py_vocab_set_marker(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    const char *s;
    if (!PyArg_ParseTuple(args, "Os", &cap, &s)) return NULL;
    fc_vocab_t *v = get_vocab(cap);
    if (!v) return NULL;
    fc_error err;
    fc_error_clear(&err);
    if (fc_vocab_set_marker(v, s, &err)) return fc_py_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *py_vocab_same(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *a, *b;
    if (!PyArg_ParseTuple(args, "OO", &a, &b)) return NULL;
    fc_vocab_t *va = get_vocab(a), *vb = va ? get_vocab(b) : NULL;
    if (!vb) return NULL;
    return PyBool_FromLong(fc_vocab_same(va, vb));
}

static PyObject *py_levenshtein(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *a, *b;
    if (!PyArg_ParseTuple(args, "UU", &a, &b)) return NULL;
    Py_UCS4 *ua = PyUnicode_AsUCS4Copy(a), *ub = ua ? PyUnicode_AsUCS4Copy(b) : NULL;
    if (!ub) { PyMem_Free(ua); return NULL; }
    int64_t d = fc_levenshtein((const uint32_t *)ua, PyUnicode_GET_LENGTH(a),
                               (const uint32_t *)ub, PyUnicode_GET_LENGTH(b));
    PyMem_Free(ua);
    PyMem_Free(ub);
    if (d < 0) return PyErr_NoMemory();
    return PyLong_FromLongLong((long long)d);
}

static PyObject *py_align_set_simd(PyObject *self, PyObject *arg) {
    (void)self;
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    return PyBool_FromLong(fc_align_set_simd(on));
}

/* ------------------------------------------------------------------------------------ */
/* sequence alignment */

/* A context of a vocabulary pair (sequence alignment or projection) in a capsule that keeps
 * the two vocabulary capsules alive; built with the GIL released. */
typedef struct pair_kind {
    const char *name;
    PyCapsule_Destructor destroy;
    fc_status (*make)(const fc_vocab_t *src, const fc_vocab_t *pivot, void **out, fc_error *err);
    void (*drop)(void *ctx);
} pair_kind;

static PyObject *pair_ctx(PyObject *args, const pair_kind *kind) {
    PyObject *a, *b;
    if (!PyArg_ParseTuple(args, "OO", &a, &b)) return NULL;
    fc_vocab_t *src = get_vocab(a), *piv = src ? get_vocab(b) : NULL;
    if (!piv) return NULL;
    void *ctx = NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kind->make(src, piv, &ctx, &err);
    Py_END_ALLOW_THREADS
    if (st) return fc_py_raise(&err);
    PyObject *cap = PyCapsule_New(ctx, kind->name, kind->destroy);
    PyObject *keep = Py_BuildValue("(OO)", a, b);
    if (!cap || !keep || PyCapsule_SetContext(cap, keep)) {
        Py_XDECREF(keep);
        if (cap) Py_DECREF(cap);
        else kind->drop(ctx);
        return NULL;
    }
    return cap;
}

/* py_<name>(self, (src vocab, pivot vocab)) -> a capsule of a TYPE made by NEW, freed by FREE */
#define PAIR_CTX_FUNCTION(name, CAP, DESTROY, TYPE, NEW, FREE)                                 \
    static fc_status make_##name(const fc_vocab_t *src, const fc_vocab_t *pivot, void **out,  \
                                 fc_error *err) {                                             \
        TYPE *c = NULL;                                                                       \
        fc_status st = NEW(src, pivot, &c, err);                                              \
        *out = c;                                                                             \
        return st;                                                                            \
    }                                                                                         \
    static void drop_##name(void *c) { FREE(c); }                                             \
    static PyObject *py_##name(PyObject *self, PyObject *args) {                              \
        (void)self;                                                                           \
        static const pair_kind kind = {CAP, DESTROY, make_##name, drop_##name};               \
        return pair_ctx(args, &kind);                                                         \
    }

PAIR_CTX_FUNCTION(align_ctx, CAP_CTX, ctx_destroy, fc_align_ctx_t, fc_align_ctx_new,
                  fc_align_ctx_free)

/* align(ctx, src_ids, pivot_ids, method (0 dtw, 1 offsets), fallback_dtw) */
static PyObject *py_align(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *so, *po;
    int method, fallback;
    if (!PyArg_ParseTuple(args, "OOOii", &cap, &so, &po, &method, &fallback)) return NULL;
    fc_align_ctx_t *ctx = get_ctx(cap);
    if (!ctx) return NULL;
    PyArrayObject *s = as_array(so, NPY_INT64, 1, "src_ids");
    PyArrayObject *p = s ? as_array(po, NPY_INT64, 1, "pivot_ids") : NULL;
    if (!p) { Py_XDECREF(s); return NULL; }
    fc_alignment al;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    int used = 0;
    Py_BEGIN_ALLOW_THREADS
    if (method == 0)
        st = fc_align_dtw(ctx, PyArray_DATA(s), PyArray_SIZE(s), PyArray_DATA(p), PyArray_SIZE(p),
                          &al, &err);
    else
        st = fc_align_offsets(ctx, PyArray_DATA(s), PyArray_SIZE(s), PyArray_DATA(p),
                              PyArray_SIZE(p), fallback, &used, &al, &err);
    Py_END_ALLOW_THREADS
    Py_DECREF(s);
    Py_DECREF(p);
    if (st) return fc_py_raise(&err);
    PyObject *r = alignment_to_py(&al);
    return r ? Py_BuildValue("Ni", r, used) : NULL;
}

/* ------------------------------------------------------------------------------------ */
/* counts (the GIL is held: a counts object is not safe to update from two threads) */

static PyObject *py_counts_new(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    fc_counts_t *c = fc_counts_new();
    if (!c) return PyErr_NoMemory();
    return PyCapsule_New(c, CAP_COUNTS, counts_destroy);
}

static PyObject *py_counts_nnz(PyObject *self, PyObject *cap) {
    (void)self;
    fc_counts_t *c = get_counts(cap);
    return c ? PyLong_FromLongLong((long long)fc_counts_nnz(c)) : NULL;
}

static PyObject *py_counts_add_alignment(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *so, *po, *ipo, *ixo;
    if (!PyArg_ParseTuple(args, "OOOOO", &cap, &so, &po, &ipo, &ixo)) return NULL;
    fc_counts_t *c = get_counts(cap);
    if (!c) return NULL;
    PyArrayObject *s = as_array(so, NPY_INT64, 1, "src_ids");
    PyArrayObject *p = s ? as_array(po, NPY_INT64, 1, "pivot_ids") : NULL;
    PyArrayObject *ip = p ? as_array(ipo, NPY_INT64, 1, "indptr") : NULL;
    PyArrayObject *ix = ip ? as_array(ixo, NPY_INT64, 1, "indices") : NULL;
    PyObject *ret = NULL;
    if (!ix) goto done;
    if (PyArray_SIZE(ip) != PyArray_SIZE(p) + 1
        || ((int64_t *)PyArray_DATA(ip))[PyArray_SIZE(p)] != PyArray_SIZE(ix)) {
        PyErr_SetString(PyExc_ValueError, "alignment indptr must have len(pivot_ids) + 1 "
                        "entries ending at len(indices)");
        goto done;
    }
    fc_alignment al = {PyArray_DATA(ip), PyArray_DATA(ix), PyArray_SIZE(p)};
    fc_error err;
    fc_error_clear(&err);
    if (fc_counts_add_alignment(c, PyArray_DATA(s), PyArray_SIZE(s), PyArray_DATA(p),
                                PyArray_SIZE(p), &al, &err)) {
        fc_py_raise(&err);
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    Py_XDECREF(s); Py_XDECREF(p); Py_XDECREF(ip); Py_XDECREF(ix);
    return ret;
}

static PyObject *py_counts_add_coo(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *po, *so, *co;
    if (!PyArg_ParseTuple(args, "OOOO", &cap, &po, &so, &co)) return NULL;
    fc_counts_t *c = get_counts(cap);
    if (!c) return NULL;
    PyArrayObject *p = as_array(po, NPY_INT64, 1, "pivot ids");
    PyArrayObject *s = p ? as_array(so, NPY_INT64, 1, "source ids") : NULL;
    PyArrayObject *n = s ? as_array(co, NPY_UINT64, 1, "counts") : NULL;
    PyObject *ret = NULL;
    if (!n) goto done;
    npy_intp len = PyArray_SIZE(p);
    if (PyArray_SIZE(s) != len || PyArray_SIZE(n) != len) {
        PyErr_SetString(PyExc_ValueError, "pivot ids, source ids and counts differ in length");
        goto done;
    }
    fc_error err;
    fc_error_clear(&err);
    for (npy_intp k = 0; k < len; k++) {
        if (fc_counts_add(c, ((int64_t *)PyArray_DATA(p))[k], ((int64_t *)PyArray_DATA(s))[k],
                          ((uint64_t *)PyArray_DATA(n))[k], &err)) {
            fc_py_raise(&err);
            goto done;
        }
    }
    ret = Py_NewRef(Py_None);
done:
    Py_XDECREF(p); Py_XDECREF(s); Py_XDECREF(n);
    return ret;
}

static PyObject *py_counts_merge(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *a, *b;
    if (!PyArg_ParseTuple(args, "OO", &a, &b)) return NULL;
    fc_counts_t *ca = get_counts(a), *cb = ca ? get_counts(b) : NULL;
    if (!cb) return NULL;
    fc_error err;
    fc_error_clear(&err);
    if (fc_counts_merge(ca, cb, &err)) return fc_py_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *py_counts_export(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap;
    int by_source;
    if (!PyArg_ParseTuple(args, "Op", &cap, &by_source)) return NULL;
    fc_counts_t *c = get_counts(cap);
    if (!c) return NULL;
    npy_intp n = (npy_intp)fc_counts_nnz(c);
    PyObject *p = new_array(NPY_INT64, n, NULL), *s = new_array(NPY_INT64, n, NULL);
    PyObject *v = new_array(NPY_UINT64, n, NULL);
    if (!p || !s || !v) goto fail;
    fc_error err;
    fc_error_clear(&err);
    if (fc_counts_export(c, by_source, PyArray_DATA((PyArrayObject *)p),
                         PyArray_DATA((PyArrayObject *)s), PyArray_DATA((PyArrayObject *)v),
                         &err)) {
        fc_py_raise(&err);
        goto fail;
    }
    return Py_BuildValue("NNN", p, s, v);
fail:
    Py_XDECREF(p); Py_XDECREF(s); Py_XDECREF(v);
    return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* vocabulary maps */

static PyObject *py_vocab_map(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *a, *b, *cnt;
    int mode, roles, nthreads;
    if (!PyArg_ParseTuple(args, "OOiOii", &a, &b, &mode, &cnt, &roles, &nthreads)) return NULL;
    fc_vocab_t *src = get_vocab(a), *piv = src ? get_vocab(b) : NULL;
    if (!piv) return NULL;
    fc_counts_t *counts = NULL;
    if (cnt != Py_None && !(counts = get_counts(cnt))) return NULL;
    PyObject *out = new_array(NPY_INT32, (npy_intp)fc_vocab_size(src), NULL);
    if (!out) return NULL;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_vocab_map(src, piv, (fc_map_mode)mode, counts, roles, nthreads,
                      PyArray_DATA((PyArrayObject *)out), &err);
    Py_END_ALLOW_THREADS
    if (st) { Py_DECREF(out); return fc_py_raise(&err); }
    return out;
}

/* ------------------------------------------------------------------------------------ */
/* distribution alignment */

static PyObject *py_align_distributions(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *so, *po, *ipo, *ixo, *tio, *tlo, *emo, *mo;
    int mode, multi;
    if (!PyArg_ParseTuple(args, "OiiOOOOOOOO", &cap, &mode, &multi, &so, &po, &ipo, &ixo, &tio,
                          &tlo, &emo, &mo))
        return NULL;
    fc_align_ctx_t *ctx = get_ctx(cap);
    if (!ctx) return NULL;
    PyArrayObject *s = NULL, *p = NULL, *ip = NULL, *ix = NULL, *ti = NULL, *tl = NULL;
    PyArrayObject *em = NULL, *mp = NULL;
    PyObject *offs = NULL, *ids = NULL, *lg = NULL, *ret = NULL;
    if (!(s = as_array(so, NPY_INT64, 1, "src_ids"))
        || !(p = as_array(po, NPY_INT64, 1, "pivot_ids"))
        || !(ip = as_array(ipo, NPY_INT64, 1, "indptr"))
        || !(ix = as_array(ixo, NPY_INT64, 1, "indices"))
        || !(ti = as_array(tio, NPY_INT64, 2, "topk_ids"))
        || !(tl = as_array(tlo, NPY_FLOAT32, 2, "topk_logits"))
        || !(em = as_array(emo, NPY_INT32, 1, "effective map"))
        || (mo != Py_None && !(mp = as_array(mo, NPY_INT32, 1, "vocab_map"))))
        goto done;
    npy_intp n = PyArray_SIZE(s), m = PyArray_SIZE(p), k = PyArray_DIM(ti, 1);
    if (PyArray_DIM(ti, 0) != n || PyArray_DIM(tl, 0) != n || PyArray_DIM(tl, 1) != k) {
        PyErr_Format(PyExc_ValueError, "topk_ids and topk_logits must both be [len(src_ids)=%zd, "
                     "K]", (Py_ssize_t)n);
        goto done;
    }
    if (PyArray_SIZE(ip) != m + 1 || ((int64_t *)PyArray_DATA(ip))[m] != PyArray_SIZE(ix)) {
        PyErr_SetString(PyExc_ValueError, "alignment indptr must have len(pivot_ids) + 1 "
                        "entries ending at len(indices)");
        goto done;
    }
    /* the context keeps (source vocab, pivot vocab) capsules */
    fc_vocab_t *src_vocab = get_vocab(PyTuple_GET_ITEM((PyObject *)PyCapsule_GetContext(cap), 0));
    if (!src_vocab) goto done;
    int64_t V = fc_vocab_size(src_vocab);
    if (PyArray_SIZE(em) != V || (mp && PyArray_SIZE(mp) != V)) {
        PyErr_Format(PyExc_ValueError, "vocabulary maps must have one entry per source id (%lld)",
                     (long long)V);
        goto done;
    }
    npy_intp cap_out = m * (k > 0 ? k : 1);
    offs = new_array(NPY_INT64, m + 1, NULL);
    ids = new_array(NPY_INT32, cap_out, NULL);
    lg = new_array(NPY_FLOAT32, cap_out, NULL);
    if (!offs || !ids || !lg) goto done;
    fc_alignment al = {PyArray_DATA(ip), PyArray_DATA(ix), m};
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_align_distributions(ctx, (fc_dist_mode)mode, multi, PyArray_DATA(s), n,
                                PyArray_DATA(p), m, &al, PyArray_DATA(ti), PyArray_DATA(tl), k,
                                PyArray_DATA(em), mp ? PyArray_DATA(mp) : NULL,
                                PyArray_DATA((PyArrayObject *)offs),
                                PyArray_DATA((PyArrayObject *)ids),
                                PyArray_DATA((PyArrayObject *)lg), &err);
    Py_END_ALLOW_THREADS
    if (st) { fc_py_raise(&err); goto done; }
    ret = Py_BuildValue("OOO", offs, ids, lg);
done:
    Py_XDECREF(s); Py_XDECREF(p); Py_XDECREF(ip); Py_XDECREF(ix); Py_XDECREF(ti);
    Py_XDECREF(tl); Py_XDECREF(em); Py_XDECREF(mp);
    Py_XDECREF(offs); Py_XDECREF(ids); Py_XDECREF(lg);
    return ret;
}

/* ------------------------------------------------------------------------------------ */
/* projection */

PAIR_CTX_FUNCTION(project_ctx, CAP_PROJ, proj_destroy, fc_project_ctx_t, fc_project_ctx_new,
                  fc_project_ctx_free)

/* project(ctx, src_ids, pivot_ids, topk_ids [n,K], topk_logprobs [n,K], true_logprobs|None, k)
 * -> (offsets, ids, logprobs, gold_logprob, resolution) */
static PyObject *py_project(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *so, *po, *tio, *tlo, *tro;
    long long out_k;
    if (!PyArg_ParseTuple(args, "OOOOOOL", &cap, &so, &po, &tio, &tlo, &tro, &out_k)) return NULL;
    fc_project_ctx_t *ctx = PyCapsule_GetPointer(cap, CAP_PROJ);
    if (!ctx) return NULL;
    PyArrayObject *s = NULL, *p = NULL, *ti = NULL, *tl = NULL, *tr = NULL;
    PyObject *offs = NULL, *ids = NULL, *lp = NULL, *gold = NULL, *res = NULL, *ret = NULL;
    if (!(s = as_array(so, NPY_INT64, 1, "src_ids"))
        || !(p = as_array(po, NPY_INT64, 1, "pivot_ids"))
        || !(ti = as_array(tio, NPY_INT64, 2, "src_topk_ids"))
        || !(tl = as_array(tlo, NPY_FLOAT32, 2, "src_topk_logprobs"))
        || (tro != Py_None && !(tr = as_array(tro, NPY_FLOAT32, 1, "src_true_logprobs"))))
        goto done;
    npy_intp n = PyArray_SIZE(s), m = PyArray_SIZE(p), k = PyArray_DIM(ti, 1);
    if (PyArray_DIM(ti, 0) != n || PyArray_DIM(tl, 0) != n || PyArray_DIM(tl, 1) != k) {
        PyErr_Format(PyExc_ValueError, "src_topk_ids and src_topk_logprobs must both be "
                     "[len(src_ids)=%zd, K], got [%zd, %zd] and [%zd, %zd]", (Py_ssize_t)n,
                     (Py_ssize_t)PyArray_DIM(ti, 0), (Py_ssize_t)k,
                     (Py_ssize_t)PyArray_DIM(tl, 0), (Py_ssize_t)PyArray_DIM(tl, 1));
        goto done;
    }
    if (tr && PyArray_SIZE(tr) != n) {
        PyErr_Format(PyExc_ValueError, "src_true_logprobs has %zd entries, src_ids %zd",
                     (Py_ssize_t)PyArray_SIZE(tr), (Py_ssize_t)n);
        goto done;
    }
    if (out_k < 1) {
        PyErr_Format(PyExc_ValueError, "k must be >= 1, got %lld", out_k);
        goto done;
    }
    npy_intp cap_out = m * (npy_intp)out_k;
    offs = new_array(NPY_INT64, m + 1, NULL);
    ids = new_array(NPY_INT32, cap_out, NULL);
    lp = new_array(NPY_FLOAT32, cap_out, NULL);
    gold = new_array(NPY_FLOAT32, m, NULL);
    res = new_array(NPY_UINT8, m, NULL);
    if (!offs || !ids || !lp || !gold || !res) goto done;
    fc_error err;
    fc_error_clear(&err);
    fc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fc_align_project(ctx, PyArray_DATA(s), n, PyArray_DATA(p), m, PyArray_DATA(ti),
                          PyArray_DATA(tl), k, tr ? PyArray_DATA(tr) : NULL, out_k,
                          PyArray_DATA((PyArrayObject *)offs), PyArray_DATA((PyArrayObject *)ids),
                          PyArray_DATA((PyArrayObject *)lp), PyArray_DATA((PyArrayObject *)gold),
                          PyArray_DATA((PyArrayObject *)res), &err);
    Py_END_ALLOW_THREADS
    if (st) { fc_py_raise(&err); goto done; }
    ret = Py_BuildValue("OOOOO", offs, ids, lp, gold, res);
done:
    Py_XDECREF(s); Py_XDECREF(p); Py_XDECREF(ti); Py_XDECREF(tl); Py_XDECREF(tr);
    Py_XDECREF(offs); Py_XDECREF(ids); Py_XDECREF(lp); Py_XDECREF(gold); Py_XDECREF(res);
    return ret;
}

static PyMethodDef methods[] = {
    {"vocab_load", py_vocab_load, METH_VARARGS, "vocab_load(folder) -> vocab handle"},
    {"vocab_parse", py_vocab_parse, METH_VARARGS,
     "vocab_parse(tokenizer_json, name, config_json|None, name, special_json|None, name)"},
    {"vocab_info", py_vocab_info, METH_O, "vocab_info(vocab) -> dict"},
    {"vocab_strings", py_vocab_strings, METH_VARARGS,
     "vocab_strings(vocab, 0 pieces | 1 decoded | 2 canonical) -> (bytes, offsets)"},
    {"vocab_flags", py_vocab_flags, METH_O, "vocab_flags(vocab) -> uint8 array"},
    {"vocab_find", py_vocab_find, METH_VARARGS, "vocab_find(vocab, piece) -> id or -1"},
    {"vocab_set_marker", py_vocab_set_marker, METH_VARARGS, "vocab_set_marker(vocab, marker)"},
    {"vocab_same", py_vocab_same, METH_VARARGS, "vocab_same(src, pivot) -> bool"},
    {"levenshtein", py_levenshtein, METH_VARARGS, "levenshtein(a, b) -> edit distance"},
    {"align_set_simd", py_align_set_simd, METH_O,
     "align_set_simd(on) -> previous; for tests: False forces the portable DTW code"},
    {"align_ctx", py_align_ctx, METH_VARARGS, "align_ctx(src vocab, pivot vocab) -> handle"},
    {"align", py_align, METH_VARARGS,
     "align(ctx, src_ids, pivot_ids, method, fallback) -> ((indptr, indices), used_fallback)"},
    {"counts_new", py_counts_new, METH_NOARGS, "counts_new() -> handle"},
    {"counts_nnz", py_counts_nnz, METH_O, "counts_nnz(counts) -> int"},
    {"counts_add_alignment", py_counts_add_alignment, METH_VARARGS,
     "counts_add_alignment(counts, src_ids, pivot_ids, indptr, indices)"},
    {"counts_add_coo", py_counts_add_coo, METH_VARARGS,
     "counts_add_coo(counts, pivot_ids, src_ids, counts)"},
    {"counts_merge", py_counts_merge, METH_VARARGS, "counts_merge(counts, other)"},
    {"counts_export", py_counts_export, METH_VARARGS,
     "counts_export(counts, by_source) -> (pivot_ids, src_ids, counts)"},
    {"vocab_map", py_vocab_map, METH_VARARGS,
     "vocab_map(src, pivot, mode, counts|None, roles (-1, 0, 1), threads) -> int32 array"},
    {"align_distributions", py_align_distributions, METH_VARARGS,
     "align_distributions(ctx, mode, multi, src_ids, pivot_ids, indptr, indices, topk_ids, "
     "topk_logits, eff_map, map|None) -> (offsets, ids, logits)"},
    {"project_ctx", py_project_ctx, METH_VARARGS,
     "project_ctx(src vocab, pivot vocab) -> projection handle"},
    {"project", py_project, METH_VARARGS,
     "project(ctx, src_ids, pivot_ids, topk_ids, topk_logprobs, true_logprobs|None, k) -> "
     "(offsets, ids, logprobs, gold_logprob, resolution)"},
    {NULL, NULL, 0, NULL},
};

int fc_py_add_align(PyObject *m) { return PyModule_AddFunctions(m, methods); }
