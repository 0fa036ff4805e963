"""LoRA adapters as merge inputs (``model: base+adapter_folder``, mergekit's syntax).

The adapter is PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``. The model the
merge sees is the base with the adapter merged in, tensor by tensor, when a tensor is read:

* a LoRA target ``<name>`` (keys ``base_model.model.<name>.lora_A.weight`` ``[r, in]`` and
  ``...lora_B.weight`` ``[out, r]``): ``W = W_base + s · B @ A`` (transposed when
  ``fan_in_fan_out``), with ``s = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``) and
  ``r``, ``alpha`` taken from ``rank_pattern`` / ``alpha_pattern`` where a pattern matches
  the module name (PEFT's rule: the first pattern ``p`` with ``(.*\\.)?(p)$`` matching);
* an embedding target (``lora_embedding_A`` ``[r, vocab]``, ``lora_embedding_B``
  ``[hidden, r]``): ``W = W_base + s · (B @ A)ᵀ``;
* every adapted module must be one ``target_modules`` names (PEFT would silently skip it);
* a full tensor saved by the adapter (``modules_to_save``, or an embedding saved as
  ``<name>.base_layer.weight``) replaces the base's.

The delta is computed in float32 and the sum rounded once to the base tensor's dtype. What
this does not support is refused when the config is read, naming the file, key and rule:
another PEFT type, DoRA (``use_dora``), LoRA biases (``lora_bias``), only an
``adapter_model.bin``, A/B shapes that disagree with ``r`` or with the base tensor, and
adapter tensors naming a tensor the base lacks.
"""
import json
import math
import os
import re

import numpy as np

from .. import safetensors as st
from ..errors import ConfigError

PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<mod>.+)\.(?P<kind>lora_A|lora_B)\.weight$|"
                  r"^(?P<emod>.+)\.(?P<ekind>lora_embedding_A|lora_embedding_B)$")


class LoraRef(str):
    """A model reference ``base+adapter``: the string (a dict key, written back into
    mergekit_config.yml as mergekit reads it) plus the two folders."""

    def __new__(cls, folder, adapter):
        obj = super().__new__(cls, f"{folder}+{adapter}")
        obj.folder, obj.adapter = folder, adapter
        return obj


def folder_of(path):
    """The folder holding a model's config and tokenizer (the base folder of a LoRA ref)."""
    return getattr(path, "folder", path)


def _pattern_value(patterns, module, default):
    for pat, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pat})$", module):
            return value
    return default


