"""Benchmark: the fused sparse fusion loss (forward + backward) against the reference's path.

Side by side in one run, bf16 logits [N, V], K = 10 sparse target entries, lm_weight 0.9:

  reference  what FuseChat's trainer does: the collator scatters softmax(top-K / T) into a
             dense [N, V] bf16 target, then soft-target cross_entropy + gold CE on the
             float32-upcast logits, backward by autograd (method.md 7.1-7.2)
  eager      eager sparse PyTorch: float32 upcast, logsumexp + gather, autograd
  fusechat   fusechat.torch.fusion_loss (one fused C pass, gradient rounded once to bf16)
  numpy copy a plain copy of the logits array, the memory-bandwidth anchor

Each method runs in its own subprocess so that its peak memory (ru_maxrss above the inputs)
is its own (peak RSS, reset after the inputs are made), measured in a second run that is
not timed. Reported: best-of-R wall time, speedups, tokens/s, achieved bandwidth by the
6V-bytes-per-token model (2 reads + 1 write of a bf16 row) against the copy's, and the peak
extra memory in units of one [N, V] bf16 gradient. Goals (issue 5): >= 5x the reference,
>= 2x eager, no V-sized allocation besides the gradient.

GPU part (when torch sees a GPU and fusechat's CUDA kernels load): tokens/s and HBM
bandwidth by the same model against a device-to-device copy, and eager sparse PyTorch on the
GPU; skipped with the reason otherwise.

    python benchmarks/bench_loss.py --quick          # small, for checking
    flock /tmp/fusechat-bench.lock python benchmarks/bench_loss.py --write-docs
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

K = 10
LM_WEIGHT = 0.9
SECTION = "## Sparse fusion loss (bench_loss.py)"


def make_inputs(n, v, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    # drawn in bf16 directly: no freed float32 temporary to hide later allocations in RSS
    logits = torch.randn(n, v, generator=g, dtype=torch.bfloat16).mul_(2)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[: n // 10] = -100  # prompt tokens
    ids = torch.stack([torch.randperm(v, generator=g)[:K] for _ in range(n)]).to(torch.int32)
    vals = torch.randn(n, K, generator=g)
    return logits, labels, ids, vals


def run_reference(logits, labels, ids, vals):
    import torch
    import torch.nn.functional as F

    z = logits.detach().requires_grad_()
    # the collator: dense bf16 target, softmax over the kept logits scattered onto the ids
    dense = torch.zeros(z.shape, dtype=torch.bfloat16)
    dense.scatter_(1, ids.long(), torch.softmax(vals, -1).to(torch.bfloat16))
    z32 = z.float()
    sup = labels != -100
    sft = F.cross_entropy(z32, labels, ignore_index=-100)
    fuse = F.cross_entropy(z32, dense.float(), reduction="none")
    loss = LM_WEIGHT * sft + (1 - LM_WEIGHT) * (fuse * sup).sum() / sup.sum()
    loss.backward()
    return loss.item(), z.grad


def run_eager(logits, labels, ids, vals):
    import torch

    z = logits.detach().requires_grad_()
    z32 = z.float()
    lse = torch.logsumexp(z32, -1)
    sup = labels != -100
    y = labels.clamp_min(0)
    ce = lse - z32.gather(1, y[:, None])[:, 0]
    p = torch.softmax(vals, -1)
    fuse = lse - (p * z32.gather(1, ids.long())).sum(-1)
    loss = ((LM_WEIGHT * ce + (1 - LM_WEIGHT) * fuse) * sup).sum() / sup.sum()
    loss.backward()
    return loss.item(), z.grad


def run_fusechat(logits, labels, ids, vals):
    from fusechat.torch import fusion_loss

    z = logits.detach().requires_grad_()
    loss = fusion_loss(z, labels, ids, vals, lm_weight=LM_WEIGHT)
    loss.backward()
    return loss.item(), z.grad


def run_copy(logits, labels, ids, vals):
    import numpy as np

    a = logits.view(__import__("torch").int16).numpy()
    return 0.0, np.copy(a)


METHODS = {"reference": run_reference, "eager": run_eager, "fusechat": run_fusechat,
           "numpy copy": run_copy}


def rss_kib(field):
    """VmRSS / VmHWM of this process in KiB (Linux), or ru_maxrss when /proc lacks them."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss():
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS, so
    temporaries freed while making the inputs do not hide the method's own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def worker(method, n, v, repeats, threads):
    """Runs in a subprocess: inputs, one warm-up, `repeats` timed runs, peak RSS growth."""
    import torch

    torch.set_num_threads(threads)
    os.environ["FUSECHAT_NUM_THREADS"] = str(threads)
    import fusechat.torch  # noqa: F401 - module loading is not the method's memory

    inputs = make_inputs(n, v)
    reset_peak_rss()
    base = rss_kib("VmRSS")
    fn = METHODS[method]
    loss, out = fn(*inputs)
    del out
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss, out = fn(*inputs)
        times.append(time.perf_counter() - t0)
        del out
    peak = rss_kib("VmHWM")
    print(json.dumps({"time": min(times), "loss": loss, "peak_extra": (peak - base) * 1024}))


