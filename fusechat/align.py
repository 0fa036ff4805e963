"""Stage-1 token alignment (see docs/alignment.md).

- :func:`align` / :func:`align_batch`: for every pivot position, the source positions aligned
  with it (CSR), by the reference's DTW (``method="dtw"``, exact) or by exact byte offsets
  (``method="offsets"``).
- :class:`AlignmentCounts` and :func:`vocab_map`: co-alignment counts over a corpus and the
  source id -> pivot id maps EM, MinED and MS.
- :func:`align_distributions`: the source's top-K at source positions as ragged
  (pivot id, logit) lists at pivot positions (``method.md`` section 5).
- :func:`project` / :func:`project_batch`: the byte-exact projection: the source's top-K
  log-probabilities carried to the pivot's next tokens by the chain rule over bytes, and
  :func:`projection_fidelity`, the figures every projection run reports.
"""
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from . import _C
from .errors import FormatError
from .progress import tqdm

LOG = logging.getLogger(__name__)

METHODS = {"dtw": 0, "offsets": 1}
MAP_MODES = {"em": 0, "mined": 1, "ms": 2}
# how a source's distributions reach the pivot's tokens (docs/alignment.md): the byte-exact
# projection, or the reference's DTW + map + MAP/ONEHOT/EMPTY rules (kept for the paper's
# figures). The one default of `align_stores`, `fusechat align` and a recipe's align.projection.
PROJECTIONS = ("bytes", "rules")
DEFAULT_PROJECTION = "bytes"
DIST_MODES = {"ms": 0, "em": 1, "mined": 2}
ROLE_POLICIES = {"none": -1, "reference": 0, "all": 1}


class Alignment(NamedTuple):
    """For pivot position j, the source positions ``indices[indptr[j]:indptr[j + 1]]``."""
    indptr: np.ndarray
    indices: np.ndarray

    def __len__(self):
        return len(self.indptr) - 1

    def lists(self):
        return [self.indices[a:b].tolist() for a, b in zip(self.indptr[:-1], self.indptr[1:])]


class Distributions(NamedTuple):
    """Ragged per-pivot-position lists: ``ids[offsets[j]:offsets[j + 1]]`` (int32) and the
    matching ``logits`` (float32). An empty list means "use the pivot's own distribution"."""
    offsets: np.ndarray
    ids: np.ndarray
    logits: np.ndarray

    def __len__(self):
        return len(self.offsets) - 1


class Ragged(NamedTuple):
    """Sequences stored flat: sequence i is ``values[offsets[i]:offsets[i + 1]]``."""
    values: np.ndarray
    offsets: np.ndarray


def _ids(x, name):
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer token ids, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _sequences(x, name):
    if isinstance(x, Ragged):
        off = np.asarray(x.offsets, dtype=np.int64)
        vals = np.asarray(x.values)
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or np.any(np.diff(off) < 0) \
                or off[-1] != len(vals):
            raise ValueError(f"{name}: Ragged offsets must rise from 0 to len(values)")
        return [vals[a:b] for a, b in zip(off[:-1], off[1:])]
    return list(x)


def _default_threads(threads):
    return threads if threads and threads > 0 else _C.default_threads()


