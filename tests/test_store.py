"""TopK store: round trips through the C safetensors writer/reader, validation on open,
and the nothing-at-the-final-path-until-complete guarantee."""
import json
import os

import numpy as np
import pytest

from fusechat import safetensors as st
from fusechat.errors import FormatError
from fusechat.store import TopKStore, TopKStoreWriter


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
