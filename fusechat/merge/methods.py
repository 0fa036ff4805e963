"""The merge methods and their parameters: names, scope, defaults and valid ranges.

"tensor" parameters are looked up per input model, "global" ones once per tensor (mergekit's
split). A parameter with default ``REQUIRED`` must be given for every non-base model. This
table is what configs are checked against: unknown methods, unknown parameter names and
out-of-range values are refused, naming the valid choices (mergekit ignores them).
"""
from dataclasses import dataclass, field

REQUIRED = object()
RESCALE_NORMS = ("l1", "l2", "linf")  # the C core's FC_RESCALE_* order

# name -> (kind, check, message) ; check(value) -> bool
_RANGES = {
    "weight": (float, lambda v: True, "a number"),
    "density": (float, lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "gamma": (float, lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "epsilon": (float, lambda v: v >= 0.0, ">= 0"),
    "scale": (float, lambda v: True, "a number"),
    "normalize": (bool, None, "true or false"),
    "rescale": (bool, None, "true or false"),
    "int8_mask": (bool, None, "true or false"),
    "lambda": (float, lambda v: True, "a number"),
    "select_topk": (float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "mask_deltas": (bool, None, "true or false"),
    "t": (float, lambda v: True, "a number"),
    "nuslerp_flatten": (bool, None, "true or false"),
    "nuslerp_row_wise": (bool, None, "true or false"),
    "normalize_weights": (bool, None, "true or false"),
    "eps": (float, lambda v: v >= 0.0, ">= 0"),
    "max_iter": (int, lambda v: v >= 0, "an integer >= 0"),
    "tol": (float, lambda v: v > 0.0, "> 0"),
    "filter_wise": (bool, None, "true or false"),
    "r": (float, lambda v: True, "a number"),
    "alpha": (float, lambda v: v >= 0.0, ">= 0"),
    "rescale_norm": (str, lambda v: v in RESCALE_NORMS, "one of l1, l2, linf"),
}

# the per-model parameters (fc_merge_model_params) and their defaults (fc_merge_model_params_init)
MODEL_FIELDS = ("weight", "density", "gamma", "epsilon", "scale")
MODEL_DEFAULTS = {"weight": 1.0, "density": 1.0, "gamma": 0.01, "epsilon": 0.15, "scale": 1.0}


@dataclass(frozen=True)
class Method:
    name: str
    base: str                       # "required", "optional", "none" (base becomes an input)
    tensor: dict = field(default_factory=dict)   # per-model parameter -> default
    glob: dict = field(default_factory=dict)     # global parameter -> default
    randomized: bool = False
    sparsifies: bool = False

    def param_names(self):
        return sorted(set(self.tensor) | set(self.glob))


def _gta(name, normalize, rescale, extra=None, randomized=False, sparsifies=True):
    tensor = {"weight": REQUIRED, "density": 1.0}
    tensor.update(extra or {})
    return Method(name, "required", tensor,
                  {"normalize": normalize, "rescale": rescale, "rescale_norm": "l1",
                   "lambda": 1.0, "int8_mask": False},
                  randomized=randomized, sparsifies=sparsifies)


METHODS = {m.name: m for m in [
    Method("linear", "none", {"weight": REQUIRED}, {"normalize": True}),
    _gta("task_arithmetic", False, False, sparsifies=False),
    _gta("ties", True, False),
    _gta("dare_ties", False, True, randomized=True),
    _gta("dare_linear", False, True, randomized=True),
    _gta("breadcrumbs", False, False, {"gamma": 0.01}),
    _gta("breadcrumbs_ties", False, False, {"gamma": 0.01}),
    _gta("della", True, True, {"epsilon": 0.15}, randomized=True),
    _gta("della_linear", False, True, {"epsilon": 0.15}, randomized=True),
    Method("sce", "required", {}, {"select_topk": 1.0, "int8_mask": False, "mask_deltas": True}),
    Method("varm", "required"),
    Method("slerp", "required", {}, {"t": REQUIRED}),
    Method("nuslerp", "optional", {"weight": REQUIRED},
           {"nuslerp_flatten": True, "nuslerp_row_wise": False}),
    Method("multislerp", "optional", {"weight": REQUIRED},
           {"normalize_weights": True, "eps": 1e-8}),
    Method("karcher", "none", {}, {"max_iter": 10, "tol": 1e-5}),
    Method("model_stock", "required", {}, {"filter_wise": False}),
    Method("nearswap", "required", {}, {"t": REQUIRED}),
    Method("passthrough", "none", {"scale": 1.0}),
    Method("ram", "required", {}, {"epsilon": 1e-5}),
    Method("ramplus_tl", "required", {}, {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}),
    Method("arcee_fusion", "required"),
]}


# every parameter name some method uses (mergekit's, plus mask_deltas): given to a method that
# does not use it, it is ignored with a warning; any other name is a typo and refused
KNOWN_PARAMS = frozenset(n for m in METHODS.values() for n in m.param_names())


def get_method(name, error=ValueError):
    if name not in METHODS:
        raise error(f"unknown merge_method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def check_value(method, name, value, where, error=ValueError):
    """Coerce and range-check one parameter value; raise `error` naming `where`."""
    kind, check, msg = _RANGES[name]
    if kind is str:
        if not isinstance(value, str) or not check(value):
            raise error(f"{where}: {name} must be {msg}, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise error(f"{where}: {name} must be {msg}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{where}: {name} must be {msg}, got {value!r}")
    if kind is int and int(value) != value:
        raise error(f"{where}: {name} must be {msg}, got {value!r}")
    v = kind(value)
    if v != v or v in (float("inf"), float("-inf")) or not check(v):
        raise error(f"{where}: {name} must be {msg}, got {value!r}")
    return v


def kernel_args(per_model, n, glob):
    """The C kernel's parameters from resolved, checked values, by name: one dict per model
    (per_model: name -> n values; the C core's defaults, MODEL_DEFAULTS, for the others) and
    the global overrides (rescale_norm as its FC_RESCALE_* index, booleans as ints;
    int8_mask, which changes only mergekit's mask dtype, dropped)."""
    models = [{k: float(v[i]) for k, v in per_model.items()} for i in range(n)]
    out = {}
    for name, v in glob.items():
        if name == "int8_mask":
            continue
        out[name] = (RESCALE_NORMS.index(v) if name == "rescale_norm"
                     else int(v) if isinstance(v, bool) else v)
    return models, out


def check_della(method, density, epsilon, where, error=ValueError):
    if method.name.startswith("della") and density < 1.0 and not (
            density - epsilon > 0.0 and density + epsilon < 1.0):
        raise error(f"{where}: epsilon {epsilon} is too large for density {density}: "
                    "density - epsilon and density + epsilon must lie in (0, 1)")
