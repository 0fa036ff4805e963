"""mergekit-style YAML merge configs: reading, checking and per-tensor parameter lookup.

Accepted (mergekit's ``MergeConfiguration``, docs/merging.md "Config"): ``merge_method``,
``models: [{model, parameters}]`` or ``slices: [{sources: [{model, layer_range,
parameters}], parameters}]``, ``base_model``, ``parameters``, ``dtype``, ``out_dtype``,
``tokenizer_source`` (``base``, ``union`` or a model path), ``tokenizer`` (``source``,
per-token ``tokens`` overrides, ``pad_to_multiple_of``), ``chat_template``. Unlike mergekit,
unknown keys, parameter names no method knows (typos), parameters of the wrong scope and
out-of-range values are refused with a :class:`fusechat.errors.ConfigError` that lists the
valid names; a parameter another method uses (``weight`` on slerp models, as mergekit's own
tests write) is ignored with one warning, as mergekit ignores it.

Parameter values: a scalar; a gradient ``[v0, ..., vk]`` interpolated linearly over the
layers (``t = layer / (L - 1)``; tensors outside the layers use ``t = 0``); or a list of
``{filter: substring, value: ...}`` where the first entry whose filter is absent, ``"*"``
or a substring of the tensor name wins.
"""
import copy
import difflib
import errno
import logging
import math
import os
import re
from dataclasses import dataclass, field

from ..errors import ConfigError
from .lora import LoraRef, read_adapter_config
from .templates import chat_template
from .methods import KNOWN_PARAMS, REQUIRED, check_value, get_method

LOG = logging.getLogger(__name__)

