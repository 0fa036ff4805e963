"""Benchmark of stage-1 token alignment (issue 4), side by side in one run:

1. DTW in C vs the pure-Python twin of the reference (tests/reference/align_ref.py) on
   identical chat-like inputs, outputs checked identical - goal >= 1000x.
2. Offsets alignment throughput, tokens per second per core.
3. The MinED map between a ~150k byte-level BPE (trained here with `tokenizers`, Qwen-like
   source) and the 32k Mistral SentencePiece vocabulary (pivot) on 2 threads - goal < 5 min.
4. An estimate, from the measured throughputs, of aligning a FuseChat-Mixture-sized corpus
   (95k conversations) against the reference's cost (padded 2048 x 2048 DTW, twice per sample).
5. The byte projection (issue 13): pivot tokens per second per core beside the rules path's
   distribution pass on the same rows; the DTW against an oracle in the reference's own style
   (a Python double loop calling `editdistance` per cell), per cell and per call on short
   rows; and the oracle-source fidelity (top-1 = the pivot's true next token) of the bytes
   and rules paths on the demo's tokenizers and on Mistral's.

Usage: python benchmarks/bench_align.py [--quick] [--no-write] [--only-projection]
The full run writes its table into docs/benchmarks.md under "## Token alignment", part 5 as
its subsection "### Projection"; ``--only-projection`` runs (and writes) part 5 alone.
Large temporary files go to /tmp/fusechat-bench-align (kept as a cache of the trained
tokenizer; delete it when done).
"""
import argparse
import datetime
import glob
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from _common import machine, write_section  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "tests"))

import align_fixtures as F  # noqa: E402
import editdistance  # noqa: E402
from reference import align_ref as R  # noqa: E402

from fusechat import Vocab, align  # noqa: E402

CACHE = "/tmp/fusechat-bench-align"
REF_L = 2048          # the reference pads every sequence to 2048 tokens ...
REF_PASSES = 2        # ... and runs the DTW in the token pass and again in the distribution pass
CORPUS_ROWS = 95_000  # FuseChat-Mixture


def big_bpe(vocab_size, text_bytes):
    """A byte-level BPE of ~vocab_size trained on installed Python sources (cached)."""
    folder = os.path.join(CACHE, f"bpe-{vocab_size}")
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return folder
    site = os.path.dirname(F.package_dir("numpy"))
    files = sorted(glob.glob(os.path.join(site, "**", "*.py"), recursive=True))

    def texts():
        n = 0
        for path in files:
            try:
                with open(path, encoding="utf-8") as f:
                    t = f.read()
            except (OSError, UnicodeDecodeError):
                continue
            n += len(t)
            yield t
            if n > text_bytes:
                return
        yield from F.corpus()

    t0 = time.perf_counter()
    tok = F.train_bytelevel(texts(), vocab_size)
    print(f"  trained a byte-level BPE of {tok.get_vocab_size()} tokens in "
          f"{time.perf_counter() - t0:.0f} s")
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        f.write('{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}')
    return folder


def chats(n_rows, turns, rng):
    """openchat_3.5-style conversations built from installed packages' documentation."""
    docs = [d for d in F.corpus()[len(F.MULTILINGUAL) * 20:] if len(d) > 400]
    paras = [p.strip() for d in docs for p in d.split("\n\n") if 40 < len(p.strip()) < 1500
             # no special-token literals, no literal U+2581 (SentencePiece reads it as a space)
             and not any(t in p for t in ("<s>", "</s>", "<unk>", "<|", "\u2581"))]
    paras += F.MULTILINGUAL
    rows = []
    for _ in range(n_rows):
        msgs = []
        for t in range(turns):
            role = "GPT4 Correct User: " if t % 2 == 0 else "GPT4 Correct Assistant: "
            msgs.append(role + paras[int(rng.integers(len(paras)))])
        rows.append(msgs)
    return rows