def _run_batch(fn, n, threads, desc, progress):
    """fn(i) for i in range(n) on a thread pool (fn releases the GIL in C), in order."""
    threads = min(_default_threads(threads), max(n, 1))
    out = [None] * n
    bar = tqdm(total=n, desc=desc, unit="seq", disable=None if progress else True)
    try:
        if threads <= 1:
            for i in range(n):
                out[i] = fn(i)
                bar.update(1)
            return out
        with ThreadPoolExecutor(max_workers=threads) as pool:
            chunk = max(1, min(64, n // (threads * 8) or 1))
            starts = range(0, n, chunk)

            def run(s):
                return [fn(i) for i in range(s, min(s + chunk, n))]

            for s, results in zip(starts, pool.map(run, starts)):
                out[s:s + len(results)] = results
                bar.update(len(results))
        return out
    finally:
        bar.close()


# --------------------------------------------------------------------------------------
# sequence alignment

def _align_one(ctx, src, piv, method, fallback):
    (indptr, indices), used = _C.align(ctx, src, piv, method, fallback)
    return Alignment(indptr, indices), used


def _method(method, fallback):
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if fallback not in (None, "error", "dtw"):
        raise ValueError(f"fallback must be None, 'error' or 'dtw', got {fallback!r}")
    return METHODS[method], int(fallback == "dtw")


def align(src_ids, pivot_ids, src_vocab, pivot_vocab, method="dtw", fallback=None):
    """Align one source token sequence with one pivot token sequence (unpadded).

    ``method="dtw"`` reproduces the reference exactly (``method.md`` 3.2-3.3);
    ``method="offsets"`` aligns tokens whose canonical bytes overlap (O(n + m)); if the two
    sequences do not spell the same text it raises ValueError, or with ``fallback="dtw"``
    uses DTW for that sequence. Returns :class:`Alignment` (indptr, indices)."""
    m, fb = _method(method, fallback)
    ctx = src_vocab._context(pivot_vocab)
    return _align_one(ctx, _ids(src_ids, "src_ids"), _ids(pivot_ids, "pivot_ids"), m, fb)[0]


def align_batch(src_seqs, pivot_seqs, src_vocab, pivot_vocab, method="dtw", fallback=None,
                threads=0, progress=True):
    """:func:`align` over many sequence pairs (lists of arrays or :class:`Ragged`) on a thread
    pool with the GIL released. Returns a list of :class:`Alignment`. With
    ``fallback="dtw"`` the number of sequences that fell back is logged."""
    src = _sequences(src_seqs, "src_seqs")
    piv = _sequences(pivot_seqs, "pivot_seqs")
    if len(src) != len(piv):
        raise ValueError(f"{len(src)} source sequences but {len(piv)} pivot sequences")
    m, fb = _method(method, fallback)
    ctx = src_vocab._context(pivot_vocab)
    src = [_ids(s, f"src_seqs[{i}]") for i, s in enumerate(src)]
    piv = [_ids(p, f"pivot_seqs[{i}]") for i, p in enumerate(piv)]
    results = _run_batch(lambda i: _align_one(ctx, src[i], piv[i], m, fb), len(src), threads,
                         f"align ({method})", progress)
    fell_back = sum(u for _, u in results)
    if fell_back:
        LOG.info("offsets alignment fell back to DTW for %d of %d sequences", fell_back,
                 len(results))
    return [a for a, _ in results]


# --------------------------------------------------------------------------------------
# co-alignment counts

class AlignmentCounts:
    """Co-alignment counts C[pivot id, source id] in a hash map (never a dense V_P x V_S
    matrix). ``update`` adds, for every pivot position, one count per distinct source id
    aligned with it (the reference's rule). Saved as a scipy-compatible CSR ``.npz``."""

    def __init__(self, pivot_vocab_size=None, src_vocab_size=None):
        self._h = _C.counts_new()
        self.shape = (pivot_vocab_size, src_vocab_size)

    @property
    def nnz(self):
        return _C.counts_nnz(self._h)

    def update(self, src_ids, pivot_ids, alignment):
        """Add one aligned sequence pair (or lists of them, with a list of alignments)."""
        if isinstance(alignment, Alignment):
            _C.counts_add_alignment(self._h, _ids(src_ids, "src_ids"),
                                    _ids(pivot_ids, "pivot_ids"),
                                    np.asarray(alignment.indptr, dtype=np.int64),
                                    np.asarray(alignment.indices, dtype=np.int64))
            return self
        src, piv, al = (_sequences(src_ids, "src_ids"), _sequences(pivot_ids, "pivot_ids"),
                        list(alignment))
        if not len(src) == len(piv) == len(al):
            raise ValueError("update: src_ids, pivot_ids and alignments differ in length")
        for s, p, a in zip(src, piv, al):
            self.update(s, p, Alignment(*a))
        return self

    def merge(self, other):
        """Add another AlignmentCounts (e.g. a shard counted elsewhere)."""
        _C.counts_merge(self._h, other._h)
        self.shape = tuple(a if b is None else b if a is None else max(a, b)
                           for a, b in zip(self.shape, other.shape))
        return self

    def to_coo(self, by_source=False):
        """(pivot_ids, src_ids, counts) sorted by pivot id then source id (or by source)."""
        return _C.counts_export(self._h, by_source)

    def _full_shape(self, piv, src):
        rows = self.shape[0] if self.shape[0] is not None else int(piv.max(initial=-1)) + 1
        cols = self.shape[1] if self.shape[1] is not None else int(src.max(initial=-1)) + 1
        return rows, cols

    def to_csr(self):
        """(data float64, indices int32, indptr int64, shape): the reference's matrix layout."""
        piv, src, cnt = self.to_coo()
        rows, cols = self._full_shape(piv, src)
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(piv, minlength=rows), out=indptr[1:])
        return cnt.astype(np.float64), src.astype(np.int32), indptr, (rows, cols)

    def to_scipy(self):
        from scipy import sparse

        data, indices, indptr, shape = self.to_csr()
        return sparse.csr_matrix((data, indices, indptr), shape=shape)

    def save(self, path):
        """Write a CSR ``.npz`` readable by ``scipy.sparse.load_npz``; the file appears at
        ``path`` only when complete."""
        data, indices, indptr, shape = self.to_csr()
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".counts-", suffix=".npz", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, indices=indices, indptr=indptr,
                                    format=np.array("csr".encode("ascii")),
                                    shape=np.array(shape, dtype=np.int64), data=data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path):
        """Read a CSR ``.npz`` (ours or scipy's ``save_npz`` of integral counts)."""
        path = os.fspath(path)
        with np.load(path, allow_pickle=False) as z:
            for key in ("data", "indices", "indptr", "shape", "format"):
                if key not in z.files:
                    raise FormatError(f"{path}: missing array {key!r} of a CSR .npz")
            fmt = z["format"].item()
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
            if fmt != "csr":
                raise FormatError(f"{path}: format is {fmt!r}, expected 'csr'")
            data, indices, indptr = z["data"], z["indices"], z["indptr"]
            shape = tuple(int(s) for s in z["shape"])
        if len(shape) != 2 or len(indptr) != shape[0] + 1 or indptr[0] != 0 \
                or np.any(np.diff(indptr) < 0) or indptr[-1] != len(data) \
                or len(indices) != len(data):
            raise FormatError(f"{path}: inconsistent CSR arrays (shape, indptr, indices, data)")
        if len(indices) and (indices.min() < 0 or indices.max() >= shape[1]):
            raise FormatError(f"{path}: a column index is outside the shape {shape}")
        if np.any(data < 0) or np.any(data != np.floor(data)):
            raise FormatError(f"{path}: counts must be non-negative integers")
        out = cls(*shape)
        rows = np.repeat(np.arange(shape[0], dtype=np.int64), np.diff(indptr))
        _C.counts_add_coo(out._h, rows, indices.astype(np.int64), data.astype(np.uint64))
        return out

    def __repr__(self):
        return f"AlignmentCounts(nnz={self.nnz}, shape={self.shape})"


