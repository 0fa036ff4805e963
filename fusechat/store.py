"""The TopK store: a model's sparse next-token distributions over a chat dataset.

A store is a folder (docs/formats.md, decisions.md section 3)::

    manifest.json               format, version, kind, model, tokenizer fingerprint, K,
                                dtypes, counts, the shard list
    shard-00000.safetensors     one or more shards, each holding whole samples:
        offsets      int64  [n+1]   sample i is tokens offsets[i]:offsets[i+1]
        input_ids    int32  [T]
        loss_mask    uint8  [T]     1 where the token is a supervised target
        topk_ids     int32  [T, K]  ids sorted by logit, descending; -1 pads short rows
        topk_logits  f16|f32[T, K]  raw logits (no temperature, no softmax)
        token_ce     f32    [T]     CE of the token at t+1 predicted at t (0 if unsupervised)
        seq_ce       f32    [n]     mean token CE over supervised targets (NaN if none)
        sample_index int64  [n]     the row of the sample in the source dataset

Sequences are stored unpadded: the reference pads every sample to 2048 positions. Position
t's distribution predicts token t+1. ``kind`` says what the distributions are: "extracted"
(a model's own, in its own ids), "aligned" (a source's, mapped to the pivot's ids and
positions) or "fused" (the per-sequence choice that training reads).

Shards are written and memory-mapped through fusechat.safetensors (C reader and writer); a
store appears at its path only when complete.
"""
import json
import logging
import os
import shutil
from dataclasses import dataclass

import numpy as np

from . import __version__
from . import safetensors as st
from .errors import FormatError

LOG = logging.getLogger(__name__)

FORMAT, VERSION = "fusechat-topk", 1
KINDS = ("extracted", "aligned", "fused")
FIELDS = {  # name: (dtype name, per) with per "sample", "sample+1", "token" or "token,k"
    "offsets": ("I64", "sample+1"), "input_ids": ("I32", "token"), "loss_mask": ("U8", "token"),
    "topk_ids": ("I32", "token,k"), "topk_logits": (None, "token,k"),
    "token_ce": ("F32", "token"), "seq_ce": ("F32", "sample"), "sample_index": ("I64", "sample"),
}
LOGIT_DTYPES = {"F16": np.float16, "F32": np.float32}


@dataclass
class Sample:
    """One stored sequence: views into the mapped shard (read-only, no copy)."""
    sample_index: int
    input_ids: np.ndarray
    loss_mask: np.ndarray
    topk_ids: np.ndarray
    topk_logits: np.ndarray
    token_ce: np.ndarray
    seq_ce: float


# --------------------------------------------------------------------------------------
# writing

