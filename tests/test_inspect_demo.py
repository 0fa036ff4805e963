"""`fusechat inspect` and the tiny Llama checkpoint (fusechat.demo.tiny_llama)."""
import json
import os
import struct

import numpy as np
import pytest

from fusechat import cli
from fusechat import safetensors as st
from fusechat.demo.tiny_llama import (TINY_LLAMA, build_tiny_llama, llama_shapes, round_trip,
                                 write_checkpoint)
from st_files import entry, write


def header_of(path):
    raw = open(path, "rb").read()
    return json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])


def test_tiny_llama_round_trips_and_transformers_loads_it(tmp_path):
    tensors = build_tiny_llama()
    folder = tmp_path / "tiny-llama"
    write_checkpoint(str(folder), tensors, TINY_LLAMA,
                     max_shard_size=sum(v.nbytes for v in tensors.values()) // 2 + 1)
    round_trip(str(folder), str(tmp_path / "rt.safetensors"))  # bf16 -> f32 -> bf16 is exact
    with st.open(str(tmp_path / "rt.safetensors")) as g:
        assert all(g.get(k).tobytes() == v.tobytes() for k, v in tensors.items())
    files = sorted(os.listdir(folder))
    assert "model.safetensors.index.json" in files and "config.json" in files
    assert any(f.startswith("model-00001-of-") for f in files)
    # independent check: transformers builds LlamaForCausalLM from the config and loads
    # every tensor from the shards, with nothing missing or unexpected
    transformers = pytest.importorskip("transformers")
    import torch

    model, info = transformers.LlamaForCausalLM.from_pretrained(
        str(folder), output_loading_info=True, torch_dtype=torch.bfloat16)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    want = build_tiny_llama()
    state = model.state_dict()
    for name, w in want.items():
        got = state[name].contiguous().view(torch.int16).numpy()
        assert got.tobytes() == w.tobytes(), name
    assert len(state) == len(want)


def test_llama_shapes_follow_the_config():
    s = llama_shapes(TINY_LLAMA)
    h, v = TINY_LLAMA["hidden_size"], TINY_LLAMA["vocab_size"]
    assert s["model.embed_tokens.weight"] == (v, h) and s["lm_head.weight"] == (v, h)
    assert s["model.layers.1.self_attn.k_proj.weight"] == (2 * 16, h)
    assert len(s) == 2 + 1 + 9 * TINY_LLAMA["num_hidden_layers"]
    assert "lm_head.weight" not in llama_shapes({**TINY_LLAMA, "tie_word_embeddings": True})


def test_inspect_json_counts(tmp_path, capsys):
    tensors = {"a": np.zeros((3, 4), np.float32), "b": np.zeros((5,), np.int8),
               "s": np.zeros((), np.float64), "e": np.zeros((0, 7), np.float16)}
    st.save(tensors, tmp_path / "ck", metadata={"format": "np"}, max_shard_size=40)
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert cli.main(["inspect", str(tmp_path / "ck"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["parameters"] == 12 + 5 + 1 + 0
    assert s["bytes"] == sum(v.nbytes for v in tensors.values())
    assert s["tensor_count"] == 4 and s["metadata"] == {"format": "np"}
    assert s["config"] == {"model_type": "llama"}
    assert s["parameters_per_dtype"] == {"F16": 0, "F32": 12, "F64": 1, "I8": 5}
    # every tensor's dtype/shape/offsets match the shard headers, parsed independently
    for t in s["tensors"]:
        h = header_of(tmp_path / "ck" / t["shard"])[t["name"]]
        assert (h["dtype"], h["shape"], h["data_offsets"]) == (t["dtype"], t["shape"],
                                                                [t["begin"], t["end"]])


def test_inspect_table(tmp_path, capsys):
    st.save({"w": np.zeros((2, 3), np.float32)}, tmp_path / "a.safetensors")
    assert cli.main(["inspect", str(tmp_path / "a.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "1 tensors, 6 parameters" in out
    assert any(line.split()[:4] == ["w", "F32", "[2,", "3]"] for line in out.splitlines())


def test_inspect_refuses_a_corrupt_file(tmp_path, capsys):
    path = write(tmp_path / "bad.safetensors", {"a": entry("F32", [2], 0, 4)}, b"\0" * 4)
    assert cli.main(["inspect", path]) == 1
    err = capsys.readouterr().err
    assert "size_mismatch" in err and path in err