# --------------------------------------------------------------------------------------
# vocabulary maps

def vocab_map(src_vocab, pivot_vocab, mode="mined", counts=None, roles=None, threads=0):
    """Source id -> pivot id (int32 array of len(src_vocab), -1 = unmapped).

    - ``"em"``: the source piece with its marker replaced by the pivot's is a pivot piece.
    - ``"mined"``: exact match, else the pivot piece at minimum edit distance (lowest id on
      ties) - FuseLLM's definition (the reference's own MinED path is broken).
    - ``"ms"``: ``method.md`` 4.2 from :class:`AlignmentCounts` ``counts``.

    ``roles``: ``"reference"`` (bos -> bos, eos -> eos, the default for ``"ms"``), ``"all"``
    (also unk, pad and end of turn, the default otherwise) or ``"none"``. Vocabularies with
    the same pieces map by identity, special tokens by role."""
    if mode not in MAP_MODES:
        raise ValueError(f"mode must be one of {sorted(MAP_MODES)}, got {mode!r}")
    if roles is None:
        roles = "reference" if mode == "ms" else "all"
    if roles not in ROLE_POLICIES:
        raise ValueError(f"roles must be one of {sorted(ROLE_POLICIES)}, got {roles!r}")
    if mode == "ms" and counts is None:
        raise ValueError('mode "ms" needs counts (an AlignmentCounts)')
    return _C.vocab_map(src_vocab._h, pivot_vocab._h, MAP_MODES[mode],
                        None if counts is None else counts._h, ROLE_POLICIES[roles],
                        int(threads or 0))


def _effective_map(src_vocab, pivot_vocab, mode, vmap, roles):
    """The pivot id a source top-K id lands on in MAP (method.md 5): its piece (marker
    replaced) if the pivot has it, else the map (MS); the piece only (EM); the map (MinED).
    With roles "all" (the default for EM and MinED) role tokens follow the map's roles."""
    if roles is None:
        roles = "reference" if mode == "ms" else "all"
    direct = _direct_map(src_vocab, pivot_vocab)
    if mode == "em":
        eff = direct.copy()
    elif mode == "mined":
        eff = vmap.copy()
    else:
        eff = np.where(direct >= 0, direct, vmap).astype(np.int32)
    if roles == "all" or src_vocab.same_as(pivot_vocab):
        for name, i in src_vocab.roles.items():
            if i is not None and pivot_vocab.roles.get(name) is not None:
                eff[i] = vmap[i]
    return eff


