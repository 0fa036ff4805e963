"""Fusion rules of stage 1 (method.md 6): combine the pivot's and the aligned sources' sparse
distributions into one training target.

Distributions are ragged (CSR): a :class:`SparseDists` holds, for T positions, ``indptr``
[T+1] int64 and the entries ``ids`` [nnz] int32 (pivot vocabulary) and ``values`` [nnz]
float32 (logits). Every model's distributions are aligned to the pivot's positions, and
sequences are position ranges ``seq_offsets`` [S+1].

- :func:`min_ce` (FuseChat): per sequence, the distributions of the model with the lowest CE
  (model 0, the pivot, wins ties; compared in float32, where the reference compared
  exp(-CE) in bf16, which ties far more often). Empty positions of the chosen model take the
  pivot's list, as the reference collator does.
- :func:`avg_ce` (FuseLLM): per sequence, weights softmax(exp(-CE_m)) over the models, and
  the target sum_m w_m softmax(values_m / T) on the union of the supports, returned as
  log-probabilities (so the loss, at temperature 1, renormalises it to itself).

``level="token"`` applies either rule per position with per-position CE ([T] per model)
instead of per sequence. The work runs in C (csrc/core/fuse.c).
"""
from dataclasses import dataclass

import numpy as np

LEVELS = {"sequence": 0, "token": 1}


@dataclass
class SparseDists:
    """Ragged per-position sparse distributions: positions t has entries
    ids[indptr[t]:indptr[t+1]] with values (logits) at the same indices."""
    indptr: np.ndarray
    ids: np.ndarray
    values: np.ndarray

    def __post_init__(self):
        self.indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int32)
        self.values = np.ascontiguousarray(self.values, dtype=np.float32)
        if self.indptr.ndim != 1 or len(self.indptr) < 1:
            raise ValueError("indptr must be 1-D with T+1 entries")
        if self.ids.shape != self.values.shape or self.ids.ndim != 1:
            raise ValueError(f"ids {self.ids.shape} and values {self.values.shape} must be 1-D "
                             "of the same length")

    @property
    def n_pos(self):
        return len(self.indptr) - 1

    @classmethod
    def from_padded(cls, ids, values):
        """From [T, K] arrays padded with id -1 (the loss's layout)."""
        ids, values = np.asarray(ids), np.asarray(values)
        keep = ids != -1
        indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
        return cls(indptr, ids[keep], values[keep])

    def to_padded(self, k=None):
        """[T, k] ids (padded with -1) and values (padded with 0); k defaults to the longest
        list. Lists longer than k keep their first k entries (the highest, when sorted)."""
        lens = np.diff(self.indptr)
        k = int(lens.max(initial=0)) if k is None else int(k)
        ids = np.full((self.n_pos, k), -1, np.int32)
        vals = np.zeros((self.n_pos, k), np.float32)
        col = np.arange(len(self.ids)) - np.repeat(self.indptr[:-1], lens)
        rows = np.repeat(np.arange(self.n_pos), lens)
        keep = col < k
        ids[rows[keep], col[keep]] = self.ids[keep]
        vals[rows[keep], col[keep]] = self.values[keep]
        return ids, vals


def _prepare(dists, ce, seq_offsets, level, valid=None):
    if level not in LEVELS:
        raise ValueError(f"level={level!r}: expected 'sequence' or 'token'")
    dists = list(dists)
    if not dists:
        raise ValueError("need at least the pivot's distributions")
    if len(ce) != len(dists):
        raise ValueError(f"{len(dists)} models but {len(ce)} CE arrays")
    ce = [np.array(c, dtype=np.float32).reshape(-1) for c in ce]
    if valid is not None:  # e.g. topk_and_ce's seq_has: a CE of 0/0 must never win
        if len(valid) != len(ce):
            raise ValueError(f"{len(ce)} CE arrays but {len(valid)} valid masks")
        for c, ok in zip(ce, valid):
            c[~np.asarray(ok, dtype=bool).reshape(-1)] = np.nan
    so = None
    if LEVELS[level] == 0:
        if seq_offsets is None:
            raise ValueError("level='sequence' needs seq_offsets")
        so = np.ascontiguousarray(seq_offsets, dtype=np.int64)
    args = ([d.indptr for d in dists], [d.ids for d in dists], [d.values for d in dists], ce)
    return dists, args, so


def min_ce(dists, ce, seq_offsets=None, *, level="sequence", fill_empty=True, valid=None):
    """MinCE. dists: [pivot, source1, ...] SparseDists on the same T positions; ce: per model
    the CE per sequence ([S], level='sequence') or per position ([T], level='token'); NaN
    (e.g. a sequence with no supervised token) never wins unless all are NaN (then the pivot).
    valid: optional per-model masks like ``topk_and_ce``'s ``seq_has``; False marks a CE as
    missing (NaN), so a sequence without supervised tokens (CE reported as 0) cannot win.
    Returns (fused SparseDists, choice int32 [T]: the model whose list each position took)."""
    from . import _C

    dists, args, so = _prepare(dists, ce, seq_offsets, level, valid)
    n_pos = dists[0].n_pos
    choice = np.empty(n_pos, np.int32)
    _C.fuse_min_ce(*args, so, LEVELS[level], bool(fill_empty), choice)
    indptr = np.empty(n_pos + 1, np.int64)
    _C.fuse_gather(*args[:3], choice, indptr, None, None)
    ids = np.empty(indptr[-1], np.int32)
    vals = np.empty(indptr[-1], np.float32)
    _C.fuse_gather(*args[:3], choice, indptr, ids, vals)
    return SparseDists(indptr, ids, vals), choice


def avg_ce(dists, ce, seq_offsets=None, *, level="sequence", temperature=1.0, valid=None):
    """AvgCE (FuseLLM). Same inputs as :func:`min_ce`. Per group, models with a finite (and
    valid) CE and a non-empty list at the position take part. Returns SparseDists whose values are the
    log-probabilities of the mixture, each list sorted by probability (ties: lower id)."""
    from . import _C

    dists, args, so = _prepare(dists, ce, seq_offsets, level, valid)
    n_pos = dists[0].n_pos
    cap = sum(int(d.indptr[-1]) for d in dists)
    indptr = np.empty(n_pos + 1, np.int64)
    ids = np.empty(cap, np.int32)
    logp = np.empty(cap, np.float32)
    _C.fuse_avg_ce(*args, so, LEVELS[level], float(temperature), indptr, ids, logp)
    nnz = int(indptr[-1])
    return SparseDists(indptr, ids[:nnz].copy(), logp[:nnz].copy())
