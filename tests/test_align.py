"""fusechat.align against the pure-Python twin of the reference (tests/reference/align_ref.py)
on real tokenizers, plus properties of the offsets alignment."""
import json
import os

import editdistance
import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import align_fixtures as F  # noqa: E402
from fusechat import Vocab, align  # noqa: E402
from reference import align_ref as R  # noqa: E402

PAIRS = [("mistral", "bytelevel"), ("bytelevel", "mistral"), ("unigram", "wordpiece"),
         ("wordpiece", "unigram"), ("bytelevel", "unigram")]


def folder(kind):
    return {"bytelevel": F.bytelevel_bpe, "unigram": F.unigram, "mistral": F.mistral,
            "wordpiece": F.wordpiece}[kind]()


_cache = {}


def load(kind):
    if kind not in _cache:
        path = folder(kind)
        v = Vocab.from_pretrained(path)
        tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        # the twin gets the strings from the tokenizers library, not from fusechat
        dec = [tok.decode([i], skip_special_tokens=False) for i in range(len(v))]
        pieces = [tok.id_to_token(i) for i in range(len(v))]
        _cache[kind] = (v, tok, dec, pieces)
    return _cache[kind]


def encode(kind, text):
    return load(kind)[1].encode(text, add_special_tokens=False).ids


def random_ids(rng, v, n):
    ids = rng.integers(0, len(v), size=n)
    return [int(i) for i in ids if not v.flags[i] & 1] or [0]


def ref_dtw(src_kind, piv_kind, src_ids, piv_ids):
    sv, _, sdec, _ = load(src_kind)
    pv, _, pdec, _ = load(piv_kind)
    return R.dtw([sdec[i] for i in src_ids], [pdec[i] for i in piv_ids], sv.marker, pv.marker)


# -- Levenshtein ----------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("abcé▁Ġ你 xyz\U0001f389"), max_size=90),
       st.text(alphabet=st.sampled_from("abcé▁Ġ你 xyz\U0001f389"), max_size=90))
def test_levenshtein_matches_editdistance(a, b):
    assert align.levenshtein(a, b) == editdistance.eval(a, b)


# -- DTW ------------------------------------------------------------------------------------

@pytest.mark.parametrize("src_kind,piv_kind", PAIRS)
def test_dtw_matches_twin_on_real_text(src_kind, piv_kind):
    sv, pv = load(src_kind)[0], load(piv_kind)[0]
    for text in F.sample_texts()[:14]:
        s, p = encode(src_kind, text)[:120], encode(piv_kind, text)[:120]
        got = align.align(s, p, sv, pv, method="dtw")
        assert got.lists() == ref_dtw(src_kind, piv_kind, s, p), text


@pytest.mark.parametrize("src_kind,piv_kind", PAIRS)
def test_dtw_matches_twin_on_random_ids(src_kind, piv_kind):
    rng = np.random.default_rng(hash((src_kind, piv_kind)) % 2**32)
    sv, pv = load(src_kind)[0], load(piv_kind)[0]
    for _ in range(25):
        s = random_ids(rng, sv, int(rng.integers(1, 40)))
        p = random_ids(rng, pv, int(rng.integers(1, 40)))
        assert align.align(s, p, sv, pv).lists() == ref_dtw(src_kind, piv_kind, s, p)


def test_dtw_with_repeats_and_ties():
    """Many equal costs (the same few tokens repeated) exercise the tie order."""
    sv, pv = load("bytelevel")[0], load("mistral")[0]
    rng = np.random.default_rng(7)
    s_pool, p_pool = encode("bytelevel", "a a b ab ba"), encode("mistral", "a a b ab ba")
    for _ in range(40):
        s = list(rng.choice(s_pool, size=int(rng.integers(1, 30))))
        p = list(rng.choice(p_pool, size=int(rng.integers(1, 30))))
        assert align.align(s, p, sv, pv).lists() == ref_dtw("bytelevel", "mistral", s, p)


def test_align_errors():
    sv, pv = load("bytelevel")[0], load("mistral")[0]
    with pytest.raises(ValueError, match="src_ids\\[1\\]"):
        align.align([1, len(sv)], [1], sv, pv)
    with pytest.raises(TypeError):
        align.align([1.5], [1], sv, pv)
    with pytest.raises(ValueError):
        align.align([1], [1], sv, pv, method="nope")
    empty = align.align([], [5, 6], sv, pv)
    assert empty.lists() == [[], []]


