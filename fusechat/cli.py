"""The ``fusechat`` command line: one thin subcommand per stage, over the Python API.

Each subcommand is registered in COMMANDS as (name, help, add_arguments, run); ``run`` takes
the parsed arguments and returns an exit code. Errors become one line on stderr (``-vv``
shows the traceback): exit code 2 for a missing input path or a missing optional extra
(the line names the ``pip install`` that brings it), 1 for other library errors.
"""
import argparse
import errno
import importlib
import logging
import os
import sys

from .errors import ConfigError, CudaError, FormatError, SafetensorsError, TokenizerError
from .loss import LM_WEIGHT
from .progress import disable_all_bars

LOG = logging.getLogger("fusechat")
USER_ERRORS = (OSError, ValueError, TypeError, SafetensorsError, TokenizerError, FormatError,
               ConfigError, CudaError)
DESCRIPTION = "fusechat: knowledge fusion of chat LLMs (FuseChat), one command per stage."
# the optional packages each extra brings (pyproject.toml); a command that meets one of them
# missing names the extra to install, or the command's own extra when it needs more than one
EXTRA_OF_MODULE = {"torch": "torch", "transformers": "torch", "tokenizers": "torch",
                   "accelerate": "torch", "matplotlib": "demo"}
EXTRA_OF_COMMAND = {"demo": "demo"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, quiet where the default says nothing (None, off) or the
    help already gives it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def require_modules(*names):
    """Import the optional packages a command needs before it starts its work, so that a
    missing extra is reported at once (main names the extra), not after a long step."""
    for name in names:
        importlib.import_module(name)


def require_path(path, what):
    """FileNotFoundError naming path when it does not exist (before any slow import)."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", path)
    return path


# --------------------------------------------------------------------------------------
# inspect

def _inspect_args(p):
    p.add_argument("path", help="a .safetensors file, a Hugging Face checkpoint folder or a "
                                "TopK store folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _inspect_run(args):
    from .inspect import inspect_checkpoint

    require_path(args.path, "checkpoint")
    print(inspect_checkpoint(args.path, as_json=args.json))
    return 0


# --------------------------------------------------------------------------------------
# demo

def _demo_args(p):
    p.add_argument("--workdir", default="fusechat-demo",
                   help="folder for the demo's artefacts, reused by a rerun (default: ./fusechat-demo)")
    p.add_argument("--quick", action="store_true",
                   help="fewer samples and epochs (a smoke run, as the tests use)")
    p.add_argument("--seed", type=int, default=0,
                   help="the data seed: other data, models and held-out set (0: the reported "
                        "table; 1: the dev seed the settings were chosen on)")


def _demo_run(args):
    from .demo.run import run_demo

    require_modules("torch", "transformers", "matplotlib")  # the plot too: checked up front

    # quiet unless -v: the demo's steps print one line each; progress bars and the trainer's
    # logs only with -v
    return run_demo(args.workdir, quiet=args.quiet or not args.verbose, quick=args.quick,
                    seed=args.seed)


# --------------------------------------------------------------------------------------
# run, eval

def _run_args(p):
    p.add_argument("recipe", help="a YAML recipe (see docs/pipeline.md)")
    p.add_argument("--workdir", help="output folder (overrides the recipe's output)")


def _run_run(args):
    from .recipe import run

    require_path(args.recipe, "recipe")
    out = run(args.recipe, workdir=args.workdir, quiet=args.quiet, say=print)
    if "eval" in out:
        with open(os.path.join(out["eval"], "table.txt"), encoding="utf-8") as f:
            print(f.read(), end="")
    return 0


def _eval_args(p):
    p.add_argument("models", nargs="+", help="Hugging Face model folders; NAME=PATH names one")
    p.add_argument("--data", required=True, help="held-out chat dataset (.json/.jsonl)")
    p.add_argument("--baseline", help="name of the model the others are compared against "
                                      "(paired bootstrap)")
    p.add_argument("--template", default="openchat_3.5", choices=["openchat_3.5", "model"],
                   help="openchat_3.5 for every model (as in training) or each model's own")
    p.add_argument("--max-length", type=int, default=2048,
                   help="truncate each conversation to this many tokens")
    p.add_argument("--max-new-tokens", type=int, default=16,
                   help="greedy answer length for exact match")
    p.add_argument("--max-items", type=int, help="score only the first N conversations")


def _eval_run(args):
    from .stages.evaluate import evaluate_models

    require_path(args.data, "dataset")
    models = []
    for spec in args.models:
        name, _, path = spec.rpartition("=")
        name = name or os.path.basename(os.path.normpath(path))
        models.append((name, require_path(path, "model folder"), path, None))
    require_modules("torch", "transformers")
    names = [m[0] for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be distinct (use NAME=PATH): {names}")
    if args.baseline and args.baseline not in names:
        raise ValueError(f"--baseline {args.baseline!r}: not one of the models {names}")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        evaluate_models(models, args.data, tmp, {
            "template": args.template, "max_length": args.max_length, "baseline": args.baseline,
            "max_new_tokens": args.max_new_tokens, "max_items": args.max_items}, args.quiet)
        with open(os.path.join(tmp, "table.txt"), encoding="utf-8") as f:
            print(f.read(), end="")
    return 0


# --------------------------------------------------------------------------------------
# merge

def _merge_args(p):
    p.add_argument("config", help="a mergekit-style YAML merge config")
    p.add_argument("out", help="the output folder (written whole, then renamed into place)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--out-shard-size", default="5G",
                   help="largest output shard, bytes or e.g. 5G, 500M (default 5G = 5e9 bytes)")
    p.add_argument("--threads", type=int, default=0, help="threads per tensor (0 = all CPUs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the DARE/DELLA masks")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                   help="output dtype (overrides the config's out_dtype and dtype)")
    p.add_argument("--quiet", dest="merge_quiet", action="store_true", help="no progress bar")


def _merge_run(args):
    from .merge import run

    require_path(args.config, "merge config")
    out = run(args.config, args.out, overwrite=args.overwrite, out_shard_size=args.out_shard_size,
              threads=args.threads, seed=args.seed, dtype=args.dtype,
              quiet=args.quiet or args.merge_quiet)
    print(out)
    return 0


# --------------------------------------------------------------------------------------
# extract

def _extract_args(p):
    p.add_argument("model", help="Hugging Face model folder (causal LM)")
    p.add_argument("data", help="chat dataset: .json list or .jsonl (ShareGPT or messages)")
    p.add_argument("out", help="output TopK store folder (with --shard: a folder of parts)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    p.add_argument("--template", default="openchat_3.5", choices=["openchat_3.5", "model"],
                   help="openchat_3.5 for every model (the reference) or the model's own")
    p.add_argument("--k", type=int, default=10, help="top-K entries per position")
    p.add_argument("--max-length", type=int, default=2048, help="truncate to this many tokens")
    p.add_argument("--batch-size", type=int, default=8,
                   help="conversations per forward pass (length-sorted)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="the model's dtype")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda (cuda:LOCAL_RANK under torchrun) or auto "
                        "(device_map=auto: one model spread over all visible GPUs)")
    p.add_argument("--logits-dtype", default="F16", choices=["F16", "F32"],
                   help="how the top-K logits are stored")
    p.add_argument("--shard", help="i/n: process slice i of n of the dataset into OUT/part-0000i-of-0000n "
                                   "(default under torchrun: RANK/WORLD_SIZE)")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="skip and count bad records instead of stopping at the first")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _extract_run(args):
    from .stages.extract import extract, parse_shard

    require_path(args.model, "model folder")
    require_path(args.data, "dataset")
    if args.tokenizer:
        require_path(args.tokenizer, "tokenizer folder")
    require_modules("torch", "transformers")
    path = extract(args.model, args.data, args.out, tokenizer=args.tokenizer,
                   template=args.template, k=args.k, max_length=args.max_length,
                   batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                   shard=parse_shard(args.shard) if args.shard else None,
                   logits_dtype=args.logits_dtype, skip_bad_records=args.skip_bad_records,
                   overwrite=args.overwrite, quiet=args.quiet)
    print(path)
    return 0


# --------------------------------------------------------------------------------------
# align

def _align_args(p):
    from .align import PROJECTIONS

    p.add_argument("pivot_store", help="the pivot's TopK store (extracted)")
    p.add_argument("source_store", help="the source's TopK store (extracted)")
    p.add_argument("out", help="output aligned store folder")
    p.add_argument("--pivot-tokenizer", required=True, help="the pivot's tokenizer folder")
    p.add_argument("--source-tokenizer", required=True, help="the source's tokenizer folder")
    p.add_argument("--projection", choices=list(PROJECTIONS),
                   help="bytes: the byte-exact projection of the source's distributions onto "
                        "the pivot's tokens (the default); rules: the reference's DTW + map + "
                        "MAP/ONEHOT/EMPTY rules (the default when --method or --map is given)")
    p.add_argument("-k", type=int, help="bytes: entries kept per position (default the "
                                        "source store's K)")
    p.add_argument("--method", choices=["dtw", "offsets"],
                   help="rules: sequence alignment, the reference's DTW (default) or exact "
                        "byte offsets")
    p.add_argument("--map", choices=["ms", "mined", "em"],
                   help="rules: vocabulary map (default ms, FuseChat's statistics-based map)")
    p.add_argument("--counts", help="rules: co-alignment counts .npz (default OUT.counts.npz)")
    p.add_argument("--threads", type=int, default=0, help="threads (0 = all CPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _align_run(args):
    from .stages.align import align_stores, print_fidelity

    for path, what in ((args.pivot_store, "pivot store"), (args.source_store, "source store"),
                       (args.pivot_tokenizer, "pivot tokenizer"),
                       (args.source_tokenizer, "source tokenizer")):
        require_path(path, what)
    rules_opts = args.method is not None or args.map is not None or args.counts is not None
    if args.projection == "bytes" and rules_opts:
        raise ValueError("--method, --map and --counts belong to --projection rules")
    if (args.projection == "rules" or rules_opts) and args.k is not None:
        raise ValueError("-k belongs to --projection bytes (rules keep the source's K)")
    out = align_stores(args.pivot_store, args.source_store, args.out,
                       pivot_tokenizer=args.pivot_tokenizer,
                       source_tokenizer=args.source_tokenizer, projection=args.projection,
                       method=args.method, map=args.map, k=args.k,
                       counts_path=args.counts, threads=args.threads, overwrite=args.overwrite,
                       quiet=args.quiet)
    print_fidelity(out)
    print(out)
    return 0


# --------------------------------------------------------------------------------------
# fuse

def _fuse_args(p):
    p.add_argument("pivot_store", help="the pivot's TopK store (extracted)")
    p.add_argument("aligned", nargs="+", help="aligned source stores, then OUT (the fused store)")
    p.add_argument("--rule", default="mince", choices=["mince", "avgce"],
                   help="mince (FuseChat, default) or avgce (FuseLLM)")
    p.add_argument("--level", default="sequence", choices=["sequence", "token"],
                   help="compare CE per sequence (default) or per token")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _fuse_run(args):
    from .stages.fuse import fuse_stores

    if len(args.aligned) < 2:
        raise ValueError("fuse: give at least one aligned store and then OUT")
    for path, what in [(args.pivot_store, "pivot store")] + [(a, "aligned store")
                                                             for a in args.aligned[:-1]]:
        require_path(path, what)
    print(fuse_stores(args.pivot_store, args.aligned[:-1], args.aligned[-1], rule=args.rule,
                      level=args.level, overwrite=args.overwrite, quiet=args.quiet))
    return 0


# --------------------------------------------------------------------------------------
# train

def _train_args(p):
    p.add_argument("pivot_model", help="Hugging Face folder of the pivot model")
    p.add_argument("fused_store", help="TopK store made with the pivot's tokenizer "
                                       "(fused, or extracted for self-distillation)")
    p.add_argument("out", help="output model folder")
    p.add_argument("--lm-weight", type=float, default=LM_WEIGHT,
                   help="weight of the gold CE (1.0 = plain SFT baseline)")
    p.add_argument("--temperature", type=float, default=1.0, help="target temperature")
    p.add_argument("--loss", default="ce", choices=["ce", "kl"], help="fusion term")
    p.add_argument("--epochs", type=float, default=3, help="passes over the store")
    p.add_argument("--lr", type=float, default=5e-6,
                   help="peak learning rate (AdamW, cosine schedule, 3%% warmup)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="sequences per device and micro-step")
    p.add_argument("--grad-accum", type=int, default=4, help="micro-steps per optimizer step")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--max-length", type=int, help="truncate stored samples to this length")
    p.add_argument("--seed", type=int, default=42, help="seed of the data order and init")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass (less memory)")
    p.add_argument("--fsdp", action="store_true",
                   help="Fully Sharded Data Parallel (under torchrun/accelerate)")
    p.add_argument("--fsdp-config", help="FSDP config (JSON file), TrainingArguments.fsdp_config")
    p.add_argument("--deepspeed", help="DeepSpeed config (JSON file), e.g. ZeRO-3")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def train_extra_args(args):
    """The TrainingArguments overrides the train CLI options name."""
    extra = {}
    if args.gradient_checkpointing:
        extra["gradient_checkpointing"] = True
    for key in ("fsdp", "fsdp_config", "deepspeed"):
        if getattr(args, key):
            extra[key] = getattr(args, key)
    return extra


def _train_run(args):
    from .stages.train import train

    require_path(args.pivot_model, "pivot model folder")
    require_path(args.fused_store, "store")
    require_modules("torch", "transformers", "accelerate")
    path = train(args.pivot_model, args.fused_store, args.out, lm_weight=args.lm_weight,
                 temperature=args.temperature, kind=args.loss, epochs=args.epochs, lr=args.lr,
                 batch_size=args.batch_size, grad_accum=args.grad_accum,
                 max_steps=args.max_steps, max_length=args.max_length, seed=args.seed,
                 bf16=args.bf16, device=args.device, overwrite=args.overwrite,
                 quiet=args.quiet, training_args=train_extra_args(args))
    print(path)
    return 0


COMMANDS = [
    ("inspect", "list a checkpoint's tensors, dtypes, shapes, parameter count and metadata, or "
     "a TopK store's contents and fidelity figures",
     _inspect_args, _inspect_run),
    ("merge", "merge checkpoints with a mergekit-style YAML config (linear, ties, dare, sce, ...)",
     _merge_args, _merge_run),
    ("demo", "the whole pipeline on tiny models built on the fly (no download)", _demo_args,
     _demo_run),
    ("run", "run a YAML recipe: every pipeline step not already done", _run_args, _run_run),
    ("eval", "compare models on a held-out chat set: NLL and exact match with bootstrap CIs",
     _eval_args, _eval_run),
    ("extract", "run a model over a chat dataset and write its top-K store", _extract_args,
     _extract_run),
    ("align", "map a source's TopK store onto the pivot's tokens and vocabulary", _align_args,
     _align_run),
    ("fuse", "fuse the pivot's and aligned sources' stores (MinCE or AvgCE) for training",
     _fuse_args, _fuse_run),
    ("train", "fine-tune the pivot on gold CE + CE against a fused top-K store", _train_args,
     _train_run),
]


def build_parser():
    parser = argparse.ArgumentParser(prog="fusechat", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: info logs, -vv: debug logs and tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    level = os.environ.get("FUSECHAT_VERBOSITY", "").upper() or (
        "DEBUG" if args.verbose >= 2 else "INFO" if args.verbose == 1 else "WARNING")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.quiet:
        disable_all_bars()
    try:
        return args._run(args)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in EXTRA_OF_MODULE or args.verbose >= 2:
            raise
        extra = EXTRA_OF_COMMAND.get(args.command, EXTRA_OF_MODULE[missing])
        print(f"fusechat {args.command}: error: needs {missing}, which is not installed: "
              f"pip install 'fusechat[{extra}]'", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        if args.verbose >= 2:
            raise
        where = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        print(f"fusechat {args.command}: error: {where}", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        if args.verbose >= 2:
            raise
        print(f"fusechat {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fusechat {args.command}: interrupted", file=sys.stderr)
        return 130
