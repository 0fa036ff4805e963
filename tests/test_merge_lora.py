"""LoRA adapters as merge inputs (``base+adapter``): against PEFT's own merge_and_unload when
peft is installed, against a NumPy twin of the formula on hand-built adapters, and the
errors (missing files, ranks that disagree with r, tensors the base lacks, DoRA)."""
import json
import os

import numpy as np
import pytest
import safetensors.numpy

from fusechat.errors import ConfigError
from fusechat.merge import run
from tests.merge_models import (HAND_ADAPTER_SCALES, LORA_PREFIX as PRE, hand_adapter,
                                 make_family, write_adapter)
from tests.reference import merge_ref as ref

@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(str(tmp_path_factory.mktemp("lora_models")), 1, "float32", seed=21)


def _load(folder):
    return safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))


def _passthrough(ref):
    return {"merge_method": "passthrough", "models": [{"model": ref}], "dtype": "float32"}


@pytest.mark.parametrize("rslora", [False, True])
def test_matches_peft(family, tmp_path, rslora):
    """Linear and embedding targets, rank_pattern, alpha_pattern, rslora and a module saved
    whole (modules_to_save, changed after training) against PEFT's merge_and_unload."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base = family[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, use_rslora=rslora, init_lora_weights=False,
                          target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
                          modules_to_save=["lm_head"], rank_pattern={"down_proj": 2},
                          alpha_pattern={"v_proj": 3})
    torch.manual_seed(4)
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        pm.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.25)
    adapter = str(tmp_path / "adapter")
    pm.save_pretrained(adapter)
    want = {k: v.detach().numpy() for k, v in pm.merge_and_unload().state_dict().items()}
    run(_passthrough(f"{base}+{adapter}"), tmp_path / "out", quiet=True)
    got = _load(tmp_path / "out")
    assert sorted(got) == sorted(want)
    changed = 0
    for name, w in want.items():
        rel = float(np.max(np.abs(got[name] - w)) / np.max(np.abs(w)))
        assert rel < 1e-6, (name, rel)
        changed += not np.array_equal(w, _load(base)[name])
    assert changed == 3 * 3 + 2  # q, v, down in 3 layers, embed_tokens, lm_head


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_formula_twin(family, tmp_path, fan_in_fan_out):
    """W + (alpha/r)·B@A per target (transposed for fan_in_fan_out), in float64 NumPy; a
    LoRA input inside a linear merge is the merged model's tensor."""
    base, (other,) = family
    bt = _load(base)
    adapter = hand_adapter(str(tmp_path / "ad"), bt, np.random.default_rng(3), fan_in_fan_out)
    lt = safetensors.numpy.load_file(os.path.join(adapter, "adapter_model.safetensors"))
    want = {k: v.astype(np.float64) for k, v in bt.items()}
    for mod, scale in HAND_ADAPTER_SCALES.items():
        want[mod + ".weight"] = ref.lora(bt[mod + ".weight"], lt[f"{PRE}{mod}.lora_A.weight"],
                                         lt[f"{PRE}{mod}.lora_B.weight"], scale, fan_in_fan_out)
    ot = _load(other)
    cfg = {"merge_method": "linear", "dtype": "float32",
           "models": [{"model": f"{base}+{adapter}", "parameters": {"weight": 0.25}},
                      {"model": other, "parameters": {"weight": 0.75}}]}
    run(cfg, tmp_path / "out", quiet=True)
    got = _load(tmp_path / "out")
    for name, w in want.items():
        w = 0.25 * w + 0.75 * ot[name]
        rel = float(np.max(np.abs(got[name] - w)) / np.max(np.abs(w)))
        assert rel < 1e-6, (name, rel)
    with open(tmp_path / "out" / "mergekit_config.yml") as f:
        assert f"{base}+{adapter}" in f.read()


def _error(family, tmp_path, tensors, match, **config):
    adapter = write_adapter(str(tmp_path / "ad"), tensors, **config)
    with pytest.raises(ConfigError, match=match):
        run(_passthrough(f"{family[0]}+{adapter}"), tmp_path / "out", quiet=True)
    assert not os.path.exists(tmp_path / "out")


def _pair(mod, a_shape, b_shape):
    return {f"{PRE}{mod}.lora_A.weight": np.zeros(a_shape, np.float32),
            f"{PRE}{mod}.lora_B.weight": np.zeros(b_shape, np.float32)}


def test_missing_files(family, tmp_path):
    with pytest.raises(ConfigError, match="adapter_config.json is missing"):
        os.makedirs(tmp_path / "empty")
        run(_passthrough(f"{family[0]}+{tmp_path / 'empty'}"), tmp_path / "out", quiet=True)
    _error(family, tmp_path, None, "adapter_model.safetensors is missing")
    open(tmp_path / "ad" / "adapter_model.bin", "wb").close()
    _error(family, tmp_path, None, "only adapter_model.bin is there")


def test_rank_mismatch(family, tmp_path):
    q = "model.layers.0.self_attn.q_proj"
    _error(family, tmp_path, _pair(q, (4, 64), (64, 4)), r"rank is r = 8.*A must be \[r, in\]",
           r=8)
    _error(family, tmp_path, _pair(q, (2, 64), (64, 2)), r"rank is r = 4", r=4)
    _error(family, tmp_path, _pair(q, (4, 64), (64, 2)), r"rank is r = 4", r=4)
    _error(family, tmp_path, _pair(q, (4, 96), (64, 4)), r"B @ A gives \[64, 96\].*\[64, 64\]")
    only_a = {f"{PRE}{q}.lora_A.weight": np.zeros((4, 64), np.float32)}
    _error(family, tmp_path, only_a, "has lora_A but not lora_B")


def test_unknown_tensor(family, tmp_path):
    _error(family, tmp_path, _pair("model.layers.7.self_attn.q_proj", (4, 64), (64, 4)),
           r"adapts 'model.layers.7.self_attn.q_proj.weight', which the base model .* does "
           "not have")
    _error(family, tmp_path, {f"{PRE}score.weight": np.zeros((2, 64), np.float32)},
           r"'base_model.model.score.weight' adapts 'score.weight'")
    _error(family, tmp_path, {"model.norm.weight": np.zeros(64, np.float32)},
           "does not start with 'base_model.model.'")


def test_untargeted_module(family, tmp_path):
    """PEFT skips tensors of modules target_modules does not name: refused as inconsistent."""
    _error(family, tmp_path, _pair("model.layers.0.self_attn.q_proj", (4, 64), (64, 4)),
           r"adapts module 'model.layers.0.self_attn.q_proj', which target_modules "
           r"\(\['v_proj'\]\)", target_modules=["v_proj"])


def test_unsupported_adapters(family, tmp_path):
    q = _pair("model.layers.0.self_attn.q_proj", (4, 64), (64, 4))
    _error(family, tmp_path, q, "use_dora: DoRA adapters are not supported", use_dora=True)
    _error(family, tmp_path, q, "peft_type 'IA3' is not supported", peft_type="IA3")
    _error(family, tmp_path, q, "r must be a positive number", r=0)
