"""The align and fuse stages (fusechat.stages.align, fusechat.stages.fuse, `fusechat align/fuse`)
on TopK stores written with TopKStoreWriter from tiny tokenizers' encodings of synthetic chat
data. References: a direct per-sample computation with fusechat.align, the Python twin of
the reference (tests/reference/align_ref.py), a NumPy MinCE and fusechat.fuse's AvgCE."""
import json
import os

import numpy as np
import pytest

from fusechat import align as al
from fusechat.demo import data as demo_data, models as demo_models
from fusechat.stages.align import align_stores
from fusechat.stages.chat import load_conversations, tokenize
from fusechat.cli import main
from fusechat.fuse import SparseDists, avg_ce
from fusechat.stages.fuse import fuse_stores
from fusechat.stages.store import TopKStore, TopKStoreWriter
from fusechat.vocab import Vocab
from reference import align_ref as R

K = 6
N = 14


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    toks = {}
    for name, kind, seed in (("piv", "metaspace", 0), ("src", "byte_level", 1)):
        tok = demo_models.train_tokenizer(kind, vocab_size=300, seed=seed)
        tok.save_pretrained(root / f"tok-{name}")
        toks[name] = tok
    convs, _ = load_conversations(demo_data.make_dataset(N, seed=5))
    return root, toks, convs


def write_store(path, tok, convs, seed, *, drop=(), kind="extracted", model="m"):
    """Random top-K lists (distinct ids, the true next token planted at a random rank, sorted
    logits), token CE on supervised targets and their mean as the sequence CE."""
    rng = np.random.default_rng(seed)
    v = len(tok)
    with TopKStoreWriter(path, k=K, kind=kind, model=model, logits_dtype="F32",
                         tokenizer_fingerprint=Vocab.from_tokenizer(tok).fingerprint,
                         vocab_size=v) as w:
        for c in convs:
            if c.index in drop:
                continue
            t = tokenize(c, tok)
            n = len(t.input_ids)
            ids = np.stack([rng.choice(v, K, replace=False) for _ in range(n)]).astype(np.int32)
            nxt = np.append(t.input_ids[1:], t.input_ids[-1])
            for i in range(n):
                if rng.random() < 0.7 and nxt[i] not in ids[i]:
                    ids[i, rng.integers(K)] = nxt[i]
            logits = -np.sort(-rng.normal(0, 3, (n, K)), axis=1).astype(np.float32)
            sup = np.append(t.loss_mask[1:] > 0, False)
            ce = np.where(sup, rng.gamma(2.0, 1.0, n), 0).astype(np.float32)
            w.add(c.index, t.input_ids, t.loss_mask, ids, logits, ce, ce[sup].mean())
    return str(path)


@pytest.fixture(scope="module")
def stores(env):
    root, toks, convs = env
    return {"piv": write_store(root / "piv", toks["piv"], convs, 1, drop={3}, model="pivot"),
            "src": write_store(root / "src", toks["src"], convs, 2, drop={7}, model="source")}


def decoded(tok):
    return [tok.backend_tokenizer.decode([i], skip_special_tokens=False) for i in range(len(tok))]


