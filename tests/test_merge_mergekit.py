"""fusechat merge against mergekit (the oracle) on tiny random Llama checkpoints in float32,
for every deterministic method both implement: max |fusechat - mergekit| / max |mergekit|
below 1e-5 for every tensor. Skipped only when mergekit is not importable."""
import json
import os

import numpy as np
import pytest

mergekit = pytest.importorskip("mergekit")

import safetensors.numpy  # noqa: E402

from fusechat.merge import METHODS, run  # noqa: E402
from tests.merge_models import (PIVOT, hand_adapter, make_family, make_zoo,  # noqa: E402
                                 run_mergekit)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("mk_models")
    return make_family(str(root), 3, "float32", seed=11)


def _models(paths, **per_model):
    out = []
    for i, p in enumerate(paths):
        params = {k: (v[i] if isinstance(v, tuple) else v) for k, v in per_model.items()}
        out.append({"model": p, "parameters": params} if params else {"model": p})
    return out


def configs(base, ts):
    grad = [0.0, 0.5, 1.0]
    return {
        "linear": {"models": _models(ts, weight=(0.5, -0.2, 1.0))},
        "linear_filters": {"models": _models(ts, weight=(0.5, 0.3, 1.0)), "parameters": {
            "weight": [{"filter": "mlp", "value": [1.0, 0.1]}, {"value": 0.7}]}},
        "task_arithmetic": {"base_model": base, "models": _models(ts, weight=(0.3, 0.5, -0.2)),
                            "parameters": {"lambda": 0.8}},
        "ties": {"base_model": base, "models": _models(ts, weight=(0.2, 0.5, 0.3),
                                                       density=(0.6, 0.3, 0.9))},
        "ties_gradient": {"base_model": base, "models": _models(ts, weight=0.2),
                          "parameters": {"density": grad[::-1][:2] + [0.4], "normalize": False}},
        # int(density * n) == 0 on the 64-element norms: at least one element per model kept
        "ties_tiny_density": {"base_model": base, "models": _models(ts, weight=(0.2, 0.5, 0.3),
                                                                    density=(0.01, 0.005, 0.3))},
        # n_top = int(gamma * n) == 0 on the norms: no top outliers dropped
        "breadcrumbs_no_top": {"base_model": base, "models": _models(ts, weight=0.4,
                                                                     density=0.5, gamma=0.01)},
        "breadcrumbs": {"base_model": base, "models": _models(ts, weight=0.4, density=0.7,
                                                              gamma=0.05)},
        "breadcrumbs_ties": {"base_model": base, "models": _models(ts, weight=(1.0, 0.5, 0.5),
                                                                   density=0.8, gamma=0.1)},
        "sce": {"base_model": base, "models": _models(ts), "parameters": {"select_topk": 0.1}},
        "sce_full": {"base_model": base, "models": _models(ts)},
        "slerp": {"base_model": base, "models": _models([base, ts[0]]),
                  "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 0.3]},
                                       {"filter": "mlp", "value": [1.0, 0.5, 0.7]},
                                       {"value": 0.5}]}},
        "nuslerp": {"base_model": base, "models": _models(ts[:2], weight=(1.0, 2.0))},
        "nuslerp_rows": {"models": _models(ts[:2], weight=(1.0, 3.0)),
                         "parameters": {"nuslerp_flatten": False}},
        "multislerp": {"base_model": base, "models": _models(ts, weight=(1.0, 2.0, 0.5))},
        "karcher": {"base_model": base, "models": _models(ts)},
        "model_stock": {"base_model": base, "models": _models(ts)},
        "nearswap": {"base_model": base, "models": _models(ts[:1]), "parameters": {"t": 0.01}},
        # mergekit's own tests put weight on every model, also where the method ignores it
        "slerp_weights": {"base_model": base, "models": _models([base, ts[0]], weight=0.5),
                          "parameters": {"t": 0.4}},
        "nearswap_weights": {"base_model": base, "models": _models([base, ts[0]], weight=1.0),
                             "parameters": {"t": 0.02}},
        "sce_weights": {"base_model": base, "models": _models([base] + ts, weight=1.0),
                        "parameters": {"select_topk": 0.5}},
        "karcher_weights": {"models": _models(ts, weight=(1.0, 0.5, 0.2))},
        "model_stock_weights": {"base_model": base, "models": _models([base] + ts, weight=1.0)},
        "ram": {"base_model": base, "models": _models(ts), "parameters": {"epsilon": 0.01}},
        "ram_default": {"base_model": base, "models": _models(ts, weight=1.0)},
        "ramplus_tl": {"base_model": base, "models": _models(ts), "parameters": {"epsilon": 0.015}},
        "ramplus_tl_params": {"base_model": base, "models": _models(ts[:2]),
                              "parameters": {"epsilon": 0.01, "r": 0.5, "alpha": 3.0}},
        "dare_linear_density1": {"base_model": base, "models": _models(ts, weight=0.3)},
        "passthrough_frankenmerge": {"slices": [
            {"sources": [{"model": ts[0], "layer_range": [0, 2]}]},
            {"sources": [{"model": ts[1], "layer_range": [1, 3]}]},
            {"sources": [{"model": base, "layer_range": [2, 3],
                          "parameters": {"scale": [{"filter": "o_proj", "value": 0.5},
                                                   {"value": 1.0}]}}]}]},
        "slerp_slices": {"base_model": base, "parameters": {"t": [0.1, 0.9]}, "slices": [
            {"sources": [{"model": base, "layer_range": [0, 2]},
                         {"model": ts[0], "layer_range": [0, 2]}]},
            {"sources": [{"model": base, "layer_range": [1, 3]},
                         {"model": ts[1], "layer_range": [1, 3]}],
             "parameters": {"t": 0.3}}]},
    }


