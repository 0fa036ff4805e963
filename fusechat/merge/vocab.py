"""Vocabularies for ``tokenizer_source`` (docs/merging.md, "Tokenizers"; mergekit's
tokenizer/build.py + embed.py semantics).

With ``tokenizer_source`` set, embedding rows are matched by token string, not by row index:

1. every model's vocabulary is read from its ``tokenizer.json`` (model vocabulary plus added
   tokens) and stripped to the ids below its ``config.json`` ``vocab_size``;
2. the output vocabulary is the base's (``base``), another model's (a path), or the base's
   followed by every other model's tokens it lacks, in config order (``union``);
3. for each model, ``perm[new_id]`` is its row of that token or -1;
4. every embedding-like tensor (embed_tokens, lm_head) of every model is re-laid out in the
   output vocabulary before the merge method runs: a model that has the token gives its own
   row; one that lacks it gets the default row: the base's if the base has the token, else the
   row of the only model that has it, else the mean over the models that have it, else zeros
   (with a warning).

When every model already has the output vocabulary in the same order, nothing is permuted.
"""
import json
import logging
import os

import numpy as np

from ..errors import ConfigError
from .lora import folder_of

LOG = logging.getLogger(__name__)


def read_vocab(folder):
    """token -> id from folder/tokenizer.json, limited to config.json's vocab_size (a LoRA
    reference reads its base folder's)."""
    folder = folder_of(folder)
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise ConfigError(f"tokenizer_source needs {path} (a Hugging Face fast tokenizer) to "
                          "match embedding rows by token")
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    vocab = tok.get("model", {}).get("vocab")
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        vocab = {piece: i for i, (piece, _) in enumerate(vocab)}
    if not isinstance(vocab, dict):
        raise ConfigError(f"{path}: no model vocabulary found")
    vocab = dict(vocab)
    for t in tok.get("added_tokens") or []:
        vocab[t["content"]] = t["id"]
    limit = _vocab_size(folder)
    if limit is not None:
        vocab = {k: v for k, v in vocab.items() if v < limit}
    return vocab


