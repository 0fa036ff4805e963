"""Float64 twins of the stage-1 kernels, written from losses.md 1.5-1.7 and method.md 6-7,
the slow and obvious way: dense rows, one row at a time, no shared code with the C kernels.

fusion_loss_ref -> (loss, row_loss [N], grad [N, V]) for the reduced loss.
topk_ce_ref     -> (ids, vals, token_ce, seq_ce, seq_has).
min_ce_ref / avg_ce_ref -> fused per-position lists.
"""
import math

import numpy as np


def _log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    m = np.max(z)
    if not np.isfinite(m):
        return z - (m if m == -np.inf else np.nan)
    return z - (m + math.log(np.sum(np.exp(z - m))))


def _row_target(ids, vals, temperature):
    keep = [(int(i), float(v)) for i, v in zip(ids, vals) if i != -1]
    if not keep:
        return [], np.zeros(0)
    x = np.array([v for _, v in keep]) / temperature
    p = np.exp(x - x.max())
    return [i for i, _ in keep], p / p.sum()


def fusion_loss_ref(logits, labels, tids=None, tvals=None, fids=None, fvals=None, lm_weight=0.9,
                    temperature=1.0, kind="ce", reduction="mean", normalizer=None,
                    ignore_index=-100):
    z = np.asarray(logits, dtype=np.float64)
    n, v = z.shape
    row_loss = np.zeros(n)
    grad = np.zeros((n, v))
    for r in range(n):
        y = int(labels[r])
        if y == ignore_index:
            continue
        ids, p = _row_target(tids[r], tvals[r], temperature) if tids is not None else ([], [])
        if not ids and fids is not None:
            ids, p = _row_target(fids[r], fvals[r], temperature)
        if not ids:
            ids, p = [y], np.array([1.0])
        logq = _log_softmax(z[r])
        target = np.zeros(v)
        target[ids] = p
        fusion = -np.sum(p * logq[ids])
        if kind == "kl":
            fusion += np.sum(p[p > 0] * np.log(p[p > 0]))
        row_loss[r] = lm_weight * -logq[y] + (1 - lm_weight) * fusion
        onehot = np.zeros(v)
        onehot[y] = 1.0
        grad[r] = np.exp(logq) - lm_weight * onehot - (1 - lm_weight) * target
    nsup = int(np.sum(np.asarray(labels) != ignore_index))
    if normalizer is not None:
        scale = 1.0 / normalizer
    elif reduction == "mean":
        scale = 1.0 / nsup if nsup else 0.0
    else:
        scale = 1.0
    loss = row_loss.sum() * (1.0 if reduction == "none" else scale)
    return loss, row_loss, grad * scale


def topk_ce_ref(logits, labels, k, seq_offsets=None, ignore_index=-100):
    """Sort key: NaN largest, then value, ties by lower id (a stable sort on -key)."""
    z = np.asarray(logits, dtype=np.float64)
    n, v = z.shape
    ids = np.zeros((n, k), np.int64)
    vals = np.zeros((n, k))
    ce = np.zeros(n)
    for r in range(n):
        key = np.where(np.isnan(z[r]), np.inf, z[r])
        nan_first = np.isnan(z[r]).astype(np.int64)
        order = sorted(range(v), key=lambda i: (-nan_first[i], -key[i], i))[:k]
        ids[r] = order
        vals[r] = z[r][order]
        if labels is not None and labels[r] != ignore_index:
            ce[r] = -_log_softmax(z[r])[labels[r]]
    seq_ce = seq_has = None
    if seq_offsets is not None:
        s = len(seq_offsets) - 1
        seq_ce, seq_has = np.zeros(s), np.zeros(s, np.uint8)
        for i in range(s):
            rows = [r for r in range(seq_offsets[i], seq_offsets[i + 1])
                    if labels[r] != ignore_index]
            if rows:
                seq_has[i] = 1
                seq_ce[i] = np.mean([ce[r] for r in rows])
    return ids, vals, ce, seq_ce, seq_has


def _groups(level, seq_offsets, n_pos):
    if level == "sequence":
        return [range(seq_offsets[i], seq_offsets[i + 1]) for i in range(len(seq_offsets) - 1)]
    return [range(t, t + 1) for t in range(n_pos)]


def min_ce_ref(lists, ce, seq_offsets, level="sequence", fill_empty=True):
    """lists[m][t] = [(id, logit), ...]; ce[m][g]. Returns (fused lists, choice per pos)."""
    n_pos = len(lists[0])
    out, choice = [None] * n_pos, [0] * n_pos
    for g, rng in enumerate(_groups(level, seq_offsets, n_pos)):
        c = [np.float32(ce[m][g]) for m in range(len(lists))]
        finite = [m for m in range(len(lists)) if not np.isnan(c[m])]
        best = min(finite, key=lambda m: (c[m], m)) if finite else 0
        for t in rng:
            m = 0 if fill_empty and not lists[best][t] else best
            choice[t] = m
            out[t] = list(lists[m][t])
    return out, choice


def avg_ce_ref(lists, ce, seq_offsets, level="sequence", temperature=1.0):
    """Returns per position a dict id -> probability of the weighted mixture."""
    n_pos = len(lists[0])
    out = [None] * n_pos
    for g, rng in enumerate(_groups(level, seq_offsets, n_pos)):
        for t in rng:
            present = [m for m in range(len(lists))
                       if np.isfinite(np.float32(ce[m][g])) and lists[m][t]]
            mix = {}
            if present:
                r = np.array([math.exp(-float(np.float32(ce[m][g]))) for m in present])
                w = np.exp(r - r.max())
                w /= w.sum()
                for wm, m in zip(w, present):
                    x = np.array([val for _, val in lists[m][t]], dtype=np.float64) / temperature
                    p = np.exp(x - x.max())
                    p /= p.sum()
                    for (i, _), pi in zip(lists[m][t], p):
                        mix[i] = mix.get(i, 0.0) + wm * pi
            out[t] = mix
    return out
