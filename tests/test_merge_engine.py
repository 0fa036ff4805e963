"""fusechat.merge.run / `fusechat merge` end to end on tiny random Llama checkpoints: the
shipped example configs (checked against the float64 twins), the output folder, errors,
vocabulary mismatches, interruption safety and the CLI."""
import hashlib
import json
import logging
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import yaml

from fusechat.errors import ConfigError
from fusechat.merge import run
from tests.merge_models import (EOT, HAND_ADAPTER_SCALES, LORA_PREFIX, OPENCHAT_TEMPLATE, PIVOT,
                                 V2, make_family, make_zoo, write_llama, llama_shapes)
from tests.reference import merge_ref as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "merge")
BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """./models/ with the pivot and the v1 and v2 targets, bf16, and ./adapters/ with a
    LoRA adapter of the pivot, under one root."""
    return make_zoo(tmp_path_factory.mktemp("zoo"), "bfloat16", seed=3)


def load(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update(safetensors.numpy.load_file(os.path.join(folder, name)))
    return out


def digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(f.encode() + fh.read())
    return h.hexdigest()


def expected(example, base, xs, seed=0, name=""):
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    B, X = f64(base), [f64(x) for x in xs]
    n = len(X)
    if example == "fusechat-linear.yml":
        return ref.linear(X, [0.2] * n)
    if example == "fusechat-sce.yml":
        return ref.sce(B, X, 0.1)
    if example == "fusechat-v1-varm.yml":
        return ref.varm(B, X)
    method, p = {
        "fusechat-ta.yml": ("task_arithmetic", dict(weight=0.3, density=1.0, normalize=False,
                                                    rescale=False)),
        "fusechat-ties.yml": ("ties", dict(weight=0.2, density=0.6, normalize=True, rescale=False)),
        "fusechat-lora-ties.yml": ("ties", dict(weight=[0.4, 0.3, 0.3], density=0.6,
                                                normalize=True, rescale=False)),
        "fusechat-dare.yml": ("dare_linear", dict(weight=0.2, density=0.6, normalize=True,
                                                  rescale=True)),
    }[example]
    q = {"weight": p["weight"] if isinstance(p["weight"], list) else [p["weight"]] * n, "density": [p["density"]] * n, "gamma": [0.01] * n,
         "epsilon": [0.15] * n, "normalize": p["normalize"], "rescale": p["rescale"],
         "lambda": 1.0}
    return ref.gta(method, base, xs, q, seed, name)


@pytest.mark.parametrize("example", sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".yml")))
def test_example_configs_run_unchanged(zoo, tmp_path, monkeypatch, example):
    monkeypatch.chdir(zoo)
    out = run(os.path.join(EXAMPLES, example), tmp_path / "out", quiet=True, seed=0)
    cfg = yaml.safe_load(open(os.path.join(EXAMPLES, example)))
    base, inputs = example_inputs(zoo, cfg)
    got = load(out)
    assert sorted(got) == sorted(base)
    for name, b in base.items():
        want = expected(example, b, [x[name] for x in inputs], 0, name)
        g = got[name]
        assert g.dtype == {"float16": np.float16, "bfloat16": BF16}[cfg["dtype"]]
        w = np.asarray(want).astype(g.dtype).astype(np.float64)
        err = np.abs(g.astype(np.float64) - w)
        tol = 2.0 ** -7 * np.abs(w) + 1e-6
        assert np.all(err <= tol), (example, name, float(err.max()))
    files = set(os.listdir(out))
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "mergekit_config.yml", "README.md", "model.safetensors"} <= files
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    assert c["torch_dtype"] == cfg["dtype"]
    assert c["vocab_size"] == len(base["lm_head.weight"])
    if cfg.get("chat_template") == "auto":  # every model carries OpenChat's
        with open(os.path.join(out, "chat_template.jinja")) as f:
            assert f.read() == OPENCHAT_TEMPLATE
    assert not [f for f in os.listdir(tmp_path) if "fusechat-tmp" in f]


