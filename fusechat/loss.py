"""Stage-1 kernels on NumPy arrays: the fused sparse fusion loss and top-K extraction.

``fusion_loss`` computes, per row t with a gold label y_t (or ``ignore_index``) and a sparse
target of at most K (pivot id, logit) pairs (ids padded with -1)::

    q      = softmax(z_t)                                  (full vocabulary, float32)
    p      = softmax(values / temperature) over the row's entries
    fusion = -sum_k p_k log q[id_k]            kind="ce"   (FuseChat's default)
           =  sum_k p_k (log p_k - log q[id_k]) kind="kl"
    loss_t = lm_weight * (-log q[y_t]) + (1 - lm_weight) * fusion

and the gradient with respect to the logits in the same call (``q - lm_weight * e_y -
(1 - lm_weight) * scatter(p)`` times the reduction's scale), rounded once to the logits'
dtype; no dense V-sized target is built. See docs/losses.md. For torch tensors and autograd
use :mod:`fusechat.torch`.
"""
from dataclasses import dataclass

import numpy as np

from ._loss_common import (LM_WEIGHT, TopK, check_k, loss_options, shift_labels_into,
                           sparse_present, sparse_rows, topk_buffers, topk_result)

__all__ = ["LM_WEIGHT", "LossResult", "TopK", "fusion_loss", "hf_shift_labels", "loss_options",
           "topk_and_ce"]

_LOGIT_DTYPES = ("float32", "float16", "bfloat16")
_LOSS_DTYPES = _LOGIT_DTYPES + ("float64",)  # float64: exact, for gradient checks


def _logits_2d(logits, dtypes=_LOGIT_DTYPES, name="logits"):
    if not isinstance(logits, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray (use fusechat.torch for tensors)")
    if logits.dtype.name not in dtypes:
        raise TypeError(f"{name}: dtype {logits.dtype} is not {', '.join(dtypes[:-1])} or "
                        f"{dtypes[-1]}")
    if logits.ndim < 2:
        raise ValueError(f"{name}: expected [..., V], got shape {logits.shape}")
    return np.ascontiguousarray(logits).reshape(-1, logits.shape[-1])


def _sparse(ids, values, n, name):
    """(ids int32 [N, K], values float32 [N, K]) or (None, None)."""
    if not sparse_present(ids, values, name):
        return None, None
    ids, values = np.asarray(ids), np.asarray(values)
    rows, k = sparse_rows(ids.shape, values.shape, n, name)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name}_ids: dtype {ids.dtype} is not an integer type")
    ids = ids.reshape(rows, k)
    big = (ids < np.iinfo(np.int32).min) | (ids > np.iinfo(np.int32).max)
    if big.any():  # would wrap in the int32 cast: report the original value
        row = int(np.argmax(big.any(axis=1)))
        raise ValueError(f"fusion_loss: {name}_ids row {row}: id {ids[row][big[row]][0]} is "
                         "outside the vocabulary and not -1 (padding)")
    return (np.ascontiguousarray(ids, dtype=np.int32),
            np.ascontiguousarray(values.reshape(rows, k), dtype=np.float32))


def _labels(labels, n):
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels: dtype {labels.dtype} is not an integer type")
    labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries, logits have {n} rows")
    return labels


@dataclass
class LossResult:
    """loss: float (the reduced loss; for reduction='none' the row losses' sum);
    row_loss: float64 [N] per-row losses (unreduced); grad: [N, V] in the logits' dtype
    (None if not requested; the logits array itself with inplace=True); n_supervised: rows
    with a label != ignore_index."""
    loss: float
    row_loss: np.ndarray
    grad: np.ndarray
    n_supervised: int


def fusion_loss(logits, labels, target_ids=None, target_values=None, *, fallback_ids=None,
                fallback_values=None, lm_weight=LM_WEIGHT, temperature=1.0, kind="ce",
                reduction="mean", normalizer=None, ignore_index=-100, grad=True, inplace=False,
                validate=True, threads=0):
    """The FuseChat loss and its gradient in one fused pass (C, multithreaded, GIL released).

    logits: [..., V] float32/float16/bfloat16 (float64 too: exact, slow; for gradient
    checks) - rows are all leading dims. labels: [...] ints,
    the gold token each row predicts, or ignore_index. target_ids/target_values: [..., K] the
    sparse target (ids -1 = padding; values are logits, renormalised over the row's entries
    at ``temperature``), or None for none. A row whose target is empty uses
    fallback_ids/fallback_values ([..., K2]) if non-empty there, else the gold one-hot.
    reduction: 'mean' (over supervised rows), 'sum' or 'none'; ``normalizer=n`` divides the
    sum by n instead (a global token count under gradient accumulation).
    grad=False skips the gradient; inplace=True writes it over ``logits`` (which must then be
    writable and C-contiguous). Returns a LossResult.
    """
    from . import _C

    z = _logits_2d(logits, _LOSS_DTYPES)
    n, v = z.shape
    y = _labels(labels, n)
    tids, tvals = _sparse(target_ids, target_values, n, "target")
    fids, fvals = _sparse(fallback_ids, fallback_values, n, "fallback")
    opts = loss_options(lm_weight, temperature, kind, reduction, normalizer, ignore_index,
                        validate, threads)
    if inplace:
        if not logits.flags.c_contiguous:
            raise ValueError("inplace=True needs C-contiguous logits")
        if not z.flags.writeable:
            raise ValueError("inplace=True: logits is read-only")
        g = z
    else:
        g = np.empty_like(z) if grad else None
    row_loss = np.empty(n, dtype=np.float64)
    loss, nsup = _C.fusion_loss(z, y, tids, tvals, fids, fvals, g, row_loss, **opts)
    if g is not None:
        g = g.reshape(logits.shape) if not inplace else logits
    return LossResult(loss, row_loss, g, nsup)


def hf_shift_labels(labels, ignore_index=-100):
    """HF causal-LM shift: the label of position t is the token at t+1, the last position of
    each sequence gets ignore_index (transformers' ForCausalLMLoss pads then drops one)."""
    labels = np.asarray(labels)
    return shift_labels_into(labels, np.full(labels.shape, ignore_index, dtype=np.int64))


def topk_and_ce(logits, labels=None, k=10, *, seq_offsets=None, shift=False, ignore_index=-100,
                threads=0):
    """Top-k ids and logits per row and the token/sequence CE, in one pass over the logits.

    logits: [N, V] or [B, L, V] (float32/float16/bfloat16). labels: [N] / [B, L] (the token
    each row predicts; with shift=True, HF-style labels shifted here) or None. Sequences are
    the B rows of a 3-D input, or ``seq_offsets`` [S+1] row ranges for 2-D input.
    """
    from . import _C

    z = _logits_2d(logits)
    n = z.shape[0]
    if labels is not None and shift:
        labels = hf_shift_labels(labels, ignore_index)
    y = _labels(labels, n) if labels is not None else None
    if seq_offsets is None and logits.ndim == 3 and y is not None:
        seq_offsets = np.arange(logits.shape[0] + 1, dtype=np.int64) * logits.shape[1]
    so = None if seq_offsets is None else np.ascontiguousarray(seq_offsets, dtype=np.int64)
    if so is not None and y is None:
        raise ValueError("seq_offsets needs labels")
    s = 0 if so is None else len(so) - 1
    k = check_k(k, z.shape[1])
    out = topk_buffers(np.empty, n, k, s, y is not None, so is not None)
    _C.topk_ce(z, y, k, int(ignore_index), so, *out, threads)
    return topk_result(*out, logits.shape[:-1], k)
