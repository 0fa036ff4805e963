"""Extraction and training on tiny models: the store against an independent torch.topk +
F.cross_entropy computation, batching/sharding/resume, bad records, the collator against the
store, FusionTrainer's loss against a float64 dense reference, and the CLI."""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fusechat.demo import data as demo_data, models as demo_models  # noqa: E402
from fusechat.stages import chat  # noqa: E402
from fusechat.cli import build_parser, main, train_extra_args  # noqa: E402
from fusechat.errors import FormatError  # noqa: E402
from fusechat.stages.extract import extract, parse_shard, shard_range, tokenizer_fingerprint  # noqa: E402
from fusechat.stages.store import TopKStore, open_store, part_name  # noqa: E402
from fusechat.stages.train import FusionCollator, FusionTrainer, train, training_arguments  # noqa: E402

N_RECORDS = 25


@pytest.fixture(scope="module")
def pivot(tmp_path_factory):
    """A tiny Llama with a Metaspace BPE tokenizer (with BOS), saved as an HF folder."""
    tok = demo_models.train_tokenizer("metaspace")
    model = demo_models.build_model("llama", tok, seed=3)
    path = str(tmp_path_factory.mktemp("models") / "pivot")
    demo_models.save(model, tok, path)
    return path


@pytest.fixture(scope="module")
def records():
    return demo_data.make_dataset(N_RECORDS, seed=7)


@pytest.fixture(scope="module")
def store32(pivot, records, tmp_path_factory):
    """The pivot's store in float32 with float32 logits, batch 5."""
    out = str(tmp_path_factory.mktemp("stores") / "s32")
    extract(pivot, records, out, dtype="float32", batch_size=5, logits_dtype="F32", quiet=True)
    return out


def load(pivot):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(pivot, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(pivot))


def counting(model, monkeypatch):
    calls = []
    forward = model.forward

    def wrapped(*a, **kw):
        calls.append(1)
        return forward(*a, **kw)

    monkeypatch.setattr(model, "forward", wrapped)
    return calls


def assert_same_store(a, b, logits_rtol=0.0, ce_atol=0.0):
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.sample_indices(), b.sample_indices())
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.input_ids, y.input_ids)
        np.testing.assert_array_equal(x.loss_mask, y.loss_mask)
        np.testing.assert_array_equal(x.topk_ids, y.topk_ids)
        np.testing.assert_allclose(x.topk_logits.astype(np.float32),
                                   y.topk_logits.astype(np.float32), rtol=logits_rtol, atol=1e-6)
        np.testing.assert_allclose(x.token_ce, y.token_ce, atol=ce_atol)
        np.testing.assert_allclose(x.seq_ce, y.seq_ce, atol=ce_atol)


# --------------------------------------------------------------------------------------
# extraction