def test_aligned_store_matches_library_and_twin(env, stores, tmp_path):
    root, toks, _ = env
    out = align_stores(stores["piv"], stores["src"], tmp_path / "al", quiet=True,
                       pivot_tokenizer=root / "tok-piv", source_tokenizer=toks["src"],
                       projection="rules")
    pv, sv = Vocab.from_tokenizer(toks["piv"]), Vocab.from_tokenizer(toks["src"])
    piv, src, got = TopKStore(stores["piv"]), TopKStore(stores["src"]), TopKStore(out)
    assert got.kind == "aligned" and got.fingerprint == pv.fingerprint
    info = got.manifest["info"]
    assert (info["n_dropped_pivot"], info["n_dropped_source"]) == (1, 1)
    want_rows = sorted(set(piv.sample_indices()) & set(src.sample_indices()))
    assert sorted(got.sample_indices().tolist()) == want_rows and 3 not in want_rows
    # direct per-sample computation with the alignment library
    by_p = {s.sample_index: s for s in piv}
    by_s = {s.sample_index: s for s in src}
    counts = al.AlignmentCounts(pv.size, sv.size)
    alignments = {}
    for r in want_rows:
        a = al.align(by_s[r].input_ids, by_p[r].input_ids, sv, pv)
        counts.update(by_s[r].input_ids, by_p[r].input_ids, a)
        alignments[r] = a
    vmap = al.vocab_map(sv, pv, "ms", counts=counts)
    saved = al.AlignmentCounts.load(str(tmp_path / "al") + ".counts.npz")
    assert [np.array_equal(x, y) for x, y in zip(saved.to_coo(), counts.to_coo())] == [True] * 3
    pdec, sdec = decoded(toks["piv"]), decoded(toks["src"])
    direct = R.em_map(toks["src"].convert_ids_to_tokens(list(range(sv.size))),
                      toks["piv"].convert_ids_to_tokens(list(range(pv.size))), sv.marker,
                      pv.marker)
    eff = [d if d >= 0 else int(x) for d, x in zip(direct, vmap)]
    n_empty_rows = 0
    for i, g in enumerate(got):
        p, s = by_p[g.sample_index], by_s[g.sample_index]
        assert np.array_equal(g.input_ids, p.input_ids) and np.array_equal(g.loss_mask, p.loss_mask)
        assert g.seq_ce == np.float32(s.seq_ce)
        d = al.align_distributions(s.topk_ids, s.topk_logits, p.input_ids, s.input_ids,
                                   alignments[g.sample_index], vmap, sv, pv, mode="ms")
        ids, lg = SparseDists(d.offsets, d.ids, d.logits).to_padded(K)
        assert np.array_equal(g.topk_ids, ids) and np.array_equal(g.topk_logits, lg)
        n_empty_rows += int((g.topk_ids[:, 0] < 0).sum())
        sup = np.append(p.loss_mask[1:] > 0, False)
        for j, J in enumerate(alignments[g.sample_index].lists()):
            want_ce = (s.token_ce[J[-1]] if J else np.nan) if sup[j] else 0.0
            assert g.token_ce[j] == np.float32(want_ce) or (np.isnan(want_ce) and np.isnan(g.token_ce[j]))
        if i < 4:  # the twin: DTW and the distribution rules from the spec, in Python
            pl, sl = p.input_ids.tolist(), s.input_ids.tolist()
            piv_to_src = R.dtw([sdec[x] for x in sl], [pdec[x] for x in pl], sv.marker, pv.marker)
            assert piv_to_src == alignments[g.sample_index].lists()
            want = R.align_distributions(pl, sl, piv_to_src, s.topk_ids.tolist(),
                                         s.topk_logits.tolist(), pdec, sdec, sv.marker,
                                         pv.marker, eff, vmap.tolist(), "ms", True)
            for j, row in enumerate(want):
                k = len(row)
                assert g.topk_ids[j, :k].tolist() == [x for x, _ in row]
                assert (g.topk_ids[j, k:] == -1).all()
                assert np.allclose(g.topk_logits[j, :k], [y for _, y in row])
    assert info["n_empty_positions"] == n_empty_rows


