"""Benchmark part: the align and fuse stages, time per 1k conversations (bench_pipeline.py
includes it; it also runs alone).

Synthetic 8-turn chat conversations tokenized by two different tiny tokenizers (pivot:
Metaspace BPE, source: byte-level BPE), TopK stores with K = 10 random lists written for both;
then ``align_stores`` (DTW and offsets, MS map: counts pass + distribution pass) and
``fuse_stores`` (MinCE and AvgCE) are timed end to end, store I/O included. Anchor: the
Python twin of the reference's alignment (tests/reference/align_ref.py: DTW, then the
distribution rules, per conversation) on a subset of the same conversations.

    python benchmarks/pipeline_stages.py --quick
    flock /tmp/fusechat-bench.lock python benchmarks/pipeline_stages.py --write-docs
"""
import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from _common import long_records, machine, write_section  # noqa: E402

SUBSECTION = "### Align and fuse stages (pipeline_stages.py)"
K = 10


def write_store(path, tok, records, seed):
    from fusechat.stages.chat import load_conversations, tokenize
    from fusechat.stages.store import TopKStoreWriter
    from fusechat.vocab import Vocab

    rng = np.random.default_rng(seed)
    convs, _ = load_conversations(records)
    v = len(tok)
    n_tokens = 0
    with TopKStoreWriter(path, k=K, kind="extracted", model=f"m{seed}",
                         tokenizer_fingerprint=Vocab.from_tokenizer(tok).fingerprint,
                         vocab_size=v) as w:
        for c in convs:
            t = tokenize(c, tok)
            n = len(t.input_ids)
            ids = np.argsort(rng.random((n, v)), axis=1)[:, :K].astype(np.int32)
            ids[:-1, 0] = t.input_ids[1:]  # the true next token on top, mostly distinct
            logits = -np.sort(-rng.normal(0, 3, (n, K)), axis=1)
            sup = np.append(t.loss_mask[1:] > 0, False)
            ce = np.where(sup, rng.gamma(2.0, 1.0, n), 0).astype(np.float32)
            w.add(c.index, t.input_ids, t.loss_mask, ids, logits, ce, ce[sup].mean())
            n_tokens += n
    return n_tokens


def twin_seconds(piv_path, src_path, piv_tok, src_tok, n):
    """The reference's alignment in Python (the twin) on the first n conversations."""
    from fusechat import align as al
    from fusechat.stages.store import TopKStore
    from fusechat.vocab import Vocab
    from reference import align_ref as R

    pv, sv = Vocab.from_tokenizer(piv_tok), Vocab.from_tokenizer(src_tok)
    pdec = [piv_tok.backend_tokenizer.decode([i], skip_special_tokens=False)
            for i in range(len(piv_tok))]
    sdec = [src_tok.backend_tokenizer.decode([i], skip_special_tokens=False)
            for i in range(len(src_tok))]
    piv, src = TopKStore(piv_path), TopKStore(src_path)
    eff = list(range(len(src_tok)))  # any map: the rules' cost does not depend on it
    vmap = al.vocab_map(sv, pv, "mined")
    t0 = time.perf_counter()
    for i in range(n):
        p, s = piv[i], src[i]
        pl, sl = p.input_ids.tolist(), s.input_ids.tolist()
        j = R.dtw([sdec[x] for x in sl], [pdec[x] for x in pl], sv.marker, pv.marker)
        R.align_distributions(pl, sl, j, s.topk_ids.tolist(), s.topk_logits.tolist(), pdec,
                              sdec, sv.marker, pv.marker, [min(e, len(pv) - 1) for e in eff],
                              vmap.tolist(), "ms", True)
    return time.perf_counter() - t0


