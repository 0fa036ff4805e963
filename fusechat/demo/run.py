"""``fusechat demo`` (``make demo``): the whole FuseChat pipeline on tiny models, no download.

1. generates a synthetic chat dataset with three skills (fusechat.demo.data: arithmetic,
   string transformations, recall of a generated fact table);
2. trains three tokenizers (Metaspace BPE, byte-level BPE, Unigram) and three tiny chat
   models of different architectures (Llama, Qwen2, GPT-2 style) so that the two sources are
   each stronger than the pivot on different skills: the pivot gets a light pass over the
   uniform mix, source A long training on a large arithmetic and strings set, source B on
   facts;
3. runs the pipeline through the recipe runner (fusechat.recipe) on a small fusion dataset:
   extract all three, align both sources to the pivot (their tokenizers differ), fuse, train
   two targets, merge them with SCE, train the SFT baseline (pivot + plain CE on the same
   data), and evaluate pivot, SFT, targets, the merged model and the sources on a held-out
   split;
4. prints the table per skill with 95% bootstrap CIs and paired differences against the SFT
   baseline, and saves a plot (demo.png, when matplotlib is installed).

Everything is cached in the work folder: a rerun skips every finished step. The demo
reports what it measures, whatever the outcome.
"""
import json
import logging
import os
import time

from . import data as demo_data
from ..loss import LM_WEIGHT
from ..recipe import run
from ..runner import Step, path_fingerprint, run_steps
from ..stages.evaluate import load_results

LOG = logging.getLogger(__name__)

ARITH_MIX = {"arithmetic": 0.7, "strings": 0.25, "facts": 0.05}
# (name, architecture, tokenizer kind, training mix, role)
MODELS = [
    ("pivot", "llama", "metaspace", None, "pivot"),
    ("qwen2-arith", "qwen2", "byte_level", ARITH_MIX, "source"),
    ("gpt2-facts", "gpt2", "unigram", {"arithmetic": 0.1, "strings": 0.1, "facts": 0.8},
     "source"),
    # the control: qwen2-arith's training with the pivot's architecture and tokenizer, so its
    # fusion needs no alignment (the aligned store is a copy): what alignment could deliver
    ("control-arith", "llama", "metaspace", ARITH_MIX, "control"),
]
# The experiment (docs/pipeline.md, "The demo"). The sources learn their skills from a large
# skill-specific set (source_n rows x source_epochs); the pivot gets only a light pass over
# the uniform mix. The fusion set is n_gold gold-labelled chats plus n_prompts prompts whose
# replies come from the sources (best of the two cross-tokenizer sources, by their own
# probability of their reply): the knowledge the pivot can gain sits in the sources. The
# table is scored on n_eval held-out gold chats; every trained model is trained once per
# training seed in train_seeds. Chosen on the dev data seed (seed=1), never on the reported
# one (seed=0). The sources' 4000 x 6 is the dev seed's setting: 2500 x 5, tried as a cut
# for the 10-minute goal, gave weaker sources and less transfer on arithmetic on every data
# seed, and the run fits in the goal without it; 8 training epochs instead of 12 lost the
# transfer (data seed 2) and were not kept; lm_weight
# 0.5 and 0.1, pairwise or with one joint MinCE target, scored below sft-seqkd on the dev seed
# (docs/pipeline.md, "The demo").
SIZES = {
    "full": dict(n_gold=150, n_prompts=450, n_eval=150, pivot_n=600, pivot_epochs=2,
                 source_n=4000, source_epochs=6, hidden=96, train_epochs=12, lm_weight=LM_WEIGHT,
                 train_seeds=[0, 1, 2]),
    "quick": dict(n_gold=40, n_prompts=40, n_eval=24, pivot_n=100, pivot_epochs=1, source_n=200,
                  source_epochs=1, hidden=32, train_epochs=1, lm_weight=LM_WEIGHT,
                  train_seeds=[0, 1]),
}
BASELINE = "sft-gold"  # the pivot fine-tuned with plain CE on the gold-labelled part only
SEQ_KD = "sft-seqkd"   # ... on the whole fusion set, sources' replies included (the recipe's "sft")


def _write_jsonl(path, records):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def data_files(workdir, size, seed):
    """The gold-labelled part, the prompts and the held-out set, each a pure function of
    (size, data seed), in workdir/data-src/. Returns their paths."""
    folder = os.path.join(workdir, "data-src")
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for i, (name, n) in enumerate((("gold", size["n_gold"]), ("prompts", size["n_prompts"]),
                                   ("eval", size["n_eval"]))):
        paths[name] = os.path.join(folder, f"{name}.jsonl")
        _write_jsonl(paths[name], demo_data.make_dataset(n, seed=7 + 1000 * seed + i))
    return paths


