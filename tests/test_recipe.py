"""`fusechat run` (fusechat.recipe), `fusechat eval` and `fusechat demo --quick`, end to end on
tiny models built here: the tiny recipe runs every stage; an interrupted run resumes without
redoing finished steps and gives the same outputs as an uninterrupted one; recipe and
dataset errors name what is wrong."""
import hashlib
import json
import os
import shutil

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fusechat import cli, recipe, runner  # noqa: E402
from fusechat.demo import data as demo_data, models as demo_models  # noqa: E402
from fusechat.errors import ConfigError, FormatError  # noqa: E402
from fusechat.stages.store import open_store  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")
TINY = os.path.join(EXAMPLES, "recipes", "tiny.yaml")
MODELS = [("pivot", "llama", "metaspace"), ("qwen2", "qwen2", "byte_level"),
          ("gpt2", "gpt2", "unigram")]


def build_tiny_models(folder, n=40):
    """The tiny recipe's inputs: three briefly trained models and a dataset, in ``folder``."""
    for i, (name, arch, kind) in enumerate(MODELS):
        tok = demo_models.train_tokenizer(kind)
        model = demo_models.build_model(arch, tok, hidden=16, layers=1, seed=i)
        demo_models.train_chat_model(model, tok, demo_data.make_dataset(32, seed=i), epochs=1,
                                     quiet=True)
        demo_models.save(model, tok, os.path.join(folder, "tiny-models", name))
    with open(os.path.join(folder, "tiny-data.jsonl"), "w") as f:
        for rec in demo_data.make_dataset(n, seed=3):
            f.write(json.dumps(rec) + "\n")


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-inputs")
    build_tiny_models(str(folder))
    return folder


def place_recipe(tiny_inputs, tmp_path):
    """A copy of examples/recipes/tiny.yaml beside (links to) the tiny models and data."""
    shutil.copy(TINY, tmp_path / "tiny.yaml")
    for name in ("tiny-models", "tiny-data.jsonl"):
        os.symlink(tiny_inputs / name, tmp_path / name)
    return str(tmp_path / "tiny.yaml")


def tree_digest(folder):
    """{relative path: sha256} of every file under folder (markers included)."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


STEPS = ["split", "extract/pivot", "extract/qwen2", "extract/gpt2", "align/qwen2", "fuse/qwen2",
         "align/gpt2", "fuse/gpt2", "train/qwen2", "train/gpt2", "train/sft", "merge", "eval"]


def outputs(out):
    """Digests of the content every step wrote: store shards and model weights (.safetensors),
    the splits, the per-item scores and the table. Manifests, configs and logs are left out:
    they record the work folder's own path."""
    return {k: v for k, v in tree_digest(out).items()
            if k.endswith((".safetensors", ".jsonl", "results.json", "table.txt"))
            and not k.startswith("run.log")}


def test_tiny_recipe_runs_then_resumes_after_an_interruption(tiny_inputs, tmp_path,
                                                             monkeypatch, capsys):
    path = place_recipe(tiny_inputs, tmp_path)
    clean = str(tmp_path / "clean")
    assert cli.main(["-q", "run", path, "--workdir", clean]) == 0
    captured = capsys.readouterr()
    table = captured.out
    # the recipe aligns by the byte projection and prints each source's fidelity
    for src in ("qwen2", "gpt2"):
        assert f"fidelity of {os.path.join(clean, 'aligned', src)}: " in captured.err
    for model in ("pivot", "sft", "target-qwen2", "target-gpt2", "fused"):
        assert f"\n{model} " in table
    log = runner.read_run_log(clean)
    assert [e["step"] for e in log if e["status"] == "ran"] == STEPS
    # the stages' outputs are what they claim: stores with the pivot's tokenizer after
    # alignment and fusion, HF model folders that load
    with open_store(os.path.join(clean, "stores", "pivot")) as piv, \
            open_store(os.path.join(clean, "aligned", "gpt2")) as al, \
            open_store(os.path.join(clean, "fused", "gpt2")) as fu:
        assert al.fingerprint == piv.fingerprint == fu.fingerprint
        assert al.manifest["info"]["projection"] == "bytes"
        assert 0 <= al.manifest["info"]["fidelity"]["top1_correct"] <= 1
        assert len(piv) == len(fu) == 40 - 12
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(os.path.join(clean, "models", "fused"))
    resolved = recipe.load_recipe(os.path.join(clean, "recipe.resolved.yaml"))
    assert resolved["merge"]["parameters"] == {"select_topk": 0.1}

    # interrupt the same recipe in a late step (the merge), then rerun it
    resumed = str(tmp_path / "resumed")
    from fusechat import merge

    real_merge = merge.run

    def broken(*a, **k):
        raise KeyboardInterrupt("injected")
    monkeypatch.setattr(merge, "run", broken)
    with pytest.raises(KeyboardInterrupt):
        recipe.run(path, workdir=resumed, quiet=True)
    before = outputs(resumed)
    assert not os.path.exists(os.path.join(resumed, "models", "fused", runner.MARKER))
    n_first = len(runner.read_run_log(resumed))
    monkeypatch.setattr(merge, "run", real_merge)
    recipe.run(path, workdir=resumed, quiet=True)
    log = runner.read_run_log(resumed)
    second = log[n_first:]
    assert [e["step"] for e in second if e["status"] == "skipped"] == STEPS[:11]
    assert [e["step"] for e in second if e["status"] == "ran"] == ["merge", "eval"]
    after = outputs(resumed)
    assert sum(k.endswith(".safetensors") for k in after) >= 3 + 2 * 2 + 3 + 1
    # the finished steps were not touched, and the outputs equal the uninterrupted run's
    assert {k: v for k, v in after.items() if k in before and not k.startswith("models/fused")
            and not k.startswith("eval")} == \
        {k: v for k, v in before.items() if not k.startswith("models/fused")}
    assert after == outputs(clean)

    # a changed option reruns that step and everything downstream of it, nothing else
    text = open(path).read().replace("select_topk: 0.1", "select_topk: 0.5")
    open(path, "w").write(text)
    recipe.run(path, workdir=resumed, quiet=True)
    third = runner.read_run_log(resumed)[len(log):]
    assert [e["step"] for e in third if e["status"] == "ran"] == ["merge", "eval"]


