"""Benchmark: `fusechat merge` vs `mergekit-yaml` vs the I/O floor on synthetic Llama-shaped
bf16 checkpoints (issue 3).

Merges: TIES, DARE-TIES, task_arithmetic, DARE-linear with rescale_norm l2 and RAM on a base
+ 2 models; arcee_fusion on a base + 1; SCE on a base + 5 targets (like FuseChat-7B-v2.0). For each: wall time and peak
memory of fusechat and of mergekit (separate processes, page cache warm), and the I/O floor:
reading every input once and writing one output of the same size. Peak memory is reported
as the peak anonymous RSS (RssAnon: what the process allocates, on top of the page cache its
mappings use) and the peak total RSS (VmHWM, file pages included).

Every measured run starts from the same memory state: the previous output deleted, then
--settle seconds (3) idle. On a VM whose balloon device reports free pages to the host
(virtio free page reporting), memory that has been free for about a second is handed back,
and writing a new file into it costs several times more (the host backs each page again) than
writing into pages a deleted file freed a moment ago. fusechat writes its output over
seconds, so it cannot live on just-freed pages; the floor, written in half a second right
after a deletion, can. The floor is therefore measured both ways: settled (the same state as
fusechat: the ratio that counts) and straight after a deletion (the most favourable case).
fusechat and the floors alternate --repeat times (3) and the best run of each counts;
mergekit runs once.

    python benchmarks/bench_merge.py --quick          # ~20M-parameter models, a check
    flock /tmp/fusechat-bench.lock python benchmarks/bench_merge.py  # >= 1B parameters

--mergekit-size {full,small,skip}: mergekit is slow; `small` runs it on a smaller model
(and says so in the table) when the full-size runs would take too long.
The table is written into docs/benchmarks.md under "## Merge" (other sections kept).
"""
import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from _common import machine, write_section  # noqa: E402

SIZES = {  # hidden, intermediate, layers, vocab
    "quick": (512, 1376, 4, 8000),
    "small": (1024, 2816, 8, 16000),
    "full": (2048, 5504, 18, 32000),   # 1.04e9 parameters, 2.1 GB in bf16
}
MERGES = [  # name, method, number of non-base models, per-model params, global params
    ("ties", "ties", 2, {"weight": 0.5, "density": 0.6}, {"normalize": True}),
    ("dare_ties", "dare_ties", 2, {"weight": 0.5, "density": 0.6}, {}),
    ("task_arithmetic", "task_arithmetic", 2, {"weight": 0.3}, {"normalize": False}),
    ("sce", "sce", 5, {}, {"select_topk": 0.1}),
    # rescale_norm l2 (mergekit 0.1.5 reads no rescale_norm key: it rescales by l1, the same
    # work), and ram (two inputs' active deltas averaged)
    ("dare_linear_l2", "dare_linear", 2, {"weight": 0.5, "density": 0.6}, {"rescale_norm": "l2"}),
    ("ram", "ram", 2, {}, {"epsilon": 1e-5}),
    # arcee_fusion (base + one model): row divergences, six order statistics, the output
    ("arcee_fusion", "arcee_fusion", 1, {}, {}),
]


def model_config(size):
    h, inter, layers, vocab = SIZES[size]
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
            "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": h // 64, "num_key_value_heads": h // 64, "vocab_size": vocab,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
            "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}


def shapes(size):
    from fusechat.demo.tiny_llama import llama_shapes

    return list(llama_shapes(model_config(size)).items())


def make_checkpoints(root, size, n_models):
    """base + n_models targets (base + noise), bf16, 1 GB shards; reused if present."""
    import json

    import fusechat
    import fusechat.safetensors as st

    paths = [os.path.join(root, size, "base")] + [os.path.join(root, size, f"m{j}")
                                                  for j in range(n_models)]
    todo = [p for p in paths if not os.path.exists(os.path.join(p, "config.json"))]
    if not todo:
        return paths
    entries = shapes(size)
    for p in todo:
        j = paths.index(p)
        os.makedirs(p, exist_ok=True)
        with st.Writer(p, [(n, "BF16", s) for n, s in entries], {"format": "pt"},
                       max_shard_size="1GB", overwrite=True) as w:
            for k, (name, shape) in enumerate(entries):
                base = np.random.default_rng(k).standard_normal(shape, dtype=np.float32)
                base *= 0.02
                if j:
                    noise = np.random.default_rng(1000 * j + k).standard_normal(shape, dtype=np.float32)
                    base += noise * (0.002 * j)
                w.write(name, fusechat.convert(base, "BF16"))
        cfg = model_config(size)
        with open(os.path.join(p, "config.json"), "w") as f:
            json.dump(cfg, f)
    return paths