def _load(folder):
    out = {}
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            out.update(safetensors.numpy.load_file(os.path.join(folder, name)))
    return out


@pytest.mark.parametrize("case", sorted(configs("b", ["t0", "t1", "t2"])))
def test_matches_mergekit(family, tmp_path, case):
    base, ts = family
    cfg = dict(configs(base, ts)[case])
    cfg["merge_method"] = max((m for m in METHODS if case == m or case.startswith(m + "_")),
                              key=len)
    cfg["dtype"] = "float32"
    cfg["out_dtype"] = "float32"
    run_mergekit(cfg, str(tmp_path / "mk"))
    run(cfg, tmp_path / "fc", quiet=True)
    want, got = _load(tmp_path / "mk"), _load(tmp_path / "fc")
    assert sorted(want) == sorted(got)
    worst = 0.0
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape and g.dtype == w.dtype, name
        rel = float(np.max(np.abs(g.astype(np.float64) - w)) / max(np.max(np.abs(w)), 1e-30))
        worst = max(worst, rel)
        assert rel < 1e-5, (name, rel)
    print(f"{case}: worst relative error {worst:.2e}")
    assert worst < 1e-5


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "merge")


@pytest.fixture(scope="module")
def zoo32(tmp_path_factory):
    """./models/ and ./adapters/ as the examples name them, float32."""
    import yaml  # noqa: F401

    return make_zoo(tmp_path_factory.mktemp("zoo32"), "float32", seed=7)


@pytest.mark.parametrize("example", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".yml")
                                           and "varm" not in f))  # varm: fusechat's own
