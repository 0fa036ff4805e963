"""fusechat.align.project (the byte-exact projection, docs/alignment.md) against its
plain-Python twin (tests/reference/project_ref.py) on real tokenizers, plus the properties
the doc promises: exactness, no mass above 1, the oracle's top-1 fidelity, clear errors."""
import functools
import math

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

import align_fixtures as F  # noqa: E402
from fusechat import Vocab, align  # noqa: E402
from reference import project_ref as R  # noqa: E402

NUMBERS = [
    "The invoice lists 3 items at 14.99 each, 44.97 in total, due on 2024-07-15.",
    "In 1969, 3 astronauts flew 384400 km; 12 people have walked on the Moon since.",
    "Version 2.31.0 fixes 17 bugs; upgrade from 2.30 with pip install -U pkg==2.31.0.",
    "Paris is the capital of France; Berlin has 3.7 million people and 96 districts.",
    "Q: What is 27 + 58? A: 85. Q: And 9 * 13? A: 117, since 9 * 13 = 117.",
]


@functools.lru_cache(maxsize=None)
def digits_bpe():
    """A byte-level BPE with digits split one by one (Qwen2's pre-tokenizer) on real text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from fusechat.demo.models import QWEN2_SPLIT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(F.corpus() + NUMBERS * 20, trainer)
    return F._save(tok, "digits-bpe", {"eos_token": "<|endoftext|>"})


@functools.lru_cache(maxsize=None)
def demo_tokenizer(kind):
    from fusechat.demo.models import train_tokenizer

    return train_tokenizer(kind)


def real_pair(pivot, source):
    folders = {"mistral": F.mistral, "bytelevel": F.bytelevel_bpe, "unigram": F.unigram,
               "digits": digits_bpe}
    out = []
    for kind in (pivot, source):
        path = folders[kind]()
        out.append((Vocab.from_pretrained(path),
                    tokenizers.Tokenizer.from_file(path + "/tokenizer.json")))
    return out


def twin_vocab(sv, pv):
    """What the twin gets: canonical bytes, pivot flags, the role map (docs: Special)."""
    pflags = pv.flags
    roles = {}
    for r in ("bos", "eos", "unk", "pad", "eot"):
        s, p = sv.roles.get(r), pv.roles.get(r)
        if s is not None and p is not None and not sv.canonical(s):
            roles[s] = p
    return dict(src_can=sv.canonical_bytes(), piv_can=pv.canonical_bytes(),
                piv_special=[bool(f & 5) for f in pflags], piv_byte=[bool(f & 8) for f in pflags],
                role_map=roles)


def random_topk(src_ids, V, rng, k=8, p_known=0.7):
    """Top-K rows mixing the true next token, other ids of the text (plausible spellings),
    and random ids; random masses summing to at most 1; the true log-prob known at some
    positions and the true token left out of the top-K at others."""
    n = len(src_ids)
    pool = np.unique(src_ids)
    ids = np.full((n, k), -1, np.int64)
    lps = np.zeros((n, k), np.float32)
    true = np.full(n, np.nan, np.float32)
    for i in range(n):
        nxt = src_ids[i + 1] if i + 1 < n else src_ids[i]
        width = rng.integers(1, k + 1)
        cand = [nxt] if rng.random() < 0.85 else []
        while len(cand) < width:
            c = int(rng.choice(pool)) if rng.random() < 0.6 else int(rng.integers(V))
            if c not in cand:
                cand.append(c)
        p = rng.dirichlet(np.ones(len(cand) + 1))[:-1] * rng.uniform(0.5, 1.0)
        order = np.argsort(-p, kind="stable")
        ids[i, :len(cand)] = np.asarray(cand)[order]
        lps[i, :len(cand)] = np.log(p[order]).astype(np.float32)
        if rng.random() < p_known:  # consistent with the top-K: masses add up to <= 1
            at = cand.index(nxt) if nxt in cand else -1
            true[i] = np.log(p[at]) if at >= 0 else np.log(rng.uniform(0, 1 - p.sum()) + 1e-12)
        if rng.random() < 0.05:
            lps[i, 0] = -np.inf
    return ids, lps, true


def oracle_topk(src_ids, V, rng, k=10):
    """The oracle source: logit 10 on the true next token, nine other ids at 0, as absolute
    log-probabilities over the whole vocabulary."""
    n = len(src_ids)
    lse = math.log(math.exp(10.0) + V - 1)
    ids = np.zeros((n, k), np.int64)
    lps = np.full((n, k), -lse, np.float32)
    for i in range(n):
        ids[i, 0] = src_ids[i + 1] if i + 1 < n else src_ids[i]
        others = rng.choice(V, k, replace=False)
        ids[i, 1:] = others[others != ids[i, 0]][:k - 1]
        lps[i, 0] = 10.0 - lse
    return ids, lps, np.full(n, 10.0 - lse, np.float32)


def assert_same(c, twin_lists, twin_gold, twin_res):
    d = c.dists
    assert len(d) == len(twin_lists)
    for j, expect in enumerate(twin_lists):
        a, b = d.offsets[j], d.offsets[j + 1]
        assert d.ids[a:b].tolist() == [i for i, _ in expect], j
        np.testing.assert_array_equal(d.logits[a:b], np.float32([x for _, x in expect]))
    np.testing.assert_array_equal(c.gold_logprob, np.float32(twin_gold))
    assert c.resolution.tolist() == twin_res


def run_both(s, p, ids, lps, true, sv, pv, tw, k=10):
    c = align.project(s, p, ids, lps, sv, pv, src_true_logprobs=true, k=k, details=True)
    lists, gold, res = R.project(s, p, ids.tolist(), lps.tolist(),
                                 None if true is None else true.tolist(), tw["src_can"],
                                 tw["piv_can"], tw["piv_special"], tw["piv_byte"],
                                 tw["role_map"], k)
    return c, (lists, gold, res)


# -- the twin ---------------------------------------------------------------------------

@pytest.mark.parametrize("pivot,source", [("mistral", "bytelevel"), ("mistral", "unigram"),
                                          ("bytelevel", "mistral"), ("unigram", "digits")])
def test_twin_equals_c_real(pivot, source):
    (pv, ptok), (sv, stok) = real_pair(pivot, source)
    tw = twin_vocab(sv, pv)
    rng = np.random.default_rng(len(pivot) * 7 + len(source))
    for text in F.sample_texts()[:24] + NUMBERS:
        s, p = stok.encode(text).ids, ptok.encode(text).ids
        ids, lps, true = random_topk(s, len(sv), rng)
        c, twin = run_both(s, p, ids, lps, true if rng.random() < 0.7 else None, sv, pv, tw,
                           k=int(rng.integers(1, 12)))
        assert_same(c, *twin)


def test_twin_equals_c_wide_topk():
    """Top-K rows of up to 120 candidates, sorted and in random order, with ties: a position
    collects far more entries than the C's first table holds (32), so it grows mid-position;
    k up to 200 keeps them all in the output."""
    (pv, ptok), (sv, stok) = real_pair("mistral", "bytelevel")
    tw = twin_vocab(sv, pv)
    rng = np.random.default_rng(23)
    for text in F.sample_texts()[:6] + NUMBERS[:4]:
        s, p = stok.encode(text).ids, ptok.encode(text).ids
        ids, lps, true = random_topk(s, len(sv), rng, k=120)
        if rng.random() < 0.5:  # ties, in random id order
            lps = np.where(ids >= 0, np.float32(-6.0), lps).astype(np.float32)
        c, twin = run_both(s, p, ids, lps, true, sv, pv, tw, k=int(rng.integers(40, 200)))
        assert_same(c, *twin)
        assert (np.diff(c.dists.offsets) > 32).any()


def test_twin_equals_c_random_ids_and_edited_texts():
    """Sequences that do not spell the same text: random ids on both sides, and texts with
    random edits on one side (resynchronisation, differing spans, one-sided whitespace)."""
    (pv, ptok), (sv, stok) = real_pair("mistral", "bytelevel")
    tw = twin_vocab(sv, pv)
    rng = np.random.default_rng(17)
    base = F.sample_texts()[9:30]
    for it in range(60):
        if it % 3 == 0:
            s = rng.integers(0, len(sv), rng.integers(0, 40)).tolist()
            p = rng.integers(0, len(pv), rng.integers(0, 40)).tolist()
        else:
            text = base[it % len(base)][:int(rng.integers(20, 300))]
            chars = list(text)
            for _ in range(int(rng.integers(1, 6))):
                at = int(rng.integers(0, len(chars) + 1))
                chars[at:at + int(rng.integers(0, 4))] = list(rng.choice(
                    ["", " ", "  ", "\n", "x", "©", "42", "日本"], 1)[0])
            s, p = stok.encode("".join(chars)).ids, ptok.encode(text).ids
        ids, lps, true = random_topk(s, len(sv), rng) if s else (
            np.zeros((0, 8), np.int64), np.zeros((0, 8), np.float32), np.zeros(0, np.float32))
        c, twin = run_both(s, p, ids, lps, true, sv, pv, tw, k=int(rng.integers(1, 9)))
        assert_same(c, *twin)


def demo_chats(n, tokenizer):
    from fusechat.demo import data as demo_data
    from fusechat.stages import chat

    convs, _ = chat.load_conversations(demo_data.make_dataset(n, seed=3))
    sep = chat.end_of_turn_token(tokenizer)
    return [chat.tokenize(cv, tokenizer, template="openchat_3.5", sep=sep) for cv in convs]


@pytest.mark.parametrize("source", ["byte_level", "unigram"])
def test_twin_equals_c_demo(source):
    pt, st = demo_tokenizer("metaspace"), demo_tokenizer(source)
    pv, sv = Vocab.from_tokenizer(pt), Vocab.from_tokenizer(st)
    tw = twin_vocab(sv, pv)
    rng = np.random.default_rng(5)
    for a, b in zip(demo_chats(40, pt), demo_chats(40, st)):
        ids, lps, true = random_topk(b.input_ids, len(sv), rng)
        c, twin = run_both(b.input_ids, a.input_ids, ids, lps, true, sv, pv, tw)
        assert_same(c, *twin)


def test_twin_equals_c_lossy_and_edges():
    """Differing spans (Unigram <unk> for CJK and emoji), empty sequences, one token."""
    (pv, ptok), (sv, stok) = real_pair("mistral", "unigram")
    tw = twin_vocab(sv, pv)
    rng = np.random.default_rng(11)
    texts = F.MULTILINGUAL + ["", "a", "  leading spaces", "©2024 ﬁnal\u00a0price"]
    for text in texts:
        s, p = stok.encode(text).ids, ptok.encode(text).ids
        ids, lps, true = random_topk(s, len(sv), rng)
        c, twin = run_both(s, p, ids, lps, true, sv, pv, tw)
        assert_same(c, *twin)
    # the demo's Unigram normalises with NFKC (the ligature, ½, the superscript become other
    # bytes): those pivot positions fall back, the rest of the text is projected
    st = demo_tokenizer("unigram")
    sv2 = Vocab.from_tokenizer(st)
    text = "the ﬁrst ½ of x² is done"
    s = st(text, add_special_tokens=False)["input_ids"]
    p = ptok.encode(text).ids
    ids, lps, true = oracle_topk(s, len(sv2), rng)
    c, twin = run_both(s, p, ids, lps, true, sv2, pv, twin_vocab(sv2, pv))
    assert_same(c, *twin)
    pieces = [pv.canonical(i) for i in p]
    lossy = [j for j in range(len(p) - 1) if any(ch in pieces[j + 1].decode("utf-8", "replace")
                                                 for ch in "ﬁ½²")]
    assert lossy and all(c.resolution[j] == R.FALLBACK for j in lossy)
    fine = [j for j in range(len(p) - 1) if pieces[j + 1] in (b" of", b" is", b" done")]
    assert fine and all(c.resolution[j] != R.FALLBACK for j in fine)


# -- properties ---------------------------------------------------------------------------

def covering(s_can, p_can, j):
    """Source tokens i+1..i+r that cover pivot token j+1's bytes exactly (both streams the
    same text up to a leading dummy-prefix space), as (i+1, i+r+1, byte start, byte end),
    or None."""
    S, P = b"".join(s_can), b"".join(p_can)
    shift = len(P) - len(S)
    assert shift in (0, 1) and P[shift:] == S
    pb = sum(len(x) for x in p_can[:j + 1])
    a, b = max(pb - shift, 0), pb + len(p_can[j + 1]) - shift
    starts = np.cumsum([0] + [len(x) for x in s_can])
    if a not in starts or b not in starts or a == b:
        return None
    first = int(np.searchsorted(starts, a, "right")) - 1
    # the first source token with bytes starting at a
    while first < len(s_can) and not s_can[first]:
        first += 1
    last = int(np.searchsorted(starts, b, "left"))
    return first, last, a, b


def other_spelling(S, a, b, s_can, first, last, ids, can):
    """Whether a top-K candidate other than the true token along the covering steps spells
    the text S[a:b) through b (docs: such paths also count for the pivot token)."""
    for i in range(first - 1, last - 1):
        z = sum(len(x) for x in s_can[:i + 1])
        for v in ids[i]:
            w = S[a:z] + can[v]
            if v != -1 and len(w) >= b - a and w[:b - a] == S[a:b] and can[v] != s_can[i + 1]:
                return True
    return False


@pytest.mark.parametrize("pivot,source", [("mistral", "digits"), ("mistral", "unigram")])
def test_exact_cover_is_the_chain_rule(pivot, source):
    (pv, ptok), (sv, stok) = real_pair(pivot, source)
    rng = np.random.default_rng(2)
    can = sv.canonical_bytes()
    checked = 0
    for text in NUMBERS + F.sample_texts()[9:20]:
        s, p = stok.encode(text).ids, ptok.encode(text).ids
        s_can, p_can = [sv.canonical(i) for i in s], [pv.canonical(i) for i in p]
        if b"".join(p_can)[-len(b"".join(s_can)) or None:] != b"".join(s_can):
            continue  # lossy text: not a place for exactness
        ids, lps, true = oracle_topk(s, len(sv), rng)
        true = (true + rng.uniform(-3, 0, len(s))).astype(np.float32)
        c = align.project(s, p, ids, lps, sv, pv, src_true_logprobs=true, k=1000, details=True)
        for j in range(len(p) - 1):
            cov = covering(s_can, p_can, j)
            if cov is None or cov[0] == 0:
                continue
            first, last, a, b = cov
            expect = float(np.sum(true[first - 1:last - 1].astype(np.float64)))
            assert c.resolution[j] == R.EXACT, (text, j)
            if other_spelling(b"".join(s_can), a, b, s_can, first, last, ids, can):
                assert c.gold_logprob[j] >= expect - 2e-5
                continue
            assert c.gold_logprob[j] == pytest.approx(expect, abs=2e-5), (text, j)
            checked += 1
        d = c.dists
        for j in range(len(d)):
            a, b = d.offsets[j], d.offsets[j + 1]
            assert np.exp(d.logits[a:b].astype(np.float64)).sum() <= 1 + 1e-5
    assert checked > 100


def test_no_mass_above_one_random():
    (pv, ptok), (sv, stok) = real_pair("mistral", "bytelevel")
    rng = np.random.default_rng(4)
    for text in F.sample_texts()[:30]:
        s, p = stok.encode(text).ids, ptok.encode(text).ids
        ids, lps, true = random_topk(s, len(sv), rng)
        d = align.project(s, p, ids, lps, sv, pv, src_true_logprobs=true, k=10_000)
        for j in range(len(d)):
            a, b = d.offsets[j], d.offsets[j + 1]
            assert np.exp(d.logits[a:b].astype(np.float64)).sum() <= 1 + 1e-5


# -- the oracle -----------------------------------------------------------------------------

def oracle_top1(pairs, sv, pv, seed=0):
    """Share of supervised pivot positions whose projected top-1 is the pivot's next token,
    for the oracle source; pairs = [(src ids, pivot ids, pivot loss mask)]."""
    rng = np.random.default_rng(seed)
    out = []
    for s, p, mask in pairs:
        ids, lps, true = oracle_topk(s, len(sv), rng)
        out.append((align.project(s, p, ids, lps, sv, pv, src_true_logprobs=true,
                                  details=True), p))
    return align.projection_fidelity(out, [m for _, _, m in pairs])


@pytest.mark.parametrize("source,floor", [("byte_level", 0.99), ("unigram", 0.97)])
def test_oracle_demo_tokenizers(source, floor):
    pt, st = demo_tokenizer("metaspace"), demo_tokenizer(source)
    pv, sv = Vocab.from_tokenizer(pt), Vocab.from_tokenizer(st)
    pairs = [(b.input_ids, a.input_ids, a.loss_mask)
             for a, b in zip(demo_chats(300, pt), demo_chats(300, st))]
    fid = oracle_top1(pairs, sv, pv)
    assert fid["n_supervised"] > 800
    print(source, fid)
    assert fid["top1_correct"] >= floor, fid


@pytest.mark.parametrize("source,floor", [("digits", 0.99), ("unigram", 0.97)])
def test_oracle_mistral(source, floor):
    (pv, ptok), (sv, stok) = real_pair("mistral", source)
    texts = NUMBERS + [t for t in F.sample_texts() if t.isascii()]
    pairs = []
    for t in texts:
        p = ptok.encode(t).ids
        pairs.append((stok.encode(t).ids, p, np.ones(len(p), np.uint8)))
    fid = oracle_top1(pairs, sv, pv)
    assert fid["n_supervised"] > 2000
    print(source, fid)
    assert fid["top1_correct"] >= floor, fid


# -- errors -----------------------------------------------------------------------------------

def small_case():
    (pv, ptok), (sv, stok) = real_pair("mistral", "bytelevel")
    text = "Hello world, 42 times."
    s, p = stok.encode(text).ids, ptok.encode(text).ids
    ids, lps, true = oracle_topk(s, len(sv), np.random.default_rng(0))
    return pv, sv, np.asarray(s), np.asarray(p), ids, lps, true


def test_bad_input_errors_name_the_position():
    pv, sv, s, p, ids, lps, true = small_case()
    with pytest.raises(ValueError, match=r"src_ids\[1\] = .*rule token_id_out_of_range"):
        bad = s.copy()
        bad[1] = len(sv)
        align.project(bad, p, ids, lps, sv, pv)
    with pytest.raises(ValueError, match=r"pivot_ids\[0\] = -3"):
        bad = p.copy()
        bad[0] = -3
        align.project(s, bad, ids, lps, sv, pv)
    with pytest.raises(ValueError, match=r"topk_ids\[2\]\[3\]"):
        bad = ids.copy()
        bad[2, 3] = 10**9
        align.project(s, p, bad, lps, sv, pv)
    for value in (np.nan, np.inf, 0.5):
        bad = lps.copy()
        bad[3, 1] = value
        with pytest.raises(ValueError, match=r"topk_logprobs\[3\]\[1\].*not_log_probability"):
            align.project(s, p, ids, bad, sv, pv)
    bad = true.copy()
    bad[4] = np.inf
    with pytest.raises(ValueError, match=r"src_true_logprobs\[4\]"):
        align.project(s, p, ids, lps, sv, pv, src_true_logprobs=bad)
    with pytest.raises(ValueError, match=r"must both be \[len\(src_ids\)"):
        align.project(s, p, ids[:-1], lps[:-1], sv, pv)
    with pytest.raises(ValueError, match=r"src_true_logprobs must have"):
        align.project(s, p, ids, lps, sv, pv, src_true_logprobs=true[:-1])
    with pytest.raises(ValueError, match=r"^sequence 1: .*topk_ids\[2\]\[3\]"):
        bad = ids.copy()
        bad[2, 3] = -7
        align.project_batch([s, s], [p, p], [ids, bad], [lps, lps], sv, pv)
    with pytest.raises(ValueError, match="lists differ in length"):
        align.project_batch([s, s], [p], [ids, ids], [lps, lps], sv, pv)
    # -inf is probability 0, not an error; -1 pads
    ok_lps, ok_ids = lps.copy(), ids.copy()
    ok_lps[0, 2] = -np.inf
    ok_ids[1, 5:] = -1
    align.project(s, p, ok_ids, ok_lps, sv, pv)


def test_wordpiece_is_refused():
    pv = Vocab.from_pretrained(F.wordpiece())
    sv = Vocab.from_pretrained(F.bytelevel_bpe())
    with pytest.raises(ValueError, match="projection_lossy_tokenizer"):
        align.project([1, 2], [1, 2], np.zeros((2, 1), np.int64), np.zeros((2, 1), np.float32),
                      sv, pv)


def test_batch_equals_single():
    pv, sv, s, p, ids, lps, true = small_case()
    one = align.project(s, p, ids, lps, sv, pv, src_true_logprobs=true, k=5)
    many = align.project_batch([s] * 5, [p] * 5, [ids] * 5, [lps] * 5, sv, pv,
                               src_true_logprobs=[true] * 5, k=5, threads=2)
    for d in many:
        for x, y in zip(d, one):
            np.testing.assert_array_equal(x, y)


# -- the worked examples of docs/alignment.md ---------------------------------------------------

def hand_topk(sv, src_ids, rows, k=4):
    """Top-K from {source position: [(piece, probability)]} (the true token first)."""
    ids = np.full((len(src_ids), k), -1, np.int64)
    lps = np.zeros((len(src_ids), k), np.float32)
    true = np.full(len(src_ids), np.nan, np.float32)
    for i, row in rows.items():
        for t, (piece, p) in enumerate(row):
            ids[i, t] = sv.find(piece)
            lps[i, t] = np.log(p)
        true[i] = np.log(row[0][1])
    return ids, lps, true


def test_worked_examples_of_the_doc():
    (pv, ptok), (sv, stok) = real_pair("mistral", "bytelevel")
    tw = twin_vocab(sv, pv)

    def run(text, rows):
        s, p = stok.encode(text).ids, ptok.encode(text).ids
        ids, lps, true = hand_topk(sv, s, rows)
        c, twin = run_both(s, p, ids, lps, true, sv, pv, tw)
        assert_same(c, *twin)
        return [stok.id_to_token(i) for i in s], [ptok.id_to_token(i) for i in p], c

    def entries(c, j):
        d = c.dists
        a, b = d.offsets[j], d.offsets[j + 1]
        return {ptok.id_to_token(int(i)): float(np.exp(x)) for i, x in zip(d.ids[a:b], d.logits[a:b])}

    # 1: "The answer is 42": source Ġis | Ġ4 | 2, pivot ▁is | ▁ | 4 | 2
    s, p, c = run("The answer is 42", {5: [("Ġ4", 0.6), ("Ġ7", 0.3)], 6: [("2", 0.9)]})
    assert s[5:] == ["Ġis", "Ġ4", "2"] and p[2:] == ["▁is", "▁", "4", "2"]
    assert entries(c, 2) == pytest.approx({"▁": 0.9}) and c.resolution[2] == R.PREFIX
    assert entries(c, 3) == pytest.approx({"4": 0.6 / 0.9, "7": 0.3 / 0.9})
    assert c.resolution[3] == R.PREFIX
    assert entries(c, 4) == pytest.approx({"2": 0.9}) and c.resolution[4] == R.EXACT
    # 2: "the configuration is": source Ġconfig | ur | ation, pivot ▁configuration
    s, p, c = run("the configuration is", {0: [("Ġconfig", 0.5)],
                                           1: [("ur", 0.8), ("ure", 0.1), ("ation", 0.05)],
                                           2: [("ation", 0.9)]})
    assert s[:4] == ["the", "Ġconfig", "ur", "ation"] and p[:2] == ["▁the", "▁configuration"]
    assert c.resolution[0] == R.EXACT
    assert c.gold_logprob[0] == pytest.approx(np.log(0.5 * 0.8 * 0.9), abs=1e-6)
    assert entries(c, 0) == pytest.approx({"▁configuration": 0.36, "▁configure": 0.05})