# -- offsets --------------------------------------------------------------------------------

def check_complete_monotone(al, n, m):
    lists = al.lists()
    assert len(lists) == m
    seen = set()
    last_lo = last_hi = -1
    for J in lists:
        assert J, "every pivot position is aligned"
        assert J == sorted(set(J))
        assert J[0] >= last_lo and J[-1] >= last_hi, "monotone"
        last_lo, last_hi = J[0], J[-1]
        seen.update(J)
    assert seen == set(range(n)), "every source position is aligned"


@pytest.mark.parametrize("src_kind,piv_kind", [("mistral", "bytelevel"), ("bytelevel", "unigram"),
                                               ("unigram", "mistral")])
def test_offsets_on_real_text_cover_exact_byte_overlaps(src_kind, piv_kind):
    sv, pv = load(src_kind)[0], load(piv_kind)[0]
    for text in F.sample_texts():
        s, p = encode(src_kind, text), encode(piv_kind, text)
        if sv.roles["unk"] in s or pv.roles["unk"] in p:
            continue
        al = align.align(s, p, sv, pv, method="offsets")
        check_complete_monotone(al, len(s), len(p))
        # independent check: byte spans, the one-sided dummy-prefix space removed
        sblob, pblob = sv.canonical_text(s), pv.canonical_text(p)
        extra = len(sblob) - len(pblob)
        assert abs(extra) <= 1

        def spans(v, ids, lead):
            out, pos = [], 0
            for i in ids:
                a = max(pos - lead, 0)
                pos += len(v.canonical(i))
                out.append((a, max(pos - lead, 0)))
            return out

        ss, ps = spans(sv, s, max(extra, 0)), spans(pv, p, max(-extra, 0))
        for j, J in enumerate(al.lists()):
            a, b = ps[j]
            if a == b:
                continue
            # overlapping spans, plus empty spans (whitespace on one side only) inside
            want = [i for i, (c, d) in enumerate(ss)
                    if (c < b and a < d) or (c == d and a <= c < b)]
            assert J == want, (text, j)


def test_offsets_specials_are_anchors_and_mismatch_is_reported():
    sv, pv = load("bytelevel")[0], load("unigram")[0]
    eot, s_end = pv.find("</s>"), sv.find("<|im_end|>")
    s = encode("bytelevel", "Hello world") + [s_end] + encode("bytelevel", "again")
    p = [pv.find("<s>")] + encode("unigram", "Hello world") + [eot] + encode("unigram", "again")
    al = align.align(s, p, sv, pv, method="offsets")
    check_complete_monotone(al, len(s), len(p))
    j = p.index(eot)
    assert al.lists()[j] == [s.index(s_end)]
    assert al.lists()[0] == [0]  # the pivot's bos covers offset 0
    bad = encode("unigram", "Hello there")
    with pytest.raises(ValueError) as e:
        align.align(s, bad, sv, pv, method="offsets")
    assert "offsets_text_mismatch" in str(e.value)
    fb = align.align(s, bad, sv, pv, method="offsets", fallback="dtw")
    assert fb.lists() == align.align(s, bad, sv, pv, method="dtw").lists()


WORDS = None


def shared_words():
    """Words that are one token, with their leading space, in both the byte-level BPE
    (" w" -> "Ġw") and the Mistral model ("w" -> "▁w"): texts made of them split at the same
    points in both tokenizers."""
    global WORDS
    if WORDS is None:
        cands = sorted({w for t in F.corpus() for w in t.split() if w.isalpha() and len(w) < 12})
        WORDS = [w for w in cands if len(encode("bytelevel", " " + w)) == 1
                 and len(encode("mistral", w)) == 1][:300]
    return WORDS


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_offsets_and_dtw_agree_on_shared_split_points(data):
    words = shared_words()
    assert len(words) >= 10
    chosen = data.draw(st.lists(st.sampled_from(words), min_size=1, max_size=25))
    sv, pv = load("bytelevel")[0], load("mistral")[0]
    s = [encode("bytelevel", " " + w)[0] for w in chosen]
    p = [encode("mistral", w)[0] for w in chosen]  # "▁w": the dummy prefix is its space
    assert sv.canonical_text(s) == pv.canonical_text(p)
    off = align.align(s, p, sv, pv, method="offsets")
    dtw = align.align(s, p, sv, pv, method="dtw")
    assert off.lists() == dtw.lists() == [[i] for i in range(len(chosen))]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from("ab c\nédé你🎉 .,xyzXY"), min_size=0, max_size=80),
       st.lists(st.sampled_from(["<|im_end|>", "<|endoftext|>"]), max_size=3))