def encode_chat(tok, msgs, sep_id, bos_id=None):
    """Each message encoded separately, joined by the model's own end-of-turn token."""
    ids = [bos_id] if bos_id is not None else []
    for m in msgs:
        ids += tok.encode(m, add_special_tokens=False).ids + [sep_id]
    return ids


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for checking")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--only-projection", action="store_true",
                    help="run (and write) part 5 only")
    args = ap.parse_args()
    import tokenizers

    os.makedirs(CACHE, exist_ok=True)
    if args.only_projection:
        res = projection_part(args.quick, projection_sources(args.quick))
        if not args.quick and not args.no_write:
            write_projection_doc(res)
        return
    rng = np.random.default_rng(0)
    big_vocab, big_text = (8000, 5_000_000) if args.quick else (150_000, 60_000_000)
    twin_rows, twin_len = (3, 96) if args.quick else (4, 1024)
    n_rows, turns = (40, 4) if args.quick else (400, 8)

    print("machine:", machine())
    pivot_dir = F.mistral()
    src_dir = big_bpe(big_vocab, big_text)
    pv, sv = Vocab.from_pretrained(pivot_dir), Vocab.from_pretrained(src_dir)
    ptok = tokenizers.Tokenizer.from_file(os.path.join(pivot_dir, "tokenizer.json"))
    stok = tokenizers.Tokenizer.from_file(os.path.join(src_dir, "tokenizer.json"))
    print(f"pivot: Mistral SentencePiece, {len(pv)} tokens; source: byte-level BPE, {len(sv)} tokens")

    rows = chats(n_rows, turns, rng)
    # token ids as int64 arrays, as a TopK store holds them (the twin gets Python lists)
    piv = [np.asarray(encode_chat(ptok, r, pv.roles["eos"], pv.roles["bos"]), dtype=np.int64)
           for r in rows]
    src = [np.asarray(encode_chat(stok, r, sv.find("<|im_end|>")), dtype=np.int64)
           for r in rows]
    mean_n = float(np.mean([len(s) for s in src]))
    mean_m = float(np.mean([len(p) for p in piv]))
    print(f"{n_rows} chat rows, mean length source {mean_n:.0f}, pivot {mean_m:.0f} tokens")
    results = {}

    # 1. DTW: C vs the Python twin, identical inputs and outputs
    sdec = [sv.decoded(i) for i in range(len(sv))]
    pdec = [pv.decoded(i) for i in range(len(pv))]
    twin_s, c_s, cells = 0.0, 0.0, 0
    for s, p in zip(src[:twin_rows], piv[:twin_rows]):
        s, p = s[:twin_len], p[:twin_len]
        sl, pl = s.tolist(), p.tolist()
        t, want = timed(lambda: R.dtw([sdec[i] for i in sl], [pdec[i] for i in pl], sv.marker,
                                      pv.marker))
        twin_s += t
        t, got = timed(lambda: align.align(s, p, sv, pv, method="dtw"), repeat=5)
        c_s += t
        cells += len(s) * len(p)
        assert got.lists() == want, "C DTW differs from the twin"
    results["twin_ns_cell"] = twin_s / cells * 1e9
    results["c_ns_cell_short"] = c_s / cells * 1e9
    results["dtw_ratio"] = twin_s / c_s
    print(f"DTW on {twin_rows} pairs of <= {twin_len} tokens, outputs identical: Python twin "
          f"{results['twin_ns_cell']:.0f} ns/cell, C {results['c_ns_cell_short']:.2f} ns/cell "
          f"-> {results['dtw_ratio']:.0f}x")

    # DTW at full length, one thread (best of 3 per row, as above: a shared machine preempts
    # a long loop) and the batch on all cores
    t = sum(timed(lambda: align.align(s, p, sv, pv), repeat=3)[0] for s, p in zip(src, piv))
    full_cells = sum(len(s) * len(p) for s, p in zip(src, piv))
    results["c_ns_cell"] = t / full_cells * 1e9
    results["dtw_row_s"] = t / n_rows
    tb, _ = timed(lambda: align.align_batch(src, piv, sv, pv, progress=False))
    results["dtw_batch_row_s"] = tb / n_rows
    print(f"DTW full rows: {results['c_ns_cell']:.2f} ns/cell, {results['dtw_row_s'] * 1e3:.1f} "
          f"ms/row on 1 thread, {results['dtw_batch_row_s'] * 1e3:.1f} ms/row align_batch "
          f"({os.cpu_count()} threads)")

    # 2. offsets throughput
    t, als = timed(lambda: [align.align(s, p, sv, pv, method="offsets", fallback="dtw")
                            for s, p in zip(src, piv)], repeat=3)
    toks = sum(len(s) + len(p) for s, p in zip(src, piv))
    results["offsets_tok_s"] = toks / t
    results["offsets_vs_dtw"] = results["dtw_row_s"] * n_rows / t
    print(f"offsets: {results['offsets_tok_s'] / 1e6:.2f} M tokens/s/core "
          f"({results['offsets_vs_dtw']:.0f}x the C DTW)")

    # 3. MinED map, 2 threads
    t, m = timed(lambda: align.vocab_map(sv, pv, "mined", threads=2))
    results["mined_s"] = t
    results["mined_exact"] = float(np.mean(align.vocab_map(sv, pv, "em", roles="none") >= 0))
    print(f"MinED map {len(sv)} -> {len(pv)} on 2 threads: {t:.1f} s "
          f"({results['mined_exact'] * 100:.0f}% exact matches)")

    # 4. corpus estimate
    ref_row = REF_PASSES * REF_L * REF_L * results["twin_ns_cell"] * 1e-9
    ours_row = results["dtw_row_s"]
    results["ref_core_h"] = ref_row * CORPUS_ROWS / 3600
    results["ours_core_min"] = ours_row * CORPUS_ROWS / 60
    results["offsets_core_s"] = (mean_n + mean_m) * CORPUS_ROWS / results["offsets_tok_s"]
    print(f"95k rows: reference ~{results['ref_core_h']:.0f} core-hours (2 x 2048^2 cells per "
          f"row in Python), fusechat DTW {results['ours_core_min']:.1f} core-minutes "
          f"({ref_row / ours_row:.0f}x), offsets {results['offsets_core_s']:.1f} core-seconds")
    results.update(mean_n=mean_n, mean_m=mean_m, vs=len(sv), vp=len(pv), rows=n_rows, turns=turns,
                   twin_rows=twin_rows, twin_len=twin_len, ref_vs_ours=ref_row / ours_row)
    if not args.quick and not args.no_write:
        write_doc(results)
    res = projection_part(args.quick, projection_sources(args.quick))
    if not args.quick and not args.no_write:
        write_projection_doc(res)


