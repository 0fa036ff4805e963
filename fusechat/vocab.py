"""Vocabularies of Hugging Face tokenizers, read in C (``fusechat.Vocab``).

A :class:`Vocab` holds, for every token id, the raw piece, the string ``decode([id])``
gives (what the reference's DTW compares, ``method.md`` 3.1), and the canonical bytes the
piece stands for (byte-level glyphs mapped back to bytes, ``▁`` to a space, ``<0xNN>`` to
the byte, WordPiece ``##`` continuations without the prefix, words with a leading space),
plus flags (special, added, byte, missing), the roles (bos, eos, unk, pad, end of turn) and
a stable fingerprint.
"""
import hashlib
import json
import os

import numpy as np

from . import _C

MODEL_NAMES = {1: "bpe", 2: "unigram", 3: "wordpiece"}
STYLE_NAMES = {1: "bytelevel", 2: "metaspace", 3: "wordpiece", 4: "plain"}
ROLES = ("bos", "eos", "unk", "pad", "eot")

FLAG_MISSING, FLAG_ADDED, FLAG_SPECIAL, FLAG_BYTE = 1, 2, 4, 8


class _Strings:
    """The strings of every id, kept as one bytes object and offsets (no per-id objects)."""

    def __init__(self, data, offsets):
        self.data, self.offsets = data, offsets

    def bytes_at(self, i):
        return self.data[self.offsets[i]:self.offsets[i + 1]]


class Vocab:
    """A tokenizer's vocabulary. Build with :meth:`from_pretrained` or :meth:`from_tokenizer`."""

    def __init__(self, handle, source, marker=None):
        self._h = handle
        self.source = source
        if marker is not None:
            _C.vocab_set_marker(handle, marker)
        info = _C.vocab_info(handle)
        self.size = int(info["size"])
        self.model_type = MODEL_NAMES[info["model"]]
        self.style = STYLE_NAMES[info["style"]]
        self.marker = info["marker"]
        self.adds_prefix_space = bool(info["prefix_space"])
        self.roles = {name: (int(i) if i >= 0 else None) for name, i in zip(ROLES, info["roles"])}
        self.flags = _C.vocab_flags(handle)
        self.flags.setflags(write=False)
        self._strings = {}
        self._fingerprint = None
        self._contexts = {}

    # -- construction ----------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, marker=None):
        """Read a tokenizer folder (``tokenizer.json``, optional ``tokenizer_config.json`` and
        ``special_tokens_map.json``). ``marker`` overrides the whitespace marker the reference
        strips (default: ``▁`` for SentencePiece styles, ``Ġ`` byte-level, ``##`` WordPiece)."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: not a tokenizer folder")
        return cls(_C.vocab_load(path), path, marker)

    @classmethod
    def from_tokenizer(cls, tok, marker=None):
        """From a loaded ``tokenizers.Tokenizer`` or ``transformers`` tokenizer: it is
        serialised to tokenizer.json in memory and read by the same C reader."""
        backend = getattr(tok, "backend_tokenizer", None)
        config = {}
        if backend is None and hasattr(tok, "to_str"):
            backend = tok  # a tokenizers.Tokenizer
        elif backend is not None or hasattr(tok, "bos_token"):
            for role in ("bos", "eos", "unk", "pad"):
                value = getattr(tok, f"{role}_token", None)
                if value is not None:
                    config[f"{role}_token"] = str(value)
            config["clean_up_tokenization_spaces"] = bool(
                getattr(tok, "clean_up_tokenization_spaces", False))
        if backend is None:
            try:
                from transformers.convert_slow_tokenizer import convert_slow_tokenizer
                backend = convert_slow_tokenizer(tok)
            except Exception as exc:  # noqa: BLE001 - re-raised with the reason
                raise TypeError(f"cannot read a vocabulary from {type(tok).__name__}: it is "
                                f"neither a tokenizers.Tokenizer nor a convertible transformers "
                                f"tokenizer ({exc})") from exc
        name = f"<{type(tok).__name__}>"
        handle = _C.vocab_parse(backend.to_str().encode("utf-8"), name + "/tokenizer.json",
                                json.dumps(config).encode("utf-8") if config else None,
                                name + "/tokenizer_config.json", None,
                                name + "/special_tokens_map.json")
        return cls(handle, name, marker)

    # -- per-id access -----------------------------------------------------------------

    def _table(self, which):
        t = self._strings.get(which)
        if t is None:
            t = self._strings[which] = _Strings(*_C.vocab_strings(self._h, which))
        return t

    def __len__(self):
        return self.size

    def _check(self, i):
        i = int(i)
        if not 0 <= i < self.size:
            raise IndexError(f"token id {i} is outside the vocabulary (size {self.size})")
        return i

    def piece(self, i):
        """The raw piece (``convert_ids_to_tokens``); None for an id no token has."""
        i = self._check(i)
        if self.flags[i] & FLAG_MISSING:
            return None
        return self._table(0).bytes_at(i).decode("utf-8")

    def decoded(self, i):
        """What ``tokenizer.decode([i])`` gives."""
        return self._table(1).bytes_at(self._check(i)).decode("utf-8")

    def canonical(self, i):
        """The bytes the token stands for in the text (empty for special tokens)."""
        return self._table(2).bytes_at(self._check(i))

    def pieces(self):
        return [self.piece(i) for i in range(self.size)]

    def decoded_strings(self):
        return [self.decoded(i) for i in range(self.size)]

    def canonical_bytes(self):
        t = self._table(2)
        return [t.bytes_at(i) for i in range(self.size)]

    def is_special(self, i):
        return bool(self.flags[self._check(i)] & FLAG_SPECIAL)

    def find(self, piece):
        """The id of a raw piece, or None."""
        i = _C.vocab_find(self._h, piece)
        return None if i < 0 else i

    def canonical_text(self, ids):
        """The concatenated canonical bytes of a sequence of ids."""
        t = self._table(2)
        return b"".join(t.bytes_at(int(i)) for i in ids)

    @property
    def fingerprint(self):
        """SHA-256 (hex) of the model type, every piece and every flag: equal fingerprints mean
        the same ids stand for the same pieces."""
        if self._fingerprint is None:
            t = self._table(0)
            h = hashlib.sha256()
            h.update(f"fusechat-vocab-1:{self.model_type}:{self.style}:{self.size}:".encode())
            h.update(np.ascontiguousarray(t.offsets, dtype="<i8").tobytes())
            h.update(t.data)
            h.update(np.ascontiguousarray(self.flags).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def same_as(self, other):
        """True if every id of this vocabulary has the other's piece at the same id."""
        key = ("same", id(other))
        entry = self._contexts.get(key)
        if entry is None or entry[0] is not other:
            entry = self._contexts[key] = (other, bool(_C.vocab_same(self._h, other._h)))
        return entry[1]

    def _context(self, pivot):
        """The C alignment context for (self as source, pivot), built once (vocabularies are
        immutable, so per-pair results are cached in self._contexts)."""
        entry = self._contexts.get(id(pivot))
        if entry is None or entry[0] is not pivot:
            entry = self._contexts[id(pivot)] = (pivot, _C.align_ctx(self._h, pivot._h))
        return entry[1]

    def __repr__(self):
        roles = ", ".join(f"{k}={v}" for k, v in self.roles.items() if v is not None)
        return (f"Vocab({self.source!r}, {self.model_type}/{self.style}, size={self.size}, "
                f"{roles})")


__all__ = ["Vocab"]