def _direct_map(src_vocab, pivot_vocab):
    """The exact-piece map without roles, computed once per vocabulary pair (read-only)."""
    key = ("direct", id(pivot_vocab))
    entry = src_vocab._contexts.get(key)
    if entry is None or entry[0] is not pivot_vocab:
        direct = _C.vocab_map(src_vocab._h, pivot_vocab._h, MAP_MODES["em"], None, -1, 0)
        direct.setflags(write=False)
        entry = src_vocab._contexts[key] = (pivot_vocab, direct)
    return entry[1]


def _check_map(vmap, src_vocab):
    vmap = np.ascontiguousarray(vmap, dtype=np.int32)
    if vmap.shape != (src_vocab.size,):
        raise ValueError(f"vocab_map must have one entry per source id ({src_vocab.size}), got "
                         f"shape {vmap.shape}")
    return vmap


def _dist_args(mode, multi):
    if mode not in DIST_MODES:
        raise ValueError(f"mode must be one of {sorted(DIST_MODES)}, got {mode!r}")
    if multi not in ("rules", "onehot"):
        raise ValueError(f"multi must be 'rules' or 'onehot', got {multi!r}")
    return DIST_MODES[mode], int(multi == "rules")


def _topk(ids, logits, n):
    ids = np.asarray(ids)
    logits = np.asarray(logits)
    if ids.ndim != 2 or ids.shape != logits.shape or ids.shape[0] != n:
        raise ValueError(f"topk ids and logits must both be [len(src_ids)={n}, K], got "
                         f"{ids.shape} and {logits.shape}")
    return (np.ascontiguousarray(ids, dtype=np.int64),
            np.ascontiguousarray(logits, dtype=np.float32))


def align_distributions(src_topk_ids, src_topk_logits, pivot_ids, src_ids, alignment,
                        vocab_map, src_vocab, pivot_vocab, mode="ms", multi="rules",
                        roles=None):
    """The source's top-K (ids, logits: [n, K], logits in any float dtype, computed in
    float32) aligned to the pivot positions, per ``method.md`` section 5: MAP / ONEHOT /
    EMPTY with duplicate pivot ids keeping the highest logit. ``mode``: ``"ms"`` (endswith
    rules, 1-n positions by segmentation, ``multi="onehot"`` to one-hot them instead),
    ``"em"`` or ``"mined"`` (1-1 positions only). Returns :class:`Distributions`.
    Over a corpus use :func:`align_distributions_batch`, which prepares the maps once."""
    dmode, dmulti = _dist_args(mode, multi)
    src = _ids(src_ids, "src_ids")
    piv = _ids(pivot_ids, "pivot_ids")
    vmap = _check_map(vocab_map, src_vocab)
    eff = _effective_map(src_vocab, pivot_vocab, mode, vmap, roles)
    tid, tlg = _topk(src_topk_ids, src_topk_logits, len(src))
    ctx = src_vocab._context(pivot_vocab)
    return _dist_one(ctx, dmode, dmulti, src, piv, alignment, tid, tlg, eff, vmap)


def _dist_one(ctx, dmode, dmulti, src, piv, alignment, tid, tlg, eff, vmap):
    indptr = np.ascontiguousarray(alignment.indptr if isinstance(alignment, Alignment)
                                  else alignment[0], dtype=np.int64)
    indices = np.ascontiguousarray(alignment.indices if isinstance(alignment, Alignment)
                                   else alignment[1], dtype=np.int64)
    offs, ids, logits = _C.align_distributions(ctx, dmode, dmulti, src, piv, indptr, indices,
                                               tid, tlg, eff, vmap)
    n = int(offs[-1])
    return Distributions(offs, ids[:n].copy(), logits[:n].copy())


