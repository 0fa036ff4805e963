"""``fusechat run RECIPE.yaml``: the whole FuseChat pipeline from one YAML recipe, resumable.

A recipe names the pivot, the sources, the dataset and the options of every stage (schema:
``SCHEMA`` below and docs/pipeline.md). The runner plans these steps, in order:

  split            dataset -> data/train.jsonl + data/eval.jsonl (held-out split, or the
                   records of dataset.eval_path)
  extract/<name>   every model's TopK store on the training split (and the pivot's on each
                   of baseline.datasets)
  align/<source>   each source's store aligned to the pivot's tokens and vocabulary
  fuse/<source>    pivot store + one aligned source store -> fused store (pairwise fusion)
  train/<source>   the pivot fine-tuned on each fused store (one target per source)
  train/sft        the pivot fine-tuned with plain CE on the same data (baseline; optional),
                   and train/<name> on each of baseline.datasets (e.g. the gold part only)
  merge            the targets merged onto the pivot (SCE by default; needs >= 2 targets)
  eval             pivot, SFT, targets, merged model scored on the held-out split

With ``train.seed`` a list, the train steps and the merge run once per training seed
(``train/<source>@<seed>``, model ``target-<source>@<seed>``); the evaluation then reports
each model as the mean over its seeds with intervals that include the seed variance
(fusechat.stages.evaluate.compare).

Each step's output is a folder under ``output``; beside its files the runner writes
``.fusechat-step.json`` with the step's fingerprint (a SHA-256 of its resolved options and
of its inputs' fingerprints, so a change anywhere upstream reruns everything downstream).
A step whose output folder carries a matching fingerprint is skipped; a folder without one
(an interrupted step) or with another one is removed and the step runs again. The run log
(``run.log.jsonl``: time, step, ran/skipped, seconds) and the resolved recipe
(``recipe.resolved.yaml``) are written into ``output``.

This module is the orchestration: the recipe's schema (``load_recipe``), its steps (``plan``)
and ``run``. The steps' work is in ``fusechat.stages`` (``split``, ``extract``, ``align``,
``fuse``, ``train``, ``evaluate``) and ``fusechat.merge``; skipping, markers and the run log
in ``fusechat.runner``.
"""
import copy
import errno
import os
import shutil

import yaml

from .align import DEFAULT_PROJECTION
from .errors import ConfigError
from .loss import LM_WEIGHT
from .runner import Step, path_fingerprint, run_steps
from .stages.split import split_dataset

# section -> {key: default}; None means "no default" (required keys are checked apart)
SCHEMA = {
    "pivot": {"name": "pivot", "model": None, "tokenizer": None},
    "dataset": {"path": None, "template": "openchat_3.5", "max_length": 2048,
                "skip_bad_records": False, "eval_fraction": 0.1, "eval_size": None,
                "split_seed": 0, "eval_path": None},
    "extract": {"k": 10, "batch_size": 8, "dtype": "bfloat16", "device": "cpu",
                "logits_dtype": "F16"},
    "align": {"projection": DEFAULT_PROJECTION, "k": None, "method": "dtw", "map": "ms"},
    "fuse": {"rule": "mince", "level": "sequence"},
    "train": {"lm_weight": LM_WEIGHT, "epochs": 3, "lr": 5e-6, "batch_size": 4, "grad_accum": 1,
              "max_steps": None, "seed": 42, "bf16": False, "device": None,
              "temperature": 1.0},
    "baseline": {"sft": True, "lm_weight": 1.0, "datasets": {}},
    "merge": {"method": "sce", "parameters": {"select_topk": 0.1}, "dtype": "float32",
              "seed": 0, "sources": None},
    "eval": {"enabled": True, "baseline": None, "max_new_tokens": 16, "max_items": None,
             "sources": False},
}
SOURCE_KEYS = {"name": None, "model": None, "tokenizer": None}
TOP_KEYS = ("pivot", "sources", "dataset", "extract", "align", "fuse", "train", "baseline",
            "merge", "eval", "output")


def _check_keys(section, given, valid):
    if not isinstance(given, dict):
        raise ConfigError(f"recipe: {section}: expected a mapping, got {type(given).__name__}")
    for key in given:
        if key not in valid:
            raise ConfigError(f"recipe: unknown key {section}.{key}; valid keys of {section}: "
                              f"{', '.join(valid)}")