def test_example_configs_match_mergekit(zoo32, tmp_path, monkeypatch, example):
    """Every example config mergekit knows, in float32: the deterministic ones within 1e-5
    relative; DARE (random masks) by its statistics: per tensor, the L1 norm of the merged
    update agrees within 3% (masks keep `density` of each delta, rescaled to its L1 norm)."""
    import yaml

    monkeypatch.chdir(zoo32)
    with open(os.path.join(EXAMPLES, example)) as f:
        cfg = yaml.safe_load(f)
    cfg["dtype"] = cfg["out_dtype"] = "float32"
    if "+" in str(cfg["models"]):
        pytest.importorskip("peft")  # mergekit merges LoRA adapters with PEFT
    run_mergekit(cfg, str(tmp_path / "mk"), lora_merge_cache=str(tmp_path / "cache"))
    run(cfg, tmp_path / "fc", quiet=True)
    want, got = _load(tmp_path / "mk"), _load(tmp_path / "fc")
    base = _load(os.path.join(zoo32, "models", PIVOT))
    assert sorted(want) == sorted(got)
    for name, w in want.items():
        g = got[name].astype(np.float64)
        if METHODS[cfg["merge_method"]].randomized:
            if w.size >= 4096:
                l1 = [np.abs(a - base[name]).sum() for a in (g, w)]
                assert abs(l1[0] / l1[1] - 1) < 0.03, (name, l1)
            continue
        rel = float(np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-30))
        assert rel < 1e-5, (example, name, rel)


@pytest.mark.parametrize("source", ["base", "union", "model"])
def test_tokenizer_source_matches_mergekit(tmp_path, source):
    """Vocabularies of 100 and 120 tokens: embedding rows matched by token, in float32. The
    union's added tokens come in set order in mergekit (varies between processes), in the
    models' id order in fusechat: rows are compared by token."""
    tokenizers = pytest.importorskip("tokenizers")
    base, (same, big) = make_family(str(tmp_path / "f"), 2, "float32", target_vocab=[100, 120],
                                    seed=5)
    cfg = {"merge_method": "task_arithmetic", "base_model": base, "dtype": "float32",
           "out_dtype": "float32", "tokenizer_source": big if source == "model" else source,
           "models": [{"model": p, "parameters": {"weight": 0.5}} for p in (same, big)]}
    run_mergekit(cfg, str(tmp_path / "mk"))
    run(cfg, tmp_path / "fc", quiet=True)
    want, got = _load(tmp_path / "mk"), _load(tmp_path / "fc")
    assert sorted(want) == sorted(got)
    ids = [tokenizers.Tokenizer.from_file(str(tmp_path / o / "tokenizer.json"))
           for o in ("mk", "fc")]
    for name, w in want.items():
        assert got[name].shape == w.shape, name
        if w.shape[0] == 120:  # the mergekit row of each fusechat token
            w = w[[ids[0].token_to_id(ids[1].id_to_token(i)) for i in range(120)]]
        rel = float(np.max(np.abs(got[name].astype(np.float64) - w)) / np.max(np.abs(w)))
        assert rel < 1e-5, (name, rel)


