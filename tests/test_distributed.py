"""Multi-process runs under torchrun on the CPU (gloo): what one process per GPU does, minus
the GPUs. Extraction shards by RANK/WORLD_SIZE and must equal the same shards run as
independent jobs byte for byte; training runs HF's DistributedDataParallel and only rank 0
publishes the output. (FSDP and DeepSpeed need CUDA: HF's Trainer falls back to DDP on the
CPU, so they are documented, not tested here.)"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from fusechat.demo import data as demo_data, models as demo_models  # noqa: E402
from fusechat.stages.extract import extract  # noqa: E402
from fusechat.stages.store import open_store  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(*args, nproc=2):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", FUSECHAT_DISABLE_PROGRESS_BARS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "fusechat", "-q", *map(str, args)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    tok = demo_models.train_tokenizer("metaspace")
    demo_models.save(demo_models.build_model("llama", tok, seed=5), tok, str(root / "pivot"))
    data = root / "data.json"
    data.write_text(json.dumps(demo_data.make_dataset(30, seed=11)))
    return root


def test_extract_under_torchrun_equals_independent_shards(setup):
    out = setup / "store"
    torchrun("extract", setup / "pivot", setup / "data.json", out, "--device", "cpu",
             "--dtype", "float32", "--k", "5", "--batch-size", "4")
    assert sorted(os.listdir(out)) == ["part-00000-of-00002", "part-00001-of-00002"]
    for i in range(2):  # the same slices as independent jobs (--shard i/2), in this process
        extract(str(setup / "pivot"), str(setup / "data.json"), str(setup / f"solo{i}"),
                dtype="float32", k=5, batch_size=4, shard=(i, 2), device="cpu", quiet=True)
    dist = open_store(out)
    solo = [open_store(setup / f"solo{i}" / f"part-0000{i}-of-00002") for i in range(2)]
    assert len(dist) == 30 == sum(len(s) for s in solo)
    for got, exp in zip(dist, [x for s in solo for x in s]):
        assert got.sample_index == exp.sample_index and got.seq_ce == exp.seq_ce
        for f in ("input_ids", "loss_mask", "topk_ids", "topk_logits", "token_ce"):
            assert getattr(got, f).tobytes() == getattr(exp, f).tobytes(), f
    for s in [dist, *solo]:
        s.close()


def test_train_under_torchrun_ddp_publishes_once(setup):
    from fusechat.safetensors import open as st_open

    store = setup / "store"
    if not store.exists():
        pytest.skip("needs the store of the extraction test")
    out = setup / "target"
    r = torchrun("train", setup / "pivot", store, out, "--device", "cpu", "--max-steps", "3",
                 "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-2")
    assert "find_unused_parameters=True" not in r.stderr
    assert not os.path.exists(str(out) + ".partial")
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "fusechat_train.json"} <= set(os.listdir(out))
    # trained: every matrix moved away from the pivot's
    with st_open(out / "model.safetensors") as a, st_open(setup / "pivot") as b:
        moved = [k for k in a.keys() if a.get(k).ndim == 2
                 and not np.array_equal(a.get(k, dtype=np.float32), b.get(k, dtype=np.float32))]
        assert len(moved) == sum(1 for k in a.keys() if a.get(k).ndim == 2)
    # the rerun with the same settings is recognised as done by every rank
    torchrun("train", setup / "pivot", store, out, "--device", "cpu", "--max-steps", "3",
             "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-2")