def check_against_torch(store, model, tok, records, template="openchat_3.5"):
    """Every stored sample against torch.topk + F.cross_entropy on the model's float32 logits
    for that conversation alone (no padding, no batching)."""
    sep = chat.end_of_turn_token(tok) if template == "openchat_3.5" else None
    convs, _ = chat.load_conversations(records)
    assert len(store) == len(convs)
    for conv, s in zip(convs, store):
        t = chat.tokenize(conv, tok, template=template, sep=sep)  # tested in test_chat
        assert s.sample_index == conv.index
        np.testing.assert_array_equal(s.input_ids, t.input_ids)
        np.testing.assert_array_equal(s.loss_mask, t.loss_mask)
        ids = torch.from_numpy(t.input_ids.astype(np.int64))[None]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        vals, top = torch.topk(logits, store.k)
        np.testing.assert_array_equal(s.topk_ids, top.numpy())
        np.testing.assert_allclose(s.topk_logits.astype(np.float32), vals.numpy(),
                                   rtol=1e-5, atol=1e-5)
        ce = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
        sup = torch.from_numpy(t.loss_mask[1:].astype(bool))
        want = torch.where(sup, ce, 0.0).numpy()
        np.testing.assert_allclose(s.token_ce[:-1], want, rtol=1e-5, atol=1e-5)
        assert s.token_ce[-1] == 0  # nothing after the last token
        np.testing.assert_allclose(s.seq_ce, ce[sup].mean().item(), rtol=1e-5)
        # the log-normaliser: top-K logits minus it are torch's log-softmax values
        np.testing.assert_allclose(s.topk_lognorm, torch.logsumexp(logits, -1).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_extract_matches_torch_topk_and_cross_entropy(pivot, records, store32):
    model, tok = load(pivot)
    store = TopKStore(store32, expect_fingerprint=tokenizer_fingerprint(tok))
    m = store.manifest
    assert (m["kind"], m["k"], m["model"], m["vocab_size"]) == ("extracted", 10, "pivot", len(tok))
    assert m["info"]["template"] == "openchat_3.5" and m["info"]["max_length"] == 2048
    assert m["dtypes"]["input_ids"] == m["dtypes"]["topk_ids"] == "U16"  # a small vocabulary
    assert len(store) == N_RECORDS
    check_against_torch(store, model, tok, records)


def test_extract_gpt2_byte_level_with_the_model_template(records, tmp_path):
    """No BOS, byte-level BPE, GPT-2 architecture, the tokenizer's own chat template, K=7."""
    tok = demo_models.train_tokenizer("byte_level")
    tok.chat_template = ("{% for m in messages %}<|end_of_turn|>{{ m['role'] }}\n"
                         "{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<|end_of_turn|>assistant\n{% endif %}")
    model = demo_models.build_model("gpt2", tok, seed=5).eval()
    path = extract(model, records[:9], tmp_path / "g", tokenizer=tok, template="model", k=7,
                   dtype="float32", batch_size=4, logits_dtype="F32", quiet=True)
    store = TopKStore(path)
    assert store.manifest["info"]["template"] == "model" and store.k == 7
    check_against_torch(store, model, tok, records[:9], template="model")


def test_extract_with_a_vocabulary_past_65535_stores_u24_ids(records, tmp_path):
    """A model scoring 70000 ids (its tokenizer's few hundred plus unused rows, as real
    models pad theirs): three-byte ids, and top-K ids past 65535 stored exactly."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = demo_models.train_tokenizer("metaspace")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=70000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)).eval()
    path = extract(model, records[:4], tmp_path / "big", tokenizer=tok, dtype="float32",
                   logits_dtype="F32", quiet=True)
    store = TopKStore(path)
    assert store.manifest["vocab_size"] == 70000
    assert store.manifest["dtypes"]["input_ids"] == store.manifest["dtypes"]["topk_ids"] == "U24"
    assert max(int(s.topk_ids.max()) for s in store) >= 65535  # ids U16 could not hold
    check_against_torch(store, model, tok, records[:4])


def test_f16_logits_are_the_rounded_f32_ones(pivot, records, store32, tmp_path):
    out = tmp_path / "s16"
    extract(pivot, records, out, dtype="float32", batch_size=5, quiet=True)
    a, b = TopKStore(store32), TopKStore(out)
    assert b.manifest["dtypes"]["topk_logits"] == "F16"
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.topk_ids, y.topk_ids)
        np.testing.assert_array_equal(x.topk_logits.astype(np.float16), y.topk_logits)
        np.testing.assert_array_equal(x.token_ce, y.token_ce)


def test_batching_does_not_change_the_store(pivot, records, store32, tmp_path):
    out = tmp_path / "b1"
    extract(pivot, records, out, dtype="float32", batch_size=1, logits_dtype="F32", quiet=True)
    # different padding and batch shapes: equal up to float32 matmul reassociation
    assert_same_store(TopKStore(out), TopKStore(store32), logits_rtol=1e-5, ce_atol=1e-5)


def test_bfloat16_extraction_is_close(pivot, records, store32, tmp_path):
    out = tmp_path / "bf16"
    extract(pivot, records[:6], out, dtype="bfloat16", batch_size=3, quiet=True)
    ref = TopKStore(store32)
    for i, s in enumerate(TopKStore(out)):
        np.testing.assert_allclose(s.seq_ce, ref[i].seq_ce, rtol=0.05)


def test_shards_split_resume_and_union(pivot, records, store32, tmp_path, monkeypatch):
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    # the reference's split: floor(N/n) rows each, the last shard takes the remainder
    assert [shard_range(25, (i, 3)) for i in range(3)] == [(0, 8), (8, 16), (16, 25)]
    assert [shard_range(2, (i, 3)) for i in range(3)] == [(0, 0), (0, 0), (0, 2)]

    model, tok = load(pivot)
    calls = counting(model, monkeypatch)
    out = tmp_path / "parts"
    kw = dict(tokenizer=tok, dtype="float32", batch_size=4, logits_dtype="F32", quiet=True)
    paths = [extract(model, records, out, shard=(i, 3), **kw) for i in range(3)]
    assert [os.path.basename(p) for p in paths] == [part_name(i, 3) for i in range(3)]
    assert sorted(os.listdir(out)) == [part_name(i, 3) for i in range(3)]
    assert list(TopKStore(paths[1]).sample_indices()) == list(range(8, 16))
    assert len(calls) == 2 + 2 + 3

    # the union reads like the unsharded store (model given as an object: name differs)
    with open_store(out, expect_fingerprint=tokenizer_fingerprint(tok)) as union:
        assert len(union) == N_RECORDS and union.k == 10
        assert_same_store(union, TopKStore(store32), logits_rtol=1e-5, ce_atol=1e-5)
        assert union[-1].sample_index == N_RECORDS - 1

    # rerun: finished parts are skipped without a forward pass
    mtime = os.stat(os.path.join(paths[1], "manifest.json")).st_mtime_ns
    calls.clear()
    assert extract(model, records, out, shard=(1, 3), **kw) == paths[1]
    assert calls == [] and os.stat(os.path.join(paths[1], "manifest.json")).st_mtime_ns == mtime

    # a missing part is refused by name; rerunning that shard (here from the env) restores it
    os.rename(paths[2], str(out / "elsewhere"))
    with pytest.raises(FormatError, match="part-00002-of-00003") as e:
        open_store(out)
    assert e.value.rule == "missing_part"
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert extract(model, records, out, **kw) == paths[2]
    assert len(calls) == 3
    shutil.rmtree(out / "elsewhere")
    assert len(open_store(out)) == N_RECORDS
    rows = open_store(out).to_hf_dataset()
    assert len(rows) == N_RECORDS and rows[8]["sample_index"] == 8
    np.testing.assert_array_equal(rows[8]["per_step_indices"], TopKStore(paths[1])[0].topk_ids)

    # other settings at the same path: refused unless overwrite
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(FileExistsError, match="other settings.*info"):
        extract(model, records, out, shard=(0, 3), **{**kw, "batch_size": 4}, k=5)
    extract(model, records, out, shard=(0, 3), **kw, k=5, overwrite=True)
    with pytest.raises(FormatError, match="k is 10") as e:
        open_store(out)
    assert e.value.rule == "part_mismatch"


def bad_dataset(records):
    recs = [json.loads(json.dumps(r)) for r in records[:8]]
    del recs[3]["messages"][1]["role"]                                 # missing role
    recs[5]["messages"][1]["content"] = "  "                           # empty assistant turn
    recs[6]["messages"].append({"role": "assistant", "content": "x"})  # not alternating
    recs[7]["messages"][0]["content"] = " ".join(["lamp river stone"] * 60)  # truncates away
    return recs


def test_bad_records_raise_with_their_index_or_are_skipped(pivot, records, tmp_path):
    recs = bad_dataset(records)
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    kw = dict(dtype="float32", max_length=64, quiet=True)
    with pytest.raises(FormatError,
                       match=r"bad\.jsonl: line 4 \(record 3\): turn 1 has no 'role'"):
        extract(pivot, data, tmp_path / "x", **kw)
    assert not os.path.exists(tmp_path / "x")
    for i, rule in ((5, "empty assistant"), (6, "do not alternate"), (7, "no supervised token")):
        good = [r for j, r in enumerate(recs) if j in (0, 1, i)]
        with pytest.raises(FormatError, match=f"record 2.*{rule}"):
            extract(pivot, good, tmp_path / "x", **kw)
    path = extract(pivot, data, tmp_path / "x", skip_bad_records=True, **kw)
    store = TopKStore(path)
    assert list(store.sample_indices()) == [0, 1, 2, 4]
    assert store.manifest["info"]["skipped_records"] == 4
    # in a shard, indices stay the dataset's rows
    with pytest.raises(FormatError,
                       match=r"line 6 \(record 5\): turn 1 is an empty assistant turn"):
        extract(pivot, data, tmp_path / "y", shard=(1, 2), **kw)
    path = extract(pivot, data, tmp_path / "y", shard=(1, 2), skip_bad_records=True, **kw)
    assert list(TopKStore(path).sample_indices()) == [4]


def test_extract_arguments_are_checked(pivot, records, tmp_path):
    with pytest.raises(ValueError, match="k must be"):
        extract(pivot, records, tmp_path / "o", k=0)
    with pytest.raises(ValueError, match="template"):
        extract(pivot, records, tmp_path / "o", template="chatml")
    with pytest.raises(ValueError, match="dtype"):
        extract(pivot, records, tmp_path / "o", dtype="float16")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        extract(tmp_path / "nope", records, tmp_path / "o")
    (tmp_path / "o").mkdir()
    with pytest.raises(FileExistsError, match="not a TopK store"):
        extract(pivot, records, tmp_path / "o", dtype="float32")


# --------------------------------------------------------------------------------------
# training

def test_collator_tensors_match_the_store(store32):
    store = TopKStore(store32)
    samples = [store[i] for i in (3, 0, 7)]
    batch = FusionCollator(pad_id=0, k=store.k)(samples)
    width = max(len(s.input_ids) for s in samples)
    assert batch["input_ids"].shape == (3, width) and batch["target_ids"].shape == (3, width, 10)
    assert batch["target_ids"].dtype == torch.int32 and batch["target_values"].dtype == torch.float32
    for r, s in enumerate(samples):
        n = len(s.input_ids)
        np.testing.assert_array_equal(batch["input_ids"][r, :n], s.input_ids)
        assert (batch["input_ids"][r, n:] == 0).all() and (batch["attention_mask"][r, n:] == 0).all()
        assert (batch["attention_mask"][r, :n] == 1).all()
        want = np.where(s.loss_mask == 1, s.input_ids, -100)
        np.testing.assert_array_equal(batch["labels"][r, :n], want)
        assert (batch["labels"][r, n:] == -100).all()
        np.testing.assert_array_equal(batch["target_ids"][r, :n], s.topk_ids)
        np.testing.assert_array_equal(batch["target_values"][r, :n], s.topk_logits)
        assert (batch["target_ids"][r, n:] == -1).all()


def reference_loss(logits, labels, tids, tvals, lm_weight, normalizer=None):
    """Dense float64 FuseChat loss: lm_weight*CE(gold) + (1-lm_weight)*CE(target renormalised
    over its entries), gold one-hot for an empty target, over the shifted supervised rows."""
    z = logits.double()
    total, count = 0.0, 0
    for b in range(z.shape[0]):
        for t in range(z.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            logq = torch.log_softmax(z[b, t], -1)
            ids = tids[b, t].long()
            keep = ids >= 0
            if keep.any():
                p = torch.softmax(tvals[b, t][keep].double(), -1)
                dense = torch.zeros_like(logq).index_put_((ids[keep],), p, accumulate=True)
            else:
                dense = torch.nn.functional.one_hot(torch.tensor(y), z.shape[-1]).double()
            total += lm_weight * -logq[y].item() + (1 - lm_weight) * -(dense * logq).sum().item()
            count += 1
    return total / (normalizer or count)


def make_trainer(model, tmp_path, **kw):
    args = training_arguments(str(tmp_path / "work"), epochs=1, lr=1e-3, batch_size=4,
                              grad_accum=1, max_steps=None, seed=0, bf16=False, device="cpu",
                              quiet=True, extra=None)
    return FusionTrainer(model=model, args=args, **kw)


def test_fusion_trainer_loss_matches_a_dense_float64_reference(pivot, store32, tmp_path):
    model, _ = load(pivot)
    store = TopKStore(store32)
    batch = FusionCollator(0, 10)([store[i] for i in (1, 2, 9, 4)])
    batch["target_ids"][0, 2:6] = -1  # empty targets fall back to the gold one-hot
    batch["target_ids"][1, 3, 5:] = -1  # a short target row
    trainer = make_trainer(model, tmp_path, lm_weight=0.9)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = trainer.compute_loss(model, batch).item()
        want = reference_loss(logits, batch["labels"], batch["target_ids"],
                              batch["target_values"], 0.9)
        assert got == pytest.approx(want, rel=1e-5)
        got = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(50)).item()
        want = reference_loss(logits, batch["labels"], batch["target_ids"],
                              batch["target_values"], 0.9, normalizer=50)
        assert got == pytest.approx(want, rel=1e-5)


def test_lm_weight_one_is_hf_own_loss(pivot, store32, tmp_path):
    model, _ = load(pivot)
    store = TopKStore(store32)
    batch = FusionCollator(0, 10)([store[i] for i in (5, 6, 11)])
    trainer = make_trainer(model, tmp_path, lm_weight=1.0)
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss.item()
        assert trainer.compute_loss(model, batch).item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="lm_weight"):
        make_trainer(model, tmp_path, lm_weight=1.5)


def store_loss(model_path, store_path, lm_weight):
    model, _ = load(model_path)
    store = TopKStore(store_path)
    batch = FusionCollator(0, store.k)(list(store))
    from fusechat.torch import causal_lm_fusion_loss

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return causal_lm_fusion_loss(logits, batch["labels"], batch["target_ids"],
                                     batch["target_values"], lm_weight=lm_weight).item()


def test_training_reduces_the_loss_and_publishes_atomically(pivot, store32, tmp_path, monkeypatch):
    out = tmp_path / "target"
    before = store_loss(pivot, store32, 0.9)
    # a failure while saving the final model leaves nothing at the final path
    save = FusionTrainer.save_model

    def failing_save(self, output_dir=None, _internal_call=False):
        if not _internal_call:
            raise RuntimeError("disk full")
        return save(self, output_dir, _internal_call)

    monkeypatch.setattr(FusionTrainer, "save_model", failing_save)
    kw = dict(lr=3e-3, batch_size=5, grad_accum=1, device="cpu", quiet=True)
    with pytest.raises(RuntimeError, match="disk full"):
        train(pivot, store32, out, max_steps=6, **kw)
    assert not out.exists() and os.path.isdir(str(out) + ".partial")
    monkeypatch.undo()
    # the checkpoint may be continued for longer, not with other settings
    with pytest.raises(FileExistsError, match="checkpoint with other settings.*lm_weight"):
        train(pivot, store32, out, max_steps=12, lm_weight=0.5, **kw)
    # the rerun resumes from the checkpoint left in OUT.partial: 6 more steps, not 12
    calls = []
    compute = FusionTrainer.compute_loss
    monkeypatch.setattr(FusionTrainer, "compute_loss",
                        lambda self, *a, **k: calls.append(1) or compute(self, *a, **k))
    assert train(pivot, store32, out, max_steps=12, **kw) == str(out)
    assert len(calls) == 6
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    assert not os.path.exists(str(out) + ".partial")
    after = store_loss(str(out), store32, 0.9)
    assert after < before - 0.5, (before, after)
    # rerun with the same settings: the finished output is kept; other settings: refused,
    # naming each difference
    mtime = os.stat(out / "model.safetensors").st_mtime_ns
    train(pivot, store32, out, max_steps=12, **kw)
    with pytest.raises(FileExistsError, match=r"already trained with other settings "
                                              r"\(lr: 0.003 then, 0.01 now; max_steps"):
        train(pivot, store32, out, max_steps=1, **{**kw, "lr": 1e-2})
    assert os.stat(out / "model.safetensors").st_mtime_ns == mtime


def test_fingerprint_mismatch_is_refused(store32, tmp_path, monkeypatch):
    import transformers

    tok = demo_models.train_tokenizer("byte_level")
    other = str(tmp_path / "gpt2")
    demo_models.save(demo_models.build_model("gpt2", tok), tok, other)
    # refused from the tokenizer alone, before any weights are loaded
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(FormatError, match="tokenizer .*align the store"):
        train(other, store32, tmp_path / "t", max_steps=1, device="cpu", quiet=True)
    assert not (tmp_path / "t").exists()


# --------------------------------------------------------------------------------------
# CLI

def test_cli_extract_and_train(pivot, records, tmp_path, capsys, monkeypatch):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records[:10]))
    out = tmp_path / "cli_store"
    for i in range(2):
        assert main(["-q", "extract", pivot, str(data), str(out), "--dtype", "float32",
                     "--k", "4", "--batch-size", "3", "--shard", f"{i}/2"]) == 0
    assert capsys.readouterr().out.strip().endswith(part_name(1, 2))
    # a finished part is recognised without loading the weights
    import transformers

    def no_load(*a, **k):
        raise AssertionError("weights loaded for a finished part")

    with monkeypatch.context() as m:
        m.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
        assert main(["-q", "extract", pivot, str(data), str(out), "--dtype", "float32",
                     "--k", "4", "--shard", "0/2"]) == 0
    assert len(open_store(out)) == 10 and open_store(out).k == 4
    model_out = tmp_path / "cli_model"
    assert main(["-q", "train", pivot, str(out), str(model_out), "--max-steps", "2",
                 "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-3", "--device", "cpu",
                 "--lm-weight", "1.0"]) == 0
    assert (model_out / "model.safetensors").exists()
    printed = capsys.readouterr()  # -q: no log dicts, no progress bars, the output path last
    assert "'loss'" not in printed.out and printed.out.strip().splitlines()[-1] == str(model_out)
    assert "%|" not in printed.err
    assert main(["extract", pivot, str(data), str(tmp_path / "e"), "--shard", "5/2"]) == 1
    assert "shard 5/2" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bad_dataset(records)))
    assert main(["-q", "extract", pivot, str(bad), str(tmp_path / "e"), "--dtype", "float32"]) == 1
    assert "record 3" in capsys.readouterr().err
    assert main(["-q", "extract", pivot, str(bad), str(tmp_path / "e"), "--dtype", "float32",
                 "--max-length", "64", "--skip-bad-records"]) == 0
    assert len(TopKStore(tmp_path / "e")) == 4


def test_cli_train_options_reach_training_arguments():
    args = build_parser().parse_args(["train", "p", "s", "o", "--fsdp", "--fsdp-config", "f.json",
                                      "--deepspeed", "ds.json", "--gradient-checkpointing"])
    assert train_extra_args(args) == {"fsdp": True, "fsdp_config": "f.json",
                                      "deepspeed": "ds.json", "gradient_checkpointing": True}
    assert train_extra_args(build_parser().parse_args(["train", "p", "s", "o"])) == {}
    # the overrides win over train()'s defaults
    targs = training_arguments("/tmp/unused", epochs=1, lr=1e-3, batch_size=2, grad_accum=1,
                               max_steps=None, seed=0, bf16=False, device="cpu", quiet=True,
                               extra={"lr_scheduler_type": "linear", "weight_decay": 0.1})
    assert (str(targs.lr_scheduler_type), targs.weight_decay) == ("SchedulerType.LINEAR", 0.1)
