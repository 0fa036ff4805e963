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

GPU half (--gpu; benchmarks/gpu_check.sh runs it): fusechat's CUDA kernel (with device-side
validation, without, and strict) against a device-to-device copy of the logits (bandwidth by
the same 6V model, goal >= 80% of the copy's), eager sparse PyTorch, torch's cross_entropy
and Liger-Kernel's fused cross-entropy where installed (both gold-label CE only: neither has
a sparse target), with peak GPU memory; V = 32000, 128256, 151936, N = 8192.

    python benchmarks/bench_loss.py --quick          # small, for checking
    flock /tmp/fusechat-bench.lock python benchmarks/bench_loss.py --write-docs
    python benchmarks/bench_loss.py --gpu --out gpu_loss.md [--write-docs]
    python benchmarks/bench_loss.py --docs-from gpu_loss.md   # back here: into the docs
"""
import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from _common import machine, write_section  # noqa: E402

K = 10
LM_WEIGHT = 0.9
SECTION = "## Sparse fusion loss (bench_loss.py)"


def make_inputs(n, v, seed=0, device="cpu"):
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    # drawn in bf16 directly: no freed float32 temporary to hide later allocations in RSS
    logits = torch.randn(n, v, generator=g, dtype=torch.bfloat16, device=device).mul_(2)
    labels = torch.randint(0, v, (n,), generator=g, device=device)
    labels[: n // 10] = -100  # prompt tokens
    if device == "cpu":
        ids = torch.stack([torch.randperm(v, generator=g)[:K] for _ in range(n)])
    else:  # K distinct ids per row without a loop over rows
        ids = torch.rand(n, v, generator=g, device=device).topk(K, dim=-1).indices
    vals = torch.randn(n, K, generator=g, device=device)
    return logits, labels, ids.to(torch.int32), vals


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


GPU_SECTION = "## Sparse fusion loss on the GPU (bench_loss.py --gpu)"


def liger_cross_entropy():
    """Liger-Kernel's fused cross-entropy (gold labels only: it has no sparse target), or None
    with the reason when it is not installed."""
    try:
        from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss
    except Exception as exc:  # noqa: BLE001 - ImportError, or its Triton failing to load
        return None, f"Liger-Kernel not available ({type(exc).__name__}: {exc})"
    return LigerCrossEntropyLoss(ignore_index=-100), ""


def gpu_methods(logits, labels, ids, vals):
    """name -> (fn, bytes moved per call by the 6V model or None), run on the GPU."""
    import torch.nn.functional as F
    from fusechat.torch import fusion_loss

    n, v = logits.shape

    def ours(**kw):
        def fn():
            z = logits.detach().requires_grad_()
            fusion_loss(z, labels, ids, vals, lm_weight=LM_WEIGHT, **kw).backward()
        return fn

    def torch_ce():
        z = logits.detach().requires_grad_()
        F.cross_entropy(z, labels, ignore_index=-100).backward()

    model = 6 * v * n
    methods = {
        "fusechat (validate on device, default)": (ours(), model),
        "fusechat validate=False": (ours(validate=False), model),
        "fusechat validate='strict' (host sync)": (ours(validate="strict"), model),
        "eager sparse PyTorch": (lambda: run_eager(logits, labels, ids, vals), None),
        "torch F.cross_entropy (gold only)": (torch_ce, None),
    }
    liger, _ = liger_cross_entropy()
    if liger is not None:
        own = logits.clone()  # Liger writes its gradient over its input: its own copy (the
        # values it then sees are gradients, but its work does not depend on them)

        def liger_ce():
            liger(own.detach().requires_grad_(), labels).backward()
        methods["Liger-Kernel CE (gold only)"] = (liger_ce, None)
    methods["device-to-device copy of the logits"] = (lambda: logits.clone(), None)
    return methods


def gpu_bench(vocabs, n, repeats):
    """Rows of (V, N, method, median s, peak extra bytes, bytes model) on the GPU, or (None,
    reason) when there is none."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    import fusechat

    ok, reason = fusechat.cuda_available(with_reason=True)
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA device"
    if not ok:
        return None, reason

    def timed(fn):
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        times.sort()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return times[len(times) // 2], torch.cuda.max_memory_allocated() - base

    from fusechat.torch import fusion_loss

    rows = []
    for v in vocabs:
        # validation before timing: fusechat's loss and gradient against eager PyTorch's
        small = make_inputs(64, v, seed=1, device="cuda")
        want, want_grad = run_eager(*small)
        z = small[0].detach().requires_grad_()
        got = fusion_loss(z, *small[1:], lm_weight=LM_WEIGHT)
        got.backward()
        err = (z.grad.float() - want_grad.float()).abs().max().item()
        if abs(got.item() - want) > 1e-3 * abs(want) or \
                err > 2e-2 * want_grad.float().abs().max().item():
            sys.exit(f"bench_loss --gpu: V = {v}: fusechat loss {got.item()} / gradient differ "
                     f"from eager PyTorch ({want}, max grad error {err})")
        logits, labels, ids, vals = make_inputs(n, v, device="cuda")
        for name, (fn, model) in gpu_methods(logits, labels, ids, vals).items():
            t, peak = timed(fn)
            rows.append(dict(v=v, n=n, method=name, t=t, peak=peak, model=model))
        del logits, labels, ids, vals
        torch.cuda.empty_cache()
    return rows, ""


def gpu_device():
    import torch

    p = torch.cuda.get_device_properties(0)
    return (f"{p.name} ({p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs), "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}")


def gpu_report(rows, reason, repeats, device=""):
    date = datetime.date.today().isoformat()
    lines = [GPU_SECTION, ""]
    if rows is None:
        return lines + [f"Not measured: {reason}."]
    _, liger_reason = liger_cross_entropy()
    lines += [f"Device: {device}; {date}. bf16 logits [N, V], K = {K}, lm_weight "
              f"{LM_WEIGHT}, forward + backward, median of {repeats} after 2 warm-ups (CUDA "
              "events). GB/s by the 6V-bytes-per-token model (2 reads + 1 write of a bf16 row); "
              "the copy's GB/s counts its bytes read and written. Peak = growth of "
              "torch.cuda.max_memory_allocated over the inputs, in units of one [N, V] bf16 "
              "gradient." + (f" {liger_reason}." if liger_reason else ""), "",
              "| V | N | method | time (ms) | tokens/s | GB/s | % of copy (goal 80%) | "
              "peak (x grad) | fusechat speedup |", "|---|---|---|---|---|---|---|---|---|"]
    for v in sorted({r["v"] for r in rows}, key=lambda x: [r["v"] for r in rows].index(x)):
        group = [r for r in rows if r["v"] == v]
        copy = next(r for r in group if r["method"].startswith("device-to-device"))
        copy_bw = 2 * 2 * copy["n"] * v / copy["t"]
        ours = group[0]["t"]
        for r in group:
            is_copy = r is copy
            bw = copy_bw if is_copy else (r["model"] / r["t"] if r["model"] else None)
            pct = f"{bw / copy_bw:.0%}" if bw and not is_copy else ""
            sp = "" if r["method"].startswith(("fusechat", "device")) else \
                f"{r['t'] / ours:.2f}x"
            lines.append(f"| {v} | {r['n']} | {r['method']} | {r['t'] * 1e3:.3f} | "
                         f"{r['n'] / r['t']:,.0f} | {f'{bw / 1e9:.0f}' if bw else ''} | {pct} | "
                         f"{r['peak'] / (2 * r['n'] * v):.2f} | {sp} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 repeats")
    ap.add_argument("--tokens", type=int, help="rows N (default 2048 / 512 quick)")
    ap.add_argument("--vocab", type=int, nargs="*", default=[32000, 151936])
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--write-docs", action="store_true",
                    help="replace this benchmark's section of docs/benchmarks.md")
    ap.add_argument("--gpu", action="store_true",
                    help="only the GPU half: fusechat against a device-to-device copy, eager "
                         "PyTorch and Liger-Kernel (its own section of docs/benchmarks.md)")
    ap.add_argument("--out", help="also write the GPU table (Markdown) to this file")
    ap.add_argument("--docs-from", metavar="FILE",
                    help="put a table written by --gpu --out (on a GPU machine) into "
                         "docs/benchmarks.md, and exit")
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "N", "V"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    if args.worker:
        method, n, v = args.worker
        worker(method, int(n), int(v), repeats, args.threads)
        return
    if args.docs_from:
        text = open(args.docs_from, encoding="utf-8").read()
        if not text.startswith(GPU_SECTION):
            sys.exit(f"bench_loss: {args.docs_from} is not a table from --gpu --out")
        write_section(text)
        return
    if args.gpu:
        vocabs = args.vocab if args.vocab != [32000, 151936] else [32000, 128256, 151936]
        n = args.tokens or (1024 if args.quick else 8192)
        rows, reason = gpu_bench(vocabs, n, args.repeats or (3 if args.quick else 20))
        lines = gpu_report(rows, reason, args.repeats or (3 if args.quick else 20),
                           gpu_device() if rows is not None else "")
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text)
        if args.write_docs and rows is not None:
            write_section(text)
        return
    n_default = 512 if args.quick else 2048
    rows = []
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
    lines = report(rows, args, repeats)
    print("\n".join(lines))
    if args.write_docs:
        write_section("\n".join(lines) + "\n")


def report(rows, args, repeats):
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
    lines += ["", "GPU: `bench_loss.py --gpu` (its own section of this file; `make gpu-check` "
              "runs it)."]
    return lines


if __name__ == "__main__":
    main()
