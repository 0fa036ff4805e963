"""The whole demo's wall time (`fusechat demo`): a fresh run in an empty work folder, then a
rerun in the same folder (every step cached: fingerprints checked, nothing recomputed).

    python benchmarks/bench_demo.py [--quick] [--write-docs]

Anchor (issue 6): under 10 minutes on a 2-core machine. Writes the `## Demo` section of
docs/benchmarks.md with --write-docs, and the demo's own output to stdout.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from _common import machine, write_section  # noqa: E402

SECTION = "## Demo"
GOAL_S = 600.0


def timed_demo(workdir, quick):
    cmd = [sys.executable, "-m", "fusechat", "-q", "demo", "--workdir", workdir]
    cmd += ["--quick"] if quick else []
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return dt, proc.stdout


def sizes_line(quick):
    from fusechat.demo.run import SIZES

    z = SIZES["quick" if quick else "full"]
    return (f"Sizes: fusion set {z['n_gold']} gold chats + {z['n_prompts']} prompts answered by "
            f"the sources, {z['n_eval']} held out; sources {z['source_n']} chats x "
            f"{z['source_epochs']} epochs, pivot {z['pivot_n']} x {z['pivot_epochs']}, hidden "
            f"{z['hidden']}, 2 layers; targets and SFT baselines {z['train_epochs']} epochs "
            f"(lm_weight {z['lm_weight']}) x training seeds {z['train_seeds']}. The cached "
            "rerun checks every step's fingerprint (hashing the model folders) and recomputes "
            "nothing.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="time `fusechat demo --quick`")
    ap.add_argument("--write-docs", action="store_true",
                    help="replace this benchmark's section of docs/benchmarks.md")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="fusechat-bench-demo-")
    try:
        fresh, out = timed_demo(work, args.quick)
        cached, _ = timed_demo(work, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(out)
    mode = "--quick" if args.quick else "full"
    lines = [SECTION, "",
             f"`benchmarks/bench_demo.py`{' --quick' if args.quick else ''}, "
             f"{time.strftime('%Y-%m-%d')}, {machine()}. Wall time of `fusechat demo` "
             "(build 4 tiny models, best-of-sources replies, extract 3 + 1, align 3, fuse 3, per "
             "training seed train 3 targets + 2 SFT baselines and an SCE merge, evaluate "
             "pivot, every seed's models and the 3 sources) in an empty work folder, then "
             "rerun in the same folder.",
             "", "| run | wall s | vs the 600 s goal |", "|---|---|---|",
             f"| demo ({mode}), fresh work folder | {fresh:.1f} | {fresh / GOAL_S:.2f}x |",
             f"| demo ({mode}), rerun, every step cached | {cached:.1f} | "
             f"{cached / GOAL_S:.2f}x |", "", sizes_line(args.quick), "",
             f"Load average when the run ended: {os.getloadavg()[0]:.1f} (other jobs share "
             "the cores; the demo trains with one torch thread).", ""]
    print("\n".join(lines))
    if args.write_docs:
        write_section("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
