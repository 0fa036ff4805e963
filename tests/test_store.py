"""TopK store: round trips through the C safetensors writer/reader, validation on open,
and the nothing-at-the-final-path-until-complete guarantee."""
import json
import os

import numpy as np
import pytest

from fusechat import safetensors as st
from fusechat.errors import FormatError
from fusechat.stages.store import TopKStore, TopKStoreWriter


def random_samples(n, k, seed=0, vocab=500):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(1, 40))
        logits = np.sort(rng.normal(size=(t, k)).astype(np.float32), axis=1)[:, ::-1]
        out.append(dict(sample_index=1000 + 3 * i, input_ids=rng.integers(0, vocab, t),
                        loss_mask=rng.integers(0, 2, t), topk_ids=rng.integers(0, vocab, (t, k)),
                        topk_logits=logits, token_ce=rng.random(t), seq_ce=float(rng.random())))
    return out


@pytest.mark.parametrize("logits_dtype", ["F16", "F32"])
def test_round_trip_across_shards(tmp_path, logits_dtype):
    samples = random_samples(57, k=10)
    path = tmp_path / "store"
    with TopKStoreWriter(path, k=10, logits_dtype=logits_dtype, model="tiny",
                         tokenizer_fingerprint="abc", shard_tokens=200) as w:
        for s in samples:
            w.add(**s)
    store = TopKStore(path, expect_fingerprint="abc")
    assert len(store) == 57 and len(store.manifest["shards"]) > 2
    assert store.n_tokens == sum(len(s["input_ids"]) for s in samples)
    np.testing.assert_array_equal(store.sample_indices(), [s["sample_index"] for s in samples])
    ldt = np.float16 if logits_dtype == "F16" else np.float32
    for i, s in enumerate(samples):
        got = store[i]
        assert got.sample_index == s["sample_index"]
        np.testing.assert_array_equal(got.input_ids, s["input_ids"])
        np.testing.assert_array_equal(got.loss_mask, s["loss_mask"])
        np.testing.assert_array_equal(got.topk_ids, s["topk_ids"])
        np.testing.assert_array_equal(got.topk_logits, s["topk_logits"].astype(ldt))
        np.testing.assert_array_equal(got.token_ce, s["token_ce"].astype(np.float32))
        assert got.seq_ce == np.float32(s["seq_ce"])
    assert sum(len(b) for b in store.iter_batches(8)) == 57
    assert store[-1].sample_index == samples[-1]["sample_index"]
    with pytest.raises(IndexError):
        store[57]
    # bytes per token: the fields at K=10 with f16 logits are 69 B/token plus headers
    bpt = store.bytes_per_token()
    assert 69 <= bpt < 69 + 40 if logits_dtype == "F16" else 89 <= bpt < 89 + 40
    with pytest.raises(FormatError, match="tokenizer") as e:
        TopKStore(path, expect_fingerprint="xyz")
    assert e.value.rule == "tokenizer_mismatch"


def test_output_appears_only_when_complete(tmp_path):
    path = tmp_path / "store"
    with pytest.raises(RuntimeError):
        with TopKStoreWriter(path, k=4, shard_tokens=10) as w:
            for s in random_samples(20, k=4):
                w.add(**s)
            raise RuntimeError("killed")
    assert not path.exists() and os.listdir(tmp_path) == []
    with TopKStoreWriter(path, k=4) as w:
        w.add(**random_samples(1, k=4)[0])
    with pytest.raises(FileExistsError):
        TopKStoreWriter(path, k=4)
    with TopKStoreWriter(path, k=4, overwrite=True) as w:
        for s in random_samples(3, k=4, seed=1):
            w.add(**s)
    assert len(TopKStore(path)) == 3


def test_add_rejects_bad_samples(tmp_path):
    w = TopKStoreWriter(tmp_path / "s", k=4)
    s = random_samples(1, k=4)[0]
    with pytest.raises(ValueError, match=r"must be \["):
        w.add(**{**s, "topk_ids": s["topk_ids"][:, :3]})
    w.add(**s)
    with pytest.raises(ValueError, match="added twice"):
        w.add(**s)
    w.abort()
    assert not (tmp_path / "s").exists()


