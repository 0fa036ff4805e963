"""The align stage: a source model's TopK store mapped onto the pivot's tokens and ids.

``align_stores(pivot_store, source_store, out, ...)`` (``fusechat align``, docs/pipeline.md):

1. match the two stores' samples by ``sample_index`` (the dataset row); rows present in
   only one store are dropped and counted;
2. counts pass: align every pair of ``input_ids`` sequences (DTW or byte offsets) and count
   co-aligned (pivot id, source id) pairs - only for the MS map; the counts are saved as a
   CSR ``.npz`` beside the output (``OUT.counts.npz``) and reused when their key matches;
3. the vocabulary map (MS, MinED or EM, method.md 4);
4. distribution pass (method.md 5): for every pivot position the source's top-K as pivot ids
   (MAP / ONEHOT / EMPTY), at most K entries, written to an "aligned" store with the pivot's
   ``input_ids``/``loss_mask`` and the source's sequence CE as ``seq_ce``.

With ``projection="bytes"`` steps 2-4 are replaced by the byte-exact projection
(docs/alignment.md): the source's top-K log-probabilities (its logits minus the stored
log-normaliser; the true token's from the stored CE) are carried to the pivot's next tokens;
the aligned store then holds pivot-side log-probabilities (top-``k`` by mass), its token and
sequence CE are the pivot's true tokens' (so MinCE compares both models on the same pivot
tokens), and the manifest's ``info.fidelity`` holds the figures (also logged): the share of
supervised pivot positions whose top-1 is the pivot's true next token, the shares resolved
exactly / by prefix mass / by fallback and the mean log-probability of the true next token.

A source with the pivot's vocabulary (``Vocab.same_as``) skips alignment: its top-K is copied,
special tokens mapped by role; a sample whose token ids differ from the pivot's (e.g. another
end-of-turn token) is aligned like a foreign vocabulary's, with the exact-match map.
"""
import hashlib
import json
import logging
import os

import numpy as np

from .. import align as al
from ..fuse import SparseDists
from ..progress import tqdm
from .store import TopKStoreWriter, open_store
from ..vocab import Vocab

LOG = logging.getLogger(__name__)

CHUNK = 512  # samples per batch handed to the threaded C calls
CACHE_TOKENS = 1 << 23  # keep the counts pass's alignments for the distribution pass below this


def as_vocab(tokenizer):
    """A fusechat.Vocab from a Vocab, a tokenizer folder/file path or a loaded tokenizer."""
    if isinstance(tokenizer, Vocab):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        return Vocab.from_pretrained(os.fspath(tokenizer))
    return Vocab.from_tokenizer(tokenizer)


def _open(store, vocab, role):
    """Open a store (path or opened) and check it was made with ``vocab``."""
    s = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    if s.fingerprint != vocab.fingerprint:
        raise ValueError(f"{s.path}: the {role} store was made with tokenizer fingerprint "
                         f"{s.fingerprint[:16]}..., but the {role} tokenizer given "
                         f"({vocab.source}) has {vocab.fingerprint[:16]}... "
                         "(rule tokenizer_mismatch)")
    return s


def store_identity(store):
    """What a derived output records about one input store (to tell a finished output)."""
    return {"path": os.path.abspath(store.path), "model": store.model,
            "fingerprint": store.fingerprint, "n_samples": len(store), "n_tokens": store.n_tokens}


def finished(out, settings, overwrite):
    """True if ``out`` is a complete store made with ``settings`` (rerun: skip it); raises
    FileExistsError if it exists with other settings and not ``overwrite``."""
    mpath = os.path.join(out, "manifest.json")
    if overwrite or not os.path.exists(out):
        return False
    try:
        with open(mpath, encoding="utf-8") as f:
            have = json.load(f).get("info", {}).get("settings")
    except (OSError, ValueError):
        have = None
    if have == settings:
        LOG.info("%s: already done with the same inputs and settings; skipped", out)
        return True
    diff = sorted(k for k in settings if not isinstance(have, dict) or have.get(k) != settings[k])
    raise FileExistsError(f"{out}: exists, made from other inputs or settings ({', '.join(diff)}); "
                          "pass overwrite=True / --overwrite to replace it")