def load_recipe(recipe, base_dir=None):
    """The resolved recipe (a dict with every default filled in) of a path, YAML text (a string
    of several lines) or dict. Relative paths are resolved against the recipe file's folder (or
    ``base_dir``). A path that does not exist raises FileNotFoundError naming it."""
    if isinstance(recipe, dict):
        raw, where = copy.deepcopy(recipe), "recipe"
    else:
        text, where = recipe, "recipe"
        if isinstance(recipe, os.PathLike) or (isinstance(recipe, str) and "\n" not in recipe):
            where = os.fspath(recipe)
            if not os.path.exists(where):
                raise FileNotFoundError(errno.ENOENT, "recipe not found (no such file)", where)
            with open(where, encoding="utf-8") as f:
                text = f.read()
            base_dir = base_dir or os.path.dirname(os.path.abspath(where))
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    base_dir = base_dir or os.getcwd()
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(TOP_KEYS)}")
    out = {}
    for section, defaults in SCHEMA.items():
        given = raw.get(section) or {}
        if section == "pivot" and isinstance(given, str):
            given = {"model": given}
        _check_keys(section, given, defaults)
        out[section] = {**copy.deepcopy(defaults), **given}
    sources = raw.get("sources") or []
    if not isinstance(sources, list):
        raise ConfigError(f"{where}: sources: expected a list")
    out["sources"] = []
    for i, s in enumerate(sources):
        s = {"model": s} if isinstance(s, str) else s
        _check_keys(f"sources[{i}]", s, SOURCE_KEYS)
        s = {**SOURCE_KEYS, **s}
        if not s["model"]:
            raise ConfigError(f"{where}: sources[{i}].model is required")
        s["name"] = s["name"] or f"source{i}"
        out["sources"].append(s)
    for req in ("pivot.model", "dataset.path"):
        sec, key = req.split(".")
        if not out[sec][key]:
            raise ConfigError(f"{where}: {req} is required")
    if "output" not in raw or not raw["output"]:
        raise ConfigError(f"{where}: output is required (the folder for every step's output)")
    names = [out["pivot"]["name"]] + [s["name"] for s in out["sources"]]
    if len(set(names)) != len(names) or "sft" in names:
        raise ConfigError(f"{where}: model names must be distinct and not 'sft': {names}")
    extra = out["baseline"]["datasets"] or {}
    if not isinstance(extra, dict):
        raise ConfigError(f"{where}: baseline.datasets: expected a mapping of baseline name "
                          "-> dataset path")
    for name in extra:
        if name in names or name == "sft":
            raise ConfigError(f"{where}: baseline.datasets.{name}: the name is taken by a model")
    if any("@" in str(n) for n in names + list(extra)):
        raise ConfigError(f"{where}: model names may not contain '@' (it marks a training "
                          f"seed in results): {names + list(extra)}")
    merged = out["merge"]["sources"]
    if merged is not None and (not isinstance(merged, list) or
                               not set(merged) <= set(names[1:]) or len(merged) < 2):
        raise ConfigError(f"{where}: merge.sources: a list of at least two source names whose "
                          f"targets are merged (default: all), out of {names[1:]}; got "
                          f"{merged!r}")
    seeds = out["train"]["seed"]
    if isinstance(seeds, list):
        if not seeds or not all(isinstance(x, int) for x in seeds) or \
                len(set(seeds)) != len(seeds):
            raise ConfigError(f"{where}: train.seed: an integer or a non-empty list of distinct "
                              f"integers (one training run per seed), got {seeds!r}")
    elif not isinstance(seeds, int):
        raise ConfigError(f"{where}: train.seed: an integer or a list of integers, got {seeds!r}")
    if not float(out["train"]["temperature"]) > 0:
        raise ConfigError(f"{where}: train.temperature must be > 0 (the fusion target is "
                          "softmax(logits / temperature))")
    out["eval"]["baseline"] = out["eval"]["baseline"] or out["pivot"]["name"]
    if not 0 <= float(out["dataset"]["eval_fraction"]) < 1:
        raise ConfigError(f"{where}: dataset.eval_fraction must be in [0, 1)")

    def local(p, hub_ok=True):
        if p is None:
            return None
        p = os.path.expanduser(str(p))
        full = os.path.abspath(p if os.path.isabs(p) else os.path.join(base_dir, p))
        # a model name that is not a local path stays as is (a Hugging Face Hub id)
        if hub_ok and not os.path.exists(full) and not p.startswith((".", "/", "~")):
            return p
        return full

    for m in [out["pivot"]] + out["sources"]:
        m["model"], m["tokenizer"] = local(m["model"]), local(m["tokenizer"])
    out["dataset"]["path"] = local(out["dataset"]["path"], hub_ok=False)
    out["dataset"]["eval_path"] = local(out["dataset"]["eval_path"], hub_ok=False)
    out["baseline"]["datasets"] = {k: local(v, hub_ok=False) for k, v in extra.items()}
    out["output"] = os.path.abspath(os.path.join(base_dir, os.path.expanduser(str(raw["output"]))))
    return out