def _write(path, n=5, k=3, shard_tokens=30):
    with TopKStoreWriter(path, k=k, shard_tokens=shard_tokens) as w:
        for s in random_samples(n, k=k):
            w.add(**s)
    return json.loads((path / "manifest.json").read_text())


def _edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("edit,rule", [
    (lambda m: m.update(format="other"), "bad_manifest"),
    (lambda m: m.update(version=99), "unsupported_version"),
    (lambda m: m.pop("k"), "bad_manifest"),
    (lambda m: m["shards"][0].update(file="../evil.safetensors"), "bad_shard_name"),
    (lambda m: m.update(n_samples=m["n_samples"] + 1), "count_mismatch"),
    (lambda m: (m["shards"][0].update(n_tokens=m["shards"][0]["n_tokens"] + 1),
                m.update(n_tokens=m["n_tokens"] + 1)), "bad_tensor"),
    (lambda m: m.update(k=4), "bad_tensor"),
])
def test_validation_on_open(tmp_path, edit, rule):
    path = tmp_path / "store"
    _write(path)
    _edit_manifest(path, edit)
    with pytest.raises(FormatError) as e:
        TopKStore(path)
    assert e.value.rule == rule and str(path) in str(e.value)


def test_bad_offsets_and_missing_manifest(tmp_path):
    path = tmp_path / "store"
    m = _write(path, n=4, shard_tokens=10**6)
    shard = path / m["shards"][0]["file"]
    with st.open(shard) as f:
        tensors = {k: np.array(f.get(k)) for k in f.keys()}
    tensors["offsets"][1] = tensors["offsets"][2] + 1  # not monotone
    st.save(tensors, shard, overwrite=True)
    with pytest.raises(FormatError) as e:
        TopKStore(path)
    assert e.value.rule == "bad_offsets"
    with pytest.raises(FormatError) as e:
        TopKStore(tmp_path)
    assert e.value.rule == "missing_manifest"


def test_to_hf_dataset(tmp_path):
    pytest.importorskip("datasets")  # Hugging Face datasets comes with the torch extra's stack
    path = tmp_path / "store"
    _write(path, n=6, k=3)
    store = TopKStore(path)
    ds = store.to_hf_dataset()
    assert len(ds) == 6
    row = ds[2]
    s = store[2]
    assert row["input_ids"] == s.input_ids.tolist()
    assert row["per_step_indices"] == s.topk_ids.tolist()
    np.testing.assert_allclose(row["per_step_logits"], s.topk_logits.astype(np.float32))


# --------------------------------------------------------------------------------------
# token ids: U16 or U24 when the vocabulary fits (format 1.1, 1.2), else I32; older stores read

def padded_samples(n, k, vocab, seed=0):
    """random_samples with ids spanning the whole vocabulary (its last id included) and
    -1 pads at the end of some top-K rows."""
    out = random_samples(n, k, seed=seed, vocab=vocab)
    rng = np.random.default_rng(seed + 1)
    for s in out:
        s["input_ids"][0] = vocab - 1
        s["topk_ids"][0, 0] = vocab - 1
        cut = rng.integers(0, k + 1, len(s["input_ids"]))
        s["topk_ids"][np.arange(k)[None, :] >= cut[:, None]] = -1
    return out