def matched_rows(a, b, names=("pivot", "source")):
    """(rows of a, rows of b) holding the same sample_index, in a's order; logs what is
    dropped."""
    ia, ib = a.sample_indices(), b.sample_indices()
    for s, idx in ((a, ia), (b, ib)):
        if len(np.unique(idx)) != len(idx):
            raise ValueError(f"{s.path}: a sample_index occurs twice (rule duplicate_sample)")
    common, ra, rb = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
    if len(ia) and len(ib) and not len(common):
        raise ValueError(f"{a.path} and {b.path}: no sample_index in common (stores of "
                         "different datasets?) (rule no_common_samples)")
    order = np.argsort(ra, kind="stable")
    ra, rb = ra[order], rb[order]
    for s, idx, name in ((a, ia, names[0]), (b, ib, names[1])):
        if len(idx) > len(common):
            LOG.warning("%s: %d of %d samples have no match in the %s store; dropped", s.path,
                        len(idx) - len(common), len(idx), names[1] if name == names[0] else names[0])
    return ra, rb


def _counts_key(piv, src, pv, sv, method, rows):
    h = hashlib.sha256()
    h.update(json.dumps([pv.fingerprint, sv.fingerprint, method, piv.n_tokens, src.n_tokens,
                         len(rows[0])]).encode())
    h.update(piv.sample_indices()[rows[0]].astype("<i8").tobytes())
    return h.hexdigest()


def _load_counts(path, key):
    try:
        with open(path + ".json", encoding="utf-8") as f:
            if json.load(f).get("key") != key:
                return None
        return al.AlignmentCounts.load(path)
    except (OSError, ValueError):
        return None


def _save_counts(counts, path, key):
    counts.save(path)
    tmp = f"{path}.json.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"key": key}, f)
    os.replace(tmp, path + ".json")


def _chunks(n):
    return [(b, min(b + CHUNK, n)) for b in range(0, n, CHUNK)]


def _bar(total, desc, quiet):
    return tqdm(total=total, desc=desc, unit="seq", disable=True if quiet else None)


def _dedupe_rows(ids, logits):
    """Per row, drop repeated ids (keeping the first, highest-logit one) and pad with -1."""
    k = ids.shape[1]
    dup = np.zeros(ids.shape, bool)
    for j in range(1, k):
        dup[:, j] = (ids[:, :j] == ids[:, j:j + 1]).any(axis=1) & (ids[:, j] >= 0)
    dup |= ids < 0
    order = np.argsort(dup, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, 1)
    logits = np.take_along_axis(logits, order, 1)
    gone = np.take_along_axis(dup, order, 1)
    return np.where(gone, -1, ids), np.where(gone, 0, logits)


def _aligned_token_ce(src_ce, alignment, piv_mask):
    """Per pivot position, the source CE at the last source position aligned with it (0
    where the pivot's next token is not supervised, NaN where nothing is aligned)."""
    indptr, indices = alignment
    n = len(indptr) - 1
    out = np.zeros(n, np.float32)
    has = np.diff(indptr) > 0
    out[has] = np.asarray(src_ce, np.float32)[indices[indptr[1:][has] - 1]]
    out[~has] = np.nan
    sup = np.zeros(n, bool)
    sup[:-1] = piv_mask[1:] > 0
    out[~sup] = 0
    return out


def _pivot_ids(piv, pv):
    """How many ids an aligned store can hold (its vocab_size, which sets the id dtype): the
    pivot model's vocabulary (its store's), or the pivot tokenizer's if that is larger -
    every stored id comes from one of them."""
    return max(piv.manifest.get("vocab_size") or 0, pv.size)


