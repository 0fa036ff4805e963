"""Reading and writing safetensors files and sharded Hugging Face folders, in C.

Reading::

    with fusechat.safetensors.open("model_dir") as f:     # a file or a folder
        f.keys(), f.metadata, f.info("lm_head.weight")
        w = f.get("lm_head.weight")                       # zero-copy, read-only view
        w32 = f.get("lm_head.weight", dtype=np.float32)   # converted in C, several threads

Every header (and the index of a sharded folder) is validated before any tensor is used;
a broken rule raises :class:`fusechat.SafetensorsError` (a ``ValueError``) with ``.rule``
and ``.filename`` (docs/formats.md lists the rules). Views stay valid after ``close()``:
the mapping is released when the last view is gone.

Writing::

    fusechat.safetensors.save({"w": array}, "out.safetensors")
    fusechat.safetensors.save(tensors, "out_dir", max_shard_size="5GB")   # HF shards + index
    with fusechat.safetensors.Writer("out_dir", [("w", "BF16", (4096, 4096))],
                                     max_shard_size="5GB") as w:
        w.write("w", array)                                 # any order

Outputs are written under temporary names and renamed into place when complete; an
existing output raises ``FileExistsError`` unless ``overwrite=True``.
"""
import logging
import os
import re

import numpy as np

from . import _C

LOG = logging.getLogger(__name__)

__all__ = ["open", "save", "Writer", "SafetensorsFile", "TensorInfo", "parse_size",
           "dtype_name", "numpy_dtype"]


class TensorInfo:
    """Where a tensor lives: dtype name ("BF16"), shape, byte range [begin, end) in its
    shard's data buffer, absolute file offset, byte count and shard file."""

    __slots__ = ("name", "dtype", "shape", "begin", "end", "file_offset", "nbytes", "shard")

    def __init__(self, name, dtype, shape, begin, end, file_offset, nbytes, shard):
        self.name, self.dtype, self.shape = name, dtype, shape
        self.begin, self.end, self.file_offset = begin, end, file_offset
        self.nbytes, self.shard = nbytes, shard

    @property
    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self):
        return (f"TensorInfo({self.name!r}, dtype={self.dtype}, shape={self.shape}, "
                f"bytes=[{self.begin}, {self.end}), shard={os.path.basename(self.shard)!r})")