@pytest.mark.parametrize("vocab,want", [
    (500, "U16"), (65535, "U16"),  # ids up to 65534, 65535 is the pad
    (65536, "U24"), (151936, "U24"), (2**24 - 1, "U24"),  # three bytes, 2^24 - 1 the pad
    (2**24, "I32"), (None, "I32"),  # no code left for the pad / unknown
])
def test_ids_dtype_follows_the_vocabulary_and_round_trips(tmp_path, vocab, want):
    import safetensors.numpy as hf_st

    samples = padded_samples(23, k=10, vocab=vocab or 70000)
    path = tmp_path / "store"
    with TopKStoreWriter(path, k=10, vocab_size=vocab, shard_tokens=150) as w:
        for s in samples:
            w.add(**s)
    m = json.loads((path / "manifest.json").read_text())
    assert (m["version"], m["minor_version"]) == (1, 3)
    assert m["dtypes"]["input_ids"] == m["dtypes"]["topk_ids"] == want
    # the files, read by the safetensors library: the stored dtype, pads as all ones
    np_dtype, pad = {"U16": (np.uint16, 65535), "U24": (np.uint8, 2**24 - 1),
                     "I32": (np.int32, -1)}[want]
    files = [hf_st.load_file(str(path / sh["file"])) for sh in m["shards"]]
    assert len(files) > 1
    disk_ids = np.concatenate([f["input_ids"] for f in files])
    disk_topk = np.concatenate([f["topk_ids"] for f in files])
    assert disk_ids.dtype == np_dtype and disk_topk.dtype == np_dtype
    if want == "U24":  # little-endian bytes, decoded here independently of the reader
        assert disk_ids.shape[-1] == 3 and disk_topk.shape[-1] == 3
        disk_ids, disk_topk = (sum(a[..., j].astype(np.int64) << (8 * j) for j in range(3))
                               for a in (disk_ids, disk_topk))
    np.testing.assert_array_equal(disk_ids, np.concatenate([s["input_ids"] for s in samples]))
    want_topk = np.concatenate([s["topk_ids"] for s in samples])
    np.testing.assert_array_equal(disk_topk, np.where(want_topk < 0, pad, want_topk))
    # what readers see: int32 with -1 pads either way
    store = TopKStore(path)
    for s, got in zip(samples, store):
        assert got.input_ids.dtype == np.int32 and got.topk_ids.dtype == np.int32
        np.testing.assert_array_equal(got.input_ids, s["input_ids"])
        np.testing.assert_array_equal(got.topk_ids, s["topk_ids"])
    # bytes per token: the fields (ids 2, 3 or 4 bytes) plus per-sample arrays and headers
    b = {"U16": 2, "U24": 3, "I32": 4}[want]
    fields = b + 1 + 10 * b + 10 * 2 + 4 + 4  # ... token_ce, topk_lognorm
    per_sample = (8 + 4 + 8) * len(samples) + 8 * len(files)
    headers = sum(os.path.getsize(path / sh["file"]) for sh in m["shards"]) \
        - store.n_tokens * fields - per_sample
    assert store.bytes_per_token() == pytest.approx(fields + (per_sample + headers) / store.n_tokens)
    assert 0 < headers < 1000 * len(files)


def test_u16_u24_and_i32_stores_read_the_same(tmp_path):
    samples = padded_samples(9, k=4, vocab=300)
    stores = []
    for dt in ("U16", "U24", "I32"):
        with TopKStoreWriter(tmp_path / dt, k=4, vocab_size=300, ids_dtype=dt) as w:
            for s in samples:
                w.add(**s)
        stores.append(TopKStore(tmp_path / dt))
    assert [s.manifest["dtypes"]["topk_ids"] for s in stores] == ["U16", "U24", "I32"]
    i32 = stores[-1]
    for narrow in stores[:2]:
        for a, b in zip(narrow, i32):
            for f in ("input_ids", "loss_mask", "topk_ids", "topk_logits", "token_ce"):
                x, y = getattr(a, f), getattr(b, f)
                assert x.dtype == y.dtype and np.array_equal(x, y)
        assert [s.topk_ids.tolist() for s in narrow.iter_batches(4).__next__()] == \
            [s.topk_ids.tolist() for s in i32.iter_batches(4).__next__()]
        pytest.importorskip("datasets")
        ra, rb = narrow.to_hf_dataset(), i32.to_hf_dataset()
        assert ra.to_list() == rb.to_list() and min(min(r) for r in ra[0]["per_step_indices"]) >= -1
    assert stores[0].bytes_per_token() < stores[1].bytes_per_token() < i32.bytes_per_token()