def write_doc(r):
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    verdict = ("The 1000x goal for DTW on identical inputs is met." if r["dtw_ratio"] >= 1000 else
               f"The 1000x goal for DTW on identical inputs is **not** met ({r['dtw_ratio']:.0f}x).")
    title = "## Token alignment (benchmarks/bench_align.py)"
    body = f"""{title}

Machine: {machine()}; {datetime.date.today().isoformat()}; measured while other jobs shared
the machine, so absolute times are pessimistic; ratios are measured side by side in one run.
Pivot: Mistral's 32k SentencePiece model ({r['vp']} ids, from mistral-common); source: a
byte-level BPE of {r['vs']} tokens trained with `tokenizers` (Qwen-like). Inputs: {r['rows']}
openchat_3.5-style {r['turns']}-turn conversations (mean {r['mean_n']:.0f} source / {r['mean_m']:.0f}
pivot tokens), unpadded.

| measurement | result | goal |
|---|---|---|
| DTW, Python twin of the reference | {r['twin_ns_cell']:.0f} ns/cell | |
| DTW, fusechat C, same {r['twin_rows']} inputs (<= {r['twin_len']} tokens), outputs identical | {r['c_ns_cell_short']:.2f} ns/cell | |
| **DTW speed-up, identical inputs** | **{r['dtw_ratio']:.0f}x** | >= 1000x |
| DTW, fusechat C, full rows, 1 thread, best of 3 per row | {r['c_ns_cell']:.2f} ns/cell, {r['dtw_row_s'] * 1e3:.1f} ms/row | |
| DTW, `align_batch`, all cores | {r['dtw_batch_row_s'] * 1e3:.1f} ms/row | |
| offsets alignment | {r['offsets_tok_s'] / 1e6:.2f} M tokens/s/core ({r['offsets_vs_dtw']:.0f}x the C DTW) | |
| MinED map {r['vs']} -> {r['vp']}, 2 threads | {r['mined_s']:.1f} s ({r['mined_exact'] * 100:.0f}% exact) | < 300 s |
| 95k conversations, reference (2 x 2048^2 cells/row, Python) | ~{r['ref_core_h']:.0f} core-hours | |
| 95k conversations, fusechat DTW (unpadded, once) | {r['ours_core_min']:.1f} core-minutes ({r['ref_vs_ours']:.0f}x less) | |
| 95k conversations, fusechat offsets | {r['offsets_core_s']:.1f} core-seconds | |

The corpus estimate multiplies the measured per-cell cost of the Python twin by the
reference's padded grids (2048 x 2048, computed in the token pass and again in the
distribution pass) and our measured per-row time by 95k rows of the benchmark's mean length.

{verdict} The C DTW computes each DP row 8 cells per SSE2 vector in 16-bit
lanes (32-bit past 2^15): the row's serial chain D[j] = min(t[j], D[j-1] + c[j]) becomes a
prefix-min scan inside each vector, and the moves are kept at 2 bits per cell. The costs of
the distinct token pairs come from Myers' bit-parallel edit distance with 16 pivot strings
of <= 8 code points (8 of <= 16) per 128-bit vector, two vectors side by side. On these rows
about half the time is the DP, 30% the edit distances, the rest bookkeeping (distinct ids,
allocations, backtrack) and the call from Python. The `align_batch` figure is one pass
over all rows on both cores, so it suffers most from the other jobs on the machine. The previous scalar version (two interleaved
serial rows, one byte per move, 8 pairs per 64-bit word) measured 3.95 ns/cell (511x) on
this machine. Exact pruning does not help here: with the optimum itself as the bound,
70-80% of the cells of real rows stay below it (measured on 300 x 300 rows). The Python
twin's cost per cell varies with the machine's load (1.1-3 us/cell in our runs), so the
ratio moves with it; the corpus-level gain comes mostly from not padding and not aligning
twice.
"""
    write_section(body, path)
    print("wrote", path)


