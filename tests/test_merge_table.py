"""The C core's merge method table (``_C.merge_methods()``) against what is built from it:
every method loads from a config with its defaults, every range bound is enforced with an
error naming the key, the Python schema is the table, and the C kernel enforces the same
rules when called directly."""
import math

import numpy as np
import pytest

from fusechat import _C
from fusechat.errors import ConfigError
from fusechat.merge.config import load_config
from fusechat.merge.methods import KNOWN_PARAMS, METHODS, REQUIRED

TABLE = _C.merge_methods()
ROWS = {row["name"]: row for row in TABLE}


def _config(tmp_path, row, params=None, model_params=None):
    """A config for the method with the fewest models its arity allows; required
    parameters given (weight per model, t at the top), `params` / `model_params` added."""
    n = max(row["min_models"], 1)
    paths = []
    for i in range(n + (row["base"] != "none")):
        paths.append(tmp_path / f"m{i}")
        paths[-1].mkdir(exist_ok=True)
    top = {p["name"]: 0.5 for p in row["params"] if p["required"] and not p["per_model"]}
    top.update(params or {})
    per = {p["name"]: 1.0 for p in row["params"] if p["required"] and p["per_model"]}
    per.update(model_params or {})
    models = [{"model": str(p), "parameters": dict(per)} for p in paths[:n]]
    cfg = {"merge_method": row["name"], "models": models, "parameters": top}
    if row["base"] != "none":
        cfg["base_model"] = str(paths[n])
    return cfg


@pytest.mark.parametrize("name", list(ROWS))
def test_every_method_loads_with_its_defaults(tmp_path, name):
    cfg = load_config(_config(tmp_path, ROWS[name]))
    assert cfg.method is METHODS[name]
    # the defaults the C core fills are themselves valid (fc_merge_params_init against
    # fc_merge_check_params)
    assert _C.merge_check_params(name, [{}] * max(ROWS[name]["min_models"], 1), {}) is None


def _outside(p):
    """(value, side) pairs just outside each finite bound of a numeric parameter."""
    out = []
    if math.isfinite(p["lo"]):
        out.append(p["lo"] if p["lo_open"] else np.nextafter(p["lo"], -np.inf))
    if math.isfinite(p["hi"]):
        out.append(p["hi"] if p["hi_open"] else np.nextafter(p["hi"], np.inf))
    return [float(v) for v in out]


BOUNDS = [(row["name"], p["name"], v) for row in TABLE for p in row["params"]
          if p["kind"] in ("float", "int") for v in _outside(p)]


def test_bounds_are_tested():
    # the table has bounds on both sides, open and closed, per-model and global
    assert {(m, n) for m, n, _ in BOUNDS} >= {("ties", "density"), ("breadcrumbs", "gamma"),
                                              ("karcher", "tol"), ("sce", "select_topk")}


@pytest.mark.parametrize("method,name,value", BOUNDS)
def test_each_range_bound_is_enforced(tmp_path, method, name, value):
    row = ROWS[method]
    p = next(p for p in row["params"] if p["name"] == name)
    if p["kind"] == "int":
        value = math.floor(value) if value < p["lo"] or (p["lo_open"] and value == p["lo"]) \
            else math.ceil(value)
    where = ({}, {name: value}) if p["per_model"] else ({name: value}, {})
    with pytest.raises(ConfigError, match=f"{name}: {name} must be {p['rule']}".replace(
            "(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        load_config(_config(tmp_path, row, *where))
    # the C kernel refuses it too, named with the method (and the model)
    models = [{name: value} if p["per_model"] else {}] * max(row["min_models"], 1)
    bad = _C.merge_check_params(method, models, {} if p["per_model"] else {name: value})
    assert bad is not None and bad[1].startswith(f"{name} ") and p["rule"] in bad[1]
    assert bad[0] == (0 if p["per_model"] else -1)
    # the bound itself, where closed, and the default are accepted
    for ok in [v for v, open_ in ((p["lo"], p["lo_open"]), (p["hi"], p["hi_open"]))
               if math.isfinite(v) and not open_] + [p["default"]]:
        where = ({}, {name: ok}) if p["per_model"] else ({name: ok}, {})
        load_config(_config(tmp_path, row, *where))


@pytest.mark.parametrize("method,name", [(row["name"], p["name"]) for row in TABLE
                                         for p in row["params"]
                                         if p["kind"] in ("bool", "choice")])
def test_bool_and_choice_parameters_refuse_other_values(tmp_path, method, name):
    row = ROWS[method]
    p = next(p for p in row["params"] if p["name"] == name)
    bad = "maybe" if p["kind"] == "bool" else 1
    with pytest.raises(ConfigError, match=f"{name} must be {p['rule']}, got"):
        load_config(_config(tmp_path, row, {name: bad}))


@pytest.mark.parametrize("name", list(ROWS))
def test_python_schema_is_the_table(name):
    row, m = ROWS[name], METHODS[name]
    assert (m.base, m.min_models, m.max_models, m.randomized, m.sparsifies) == (
        row["base"], row["min_models"], row["max_models"], row["randomized"], row["sparsifies"])
    for p in row["params"]:
        scope = m.tensor if p["per_model"] else m.glob
        want = REQUIRED if p["required"] else (
            p["choices"].split(", ")[p["default"]] if p["kind"] == "choice" else p["default"])
        assert scope[p["name"]] is want or scope[p["name"]] == want, p["name"]
    assert sorted(m.tensor) + sorted(m.glob) == sorted(
        p["name"] for p in row["params"] if p["per_model"]) + sorted(
        p["name"] for p in row["params"] if not p["per_model"])


def test_table_invariants():
    assert [row["name"] for row in TABLE] == list(METHODS)
    assert KNOWN_PARAMS == {p["name"] for row in TABLE for p in row["params"]}
    # fc_merge_model_params_init takes a per-model field's default from the table: it must
    # be the same (and have the same range) in every method that uses the field
    seen = {}
    for row in TABLE:
        for p in row["params"]:
            if p["per_model"]:
                key = (p["default"], p["lo"], p["hi"], p["lo_open"], p["hi_open"], p["kind"])
                assert seen.setdefault(p["name"], key) == key, (row["name"], p["name"])
    for row in TABLE:
        assert row["base"] in ("none", "required", "optional")
        assert row["max_models"] is None or row["max_models"] >= row["min_models"]
        names = [p["name"] for p in row["params"]]
        assert len(names) == len(set(names)), row["name"]
        for p in row["params"]:
            assert p["lo"] <= p["hi"]
            assert p["required"] or p["ignored"] or _C.merge_param_ok(
                row["name"], p["name"], float(p["default"])), (row["name"], p["name"])


def test_kernel_refuses_a_bad_value_by_itself():
    """Called without the Python checks, the C core applies the same rule."""
    base = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"ties: model 0: density 1.5 must be in \(0, 1\]"):
        _C.merge_tensor("ties", base, [base + 1], np.float32, [{"weight": 1.0, "density": 1.5}],
                        {}, 0, "", 1)
    with pytest.raises(ValueError, match="ties has no parameter 't'"):
        _C.merge_tensor("ties", base, [base + 1], np.float32, [{"weight": 1.0}], {"t": 0.5},
                        0, "", 1)