def test_counts_reused_and_key_checked(env, stores, tmp_path, caplog):
    root, toks, convs = env
    kw = dict(pivot_tokenizer=root / "tok-piv", source_tokenizer=root / "tok-src", quiet=True)
    cpath = str(tmp_path / "c.npz")
    align_stores(stores["piv"], stores["src"], tmp_path / "a1", counts_path=cpath, **kw)
    # a planted (wrong) count under the same key must be used: proves reuse
    c = al.AlignmentCounts.load(cpath)
    before = TopKStore(tmp_path / "a1")
    c2 = al.AlignmentCounts(*c.shape)
    c2.merge(c)
    piv_ids, src_ids, cnt = c.to_coo()
    extra = al.AlignmentCounts(*c.shape)
    extra.update([np.array([int(src_ids[0])] * 3)], [np.array([int(piv_ids[-1])] * 3)],
                 [al.Alignment(np.arange(4), np.arange(3))])
    c2.merge(extra)
    for _ in range(50):
        c2.merge(extra)
    c2.save(cpath)
    with caplog.at_level("INFO", logger="fusechat.stages.align"):
        align_stores(stores["piv"], stores["src"], tmp_path / "a2", counts_path=cpath, **kw)
    assert "reusing alignment counts" in caplog.text
    reused = al.AlignmentCounts.load(cpath)
    assert reused.nnz == c2.nnz
    # other data -> other key -> recounted (the file is replaced)
    other = write_store(tmp_path / "src2", toks["src"], convs, 9, drop={7, 8})
    align_stores(stores["piv"], other, tmp_path / "a3", counts_path=cpath, **kw)
    assert al.AlignmentCounts.load(cpath).nnz <= c.nnz
    assert len(before) == len(TopKStore(tmp_path / "a2"))


def test_same_vocabulary_copies_with_roles(env, stores, tmp_path):
    root, toks, convs = env
    same = write_store(tmp_path / "same", toks["piv"], convs, 4, drop={0}, model="twin")
    out = align_stores(stores["piv"], same, tmp_path / "al", pivot_tokenizer=toks["piv"],
                       source_tokenizer=root / "tok-piv", quiet=True)
    got, src = TopKStore(out), TopKStore(same)
    assert got.manifest["info"]["method"] == "copy" and got.manifest["info"]["n_copied"] == len(got)
    by_s = {s.sample_index: s for s in src}
    for g in got:  # ids are distinct per row, so the copy is exact
        s = by_s[g.sample_index]
        assert np.array_equal(g.topk_ids, s.topk_ids) and np.array_equal(g.topk_logits, s.topk_logits)
        assert g.seq_ce == s.seq_ce and np.array_equal(g.token_ce, s.token_ce)
    assert not os.path.exists(str(tmp_path / "al") + ".counts.npz")


def test_same_vocabulary_realigns_samples_that_tokenize_differently(env, stores, tmp_path):
    """A same-vocabulary source whose sample lost a token (e.g. another chat template) is
    aligned like a foreign one (DTW, exact-match map), the others copied."""
    root, toks, _ = env
    piv = TopKStore(stores["piv"])
    path = tmp_path / "cut"
    with TopKStoreWriter(path, k=K, kind="extracted", logits_dtype="F32",
                         tokenizer_fingerprint=piv.fingerprint) as w:
        for s in piv:
            n = len(s.input_ids) - (1 if s.sample_index == 2 else 0)
            w.add(s.sample_index, s.input_ids[:n], s.loss_mask[:n], s.topk_ids[:n],
                  s.topk_logits[:n], s.token_ce[:n], s.seq_ce)
    out = align_stores(piv.path, path, tmp_path / "al", pivot_tokenizer=toks["piv"],
                       source_tokenizer=toks["piv"], quiet=True)
    got = TopKStore(out)
    info = got.manifest["info"]
    assert (info["n_copied"], info["n_realigned"]) == (len(piv) - 1, 1)
    pv = Vocab.from_tokenizer(toks["piv"])
    p = next(s for s in piv if s.sample_index == 2)
    g = next(s for s in got if s.sample_index == 2)
    n = len(p.input_ids) - 1
    a = al.align(p.input_ids[:n], p.input_ids, pv, pv)
    d = al.align_distributions(p.topk_ids[:n], p.topk_logits[:n], p.input_ids, p.input_ids[:n],
                               a, al.vocab_map(pv, pv, "em"), pv, pv, mode="em")
    ids, lg = SparseDists(d.offsets, d.ids, d.logits).to_padded(K)
    assert np.array_equal(g.topk_ids, ids) and np.array_equal(g.topk_logits, lg)
    assert np.array_equal(g.topk_ids[:n - 1], p.topk_ids[:n - 1])  # 1-1 positions copied