def write_config(path, method, base, models, per_model, glob):
    import yaml

    cfg = {"merge_method": method, "base_model": base,
           "models": [{"model": m, "parameters": dict(per_model)} if per_model else {"model": m}
                      for m in models],
           "dtype": "bfloat16"}
    if glob:
        cfg["parameters"] = dict(glob)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)


def folder_files(p):
    return [os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".safetensors")]


def warm(paths):
    """Read every input file once so the page cache holds them."""
    buf = bytearray(64 << 20)
    mv = memoryview(buf)
    total = 0
    for p in paths:
        for f in folder_files(p):
            with open(f, "rb", buffering=0) as fh:
                while True:
                    n = fh.readinto(mv)
                    if not n:
                        break
                    total += n
    return total


def io_floor(paths, out_bytes, out_dir):
    """Seconds to read all inputs (warm) and write out_bytes to a new file."""
    chunk = memoryview(bytearray(64 << 20))  # slices of a memoryview copy nothing
    t0 = time.perf_counter()
    warm(paths)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "floor.bin"), "wb", buffering=0) as f:
        left = out_bytes
        while left > 0:
            left -= f.write(chunk[:min(left, len(chunk))])
    dt = time.perf_counter() - t0
    shutil.rmtree(out_dir)
    return dt


def run_measured(cmd, env=None):
    """(seconds, peak RssAnon bytes, peak VmHWM bytes), polling /proc every 50 ms."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_anon = hwm = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak_anon = max(peak_anon, int(line.split()[1]) * 1024)
                    elif line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.05)
    dt = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err[-2000:]}")
    return dt, peak_anon, hwm


def out_size(folder):
    return sum(os.path.getsize(f) for f in folder_files(folder))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models: a check, not a result")
    ap.add_argument("--workdir", default="/tmp/fusechat-bench-merge")
    ap.add_argument("--mergekit-size", choices=("full", "small", "skip"), default="full")
    ap.add_argument("--methods", default=",".join(m[0] for m in MERGES))
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of fusechat and of the floors, alternating; the best of each counts")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds idle before each measured run (see the module docstring)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = ap.parse_args()
    size = "quick" if args.quick else "full"
    mk_size = {"full": size, "small": "quick" if args.quick else "small", "skip": None}[args.mergekit_size]
    wanted = args.methods.split(",")
    mergekit_yaml = shutil.which("mergekit-yaml") or os.path.join(os.path.dirname(sys.executable),
                                                                  "mergekit-yaml")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = []
    try:
        for name, method, n, per_model, glob in MERGES:
            if name not in wanted:
                continue
            paths = make_checkpoints(args.workdir, size, n)
            n_params = sum(int(np.prod(s)) for _, s in shapes(size))
            cfg = os.path.join(args.workdir, f"{name}-{size}.yml")
            write_config(cfg, method, paths[0], paths[1:], per_model, glob)
            out = os.path.join(args.workdir, "out-fc")
            floor_out = os.path.join(args.workdir, "out-floor")
            warm(paths)
            fc_runs, floor_runs, hot_runs = [], [], []
            for _ in range(args.repeat):
                time.sleep(args.settle)
                fc_runs.append(run_measured([sys.executable, "-m", "fusechat", "merge", cfg, out,
                                             "--quiet", "--overwrite"], env))
                nbytes = out_size(out)
                shutil.rmtree(out)
                time.sleep(args.settle)
                floor_runs.append(io_floor(paths, nbytes, floor_out))
                hot_runs.append(io_floor(paths, nbytes, floor_out))  # into the pages just freed
            fc = min(fc_runs)  # (seconds, peak anon, peak total): the fastest run's
            fc = (fc[0], max(r[1] for r in fc_runs), max(r[2] for r in fc_runs))
            floor = (min(floor_runs), min(hot_runs))
            mk = None
            if mk_size:
                mk_paths = make_checkpoints(args.workdir, mk_size, n)
                mk_cfg = os.path.join(args.workdir, f"{name}-{mk_size}.yml")
                write_config(mk_cfg, method, mk_paths[0], mk_paths[1:], per_model, glob)
                warm(mk_paths)
                time.sleep(args.settle)
                mk_out = os.path.join(args.workdir, "out-mk")
                mk = run_measured([mergekit_yaml, mk_cfg, mk_out, "--no-copy-tokenizer"], env)
                shutil.rmtree(mk_out, ignore_errors=True)
                if mk_size != size:  # fusechat on the same smaller size, for the ratio
                    out2 = os.path.join(args.workdir, "out-fc2")
                    time.sleep(args.settle)
                    fc_small = run_measured([sys.executable, "-m", "fusechat", "merge", mk_cfg,
                                             out2, "--quiet", "--overwrite"], env)
                    shutil.rmtree(out2)
                    mk = mk + (fc_small,)
            rows.append((name, n, n_params, fc, floor, mk, mk_size))
            print(format_row(rows[-1], size), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    table = format_table(rows, size, args.repeat)
    print(table)
    if not args.no_docs and not args.quick:
        write_section(table)


def gib(b):
    return f"{b / 2**30:.2f}"


def format_row(r, size):
    name, n, n_params, fc, floor, mk, mk_size = r
    s = f"{name}: base+{n}, {n_params/1e9:.2f}B params: fusechat {fc[0]:.1f} s (anon {gib(fc[1])} GiB)," \
        f" floor {floor[0]:.1f} s ({fc[0]/floor[0]:.2f}x), just-freed pages {floor[1]:.1f} s" \
        f" ({fc[0]/floor[1]:.2f}x)"
    if mk:
        ref = mk[3][0] if len(mk) > 3 else fc[0]
        s += f"; mergekit[{mk_size}] {mk[0]:.1f} s (anon {gib(mk[1])} GiB), speed-up {mk[0]/ref:.1f}x"
    return s


def format_table(rows, size, repeat):
    lines = [
        "## Merge",
        "",
        f"`benchmarks/bench_merge.py` ({'--quick' if size == 'quick' else 'full size'}), "
        f"{datetime.date.today().isoformat()}, {machine()}.",
        "Synthetic Llama-shaped bf16 checkpoints (hidden/intermediate/layers/vocab = "
        f"{'/'.join(map(str, SIZES[size]))}), page cache warm, default threads; fusechat and "
        f"the I/O floors best of {repeat} alternating runs each, mergekit one run; each "
        "measured run after the previous output was deleted and the machine idle for a few "
        "seconds (the floor also straight after a deletion: see below). "
        "Peak memory: anonymous RSS (what the process allocates beyond the mapped page cache) "
        "and total RSS (VmHWM, mapped file pages included).",
        "",
        "| merge | params | fusechat s | I/O floor s | fusechat / floor "
        "| floor, just-freed pages s | fusechat / that | fusechat anon / total RSS GiB "
        "| mergekit s | mergekit anon / total RSS GiB | mergekit / fusechat |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = set()
    for name, n, n_params, fc, floor, mk, mk_size in rows:
        mk_cells = "not run | - | -"
        if mk:
            ref = mk[3][0] if len(mk) > 3 else fc[0]
            tag = "" if mk_size == size else f" ({mk_size})"
            if mk_size != size:
                notes.add(mk_size)
            mk_cells = (f"{mk[0]:.1f}{tag} | {gib(mk[1])} / {gib(mk[2])} | "
                        f"**{mk[0] / ref:.1f}x**")
        lines.append(f"| {name}, base + {n} | {n_params / 1e9:.2f}B | {fc[0]:.1f} | {floor[0]:.1f} | "
                     f"{fc[0] / floor[0]:.2f}x | {floor[1]:.1f} | {fc[0] / floor[1]:.2f}x | "
                     f"{gib(fc[1])} / {gib(fc[2])} | {mk_cells} |")
    for s in sorted(notes):
        lines.append("")
        lines.append(f"mergekit was measured on the `{s}` size "
                     f"({'/'.join(map(str, SIZES[s]))}) because the full-size runs take too long "
                     "on this machine; the ratio compares it with fusechat on that same size.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
