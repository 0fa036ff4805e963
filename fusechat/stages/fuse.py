"""The fuse stage: the pivot's own store and aligned source stores -> one "fused" store in the
pivot's ids, the training target (``fusechat fuse``, docs/pipeline.md).

- ``rule="mince"`` (FuseChat, method.md 6-7): per sequence the distributions of the model with
  the lowest sequence CE; the pivot wins ties (compared in float32), a NaN CE never wins and
  neither does a model on a sequence without supervised tokens. Positions where the chosen
  source's aligned list is EMPTY take the pivot's distribution (method.md 7.1).
- ``rule="avgce"`` (FuseLLM): weights softmax(exp(-CE_m)) and the mixture of the models'
  renormalised top-K, stored as log-probabilities (softmax at temperature 1 gives it back).

``level="token"`` applies the rule per position with per-position CE. Samples are matched by
``sample_index``; samples missing from any store are dropped and counted. The manifest's
``info`` records the models, the rule and, per sample, which model won (``winner``, index in
``models``; at token level the positions won per model). ``topk_lognorm`` is that of the store
whose values each position took (MinCE; NaN where it keeps none), 0 for AvgCE's
log-probabilities.
"""
import logging
import os

import numpy as np

from .align import finished, store_identity
from ..fuse import LEVELS, SparseDists, avg_ce, min_ce
from ..progress import tqdm
from .store import TopKStoreWriter, open_store

LOG = logging.getLogger(__name__)

RULES = ("mince", "avgce")
CHUNK = 512


def _rows_all(piv, aligned):
    """Rows in each store of the sample indices present in every store, in the pivot's order."""
    keep = piv.sample_indices()
    for a in aligned:
        keep = keep[np.isin(keep, a.sample_indices())]
        if len(piv) and len(a) and not len(keep):
            raise ValueError(f"{piv.path} and {a.path}: no sample_index in common (rule "
                             "no_common_samples)")
    rows = []
    for s in [piv] + aligned:
        idx = s.sample_indices()
        if len(np.unique(idx)) != len(idx):
            raise ValueError(f"{s.path}: a sample_index occurs twice (rule duplicate_sample)")
        if len(idx) > len(keep):
            LOG.warning("%s: %d of %d samples are missing from another store; dropped",
                        s.path, len(idx) - len(keep), len(idx))
        pos = {int(v): i for i, v in enumerate(idx)}
        rows.append(np.array([pos[int(v)] for v in keep], dtype=np.int64))
    return rows


def _open_all(pivot_store, aligned_stores):
    piv = open_store(pivot_store) if isinstance(pivot_store, (str, os.PathLike)) else pivot_store
    if piv.kind != "extracted":
        raise ValueError(f"{piv.path}: kind {piv.kind!r}, expected the pivot's 'extracted' "
                         "store (rule bad_kind)")
    aligned = []
    for a in aligned_stores:
        a = open_store(a) if isinstance(a, (str, os.PathLike)) else a
        if a.fingerprint != piv.fingerprint:
            raise ValueError(f"{a.path}: aligned to tokenizer {a.fingerprint[:16]}..., but the "
                             f"pivot store {piv.path} has {piv.fingerprint[:16]}... "
                             "(rule tokenizer_mismatch)")
        if a.kind not in ("aligned", "extracted"):
            raise ValueError(f"{a.path}: kind {a.kind!r}; expected an 'aligned' store (or an "
                             "extracted store of the pivot's tokenizer) (rule bad_kind)")
        aligned.append(a)
    if not aligned:
        raise ValueError("fuse needs at least one aligned source store")
    return piv, aligned


def _joint_vocab(stores):
    """The fused store's vocab_size (it sets the id dtype): the largest of the inputs', as
    its ids come from all of them; None (I32 ids) when one of them does not record it."""
    sizes = [s.manifest.get("vocab_size") for s in stores]
    return None if None in sizes else max(sizes)


def _padded_dists(samples):
    ids = np.concatenate([np.asarray(s.topk_ids) for s in samples])
    vals = np.concatenate([np.asarray(s.topk_logits, np.float32) for s in samples])
    return ids, vals


def _lognorms(samples):
    """The samples' per-position log-normalisers, concatenated (NaN where a store keeps none:
    made before format 1.3, or aligned by the rules)."""
    return np.concatenate([np.full(len(s.input_ids), np.nan, np.float32)
                           if s.topk_lognorm is None else np.asarray(s.topk_lognorm, np.float32)
                           for s in samples])