def test_fingerprint_mismatch_names_the_store(env, stores, tmp_path):
    root, toks, _ = env
    with pytest.raises(ValueError, match=r"src: the source store .*tokenizer_mismatch"):
        align_stores(stores["piv"], stores["src"], tmp_path / "x", quiet=True,
                     pivot_tokenizer=root / "tok-piv", source_tokenizer=root / "tok-piv")
    with pytest.raises(ValueError, match=r"piv: the pivot store"):
        align_stores(stores["piv"], stores["src"], tmp_path / "x", quiet=True,
                     pivot_tokenizer=root / "tok-src", source_tokenizer=root / "tok-src")
    assert not os.path.exists(tmp_path / "x")
    other = write_store(tmp_path / "other", toks["src"], [], 0)
    with TopKStoreWriter(other, k=K, kind="extracted", overwrite=True,
                         tokenizer_fingerprint=TopKStore(stores["src"]).fingerprint) as w:
        w.add(10**6, [1, 2], [0, 1], [[-1] * K] * 2, [[0] * K] * 2, [0, 0], 0.0)
    with pytest.raises(ValueError, match="no_common_samples"):
        align_stores(stores["piv"], other, tmp_path / "x", quiet=True,
                     pivot_tokenizer=toks["piv"], source_tokenizer=toks["src"])


# -- fuse ------------------------------------------------------------------------------------

def aligned_pair(env, tmp_path, seed, drop=()):
    """An aligned store in the pivot's ids, written directly (random lists, some EMPTY rows
    and some NaN or tied sequence CEs)."""
    root, toks, convs = env
    piv = TopKStore(env[0] / "piv_f") if os.path.exists(env[0] / "piv_f") else None
    if piv is None:
        write_store(env[0] / "piv_f", toks["piv"], convs, 11, model="pivot")
        piv = TopKStore(env[0] / "piv_f")
    rng = np.random.default_rng(seed)
    path = tmp_path / f"al{seed}"
    with TopKStoreWriter(path, k=K, kind="aligned", model=f"src{seed}", logits_dtype="F32",
                         tokenizer_fingerprint=piv.fingerprint) as w:
        for i, p in enumerate(piv):
            if p.sample_index in drop:
                continue
            n = len(p.input_ids)
            ids = np.stack([rng.choice(len(toks["piv"]), K, replace=False) for _ in range(n)])
            ids = ids.astype(np.int32)
            ids[rng.random(n) < 0.2] = -1
            ids[rng.random((n, K)) < 0.1] = -1
            ids = np.sort(ids, axis=1)[:, ::-1]  # -1 padding last (order within is free)
            lg = -np.sort(-rng.normal(0, 2, (n, K)), axis=1).astype(np.float32)
            ce = [p.seq_ce + rng.normal(0, 0.3), p.seq_ce, np.nan][i % 3]  # tie every 3rd
            w.add(p.sample_index, p.input_ids, p.loss_mask, ids, np.where(ids < 0, 0, lg),
                  p.token_ce, ce)
    return piv, str(path)