def test_lora_matches_mergekit(family, tmp_path):
    """A LoRA input (base+adapter, rank_pattern and alpha_pattern) in a TIES merge: mergekit
    merges the adapter with PEFT into a cached model first; fusechat tensor by tensor."""
    pytest.importorskip("peft")
    base, ts = family
    adapter = hand_adapter(str(tmp_path / "ad"), _load(base), np.random.default_rng(8))
    name = os.path.join(adapter, "adapter_model.safetensors")  # deltas of the targets' size
    t = safetensors.numpy.load_file(name)
    safetensors.numpy.save_file({k: v * 0.05 for k, v in t.items()}, name)
    cfg = {"merge_method": "ties", "base_model": base, "dtype": "float32",
           "out_dtype": "float32",
           "models": [{"model": f"{base}+{adapter}", "parameters": {"weight": 0.6,
                                                                     "density": 0.5}},
                      {"model": ts[0], "parameters": {"weight": 0.4, "density": 0.7}}]}
    run_mergekit(cfg, str(tmp_path / "mk"), lora_merge_cache=str(tmp_path / "cache"))
    run(cfg, tmp_path / "fc", quiet=True)
    want, got = _load(tmp_path / "mk"), _load(tmp_path / "fc")
    assert sorted(want) == sorted(got)
    for name, w in want.items():
        rel = float(np.max(np.abs(got[name].astype(np.float64) - w)) / np.max(np.abs(w)))
        assert rel < 1e-5, (name, rel)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_tokenizer_block_matches_mergekit(tmp_path, method):
    """tokenizer: {source: union, tokens, pad_to_multiple_of}: overrides of tokens all models
    have (ignored unless forced), of tokens some lack (their default row: a model's row, a
    model_token by id, zero), forced ones, and padding rows (the mean of each model's rows
    before the merge: TIES sees them), against mergekit row by token."""
    tokenizers = pytest.importorskip("tokenizers")
    base, (same, big) = make_family(str(tmp_path / "f"), 2, "float32", target_vocab=[100, 120],
                                    seed=5)
    tokens = {"w5": {"source": big}, "w110": {"source": {"kind": "zero"}},
              "w6": {"source": {"kind": "model_token", "model": same, "token": "w7"}},
              "w8": {"source": base, "force": True}, "w105": {"source": big},
              "w111": {"source": {"kind": "model_token", "model": base, "token_id": 3},
                       "force": True}}
    cfg = {"merge_method": method, "base_model": base, "dtype": "float32",
           "out_dtype": "float32",
           "tokenizer": {"source": "union", "tokens": tokens, "pad_to_multiple_of": 64},
           "models": [{"model": p, "parameters": {"weight": 0.5, "density": 0.5}}
                      for p in (same, big)]}
    if method == "task_arithmetic":
        for m in cfg["models"]:
            del m["parameters"]["density"]
    run_mergekit(cfg, str(tmp_path / "mk"))
    run(cfg, tmp_path / "fc", quiet=True)
    want, got = _load(tmp_path / "mk"), _load(tmp_path / "fc")
    ids = [tokenizers.Tokenizer.from_file(str(tmp_path / o / "tokenizer.json"))
           for o in ("mk", "fc")]
    for o in ("mk", "fc"):
        with open(tmp_path / o / "config.json") as f:
            assert json.load(f)["vocab_size"] == 128
    for name, w in want.items():
        assert got[name].shape == w.shape, name
        if w.shape[0] == 128:  # the mergekit row of each fusechat token, then the padding
            w = w[[ids[0].token_to_id(ids[1].id_to_token(i)) for i in range(120)]
                  + list(range(120, 128))]
        rel = float(np.max(np.abs(got[name].astype(np.float64) - w)) / np.max(np.abs(w)))
        assert rel < 1e-5, (name, rel)


def test_arcee_fusion_matches_mergekit(family, tmp_path):
    """arcee_fusion: every element is the base's or the model's in both, and the fused sets
    agree but for a few elements at the fence. fusechat computes each row's KL divergence
    in float64; mergekit in float32, where the divergence of two near-equal rows is partly
    rounding, so elements whose importance lies within that rounding of the fence can fall
    either way (0.07% of the elements of these models)."""
    base, ts = family
    cfg = {"merge_method": "arcee_fusion", "base_model": base, "dtype": "float32",
           "out_dtype": "float32", "models": [{"model": ts[0]}]}
    run_mergekit(cfg, str(tmp_path / "mk"))
    run(cfg, tmp_path / "fc", quiet=True)
    want, got = _load(tmp_path / "mk"), _load(tmp_path / "fc")
    b, x = _load(base), _load(ts[0])
    assert sorted(want) == sorted(got)
    differ = total = 0
    for name, w in want.items():
        g = got[name]
        fused_w, fused_g = w != b[name], g != b[name]
        assert np.array_equal(w[fused_w], (b[name] + (x[name] - b[name]))[fused_w]), name
        assert np.array_equal(g[fused_g], (b[name] + (x[name] - b[name]))[fused_g]), name
        if w.size >= 1000:  # a Gaussian delta: about 5-8% beyond the fence
            assert 0.02 < fused_g.mean() < 0.12, (name, fused_g.mean())
        differ += int((fused_w != fused_g).sum())
        total += w.size
        assert (fused_w != fused_g).sum() <= max(4, 0.02 * fused_w.sum()), name
    print(f"arcee_fusion: {differ} of {total} elements decided differently")
    assert differ <= 0.002 * total
