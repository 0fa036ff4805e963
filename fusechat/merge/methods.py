"""The merge methods and their parameters, as the C core's method table defines them.

Everything here is built at import from ``fusechat._C.merge_methods()`` (the one table,
``csrc/core/merge_methods.c``): names, inputs, and each parameter's scope, kind, default and
valid range. "tensor" parameters are looked up per input model, "global" ones once per
tensor (mergekit's split). A parameter with default ``REQUIRED`` must be given for every
non-base model. This is what configs are checked against: unknown methods, unknown parameter
names and out-of-range values are refused, naming the valid choices (mergekit ignores them).
"""
from dataclasses import dataclass, field

from .. import _C

REQUIRED = object()


@dataclass(frozen=True)
class Method:
    name: str
    base: str                       # "required", "optional", "none" (base becomes an input)
    tensor: dict = field(default_factory=dict)   # per-model parameter -> default
    glob: dict = field(default_factory=dict)     # global parameter -> default
    randomized: bool = False
    sparsifies: bool = False
    min_models: int = 0             # inputs besides the base
    max_models: int = None          # None: any number
    info: dict = field(default_factory=dict)     # parameter -> its row of the C table

    def param_names(self):
        return sorted(set(self.tensor) | set(self.glob))


def _default(p):
    if p["required"]:
        return REQUIRED
    if p["kind"] == "choice":
        return p["choices"].split(", ")[p["default"]]
    return p["default"]


def _method(row):
    info = {p["name"]: p for p in row["params"]}
    return Method(row["name"], row["base"],
                  {n: _default(p) for n, p in info.items() if p["per_model"]},
                  {n: _default(p) for n, p in info.items() if not p["per_model"]},
                  row["randomized"], row["sparsifies"], row["min_models"], row["max_models"],
                  info)


METHODS = {row["name"]: _method(row) for row in _C.merge_methods()}


# every parameter name some method uses (mergekit's, plus mask_deltas): given to a method that
# does not use it, it is ignored with a warning; any other name is a typo and refused
KNOWN_PARAMS = frozenset(n for m in METHODS.values() for n in m.param_names())


def get_method(name, error=ValueError):
    if name not in METHODS:
        raise error(f"unknown merge_method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def check_value(method, name, value, where, error=ValueError):
    """Coerce one parameter value of `method` to its kind and check it against the table's
    rule (through the C core's checker); raise `error` naming `where`."""
    p = method.info[name]
    kind = p["kind"]
    bad = error(f"{where}: {name} must be {p['rule']}, got {value!r}")
    if kind == "choice":
        if not isinstance(value, str) or value not in p["choices"].split(", "):
            raise bad
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad
    v = float(value)
    if not _C.merge_param_ok(method.name, name, v):
        raise bad
    return int(v) if kind == "int" else v


def kernel_args(method, per_model, n, glob):
    """The C kernel's parameters from resolved, checked values, by name: one dict per model
    (per_model: name -> n values; the C core's defaults for the others) and the global
    overrides (a choice as its index, booleans as ints)."""
    models = [{k: float(v[i]) for k, v in per_model.items()} for i in range(n)]
    out = {}
    for name, v in glob.items():
        p = method.info[name]
        out[name] = (p["choices"].split(", ").index(v) if p["kind"] == "choice"
                     else int(v) if isinstance(v, bool) else v)
    return models, out


def check_params(method, models, glob):
    """The whole parameter set of one merge_tensor call checked by the C core's table-driven
    checker (every range, and the method's own rule: della's epsilon against density):
    None, or (model index or -1, why)."""
    return _C.merge_check_params(method.name, models, glob)