def align_distributions_batch(src_topk_ids, src_topk_logits, pivot_seqs, src_seqs, alignments,
                              vocab_map, src_vocab, pivot_vocab, mode="ms", multi="rules",
                              roles=None, threads=0, progress=True):
    """:func:`align_distributions` over lists of sequences, on a thread pool."""
    dmode, dmulti = _dist_args(mode, multi)
    src = [_ids(s, "src_seqs[i]") for s in _sequences(src_seqs, "src_seqs")]
    piv = [_ids(p, "pivot_seqs[i]") for p in _sequences(pivot_seqs, "pivot_seqs")]
    tids, tlgs, als = list(src_topk_ids), list(src_topk_logits), list(alignments)
    if not len(src) == len(piv) == len(tids) == len(tlgs) == len(als):
        raise ValueError("align_distributions_batch: the lists differ in length")
    vmap = _check_map(vocab_map, src_vocab)
    eff = _effective_map(src_vocab, pivot_vocab, mode, vmap, roles)
    ctx = src_vocab._context(pivot_vocab)
    topk = [_topk(tids[i], tlgs[i], len(src[i])) for i in range(len(src))]
    return _run_batch(lambda i: _dist_one(ctx, dmode, dmulti, src[i], piv[i], als[i], *topk[i],
                                          eff, vmap),
                      len(src), threads, "align distributions", progress)


# --------------------------------------------------------------------------------------
# byte-exact projection (docs/alignment.md, "Projection onto pivot tokens")

RESOLUTIONS = ("exact", "prefix", "fallback", "last")


class Projected(NamedTuple):
    """:func:`project` with ``details=True``: the distributions, the log-probability given to
    the pivot's true next token at every position (NaN where unresolved) and how each
    position was resolved (uint8: 0 exact, 1 prefix mass, 2 fallback, 3 last position)."""
    dists: Distributions
    gold_logprob: np.ndarray
    resolution: np.ndarray


def _project_context(src_vocab, pivot_vocab):
    key = ("project", id(pivot_vocab))
    entry = src_vocab._contexts.get(key)
    if entry is None or entry[0] is not pivot_vocab:
        entry = src_vocab._contexts[key] = (pivot_vocab, _C.project_ctx(src_vocab._h,
                                                                        pivot_vocab._h))
    return entry[1]


def _project_args(src_ids, pivot_ids, topk_ids, topk_logprobs, true_logprobs):
    src = _ids(src_ids, "src_ids")
    piv = _ids(pivot_ids, "pivot_ids")
    tid = np.asarray(topk_ids)
    tlp = np.asarray(topk_logprobs)
    if tid.ndim != 2 or tid.shape != tlp.shape or tid.shape[0] != len(src):
        raise ValueError(f"src_topk_ids and src_topk_logprobs must both be [len(src_ids)="
                         f"{len(src)}, K], got {tid.shape} and {tlp.shape}")
    if tid.size and tid.dtype.kind not in "iu":
        raise TypeError(f"src_topk_ids must hold integer ids, got dtype {tid.dtype}")
    tru = None
    if true_logprobs is not None:
        tru = np.ascontiguousarray(true_logprobs, dtype=np.float32)
        if tru.shape != (len(src),):
            raise ValueError(f"src_true_logprobs must have len(src_ids) = {len(src)} entries, "
                             f"got shape {tru.shape}")
    return (src, piv, np.ascontiguousarray(tid, dtype=np.int64),
            np.ascontiguousarray(tlp, dtype=np.float32), tru)


def _project_one(ctx, args, k, details):
    offs, ids, lps, gold, res = _C.project(ctx, *args, int(k))
    n = int(offs[-1])
    d = Distributions(offs, ids[:n].copy(), lps[:n].copy())
    return Projected(d, gold, res) if details else d


def project(src_ids, pivot_ids, src_topk_ids, src_topk_logprobs, src_vocab, pivot_vocab, *,
            src_true_logprobs=None, k=10, details=False):
    """The source's next-token distributions carried to the pivot's tokens for one sequence
    pair (docs/alignment.md, "Projection onto pivot tokens").

    ``src_topk_ids`` / ``src_topk_logprobs``: [len(src_ids), K] absolute log-probabilities
    (position i predicts token i + 1; -1 pads ids). ``src_true_logprobs``: optional
    [len(src_ids)], the log-probability of the true next token (NaN where unknown; from the
    stored per-token CE in a pipeline). Returns :class:`Distributions` whose ``logits`` are
    log-probabilities, at most ``k`` per pivot position by mass; with ``details=True`` a
    :class:`Projected`. Raises ValueError naming the position on bad input, and (rule
    ``projection_lossy_tokenizer``) for WordPiece vocabularies."""
    ctx = _project_context(src_vocab, pivot_vocab)
    args = _project_args(src_ids, pivot_ids, src_topk_ids, src_topk_logprobs, src_true_logprobs)
    return _project_one(ctx, args, k, details)