def test_offsets_properties_on_generated_text(text, specials):
    """Any text, any special tokens inserted: every position aligned, monotone."""
    sv, pv = load("bytelevel")[0], load("mistral")[0]
    s = encode("bytelevel", text)
    for k, name in enumerate(specials):
        s.insert(min(len(s), (k * 7) % (len(s) + 1)), sv.find(name))
    p = encode("mistral", text)
    p = [pv.roles["bos"]] + p + [pv.roles["eos"]]
    if not s:
        s = [sv.find("<|endoftext|>")]
    al = align.align(s, p, sv, pv, method="offsets")
    check_complete_monotone(al, len(s), len(p))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=60),
       st.lists(st.integers(0, 10**6), min_size=1, max_size=60))
def test_dtw_properties_on_random_ids(a, b):
    """DTW: every position of both sides aligned, monotone, the ends paired."""
    sv, pv = load("unigram")[0], load("mistral")[0]
    s = [x % len(sv) for x in a]
    p = [x % len(pv) for x in b]
    al = align.align(s, p, sv, pv)
    check_complete_monotone(al, len(s), len(p))
    assert al.lists()[0][0] == 0 and al.lists()[-1][-1] == len(s) - 1


def test_align_batch_matches_single_and_ragged():
    sv, pv = load("mistral")[0], load("bytelevel")[0]
    texts = F.sample_texts()[:20]
    src = [encode("mistral", t) for t in texts]
    piv = [encode("bytelevel", t) for t in texts]
    for method in ("dtw", "offsets"):
        got = align.align_batch(src, piv, sv, pv, method=method, fallback="dtw", threads=2)
        for a, s, p in zip(got, src, piv):
            b = align.align(s, p, sv, pv, method=method, fallback="dtw")
            assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    flat = np.concatenate([np.asarray(x) for x in src])
    offs = np.cumsum([0] + [len(x) for x in src])
    got = align.align_batch(align.Ragged(flat, offs), piv, sv, pv, threads=2)
    assert [g.lists() for g in got] == [align.align(s, p, sv, pv).lists()
                                        for s, p in zip(src, piv)]
    with pytest.raises(ValueError):
        align.align_batch(src, piv[:-1], sv, pv)


# -- counts and vocabulary maps ---------------------------------------------------------------

def corpus_alignments(src_kind, piv_kind, n_texts=30):
    sv, pv = load(src_kind)[0], load(piv_kind)[0]
    out = []
    for text in F.sample_texts()[:n_texts]:
        s, p = encode(src_kind, text)[:150], encode(piv_kind, text)[:150]
        out.append((s, p, align.align(s, p, sv, pv)))
    return out


def test_counts_match_twin_and_roundtrip_scipy(tmp_path):
    from scipy import sparse

    data = corpus_alignments("bytelevel", "mistral")
    counts = align.AlignmentCounts(len(load("mistral")[0]), len(load("bytelevel")[0]))
    for s, p, al in data:
        counts.update(s, p, al)
    want = R.count_alignments((s, p, al.lists()) for s, p, al in data)
    piv, src, cnt = counts.to_coo()
    assert dict(zip(zip(piv.tolist(), src.tolist()), cnt.tolist())) == want
    path = tmp_path / "c.npz"
    counts.save(path)
    m = sparse.load_npz(path)
    assert m.shape == counts.shape and m.nnz == len(want)
    assert all(m[p, s] == c for (p, s), c in want.items())
    again = align.AlignmentCounts.load(path)
    assert [a.tolist() for a in again.to_coo()] == [a.tolist() for a in counts.to_coo()]
    # merge of two halves = all
    a, b = align.AlignmentCounts(), align.AlignmentCounts()
    for k, (s, p, al) in enumerate(data):
        (a if k % 2 else b).update(s, p, al)
    a.merge(b)
    assert [x.tolist() for x in a.to_coo()] == [x.tolist() for x in counts.to_coo()]
    # a scipy-written file loads too
    sparse.save_npz(tmp_path / "s.npz", m)
    assert align.AlignmentCounts.load(tmp_path / "s.npz").nnz == counts.nnz


