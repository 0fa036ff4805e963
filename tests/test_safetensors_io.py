"""Round trips, interop with the `safetensors` package, zero-copy views and the output
guarantees (temporary files, no overwrite) of fusechat.safetensors."""
import errno
import gc
import hashlib
import json
import os
import struct
import threading

import ml_dtypes
import numpy as np
import pytest

import fusechat
from fusechat import safetensors as st
from st_files import entry, write

DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
          "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I32": np.int32, "U32": np.uint32,
          "F32": np.float32, "F64": np.float64, "I64": np.int64, "U64": np.uint64,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}


def random_array(dtype, shape, rng):
    """Random bytes reinterpreted as dtype (covers NaN, inf, subnormals for floats)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8)
    if dt == np.bool_:
        raw = raw & 1
    return raw.view(dt).reshape(shape)


def same_bytes(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def tensors_all_dtypes(seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i, (name, dt) in enumerate(DTYPES.items()):
        out[f"t.{name}"] = random_array(dt, (3, 5 + i), rng)
    out["scalar"] = np.array(7, np.int32)                       # 0-d
    out["empty"] = np.zeros((4, 0, 2), np.float32)              # zero-size
    out["empty_bf16"] = np.zeros((0,), ml_dtypes.bfloat16)
    return out


def torch_bytes(t):
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---------------------------------------------------------------------------------------
# round trips

def test_round_trip_every_dtype(tmp_path):
    src = tensors_all_dtypes()
    copies = {k: v.copy() for k, v in src.items()}
    path = tmp_path / "all.safetensors"
    st.save(src, path, metadata={"format": "np", "note": 'quotes " and \\ and \n'})
    for k in src:  # inputs never modified
        assert same_bytes(src[k], copies[k])
    with st.open(path) as f:
        assert sorted(f.keys()) == sorted(src)
        assert len(f) == len(src) and "scalar" in f and "nope" not in f
        assert f.metadata == {"format": "np", "note": 'quotes " and \\ and \n'}
        for k, v in src.items():
            got = f.get(k)
            assert same_bytes(got, v), k
            assert not got.flags.writeable
            info = f.info(k)
            assert info.shape == v.shape and info.nbytes == v.nbytes
            assert info.end - info.begin == v.nbytes and info.shard == str(path)
        assert f.get("scalar").shape == () and int(f.get("scalar")) == 7


def test_layout_is_aligned_and_size_ordered(tmp_path):
    src = tensors_all_dtypes()
    path = tmp_path / "a.safetensors"
    st.save(src, path)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0 and raw[8 + n - 1:8 + n] in (b"}", b" ")
    header = json.loads(raw[8:8 + n])
    with st.open(path) as f:
        for k in src:
            info = f.info(k)
            assert header[k]["data_offsets"] == [info.begin, info.end]
            assert info.file_offset % src[k].dtype.itemsize == 0
            assert f.get(k).flags.aligned
        sizes = [src[k].dtype.itemsize for k in f.keys()]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("shard_size", [1, 100, "1KB", 10**9])
def test_round_trip_sharded(tmp_path, shard_size):
    rng = np.random.default_rng(1)
    src = {f"layer.{i}.w": random_array(np.float32, (10, 7), rng) for i in range(5)}
    src["bias"] = random_array(ml_dtypes.bfloat16, (3,), rng)
    out = tmp_path / "ckpt"
    st.save(src, out, metadata={"format": "pt"}, max_shard_size=shard_size)
    files = sorted(os.listdir(out))
    with st.open(out) as f:
        assert sorted(f.keys()) == sorted(src)
        for k, v in src.items():
            assert same_bytes(f.get(k), v)
        n_shards = len(f.shards)
        assert f.metadata == {"format": "pt"}
    if shard_size == 10**9:
        assert files == ["model.safetensors"]
    else:
        assert n_shards > 1
        names = [f"model-{i:05d}-of-{n_shards:05d}.safetensors" for i in range(1, n_shards + 1)]
        assert files == sorted(names + ["model.safetensors.index.json"])
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert index["metadata"]["total_size"] == sum(v.nbytes for v in src.values())
        assert sorted(index["weight_map"]) == sorted(src)
        assert set(index["weight_map"].values()) == set(names)
        for name, shard in index["weight_map"].items():  # each shard really holds them
            raw = (out / shard).read_bytes()
            assert name in json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
        if shard_size == 1:
            assert n_shards == len(src)  # a tensor larger than the limit gets its own shard


def test_sharding_is_greedy_in_layout_order(tmp_path):
    src = {f"w{i}": np.zeros(25, np.float32) for i in range(5)}  # 100 bytes each
    with st.Writer(tmp_path / "o", [(k, v.dtype, v.shape) for k, v in src.items()],
                   max_shard_size=250) as w:
        assert w.shard_count == 3
        assert [w.locate(f"w{i}") for i in range(5)] == [
            (0, 0, 100), (0, 100, 200), (1, 0, 100), (1, 100, 200), (2, 0, 100)]
        for k, v in src.items():
            w.write(k, v)


def test_parse_size():
    assert st.parse_size("5GB") == 5 * 10**9
    assert st.parse_size("2GiB") == 2 * 2**30
    assert st.parse_size("1.5 MB") == 1_500_000
    assert st.parse_size(123) == 123
    for bad in ("5 parsecs", "", -1, 0, "0B"):
        with pytest.raises(ValueError):
            st.parse_size(bad)


# ---------------------------------------------------------------------------------------
# conversions on read

@pytest.mark.parametrize("src_dt", ["F16", "BF16", "F32", "F64"])
@pytest.mark.parametrize("dst_dt", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
def test_get_converted_matches_numpy(tmp_path, src_dt, dst_dt):
    rng = np.random.default_rng(2)
    a = random_array(DTYPES[src_dt], (257, 33), rng)
    st.save({"a": a}, tmp_path / "a.safetensors")
    with st.open(tmp_path / "a.safetensors") as f:
        got = f.get("a", dtype=dst_dt, threads=2)
    with np.errstate(over="ignore", invalid="ignore"):
        want = a.astype(dst_dt)
    assert got.dtype == np.dtype(dst_dt) and got.shape == a.shape
    # bit for bit, NaNs compared as NaNs (payload bits may differ between libraries)
    with np.errstate(invalid="ignore"):
        gn, wn = np.isnan(got.astype(np.float64)), np.isnan(want.astype(np.float64))
    assert np.array_equal(gn, wn)
    assert got[~gn].tobytes() == want[~wn].tobytes()


def test_get_integer_conversion_refused(tmp_path):
    st.save({"i": np.arange(4, dtype=np.int32)}, tmp_path / "i.safetensors")
    with st.open(tmp_path / "i.safetensors") as f:
        assert same_bytes(f.get("i", dtype=np.int32), np.arange(4, dtype=np.int32))
        with pytest.raises(TypeError, match="'i'"):
            f.get("i", dtype=np.float32)
        with pytest.raises(KeyError, match="nope"):
            f.get("nope")


@pytest.mark.parametrize("dst_dt", [np.float16, ml_dtypes.bfloat16, np.float32])
def test_get_into_existing_array_matches_a_new_one(tmp_path, dst_dt):
    rng = np.random.default_rng(3)
    tensors = {"w": random_array(ml_dtypes.bfloat16, (129, 65), rng),
               "b": random_array(np.float32, (65,), rng),
               "s": random_array(np.float16, (), rng)}
    st.save(tensors, tmp_path / "m.safetensors")
    with st.open(tmp_path / "m.safetensors") as f:
        outs = {k: np.full(v.shape, 7, dst_dt) for k, v in tensors.items()}
        ids = {k: id(v) for k, v in outs.items()}
        assert f.load_into(outs, threads=2) is outs
        for k, a in tensors.items():
            assert id(outs[k]) == ids[k]  # filled in place, not replaced
            assert same_bytes(outs[k], f.get(k, dtype=dst_dt))
        # out= alone: its dtype is the target; the same array comes back
        o = np.empty((129, 65), np.float64)
        with np.errstate(invalid="ignore"):
            want = tensors["w"].astype(np.float64)
        assert f.get("w", out=o) is o and same_bytes(o, want)


def test_get_into_bad_out_names_the_tensor(tmp_path):
    st.save({"w": np.ones((4, 6), np.float32), "i": np.arange(3, dtype=np.int32)},
            tmp_path / "m.safetensors")
    with st.open(tmp_path / "m.safetensors") as f:
        with pytest.raises(ValueError, match="'w'.*shape"):
            f.get("w", out=np.empty((6, 4), np.float32))
        with pytest.raises(TypeError, match="'w'.*dtype F16, expected F32"):
            f.get("w", dtype=np.float32, out=np.empty((4, 6), np.float16))
        with pytest.raises(ValueError, match="'w'.*C-contiguous"):
            f.get("w", out=np.empty((6, 4), np.float32).T)
        ro = np.empty((4, 6), np.float32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="'w'.*writeable"):
            f.get("w", out=ro)
        with pytest.raises(TypeError, match="'w'.*ndarray"):
            f.get("w", out=[0.0] * 24)
        with pytest.raises(TypeError, match="'i'"):
            f.get("i", out=np.empty(3, np.float32))  # integers convert only to themselves
        i = np.zeros(3, np.int32)
        assert same_bytes(f.get("i", out=i), np.arange(3, dtype=np.int32))
        with pytest.raises(KeyError, match="'nope'"):
            f.load_into({"w": np.empty((4, 6), np.float32), "nope": np.empty(1, np.float32)})


# ---------------------------------------------------------------------------------------
# views and the mapping's lifetime

def test_views_outlive_the_handle(tmp_path):
    a = np.arange(1000, dtype=np.float64)
    st.save({"a": a}, tmp_path / "a.safetensors")
    f = st.open(tmp_path / "a.safetensors")
    v = f.get("a")
    f.close()
    with pytest.raises(ValueError, match="closed"):
        f.get("a")
    del f
    gc.collect()
    assert v.sum() == a.sum()
    with pytest.raises(ValueError):
        v[0] = 1  # read-only
    with st.open(tmp_path / "a.safetensors") as g:
        w = g.get("a")
    del g
    gc.collect()
    assert same_bytes(w, a)


def test_unaligned_data_is_read_correctly(tmp_path):
    """A header whose length is not a multiple of 8 (allowed by the format) puts the data
    at an odd address; the view must be flagged unaligned and still read right."""
    a = np.arange(6, dtype=np.float64) * 1.25
    b = np.arange(4, dtype=np.int32) - 2
    header = {"a": entry("F64", [6], 0, 48), "b": entry("I32", [4], 48, 64)}
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8 + 3)  # data at 8 + N, N = 3 mod 8
    path = write(tmp_path / "odd.safetensors", text, a.tobytes() + b.tobytes())
    with st.open(path) as f:
        va = f.get("a")
        assert not va.flags.aligned
        assert same_bytes(va, a) and same_bytes(f.get("b"), b)
        assert float(va.sum()) == float(a.sum())
        assert np.array_equal(f.get("a", dtype=np.float32), a.astype(np.float32))


def test_open_never_modifies_inputs(tmp_path):
    src = tensors_all_dtypes(3)
    path = tmp_path / "a.safetensors"
    st.save(src, path)
    before, mtime = sha(path), os.stat(path).st_mtime_ns
    with st.open(path) as f:
        for k in f.keys():
            f.get(k)
            if f.info(k).dtype in ("F16", "BF16", "F32", "F64"):
                f.get(k, dtype=np.float32)
    assert sha(path) == before and os.stat(path).st_mtime_ns == mtime


# ---------------------------------------------------------------------------------------
# output guarantees

def test_existing_output_refused_unless_overwrite(tmp_path):
    path = tmp_path / "a.safetensors"
    st.save({"a": np.ones(3, np.float32)}, path)
    before = sha(path)
    with pytest.raises(FileExistsError) as info:
        st.save({"a": np.zeros(3, np.float32)}, path)
    assert info.value.errno == errno.EEXIST and info.value.filename == str(path)
    assert sha(path) == before
    st.save({"a": np.zeros(3, np.float32)}, path, overwrite=True)
    with st.open(path) as f:
        assert f.get("a").sum() == 0
    assert os.listdir(tmp_path) == ["a.safetensors"]


def test_folder_overwrite_removes_the_stale_kind(tmp_path):
    out = tmp_path / "o"
    src = {f"w{i}": np.full(25, i, np.float32) for i in range(4)}
    st.save(src, out, max_shard_size=100)
    assert "model.safetensors.index.json" in os.listdir(out)
    with pytest.raises(FileExistsError):  # a single file would be shadowed by the old index
        st.save(src, out, max_shard_size=10**6)
    st.save({"x": np.ones(2, np.float32)}, out, max_shard_size=10**6, overwrite=True)
    assert "model.safetensors.index.json" not in os.listdir(out)
    with st.open(out) as f:
        assert f.keys() == ["x"]


def test_writer_exception_leaves_nothing(tmp_path):
    out = tmp_path / "o"
    entries = [("a", "F32", (4,)), ("b", "BF16", (2, 2))]
    with pytest.raises(RuntimeError, match="boom"):
        with st.Writer(out, entries, max_shard_size=8) as w:
            w.write("a", np.ones(4, np.float32))
            raise RuntimeError("boom")
    assert not out.exists()  # no final file, no temporary, not even the folder it made
    path = tmp_path / "single.safetensors"
    with pytest.raises(RuntimeError):
        with st.Writer(path, entries) as w:
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    out.mkdir()
    with pytest.raises(RuntimeError):
        with st.Writer(out, entries, max_shard_size=8) as w:
            raise RuntimeError("boom")
    assert os.listdir(out) == []  # a folder that existed before stays


def test_writer_incomplete_or_bad_writes(tmp_path):
    path = tmp_path / "x.safetensors"
    w = st.Writer(path, [("a", np.float32, (4,)), ("b", np.int8, (3,))])
    with pytest.raises(TypeError, match="F32"):
        w.write("a", np.ones(4, np.float64))
    with pytest.raises(ValueError, match="shape"):
        w.write("a", np.ones(5, np.float32))
    with pytest.raises(KeyError):
        w.write("zz", np.ones(4, np.float32))
    w.write("a", np.ones(2, np.float32))           # first half
    with pytest.raises(ValueError, match="overlap"):
        w.write("a", np.ones(1, np.float32), offset=4)
    w.write("b", np.ones(3, np.int8))
    with pytest.raises(ValueError, match="'a' is incomplete"):
        w.close()
    assert not path.exists()
    w.write("a", np.full(2, 2, np.float32), offset=8)
    w.close()
    with st.open(path) as f:
        assert f.get("a").tolist() == [1, 1, 2, 2]


def test_writer_chunks_from_threads(tmp_path):
    rng = np.random.default_rng(4)
    a = random_array(np.float32, (64, 1024), rng)
    with st.Writer(tmp_path / "t.safetensors", [("a", "F32", a.shape)]) as w:
        rows = np.array_split(np.arange(64), 8)
        threads = [threading.Thread(target=w.write,
                                    args=("a", np.ascontiguousarray(a[r]), int(r[0]) * 4096))
                   for r in rows[::-1]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with st.open(tmp_path / "t.safetensors") as f:
        assert same_bytes(f.get("a"), a)


def test_bad_names_and_metadata(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="__metadata__"):
        st.save({"__metadata__": np.ones(1)}, p)
    with pytest.raises(TypeError):
        st.save({"a": np.ones(1)}, p, metadata={"k": 1})
    with pytest.raises(ValueError, match="NUL"):
        st.save({"a\0b": np.ones(1)}, p)
    with pytest.raises(TypeError):
        st.save({"a": np.array(["x"])}, p)
    assert os.listdir(tmp_path) == []


def test_io_errors_are_oserrors(tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError) as info:
        st.open(missing)
    assert info.value.errno == errno.ENOENT and info.value.filename == missing
    with pytest.raises(FileNotFoundError) as info:
        st.open(tmp_path)  # a folder without a checkpoint
    assert info.value.filename == str(tmp_path)
    target = str(tmp_path / "no" / "such" / "dir" / "x.safetensors")
    with pytest.raises(OSError) as info:
        st.save({"a": np.ones(1)}, target)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(IsADirectoryError):
        st.save({"a": np.ones(1)}, tmp_path)


# ---------------------------------------------------------------------------------------
# interop with the safetensors package

def test_safetensors_reads_what_we_write(tmp_path):
    import safetensors.numpy
    torch = pytest.importorskip("torch")  # the torch extra (absent in the core-only wheel check)
    from safetensors.torch import load_file as torch_load

    src = tensors_all_dtypes(5)
    path = tmp_path / "ours.safetensors"
    st.save(src, path, metadata={"format": "pt"})
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"format": "pt"}
    loaded = torch_load(str(path))
    for k, v in src.items():
        t = loaded[k]
        assert tuple(t.shape) == v.shape, k
        assert torch_bytes(t) == v.tobytes(), k
    plain = {k: v for k, v in src.items() if "F8" not in k}  # its numpy loader lacks F8
    st.save(plain, tmp_path / "plain.safetensors")
    np_loaded = safetensors.numpy.load_file(str(tmp_path / "plain.safetensors"))
    assert sorted(np_loaded) == sorted(plain)
    for k, v in plain.items():
        assert same_bytes(np_loaded[k], v), k
    # sharded folders: transformers-style index is read by the package shard by shard
    out = tmp_path / "sharded"
    st.save(src, out, max_shard_size=200)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    for name, shard in index["weight_map"].items():
        with safe_open(str(out / shard), "pt") as f:
            assert torch_bytes(f.get_tensor(name)) == src[name].tobytes()


def test_we_read_what_safetensors_writes(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as torch_save

    torch_dtypes = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8,
                    "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16,
                    "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32,
                    "F32": torch.float32, "F64": torch.float64, "I64": torch.int64,
                    "U64": torch.uint64, "F8_E4M3": torch.float8_e4m3fn,
                    "F8_E5M2": torch.float8_e5m2}
    src = tensors_all_dtypes(6)
    tensors = {}
    for k, v in src.items():
        dt = k.split(".")[1] if k.startswith("t.") else {"scalar": "I32", "empty": "F32",
                                                          "empty_bf16": "BF16"}[k]
        if v.size == 0:
            tensors[k] = torch.zeros(v.shape, dtype=torch_dtypes[dt])
            continue
        raw = torch.from_numpy(v.reshape(-1).view(np.uint8).copy())
        tensors[k] = raw.view(torch_dtypes[dt]).reshape(v.shape)
    path = tmp_path / "theirs.safetensors"
    torch_save(tensors, str(path), metadata={"format": "pt"})
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    meta = header.pop("__metadata__")
    storage_order = sorted(header, key=lambda k: tuple(header[k]["data_offsets"]))
    with st.open(path) as f:
        assert f.metadata == meta
        assert f.keys() == storage_order  # their ordering (alignment, then name) is kept
        for k, v in src.items():
            assert same_bytes(f.get(k), v), k
            assert f.info(k).dtype == header[k]["dtype"]

    import safetensors.numpy
    np_src = {"a": np.arange(10, dtype=np.int16), "b": np.ones((2, 3), np.float64)}
    safetensors.numpy.save_file(np_src, str(tmp_path / "np.safetensors"))
    with st.open(tmp_path / "np.safetensors") as f:
        for k, v in np_src.items():
            assert same_bytes(f.get(k), v)


def test_we_read_transformers_style_sharded_folder(tmp_path):
    """A folder laid out as transformers' save_pretrained does (safetensors shards written by
    the package, an index with total_size and weight_map), with extra metadata keys."""
    import safetensors.numpy

    rng = np.random.default_rng(7)
    shards = {"model-00001-of-00002.safetensors": {"a": random_array(np.float32, (4, 4), rng)},
              "model-00002-of-00002.safetensors": {"b": random_array(np.float16, (3,), rng),
                                                   "c": random_array(np.int64, (2,), rng)}}
    weight_map = {}
    for name, tensors in shards.items():
        safetensors.numpy.save_file(tensors, str(tmp_path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 94, "total_parameters": 21, "origin": "test"},
         "weight_map": weight_map}, indent=2))
    with st.open(tmp_path) as f:
        assert sorted(f.keys()) == ["a", "b", "c"]
        assert f.metadata == {"origin": "test", "format": "pt"}
        for tensors in shards.values():
            for k, v in tensors.items():
                assert same_bytes(f.get(k), v)
        assert os.path.basename(f.info("c").shard) == "model-00002-of-00002.safetensors"


def test_errors_are_importable_and_value_errors():
    assert issubclass(fusechat.SafetensorsError, ValueError)
    mod = __import__(fusechat.SafetensorsError.__module__, fromlist=["x"])
    assert getattr(mod, "SafetensorsError") is fusechat.SafetensorsError


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_bf16_to_f32_streaming_path(tmp_path, threads):
    """Ranges of >= 256k elements take the streaming-store path of fc_convert; the source
    here is unaligned (odd header length) and the length is not a multiple of 8."""
    rng = np.random.default_rng(8)
    a = random_array(ml_dtypes.bfloat16, (3 * 2**20 + 5,), rng)
    text = json.dumps({"a": entry("BF16", [a.size], 0, a.nbytes)}, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8 + 1)
    path = write(tmp_path / "big.safetensors", text, a.tobytes())
    with st.open(path) as f:
        got = f.get("a", dtype=np.float32, threads=threads)
    assert got.tobytes() == a.astype(np.float32).tobytes()


def test_empty_checkpoint_round_trip(tmp_path):
    st.save({}, tmp_path / "e.safetensors")
    raw = (tmp_path / "e.safetensors").read_bytes()
    assert len(raw) % 8 == 0 and json.loads(raw[8:]) == {}
    with st.open(tmp_path / "e.safetensors") as f:
        assert f.keys() == [] and len(f) == 0 and f.metadata == {}
    from safetensors.numpy import load_file
    assert load_file(str(tmp_path / "e.safetensors")) == {}


def test_no_leak_over_many_calls(tmp_path):
    """bottleneck's memory test: peak RSS stays put over many open/get/save/error calls."""
    import resource

    path, out = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    st.save({"a": np.ones((64, 64), np.float32), "b": np.ones(10, np.int8)}, path)

    def once():
        with st.open(path) as f:
            f.get("a")
            w = f.get("a", dtype=np.float64)
            f.info("b"), f.metadata, f.keys()
            with pytest.raises(KeyError):
                f.get("zz")
        st.save({"x": w}, out, overwrite=True)
        with pytest.raises(FileExistsError):
            st.save({"x": w}, out)
        with pytest.raises(OSError):
            st.open(path + ".missing")

    for _ in range(200):
        once()
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(1000):
        once()
    gc.collect()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 4096  # KiB


def test_special_files_refused_without_hanging(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as info:
        st.open(fifo)  # a reader must not block waiting for a writer
    assert info.value.filename == str(fifo)
    with pytest.raises(OSError):
        st.open(tmp_path)  # a folder whose model.safetensors is a FIFO
    (tmp_path / "model.safetensors.index.json").mkdir()
    with pytest.raises(OSError):
        st.open(tmp_path)