def test_fusechat_eval_compares_models(tiny_inputs, tmp_path, capsys):
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in demo_data.make_dataset(6, seed=9)))
    models = [f"{n}={tiny_inputs / 'tiny-models' / n}" for n, *_ in MODELS]
    assert cli.main(["-q", "eval", *models, "--data", str(data), "--baseline", "pivot",
                     "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["model", "skill", "n"]
    assert sum(1 for line in out if line.startswith("gpt2 ") and line.split()[1] == "all") == 1
    assert cli.main(["eval", models[0], "--data", str(data), "--baseline", "nope"]) == 1


def test_recipe_with_training_seeds_baselines_and_a_held_out_file(tiny_inputs, tmp_path):
    """train.seed as a list trains every model once per seed ("name@seed"); baseline.datasets
    adds an SFT baseline on its own data; dataset.eval_path is the held-out set; merge.sources
    picks the merged targets; train.temperature reaches the trainer."""
    from fusechat.stages.evaluate import load_results

    models = tiny_inputs / "tiny-models"
    gold = tmp_path / "gold.jsonl"
    held = tmp_path / "held.jsonl"
    gold.write_text("".join(json.dumps(r) + "\n" for r in demo_data.make_dataset(6, seed=21)))
    held.write_text("".join(json.dumps(r) + "\n" for r in demo_data.make_dataset(5, seed=22)))
    r = {"pivot": {"model": str(models / "pivot")},
         "sources": [{"name": n, "model": str(models / n)} for n in ("qwen2", "gpt2")],
         "dataset": {"path": str(tiny_inputs / "tiny-data.jsonl"), "eval_path": str(held),
                     "max_length": 64},
         "extract": {"k": 3, "dtype": "float32"},
         "train": {"epochs": 1, "batch_size": 8, "seed": [3, 4], "device": "cpu",
                   "temperature": 2.0, "lr": 1e-3},
         "baseline": {"datasets": {"sft-gold": str(gold)}},
         "merge": {"sources": ["qwen2", "gpt2"], "parameters": {"select_topk": 1.0}},
         "eval": {"baseline": "sft-gold", "max_new_tokens": 2},
         "output": str(tmp_path / "out")}
    out = recipe.run(r, quiet=True)
    ran = [e["step"] for e in runner.read_run_log(str(tmp_path / "out")) if e["status"] == "ran"]
    for seed in (3, 4):
        for step in (f"train/qwen2@{seed}", f"train/gpt2@{seed}", f"train/sft@{seed}",
                     f"train/sft-gold@{seed}", f"merge@{seed}"):
            assert step in ran
        settings = json.load(open(os.path.join(out[f"train/qwen2@{seed}"], "fusechat_train.json")))
        assert settings["seed"] == seed and settings["temperature"] == 2.0
    # the gold-only baseline trained on its own store, made from its own data
    with open_store(out["extract/sft-gold"]) as s:
        assert len(s) == 6
    split = json.load(open(os.path.join(out["split"], "split.json")))
    assert split["eval"] == 5 and split["train"] == 40
    names = [e.name for e in load_results(out["eval"])]
    assert names == ["pivot", "sft@3", "sft@4", "sft-gold@3", "sft-gold@4", "target-qwen2@3",
                     "target-gpt2@3", "target-qwen2@4", "target-gpt2@4", "fused@3", "fused@4"]
    table = open(os.path.join(out["eval"], "table.txt")).read().splitlines()
    fused = [line.split() for line in table if line.startswith("fused ")]
    assert fused and {row[3] for row in fused} == {"2"}  # two training seeds per row
    with pytest.raises(ConfigError, match="train.seed"):
        recipe.load_recipe({**r, "train": {"seed": [1, 1]}})
    with pytest.raises(ConfigError, match="merge.sources"):
        recipe.load_recipe({**r, "merge": {"sources": ["qwen2", "nope"]}})
    with pytest.raises(ConfigError, match="temperature"):
        recipe.load_recipe({**r, "train": {"temperature": 0}})
    with pytest.raises(ConfigError, match="taken"):
        recipe.load_recipe({**r, "baseline": {"datasets": {"qwen2": str(gold)}}})


def test_recipe_errors_name_the_key(tmp_path):
    base = {"pivot": {"model": "p"}, "dataset": {"path": "d.jsonl"}, "output": "o"}
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*valid keys: pivot, sources"):
        recipe.load_recipe({**base, "trian": {}})
    with pytest.raises(ConfigError, match=r"train\.learning_rate.*valid keys of train: "
                                          r"lm_weight, epochs, lr"):
        recipe.load_recipe({**base, "train": {"learning_rate": 1e-5}})
    with pytest.raises(ConfigError, match=r"sources\[0\]\.path"):
        recipe.load_recipe({**base, "sources": [{"path": "x"}]})
    with pytest.raises(ConfigError, match="output is required"):
        recipe.load_recipe({k: v for k, v in base.items() if k != "output"})
    with pytest.raises(ConfigError, match="dataset.path is required"):
        recipe.load_recipe({**base, "dataset": {}})
    with pytest.raises(ConfigError, match="not valid YAML"):
        recipe.load_recipe("pivot: [\n")


def test_the_fusechat_7b_v2_recipe_parses():
    r = recipe.load_recipe(os.path.join(EXAMPLES, "recipes", "fusechat-7b-v2.yaml"))
    assert r["pivot"]["model"] == "openchat/openchat_3.5"  # Hub ids stay as they are
    assert r["dataset"]["path"] == os.path.join(
        EXAMPLES, "recipes", "data", "fusechat_v1_clean_split_2048_filter_wrong.json")
    assert r["eval"]["baseline"] == "openchat-3.5"
    assert [s["model"] for s in r["sources"]] == [
        "berkeley-nest/Starling-LM-7B-alpha", "NousResearch/Nous-Hermes-2-SOLAR-10.7B",
        "bartowski/internlm2-chat-20b-llama-old", "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "Qwen/Qwen1.5-72B-Chat"]
    assert (r["extract"]["k"], r["train"]["lm_weight"], r["fuse"]["rule"]) == (10, 0.9, "mince")
    assert r["merge"]["method"] == "sce" and r["merge"]["parameters"]["select_topk"] == 0.1
    # FuseChat-7B-v2.0 was merged with the repository's SCE reading (docs/merging.md 2.2)
    assert r["merge"]["parameters"]["mask_deltas"] is False
    # the plan: 6 extractions, 5 x (align, fuse, train), SFT, merge, eval (nothing runs)
    names = [s.name for s in recipe.plan(r)]
    assert len(names) == 1 + 6 + 15 + 1 + 1 + 1 and names[-2:] == ["merge", "eval"]


BAD = [  # (record, words the error must contain)
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}, "role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "altern"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]},
     "empty"),
    ({"messages": [{"role": "user", "content": "word " * 200},
                   {"role": "assistant", "content": "ok"}]}, "supervised"),
]


@pytest.mark.parametrize("bad,words", BAD, ids=["no-role", "not-alternating", "empty-answer",
                                                 "truncated-away"])
def test_bad_records_name_their_index_or_are_skipped(tiny_inputs, tmp_path, bad, words):
    records = demo_data.make_dataset(10, seed=5)
    records.insert(7, bad)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    r = {"pivot": {"model": str(tiny_inputs / "tiny-models" / "pivot")},
         "dataset": {"path": str(tmp_path / "data.jsonl"), "max_length": 64, "eval_size": 0},
         "extract": {"k": 2, "dtype": "float32"}, "baseline": {"sft": False},
         "eval": {"enabled": False}, "output": str(tmp_path / "out")}
    with pytest.raises(FormatError, match=r"(?i)(record|row|index)\D*7\b.*" + words
                       + "|" + words + r".*(record|row|index)\D*7\b"):
        recipe.run(r, quiet=True)
    r["dataset"]["skip_bad_records"] = True
    out = recipe.run(r, workdir=str(tmp_path / "out2"), quiet=True)
    # structural errors are caught when the dataset is split, truncation when the pivot's
    # tokenizer is applied: either way one record is skipped and counted
    split = json.load(open(os.path.join(out["split"], "split.json")))
    with open_store(out["extract/pivot"]) as s:
        assert len(s) == 10
        assert len(split["skipped_bad_records"]) + s.manifest["info"]["skipped_records"] == 1
        assert split["skipped_bad_records"] in ([], [7])


def test_demo_quick_prints_the_table(tmp_path, capsys):
    from fusechat.demo import run as demo

    assert cli.main(["-q", "demo", "--quick", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert "NLL/token" in header and "exact match" in header and "answer-set P" in header
    seeds = len(demo.SIZES["quick"]["train_seeds"])
    for model, n_seeds in (("pivot", 1), ("sft-gold", seeds), ("sft-seqkd", seeds),
                           ("target-qwen2-arith", seeds), ("target-gpt2-facts", seeds),
                           ("target-control-arith", seeds), ("fused", seeds),
                           ("source-qwen2-arith", 1), ("source-gpt2-facts", 1)):
        rows = [line.split() for line in out.splitlines() if line.startswith(model + " ")]
        assert {r[1] for r in rows} == {"arithmetic", "strings", "facts", "all"}, model
        assert {int(r[3]) for r in rows} == {n_seeds}, model
    pipe = tmp_path / "pipeline"
    # the control source has the pivot's tokenizer: its store is copied, not aligned
    with open_store(str(pipe / "aligned" / "control-arith")) as s:
        info = s.manifest["info"]
        assert info["method"] == "copy" and info["n_copied"] == len(s) > 0
    with open_store(str(pipe / "aligned" / "qwen2-arith")) as s:
        # the demo's recipe takes the default projection: bytes, with its fidelity figures
        assert s.manifest["info"]["projection"] == "bytes"
        assert "fidelity" in s.manifest["info"]
    # the fusion set is the gold part plus the sources' replies; the fused model merges the
    # two cross-tokenizer targets only, once per training seed
    fusion = [json.loads(x) for x in open(tmp_path / "fusion-data" / "fusion.jsonl")]
    n_gold = demo.SIZES["quick"]["n_gold"]
    assert all("reply_from" not in r for r in fusion[:n_gold])
    assert all(r["reply_from"] in ("qwen2-arith", "gpt2-facts") for r in fusion[n_gold:])
    merge = yaml.safe_load(open(pipe / "recipe.resolved.yaml"))["merge"]
    assert merge["sources"] == ["qwen2-arith", "gpt2-facts"]
    for seed in demo.SIZES["quick"]["train_seeds"]:
        assert (pipe / "models" / f"fused@{seed}" / "config.json").exists()
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert not (tmp_path / "demo.png").exists()
    # a rerun reuses every step
    assert cli.main(["-q", "demo", "--quick", "--workdir", str(tmp_path)]) == 0
    log = runner.read_run_log(str(tmp_path / "pipeline"))
    runs = [e for e in log if e["status"] in ("ran", "skipped")]
    assert {e["status"] for e in runs[len(runs) // 2:]} == {"skipped"}


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    """examples/quickstart.ipynb runs top to bottom (nbclient when installed, else its code
    cells exec'd in order) and ends with the comparison table."""
    import nbformat

    nb = nbformat.read(os.path.join(EXAMPLES, "quickstart.ipynb"), as_version=4)
    monkeypatch.setenv("FUSECHAT_QUICKSTART_DIR", str(tmp_path))
    monkeypatch.setenv("FUSECHAT_DISABLE_PROGRESS_BARS", "1")
    root = os.path.dirname(EXAMPLES)
    monkeypatch.setenv("PYTHONPATH", root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        from nbclient import NotebookClient
    except ImportError:
        NotebookClient = None
    if NotebookClient is not None:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                       for o in c.get("outputs", []))
    else:
        import contextlib
        import io
        buf, scope = io.StringIO(), {}
        with contextlib.redirect_stdout(buf):
            for c in nb.cells:
                if c.cell_type == "code":
                    exec(compile(c.source, "quickstart.ipynb", "exec"), scope)
        text = buf.getvalue()
    assert "NLL/token" in text and "\nfused " in text
    assert "smoke run" in text  # it says what its table is
    assert "IProgress not found" not in text  # tqdm's auto mode without the ipywidgets warning
    assert os.path.isdir(tmp_path / "fused-model")
