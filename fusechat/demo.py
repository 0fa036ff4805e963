"""``fusechat demo`` (``make demo``): the whole FuseChat pipeline on tiny models, no download.

1. generates a synthetic chat dataset with three skills (fusechat.demo_data: arithmetic,
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

from . import demo_data
from .recipe import Step, load_results, run, run_steps

LOG = logging.getLogger(__name__)

# (name, architecture, tokenizer kind, training mix, role)
MODELS = [
    ("pivot", "llama", "metaspace", None, "pivot"),
    ("qwen2-arith", "qwen2", "byte_level", {"arithmetic": 0.7, "strings": 0.25, "facts": 0.05},
     "source"),
    ("gpt2-facts", "gpt2", "unigram", {"arithmetic": 0.1, "strings": 0.1, "facts": 0.8},
     "source"),
]
# The experiment (docs/pipeline.md, "The demo"): each source learns its skills from a large
# skill-specific set (source_n rows x source_epochs), the pivot gets only a light pass over
# the uniform mix, and the fusion dataset is small (n_data rows, n_eval of them held out for
# the table), so the fusion data alone teaches the pivot its skills only partly and the
# sources know more than it shows. Chosen on the dev seed (seed=1), never on the reported one
# (seed=0): train_epochs 3 left SFT and targets untrained (exact 0.02), 12 lets SFT learn
# facts and strings; lm_weight stays the paper's 0.9 (0.5 scored below it in 8 of the 9
# target/merge x skill cells, by up to 0.34 exact match).
SIZES = {
    "full": dict(n_data=900, n_eval=300, pivot_n=600, pivot_epochs=2, source_n=4000,
                 source_epochs=6, hidden=96, train_epochs=12, lm_weight=0.9),
    "quick": dict(n_data=200, n_eval=30, pivot_n=100, pivot_epochs=1, source_n=200,
                  source_epochs=1, hidden=32, train_epochs=1, lm_weight=0.9),
}


def _write_jsonl(path, records):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)


def model_steps(workdir, size, quiet, seed=0):
    """Steps that build the demo's three chat models (cached like the pipeline's steps)."""
    from . import demo_models

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


def demo_recipe(workdir, size, seed=0):
    models = {name: os.path.join(workdir, "models-src", name) for name, *_ in MODELS}
    return {
        "pivot": {"name": "pivot", "model": models["pivot"]},
        "sources": [{"name": name, "model": models[name]}
                    for name, *_, role in MODELS if role == "source"],
        "dataset": {"path": os.path.join(workdir, "dataset.jsonl"), "max_length": 64,
                    "eval_size": size["n_eval"], "split_seed": seed},
        "extract": {"k": 10, "batch_size": 32, "dtype": "float32", "device": "cpu",
                    "logits_dtype": "F32"},
        "align": {"method": "dtw", "map": "ms"},
        "fuse": {"rule": "mince"},
        "train": {"lm_weight": size["lm_weight"], "epochs": size["train_epochs"], "lr": 2e-3,
                  "batch_size": 32, "grad_accum": 1, "seed": 42, "device": "cpu"},
        "baseline": {"sft": True},
        # select_topk 1.0: on models this small, the paper's 0.1 keeps too few of the deltas
        # (measured: the merge then scores as the pivot)
        "merge": {"method": "sce", "parameters": {"select_topk": 1.0}, "dtype": "float32"},
        # paired differences against the SFT baseline: the question is what the fusion signal
        # adds to plain CE on the same data
        "eval": {"enabled": True, "baseline": "sft", "max_new_tokens": 8, "sources": True},
        "output": os.path.join(workdir, "pipeline"),
    }


def plot(results, path):
    """A bar chart of exact-match accuracy per skill and model with 95% CI whiskers. Returns
    False (and logs why) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        LOG.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    import numpy as np

    skills = sorted(set(np.concatenate([r.skill for r in results]).tolist()))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(9, 5))
    for j, r in enumerate(results):
        s = [r.summary(k)["exact"] for k in skills]
        mean = np.array([x[0] for x in s])
        err = np.array([[x[0] - x[1] for x in s], [x[2] - x[0] for x in s]])
        ax.bar(np.arange(len(skills)) + j * width, mean, width, yerr=err, capsize=3,
               label=r.name)
    ax.set_xticks(np.arange(len(skills)) + width * (len(results) - 1) / 2)
    ax.set_xticklabels(skills)
    ax.set_ylabel("exact match (95% CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title("fusechat demo: held-out exact match per skill")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run_demo(workdir, quiet=False, quick=False, seed=0):
    """Run (or resume) the demo in ``workdir``. Returns 0 when the pipeline ran through.
    ``seed`` draws other data, models and split (seed 1 is the dev seed the settings were
    tuned on; the reported table is seed 0)."""
    import torch

    # one intra-op thread: the demo's matrices are tiny, so a second thread buys nothing on an
    # idle machine and, on a shared one, its spin-waits made training 10x slower (measured)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(workdir, quiet, quick, seed)
    finally:
        torch.set_num_threads(threads)


def _run_demo(workdir, quiet, quick, seed):
    from .evaluate import compare, format_table

    say = (lambda *a: None) if quiet else print  # step messages; the results always print
    size = SIZES["quick" if quick else "full"]
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    data = os.path.join(workdir, "dataset.jsonl")
    # the dataset is a pure function of (n, seed): rewriting it keeps its fingerprint
    _write_jsonl(data, demo_data.make_dataset(size["n_data"], seed=7 + 1000 * seed))
    say(f"dataset: {size['n_data']} synthetic chats ({', '.join(demo_data.SKILLS)}) -> {data}")
    run_steps(model_steps(workdir, size, quiet, seed), workdir, say=lambda m: say("  " + m))
    out = run(demo_recipe(workdir, size, seed), quiet=quiet, say=lambda m: say("  " + m))
    results = load_results(out["eval"])
    table = format_table(compare(results, baseline="sft"))
    print("\nheld-out evaluation (NLL per supervised token; exact match of the greedy answer; "
          "95% bootstrap CIs; 'vs base' = paired difference against the SFT baseline, "
          "model minus SFT):")
    print(table)
    print("(source-* rows: each source with its own tokenizer, so their NLL is per token of "
          "another vocabulary; exact match is comparable)")
    png = os.path.join(workdir, "demo.png")
    if plot(results, png):
        print(f"plot: {png}")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s (work folder {workdir})")
    return 0