def test_mince_per_sequence_against_numpy(env, tmp_path):
    piv, a1 = aligned_pair(env, tmp_path, 1)
    _, a2 = aligned_pair(env, tmp_path, 2, drop={5})
    out = fuse_stores(piv.path, [a1, a2], tmp_path / "fused", quiet=True)
    got = TopKStore(out)
    srcs = [TopKStore(a1), TopKStore(a2)]
    bys = [{s.sample_index: s for s in st} for st in srcs]
    info = got.manifest["info"]
    assert got.kind == "fused" and len(got) == len(piv) - 1 and info["n_dropped"] == 1
    seen_tie = seen_src = 0
    for g, w in zip(got, info["winner"]):
        p = next(x for x in piv if x.sample_index == g.sample_index)
        cands = [p] + [b[g.sample_index] for b in bys]
        ce = np.array([c.seq_ce for c in cands], np.float32)
        ce[np.isnan(ce)] = np.inf
        want = int(np.argmin(ce))  # first minimum: the pivot wins ties
        assert w == want
        seen_tie += int(ce[1] == ce[0] or ce[2] == ce[0])
        seen_src += int(want > 0)
        chosen = cands[want]
        empty = chosen.topk_ids[:, 0] < 0
        ids = np.where(empty[:, None], p.topk_ids, chosen.topk_ids)
        lg = np.where(empty[:, None], p.topk_logits, chosen.topk_logits)
        assert np.array_equal(g.topk_ids, ids) and np.array_equal(g.topk_logits, lg)
        assert g.seq_ce == chosen.seq_ce or (np.isnan(g.seq_ce) and np.isnan(chosen.seq_ce))
    assert seen_tie and seen_src  # the data exercise both branches
    assert sum(info["wins"].values()) == len(got)


def test_mince_sequence_without_targets_never_wins(env, tmp_path):
    root, toks, convs = env
    piv, a1 = aligned_pair(env, tmp_path, 3)
    path = tmp_path / "nosup"
    for name, ce_src in (("p", 5.0), ("s", 0.0)):
        with TopKStoreWriter(tmp_path / name, k=2, kind="extracted" if name == "p" else "aligned",
                             tokenizer_fingerprint=piv.fingerprint, logits_dtype="F32") as w:
            w.add(0, [1, 2, 3], [1, 0, 0], [[1, 2]] * 3, [[1.0, 0.0]] * 3, [0, 0, 0], ce_src)
    fuse_stores(tmp_path / "p", [tmp_path / "s"], path, quiet=True)
    assert TopKStore(path).manifest["info"]["winner"] == [0]


def test_avgce_against_fuse_library(env, tmp_path):
    piv, a1 = aligned_pair(env, tmp_path, 4)
    out = fuse_stores(piv.path, [a1], tmp_path / "avg", rule="avgce", quiet=True)
    got, src = TopKStore(out), TopKStore(a1)
    assert got.k == 2 * K and got.manifest["info"]["values"] == "log-probabilities"
    for g, p, s in zip(got, piv, src):
        d = [SparseDists.from_padded(x.topk_ids, x.topk_logits) for x in (p, s)]
        has = bool(p.loss_mask[1:].any())
        want = avg_ce(d, [[p.seq_ce], [s.seq_ce]], [0, len(p.input_ids)],
                      valid=[[has], [has]])
        ids, lg = want.to_padded(2 * K)
        assert np.array_equal(g.topk_ids, ids) and np.array_equal(g.topk_logits, lg)
        # each row is a distribution: its probabilities sum to 1
        row = g.topk_ids[0] >= 0
        assert abs(np.exp(g.topk_logits[0][row].astype(np.float64)).sum() - 1) < 1e-5


def test_fuse_refuses_other_tokenizer_and_keeps_no_partial(env, stores, tmp_path):
    piv, a1 = aligned_pair(env, tmp_path, 5)
    with pytest.raises(ValueError, match="tokenizer_mismatch"):
        fuse_stores(piv.path, [stores["src"]], tmp_path / "f", quiet=True)
    with pytest.raises(ValueError, match="bad_kind"):
        fuse_stores(a1, [a1], tmp_path / "f", quiet=True)
    assert not os.path.exists(tmp_path / "f")
    assert not [n for n in os.listdir(tmp_path) if n.startswith("f.tmp")]
    fuse_stores(piv.path, [a1], tmp_path / "f", quiet=True)
    stamp = os.stat(tmp_path / "f" / "manifest.json").st_mtime_ns
    fuse_stores(piv.path, [a1], tmp_path / "f", quiet=True)  # same inputs: skipped
    assert os.stat(tmp_path / "f" / "manifest.json").st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="rule"):
        fuse_stores(piv.path, [a1], tmp_path / "f", rule="avgce", quiet=True)
    fuse_stores(piv.path, [a1], tmp_path / "f", rule="avgce", overwrite=True, quiet=True)
    assert TopKStore(tmp_path / "f").manifest["info"]["rule"] == "avgce"