def example_inputs(zoo, cfg):
    """The base and the models of an example as the merge sees them, from the twins: a
    `pivot+adapter` model is the pivot with W + (alpha/r)·B@A on each adapted module,
    rounded once to the pivot's dtype; under a tokenizer block (the examples keep the
    pivot's vocabulary, `source: base`), the embedding and output matrices of every model
    are float32 with each forced token's row taken from its source, then padded with the
    mean row to `pad_to_multiple_of`."""
    def model(ref_):
        folder, _, adapter = ref_.partition("+")
        t = load(os.path.join(zoo, folder))
        if adapter:
            lt = safetensors.numpy.load_file(os.path.join(zoo, adapter,
                                                          "adapter_model.safetensors"))
            for mod, scale in HAND_ADAPTER_SCALES.items():
                w = ref.lora(t[mod + ".weight"], lt[f"{LORA_PREFIX}{mod}.lora_A.weight"],
                             lt[f"{LORA_PREFIX}{mod}.lora_B.weight"], scale)
                t[mod + ".weight"] = w.astype(t[mod + ".weight"].dtype)
        return t

    base = model(cfg.get("base_model", os.path.join("models", PIVOT)))  # linear: no base
    inputs = [model(m["model"]) for m in cfg["models"]]
    tok = cfg.get("tokenizer")
    if tok:
        assert tok["source"] == "base" and cfg["base_model"].endswith(PIVOT)
        vocab = json.load(open(os.path.join(zoo, "models", PIVOT, "tokenizer.json")))
        ids = vocab["model"]["vocab"]
        assert ids[EOT] == len(ids) - 1 and set(tok["tokens"]) == {EOT}
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            for t in [base] + inputs:
                m = t[name].astype(np.float32)
                for token, spec in tok["tokens"].items():
                    assert spec["force"]
                    m[ids[token]] = model(spec["source"])[name][ids[token]]
                t[name] = ref.pad_rows(m, tok["pad_to_multiple_of"])
    return base, inputs


