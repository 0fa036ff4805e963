"""The DTW's code paths against the pure-Python twin (tests/reference/align_ref.py): the
SIMD path (16-bit rows, 32-bit rows past their range, packed edit distances) and the
portable one, on adversarial vocabularies (empty decoded strings, tokens longer than 64 and
1024 code points, non-ASCII), degenerate shapes and real tokenizers."""
import os

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import align_fixtures as F  # noqa: E402
from fusechat import Vocab, _C, align  # noqa: E402
from reference import align_ref as R  # noqa: E402

PATHS = [True, False]  # SIMD where the CPU has it, portable


@pytest.fixture(params=PATHS, ids=["simd", "portable"])
def simd(request):
    was = _C.align_set_simd(request.param)
    yield request.param
    _C.align_set_simd(was)


def odd_pieces():
    """Pieces of every length class the cost code treats apart (1-8, 9-16, 17-64, > 64,
    > 1024 code points), "▁" alone (decodes to the empty string), non-ASCII."""
    rng = np.random.default_rng(3)
    pieces = ["▁", "▁▁", "a", "b", "▁a", "ab", "ba", "é", "你", "你好", "\U0001f389",
              "▁é你"]
    for n in (7, 8, 9, 15, 16, 17, 40, 63, 64, 65, 70, 130, 1100):
        for alphabet in ("ab", "abé你", "x"):
            pieces.append("".join(rng.choice(list(alphabet), size=n)))
            pieces.append("▁" + pieces[-1][1:])
    return list(dict.fromkeys(pieces))


def odd_folder():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder = os.path.join(F._TMP, "odd-unigram")
    if not os.path.exists(os.path.join(folder, "tokenizer.json")):
        vocab = [("<unk>", 0.0)] + [(p, -1.0 - i / 100) for i, p in enumerate(odd_pieces())]
        tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        os.makedirs(folder, exist_ok=True)
        tok.save(os.path.join(folder, "tokenizer.json"))
    return folder


_cache = {}


def load(kind):
    if kind not in _cache:
        path = {"odd": odd_folder, "mistral": F.mistral, "bytelevel": F.bytelevel_bpe}[kind]()
        v = Vocab.from_pretrained(path)
        tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        # the twin gets the strings from the tokenizers library, not from fusechat
        dec = [tok.decode([i], skip_special_tokens=False) for i in range(len(v))]
        _cache[kind] = (v, tok, dec)
    return _cache[kind]


def pool(kind):
    """Ids to draw at random: not <unk>, not the 1100-code-point piece (its cost would keep
    every grid off the 16-bit path)."""
    dec = load(kind)[2]
    return [i for i in range(1, len(dec)) if len(dec[i]) <= 1024]


def check(src_kind, piv_kind, s, p):
    sv, _, sdec = load(src_kind)
    pv, _, pdec = load(piv_kind)
    want = R.dtw([sdec[i] for i in s], [pdec[i] for i in p], sv.marker, pv.marker)
    got = align.align(np.asarray(s, dtype=np.int64), np.asarray(p, dtype=np.int64), sv, pv)
    assert got.lists() == want


def test_odd_vocab_has_what_the_tests_need():
    v, _, dec = load("odd")
    lens = sorted(len(d) for d in dec)
    assert "" in dec and lens[-1] > 1024 and any(64 < n < 1024 for n in lens)
    assert v.decoded(v.find("▁")) == ""


@pytest.mark.parametrize("src_kind,piv_kind", [("odd", "odd"), ("odd", "mistral"),
                                               ("bytelevel", "odd")])
def test_random_ids_on_odd_vocabularies(simd, src_kind, piv_kind):
    rng = np.random.default_rng(11)
    sp, pp = pool(src_kind), pool(piv_kind)
    for shape in [(1, 1), (1, 37), (37, 1), (2, 50), (50, 2), (17, 33), (45, 45)]:
        for _ in range(3):
            s = rng.choice(sp, size=shape[0]).tolist()
            p = rng.choice(pp, size=shape[1]).tolist()
            check(src_kind, piv_kind, s, p)


def test_all_equal_and_all_empty_tokens(simd):
    v = load("odd")[0]
    a, space, e = v.find("a"), v.find("▁"), v.find("é")
    for s, p in [([a] * 40, [a] * 33), ([space] * 20, [space] * 31), ([space] * 9, [a] * 12),
                 ([a] * 12, [space] * 9), ([e, a] * 15, [a, e] * 17), ([a], [space] * 50)]:
        check("odd", "odd", s, p)


def test_large_costs_leave_the_16_bit_range(simd):
    """Tokens of 130 and 1100 code points: D passes 2^15 in mid-grid (the 16-bit rows hand
    over to 32-bit rows), in row 0, or costs exceed the 16-bit path's bound."""
    v, _, dec = load("odd")
    long_ids = [i for i, d in enumerate(dec) if 100 < len(d) < 1024]
    huge = [i for i, d in enumerate(dec) if len(d) > 1024]
    short = [i for i, d in enumerate(dec) if 0 < len(d) < 4]
    rng = np.random.default_rng(5)
    s = rng.choice(long_ids, size=300).tolist()
    s[100:110] = short[:10]
    p = rng.choice(short, size=200).tolist()
    check("odd", "odd", s, p)            # rows 0 .. ~230 fit in 16 bits, the rest do not
    check("odd", "odd", s[:50], p + p)   # row 0 alone passes 2^15
    check("odd", "odd", s[:40] + huge + s[40:60], p[:50])


def test_large_grids_simd_equals_portable():
    """4000 x 4000 and 3000 x 1 / 1 x 3000 (too slow for the twin): both code paths agree;
    the portable one is the twin-checked scalar recurrence."""
    sv, pv = load("bytelevel")[0], load("mistral")[0]
    rng = np.random.default_rng(9)
    text = " ".join(F.sample_texts()) * 20
    s = np.asarray(load("bytelevel")[1].encode(text).ids[:4000], dtype=np.int64)
    p = np.asarray(load("mistral")[1].encode(text).ids[:4000], dtype=np.int64)
    cases = [(s, p), (rng.permutation(s), p), (s[:3000], p[:1]), (s[:1], p[:3000])]
    was = _C.align_set_simd(True)
    try:
        fast = [align.align(a, b, sv, pv) for a, b in cases]
        _C.align_set_simd(False)
        slow = [align.align(a, b, sv, pv) for a, b in cases]
    finally:
        _C.align_set_simd(was)
    for f, g in zip(fast, slow):
        assert np.array_equal(f.indptr, g.indptr) and np.array_equal(f.indices, g.indices)


@pytest.mark.parametrize("src_kind,piv_kind", [("bytelevel", "mistral"), ("mistral", "bytelevel")])
def test_real_text(simd, src_kind, piv_kind):
    for text in F.sample_texts()[:10]:
        s = load(src_kind)[1].encode(text, add_special_tokens=False).ids[:150]
        p = load(piv_kind)[1].encode(text, add_special_tokens=False).ids[:150]
        check(src_kind, piv_kind, s, p)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=40),
       st.lists(st.integers(1, 10**6), min_size=1, max_size=40), st.booleans())
def test_hypothesis_both_paths_match_twin(a, b, use_simd):
    ids = pool("odd")
    was = _C.align_set_simd(use_simd)
    try:
        check("odd", "odd", [ids[x % len(ids)] for x in a], [ids[x % len(ids)] for x in b])
    finally:
        _C.align_set_simd(was)