class TopKStoreWriter:
    """Accumulates samples and writes shards of about ``shard_tokens`` tokens each.

    Used as a context manager it finishes on success (manifest written, folder renamed into
    place) and leaves nothing at ``path`` on an exception.
    """

    def __init__(self, path, *, k, kind="extracted", logits_dtype="F16", model="",
                 tokenizer_fingerprint="", vocab_size=None, info=None, shard_tokens=1 << 22,
                 overwrite=False):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
        if logits_dtype not in LOGIT_DTYPES:
            raise ValueError(f"logits_dtype={logits_dtype!r}: expected one of {list(LOGIT_DTYPES)}")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not overwrite:
            raise FileExistsError(f"{self.path}: a store already exists (pass overwrite=True)")
        self.k, self.kind, self.logits_dtype = int(k), kind, logits_dtype
        self.meta = {"model": str(model), "tokenizer_fingerprint": str(tokenizer_fingerprint),
                     "vocab_size": None if vocab_size is None else int(vocab_size),
                     "info": dict(info or {})}
        self.overwrite, self.shard_tokens = overwrite, int(shard_tokens)
        self.tmp = f"{self.path}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        self._pending, self._pending_tokens = [], 0
        self.shards, self.n_samples, self.n_tokens = [], 0, 0
        self._seen = set()

    def add(self, sample_index, input_ids, loss_mask, topk_ids, topk_logits, token_ce, seq_ce):
        """Queue one sample (arrays of length T, [T, K] for the top-K)."""
        ids = np.asarray(input_ids, dtype=np.int32).reshape(-1)
        t = len(ids)
        where = f"{self.path}: sample {sample_index}"
        tk_ids = np.asarray(topk_ids, dtype=np.int32)
        tk_lg = np.asarray(topk_logits, dtype=LOGIT_DTYPES[self.logits_dtype])
        if tk_ids.shape != (t, self.k) or tk_lg.shape != (t, self.k):
            raise ValueError(f"{where}: topk_ids/topk_logits must be [{t}, {self.k}], got "
                             f"{tk_ids.shape} and {tk_lg.shape}")
        mask = np.asarray(loss_mask, dtype=np.uint8).reshape(-1)
        ce = np.asarray(token_ce, dtype=np.float32).reshape(-1)
        if len(mask) != t or len(ce) != t:
            raise ValueError(f"{where}: loss_mask and token_ce must have {t} entries")
        if int(sample_index) in self._seen:
            raise ValueError(f"{where}: sample index added twice")
        self._seen.add(int(sample_index))
        self._pending.append((int(sample_index), ids, mask, tk_ids, tk_lg, ce, float(seq_ce)))
        self._pending_tokens += t
        if self._pending_tokens >= self.shard_tokens:
            self._flush()

    def _flush(self):
        if not self._pending:
            return
        p = self._pending
        lengths = np.array([len(s[1]) for s in p], dtype=np.int64)
        tensors = {
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "input_ids": np.concatenate([s[1] for s in p]),
            "loss_mask": np.concatenate([s[2] for s in p]),
            "topk_ids": np.concatenate([s[3] for s in p]).reshape(-1, self.k),
            "topk_logits": np.concatenate([s[4] for s in p]).reshape(-1, self.k),
            "token_ce": np.concatenate([s[5] for s in p]),
            "seq_ce": np.array([s[6] for s in p], dtype=np.float32),
            "sample_index": np.array([s[0] for s in p], dtype=np.int64),
        }
        name = f"shard-{len(self.shards):05d}.safetensors"
        st.save(tensors, os.path.join(self.tmp, name), metadata={"format": FORMAT})
        self.shards.append({"file": name, "n_samples": len(p), "n_tokens": int(lengths.sum())})
        self.n_samples += len(p)
        self.n_tokens += int(lengths.sum())
        self._pending, self._pending_tokens = [], 0

    def manifest(self):
        return {"format": FORMAT, "version": VERSION, "kind": self.kind, "k": self.k,
                **self.meta,
                "dtypes": {f: (d or self.logits_dtype) for f, (d, _) in FIELDS.items()},
                "n_samples": self.n_samples, "n_tokens": self.n_tokens, "shards": self.shards,
                "created_by": f"fusechat {__version__}"}

    def close(self):
        """Write the last shard and the manifest, then move the folder into place."""
        self._flush()
        with open(os.path.join(self.tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(self.manifest(), f, indent=1)
        if os.path.exists(self.path):
            if not self.overwrite:
                self.abort()
                raise FileExistsError(f"{self.path}: appeared while writing; not overwritten")
            old = f"{self.path}.old-{os.getpid()}"
            os.rename(self.path, old)
            os.rename(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.path)

    def abort(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------
# reading

def _bad(path, rule, msg):
    err = FormatError(f"{path}: {msg} (rule {rule})")
    err.rule, err.filename = rule, path
    return err


class TopKStore:
    """A memory-mapped TopK store (see the module docs). ``TopKStore(path)`` validates the
    manifest and every shard's structure; ``expect_fingerprint`` checks the tokenizer."""

    def __init__(self, path, expect_fingerprint=None):
        self.path = os.fspath(path)
        mpath = os.path.join(self.path, "manifest.json")
        try:
            with open(mpath, encoding="utf-8") as f:
                m = json.load(f)
        except FileNotFoundError:
            raise _bad(mpath, "missing_manifest", "not a TopK store: no manifest.json") from None
        except json.JSONDecodeError as exc:
            raise _bad(mpath, "bad_manifest", f"not valid JSON: {exc}") from None
        self.manifest = m
        self._check_manifest(mpath, m)
        if expect_fingerprint is not None and m["tokenizer_fingerprint"] != expect_fingerprint:
            raise _bad(mpath, "tokenizer_mismatch",
                       f"made with tokenizer {m['tokenizer_fingerprint']!r}, but the model "
                       f"given has {expect_fingerprint!r}")
        self.k = m["k"]
        self._files, starts = [], [0]
        for sh in m["shards"]:
            f = self._open_shard(sh)
            self._files.append(f)
            starts.append(starts[-1] + sh["n_samples"])
        self._starts = np.asarray(starts, dtype=np.int64)
        self._arrays = [{name: f.get(name) for name in FIELDS} for f in self._files]

    kind = property(lambda self: self.manifest["kind"])
    model = property(lambda self: self.manifest["model"])
    fingerprint = property(lambda self: self.manifest["tokenizer_fingerprint"])
    n_tokens = property(lambda self: self.manifest["n_tokens"])

    @staticmethod
    def _check_manifest(mpath, m):
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise _bad(mpath, "bad_manifest", f"format is not {FORMAT!r}")
        if m.get("version") != VERSION:
            raise _bad(mpath, "unsupported_version",
                       f"version {m.get('version')!r}; this fusechat reads version {VERSION}")
        need = {"kind": str, "k": int, "model": str, "tokenizer_fingerprint": str,
                "dtypes": dict, "n_samples": int, "n_tokens": int, "shards": list}
        for key, typ in need.items():
            if not isinstance(m.get(key), typ):
                raise _bad(mpath, "bad_manifest", f"key {key!r} missing or not {typ.__name__}")
        if m["kind"] not in KINDS or m["k"] < 1:
            raise _bad(mpath, "bad_manifest", f"kind {m['kind']!r} / k {m['k']} invalid")
        if m["dtypes"].get("topk_logits") not in LOGIT_DTYPES:
            raise _bad(mpath, "bad_manifest", "dtypes.topk_logits must be F16 or F32")
        for sh in m["shards"]:
            name = sh.get("file") if isinstance(sh, dict) else None
            if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
                raise _bad(mpath, "bad_shard_name", f"shard entry {sh!r} is not a bare file name")
        if sum(sh.get("n_samples", -1) for sh in m["shards"]) != m["n_samples"] or \
                sum(sh.get("n_tokens", -1) for sh in m["shards"]) != m["n_tokens"]:
            raise _bad(mpath, "count_mismatch", "shard counts do not add up to n_samples/n_tokens")

    def _open_shard(self, sh):
        path = os.path.join(self.path, sh["file"])
        f = st.open(path)
        n, t, k = sh["n_samples"], sh["n_tokens"], self.manifest["k"]
        shapes = {"sample+1": (n + 1,), "sample": (n,), "token": (t,), "token,k": (t, k)}
        for name, (dtype, per) in FIELDS.items():
            if name not in f:
                raise _bad(path, "missing_tensor", f"no tensor {name!r}")
            info = f.info(name)
            want = dtype or self.manifest["dtypes"]["topk_logits"]
            if info.dtype != want or tuple(info.shape) != shapes[per]:
                raise _bad(path, "bad_tensor", f"tensor {name!r} is {info.dtype}{list(info.shape)}, "
                                               f"expected {want}{list(shapes[per])}")
        off = f.get("offsets")
        if off[0] != 0 or off[-1] != t or np.any(np.diff(off) < 0):
            raise _bad(path, "bad_offsets", f"offsets must rise from 0 to {t}")
        return f

    def __len__(self):
        return self.manifest["n_samples"]

    def locate(self, i):
        """(shard, row in shard) of sample i."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.path}: sample {i} out of range [0, {len(self)})")
        i %= len(self)
        s = int(np.searchsorted(self._starts, i, side="right") - 1)
        return s, i - int(self._starts[s])

    def __getitem__(self, i):
        s, r = self.locate(i)
        a = self._arrays[s]
        b, e = int(a["offsets"][r]), int(a["offsets"][r + 1])
        return Sample(int(a["sample_index"][r]), a["input_ids"][b:e], a["loss_mask"][b:e],
                      a["topk_ids"][b:e], a["topk_logits"][b:e], a["token_ce"][b:e],
                      float(a["seq_ce"][r]))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def sample_indices(self):
        """The source-dataset row of every stored sample, in store order."""
        return np.concatenate([a["sample_index"] for a in self._arrays]) if self._arrays \
            else np.zeros(0, np.int64)

    def iter_batches(self, batch_size):
        """Lists of up to batch_size samples, in store order."""
        batch = []
        for s in self:
            batch.append(s)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def bytes_per_token(self):
        """Bytes on disk per stored token (shard files, all fields)."""
        total = sum(os.path.getsize(os.path.join(self.path, sh["file"]))
                    for sh in self.manifest["shards"])
        return total / max(1, self.n_tokens)

    def to_hf_dataset(self):
        """The store as a Hugging Face ``datasets.Dataset`` (one row per sample, the
        reference's column names where they exist)."""
        import datasets

        def rows():
            for s in self:
                yield {"sample_index": s.sample_index, "input_ids": s.input_ids.tolist(),
                       "loss_mask": s.loss_mask.tolist(),
                       "per_step_indices": s.topk_ids.tolist(),
                       "per_step_logits": s.topk_logits.astype(np.float32).tolist(),
                       "per_step_metric_ce": s.token_ce.tolist(), "metric_ce": s.seq_ce}

        return datasets.Dataset.from_generator(rows)

    def close(self):
        for f in self._files:
            f.close()
        self._files, self._arrays = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