class SafetensorsFile:
    """An open safetensors file or sharded folder (see :func:`open`)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._h = _C.st_open(self.path)
        self._shards = [p for p, _ in self._h.shards()]
        self.metadata = self._h.metadata()
        unlisted = self._h.unlisted_count()
        if unlisted:
            LOG.warning("%s: %d tensors in the shards are not listed in "
                        "model.safetensors.index.json; they are readable but a tool that "
                        "trusts the index will not see them", self.path, unlisted)

    def _handle(self):
        if self._h is None:
            raise ValueError(f"{self.path}: the safetensors file is closed")
        return self._h

    def keys(self):
        """Tensor names in storage order (shard by shard, by offset)."""
        return self._handle().names()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self._handle().names())

    def __contains__(self, name):
        return self._handle().contains(name)

    @property
    def shards(self):
        """The shard files, in the order the ``shard`` of :meth:`info` counts them."""
        return list(self._shards)

    def info(self, name):
        """A :class:`TensorInfo` for tensor ``name`` (KeyError if absent)."""
        dtype, shape, begin, end, off, nbytes, shard = self._handle().info(name)
        return TensorInfo(name, dtype, shape, begin, end, off, nbytes, self._shards[shard])

    def get(self, name, dtype=None, threads=0, out=None):
        """Tensor ``name`` as a NumPy array.

        ``dtype=None`` (or the stored dtype): a read-only view on the mapping, no copy; BF16
        comes as ``ml_dtypes.bfloat16``, F8 as ``ml_dtypes.float8_*``. Data is not always
        aligned in a safetensors file; NumPy handles unaligned views (``flags.aligned``).
        Another float dtype (float16, bfloat16, float32, float64): a new array converted in
        C on ``threads`` threads (0 = all), round to nearest even, NaN/inf kept. Integer and
        bool tensors convert only to their own dtype.

        ``out``: an existing writeable, C-contiguous array of the tensor's shape to fill
        instead (its dtype is the target when ``dtype`` is None), returned. This is how
        parameters already allocated (a model's, a buffer reused across files) are loaded
        without allocating and zeroing new memory.
        """
        h = self._handle()
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"get: out= for tensor {name!r} must be a numpy.ndarray, "
                                f"not {type(out).__name__}")
            return h.read(name, out.dtype if dtype is None else dtype, threads, out)
        if dtype is None:
            return h.view(name)
        stored = h.info(name)[0]
        want = dtype_name(dtype)
        if want == stored:
            return h.view(name)
        return h.read(name, dtype, threads)

    def load_into(self, arrays, threads=0):
        """Fill ``arrays`` (a dict name -> ndarray, e.g. a model's parameters as NumPy) in
        place with the tensors of the same names, converted to each array's dtype. Every name
        must exist here (KeyError naming it); shapes must match (ValueError). Returns
        ``arrays``."""
        h = self._handle()
        missing = [n for n in arrays if not h.contains(n)]
        if missing:
            raise KeyError(f"load_into: {len(missing)} tensor(s) not in {self.path!r}, "
                           f"first: {missing[0]!r}")
        for n, a in arrays.items():
            self.get(n, threads=threads, out=a)
        return arrays

    def __getitem__(self, name):
        return self.get(name)

    def prefetch(self, name):
        """Ask the kernel to read tensor ``name`` ahead (madvise WILLNEED)."""
        self._handle().prefetch(name)

    def close(self):
        """Release this handle. Views already returned stay valid; the mapping is unmapped
        when the last of them is gone."""
        self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._h is None else f"{len(self)} tensors"
        return f"<fusechat.safetensors.SafetensorsFile {self.path!r}: {state}>"


def dtype_name(dtype):
    """The safetensors name ("BF16") of a dtype: a name, or anything np.dtype() takes
    (ml_dtypes.bfloat16 for BF16). TypeError if safetensors has no such dtype."""
    return _C.dtype_name(dtype)


def numpy_dtype(dtype):
    """The NumPy dtype of a safetensors dtype name ("BF16" -> ml_dtypes.bfloat16)."""
    return _C.numpy_dtype(dtype)


def open(path):  # noqa: A001 - the natural name, as in safetensors.safe_open
    """Open a ``.safetensors`` file or a Hugging Face folder (``model.safetensors`` or
    ``model.safetensors.index.json`` + shards). Returns a :class:`SafetensorsFile`."""
    return SafetensorsFile(path)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size):
    """Bytes from an int or a string such as "5GB" (10^9, as Hugging Face) or "2GiB"."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return int(size)
    m = _SIZE_RE.match(str(size)) if isinstance(size, str) else None
    if not m:
        raise ValueError(f"max_shard_size: expected bytes or a size like '5GB', got {size!r}")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()]
    if value < 1:
        raise ValueError(f"max_shard_size must be at least one byte, got {size!r}")
    return int(value)


class Writer:
    """Streaming writer: the entries first, then the tensors in any order.

    ``entries``: (name, dtype, shape) for every tensor; dtype is a safetensors name ("BF16")
    or a NumPy dtype. With ``max_shard_size`` (bytes or "5GB"), ``path`` is a folder that
    gets ``model.safetensors`` or, when the tensors do not fit in one shard,
    ``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``. Used as a
    context manager it finishes on success and removes its temporary files on an exception.
    """

    def __init__(self, path, entries, metadata=None, max_shard_size=None, overwrite=False):
        self.path = os.fspath(path)
        entries = [(str(n), dtype_name(d), tuple(int(x) for x in s)) for n, d, s in entries]
        self._index = {name: i for i, (name, _, _) in enumerate(entries)}
        self._entries = entries
        shard = 0 if max_shard_size is None else parse_size(max_shard_size)
        self._w = _C.STWriter(self.path, entries, metadata, shard, bool(overwrite))

    def write(self, name, array, offset=0):
        """Write tensor ``name`` (an array of its dtype and shape). With ``offset`` (bytes),
        ``array`` is a contiguous chunk of it placed at that byte; chunks may come in any
        order and from several threads."""
        try:
            i = self._index[name]
        except KeyError:
            raise KeyError(f"{self.path}: {name!r} is not one of the writer's entries") from None
        _, dtype, shape = self._entries[i]
        a = np.asarray(array)
        if a.dtype != numpy_dtype(dtype):
            raise TypeError(f"{self.path}: tensor {name!r} is {dtype} but the array is "
                            f"{a.dtype}")
        if offset == 0 and a.shape != shape and a.nbytes >= _nbytes(dtype, shape):
            raise ValueError(f"{self.path}: tensor {name!r} has shape {shape}, the array "
                             f"{a.shape}")
        self._w.write(i, np.ascontiguousarray(a), offset)

    def locate(self, name):
        """(shard index, begin, end) of tensor ``name`` in the output layout."""
        return self._w.locate(self._index[name])

    @property
    def shard_count(self):
        return self._w.shard_count()

    def close(self):
        """Finish: check every byte was written, then rename the outputs into place."""
        self._w.finish()

    def abort(self):
        """Drop the temporary files; nothing appears at the final paths."""
        self._w.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _nbytes(dtype, shape):
    n = numpy_dtype(dtype).itemsize
    for d in shape:
        n *= d
    return n


def save(tensors, path, metadata=None, *, max_shard_size=None, overwrite=False):
    """Write a dict of name -> NumPy array (bf16 as ``ml_dtypes.bfloat16``) to ``path``.

    Without ``max_shard_size`` ``path`` is the output file; with it (bytes or "5GB") ``path``
    is a folder holding ``model.safetensors`` or Hugging Face shards plus the index.
    ``metadata`` is a dict of str to str. Non-contiguous arrays are copied first."""
    arrays = {str(k): np.asarray(v) for k, v in tensors.items()}
    entries = [(k, dtype_name(a.dtype), a.shape) for k, a in arrays.items()]
    with Writer(path, entries, metadata, max_shard_size, overwrite) as w:
        for k, a in arrays.items():
            w.write(k, a)
