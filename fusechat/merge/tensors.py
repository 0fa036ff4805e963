"""``merge_tensors``: one tensor merged by the C core, for notebooks and tests."""
import numpy as np

from .methods import REQUIRED, check_value, get_method, kernel_args


def _as_array(x, what):
    a = np.asarray(x)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise TypeError(f"merge_tensors: {what} must be a float array, got {a.dtype}")
    return a


def _per_model(value, n, name):
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != n:
            raise ValueError(f"merge_tensors: {name} has {len(value)} values for {n} models")
        return list(value)
    return [value] * n


def merge_tensors(method, base, tensors, *, out_dtype=None, seed=0, tensor_name="",
                  threads=0, out=None, ctx=None, **params):
    """Merge one tensor. ``base`` is the base model's array (None where the method takes
    none), ``tensors`` the other models' arrays; per-model parameters (weight, density,
    gamma, epsilon, scale) are a scalar or one value per tensor; global ones are scalars.
    For linear and karcher a given base is merged as one more input (as mergekit does), so
    a per-model parameter then needs len(tensors) + 1 values (the base's last).

    The result has the base's dtype (else the first tensor's) unless ``out_dtype`` is given.
    ``seed`` and ``tensor_name`` key the random masks of dare_* and della*. ``out``: an
    array of the output dtype and shape to write the result into (and return). ``ctx``: a
    ``fusechat._C.MergeContext`` (kernel instruction set, streaming switch and counters, kept
    buffers); None: the module's default one (``fusechat._C.default_merge_context``).
    """
    from .. import _C

    m = get_method(method)
    tensors = [_as_array(t, f"tensors[{i}]") for i, t in enumerate(tensors)]
    if base is not None:
        base = _as_array(base, "base")
    if m.base == "none" and base is not None:
        tensors.append(base)
        base = None
    n = len(tensors)
    unknown = sorted(set(params) - set(m.param_names()))
    if unknown:
        raise ValueError(f"merge_tensors: {method} has no parameter {', '.join(unknown)}; "
                         f"valid: {', '.join(m.param_names()) or '(none)'}")
    ref = base if base is not None else (tensors[0] if tensors else None)
    if ref is None:
        raise ValueError("merge_tensors: no tensors given")
    for i, t in enumerate(tensors):
        if t.shape != ref.shape:
            raise ValueError(f"merge_tensors: tensors[{i}] has shape {t.shape}, "
                             f"expected {ref.shape}")
    per = {}
    for name, default in m.tensor.items():
        if name not in params and default is REQUIRED:
            raise ValueError(f"merge_tensors: {method} needs {name} for every model")
        vals = _per_model(params.get(name, default), n, name)
        per[name] = [check_value(m, name, v, f"merge_tensors: {name}") for v in vals]
    glob = {}
    for name, default in m.glob.items():
        if name not in params:
            if default is REQUIRED:
                raise ValueError(f"merge_tensors: {method} needs the parameter {name}")
            continue
        glob[name] = check_value(m, name, params[name], "merge_tensors")
    models, glob = kernel_args(m, per, n, glob)
    out_dtype = ref.dtype if out_dtype is None else np.dtype(out_dtype)
    return _C.merge_tensor(method, base, tensors, out_dtype, models, glob, int(seed),
                           tensor_name, int(threads), out, ctx)