# --------------------------------------------------------------------------------------
# 5. the byte projection

def reference_style_dtw(src_strings, piv_strings, sm, pm):
    """The reference's DTW as its code runs it: a Python double loop over the cells calling
    `editdistance.eval` on the marker-stripped strings, min of three predecessors; the same
    backtrack (diag, left, up). Returns what R.dtw returns."""
    n, m = len(src_strings), len(piv_strings)
    a_strip = [a.replace(sm, "") for a in src_strings]
    a_repl = [a.replace(sm, pm) for a in src_strings]
    b_strip = [b.replace(pm, "") for b in piv_strings]
    inf = float("inf")
    D = [[inf] * (m + 1) for _ in range(n + 1)]
    D[0][0] = 0
    ev = editdistance.eval
    for i in range(1, n + 1):
        ai, ar, prev, row = a_strip[i - 1], a_repl[i - 1], D[i - 1], D[i]
        for j in range(1, m + 1):
            bj = b_strip[j - 1]
            c = ev(ai, bj) if ai and bj else ev(ar, piv_strings[j - 1])
            row[j] = c + min(prev[j], row[j - 1], prev[j - 1])
    i, j = n - 1, m - 1
    out = [[] for _ in range(m)]
    while i > 0 or j > 0:
        out[j].append(i)
        diag = D[i][j] if i > 0 and j > 0 else inf
        left = D[i + 1][j] if j > 0 else inf
        up = D[i][j + 1] if i > 0 else inf
        best = min(diag, left, up)
        if diag == best:
            i, j = i - 1, j - 1
        elif left == best:
            j -= 1
        else:
            i -= 1
    out[0].append(0)
    return [sorted(x) for x in out]


def oracle_topk(src_ids, V, rng, k=10):
    """logit 10 on the true next token, 0 on nine random others and the rest of the
    vocabulary: (ids, logits, absolute log-probs, true log-probs)."""
    n = len(src_ids)
    lse = np.log(np.exp(10.0) + V - 1)
    ids = rng.integers(0, V, (n, k)).astype(np.int64)
    ids[:-1, 0] = src_ids[1:]
    ids[-1, 0] = src_ids[-1]
    logits = np.zeros((n, k), np.float32)
    logits[:, 0] = 10
    return ids, logits, (logits - lse).astype(np.float32), np.full(n, 10 - lse, np.float32)


def frequent_topk(src_ids, freq, rng, k=10):
    """Like oracle_topk, but the nine others drawn by frequency (``freq``: a probability per
    source id, from the corpus) with falling logits 5, 4.5, ..., 1: what a model's top-K
    looks like (plausible, frequent tokens in descending order), where oracle_topk's uniform
    draws over the whole vocabulary are the worst case for caches."""
    n = len(src_ids)
    ids = rng.choice(len(freq), size=(n, k), p=freq).astype(np.int64)
    ids[:-1, 0] = src_ids[1:]
    ids[-1, 0] = src_ids[-1]
    logits = np.tile(np.float32([10] + [5 - 0.5 * r for r in range(k - 1)]), (n, 1))
    lse = np.log(np.exp(logits.astype(np.float64)).sum(1, keepdims=True) + 1000)
    lps = (logits - lse).astype(np.float32)
    return ids, logits, lps, lps[:, 0].copy()