def _targeted(targets, module):
    """PEFT's target_modules rule: a regex matching the whole module name, or a list of
    names each matching the module name or its last dotted parts; None: not checked."""
    if targets is None or targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def read_adapter_config(adapter):
    path = os.path.join(adapter, "adapter_config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"LoRA adapter {adapter}: adapter_config.json is missing (a PEFT "
                          "adapter folder holds adapter_config.json and "
                          "adapter_model.safetensors)")
    with open(path, encoding="utf-8") as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{path}: peft_type {cfg.get('peft_type')!r} is not supported; only "
                          "LORA adapters merge into a model")
    if cfg.get("use_dora"):
        raise ConfigError(f"{path}: use_dora: DoRA adapters are not supported (their "
                          "magnitude vector rescales whole columns; merge them with PEFT's "
                          "merge_and_unload first)")
    if cfg.get("lora_bias"):
        raise ConfigError(f"{path}: lora_bias: adapters with a LoRA bias are not supported")
    for key in ("r", "lora_alpha"):
        v = cfg.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{path}: {key} must be a positive number, got {v!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(cfg.get(key) or {}, dict):
            raise ConfigError(f"{path}: {key} must be a mapping of module pattern to value")
    return cfg, path


class LoraModel:
    """The base model with a PEFT LoRA adapter merged in, with the reader interface the
    merge engine uses (keys, in, info, get, prefetch)."""

    def __init__(self, ref):
        self.folder, self.adapter = ref.folder, ref.adapter
        self.config, cfg_path = read_adapter_config(self.adapter)
        weights = os.path.join(self.adapter, "adapter_model.safetensors")
        if not os.path.isfile(weights):
            bin_ = os.path.join(self.adapter, "adapter_model.bin")
            hint = (" (only adapter_model.bin is there: fusechat reads safetensors; save the "
                    "adapter with safe_serialization=True)") if os.path.isfile(bin_) else ""
            raise ConfigError(f"LoRA adapter {self.adapter}: adapter_model.safetensors is "
                              f"missing{hint}")
        self.base = st.open(self.folder)
        self.lora = st.open(weights)
        self.deltas = {}    # base tensor name -> (A key, B key, scale, embedding)
        self.replace = {}   # base tensor name -> adapter key
        self._index(weights)

    def _index(self, weights):
        cfg = self.config
        pairs = {}
        for key in self.lora.keys():
            if not key.startswith(PREFIX):
                raise ConfigError(f"{weights}: tensor {key!r} does not start with {PREFIX!r} "
                                  "(PEFT's naming)")
            rest = key[len(PREFIX):]
            m = _KEY.match(rest)
            if m:
                mod = m.group("mod") or m.group("emod")
                kind = m.group("kind") or m.group("ekind")
                pairs.setdefault(mod, {})[kind[-1]] = key
                pairs[mod]["embedding"] = m.group("emod") is not None
                continue
            if ".lora_" in rest:
                raise ConfigError(f"{weights}: tensor {key!r} is not a LoRA A/B matrix fusechat "
                                  "knows (lora_A.weight, lora_B.weight, lora_embedding_A/B)")
            name = rest.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
            self._check_base(name, key, weights)
            if tuple(self.lora.info(key).shape) != tuple(self.base.info(name).shape):
                raise ConfigError(f"{weights}: {key!r} has shape {self.lora.info(key).shape}, "
                                  f"the base's {name!r} {self.base.info(name).shape}: a saved "
                                  "module must keep the base's shape (resized vocabularies are "
                                  "not supported)")
            self.replace[name] = key
        for mod, p in pairs.items():
            if "A" not in p or "B" not in p:
                have, lack = ("A", "B") if "A" in p else ("B", "A")
                raise ConfigError(f"{weights}: module {mod!r} has lora_{have} but not "
                                  f"lora_{lack} (a LoRA target needs both matrices)")
            name = mod + ".weight"
            self._check_base(name, p["A"], weights)
            if not _targeted(cfg.get("target_modules"), mod):
                # PEFT would load the base without this module's update (the tensors ignored)
                raise ConfigError(f"{weights}: {p['A']!r} adapts module {mod!r}, which "
                                  f"target_modules ({cfg.get('target_modules')!r}) in "
                                  "adapter_config.json does not name; the adapter is "
                                  "inconsistent")
            r = _pattern_value(cfg.get("rank_pattern"), mod, cfg["r"])
            alpha = _pattern_value(cfg.get("alpha_pattern"), mod, cfg["lora_alpha"])
            a, b = self.lora.info(p["A"]).shape, self.lora.info(p["B"]).shape
            if len(a) != 2 or len(b) != 2 or a[0] != r or b[1] != r:
                raise ConfigError(
                    f"{weights}: module {mod!r}: {p['A']!r} has shape {list(a)} and {p['B']!r} "
                    f"{list(b)}, but the rank is r = {r} (adapter_config.json r / rank_pattern):"
                    f" A must be [r, in] and B [out, r]")
            shape = (b[0], a[1])
            if p["embedding"] or cfg.get("fan_in_fan_out"):
                shape = shape[::-1]
            base_shape = tuple(self.base.info(name).shape)
            if base_shape != shape:
                raise ConfigError(f"{weights}: module {mod!r}: B @ A gives {list(shape)}, the "
                                  f"base's {name!r} is {list(base_shape)}")
            scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
            self.deltas[name] = (p["A"], p["B"], scale, p["embedding"]
                                 or bool(cfg.get("fan_in_fan_out")))

    def _check_base(self, name, key, weights):
        if name not in self.base:
            raise ConfigError(f"{weights}: {key!r} adapts {name!r}, which the base model "
                              f"{self.folder} does not have")

    # the reader interface -------------------------------------------------------------
    def keys(self):
        return self.base.keys()

    def __contains__(self, name):
        return name in self.base

    def info(self, name):
        return self.base.info(name)

    def prefetch(self, name):
        self.base.prefetch(name)

    def get(self, name):
        src = self.lora if name in self.replace else self.base
        w = src.get(self.replace.get(name, name))
        if name not in self.deltas:
            return w
        a_key, b_key, scale, transpose = self.deltas[name]
        a = self.lora.get(a_key, np.float32)
        b = self.lora.get(b_key, np.float32)
        delta = b @ a
        if transpose:
            delta = delta.T
        out = w.astype(np.float32) + np.float32(scale) * delta
        return out.astype(w.dtype)


def open_model(path):
    """A reader for a model reference: a LoraModel for ``base+adapter``, else the
    safetensors file or folder."""
    if isinstance(path, LoraRef):
        return LoraModel(path)
    return st.open(path)