def measure_align_fuse(quick):
    """Seconds of each stage over n conversations, plus the twin's seconds on a subset."""
    from fusechat.demo.models import train_tokenizer
    from fusechat.stages.align import align_stores
    from fusechat.stages.fuse import fuse_stores

    n = 100 if quick else 1000
    n_twin = 3 if quick else 10
    piv_tok, src_tok = train_tokenizer("metaspace", seed=0), train_tokenizer("byte_level", seed=1)
    records = long_records(n, seed=2)
    work = tempfile.mkdtemp(prefix="fusechat-bench-stages-")
    res = {"n": n}
    try:
        piv, src = os.path.join(work, "piv"), os.path.join(work, "src")
        res["pivot_tokens"] = write_store(piv, piv_tok, records, 1)
        res["source_tokens"] = write_store(src, src_tok, records, 2)
        kw = dict(pivot_tokenizer=piv_tok, source_tokenizer=src_tok, quiet=True)
        for method in ("dtw", "offsets"):
            out = os.path.join(work, f"al-{method}")
            t = time.perf_counter()
            align_stores(piv, src, out, method=method, map="ms", **kw)
            res[f"align {method}"] = time.perf_counter() - t
            t = time.perf_counter()  # the counts are reused: the distribution pass alone
            align_stores(piv, src, out + "-again", method=method, map="ms",
                         counts_path=out + ".counts.npz", **kw)
            res[f"align {method} (counts reused)"] = time.perf_counter() - t
        aligned = os.path.join(work, "al-dtw")
        for rule in ("mince", "avgce"):
            t = time.perf_counter()
            fuse_stores(piv, [aligned], os.path.join(work, f"fused-{rule}"), rule=rule,
                        quiet=True)
            res[f"fuse {rule}"] = time.perf_counter() - t
        res["twin"] = twin_seconds(piv, src, piv_tok, src_tok, n_twin) / n_twin * n
        res["n_twin"] = n_twin
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def align_fuse_lines(res):
    n = res["n"]
    per_k = 1000 / n
    rows = [(name, res[name]) for name in ("align dtw", "align dtw (counts reused)",
                                           "align offsets", "align offsets (counts reused)",
                                           "fuse mince", "fuse avgce")]
    lines = [SUBSECTION, "",
             f"{n} synthetic 8-turn conversations, {res['pivot_tokens'] / n:.0f} pivot tokens "
             f"(Metaspace BPE) and {res['source_tokens'] / n:.0f} source tokens (byte-level "
             f"BPE) per conversation, K = {K}, MS map, all cores, store I/O included. Anchor: "
             f"the reference's alignment as the Python twin (DTW + distribution rules, timed on "
             f"{res['n_twin']} conversations, scaled).", "",
             "| stage | s per 1k conversations | us per pivot token | vs Python twin of the "
             "reference |", "|---|---:|---:|---:|"]
    twin = res["twin"] * per_k
    lines.append(f"| Python twin: DTW + distribution rules (one pass) | {twin:.1f} | "
                 f"{res['twin'] / res['pivot_tokens'] * 1e6:.1f} | 1x |")
    for name, sec in rows:
        ratio = f"{twin / (sec * per_k):,.0f}x faster" if name.startswith("align") else ""
        lines.append(f"| {name} | {sec * per_k:.2f} | {sec / res['pivot_tokens'] * 1e6:.2f} | "
                     f"{ratio} |")
    lines.append("")
    lines.append("'align' runs the counts pass (alignment + co-alignment counts), the MS map "
                 "and the distribution pass (alignment kept from the counts pass when the "
                 "corpus is small); '(counts reused)' finds the counts file and only aligns "
                 "and maps distributions. The twin does less work than 'align' (no counts, no "
                 "map), so the ratio understates the gain.")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 conversations instead of 1000")
    ap.add_argument("--write-docs", action="store_true",
                    help="replace this part of docs/benchmarks.md's Pipeline section")
    args = ap.parse_args()
    res = measure_align_fuse(args.quick)
    lines = align_fuse_lines(res)
    lines.insert(2, f"Machine: {machine()}; {datetime.date.today().isoformat()}"
                 + (" (--quick)" if args.quick else "") + ".\n")
    print("\n".join(lines))
    if args.write_docs:
        write_section("\n".join(lines) + "\n", parent="## Pipeline (bench_pipeline.py)")


if __name__ == "__main__":
    main()
