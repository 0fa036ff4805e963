"""What the two front doors of the fusion loss share: ``fusechat.loss`` (NumPy arrays) and
``fusechat.torch`` (torch tensors) differ only in how they hold arrays. Here: the defaults
(the C core's own, read once from ``fc_fusion_loss_opts_init``), the option encoding of the
C/CUDA entry points, the shape checks of sparse targets and of top-k calls, the HF label
shift and the top-k result.
"""
import math
from dataclasses import dataclass

from . import _C

_DEFAULTS = _C.fusion_loss_defaults()
LM_WEIGHT = _DEFAULTS["lm_weight"]  # the gold CE's weight (FuseChat's lm_loss_weight)
KINDS = {"ce": 0, "kl": 1}
REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}
REDUCE_NORMALIZER = 3


def loss_options(lm_weight=LM_WEIGHT, temperature=1.0, kind="ce", reduction="mean",
                 normalizer=None, ignore_index=-100, validate=True, threads=0):
    """The keyword arguments of the C entry points, checked and mapped to their codes."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected 'ce' or 'kl'")
    if normalizer is not None:
        if reduction not in ("mean", "sum"):
            raise ValueError("normalizer replaces reduction='mean'; it cannot go with "
                             f"reduction={reduction!r}")
        red = REDUCE_NORMALIZER
    elif reduction in REDUCTIONS:
        red = REDUCTIONS[reduction]
    else:
        raise ValueError(f"reduction={reduction!r}: expected 'mean', 'sum' or 'none'")
    if isinstance(validate, str) and validate != "strict":
        raise ValueError(f"validate={validate!r}: expected True, False or 'strict'")
    return dict(lm_weight=float(lm_weight), temperature=float(temperature), kind=KINDS[kind],
                reduction=red, normalizer=float(normalizer) if normalizer is not None else 1.0,
                ignore_index=int(ignore_index),
                validate=2 if validate == "strict" else int(bool(validate)),
                threads=int(threads))


def sparse_present(ids, values, name):
    """Whether a sparse (ids, values) pair is given (both) or not (neither)."""
    if ids is None and values is None:
        return False
    if ids is None or values is None:
        raise ValueError(f"{name}_ids and {name}_values go together")
    return True


def sparse_rows(ids_shape, values_shape, n, name):
    """(rows, K) of a sparse pair of shape [..., K] whose rows must match the logits' n."""
    ids_shape, values_shape = tuple(ids_shape), tuple(values_shape)
    if ids_shape != values_shape or len(ids_shape) < 1:
        raise ValueError(f"{name}_ids {ids_shape} and {name}_values {values_shape} must have "
                         "the same shape [..., K]")
    rows = math.prod(ids_shape[:-1])  # not reshape(-1, k): K = 0 leaves -1 undetermined
    if rows != n:
        raise ValueError(f"{name}_ids has {rows} rows, logits have {n}")
    return rows, ids_shape[-1]


def shift_labels_into(labels, out):
    """HF causal-LM shift into ``out`` (filled with ignore_index): position t is labelled
    with the token at t+1, the last position of each sequence keeps ignore_index (the rows
    of ``logits[..., :-1, :]`` against ``labels[..., 1:]``, as transformers' ForCausalLMLoss)."""
    out[..., :-1] = labels[..., 1:]
    return out


def check_k(k, v):
    k = int(k)
    if not 1 <= k <= v:
        raise ValueError(f"k = {k} must be in [1, V = {v}]")
    return k


@dataclass
class TopK:
    """ids int32 [N, k] and logits float32 [N, k] sorted descending (ties: lower id first);
    token_ce float32 [N] (0 where ignored); seq_ce float32 [S] mean CE over each sequence's
    supervised tokens and seq_has uint8 [S] (0 = no supervised token; seq_ce is then 0)."""
    ids: object
    logits: object
    token_ce: object
    seq_ce: object
    seq_has: object


def topk_buffers(empty, n, k, s, labels, seq_offsets):
    """The output buffers of topk_ce: ``empty(shape, dtype_name)`` allocates one."""
    return (empty((n, k), "int32"), empty((n, k), "float32"),
            empty((n,), "float32") if labels else None,
            empty((s,), "float32") if seq_offsets else None,
            empty((s,), "uint8") if seq_offsets else None)


def topk_result(ids, vals, tce, sce, shas, lead, k):
    """The TopK of topk_ce's buffers, with the logits' leading dimensions."""
    return TopK(ids.reshape(*lead, k), vals.reshape(*lead, k),
                None if tce is None else tce.reshape(lead), sce, shas)