def fuse_stores(pivot_store, aligned_stores, out, *, rule="mince", level="sequence",
                overwrite=False, quiet=False):
    """Write the fused store at ``out`` and return ``out`` (see the module docs)."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: expected one of {RULES}")
    if level not in LEVELS:
        raise ValueError(f"level={level!r}: expected one of {sorted(LEVELS)}")
    out = os.fspath(out)
    piv, aligned = _open_all(pivot_store, list(aligned_stores))
    settings = {"stores": [store_identity(s) for s in [piv] + aligned], "rule": rule,
                "level": level}
    if finished(out, settings, overwrite):
        return out
    stores = [piv] + aligned
    rows = _rows_all(piv, aligned)
    n = len(rows[0])
    ks = [s.k for s in stores]
    k_out = max(ks) if rule == "mince" else sum(ks)
    models = [s.model for s in stores]
    wins = np.zeros(len(stores), np.int64)
    winner = []
    info = {"settings": settings, "rule": rule, "level": level, "models": models,
            "n_pivot": len(piv), "n_dropped": len(piv) - n,
            "values": "logits" if rule == "mince" else "log-probabilities"}
    writer = TopKStoreWriter(out, k=k_out, kind="fused",
                             logits_dtype="F32" if rule == "avgce" else
                             piv.manifest["dtypes"]["topk_logits"],
                             model=piv.model, tokenizer_fingerprint=piv.fingerprint,
                             vocab_size=_joint_vocab(stores), info=info,
                             overwrite=overwrite)
    info = writer.meta["info"]  # the manifest's own dict: filled in as we go
    with writer, tqdm(total=n, desc=f"fuse ({rule})", unit="seq",
                      disable=True if quiet else None) as bar:
        for b in range(0, n, CHUNK):
            group = [[s[int(r)] for r in rs[b:b + CHUNK]] for s, rs in zip(stores, rows)]
            _fuse_chunk(group, rule, level, k_out, writer, wins, winner)
            bar.update(len(group[0]))
        if rule == "mince":
            info["wins"] = {f"{i}:{m}": int(w) for i, (m, w) in enumerate(zip(models, wins))}
            info["wins_unit"] = "sequences" if level == "sequence" else "positions"
            if level == "sequence":
                info["winner"] = winner
    LOG.info("fused %d samples (%s, %s) into %s: wins %s", n, rule, level, out,
             info.get("wins"))
    return out


def _fuse_chunk(group, rule, level, k_out, writer, wins, winner):
    pivots = group[0]
    lens = [len(p.input_ids) for p in pivots]
    offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    for m, samples in enumerate(group[1:], 1):
        for p, s in zip(pivots, samples):
            if not np.array_equal(p.input_ids, s.input_ids):
                raise ValueError(f"sample {p.sample_index}: the input_ids of model {m}'s "
                                 "aligned store differ from the pivot's (aligned to another "
                                 "tokenization?) (rule position_mismatch)")
    padded = [_padded_dists(samples) for samples in group]
    dists = [SparseDists.from_padded(*pd) for pd in padded]
    # a sequence without supervised targets must not win: mark its CE missing for everyone
    has_sup = np.array([p.loss_mask[1:].any() for p in pivots], bool)
    if level == "sequence":
        ce = [np.array([s.seq_ce for s in samples], np.float32) for samples in group]
        valid = [has_sup] * len(group)
    else:
        ce = [np.concatenate([np.asarray(s.token_ce, np.float32) for s in samples])
              for samples in group]
        sup = np.concatenate([np.append(p.loss_mask[1:] > 0, False) for p in pivots])
        valid = [sup] * len(group)
    if rule == "mince":
        fused, choice = min_ce(dists, ce, offs, level=level, fill_empty=False, valid=valid)
        ids, vals = fused.to_padded(k_out)
        empty = ids[:, 0] < 0
        piv_ids, piv_vals = padded[0]
        kp = piv_ids.shape[1]
        ids[empty] = -1
        ids[empty, :kp] = piv_ids[empty]
        vals[empty] = 0
        vals[empty, :kp] = piv_vals[empty]
        # each position's values are one store's: so is its log-normaliser
        lns = np.stack([_lognorms(samples) for samples in group])
        lognorm = lns[choice, np.arange(len(choice))]
        lognorm[empty] = _lognorms(pivots)[empty]
        if level == "sequence":
            seq_choice = [int(choice[a]) if b > a else 0 for a, b in zip(offs[:-1], offs[1:])]
            winner.extend(seq_choice)
            np.add.at(wins, seq_choice, 1)
        else:
            np.add.at(wins, choice, 1)
            seq_choice = [0] * len(pivots)
    else:
        fused = avg_ce(dists, ce, offs, level=level, valid=valid)
        ids, vals = fused.to_padded(k_out)
        lognorm = np.zeros(len(ids), np.float32)  # the values are log-probabilities
        seq_choice = [0] * len(pivots)
    for i, p in enumerate(pivots):
        a, b = offs[i], offs[i + 1]
        w = group[seq_choice[i]][i]
        writer.add(p.sample_index, p.input_ids, p.loss_mask, ids[a:b], vals[a:b], w.token_ce,
                   w.seq_ce, topk_lognorm=lognorm[a:b])