def project_batch(src_seqs, pivot_seqs, src_topk_ids, src_topk_logprobs, src_vocab, pivot_vocab,
                  *, src_true_logprobs=None, k=10, details=False, threads=0, progress=True):
    """:func:`project` over lists of sequences (or :class:`Ragged`) on a thread pool with the
    GIL released; errors name the sequence. Returns a list."""
    src = _sequences(src_seqs, "src_seqs")
    piv = _sequences(pivot_seqs, "pivot_seqs")
    tids, tlps = list(src_topk_ids), list(src_topk_logprobs)
    trus = [None] * len(src) if src_true_logprobs is None else list(src_true_logprobs)
    if not len(src) == len(piv) == len(tids) == len(tlps) == len(trus):
        raise ValueError(f"project_batch: {len(src)} source sequences, {len(piv)} pivot "
                         f"sequences, {len(tids)} / {len(tlps)} top-K arrays and {len(trus)} "
                         "true log-probability arrays: the lists differ in length")
    ctx = _project_context(src_vocab, pivot_vocab)

    def one(i):
        try:
            args = _project_args(src[i], piv[i], tids[i], tlps[i], trus[i])
            return _project_one(ctx, args, k, details)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"sequence {i}: {exc}") from None

    return _run_batch(one, len(src), threads, "project", progress)


def projection_fidelity(projected, pivot_loss_masks):
    """The figures a projection run reports, over supervised pivot positions (position j is
    supervised when pivot token j + 1 is, ``loss_mask[j + 1]``): ``top1_correct`` (share whose
    largest entry is the pivot's true next token), ``exact`` / ``prefix`` / ``fallback``
    (shares by resolution) and ``mean_gold_logprob`` (over resolved positions), with the
    counts. ``projected``: :class:`Projected` per sequence (with their pivot ids)."""
    n = correct = n_gold = 0
    by = np.zeros(4, np.int64)
    gold_sum = 0.0
    for (p, pivot_ids), mask in zip(projected, pivot_loss_masks):
        mask = np.asarray(mask)
        pivot_ids = np.asarray(pivot_ids)
        sup = np.zeros(len(pivot_ids), bool)
        sup[:-1] = mask[1:] > 0
        if not sup.any():
            continue
        offs = p.dists.offsets
        has = np.diff(offs) > 0
        top = np.full(len(pivot_ids), -1, np.int64)
        top[has] = p.dists.ids[offs[:-1][has]]
        nxt = np.append(pivot_ids[1:], -1)
        n += int(sup.sum())
        correct += int((sup & (top == nxt)).sum())
        by += np.bincount(p.resolution[sup], minlength=4)[:4]
        g = p.gold_logprob[sup]
        g = g[np.isfinite(g)]
        n_gold += len(g)
        gold_sum += float(g.astype(np.float64).sum())
    share = (lambda x: float(x) / n) if n else (lambda x: float("nan"))
    return {"n_supervised": n, "top1_correct": share(correct), "exact": share(by[0]),
            "prefix": share(by[1]), "fallback": share(by[2]),
            "mean_gold_logprob": gold_sum / n_gold if n_gold else float("nan"),
            "n_resolved": n_gold}


def combine_fidelity(a, b):
    """The figures of two disjoint sets of sequences, from each set's figures."""
    n = a["n_supervised"] + b["n_supervised"]
    r = a["n_resolved"] + b["n_resolved"]
    out = {"n_supervised": n, "n_resolved": r}
    for key in ("top1_correct", "exact", "prefix", "fallback"):
        out[key] = sum(x[key] * x["n_supervised"] for x in (a, b) if x["n_supervised"]) / n \
            if n else float("nan")
    out["mean_gold_logprob"] = sum(x["mean_gold_logprob"] * x["n_resolved"] for x in (a, b)
                                   if x["n_resolved"]) / r if r else float("nan")
    return {k: out[k] for k in a}


def levenshtein(a, b):
    """Edit distance between two strings over code points (the C kernel, for checks)."""
    return _C.levenshtein(a, b)


__all__ = ["Alignment", "AlignmentCounts", "Distributions", "Projected", "Ragged", "align",
           "align_batch", "align_distributions", "align_distributions_batch", "levenshtein",
           "combine_fidelity", "project", "project_batch", "projection_fidelity", "vocab_map"]
