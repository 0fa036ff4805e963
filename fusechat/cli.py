"""The ``fusechat`` command line: one thin subcommand per stage, over the Python API.

Each subcommand is registered in COMMANDS as (name, help, add_arguments, run); ``run`` takes
the parsed arguments and returns an exit code. Library errors become one line on stderr
and exit code 1 (``-v`` shows the traceback).
"""
import argparse
import logging
import os
import sys

from .errors import ConfigError, CudaError, FormatError, SafetensorsError, TokenizerError

LOG = logging.getLogger("fusechat")
USER_ERRORS = (OSError, ValueError, TypeError, SafetensorsError, TokenizerError, FormatError,
               ConfigError, CudaError)


# --------------------------------------------------------------------------------------
# inspect

def _inspect_args(p):
    p.add_argument("path", help="a .safetensors file or a Hugging Face checkpoint folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _inspect_run(args):
    from .inspect import inspect_checkpoint

    print(inspect_checkpoint(args.path, as_json=args.json))
    return 0


# --------------------------------------------------------------------------------------
# demo

def _demo_args(p):
    p.add_argument("--workdir", default="fusechat-demo",
                   help="folder for the demo's artefacts (default: ./fusechat-demo)")


def _demo_run(args):
    from .demo import run_demo

    return run_demo(args.workdir, quiet=args.quiet)


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

    out = run(args.config, args.out, overwrite=args.overwrite, out_shard_size=args.out_shard_size,
              threads=args.threads, seed=args.seed, dtype=args.dtype,
              quiet=args.quiet or args.merge_quiet)
    print(out)
    return 0


COMMANDS = [
    ("inspect", "list a checkpoint's tensors, dtypes, shapes, parameter count and metadata",
     _inspect_args, _inspect_run),
    ("merge", "merge checkpoints with a mergekit-style YAML config (linear, ties, dare, sce, ...)",
     _merge_args, _merge_run),
    ("demo", "run the demo on tiny models built on the fly", _demo_args, _demo_run),
]


def build_parser():
    parser = argparse.ArgumentParser(prog="fusechat", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: info logs, -vv: debug logs and tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
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
        os.environ["FUSECHAT_DISABLE_PROGRESS_BARS"] = "1"
    try:
        return args._run(args)
    except USER_ERRORS as exc:
        if args.verbose >= 2:
            raise
        print(f"fusechat {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fusechat {args.command}: interrupted", file=sys.stderr)
        return 130
