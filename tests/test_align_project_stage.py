"""The align stage with ``projection="bytes"``: stores of the demo's tokenizers with an
oracle source, the aligned store against fusechat.align.project_batch, the fidelity figures
(manifest, CLI, inspect), and the refusals (stores without log-normalisers, rules options)."""
import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from fusechat import Vocab, align  # noqa: E402
from fusechat.stages.align import align_stores, true_logprobs  # noqa: E402
from fusechat.cli import main  # noqa: E402
from fusechat.stages.store import TopKStore, TopKStoreWriter  # noqa: E402
from test_align_project import demo_chats, demo_tokenizer  # noqa: E402


def write_oracle_store(path, tok, chats, lognorm=True, seq_ce_shift=None):
    """A store whose model is an oracle: logit 10 on the true next token, 0 on 9 others and
    on the rest of the vocabulary; token CE where the next token is supervised (the sequence
    CE moved by seq_ce_shift(i) for sample i, when given)."""
    vocab = Vocab.from_tokenizer(tok)
    V = len(vocab)
    lse = math.log(math.exp(10.0) + V - 1)
    rng = np.random.default_rng(len(path.name))
    with TopKStoreWriter(path, k=10, vocab_size=V, tokenizer_fingerprint=vocab.fingerprint,
                         model=path.name) as w:
        for i, c in enumerate(chats):
            ids = np.asarray(c.input_ids)
            n = len(ids)
            tk = np.zeros((n, 10), np.int64)
            lg = np.zeros((n, 10), np.float32)
            for t in range(n):
                tk[t, 0] = ids[t + 1] if t + 1 < n else ids[t]
                others = rng.choice(V, 10, replace=False)
                tk[t, 1:] = others[others != tk[t, 0]][:9]
                lg[t, 0] = 10
            sup = np.zeros(n, bool)
            sup[:-1] = c.loss_mask[1:] > 0
            ce = np.where(sup, lse - 10.0, 0).astype(np.float32)
            shift = seq_ce_shift(i) if seq_ce_shift else 0.0
            w.add(i, ids, c.loss_mask, tk, lg, ce, float(lse - 10.0 + shift),
                  topk_lognorm=np.full(n, lse, np.float32) if lognorm else None)
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("project-stage")
    pt, st = demo_tokenizer("metaspace"), demo_tokenizer("byte_level")
    pt.save_pretrained(root / "tok-piv")
    st.save_pretrained(root / "tok-src")
    piv = write_oracle_store(root / "piv", pt, demo_chats(60, pt))
    src = write_oracle_store(root / "src", st, demo_chats(60, st))
    old = write_oracle_store(root / "old", st, demo_chats(60, st), lognorm=False)
    return root, pt, st, piv, src, old


def test_bytes_stage_matches_project_batch(env, tmp_path):
    root, pt, st, piv, src, _ = env
    out = align_stores(piv, src, tmp_path / "al", pivot_tokenizer=root / "tok-piv",
                       source_tokenizer=st, projection="bytes", k=6, quiet=True)
    got, p_store, s_store = TopKStore(out), TopKStore(piv), TopKStore(src)
    info = got.manifest["info"]
    assert got.k == 6 and info["projection"] == "bytes" and info["method"] is None
    fid = info["fidelity"]
    assert fid["top1_correct"] >= 0.99 and fid["fallback"] < 0.01
    assert fid["n_supervised"] == sum(int(p.loss_mask[1:].sum()) for p in p_store)
    pv, sv = Vocab.from_pretrained(root / "tok-piv"), Vocab.from_tokenizer(st)
    for g, p, s in zip(got, p_store, s_store):
        want = align.project(s.input_ids, p.input_ids, s.topk_ids, s.topk_logprobs(), sv, pv,
                             src_true_logprobs=true_logprobs(s), k=6, details=True)
        d = want.dists
        for j in range(len(d)):
            a, b = d.offsets[j], d.offsets[j + 1]
            assert g.topk_ids[j, :b - a].tolist() == d.ids[a:b].tolist()
            assert (g.topk_ids[j, b - a:] == -1).all()
            np.testing.assert_array_equal(g.topk_logits[j, :b - a], d.logits[a:b].astype(np.float16))
        sup = np.zeros(len(p.input_ids), bool)
        sup[:-1] = p.loss_mask[1:] > 0
        np.testing.assert_allclose(g.token_ce[sup], -want.gold_logprob[sup], rtol=1e-6)
        assert (g.token_ce[~sup] == 0).all() and (g.topk_lognorm == 0).all()
        assert g.seq_ce == pytest.approx(float(np.nanmean(-want.gold_logprob[sup])), rel=1e-5)
    # a rerun with the same settings is skipped; other settings are refused
    assert align_stores(piv, src, tmp_path / "al", pivot_tokenizer=root / "tok-piv",
                        source_tokenizer=st, projection="bytes", k=6, quiet=True) == out
    with pytest.raises(FileExistsError, match="k"):
        align_stores(piv, src, tmp_path / "al", pivot_tokenizer=root / "tok-piv",
                     source_tokenizer=st, projection="bytes", k=5, quiet=True)