def test_output_loads_in_transformers(zoo, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    monkeypatch.chdir(zoo)
    out = run(os.path.join(EXAMPLES, "fusechat-sce.yml"), tmp_path / "out", quiet=True,
              out_shard_size="50K")
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok("w1 w2 w3", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == 100 and torch.isfinite(logits).all()
    merged = load(out)
    np.testing.assert_array_equal(
        model.lm_head.weight.detach().to(torch.float32).numpy(),
        merged["lm_head.weight"].astype(np.float32))


def test_bf16_merge_of_transformers5_checkpoints_loads_as_bf16(tmp_path):
    """transformers 5 writes "dtype" in config.json and reads it before "torch_dtype": a bf16
    merge of float32 checkpoints saved that way must load as bfloat16 with dtype="auto"."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    base, targets = make_family(str(tmp_path / "f"), 2, "float32", seed=4)
    for p in [base] + targets:
        with open(os.path.join(p, "config.json")) as f:
            c = json.load(f)
        c["dtype"] = c.pop("torch_dtype")  # how transformers 5 saves it
        with open(os.path.join(p, "config.json"), "w") as f:
            json.dump(c, f)
    cfg = {"merge_method": "task_arithmetic", "base_model": base, "dtype": "bfloat16",
           "models": [{"model": p, "parameters": {"weight": 0.5}} for p in targets]}
    out = run(cfg, tmp_path / "o", quiet=True)
    with open(os.path.join(out, "config.json")) as f:
        c = json.load(f)
    assert c["dtype"] == c["torch_dtype"] == "bfloat16"
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.bfloat16


def test_sharded_output_and_index(zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(zoo)
    out = run(os.path.join(EXAMPLES, "fusechat-ties.yml"), tmp_path / "o", quiet=True,
              out_shard_size="40K")
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    shards = {v for v in index["weight_map"].values()}
    assert len(shards) > 1 and all(os.path.exists(os.path.join(out, s)) for s in shards)
    merged = load(out)
    assert sorted(merged) == sorted(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in merged.values())


def test_existing_output_refused_unless_overwrite(zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(zoo)
    cfg = os.path.join(EXAMPLES, "fusechat-ta.yml")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        run(cfg, out, quiet=True)
    assert (out / "keep.txt").read_text() == "old"
    run(cfg, out, quiet=True, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_same_seed_same_bytes_and_threads(zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(zoo)
    cfg = os.path.join(EXAMPLES, "fusechat-dare.yml")
    outs = [run(cfg, tmp_path / f"o{k}", quiet=True, seed=5, threads=k) for k in (1, 2, 8)]
    blobs = [open(os.path.join(o, "model.safetensors"), "rb").read() for o in outs]
    assert blobs[0] == blobs[1] == blobs[2]
    other = run(cfg, tmp_path / "s6", quiet=True, seed=6)
    assert open(os.path.join(other, "model.safetensors"), "rb").read() != blobs[0]


def test_exception_mid_merge_leaves_nothing(zoo, tmp_path, monkeypatch):
    import fusechat.merge.engine as engine

    monkeypatch.chdir(zoo)
    before = digest(zoo / "fam")
    calls = {"n": 0}
    real = engine.merge_kernel

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("injected failure")
        return real(*a, **k)

    monkeypatch.setattr(engine, "merge_kernel", failing)
    with pytest.raises(RuntimeError, match="injected"):
        run(os.path.join(EXAMPLES, "fusechat-sce.yml"), tmp_path / "out", quiet=True)
    assert os.listdir(tmp_path) == []
    assert digest(zoo / "fam") == before


def test_killed_merge_leaves_nothing_at_output(zoo, tmp_path, monkeypatch):
    """SIGKILL in the middle of writing: OUT never appears and the inputs are unchanged."""
    before = digest(zoo / "fam")
    script = f"""
import os, signal, sys
sys.path.insert(0, {ROOT!r})
os.chdir({str(zoo)!r})
import fusechat.safetensors as st
real = st.Writer.write
count = [0]
def write(self, *a, **k):
    count[0] += 1
    if count[0] == 10:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *a, **k)
st.Writer.write = write
from fusechat.merge import run
run({os.path.join(EXAMPLES, 'fusechat-ties.yml')!r}, {str(tmp_path / 'out')!r}, quiet=True)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    assert not (tmp_path / "out").exists()
    leftovers = os.listdir(tmp_path)
    assert all(name.startswith(".out.fusechat-tmp-") for name in leftovers)  # hidden temp only
    assert digest(zoo / "fam") == before
    # the next merge into the same path removes what the killed one left
    monkeypatch.chdir(zoo)
    run(os.path.join(EXAMPLES, "fusechat-ties.yml"), tmp_path / "out", quiet=True)
    assert os.listdir(tmp_path) == ["out"]


def _cfg(zoo, **over):
    m = os.path.join(zoo, "models")
    cfg = {"merge_method": "ties", "base_model": os.path.join(m, "openchat_3.5"),
           "models": [{"model": os.path.join(m, V2[i]),
                       "parameters": {"weight": 0.5, "density": 0.5}} for i in range(2)],
           "dtype": "bfloat16"}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("change,match", [
    (dict(merge_methd="ties"), "unknown key 'merge_methd'; valid keys: merge_method"),
    (dict(merge_method="tie"), "unknown merge_method 'tie'; valid methods: .*ties"),
    (dict(parameters={"desnity": 0.5}), "no parameter 'desnity' \\(did you mean 'density'\\?\\); "
                                        "valid parameters: density, int8_mask, lambda, "
                                        "normalize, rescale, rescale_norm, weight"),
    (dict(parameters={"normalize": "yes"}), "normalize must be true or false"),
    (dict(parameters={"density": 1.5}), r"density must be in \(0, 1\]"),
    (dict(parameters={"density": [0.5, 0.0]}), r"density must be in \(0, 1\]"),
    (dict(merge_method="della", parameters={"epsilon": 0.6}),
     "epsilon 0.6 is too large for density 0.5"),
    (dict(merge_method="slerp", parameters={"t": 0.5},
          models=[{"model": os.path.join("models", n)} for n in V2[:3]]),
     "slerp needs exactly two models"),
    (dict(dtype="float64"), "dtype 'float64' is not supported"),
    (dict(merge_method="dare_linear", parameters={"rescale_norm": "l3"}),
     "parameters: rescale_norm: rescale_norm must be one of l1, l2, linf, got 'l3'"),
    (dict(base_model=None), "ties needs base_model"),
    (dict(models=[{"model": "org/not-here"}]),
     "not a local folder, and the Hugging Face cache .* does not hold it. fusechat does not "
     "download models: run `huggingface-cli download org/not-here`"),
    (dict(models=[{"model": "org/not-here@v2"}]),
     "`huggingface-cli download org/not-here --revision v2`"),
    (dict(tokenizer_source=7), "tokenizer_source must be base, union or a model path"),
])
def test_config_errors_are_clear(zoo, tmp_path, monkeypatch, change, match):
    monkeypatch.chdir(zoo)
    with pytest.raises(ConfigError, match=match):
        run(_cfg(zoo, **change), tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_parameter_of_another_method_ignored_with_one_warning(zoo, tmp_path, caplog):
    """mergekit's own tests put weight on every slerp model: accepted, the same output as
    without it, and one warning naming the parameter and the method."""
    m = os.path.join(zoo, "models")
    cfg = {"merge_method": "slerp", "base_model": os.path.join(m, "openchat_3.5"),
           "parameters": {"t": 0.3, "density": 0.5},
           "models": [{"model": os.path.join(m, n), "parameters": {"weight": 0.5}}
                      for n in ("openchat_3.5", V2[0])]}
    with caplog.at_level(logging.WARNING):
        a = load(run(cfg, tmp_path / "a", quiet=True))
    msgs = [r.getMessage() for r in caplog.records if "does not use" in r.getMessage()]
    assert len(msgs) == 2, msgs  # one per parameter, not one per model or tensor
    assert any("slerp does not use the parameter 'weight'" in t and "models[1]" in t
               for t in msgs)
    assert any("'density'" in t for t in msgs)
    plain = dict(cfg, parameters={"t": 0.3}, models=[{"model": e["model"]} for e in cfg["models"]])
    b = load(run(plain, tmp_path / "b", quiet=True))
    for k in b:
        np.testing.assert_array_equal(a[k], b[k])


def test_model_id_found_in_the_hugging_face_cache(tmp_path, monkeypatch):
    """org/name (and org/name@revision) resolve to a snapshot in the HF cache layout under
    HF_HOME, as huggingface-cli download leaves it; nothing is downloaded."""
    base, (t0,) = make_family(str(tmp_path / "f"), 1, "float32")
    hub = tmp_path / "hf" / "hub" / "models--org--tiny-target"
    (hub / "refs").mkdir(parents=True)
    (hub / "snapshots").mkdir()
    for rev, commit in (("main", "c0ffee"), ("v1", "beef01")):
        (hub / "refs" / rev).write_text(commit)
        os.symlink(t0, hub / "snapshots" / commit)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = {"merge_method": "task_arithmetic", "base_model": base,
           "models": [{"model": "org/tiny-target", "parameters": {"weight": 0.5}}]}
    by_id = load(run(cfg, tmp_path / "a", quiet=True))
    cfg["models"][0]["model"] = "org/tiny-target@v1"
    by_rev = load(run(cfg, tmp_path / "b", quiet=True))
    cfg["models"][0]["model"] = t0
    by_path = load(run(cfg, tmp_path / "c", quiet=True))
    for k in by_path:
        np.testing.assert_array_equal(by_id[k], by_path[k])
        np.testing.assert_array_equal(by_rev[k], by_path[k])
    cfg["models"][0]["model"] = "org/tiny-target@v9"
    with pytest.raises(ConfigError, match=f"{tmp_path / 'hf' / 'hub'}.*--revision v9"):
        run(cfg, tmp_path / "d", quiet=True)


def test_per_model_global_parameter_refused(zoo, tmp_path):
    cfg = _cfg(zoo)
    cfg["models"][0]["parameters"]["normalize"] = True
    with pytest.raises(ConfigError, match="normalize is a global parameter"):
        run(cfg, tmp_path / "out", quiet=True)


def test_missing_tensor_and_shape_mismatch_name_tensor_and_model(tmp_path):
    base, (t0,) = make_family(str(tmp_path / "f"), 1, "float32")
    tensors = load(t0)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    bad = str(tmp_path / "bad")
    write_llama(bad, tensors, 100, "float32")
    cfg = {"merge_method": "task_arithmetic", "base_model": base,
           "models": [{"model": bad, "parameters": {"weight": 1.0}}]}
    with pytest.raises(ConfigError, match=f"'model.layers.1.mlp.up_proj.weight' is missing from "
                                          f"model {bad}"):
        run(cfg, tmp_path / "o", quiet=True)
    tensors = load(t0)
    tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((5, 5), np.float32)
    write_llama(bad + "2", tensors, 100, "float32")
    cfg["models"][0]["model"] = bad + "2"
    with pytest.raises(ConfigError, match="'model.layers.0.mlp.up_proj.weight': shapes differ"):
        run(cfg, tmp_path / "o", quiet=True)


def test_vocab_mismatch_without_tokenizer_source_refused(tmp_path):
    """Vocabulary sizes that differ, no tokenizer_source: refused (as mergekit 0.1.5 refuses),
    naming the tensor, the models and their shapes, before anything is written; with
    tokenizer_source the same models merge."""
    base, (small, big) = make_family(str(tmp_path / "f"), 2, "float32", target_vocab=[100, 120])
    for cfg in ({"merge_method": "task_arithmetic", "base_model": base,
                 "models": [{"model": p, "parameters": {"weight": 0.5}} for p in (small, big)]},
                {"merge_method": "linear",
                 "models": [{"model": p, "parameters": {"weight": 1.0}} for p in (big, small)]}):
        with pytest.raises(ConfigError, match=r"'(lm_head|model.embed_tokens).weight': vocabulary sizes "
                           r"differ between models \(.*" + big + r": \[120, 64\].*\); set "
                           "tokenizer_source"):
            run(cfg, tmp_path / "o", quiet=True)
        assert not (tmp_path / "o").exists()
    run(dict(cfg, tokenizer_source="union"), tmp_path / "o", quiet=True)


def test_config_forms_and_tokenizer_source(zoo, tmp_path):
    cfg = _cfg(zoo, tokenizer_source=os.path.join(zoo, "models", V2[1]))
    a = run(yaml.safe_dump(cfg), tmp_path / "a", quiet=True)
    p = tmp_path / "c.yml"
    p.write_text(yaml.safe_dump(cfg))
    b = run(str(p), tmp_path / "b", quiet=True)
    assert load(a).keys() == load(b).keys()
    for k, v in load(a).items():
        np.testing.assert_array_equal(v, load(b)[k])
    again = yaml.safe_load(open(os.path.join(a, "mergekit_config.yml")))
    c = run(again, tmp_path / "c", quiet=True)  # the written config runs as is
    np.testing.assert_array_equal(load(c)["lm_head.weight"], load(a)["lm_head.weight"])


def test_cli(zoo, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    cfg = os.path.join(EXAMPLES, "fusechat-sce.yml")
    r = subprocess.run([sys.executable, "-m", "fusechat", "merge", cfg, str(tmp_path / "o"),
                        "--quiet", "--dtype", "float32", "--out-shard-size", "60K",
                        "--threads", "2"], cwd=zoo, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "o" / "config.json") as f:
        assert json.load(f)["torch_dtype"] == "float32"
    assert load(tmp_path / "o")["lm_head.weight"].dtype == np.float32
    r = subprocess.run([sys.executable, "-m", "fusechat", "merge", cfg, str(tmp_path / "o")],
                       cwd=zoo, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "exists" in r.stderr and "Traceback" not in r.stderr


def _permuted_copy(src, dst, perm):
    """A copy of model src whose token ids are permuted: token of old id i gets id perm[i]
    and its embedding/lm_head rows move with it."""
    tensors = load(src)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = tensors[name]
        out = np.empty_like(rows)
        out[perm] = rows
        tensors[name] = out
    write_llama(dst, tensors, len(perm), "float32")
    with open(os.path.join(src, "tokenizer.json")) as f:
        tok = json.load(f)
    tok["model"]["vocab"] = {t: int(perm[i]) for t, i in tok["model"]["vocab"].items()}
    with open(os.path.join(dst, "tokenizer.json"), "w") as f:
        json.dump(tok, f)


def test_tokenizer_source_base_matches_rows_by_token(tmp_path):
    base, (t0,) = make_family(str(tmp_path / "f"), 1, "float32")
    perm = np.random.default_rng(0).permutation(100)
    shuffled = str(tmp_path / "shuffled")
    _permuted_copy(t0, shuffled, perm)
    cfg = {"merge_method": "task_arithmetic", "base_model": base,
           "models": [{"model": t0, "parameters": {"weight": 0.7}}]}
    plain = load(run(cfg, tmp_path / "plain", quiet=True))
    cfg["models"][0]["model"] = shuffled
    by_index = load(run(cfg, tmp_path / "index", quiet=True))  # rows matched by position
    assert not np.array_equal(by_index["lm_head.weight"], plain["lm_head.weight"])
    cfg["tokenizer_source"] = "base"
    out = run(cfg, tmp_path / "token", quiet=True)
    by_token = load(out)
    for name in plain:
        np.testing.assert_array_equal(by_token[name], plain[name], err_msg=name)
    with open(os.path.join(out, "tokenizer.json")) as f, \
            open(os.path.join(base, "tokenizer.json")) as g:
        assert json.load(f) == json.load(g)


def test_tokenizer_source_union(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    base, (same, big) = make_family(str(tmp_path / "f"), 2, "float32", target_vocab=[100, 120])
    B, S, G = load(base), load(same), load(big)
    cfg = {"merge_method": "task_arithmetic", "base_model": base, "tokenizer_source": "union",
           "models": [{"model": p, "parameters": {"weight": 0.5}} for p in (same, big)]}
    out = run(cfg, tmp_path / "u", quiet=True)
    got = load(out)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert got[name].shape == (120, 64)
        want = B[name] + 0.5 * (S[name] - B[name]) + 0.5 * (G[name][:100] - B[name])
        np.testing.assert_allclose(got[name][:100], want, rtol=1e-6, atol=1e-7)
        # tokens only the big model has: every model uses its row as the default, so the
        # merged row is that row
        np.testing.assert_array_equal(got[name][100:], G[name][100:])
    tok = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert tok.get_vocab_size(with_added_tokens=True) == 120
    assert tok.token_to_id("w110") == 113  # the big model's id for it, appended after the base
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["vocab_size"] == 120


def test_frankenmerge_slices_config(tmp_path):
    base, (t0,) = make_family(str(tmp_path / "f"), 1, "float32")
    cfg = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": base, "layer_range": [0, 3]}]},
        {"sources": [{"model": t0, "layer_range": [1, 3]}]}]}
    out = run(cfg, tmp_path / "o", quiet=True)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["num_hidden_layers"] == 5
    got, T = load(out), load(t0)
    np.testing.assert_array_equal(got["model.layers.4.mlp.up_proj.weight"],
                                  T["model.layers.2.mlp.up_proj.weight"])
    assert "model.layers.5.mlp.up_proj.weight" not in got
    again = yaml.safe_load(open(os.path.join(out, "mergekit_config.yml")))
    assert again["slices"][1]["sources"][0]["model"] == t0
    bad = dict(cfg, slices=[{"sources": [{"model": base, "layer_range": [0, 3]},
                                         {"model": t0, "layer_range": [0, 2]}]}])
    with pytest.raises(ConfigError, match="same number of layers"):
        run(bad, tmp_path / "o2", quiet=True)