def fidelity_pair(name, src, piv, masks, sv, pv, rng):
    """Top-1 = the pivot's true next token at supervised positions, for the oracle source:
    bytes (projection) and rules (DTW + MS map from counts over these rows + the reference's
    rules)."""
    tops = [oracle_topk(s, len(sv), rng) for s in src]
    proj = align.project_batch(src, piv, [t[0] for t in tops], [t[2] for t in tops], sv, pv,
                               src_true_logprobs=[t[3] for t in tops], details=True,
                               progress=False)
    fb = align.projection_fidelity(list(zip(proj, piv)), masks)
    als = align.align_batch(src, piv, sv, pv, method="dtw", progress=False)
    counts = align.AlignmentCounts(len(pv), len(sv))
    counts.update(src, piv, als)
    vmap = align.vocab_map(sv, pv, "ms", counts=counts)
    dists = align.align_distributions_batch([t[0] for t in tops], [t[1] for t in tops], piv, src,
                                            als, vmap, sv, pv, mode="ms", progress=False)
    n = ok = onehot = 0
    first = {"n": 0, "bytes": 0, "rules": 0, "rules_onehot": 0}

    def top1(d, j):
        a, b = d.offsets[j], d.offsets[j + 1]
        return int(d.ids[a]) if b > a else -1

    def is_onehot(d, j, want):
        a, b = d.offsets[j], d.offsets[j + 1]
        return bool(b - a == 1 and d.logits[a] == 1.0 and d.ids[a] == want)

    for d, pr, p, mask in zip(dists, proj, piv, masks):
        sup = [j for j in range(len(p) - 1) if mask[j + 1]]
        for j in sup:
            n += 1
            ok += top1(d, j) == p[j + 1]
            onehot += is_onehot(d, j, p[j + 1])
        # the first answer token: the first supervised pivot token of the chat (the digit
        # or the city in the demo), predicted at the position before it
        if sup and not mask[sup[0]]:
            j = sup[0]
            first["n"] += 1
            first["bytes"] += top1(pr.dists, j) == p[j + 1]
            first["rules"] += top1(d, j) == p[j + 1]
            first["rules_onehot"] += is_onehot(d, j, p[j + 1])
    print(f"  {name}: {fb['n_supervised']} supervised positions, oracle top-1 correct: bytes "
          f"{100 * fb['top1_correct']:.1f}% (exact {100 * fb['exact']:.1f}%, prefix "
          f"{100 * fb['prefix']:.1f}%, fallback {100 * fb['fallback']:.1f}%), rules "
          f"{100 * ok / n:.1f}% ({100 * onehot / n:.1f}% as the gold one-hot)")
    if first["n"]:
        print(f"    first answer token ({first['n']} chats): top-1 correct bytes "
              f"{first['bytes']}/{first['n']}, rules {first['rules']}/{first['n']} (of which "
              f"{first['rules_onehot']} the gold one-hot, no source information)")
    return {"name": name, "n": n, "bytes": fb, "rules": ok / n, "rules_onehot": onehot / n,
            "first": first if first["n"] else None}


def fidelity_figures(quick):
    from test_align_project import NUMBERS, demo_chats, demo_tokenizer, digits_bpe

    import tokenizers

    rng = np.random.default_rng(1)
    out = []
    pt = demo_tokenizer("metaspace")
    pv = Vocab.from_tokenizer(pt)
    for kind in ("byte_level", "unigram"):
        st = demo_tokenizer(kind)
        sv = Vocab.from_tokenizer(st)
        n = 60 if quick else 300
        a, b = demo_chats(n, pt), demo_chats(n, st)
        out.append(fidelity_pair(f"demo: metaspace BPE pivot, {kind} source ({n} chats)",
                                 [np.asarray(x.input_ids, np.int64) for x in b],
                                 [np.asarray(x.input_ids, np.int64) for x in a],
                                 [x.loss_mask for x in a], sv, pv, rng))
    pdir = F.mistral()
    pv = Vocab.from_pretrained(pdir)
    ptok = tokenizers.Tokenizer.from_file(os.path.join(pdir, "tokenizer.json"))
    texts = NUMBERS + [t for t in F.sample_texts() if t.isascii()]
    for kind, folder in (("byte-level BPE, single digits", digits_bpe()),
                         ("Unigram", F.unigram())):
        sv = Vocab.from_pretrained(folder)
        stok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        piv = [np.asarray(ptok.encode(t).ids, np.int64) for t in texts]
        src = [np.asarray(stok.encode(t).ids, np.int64) for t in texts]
        out.append(fidelity_pair(f"Mistral pivot, {kind} source ({len(texts)} texts)", src, piv,
                                 [np.ones(len(p), np.uint8) for p in piv], sv, pv, rng))
    return out