def align_stores(pivot_store, source_store, out, *, pivot_tokenizer, source_tokenizer,
                 projection=None, method=None, map=None, k=None, counts_path=None,
                 threads=0, overwrite=False, quiet=False):
    """Write the source store aligned to the pivot (an "aligned" TopK store) at ``out``;
    returns ``out``. ``projection``: ``"bytes"`` (the byte-exact projection, at most ``k``
    entries per position, default the source's K) or ``"rules"`` (the reference's DTW + map +
    MAP/ONEHOT/EMPTY, with ``method``, default ``"dtw"``, and ``map``, default ``"ms"``).
    Unset: ``"rules"`` when ``method``, ``map`` or ``counts_path`` is given, else
    ``fusechat.align.DEFAULT_PROJECTION`` (bytes), as for ``fusechat align``. See the module
    docs and docs/pipeline.md."""
    if projection is None:
        rules_opts = method is not None or map is not None or counts_path is not None
        projection = "rules" if rules_opts else al.DEFAULT_PROJECTION
    method = "dtw" if method is None else method
    map = "ms" if map is None else map
    if projection not in al.PROJECTIONS:
        raise ValueError(f"projection={projection!r}: expected one of {list(al.PROJECTIONS)}")
    if k is not None and int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if method not in al.METHODS:
        raise ValueError(f"method={method!r}: expected one of {sorted(al.METHODS)}")
    if map not in al.MAP_MODES:
        raise ValueError(f"map={map!r}: expected one of {sorted(al.MAP_MODES)}")
    out = os.fspath(out)
    pv, sv = as_vocab(pivot_tokenizer), as_vocab(source_tokenizer)
    piv, src = _open(pivot_store, pv, "pivot"), _open(source_store, sv, "source")
    settings = {"pivot": store_identity(piv), "source": store_identity(src), "method": method,
                "map": map}
    if projection == "bytes":  # rules runs keep the settings they always had
        settings = {"pivot": settings["pivot"], "source": settings["source"],
                    "projection": "bytes", "k": k}
    if finished(out, settings, overwrite):
        return out
    if piv.kind != "extracted" or src.kind != "extracted":
        raise ValueError(f"{piv.path if piv.kind != 'extracted' else src.path}: kind "
                         f"{piv.kind if piv.kind != 'extracted' else src.kind!r}, expected "
                         "an 'extracted' store (rule bad_kind)")
    rows = matched_rows(piv, src)
    n = len(rows[0])
    same = sv.same_as(pv)
    bytes_ = projection == "bytes" and not same
    info = {"settings": settings, "source_model": src.model, "source_fingerprint": src.fingerprint,
            "pivot_model": piv.model, "projection": "copy" if same else projection,
            "method": "copy" if same else method if not bytes_ else None,
            "map": "identity" if same else map if not bytes_ else None, "n_pivot": len(piv),
            "n_source": len(src), "n_dropped_pivot": len(piv) - n,
            "n_dropped_source": len(src) - n}
    if not bytes_:
        del info["projection"]  # rules manifests as they always were
    k = int(k) if bytes_ and k is not None else src.k
    if bytes_:
        al._project_context(sv, pv)  # refuses lossy vocabularies before anything is written
        if n:
            src[int(rows[1][0])].topk_logprobs(src.path)  # refuses stores without lognorm
    writer = TopKStoreWriter(out, k=k, kind="aligned",
                             logits_dtype=src.manifest["dtypes"]["topk_logits"],
                             model=src.model, tokenizer_fingerprint=pv.fingerprint,
                             vocab_size=_pivot_ids(piv, pv), info=info, overwrite=overwrite)
    info = writer.meta["info"]  # the manifest's own dict: filled in as we go
    with writer:
        if same:
            _copy_same_vocab(piv, src, rows, pv, sv, writer, info, threads, quiet)
        elif bytes_:
            _project(piv, src, rows, pv, sv, writer, info, threads, quiet)
        else:
            counts, cache = None, None
            if map == "ms":
                counts, cache = _counts(piv, src, rows, pv, sv, method, out, counts_path,
                                        threads, quiet)
            vmap = al.vocab_map(sv, pv, map, counts=counts, threads=threads)
            info["n_unmapped_source_ids"] = int((vmap < 0).sum())
            _distributions(piv, src, rows, range(n), pv, sv, method, map, vmap, cache, writer,
                           info, threads, quiet)
    LOG.info("aligned %d samples of %s to %s: %s", n, src.path, piv.path, out)
    return out