def test_token_level_mince(env, tmp_path):
    piv, a1 = aligned_pair(env, tmp_path, 6)
    out = fuse_stores(piv.path, [a1], tmp_path / "tok", level="token", quiet=True)
    info = TopKStore(out).manifest["info"]
    # the source carries the pivot's token CE: every position ties, so the pivot wins all
    assert info["wins_unit"] == "positions" and list(info["wins"].values())[1] == 0
    for g, p in zip(TopKStore(out), piv):
        assert np.array_equal(g.topk_ids, p.topk_ids)


# -- CLI -------------------------------------------------------------------------------------

def test_cli_align_and_fuse(env, stores, tmp_path, capsys):
    root = env[0]
    al_out, fused = str(tmp_path / "al"), str(tmp_path / "fused")
    assert main(["-q", "align", stores["piv"], stores["src"], al_out, "--pivot-tokenizer",
                 str(root / "tok-piv"), "--source-tokenizer", str(root / "tok-src"),
                 "--method", "offsets", "--map", "mined"]) == 0
    info = TopKStore(al_out).manifest["info"]
    assert (info["method"], info["map"]) == ("offsets", "mined")
    assert main(["-q", "fuse", stores["piv"], al_out, fused]) == 0
    assert capsys.readouterr().out.split() == [al_out, fused]
    m = json.load(open(os.path.join(fused, "manifest.json")))
    assert m["kind"] == "fused" and len(m["info"]["winner"]) == m["n_samples"]
    assert main(["-q", "fuse", stores["piv"], al_out, fused, "--level", "token"]) == 1
    assert "exists, made from other inputs or settings (level)" in capsys.readouterr().err


# -- end to end on tiny models ---------------------------------------------------------------

def test_extract_align_fuse_tiny_models(tmp_path):
    """Two tiny models with different tokenizers (Llama + Metaspace BPE pivot, Qwen2 +
    byte-level BPE source, extracted in 2 parts): extract -> align -> fuse, and the fused
    store is what training opens (pivot fingerprint, pivot positions)."""
    from fusechat.stages.extract import extract, parse_shard
    from fusechat.stages.store import open_store

    records = demo_data.make_dataset(10, seed=8)
    paths = {}
    for name, arch, kind in (("piv", "llama", "metaspace"), ("src", "qwen2", "byte_level")):
        tok = demo_models.train_tokenizer(kind, vocab_size=300)
        paths[name] = str(tmp_path / name)
        demo_models.save(demo_models.build_model(arch, tok, seed=1), tok, paths[name])
    extract(paths["piv"], records, tmp_path / "s-piv", k=5, dtype="float32", quiet=True)
    for i in range(2):
        extract(paths["src"], records, tmp_path / "s-src", k=5, dtype="float32",
                shard=parse_shard(f"{i}/2"), quiet=True)
    aligned = align_stores(tmp_path / "s-piv", tmp_path / "s-src", tmp_path / "al",
                           pivot_tokenizer=paths["piv"], source_tokenizer=paths["src"],
                           projection="rules", quiet=True)
    fused = fuse_stores(tmp_path / "s-piv", [aligned], tmp_path / "fused", quiet=True)
    piv, src = open_store(tmp_path / "s-piv"), open_store(tmp_path / "s-src")
    f = open_store(fused, expect_fingerprint=piv.fingerprint)
    for s in (piv, src, open_store(aligned), f):  # 300-id vocabularies: 2-byte ids
        assert s.manifest["dtypes"]["input_ids"] == s.manifest["dtypes"]["topk_ids"] == "U16"
    assert len(f) == len(piv) == len(src) == 10
    assert np.array_equal(f.sample_indices(), piv.sample_indices())
    pv, sv = Vocab.from_pretrained(paths["piv"]), Vocab.from_pretrained(paths["src"])
    counts = al.AlignmentCounts(pv.size, sv.size)
    als = [al.align(s.input_ids, p.input_ids, sv, pv) for p, s in zip(piv, src)]
    for a, p, s in zip(als, piv, src):
        counts.update(s.input_ids, p.input_ids, a)
    vmap = al.vocab_map(sv, pv, "ms", counts=counts)
    for i, (a, p, s, g, w) in enumerate(zip(als, piv, src, f, f.manifest["info"]["winner"])):
        assert w == (1 if np.float32(s.seq_ce) < np.float32(p.seq_ce) else 0)
        chosen = p
        if w:
            d = al.align_distributions(s.topk_ids, s.topk_logits, p.input_ids, s.input_ids, a,
                                       vmap, sv, pv)
            ids, lg = SparseDists(d.offsets, d.ids, d.logits).to_padded(5)
            empty = ids[:, 0] < 0
            chosen = type(p)(p.sample_index, p.input_ids, p.loss_mask,
                             np.where(empty[:, None], p.topk_ids, ids),
                             np.where(empty[:, None], p.topk_logits, lg), p.token_ce, s.seq_ce)
        assert np.array_equal(g.topk_ids, chosen.topk_ids), i
        assert np.array_equal(g.topk_logits, chosen.topk_logits.astype(g.topk_logits.dtype)), i
    assert 1 in f.manifest["info"]["winner"]  # the aligned source's lists were checked