def throughput(src_dir, pv, ptok, rows, rng):
    """Pivot tokens per second per core of the projection and of the rules' passes on the same
    rows, one thread: the source's tokenizer and vocabulary and the figures."""
    import tokenizers

    sv = Vocab.from_pretrained(src_dir)
    stok = tokenizers.Tokenizer.from_file(os.path.join(src_dir, "tokenizer.json"))
    piv = [np.asarray(encode_chat(ptok, r, pv.roles["eos"], pv.roles["bos"]), dtype=np.int64)
           for r in rows]
    src = [np.asarray(encode_chat(stok, r, sv.find("<|im_end|>")), dtype=np.int64)
           for r in rows]
    m_tokens = sum(len(p) for p in piv)
    res = {"vs": len(sv), "mean_m": m_tokens / len(rows)}
    freq = np.bincount(np.concatenate(src), minlength=len(sv)).astype(np.float64)
    freq /= freq.sum()
    vmap = align.vocab_map(sv, pv, "em")
    res["uniform"] = throughput_pass(src, piv, sv, pv, vmap, m_tokens,
                                     [oracle_topk(s, len(sv), rng) for s in src])
    res["frequent"] = throughput_pass(src, piv, sv, pv, vmap, m_tokens,
                                      [frequent_topk(s, freq, rng) for s in src])
    for kind in ("uniform", "frequent"):
        r = res[kind]
        print(f"  source of {len(sv)} tokens, {len(rows)} rows, mean {res['mean_m']:.0f} pivot "
              f"tokens, {kind} alternatives, 1 thread: projection {r['proj_tok_s'] / 1e6:.2f} M "
              f"pivot tokens/s, rules distribution pass {r['dist_tok_s'] / 1e6:.2f} M/s "
              f"({r['proj_vs_dist']:.2f}x), rules DTW + distributions "
              f"{r['rules_tok_s'] / 1e6:.3f} M/s ({r['proj_vs_rules']:.1f}x)")
    return sv, stok, res


def throughput_pass(src, piv, sv, pv, vmap, m_tokens, tops):
    """The three passes over the same rows and top-K, alternating; tokens per second."""
    # The corpus APIs, one thread, as the align stage runs them: each prepares its maps and
    # context once (the one-row align_distributions prepares the maps, O(V), on every call,
    # which is not what a corpus costs). The passes alternate, CPU time, best of 5: on a
    # shared machine the load moves, and alternating keeps the ratio side by side.
    ids, logits = [t[0] for t in tops], [t[1] for t in tops]
    lps, true = [t[2] for t in tops], [t[3] for t in tops]
    t_dtw = t_dist = t_proj = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        als = align.align_batch(src, piv, sv, pv, threads=1, progress=False)
        t1 = time.process_time()
        align.align_distributions_batch(ids, logits, piv, src, als, vmap, sv, pv, threads=1,
                                        progress=False)
        t2 = time.process_time()
        align.project_batch(src, piv, ids, lps, sv, pv, src_true_logprobs=true, threads=1,
                            progress=False)
        t3 = time.process_time()
        t_dtw, t_dist, t_proj = min(t_dtw, t1 - t0), min(t_dist, t2 - t1), min(t_proj, t3 - t2)
    res = {"proj_tok_s": m_tokens / t_proj, "dist_tok_s": m_tokens / t_dist,
           "rules_tok_s": m_tokens / (t_dist + t_dtw)}
    res["proj_vs_dist"] = res["proj_tok_s"] / res["dist_tok_s"]
    res["proj_vs_rules"] = res["proj_tok_s"] / res["rules_tok_s"]
    return res


def projection_sources(quick):
    """The sources part 5 is timed with: the one of parts 1-4 (150k tokens) and a 32k one."""
    if quick:
        return [big_bpe(8000, 2_000_000)]
    return [big_bpe(150_000, 60_000_000), big_bpe(32000, 10_000_000)]