def test_writer_checks_ids(tmp_path):
    with pytest.raises(ValueError, match="ids_dtype"):
        TopKStoreWriter(tmp_path / "a", k=2, vocab_size=65536, ids_dtype="U16")
    with pytest.raises(ValueError, match="ids_dtype"):
        TopKStoreWriter(tmp_path / "a", k=2, vocab_size=2**24, ids_dtype="U24")
    with pytest.raises(ValueError, match="ids_dtype"):
        TopKStoreWriter(tmp_path / "b", k=2, ids_dtype="U16")  # unknown vocabulary
    with pytest.raises(ValueError, match="ids_dtype"):
        TopKStoreWriter(tmp_path / "c", k=2, vocab_size=10, ids_dtype="I16")
    w = TopKStoreWriter(tmp_path / "d", k=2, vocab_size=300)
    ok = dict(sample_index=0, input_ids=[1, 2], loss_mask=[0, 1], topk_ids=[[3, -1], [4, 5]],
              topk_logits=[[1, 0], [2, 1]], token_ce=[0, 1], seq_ce=1.0)
    for bad, field in (([1, 300], "input_ids"), ([1, -1], "input_ids"),
                       ([[3, -2], [4, 5]], "topk_ids"), ([[3, 65535], [4, 5]], "topk_ids")):
        with pytest.raises(ValueError, match=f"{field} holds .*token_id_out_of_range"):
            w.add(**{**ok, field: bad})
    with pytest.raises(TypeError, match="integer ids"):
        w.add(**{**ok, "input_ids": [1.0, 2.0]})
    w.add(**ok)
    w.close()
    assert TopKStore(tmp_path / "d")[0].topk_ids.tolist() == [[3, -1], [4, 5]]
    # I32 with no vocabulary: ids must still fit int32 (no silent wrap)
    w = TopKStoreWriter(tmp_path / "e", k=2)
    with pytest.raises(ValueError, match="token_id_out_of_range"):
        w.add(**{**ok, "input_ids": [1, 2**31]})
    w.abort()


def _u16_store(path):
    with TopKStoreWriter(path, k=3, vocab_size=500, shard_tokens=30) as w:
        for s in random_samples(5, k=3):
            w.add(**s)


@pytest.mark.parametrize("edit,rule", [
    (lambda m: m.update(vocab_size=65536), "ids_dtype"),
    (lambda m: m.update(minor_version=1, dtypes={**m["dtypes"], "input_ids": "U24",
                                                  "topk_ids": "U24"}), "bad_dtype"),  # 1.2
    (lambda m: m.update(vocab_size=None), "ids_dtype"),
    (lambda m: m.pop("vocab_size"), "ids_dtype"),
    (lambda m: m.pop("minor_version"), "bad_dtype"),  # a 1.0 store holds I32 ids only
    (lambda m: m.update(minor_version="1"), "bad_manifest"),
    (lambda m: m["dtypes"].update(topk_ids="I32"), "bad_tensor"),  # the shards hold U16
    (lambda m: m["dtypes"].update(topk_ids="U24"), "bad_tensor"),
    (lambda m: m["dtypes"].update(input_ids="I64"), "bad_dtype"),
    (lambda m: m["dtypes"].update(token_ce="F16"), "bad_dtype"),
    (lambda m: m["dtypes"].pop("topk_logits"), "bad_dtype"),
    (lambda m: m["dtypes"].update(topk_ids=["U16"]), "bad_dtype"),
])
def test_ids_dtype_validation_on_open(tmp_path, edit, rule):
    path = tmp_path / "store"
    _u16_store(path)
    TopKStore(path)
    _edit_manifest(path, edit)
    with pytest.raises(FormatError) as e:
        TopKStore(path)
    assert e.value.rule == rule and str(path) in str(e.value)