# -- the id dtype changes nothing downstream -------------------------------------------------

def _run_stages(env, root):
    """Stores of the module's tokenizers written, aligned (MS map over DTW, and the
    same-vocabulary copy), fused (MinCE per sequence and per token, AvgCE) and collated;
    returns every output's samples and the collated batch."""
    from fusechat.stages.train import FusionCollator

    tr, toks, convs = env
    piv = write_store(root / "piv", toks["piv"], convs, 1, drop={3}, model="pivot")
    src = write_store(root / "src", toks["src"], convs, 2, drop={7}, model="source")
    same = write_store(root / "same", toks["piv"], convs, 4, drop={0}, model="twin")
    kw = dict(pivot_tokenizer=tr / "tok-piv", projection="rules", quiet=True)
    outs = {"piv": piv, "src": src,
            "al": align_stores(piv, src, root / "al", source_tokenizer=toks["src"], **kw),
            "same": align_stores(piv, same, root / "al-same", source_tokenizer=tr / "tok-piv",
                                 **kw)}
    for name, rule, level in (("mince", "mince", "sequence"), ("token", "mince", "token"),
                              ("avgce", "avgce", "sequence")):
        outs[name] = fuse_stores(piv, [outs["al"], outs["same"]], root / name, rule=rule,
                                 level=level, quiet=True)
    got = {}
    for name, path in outs.items():
        st = TopKStore(path)
        got[name] = (st.manifest["dtypes"]["topk_ids"], st.manifest["info"].get("winner"),
                     [(s.sample_index, s.input_ids, s.loss_mask, s.topk_ids, s.topk_logits,
                       s.token_ce, s.seq_ce) for s in st])
    fused = TopKStore(outs["mince"])
    got["batch"] = FusionCollator(pad_id=0, k=fused.k)([fused[i] for i in (4, 0, 2)])
    got["counts"] = al.AlignmentCounts.load(str(root / "al") + ".counts.npz").to_coo()
    return got