def test_store_without_lognorm_is_refused(env, tmp_path):
    root, pt, st, piv, _, old = env
    with pytest.raises(Exception, match=r"needs_lognorm|re-extract") as e:
        align_stores(piv, old, tmp_path / "x", pivot_tokenizer=root / "tok-piv",
                     source_tokenizer=st, projection="bytes", quiet=True)
    assert "fusechat extract" in str(e.value)
    assert not os.path.exists(tmp_path / "x")
    # the rules still align it (they need no log-probabilities)
    align_stores(piv, old, tmp_path / "r", pivot_tokenizer=root / "tok-piv",
                 source_tokenizer=st, projection="rules", quiet=True)


def test_cli_bytes_by_default_prints_fidelity_and_inspect_shows_it(env, tmp_path, capsys):
    root, _, _, piv, src, _ = env
    out = str(tmp_path / "al")
    args = ["-q", "align", piv, src, out, "--pivot-tokenizer", str(root / "tok-piv"),
            "--source-tokenizer", str(root / "tok-src")]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert cap.out.split() == [out]
    assert f"fidelity of {out}:" in cap.err and "top-1 = true next token 100.0%" in cap.err
    assert TopKStore(out).manifest["info"]["projection"] == "bytes"
    assert main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "kind aligned" in text and "fidelity:" in text and "projection bytes" in text
    assert main(["inspect", out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fidelity"]["top1_correct"] == 1.0
    assert main(args + ["--projection", "bytes", "--method", "dtw",
                        "--overwrite"]) == 1
    assert "--method, --map and --counts belong to --projection rules" in capsys.readouterr().err


def test_one_default_projection_for_api_cli_and_recipe(env, tmp_path):
    """align_stores, `fusechat align` and a recipe's align.projection share one default
    (fusechat.align.DEFAULT_PROJECTION, bytes); rules options alone select the rules."""
    from fusechat.recipe import SCHEMA

    root, _, st, piv, src, _ = env
    assert align.DEFAULT_PROJECTION == "bytes" == SCHEMA["align"]["projection"]
    kw = dict(pivot_tokenizer=root / "tok-piv", source_tokenizer=st, quiet=True)
    out = TopKStore(align_stores(piv, src, tmp_path / "api", **kw))
    assert out.manifest["info"]["projection"] == "bytes"
    assert out.manifest["info"]["fidelity"]["top1_correct"] >= 0.99
    ruled = TopKStore(align_stores(piv, src, tmp_path / "m", method="offsets", **kw))
    assert "projection" not in ruled.manifest["info"]
    assert ruled.manifest["info"]["method"] == "offsets"
    with pytest.raises(ValueError, match="projection='words'"):
        align_stores(piv, src, tmp_path / "x", projection="words", **kw)


@pytest.mark.parametrize("level", ["sequence", "token"])
def test_fused_store_carries_the_winners_lognorm(env, tmp_path, level):
    """MinCE over the pivot's oracle store and a bytes-aligned source: every fused position's
    topk_lognorm is the one of the store whose list it took, computed here independently: the
    oracle's log(e^10 + V - 1) for the pivot, 0 for the projected log-probabilities; AvgCE
    stores log-probabilities (0). Then logits - lognorm are log-probabilities (mass <= 1)."""
    from fusechat.stages.fuse import fuse_stores
    from test_align_project import demo_chats as chats

    root, pt, st, _, src, _ = env
    # the pivot loses the even samples (sequence CE raised by 5): both sides win somewhere
    piv = write_oracle_store(tmp_path / "piv", pt, chats(60, pt),
                             seq_ce_shift=lambda i: 5.0 if i % 2 == 0 else 0.0)
    aligned = align_stores(piv, src, tmp_path / "al", pivot_tokenizer=root / "tok-piv",
                           source_tokenizer=st, projection="bytes", quiet=True)
    lse_piv = np.float32(math.log(math.exp(10.0) + len(Vocab.from_tokenizer(pt)) - 1))
    fused = TopKStore(fuse_stores(piv, [aligned], tmp_path / "f", level=level, quiet=True))
    p_store, a_store = TopKStore(piv), TopKStore(aligned)
    took = {0: 0, 1: 0}
    for g, p, a in zip(fused, p_store, a_store):
        assert g.sample_index == p.sample_index == a.sample_index
        ka, kp = a.topk_ids.shape[1], p.topk_ids.shape[1]
        from_source = np.array([np.array_equal(g.topk_ids[t, :ka], a.topk_ids[t])
                                and not np.array_equal(g.topk_ids[t, :kp], p.topk_ids[t])
                                for t in range(len(g.input_ids))])
        from_pivot = np.array([np.array_equal(g.topk_ids[t, :kp], p.topk_ids[t])
                               and not np.array_equal(g.topk_ids[t, :ka], a.topk_ids[t])
                               for t in range(len(g.input_ids))])
        assert (g.topk_lognorm[from_source] == 0).all()
        assert (g.topk_lognorm[from_pivot] == lse_piv).all()
        took[0] += int(from_pivot.sum())
        took[1] += int(from_source.sum())
        lp = g.topk_logprobs()
        mass = np.where(g.topk_ids >= 0, np.exp(lp.astype(np.float64)), 0).sum(axis=1)
        assert (mass <= 1 + 1e-3).all()
    assert took[0] > 0 and took[1] > 0
    avg = TopKStore(fuse_stores(piv, [aligned], tmp_path / "avg", rule="avgce", level=level,
                                quiet=True))
    for g in avg:
        assert (g.topk_lognorm == 0).all()