# --------------------------------------------------------------------------------------
# steps

def _tokenizer_of(m):
    return m["tokenizer"] or m["model"]


def _copy_tokenizer(src, dst):
    """Copy the tokenizer files of HF folder src into dst (merge outputs carry weights and
    config only)."""
    if not os.path.isdir(src):
        return
    for f in os.listdir(src):
        if (f.startswith("tokenizer") or f in ("special_tokens_map.json", "vocab.json",
                                                "merges.txt", "chat_template.jinja")) \
                and not os.path.exists(os.path.join(dst, f)):
            shutil.copy2(os.path.join(src, f), os.path.join(dst, f))


def plan(r, *, quiet=False):
    """The steps of resolved recipe ``r``, in order."""
    out, ds, ex, tr = r["output"], r["dataset"], r["extract"], r["train"]
    pivot, sources = r["pivot"], r["sources"]
    fp_cache = {}

    def fp(path):
        if path not in fp_cache:
            fp_cache[path] = path_fingerprint(path)
        return fp_cache[path]

    data_dir = os.path.join(out, "data")
    split_opts = {k: ds[k] for k in ("eval_fraction", "eval_size", "split_seed",
                                      "skip_bad_records")}
    held_fp = fp(ds["eval_path"]) if ds["eval_path"] else None
    held = {"eval_data": held_fp} if held_fp else {}  # (keeps older runs' fingerprints)
    split = Step("split", data_dir, {"data": fp(ds["path"]), **held, **split_opts},
                 lambda o: split_dataset(ds["path"], o, eval_fraction=ds["eval_fraction"],
                                         eval_size=ds["eval_size"], seed=ds["split_seed"],
                                         skip_bad_records=ds["skip_bad_records"],
                                         eval_path=ds["eval_path"]))
    steps = [split]
    train_data = os.path.join(data_dir, "train.jsonl")
    ext_opts = {**ex, "template": ds["template"], "max_length": ds["max_length"],
                "skip_bad_records": ds["skip_bad_records"]}
    stores = {}
    for m in [pivot] + sources:
        def run_extract(o, m=m):
            from .stages.extract import extract
            extract(m["model"], train_data, o, tokenizer=m["tokenizer"], quiet=quiet, **ext_opts)
        s = Step(f"extract/{m['name']}", os.path.join(out, "stores", m["name"]),
                 {"model": fp(m["model"]), "tokenizer": fp(_tokenizer_of(m)),
                  "data": split.fingerprint, **ext_opts}, run_extract)
        stores[m["name"]] = s
        steps.append(s)

    # one training run per seed; a list of seeds names every trained model "name@seed"
    seeds = tr["seed"] if isinstance(tr["seed"], list) else [tr["seed"]]

    def seeded(name, seed):
        return f"{name}@{seed}" if isinstance(tr["seed"], list) else name

    fused_steps = []
    for src in sources:
        piv_store, src_store = stores[pivot["name"]], stores[src["name"]]

        def run_align(o, src=src):
            from .stages.align import align_stores, print_fidelity
            align_stores(piv_store.out, stores[src["name"]].out, o,
                         pivot_tokenizer=_tokenizer_of(pivot),
                         source_tokenizer=_tokenizer_of(src),
                         projection=r["align"]["projection"], k=r["align"]["k"],
                         method=r["align"]["method"], map=r["align"]["map"], quiet=quiet)
            print_fidelity(o)
        al = Step(f"align/{src['name']}", os.path.join(out, "aligned", src["name"]),
                  {"pivot": piv_store.fingerprint, "source": src_store.fingerprint,
                   **r["align"]}, run_align)

        def run_fuse(o, al=al):
            from .stages.fuse import fuse_stores
            fuse_stores(piv_store.out, [al.out], o, quiet=quiet, **r["fuse"])
        fu = Step(f"fuse/{src['name']}", os.path.join(out, "fused", src["name"]),
                  {"pivot": piv_store.fingerprint, "aligned": al.fingerprint, **r["fuse"]},
                  run_fuse)
        steps += [al, fu]
        fused_steps.append((src, fu))

    # SFT baselines: on the fusion data ("sft"), and on each of baseline.datasets (their own
    # pivot store)
    sft_stores = [("sft", stores[pivot["name"]])] if r["baseline"]["sft"] else []
    for name, path in r["baseline"]["datasets"].items():
        def run_extract_baseline(o, path=path):
            from .stages.extract import extract
            extract(pivot["model"], path, o, tokenizer=pivot["tokenizer"], quiet=quiet,
                    **ext_opts)
        s = Step(f"extract/{name}", os.path.join(out, "stores", f"baseline-{name}"),
                 {"model": fp(pivot["model"]), "tokenizer": fp(_tokenizer_of(pivot)),
                  "data": fp(path), **ext_opts}, run_extract_baseline)
        steps.append(s)
        sft_stores.append((name, s))

    baselines, trained, merges = [], [], []  # (eval name, step)
    for seed in seeds:
        opts = {**tr, "seed": seed}
        targets = []  # the targets merged into "fused"
        for src, fu in fused_steps:
            name = seeded(f"target-{src['name']}", seed)
            tg = _train_step(seeded(f"train/{src['name']}", seed),
                             os.path.join(out, "models", name), pivot, fp, fu, opts, quiet)
            steps.append(tg)
            trained.append((name, tg))
            if r["merge"]["sources"] is None or src["name"] in r["merge"]["sources"]:
                targets.append(tg)
        for name, store in sft_stores:
            sft = _train_step(seeded(f"train/{name}", seed),
                              os.path.join(out, "models", seeded(name, seed)), pivot, fp, store,
                              {**opts, "lm_weight": r["baseline"]["lm_weight"]}, quiet)
            steps.append(sft)
            baselines.append((seeded(name, seed), sft))
        if len(targets) >= 2:
            mg = r["merge"]
            cfg = {"models": [{"model": t.out} for t in targets], "merge_method": mg["method"],
                   "base_model": pivot["model"], "parameters": mg["parameters"],
                   "dtype": mg["dtype"]}
            mg = {k: v for k, v in mg.items() if k != "sources" or v is not None}

            def run_merge(o, cfg=cfg):
                from . import merge
                merge.run(cfg, o, seed=mg["seed"], quiet=quiet)
                _copy_tokenizer(_tokenizer_of(pivot), o)
            merged = Step(seeded("merge", seed), os.path.join(out, "models", seeded("fused", seed)),
                          {"pivot": fp(pivot["model"]),
                           "targets": [t.fingerprint for t in targets], **mg}, run_merge)
            steps.append(merged)
            merges.append((seeded("fused", seed), merged))

    if r["eval"]["enabled"]:
        models = [(pivot["name"], pivot["model"], _tokenizer_of(pivot), fp(pivot["model"]))]
        models += [(name, st.out, st.out, st.fingerprint)
                   for name, st in sorted(baselines, key=lambda b: b[0].split("@")[0] != "sft")
                   + trained + merges]
        if r["eval"]["sources"]:  # each source with its own tokenizer, for reference
            models += [(f"source-{s['name']}", s["model"], _tokenizer_of(s), fp(s["model"]))
                       for s in sources]
        ev_opts = {**r["eval"], "template": ds["template"], "max_length": ds["max_length"]}

        def run_eval(o):
            from .stages.evaluate import evaluate_models
            evaluate_models(models, os.path.join(data_dir, "eval.jsonl"), o, ev_opts, quiet)
        steps.append(Step("eval", os.path.join(out, "eval"),
                          {"data": split.fingerprint, "models": [m[3] for m in models],
                           **ev_opts}, run_eval))
    return steps


def _train_step(name, out, pivot, fp, store_step, opts, quiet):
    def run_train(o):
        from .stages.train import train
        train(pivot["model"], store_step.out, o, tokenizer=pivot["tokenizer"], quiet=quiet,
              **opts)
    return Step(name, out, {"pivot": fp(pivot["model"]), "tokenizer": fp(_tokenizer_of(pivot)),
                            "store": store_step.fingerprint, **opts}, run_train)


# --------------------------------------------------------------------------------------
# run

def run(recipe, *, workdir=None, quiet=False, say=None):
    """Run every step of ``recipe`` that is not already done. ``workdir`` overrides the
    recipe's output folder. Returns {step name: output folder}."""
    r = load_recipe(recipe)
    if workdir is not None:
        r["output"] = os.path.abspath(workdir)
    out = r["output"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "recipe.resolved.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(r, f, sort_keys=False)
    steps = plan(r, quiet=quiet)
    run_steps(steps, out, say=say)
    return {s.name: s.out for s in steps}