@pytest.mark.parametrize("narrow", ["U16", "U24"])
def test_narrow_id_stores_give_the_results_of_i32_stores(env, tmp_path, monkeypatch, narrow):
    """The whole path on U16 stores (what 300-id vocabularies get) and on U24 stores (what
    Qwen-sized vocabularies get, forced here) against the same path with every store forced
    to I32 ids (format 1.0's layout, the reference)."""
    from fusechat.stages import store as store_mod

    with monkeypatch.context() as m:
        if narrow == "U24":
            m.setattr(store_mod, "ids_dtype_for", lambda vocab_size: "U24")
        u16 = _run_stages(env, tmp_path / narrow)
    with monkeypatch.context() as m:
        m.setattr(store_mod, "ids_dtype_for", lambda vocab_size: "I32")
        i32 = _run_stages(env, tmp_path / "i32")
    for name in ("piv", "src", "al", "same", "mince", "token", "avgce"):
        (dt_u, win_u, rows_u), (dt_i, win_i, rows_i) = u16[name], i32[name]
        assert (dt_u, dt_i) == (narrow, "I32"), name
        assert win_u == win_i and len(rows_u) == len(rows_i) > 0, name
        for a, b in zip(rows_u, rows_i):
            for x, y in zip(a, b):
                assert np.array_equal(x, y, equal_nan=True), (name, a[0])
    assert any((r[3] < 0).any() for r in u16["al"][2])  # pads went through the narrow files
    for key, t in i32["batch"].items():
        assert u16["batch"][key].dtype == t.dtype and bool((u16["batch"][key] == t).all()), key
    assert str(u16["batch"]["input_ids"].dtype) == str(u16["batch"]["labels"].dtype) == "torch.int64"
    assert all(np.array_equal(x, y) for x, y in zip(u16["counts"], i32["counts"]))


def test_id_taking_calls_accept_u16_arrays(env, stores):
    """Raw U16 id arrays (what a U16 store holds, pads aside) given straight to the calls that
    take ids: alignment, counts, distribution alignment, fusion and the loss give what int32
    ids give."""
    from fusechat.loss import fusion_loss

    root, toks, _ = env
    pv, sv = Vocab.from_tokenizer(toks["piv"]), Vocab.from_tokenizer(toks["src"])
    p, s = TopKStore(stores["piv"])[0], TopKStore(stores["src"])[0]
    a32 = al.align(s.input_ids, p.input_ids, sv, pv)
    a16 = al.align(s.input_ids.astype(np.uint16), p.input_ids.astype(np.uint16), sv, pv)
    assert np.array_equal(a32.indptr, a16.indptr) and np.array_equal(a32.indices, a16.indices)
    c32, c16 = al.AlignmentCounts(pv.size, sv.size), al.AlignmentCounts(pv.size, sv.size)
    c32.update([s.input_ids], [p.input_ids], [a32])
    c16.update([s.input_ids.astype(np.uint16)], [p.input_ids.astype(np.uint16)], [a16])
    assert all(np.array_equal(x, y) for x, y in zip(c32.to_coo(), c16.to_coo()))
    vmap = al.vocab_map(sv, pv, "ms", counts=c32)
    d32 = al.align_distributions(s.topk_ids, s.topk_logits, p.input_ids, s.input_ids, a32,
                                 vmap, sv, pv)
    d16 = al.align_distributions(s.topk_ids.astype(np.uint16), s.topk_logits,
                                 p.input_ids.astype(np.uint16), s.input_ids.astype(np.uint16),
                                 a32, vmap, sv, pv)
    assert all(np.array_equal(getattr(d32, f), getattr(d16, f)) for f in ("offsets", "ids", "logits"))
    f32 = SparseDists.from_padded(p.topk_ids, p.topk_logits)
    f16 = SparseDists.from_padded(p.topk_ids.astype(np.uint16), p.topk_logits)
    assert np.array_equal(f32.ids, f16.ids) and f16.ids.dtype == np.int32
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(p.input_ids), pv.size)).astype(np.float32)
    labels = np.where(p.loss_mask > 0, p.input_ids, -100)
    l32 = fusion_loss(logits, labels, p.topk_ids, p.topk_logits)
    l16 = fusion_loss(logits, labels.astype(np.int64), p.topk_ids.astype(np.uint16), p.topk_logits)
    assert l32.loss == l16.loss and np.array_equal(l32.grad, l16.grad)