def model_steps(workdir, size, quiet, seed=0):
    """Steps that build the demo's chat models (cached like the pipeline's steps)."""
    from . import models as demo_models

    steps = []
    for i, (name, arch, kind, mix, role) in enumerate(MODELS):
        n = size["pivot_n"] if role == "pivot" else size["source_n"]
        epochs = size["pivot_epochs"] if role == "pivot" else size["source_epochs"]
        key = {"arch": arch, "tokenizer": kind, "mix": mix, "n": n, "epochs": epochs,
               "hidden": size["hidden"], "seed": i + 10 * seed}

        def build(out, name=name, arch=arch, kind=kind, mix=mix, n=n, epochs=epochs,
                  i=i + 10 * seed):
            tok = demo_models.train_tokenizer(kind)
            model = demo_models.build_model(arch, tok, hidden=size["hidden"], seed=i)
            records = demo_data.make_dataset(n, seed=100 + i, mix=mix)
            loss = demo_models.train_chat_model(model, tok, records, epochs=epochs, seed=i,
                                                quiet=quiet, desc=f"build {name}")
            demo_models.save(model, tok, out)
            LOG.info("%s: %s + %s tokenizer, final train loss %.3f", name, arch, kind, loss)
        steps.append(Step(f"build/{name}", os.path.join(workdir, "models-src", name), key, build))
    return steps


def replies_step(workdir, files, builds, quiet):
    """The fusion set: the gold part, then the prompts with the best-of-sources replies
    (workdir/fusion-data/fusion.jsonl). ``builds``: {model name: its build Step}."""
    roles = {name: role for name, *_, role in MODELS}
    sources = [(name, step) for name, step in builds.items() if roles[name] == "source"]
    key = {"gold": path_fingerprint(files["gold"]), "prompts": path_fingerprint(files["prompts"]),
           "sources": [step.fingerprint for _, step in sources], "max_new_tokens": 12}

    def build(out):
        from ..stages.replies import best_of_replies

        gold = _read_jsonl(files["gold"])
        replied, wins = best_of_replies(_read_jsonl(files["prompts"]),
                                        [(name, step.out) for name, step in sources],
                                        max_new_tokens=12, quiet=quiet)
        os.makedirs(out, exist_ok=True)
        _write_jsonl(os.path.join(out, "fusion.jsonl"), gold + replied)
        right = sum(r["messages"][-1]["content"] in r["answers"] for r in replied)
        with open(os.path.join(out, "replies.json"), "w", encoding="utf-8") as f:
            json.dump({"gold": len(gold), "replied": len(replied), "wins": wins,
                       "replies_right": right}, f, indent=1)
    return Step("replies", os.path.join(workdir, "fusion-data"), key, build)


def demo_recipe(workdir, size, files, fusion_path):
    models = {name: os.path.join(workdir, "models-src", name) for name, *_ in MODELS}
    return {
        "pivot": {"name": "pivot", "model": models["pivot"]},
        "sources": [{"name": name, "model": models[name]}
                    for name, *_, role in MODELS if role != "pivot"],
        "dataset": {"path": fusion_path, "eval_path": files["eval"], "max_length": 64},
        "extract": {"k": 10, "batch_size": 32, "dtype": "float32", "device": "cpu",
                    "logits_dtype": "F32"},
        "align": {"method": "dtw", "map": "ms"},
        "fuse": {"rule": "mince"},
        "train": {"lm_weight": size["lm_weight"], "epochs": size["train_epochs"], "lr": 2e-3,
                  "batch_size": 32, "grad_accum": 1, "seed": list(size["train_seeds"]),
                  "device": "cpu", "temperature": 1.0},
        # "sft" (renamed sft-seqkd in the table): plain CE on the whole fusion set;
        # sft-gold: plain CE on its gold part only
        "baseline": {"sft": True, "datasets": {BASELINE: files["gold"]}},
        # the fused model merges the two cross-tokenizer targets (the control is a control).
        # select_topk 1.0: on models this small, the paper's 0.1 keeps too few of the deltas
        # (measured: the merge then scores as the pivot)
        "merge": {"method": "sce", "parameters": {"select_topk": 1.0}, "dtype": "float32",
                  "sources": [name for name, *_, role in MODELS if role == "source"]},
        "eval": {"enabled": True, "baseline": BASELINE, "max_new_tokens": 8, "sources": True},
        "output": os.path.join(workdir, "pipeline"),
    }