def _pairs(piv, src, rows, b, e):
    ps = [piv[int(i)] for i in rows[0][b:e]]
    ss = [src[int(i)] for i in rows[1][b:e]]
    return ps, ss


def _counts(piv, src, rows, pv, sv, method, out, counts_path, threads, quiet):
    """The co-alignment counts (loaded when a matching file exists) and, when they were
    computed here and are small, the alignments for the distribution pass."""
    path = counts_path or out.rstrip("/\\") + ".counts.npz"
    key = _counts_key(piv, src, pv, sv, method, rows)
    counts = _load_counts(path, key)
    if counts is not None:
        LOG.info("reusing alignment counts %s", path)
        return counts, None
    counts = al.AlignmentCounts(pv.size, sv.size)
    n = len(rows[0])
    cache = [] if piv.n_tokens <= CACHE_TOKENS else None
    with _bar(n, f"align counts ({method})", quiet) as bar:
        for b, e in _chunks(n):
            ps, ss = _pairs(piv, src, rows, b, e)
            src_ids = [s.input_ids for s in ss]
            piv_ids = [p.input_ids for p in ps]
            alignments = al.align_batch(src_ids, piv_ids, sv, pv, method=method,
                                        fallback="dtw", threads=threads, progress=False)
            counts.update(src_ids, piv_ids, alignments)
            if cache is not None:
                cache += alignments
            bar.update(e - b)
    _save_counts(counts, path, key)
    return counts, cache


def _distributions(piv, src, rows, which, pv, sv, method, mode, vmap, cache, writer, info,
                   threads, quiet):
    """Align the samples ``which`` (positions in rows) and write them."""
    which = list(which)
    k = writer.k
    n_empty = n_onehot_or_map = 0
    with _bar(len(which), "align distributions", quiet) as bar:
        for b in range(0, len(which), CHUNK):
            part = which[b:b + CHUNK]
            ps = [piv[int(rows[0][i])] for i in part]
            ss = [src[int(rows[1][i])] for i in part]
            src_ids = [s.input_ids for s in ss]
            piv_ids = [p.input_ids for p in ps]
            if cache is not None:
                alignments = [cache[i] for i in part]
            else:
                alignments = al.align_batch(src_ids, piv_ids, sv, pv, method=method,
                                            fallback="dtw", threads=threads, progress=False)
            dists = al.align_distributions_batch(
                [s.topk_ids for s in ss], [s.topk_logits for s in ss], piv_ids, src_ids,
                alignments, vmap, sv, pv, mode=mode, threads=threads, progress=False)
            for p, s, a, d in zip(ps, ss, alignments, dists):
                lens = np.diff(d.offsets)
                if len(lens) and lens.max() > k:
                    raise RuntimeError(f"sample {p.sample_index}: an aligned list has "
                                       f"{lens.max()} > K={k} entries")
                n_empty += int((lens == 0).sum())
                n_onehot_or_map += int((lens > 0).sum())
                ids, logits = SparseDists(d.offsets, d.ids, d.logits).to_padded(k)
                writer.add(p.sample_index, p.input_ids, p.loss_mask, ids, logits,
                           _aligned_token_ce(s.token_ce, a, p.loss_mask), s.seq_ce)
            bar.update(len(part))
    info["n_empty_positions"] = info.get("n_empty_positions", 0) + n_empty
    info["n_filled_positions"] = info.get("n_filled_positions", 0) + n_onehot_or_map


def true_logprobs(sample):
    """Per position, the log-probability of the true next token from the stored CE (NaN
    where the next token is not supervised: the CE is not stored there)."""
    mask = np.asarray(sample.loss_mask)
    out = np.full(len(mask), np.nan, np.float32)
    sup = np.zeros(len(mask), bool)
    sup[:-1] = mask[1:] > 0
    out[sup] = -np.asarray(sample.token_ce, np.float32)[sup]
    return out