def write_v1_0_store(path, samples, k):
    """A store exactly as format 1.0 wrote it (all ids I32, no minor_version), built with the
    safetensors library and a hand-written manifest."""
    import safetensors.numpy as hf_st

    os.makedirs(path)
    lengths = [len(s["input_ids"]) for s in samples]
    hf_st.save_file({
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "input_ids": np.concatenate([s["input_ids"] for s in samples]).astype(np.int32),
        "loss_mask": np.concatenate([s["loss_mask"] for s in samples]).astype(np.uint8),
        "topk_ids": np.concatenate([s["topk_ids"] for s in samples]).astype(np.int32),
        "topk_logits": np.concatenate([s["topk_logits"] for s in samples]).astype(np.float16),
        "token_ce": np.concatenate([s["token_ce"] for s in samples]).astype(np.float32),
        "seq_ce": np.array([s["seq_ce"] for s in samples], np.float32),
        "sample_index": np.array([s["sample_index"] for s in samples], np.int64),
    }, str(path / "shard-00000.safetensors"), metadata={"format": "fusechat-topk"})
    dtypes = {"offsets": "I64", "input_ids": "I32", "loss_mask": "U8", "topk_ids": "I32",
              "topk_logits": "F16", "token_ce": "F32", "seq_ce": "F32", "sample_index": "I64"}
    manifest = {"format": "fusechat-topk", "version": 1, "kind": "extracted", "k": k,
                "model": "old", "tokenizer_fingerprint": "fp", "vocab_size": 300, "info": {},
                "dtypes": dtypes, "n_samples": len(samples), "n_tokens": sum(lengths),
                "shards": [{"file": "shard-00000.safetensors", "n_samples": len(samples),
                            "n_tokens": sum(lengths)}], "created_by": "fusechat 0.1.0"}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))


def test_format_1_0_store_still_opens(tmp_path):
    from fusechat.stages.store import open_store, part_name

    samples = padded_samples(6, k=4, vocab=300)
    write_v1_0_store(tmp_path / "old", samples, k=4)
    old = TopKStore(tmp_path / "old", expect_fingerprint="fp")
    assert len(old) == 6 and old[0].topk_ids.dtype == np.int32
    for s, got in zip(samples, old):
        np.testing.assert_array_equal(got.input_ids, s["input_ids"])
        np.testing.assert_array_equal(got.topk_ids, s["topk_ids"])
        assert got.topk_ids.base is not None  # a view of the mapping, not a copy
    # a parted store whose first part is 1.0 (I32) and second 1.1 (U16): resumed after an
    # upgrade, read as one store
    root = tmp_path / "parted"
    write_v1_0_store(root / part_name(0, 2), samples[:3], k=4)
    more = padded_samples(3, k=4, vocab=300, seed=5)
    for s in more:
        s["sample_index"] += 10**6
    with TopKStoreWriter(root / part_name(1, 2), k=4, model="old", tokenizer_fingerprint="fp",
                         vocab_size=300) as w:
        for s in more:
            w.add(**s)
    both = open_store(root)
    assert both.manifest["dtypes"]["topk_ids"] == "I32|U16"
    for s, got in zip(samples[:3] + more, both):
        np.testing.assert_array_equal(got.topk_ids, s["topk_ids"])


def test_lognorm_round_trips_and_old_stores_are_refused_for_projection(tmp_path):
    """Format 1.3 keeps the per-position log-normaliser: logits minus it are the absolute
    log-probabilities (checked against a log-softmax over a full random vocabulary); a store
    without it opens as before but refuses topk_logprobs with rule needs_lognorm."""
    rng = np.random.default_rng(3)
    full = rng.normal(size=(12, 50)).astype(np.float32) * 3
    top = np.argsort(-full, axis=1, kind="stable")[:, :4]
    lse = np.log(np.exp(full.astype(np.float64)).sum(1)).astype(np.float32)
    path = tmp_path / "new"
    with TopKStoreWriter(path, k=4, vocab_size=50) as w:
        w.add(7, np.arange(12), np.ones(12), top, np.take_along_axis(full, top, 1), np.zeros(12),
              0.0, topk_lognorm=lse)
        w.add(8, np.arange(3), np.ones(3), top[:3], np.take_along_axis(full, top, 1)[:3],
              np.zeros(3), 0.0)
    store = TopKStore(path)
    logsoftmax = full - lse[:, None]
    np.testing.assert_allclose(store[0].topk_logprobs(), np.take_along_axis(logsoftmax, top, 1),
                               atol=2e-2)  # F16 logits
    with pytest.raises(FormatError, match="sample 8.*re-extract") as e:
        store[1].topk_logprobs()
    assert e.value.rule == "needs_lognorm"
    write_v1_0_store(tmp_path / "old", padded_samples(2, k=4, vocab=300), k=4)
    old = TopKStore(tmp_path / "old")
    assert old[0].topk_lognorm is None
    with pytest.raises(FormatError, match="needs_lognorm"):
        old[0].topk_logprobs()