def projection_part(quick, src_dirs):
    import tokenizers

    print("5. projection; machine:", machine())
    rng = np.random.default_rng(0)
    pivot_dir = F.mistral()
    pv = Vocab.from_pretrained(pivot_dir)
    ptok = tokenizers.Tokenizer.from_file(os.path.join(pivot_dir, "tokenizer.json"))
    n_rows, turns = (30, 4) if quick else (200, 8)
    rows = chats(n_rows, turns, rng)
    runs = [throughput(d, pv, ptok, rows, rng) for d in src_dirs]
    sv, stok, first = runs[0]
    res = {"rows": n_rows, "turns": turns, "vp": len(pv), **first,
           "throughput": [r for _, _, r in runs]}
    # DTW against an oracle in the reference's style (and the twin), identical outputs
    sdec = [sv.decoded(i) for i in range(len(sv))]
    pdec = [pv.decoded(i) for i in range(len(pv))]
    paras = [t for t in F.sample_texts()[len(F.MULTILINGUAL):]][:40]
    calls = [(np.asarray(stok.encode(t).ids, np.int64), np.asarray(ptok.encode(t).ids, np.int64))
             for t in paras]
    cells = sum(len(s) * len(p) for s, p in calls)
    t_or = t_tw = t_c = 0.0
    for s, p in calls[:10 if quick else 40]:
        a, b = [sdec[i] for i in s], [pdec[i] for i in p]
        t, want = timed(lambda: reference_style_dtw(a, b, sv.marker, pv.marker))
        t_or += t
        t, twin = timed(lambda: R.dtw(a, b, sv.marker, pv.marker))
        t_tw += t
        assert want == twin, "the reference-style DTW differs from the twin"
        t, got = timed(lambda: align.align(s, p, sv, pv), repeat=5)
        t_c += t
        assert got.lists() == want, "C DTW differs from the reference-style DTW"
    used = calls[:10 if quick else 40]
    cells = sum(len(s) * len(p) for s, p in used)
    res.update(n_calls=len(used), call_cells=cells / len(used),
               oracle_ns_cell=t_or / cells * 1e9, twin_ns_cell=t_tw / cells * 1e9,
               c_ns_cell=t_c / cells * 1e9, c_us_call=t_c / len(used) * 1e6,
               oracle_us_call=t_or / len(used) * 1e6)
    res["dtw_vs_oracle"] = t_or / t_c
    print(f"  DTW on {len(used)} paragraphs (mean {res['call_cells']:.0f} cells): reference "
          f"style (editdistance per cell) {res['oracle_ns_cell']:.0f} ns/cell, twin "
          f"{res['twin_ns_cell']:.0f} ns/cell, C {res['c_ns_cell']:.1f} ns/cell = "
          f"{res['c_us_call']:.1f} us/call ({res['dtw_vs_oracle']:.0f}x the reference style)")
    res["fidelity"] = fidelity_figures(quick)
    res["load"] = os.getloadavg()[0]
    return res


ALTERNATIVES = {"uniform": "uniform", "frequent": "by frequency"}