def _project(piv, src, rows, pv, sv, writer, info, threads, quiet):
    """The byte-exact projection of every matched sample (docs/alignment.md), written as
    pivot-side log-probabilities; the fidelity figures go into ``info``."""
    k, n = writer.k, len(rows[0])
    fid = None
    with _bar(n, "project", quiet) as bar:
        for b, e in _chunks(n):
            ps, ss = _pairs(piv, src, rows, b, e)
            projected = al.project_batch(
                [s.input_ids for s in ss], [p.input_ids for p in ps], [s.topk_ids for s in ss],
                [s.topk_logprobs(src.path) for s in ss], sv, pv,
                src_true_logprobs=[true_logprobs(s) for s in ss], k=k, details=True,
                threads=threads, progress=False)
            for p, r in zip(ps, projected):
                sup = np.zeros(len(p.input_ids), bool)
                sup[:-1] = np.asarray(p.loss_mask)[1:] > 0
                ce = np.where(sup, -r.gold_logprob, 0).astype(np.float32)  # NaN: fallback
                resolved = ce[sup][np.isfinite(ce[sup])]
                seq_ce = float(resolved.mean()) if len(resolved) else float("nan")
                ids, lps = SparseDists(r.dists.offsets, r.dists.ids,
                                       r.dists.logits).to_padded(k)
                writer.add(p.sample_index, p.input_ids, p.loss_mask, ids, lps, ce, seq_ce,
                           topk_lognorm=np.zeros(len(p.input_ids), np.float32))
            part = al.projection_fidelity([(r, p.input_ids) for p, r in zip(ps, projected)],
                                          [p.loss_mask for p in ps])
            fid = part if fid is None else al.combine_fidelity(fid, part)
            bar.update(e - b)
    info["fidelity"] = fid if fid is not None else al.projection_fidelity([], [])
    LOG.info("projection fidelity of %s onto %s: %s", src.path, piv.path,
             format_fidelity(info["fidelity"]))


def print_fidelity(out, file=None):
    """Print an aligned store's fidelity figures (if it has them) on stderr: what every
    projection run shows (the CLI and recipe runs call this)."""
    import sys

    from .store import open_store

    with open_store(out) as s:
        fid = s.manifest.get("info", {}).get("fidelity")
    if fid:
        print(f"fidelity of {out}: {format_fidelity(fid)}", file=file or sys.stderr)


def format_fidelity(fid):
    """One line: the fidelity figures of a projection run."""
    return (f"{fid['n_supervised']} supervised pivot positions: top-1 = true next token "
            f"{100 * fid['top1_correct']:.1f}%, exact {100 * fid['exact']:.1f}%, prefix mass "
            f"{100 * fid['prefix']:.1f}%, fallback {100 * fid['fallback']:.1f}%, mean log-prob "
            f"of the true token {fid['mean_gold_logprob']:.3f}")


def _copy_same_vocab(piv, src, rows, pv, sv, writer, info, threads, quiet):
    """Same vocabulary: copy the source's top-K, ids mapped by role (identity otherwise).
    Samples whose mapped token ids differ from the pivot's are aligned (EM map)."""
    vmap = al.vocab_map(sv, pv, "em", threads=threads)
    n = len(rows[0])
    differ = []
    with _bar(n, "copy (same vocabulary)", quiet) as bar:
        for b, e in _chunks(n):
            ps, ss = _pairs(piv, src, rows, b, e)
            for j, (p, s) in enumerate(zip(ps, ss)):
                mapped = vmap[s.input_ids]
                if not np.array_equal(mapped, p.input_ids):
                    differ.append(b + j)
                    continue
                tid = np.asarray(s.topk_ids)
                ids = np.where(tid >= 0, vmap[np.maximum(tid, 0)], -1)
                ids, logits = _dedupe_rows(ids, np.asarray(s.topk_logits))
                writer.add(p.sample_index, p.input_ids, p.loss_mask, ids, logits, s.token_ce,
                           s.seq_ce, topk_lognorm=s.topk_lognorm)
            bar.update(e - b)
    info["n_copied"] = n - len(differ)
    info["n_realigned"] = len(differ)
    if differ:
        LOG.warning("%d of %d samples of %s tokenize differently from the pivot's although "
                    "the vocabularies are the same; aligning them (DTW, exact-match map)",
                    len(differ), n, src.path)
        _distributions(piv, src, rows, differ, pv, sv, "dtw", "em", vmap, None, writer, info,
                       threads, quiet)