def run_worker(method, n, v, repeats, threads, env=None):
    out = subprocess.run([sys.executable, __file__, "--worker", method, str(n), str(v),
                          "--repeats", str(repeats), "--threads", str(threads)],
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        sys.exit(f"bench_loss: {method} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_agreement(n, v):
    """Validation before timing: the three losses and gradients agree on a small case."""
    import torch

    inputs = make_inputs(min(n, 64), v, seed=1)
    res = {m: METHODS[m](*inputs) for m in ("reference", "eager", "fusechat")}
    ref_loss, ref_grad = res["eager"]
    for m, (loss, grad) in res.items():
        if abs(loss - ref_loss) > 1e-2 * abs(ref_loss):
            sys.exit(f"bench_loss: {m} loss {loss} disagrees with eager {ref_loss}")
        err = (grad.float() - ref_grad.float()).abs().max().item()
        if err > 2e-2 * ref_grad.float().abs().max().item():
            sys.exit(f"bench_loss: {m} gradient differs from eager by {err}")
    return True


def gpu_part(n, v, repeats):
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    import fusechat

    ok, reason = fusechat.cuda_available(with_reason=True)
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    if not ok:
        return None, reason
    from fusechat.torch import fusion_loss

    logits, labels, ids, vals = (t.cuda() for t in make_inputs(n, v))

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        return best

    def ours():
        z = logits.detach().requires_grad_()
        fusion_loss(z, labels, ids, vals, lm_weight=LM_WEIGHT, validate=False).backward()

    def eager():
        run_eager(logits, labels, ids, vals)

    t_ours, t_eager = timed(ours), timed(eager)
    t_copy = timed(lambda: logits.clone())
    model = 6 * v * n  # bytes moved by the fused kernel per call
    copy_bw = 2 * logits.numel() * 2 / t_copy
    return {"device": torch.cuda.get_device_name(), "tok_s": n / t_ours,
            "bw": model / t_ours, "copy_bw": copy_bw, "eager_speedup": t_eager / t_ours,
            "t_ours": t_ours, "t_eager": t_eager}, ""


def machine():
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    ap.add_argument("--tokens", type=int, help="rows N (default 2048 / 512 quick)")
    ap.add_argument("--vocab", type=int, nargs="*", default=[32000, 151936])
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--write-docs", action="store_true",
                    help="replace this benchmark's section of docs/benchmarks.md")
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "N", "V"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    if args.worker:
        method, n, v = args.worker
        worker(method, int(n), int(v), repeats, args.threads)
        return
    n_default = 512 if args.quick else 2048
    rows, gpu_rows = [], []
    for v in args.vocab:
        n = args.tokens or (n_default if v <= 64000 else n_default // 2)
        check_agreement(n, v)
        res = {}
        for m in METHODS:
            res[m] = run_worker(m, n, v, repeats, args.threads)
            # memory in a second process with a fixed mmap threshold: large blocks are
            # unmapped when freed, so the method's allocations show in its peak RSS instead
            # of reusing freed heap (that setting slows allocation, so it is not timed)
            res[m]["peak_extra"] = run_worker(m, n, v, 1, args.threads,
                                              {"MALLOC_MMAP_THRESHOLD_": "131072"})["peak_extra"]
        grad_bytes = 2 * n * v
        copy_bw = 2 * grad_bytes / res["numpy copy"]["time"]
        ours = res["fusechat"]["time"]
        rows.append(dict(v=v, n=n, res=res, grad_bytes=grad_bytes, copy_bw=copy_bw,
                         bw=6 * v * n / ours, vs_ref=res["reference"]["time"] / ours,
                         vs_eager=res["eager"]["time"] / ours))
        g, reason = gpu_part(max(n, 8192), v, repeats)
        gpu_rows.append((v, g, reason))
    lines = report(rows, gpu_rows, args, repeats)
    print("\n".join(lines))
    if args.write_docs:
        write_docs(lines)


def report(rows, gpu_rows, args, repeats):
    date = datetime.date.today().isoformat()
    lines = [SECTION, "",
             f"Machine: {machine()}; {args.threads} threads; {date}; bf16 logits, K = {K}, "
             f"lm_weight {LM_WEIGHT}, forward + backward, best of {repeats}"
             + (" (--quick)" if args.quick else "") + ". Peak = growth of the peak RSS of the "
             "method's own process over its inputs, in units of one [N, V] bf16 gradient.", "",
             "| V | N | method | time (ms) | tokens/s | peak (x grad) | fusechat speedup |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        for m, x in r["res"].items():
            ours = r["res"]["fusechat"]["time"]
            sp = "" if m in ("fusechat", "numpy copy") else f"{x['time'] / ours:.1f}x"
            lines.append(f"| {r['v']} | {r['n']} | {m} | {x['time'] * 1e3:.1f} | "
                         f"{r['n'] / x['time']:,.0f} | {x['peak_extra'] / r['grad_bytes']:.2f} | "
                         f"{sp} |")
    lines += ["", "| V | fusechat GB/s (6V B/token) | numpy copy GB/s | ratio | vs reference "
              "(goal 5x) | vs eager (goal 2x) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['v']} | {r['bw'] / 1e9:.2f} | {r['copy_bw'] / 1e9:.2f} | "
                     f"{r['bw'] / r['copy_bw']:.0%} | {r['vs_ref']:.1f}x | {r['vs_eager']:.1f}x |")
    lines.append("")
    for v, g, reason in gpu_rows:
        if g is None:
            lines.append(f"GPU, V = {v}: not measured ({reason}).")
        else:
            lines.append(f"GPU ({g['device']}), V = {v}: {g['tok_s']:,.0f} tokens/s, "
                         f"{g['bw'] / 1e9:.0f} GB/s = {g['bw'] / g['copy_bw']:.0%} of a "
                         f"device-to-device copy (goal 80%), {g['eager_speedup']:.1f}x eager "
                         "sparse PyTorch (goal 3x).")
    return lines


def write_docs(lines, section=SECTION):
    """Replace ``section`` of docs/benchmarks.md by ``lines`` (appended when absent)."""
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    start = text.find(section)
    block = "\n".join(lines) + "\n"
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        nxt = text.find("\n## ", start + len(section))
        text = text[:start] + block + (text[nxt + 1:] if nxt >= 0 else "")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