def plot(rows, path, baseline=BASELINE):
    """Paired differences against ``baseline`` (compare() rows), with their seed-aware 95%
    CIs, per skill and for all skills: exact match and the answer-set probability, one panel
    each. Pivot-based models first, the sources (own tokenizers, trained on far more data)
    hatched and set apart. Returns False (and logs why) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        LOG.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    import numpy as np

    skills = [s for s in dict.fromkeys(r["skill"] for r in rows) if s != "all"] + ["all"]
    models = [m for m in dict.fromkeys(r["model"] for r in rows)
              if m not in (baseline, "pivot")]
    sources = [m for m in models if m.startswith("source-")]
    pivot_based = [m for m in models if m not in sources]
    order = pivot_based + [None] + sources  # None: the gap that sets the sources apart
    by = {(r["model"], r["skill"]): r for r in rows}
    metrics = [("exact_vs_base", "exact match"), ("answer_p_vs_base", "answer-set probability")]
    metrics = [m for m in metrics if any(m[0] in r for r in rows)]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(11, 4.2 * len(metrics)), squeeze=False)
    width = 0.85 / len(order)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label) in zip(axes[:, 0], metrics):
        for j, m in enumerate(order):
            if m is None:
                continue
            d = [by[(m, k)][key] for k in skills]
            mean = np.array([x["diff"] for x in d])
            err = np.array([[x["diff"] - x["low"] for x in d], [x["high"] - x["diff"] for x in d]])
            seeds = by[(m, skills[0])]["seeds"]
            src = m in sources
            ax.bar(np.arange(len(skills)) + j * width, mean, width, yerr=err, capsize=2,
                   color=colors[j % len(colors)], alpha=0.45 if src else 0.9,
                   hatch="//" if src else None, edgecolor="black", linewidth=0.5,
                   label=f"{m} ({seeds} seed{'s' * (seeds > 1)})")
        ax.axhline(0.0, color="black", linewidth=1)
        ax.set_xticks(np.arange(len(skills)) + width * (len(order) - 1) / 2)
        ax.set_xticklabels(skills)
        ax.set_ylabel(f"{label}\nminus {baseline} (95% CI)")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(f"fusechat demo: held-out paired differences against {baseline} "
                         "(CIs over items and training seeds; hatched: the sources)")
    axes[-1, 0].legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run_demo(workdir, quiet=True, quick=False, seed=0):
    """Run (or resume) the demo in ``workdir``. Returns 0 when the pipeline ran through.
    ``seed`` is the data seed: other data, models and held-out set (seed 1 is the dev seed
    the settings were tuned on; the reported table is seed 0). ``quiet`` (the default; the
    CLI's -v turns it off) hides progress bars and trainer logs."""
    import torch

    # one intra-op thread: the demo's matrices are tiny, so a second thread buys nothing on an
    # idle machine and, on a shared one, its spin-waits made training 10x slower (measured)
    from transformers.utils import logging as hf_logging

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bars = hf_logging.is_progress_bar_enabled()
    if quiet:  # transformers' own bars (loading and writing weights)
        hf_logging.disable_progress_bar()
    try:
        return _run_demo(workdir, quiet, quick, seed)
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()


def demo_results(out_eval):
    """The eval step's results, the recipe's "sft" renamed to what it is here (SFT on the
    gold part plus the sources' replies: sequence-level distillation)."""
    results = load_results(out_eval)
    for r in results:
        if r.name.split("@")[0] == "sft":
            r.name = SEQ_KD + r.name[len("sft"):]
    return results


def _run_demo(workdir, quiet, quick, seed):
    from ..stages.evaluate import compare, format_table

    say = print
    size = SIZES["quick" if quick else "full"]
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    files = data_files(workdir, size, seed)
    say(f"data seed {seed}: {size['n_gold']} gold chats + {size['n_prompts']} prompts for the "
        f"sources to answer, {size['n_eval']} held out ({', '.join(demo_data.SKILLS)}); "
        f"training seeds {size['train_seeds']}")
    builds = model_steps(workdir, size, quiet, seed)
    rep = replies_step(workdir, files, {s.name.split("/", 1)[1]: s for s in builds}, quiet)
    run_steps(builds + [rep], workdir, say=lambda m: say("  " + m))
    fusion = os.path.join(rep.out, "fusion.jsonl")
    out = run(demo_recipe(workdir, size, files, fusion), quiet=quiet,
              say=lambda m: say("  " + m))
    with open(os.path.join(rep.out, "replies.json"), encoding="utf-8") as f:
        info = json.load(f)
    results = demo_results(out["eval"])
    rows = compare(results, baseline=BASELINE)
    print(f"\nfusion set: {info['gold']} gold chats + {info['replied']} source replies "
          f"(won: {info['wins']}; {info['replies_right']} of them right)")
    print(f"held-out evaluation, data seed {seed}: mean over training seeds {size['train_seeds']} "
          "('seeds'); exact match of the greedy answer, answer-set P (probability of the set "
          "of right answers), NLL per supervised token; 95% CIs by a bootstrap over items and "
          f"training seeds; 'vs base' = model minus {BASELINE}, paired on items:")
    print(format_table(rows))
    print("(source-* rows: each source with its own tokenizer, so their NLL is per token of "
          "another vocabulary; exact match and answer-set P are comparable)")
    # the reviewer's question: what do the sources' distributions add to their replies?
    kd = [r for r in compare(results, baseline=SEQ_KD)
          if r["model"].startswith("target-") or r["model"] == "fused"]
    print(f"\nagainst {SEQ_KD} (the same fusion set, plain CE: what the token-level "
          "distributions add beyond the sources' replies), same columns:")
    print(format_table(kd))
    with open(os.path.join(workdir, "table.txt"), "w", encoding="utf-8") as f:
        f.write(format_table(rows) + "\n\n" + format_table(kd) + "\n")
    png = os.path.join(workdir, "demo.png")
    if plot(rows, png):
        print(f"plot: {png}")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s (work folder {workdir})")
    return 0