TOP_KEYS = ("merge_method", "models", "slices", "base_model", "parameters", "dtype",
            "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "modules")
DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


@dataclass
class ModelEntry:
    path: str
    params: dict = field(default_factory=dict)
    layer_range: tuple = None  # slices only


@dataclass
class SliceSpec:
    sources: list
    params: dict = field(default_factory=dict)


@dataclass
class TokenSource:
    kind: str                       # "model" (a row of a model) or "zero"
    model: str = None
    token: str = None               # the row of this token in model ...
    token_id: int = None            # ... or of this id


@dataclass
class TokenOverride:
    source: TokenSource
    force: bool
    where: str                      # the config key, for errors


@dataclass
class MergeConfig:
    method: object                  # methods.Method
    models: list                    # ModelEntry, config order (the base included if listed)
    base: str = None
    params: dict = field(default_factory=dict)
    dtype: str = None               # safetensors dtype name, or None
    out_dtype: str = None
    tokenizer_source: str = None
    slices: list = None             # SliceSpec list, or None
    raw: dict = None
    tokens: dict = field(default_factory=dict)  # token -> TokenOverride (tokenizer.tokens)
    pad_to_multiple_of: int = None  # tokenizer.pad_to_multiple_of
    chat_template: str = None       # Jinja text for chat_template.jinja, or templates.AUTO

    def model_paths(self):
        paths = [m.path for m in self.models]
        if self.slices:
            paths = []
            for s in self.slices:
                paths += [m.path for m in s.sources if m.path not in paths]
        if self.base and self.base not in paths:
            paths.append(self.base)
        return list(dict.fromkeys(paths))


def _load_raw(config):
    import yaml

    if isinstance(config, dict):
        return copy.deepcopy(config), None
    if isinstance(config, os.PathLike) or (isinstance(config, str) and "\n" not in config
                                           and os.path.isfile(config)):
        path = os.fspath(config)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        where = path
    elif isinstance(config, str):
        text, where = config, None
    else:
        raise ConfigError(f"merge config: expected a path, a YAML string or a dict, got "
                          f"{type(config).__name__}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where or 'merge config'}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        if isinstance(config, str) and where is None and "\n" not in config:
            raise ConfigError(f"merge config: {config!r} is neither a file nor a YAML mapping")
        raise ConfigError(f"{where or 'merge config'}: the top level must be a mapping")
    return data, where


def _check_keys(d, allowed, where):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    bad = [k for k in d if k not in allowed]
    if bad:
        raise ConfigError(f"{where}: unknown key {bad[0]!r}; valid keys: {', '.join(allowed)}")


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_setting(method, name, value, where):
    """A scalar, a gradient of numbers, or a filter list whose values are either."""
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: {name}: an empty list")
        if all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                _check_keys(v, ("filter", "value"), f"{where}: {name}[{i}]")
                if "value" not in v:
                    raise ConfigError(f"{where}: {name}[{i}] has no value")
                if v.get("filter") is not None and not isinstance(v["filter"], str):
                    raise ConfigError(f"{where}: {name}[{i}].filter must be a string")
                _check_setting(method, name, v["value"], f"{where}: {name}[{i}]")
            return
        if all(_is_number(v) for v in value):
            for v in value:
                check_value(method, name, v, where, ConfigError)
            return
        raise ConfigError(f"{where}: {name}: a list must hold only numbers (a gradient) or "
                          f"only {{filter, value}} mappings, got {value!r}")
    check_value(method, name, value, where, ConfigError)


def _check_params(method, params, where, scope, unused):
    """The parameters this method uses. A name another method uses (mergekit knows it) is
    dropped and recorded in `unused` (name -> where) for one warning; a name no method
    knows is refused with the closest valid one."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: parameters must be a mapping")
    valid = method.param_names() if scope == "top" else sorted(method.tensor)
    kept = {}
    for name, value in params.items():
        if name not in valid:
            if scope == "model" and name in method.glob:
                raise ConfigError(f"{where}: {name} is a global parameter of {method.name}; "
                                  "set it under the top-level parameters")
            if name not in KNOWN_PARAMS:
                close = difflib.get_close_matches(str(name), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{where}: {method.name} has no parameter {name!r}{hint}; "
                                  f"valid {'per-model ' if scope == 'model' else ''}parameters: "
                                  f"{', '.join(valid) or '(none)'}")
            unused.setdefault(name, []).append(where)
            continue
        _check_setting(method, name, value, f"{where}: {name}")
        kept[name] = value
    return kept


def _warn_unused(method, unused):
    for name, wheres in unused.items():
        LOG.warning("%s does not use the parameter %r (given in %s); ignored, as mergekit "
                    "ignores it", method.name, name, "; ".join(wheres))


def hf_cache_dir():
    """The Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub
    (XDG_CACHE_HOME honoured), as huggingface_hub resolves it."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def _cached_snapshot(repo_id, revision):
    """The snapshot folder of repo_id (org/name) at revision (a branch, tag or commit; None:
    main) in the Hugging Face cache layout models--org--name/snapshots/<commit>, or None."""
    root = os.path.join(hf_cache_dir(), "models--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    commit = rev
    ref_file = os.path.join(root, "refs", rev)
    if os.path.isfile(ref_file):
        with open(ref_file, encoding="utf-8") as f:
            commit = f.read().strip()
    snap = os.path.join(root, "snapshots", commit)
    if os.path.isdir(snap):
        return snap
    snaps = os.path.join(root, "snapshots")
    if revision is None and os.path.isdir(snaps) and len(os.listdir(snaps)) == 1:
        return os.path.join(snaps, os.listdir(snaps)[0])
    return None


HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _model_path(ref, where):
    if isinstance(ref, dict):
        _check_keys(ref, ("model",), where)
        ref = ref.get("model")
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{where}: model must be a path string, got {ref!r}")
    if "+" in ref and not os.path.exists(os.path.expanduser(ref)):
        # mergekit's base+adapter: the adapter merged into the base (lora.py)
        folder, _, adapter = ref.partition("+")
        folder = _model_path(folder, where)
        adapter = _model_path(adapter, f"{where} (LoRA adapter)")
        read_adapter_config(adapter)
        return LoraRef(folder, adapter)
    path = os.path.expanduser(ref)
    if os.path.isdir(path) or path.endswith(".safetensors"):
        return os.path.abspath(path)
    if ref.startswith(("/", ".", "~")):
        raise FileNotFoundError(errno.ENOENT, f"model not found ({where})", path)
    repo_id, _, revision = ref.partition("@")
    if HF_ID.match(repo_id):
        snap = _cached_snapshot(repo_id, revision or None)
        if snap:
            return os.path.abspath(snap)
        raise ConfigError(
            f"{where}: model {ref!r} is not a local folder, and the Hugging Face cache "
            f"({hf_cache_dir()}) does not hold it. fusechat does not download models: run "
            f"`huggingface-cli download {repo_id}"
            f"{f' --revision {revision}' if revision else ''}` (it fills that cache, where "
            "fusechat then finds it by its id), or give the path of a local folder")
    raise ConfigError(f"{where}: model {ref!r} is not a local folder (fusechat reads local "
                      "Hugging Face folders, or models in the Hugging Face cache by their id)")


def _dtype(value, key):
    if value is None:
        return None
    if value not in DTYPES:
        raise ConfigError(f"merge config: {key} {value!r} is not supported; valid: "
                          f"{', '.join(DTYPES)}")
    return DTYPES[value]


def load_config(config):
    """Read and check a merge config (path, YAML string or dict): a MergeConfig."""
    raw, where = _load_raw(config)
    where = where or "merge config"
    _check_keys(raw, TOP_KEYS, where)
    if "merge_method" not in raw:
        raise ConfigError(f"{where}: merge_method is missing")
    method = get_method(raw["merge_method"], ConfigError)
    if raw.get("modules") is not None:
        raise ConfigError(f"{where}: modules is not supported by fusechat merge")
    if ("models" in raw) == ("slices" in raw):
        raise ConfigError(f"{where}: give exactly one of models or slices")
    unused = {}
    params = _check_params(method, raw.get("parameters"), f"{where}: parameters", "top", unused)
    base = _model_path(raw["base_model"], f"{where}: base_model") if raw.get("base_model") else None
    cfg = MergeConfig(method=method, models=[], base=base, params=params,
                      dtype=_dtype(raw.get("dtype"), "dtype"),
                      out_dtype=_dtype(raw.get("out_dtype"), "out_dtype"), raw=raw)
    ts = raw.get("tokenizer_source")
    if ts is not None:
        if raw.get("tokenizer") is not None:
            raise ConfigError(f"{where}: give tokenizer_source or tokenizer, not both "
                              "(tokenizer_source: X is tokenizer: {source: X})")
        cfg.tokenizer_source = _tokenizer_source(ts, f"{where}: tokenizer_source")
    if raw.get("tokenizer") is not None:
        _load_tokenizer(cfg, raw["tokenizer"], f"{where}: tokenizer")
    if raw.get("chat_template") is not None:
        cfg.chat_template = chat_template(raw["chat_template"], f"{where}: chat_template")
    if "models" in raw:
        if not isinstance(raw["models"], list) or not raw["models"]:
            raise ConfigError(f"{where}: models must be a non-empty list")
        for i, m in enumerate(raw["models"]):
            w = f"{where}: models[{i}]"
            _check_keys(m, ("model", "parameters"), w)
            path = _model_path(m.get("model"), w)
            params_i = _check_params(method, m.get("parameters"), w, "model", unused)
            cfg.models.append(ModelEntry(path, params_i))
    else:
        cfg.slices = _load_slices(raw["slices"], method, where, unused)
    _check_roles(cfg, where)
    _warn_unused(method, unused)
    return cfg


def _tokenizer_source(ts, where):
    if not isinstance(ts, str):
        raise ConfigError(f"{where} must be base, union or a model path, got {ts!r}")
    return ts if ts in ("base", "union") else _model_path(ts, where)


def _load_tokenizer(cfg, tok, where):
    """tokenizer: {source (union by default, as mergekit), tokens, pad_to_multiple_of}."""
    _check_keys(tok, ("source", "tokens", "pad_to_multiple_of"), where)
    cfg.tokenizer_source = _tokenizer_source(tok.get("source", "union"), f"{where}.source")
    pad = tok.get("pad_to_multiple_of")
    if pad is not None:
        if not isinstance(pad, int) or isinstance(pad, bool) or pad <= 0:
            raise ConfigError(f"{where}.pad_to_multiple_of must be a positive integer, got "
                              f"{pad!r}")
        cfg.pad_to_multiple_of = pad
    tokens = tok.get("tokens") or {}
    if not isinstance(tokens, dict):
        raise ConfigError(f"{where}.tokens must be a mapping of token to {{source, force}}")
    for token, spec in tokens.items():
        w = f"{where}.tokens[{token!r}]"
        _check_keys(spec, ("source", "force"), w)
        force = spec.get("force", False)
        if not isinstance(force, bool):
            raise ConfigError(f"{w}.force must be true or false, got {force!r}")
        src = spec.get("source")
        if src is None:
            continue  # mergekit's default: no override
        if isinstance(src, str):
            src = TokenSource("model", _model_path(src, f"{w}.source"), str(token))
        elif isinstance(src, dict) and src.get("kind") == "zero":
            _check_keys(src, ("kind",), f"{w}.source")
            src = TokenSource("zero")
        elif isinstance(src, dict) and src.get("kind") == "model_token":
            _check_keys(src, ("kind", "model", "token", "token_id"), f"{w}.source")
            if ("token" in src) == ("token_id" in src):
                raise ConfigError(f"{w}.source: give exactly one of token or token_id")
            tid = src.get("token_id")
            if "token_id" in src and (not isinstance(tid, int) or isinstance(tid, bool)
                                      or tid < 0):
                raise ConfigError(f"{w}.source.token_id must be a non-negative integer")
            src = TokenSource("model", _model_path(src.get("model"), f"{w}.source.model"),
                              src.get("token"), tid)
        else:
            raise ConfigError(f"{w}.source must be a model path, {{kind: zero}} or {{kind: "
                              f"model_token, model, token | token_id}}, got {src!r}")
        cfg.tokens[str(token)] = TokenOverride(src, force, w)


def _load_slices(slices, method, where, unused):
    if not isinstance(slices, list) or not slices:
        raise ConfigError(f"{where}: slices must be a non-empty list")
    out = []
    for i, s in enumerate(slices):
        w = f"{where}: slices[{i}]"
        _check_keys(s, ("sources", "parameters", "base_model", "residual_weight"), w)
        if s.get("base_model") is not None:
            raise ConfigError(f"{w}: a per-slice base_model is not supported; set base_model "
                              "at the top level")
        if not isinstance(s.get("sources"), list) or not s["sources"]:
            raise ConfigError(f"{w}: sources must be a non-empty list")
        srcs = []
        for j, src in enumerate(s["sources"]):
            ws = f"{w}.sources[{j}]"
            _check_keys(src, ("model", "layer_range", "parameters"), ws)
            lr = src.get("layer_range")
            if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(v, int) for v in lr)
                    and 0 <= lr[0] < lr[1]):
                raise ConfigError(f"{ws}: layer_range must be [start, end) with 0 <= start < end")
            srcs.append(ModelEntry(_model_path(src.get("model"), ws),
                                   _check_params(method, src.get("parameters"), ws, "model",
                                                 unused),
                                   tuple(lr)))
        n = {m.layer_range[1] - m.layer_range[0] for m in srcs}
        if len(n) != 1:
            raise ConfigError(f"{w}: every source must span the same number of layers")
        out.append(SliceSpec(srcs, _check_params(method, s.get("parameters"), w, "top", unused)))
    return out


_COUNT = ("no", "one", "two", "three", "four")


def _models(k):
    return f"{_COUNT[k] if k < len(_COUNT) else k} model{'' if k == 1 else 's'}"


def _check_model_count(m, paths, base, where):
    """The method table's arity: min_models..max_models inputs besides the base (a base of
    a method that takes none is one more input)."""
    if m.base == "none":
        n = len(dict.fromkeys(paths + ([base] if base else [])))
    else:
        n = len([p for p in paths if p != base])
    lo, hi = m.min_models, m.max_models
    if lo <= n and (hi is None or n <= hi):
        return
    if lo != hi:
        bound = f"at least {_models(lo)}" if hi is None or n < lo else f"at most {_models(hi)}"
        raise ConfigError(f"{where}: {m.name} needs {bound} besides the base, got {n}")
    if m.base == "required":
        raise ConfigError(f"{where}: {m.name} needs exactly {_models(lo + 1)}: base_model and "
                          f"{_COUNT[lo]} other{'' if lo == 1 else 's'} (got {n} besides the base)")
    if m.base == "optional":
        raise ConfigError(f"{where}: {m.name} needs exactly {_models(lo)} besides the base, "
                          f"got {n}")
    raise ConfigError(f"{where}: {m.name} takes exactly {_models(lo)} per slice, got {n}")


def _check_roles(cfg, where):
    m = cfg.method
    paths = [e.path for e in cfg.models] if cfg.models else \
        [e.path for e in cfg.slices[0].sources]
    if m.base == "required" and not cfg.base:
        raise ConfigError(f"{where}: {m.name} needs base_model")
    _check_model_count(m, paths, cfg.base, where)
    # required per-model parameters must be reachable for every non-base model
    for name, default in m.tensor.items():
        if default is REQUIRED and name not in cfg.params:
            entries = cfg.models or [s for sl in cfg.slices for s in sl.sources]
            for e in entries:
                if (e.path != cfg.base or m.base == "none") and name not in e.params:
                    raise ConfigError(f"{where}: {m.name} needs {name} for model {e.path}")
            if m.base == "none" and cfg.base and cfg.base not in paths:
                raise ConfigError(f"{where}: {m.name} merges base_model {cfg.base} as one more "
                                  f"input, so it needs a {name}: list it under models with one")
    for name, default in m.glob.items():
        if default is REQUIRED and name not in cfg.params and not (
                cfg.slices and all(name in s.params for s in cfg.slices)):
            raise ConfigError(f"{where}: {m.name} needs the parameter {name}")


# ------------------------------------------------------------------------------------------
# evaluation per tensor

def evaluate(value, tensor_name, t):
    """The value of a setting for one tensor at layer position t in [0, 1]."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        for entry in value:
            f = entry.get("filter")
            if f is None or f == "*" or f in tensor_name:
                return evaluate(entry["value"], tensor_name, t)
        return None
    if isinstance(value, list):
        k = len(value) - 1
        if k == 0:
            return value[0]
        s = t * k
        i0 = min(int(math.floor(s)), k)
        frac = s - i0
        return (1 - frac) * value[i0] + frac * value[min(k, i0 + 1)]
    return value


def lookup(name, tensor_name, t, *layers):
    """First non-None value of parameter `name` over the parameter dicts (most specific
    first); None if none sets it."""
    for params in layers:
        if params and name in params:
            v = evaluate(params[name], tensor_name, t)
            if v is not None:
                return v
    return None


LAYER_RE = re.compile(r"\.(\d+)\.")


def layer_index(tensor_name):
    m = LAYER_RE.search(tensor_name)
    return int(m.group(1)) if m else None