def write_projection_doc(r):
    rows = "\n".join(
        f"| {f['name']} | {f['n']} | **{100 * f['bytes']['top1_correct']:.1f}%** "
        f"({100 * f['bytes']['exact']:.1f} / {100 * f['bytes']['prefix']:.1f} / "
        f"{100 * f['bytes']['fallback']:.1f}) | {100 * f['rules']:.1f}% "
        f"({100 * f['rules_onehot']:.1f}% gold one-hot) |" for f in r["fidelity"])
    cases = [(t["vs"], kind, t[kind]) for t in r["throughput"] for kind in ALTERNATIVES]
    tput_rows = "\n".join(
        f"| {vs} | {ALTERNATIVES[kind]} | **{x['proj_tok_s'] / 1e6:.2f} M** | "
        f"{x['dist_tok_s'] / 1e6:.2f} M (projection {x['proj_vs_dist']:.2f}x) | "
        f"{x['rules_tok_s'] / 1e6:.3f} M (projection {x['proj_vs_rules']:.1f}x) |"
        for vs, kind, x in cases)
    met = [x["proj_vs_dist"] >= 1 for _, _, x in cases]
    verdict = ("met in every case" if all(met) else "**not** met" if not any(met) else
               "met with " + ", ".join(f"the {vs}-token source and {kind} alternatives"
                                       for (vs, kind, _), ok in zip(cases, met) if ok)
               + " and **not** met with "
               + ", ".join(f"the {vs}-token source and {kind} alternatives"
                           for (vs, kind, _), ok in zip(cases, met) if not ok))
    first_rows = "\n".join(
        f"| {f['name']} | {f['first']['n']} | **{f['first']['bytes']}** | {f['first']['rules']} "
        f"| {f['first']['rules_onehot']} |" for f in r["fidelity"] if f["first"])
    body = f"""### Projection (bench_align.py part 5)

Machine: {machine()}; load average {r['load']:.1f} (other jobs shared the machine: absolute
figures are pessimistic, ratios are side by side in one run); {datetime.date.today().isoformat()}. Pivot: Mistral's SentencePiece ({r['vp']} ids); source: a byte-level
BPE of {" / ".join(str(t["vs"]) for t in r["throughput"])} tokens; {r['rows']} openchat_3.5-style {r['turns']}-turn conversations (mean
{r['mean_m']:.0f} pivot tokens), an oracle-like top-10 per source position: the true next token
at logit 10 and nine alternatives, drawn either uniformly over the whole vocabulary (the worst
case for caches: every candidate's record is somewhere else in memory, and the nine tie) or by
the tokens' frequency in these rows with falling logits (what a model's top-K looks like:
plausible tokens, in order). Pivot tokens per second, one thread, the corpus functions as the
align stage calls them (maps and contexts prepared once per corpus); the three passes
alternate, CPU time, best of 5.

| source vocabulary | alternatives | byte projection (`align.project_batch`) | rules: distribution pass alone (`align_distributions_batch`, alignment given) | rules: DTW + distribution pass (`align_batch` + `align_distributions_batch`: what the rules path runs) |
|---|---|---|---|---|
{tput_rows}

The goal (no slower than the rules path's distribution pass) is
{verdict}. Per source candidate the projection compares the candidate's bytes with the text,
finds the pivot piece its bytes spell (a trie walk when the candidate does not start at a
source boundary) and adds its log-probability to that piece; per position it sorts the
entries. The rules look each candidate's id up in a map, but check the whole map (O(V)) on
every sequence, which is why their pass is slower with the 150000-token source. Against what
the rules path computes (DTW, then the distribution pass) the projection is faster
({", ".join(f"{x['proj_vs_rules']:.1f}x" for _, _, x in cases)}), since it needs no DTW (nor the counts pass over the corpus that
the MS map needs first).

History: the first version of the projection ran at 0.37x / 0.24x of the distribution pass
(150000 / 32000-token source, uniform alternatives, the same rows). Carrying masses as
log-probabilities (no exp or log for a pivot token reached by one candidate), a double-array
pivot trie, one integer sort key per entry and leaner byte matching and input checks cut its
instructions per pivot token from about 3,700 to 2,300 (callgrind). An earlier version of
this table timed the one-row `align_distributions`, which prepares the vocabulary maps (O(V))
on every call, and the DTW in wall time on a loaded machine: that made the distribution pass
look several times slower than a corpus run.

DTW against the reference's own style, {r['n_calls']} real paragraphs aligned one call each
(mean {r['call_cells']:.0f} cells per call), outputs identical:

| DTW | per cell | per call |
|---|---|---|
| reference style: Python double loop, `editdistance.eval` per cell | {r['oracle_ns_cell']:.0f} ns | {r['oracle_us_call'] / 1e3:.2f} ms |
| tests/reference twin (stripping per cell, NumPy grid) | {r['twin_ns_cell']:.0f} ns | |
| fusechat C (`align.align`, from Python) | {r['c_ns_cell']:.1f} ns | {r['c_us_call']:.1f} us |
| **C vs reference style** | **{r['dtw_vs_oracle']:.0f}x** | |

On short rows the per-call overhead (the call from Python, distinct ids, allocations) is a
large part of the C figure; the long-row per-cell cost is in the table above.

Oracle source (its top-1 is always its true next token: logit 10, nine other ids at 0): share
of supervised pivot positions whose aligned top-1 is the pivot's true next token; bytes in
brackets: exact / prefix mass / fallback shares in %; rules = DTW + MS map (counts over the
same rows) + the reference's MAP/ONEHOT/EMPTY rules.

| pair | positions | bytes | rules |
|---|---|---|---|
{rows}

The rules column counts a gold one-hot (ONEHOT: no source information) as correct. The
bytes path's fallbacks on Mistral's pivot are the first position of each text (a source
without BOS has nothing to predict it from).

The first answer token (the first supervised pivot token of each demo chat: the digit or the
city that decides the answer), oracle source, chats whose aligned top-1 there is the pivot's
true token:

| pair | chats | bytes | rules | rules: as the gold one-hot (no source information) |
|---|---|---|---|---|
{first_rows}
"""
    write_section(body, os.path.join(ROOT, "docs", "benchmarks.md"),
                  parent="## Token alignment (benchmarks/bench_align.py)")
    print("wrote the projection section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