def test_counts_load_rejects_bad_files(tmp_path):
    from fusechat import FormatError

    np.savez(tmp_path / "x.npz", data=np.array([1.5]), indices=np.array([0]),
             indptr=np.array([0, 1]), shape=np.array([1, 1]), format=np.array(b"csr"))
    with pytest.raises(FormatError, match="non-negative integers"):
        align.AlignmentCounts.load(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", data=np.array([1.0]), indices=np.array([3]),
             indptr=np.array([0, 1]), shape=np.array([1, 1]), format=np.array(b"csr"))
    with pytest.raises(FormatError, match="outside"):
        align.AlignmentCounts.load(tmp_path / "y.npz")


def roles_of(v):
    return dict(v.roles)


@pytest.mark.parametrize("src_kind,piv_kind", [("bytelevel", "mistral"), ("unigram", "bytelevel"),
                                               ("wordpiece", "unigram")])
def test_ms_map_matches_twin(src_kind, piv_kind):
    data = corpus_alignments(src_kind, piv_kind)
    sv, _, _, spieces = load(src_kind)
    pv, _, _, ppieces = load(piv_kind)
    counts = align.AlignmentCounts()
    for s, p, al in data:
        counts.update(s, p, al)
    got = align.vocab_map(sv, pv, "ms", counts=counts)
    want = R.ms_map(spieces, ppieces, sv.marker, pv.marker,
                    R.count_alignments((s, p, al.lists()) for s, p, al in data),
                    roles_of(sv), roles_of(pv))
    assert got.tolist() == want


@pytest.mark.parametrize("src_kind,piv_kind", [("bytelevel", "unigram"), ("unigram", "bytelevel"),
                                               ("wordpiece", "unigram")])
def test_em_and_mined_maps_match_twin(src_kind, piv_kind):
    sv, _, _, spieces = load(src_kind)
    pv, _, _, ppieces = load(piv_kind)
    em = align.vocab_map(sv, pv, "em", roles="none")
    assert em.tolist() == R.em_map(spieces, ppieces, sv.marker, pv.marker)
    sub = spieces if len(spieces) <= 1100 else spieces[:1100]
    mined = align.vocab_map(sv, pv, "mined", roles="none", threads=2)
    want = R.mined_map(sub, ppieces, sv.marker, pv.marker)
    assert mined[:len(sub)].tolist() == want
    with_roles = align.vocab_map(sv, pv, "mined")
    want_roles = R.apply_roles(mined.tolist(), roles_of(sv), roles_of(pv),
                               ("bos", "eos", "unk", "pad", "eot"))
    assert with_roles.tolist() == want_roles