def _vocab_size(folder):
    path = os.path.join(folder, "config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            v = json.load(f).get("vocab_size")
        return v if isinstance(v, int) else None
    return None


class VocabPlan:
    """The output vocabulary and each model's permutation."""

    def __init__(self, source, base, paths, tokens=None, pad_to_multiple_of=None):
        self.vocabs = {p: read_vocab(p) for p in paths}
        ref = base or paths[0]
        if source in ("base", "union"):
            donor = ref
        else:
            donor = source
            if donor not in self.vocabs:
                self.vocabs[donor] = read_vocab(donor)
        out = sorted(self.vocabs[donor], key=self.vocabs[donor].get)
        if [self.vocabs[donor][t] for t in out] != list(range(len(out))):
            raise ConfigError(f"{donor}: tokenizer ids are not 0..{len(out) - 1} without gaps; "
                              "cannot build the output vocabulary")
        self.added = []
        if source == "union":
            have = set(out)
            for p in paths:
                for tok in sorted(self.vocabs[p], key=self.vocabs[p].get):
                    if tok not in have:
                        have.add(tok)
                        out.append(tok)
                        self.added.append(tok)
        self.tokens = out
        self.base = base
        self.paths = paths
        self.perm = {}
        for p in paths:
            v = self.vocabs[p]
            self.perm[p] = np.array([v.get(t, -1) for t in out], dtype=np.int64)
        self.donor = folder_of(donor)
        self.rows = len(out)
        if pad_to_multiple_of:
            self.rows = -(-len(out) // pad_to_multiple_of) * pad_to_multiple_of
        self.overrides = self._overrides(tokens or {})

    def _overrides(self, tokens):
        """[(output row, model path or None for zero, its row, force)] of tokenizer.tokens,
        every token and source row checked."""
        index = {t: i for i, t in enumerate(self.tokens)}
        out = []
        for token, ov in tokens.items():
            if token not in index:
                raise ConfigError(f"{ov.where}: token {token!r} is not in the output vocabulary "
                                  f"({len(self.tokens)} tokens of {self.donor}"
                                  f"{' and the union' if self.added else ''}); a per-token "
                                  "override names a token the merged tokenizer has")
            src = ov.source
            if src.kind == "zero":
                out.append((index[token], None, -1, ov.force))
                continue
            if src.model not in self.vocabs:
                raise ConfigError(f"{ov.where}: model {src.model} is not one of the models of "
                                  f"this merge ({', '.join(self.paths)}); a token's source must "
                                  "be one of them")
            vocab = self.vocabs[src.model]
            if src.token_id is not None:
                row = src.token_id
                if row >= max(vocab.values(), default=-1) + 1:
                    raise ConfigError(f"{ov.where}: token_id {row} is outside the vocabulary of "
                                      f"{src.model} ({len(vocab)} tokens)")
            elif src.token in vocab:
                row = vocab[src.token]
            else:
                raise ConfigError(f"{ov.where}: model {src.model} has no token {src.token!r} "
                                  "(the source of a token must have it)")
            out.append((index[token], src.model, row, ov.force))
        return out

    def identity_for(self, path, rows):
        perm = self.perm[path]
        return (len(perm) == rows == self.rows and not self.overrides
                and np.array_equal(perm, np.arange(rows)))

    def permute(self, name, arrays):
        """arrays: model path -> its [rows, hidden] matrix. Returns path -> float32 matrix in
        the output vocabulary, with default rows for the tokens a model lacks."""
        n_out = len(self.tokens)
        hidden = next(iter(arrays.values())).shape[1]
        have = np.stack([self.perm[p] >= 0 for p in self.paths])  # [models, n_out]
        count = have.sum(0)
        default = np.zeros((n_out, hidden), np.float32)
        acc = np.zeros((n_out, hidden), np.float64)
        for k, p in enumerate(self.paths):
            rows = self.perm[p]
            ok = rows >= 0
            src = np.asarray(arrays[p], np.float32)
            if ok.any() and rows[ok].max() >= src.shape[0]:
                raise ConfigError(f"tensor {name!r}: model {p} has {src.shape[0]} rows but its "
                                  f"tokenizer uses id {int(rows[ok].max())}")
            acc[ok] += src[rows[ok]]
        multi = count > 0
        default[multi] = (acc[multi] / count[multi, None]).astype(np.float32)
        if self.base in self.perm:
            b = self.perm[self.base]
            ok = b >= 0
            default[ok] = np.asarray(arrays[self.base], np.float32)[b[ok]]
        emb = {}
        for i, p, row, force in self.overrides:
            if p is None:
                emb[i] = np.zeros(hidden, np.float32)
            else:
                src = arrays[p] if p in arrays else None
                if src is None or row >= src.shape[0]:
                    raise ConfigError(f"tensor {name!r}: the override of token "
                                      f"{self.tokens[i]!r} reads row {row} of model {p}, which "
                                      "has no such row")
                emb[i] = np.asarray(src[row], np.float32)
            if not force:  # the row of the models that lack the token
                default[i] = emb[i]
                count[i] = max(count[i], 1)
        if (count == 0).any():
            missing = [self.tokens[i] for i in np.flatnonzero(count == 0)[:5]]
            LOG.warning("tensor %s: %d output tokens are in no model (e.g. %s); their rows are "
                        "zero", name, int((count == 0).sum()), missing)
        out = {}
        for p in self.paths:
            rows = self.perm[p]
            ok = rows >= 0
            m = default.copy()
            m[ok] = np.asarray(arrays[p], np.float32)[rows[ok]]
            for i, _, _, force in self.overrides:
                if force:  # every model's row: the merge of equal rows gives it back
                    m[i] = emb[i]
            if self.rows > n_out:  # padding rows: the mean of the model's rows, as mergekit
                m = np.concatenate([m, np.broadcast_to(m.mean(0, dtype=np.float32),
                                                       (self.rows - n_out, hidden))])
            out[p] = m
        return out

    def write_tokenizer(self, out_dir):
        """tokenizer.json of the output vocabulary: the donor's, plus the union's tokens as
        added tokens (as mergekit does). Other tokenizer files are copied by the engine."""
        if not self.added:
            return
        path = os.path.join(self.donor, "tokenizer.json")
        with open(path, encoding="utf-8") as f:
            tok = json.load(f)
        added = tok.setdefault("added_tokens", [])
        start = len(self.tokens) - len(self.added)
        for i, t in enumerate(self.added):
            added.append({"id": start + i, "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": True, "special": False})
        with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tok, f, ensure_ascii=False)