def test_same_vocab_maps_identity_and_roles(tmp_path):
    path = F.bytelevel_bpe()
    a = Vocab.from_pretrained(path)
    b = Vocab.from_tokenizer(tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json")))
    assert a.same_as(b) and b.same_as(a)
    assert align.vocab_map(b, a, "mined").tolist() == list(range(len(a)))  # b has no roles
    assert align.vocab_map(a, a, "em").tolist() == list(range(len(a)))
    # a source without an end-of-turn token (its eos ends turns, like Mixtral's </s>):
    # roles "all" sends its eos to the pivot's end of turn, "reference" to the pivot's eos
    j = json.loads(open(os.path.join(path, "tokenizer.json"), encoding="utf-8").read())
    for t in j["added_tokens"]:
        if t["content"] == "<|im_end|>":
            t["content"] = "<|im_stop|>"
    j["model"]["vocab"]["<|im_stop|>"] = j["model"]["vocab"].pop("<|im_end|>")
    (tmp_path / "tokenizer.json").write_text(json.dumps(j), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')
    src = Vocab.from_pretrained(tmp_path)
    assert src.roles["eot"] == src.roles["eos"] and not src.same_as(a)
    assert a.roles["eot"] != a.roles["eos"]
    assert align.vocab_map(src, a, "em")[src.roles["eos"]] == a.roles["eot"]
    assert align.vocab_map(src, a, "em", roles="reference")[src.roles["eos"]] == a.roles["eos"]


# -- distributions ------------------------------------------------------------------------------

def random_topk(rng, n, V, k=10):
    ids = np.stack([rng.choice(V, size=k, replace=False) for _ in range(n)])
    logits = -np.sort(-rng.normal(size=(n, k)).astype(np.float32), axis=1)
    return ids, logits


@pytest.mark.parametrize("mode", ["ms", "em", "mined"])
@pytest.mark.parametrize("src_kind,piv_kind", [("bytelevel", "mistral"), ("unigram", "bytelevel"),
                                               ("mistral", "unigram")])
def test_distributions_match_twin(mode, src_kind, piv_kind):
    sv, _, sdec, spieces = load(src_kind)
    pv, _, pdec, ppieces = load(piv_kind)
    data = corpus_alignments(src_kind, piv_kind, n_texts=16)
    counts = align.AlignmentCounts()
    for s, p, al in data:
        counts.update(s, p, al)
    vmap = align.vocab_map(sv, pv, "ms" if mode == "ms" else mode, counts=counts)
    direct = R.em_map(spieces, ppieces, sv.marker, pv.marker)
    eff = {"em": direct, "mined": vmap.tolist(),
           "ms": [d if d >= 0 else int(x) for d, x in zip(direct, vmap)]}[mode]
    if mode != "ms":  # roles "all" also re-point the role tokens
        for name, i in sv.roles.items():
            if i is not None and pv.roles.get(name) is not None:
                eff[i] = int(vmap[i])
    rng = np.random.default_rng(3)
    for multi in (True, False):
        for s, p, al in data:
            ids, logits = random_topk(rng, len(s), len(sv))
            if mode == "ms":  # plant real next tokens so that MAP lists are not all dropped
                ids[:-1, 0] = s[1:]
            got = align.align_distributions(ids, logits, p, s, al, vmap, sv, pv, mode=mode,
                                            multi="rules" if multi else "onehot")
            want = R.align_distributions(p, s, al.lists(), ids.tolist(), logits.tolist(), pdec,
                                         sdec, sv.marker, pv.marker, eff, vmap.tolist(), mode,
                                         multi)
            assert len(got) == len(p)
            for j, w in enumerate(want):
                a, b = got.offsets[j], got.offsets[j + 1]
                assert got.ids[a:b].tolist() == [x for x, _ in w], (j, mode)
                assert np.array_equal(got.logits[a:b], np.array([y for _, y in w], np.float32))
            assert got.logits.dtype == np.float32 and got.ids.dtype == np.int32


def test_distribution_rules_cover_every_case():
    """On real text both MAP and ONEHOT occur, and EMPTY never does: rule (b) of method.md 5
    only fires when the last consumed (or the last) source token is a suffix of the pivot
    token, and then rule (a) has already mapped it."""
    sv, _, sdec, _ = load("bytelevel")
    pv, _, pdec, _ = load("mistral")
    data = corpus_alignments("bytelevel", "mistral", n_texts=30)
    seen = {"map": 0, "empty": 0, "onehot": 0}
    vmap = align.vocab_map(sv, pv, "mined")
    for s, p, al in data:
        ids = np.array([[t] for t in s[1:] + s[-1:]])
        logits = np.ones((len(s), 1), np.float32) * 5
        got = align.align_distributions(ids, logits, p, s, al, vmap, sv, pv)
        for j in range(len(p)):
            a, b = got.offsets[j], got.offsets[j + 1]
            if b == a:
                seen["empty"] += 1
            elif got.logits[a] == 1.0:
                seen["onehot"] += 1
            else:
                seen["map"] += 1
    assert seen["map"] > 0 and seen["onehot"] > 0 and seen["empty"] == 0, seen


def test_distributions_batch_and_errors():
    sv, pv = load("bytelevel")[0], load("mistral")[0]
    data = corpus_alignments("bytelevel", "mistral", n_texts=6)
    vmap = align.vocab_map(sv, pv, "mined")
    rng = np.random.default_rng(0)
    tk = [random_topk(rng, len(s), len(sv)) for s, _, _ in data]
    batch = align.align_distributions_batch([t[0] for t in tk], [t[1] for t in tk],
                                            [p for _, p, _ in data], [s for s, _, _ in data],
                                            [al for _, _, al in data], vmap, sv, pv, threads=2)
    for (s, p, al), (ids, lg), got in zip(data, tk, batch):
        one = align.align_distributions(ids, lg, p, s, al, vmap, sv, pv)
        assert all(np.array_equal(x, y) for x, y in zip(one, got))
    s, p, al = data[0]
    ids, lg = tk[0]
    bad = ids.copy()
    bad[0, 0] = len(sv)
    with pytest.raises(ValueError, match="topk_ids"):
        align.align_distributions(bad, lg, p, s, al, vmap, sv, pv)
    with pytest.raises(ValueError):
        align.align_distributions(ids[:-1], lg[:-1], p, s, al, vmap, sv, pv)
    with pytest.raises(ValueError):
        align.align_distributions(ids, lg, p, s, al, vmap[:-1], sv, pv)
